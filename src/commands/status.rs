//! `vmpilot status`: what this node is doing, for humans (a table) or tools (`--json`,
//! documented in docs/status.md and kept stable).

use serde::Serialize;
use time::OffsetDateTime;

use crate::cli::StatusArgs;
use crate::config::Overrides;
use crate::coordinator::spool::{Backlog, Spool};
use crate::exit::ExitStatus;
use crate::lease::store::Store;
use crate::safe_dir::printable;

use super::Globals;

/// Format version of the `--json` output.
pub const STATUS_VERSION: u32 = 1;

#[derive(Serialize)]
struct NodeStatus {
    version: u32,
    node: String,
    /// `batch` or `hosting`.
    mode: &'static str,
    leases: Vec<LeaseStatus>,
    spool: Option<Backlog>,
    errors: Vec<String>,
}

#[derive(Serialize)]
struct LeaseStatus {
    lease_id: String,
    epoch: u64,
    state: String,
    end_reason: Option<String>,
    job_id: Option<String>,
    memory_mib: u64,
    cpus: u32,
    #[serde(with = "time::serde::rfc3339")]
    deadline: OffsetDateTime,
    seconds_left: i64,
    pilot_pid: u32,
    pilot_alive: bool,
    guests: Vec<crate::lease::record::GuestFate>,
    last_error: Option<String>,
}

/// Entry point.
pub fn status(globals: &Globals, args: StatusArgs) -> anyhow::Result<ExitStatus> {
    let config = globals.load(Overrides::default())?;
    let store = Store::open(&config.state_dir)?;
    let now = OffsetDateTime::now_utc();
    let mut leases = Vec::new();
    let mut errors = Vec::new();
    for entry in store.list()? {
        match entry {
            Ok(r) => leases.push(LeaseStatus {
                lease_id: r.lease_id.to_string(),
                epoch: r.epoch,
                state: r.state.to_string(),
                end_reason: r.end_reason.map(|e| e.to_string()),
                job_id: r.job_id.clone(),
                memory_mib: r.memory_mib,
                cpus: r.cpus,
                deadline: r.deadline,
                seconds_left: r.seconds_left(now).max(0),
                pilot_pid: r.pilot.pid,
                pilot_alive: store.pilot_is_running(&r),
                guests: r.guests.clone(),
                last_error: r.last_error.clone(),
            }),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let hosting = leases.iter().any(|l| {
        matches!(
            l.state.as_str(),
            "reserving" | "reserved" | "unreserving" | "failed"
        )
    }) || !errors.is_empty();
    let spool = config
        .coordinator
        .as_ref()
        .and_then(|_| Spool::open(&config.state_dir).ok()?.backlog().ok());
    let status = NodeStatus {
        version: STATUS_VERSION,
        node: config.node_name.clone(),
        mode: if hosting { "hosting" } else { "batch" },
        leases,
        spool,
        errors,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", table(&status));
    }
    Ok(ExitStatus::Success)
}

fn table(s: &NodeStatus) -> String {
    let mut out = format!("node {}: {} mode\n", s.node, s.mode);
    if let Some(b) = &s.spool {
        out.push_str(&format!(
            "spool: {} pending{}, {} rejected\n",
            b.pending,
            b.oldest_age_secs
                .map(|a| format!(" (oldest {a}s)"))
                .unwrap_or_default(),
            b.rejected
        ));
    }
    if s.leases.is_empty() {
        out.push_str("no leases\n");
    } else {
        out.push_str(&format!(
            "{:<18} {:<12} {:<10} {:>8} {:>4} {:>9} {:>8} {}\n",
            "LEASE", "STATE", "JOB", "MEMORY", "CPUS", "LEFT", "PID", "PILOT"
        ));
        for l in &s.leases {
            out.push_str(&format!(
                "{:<18} {:<12} {:<10} {:>7}M {:>4} {:>8}s {:>8} {}\n",
                l.lease_id,
                l.state,
                printable(l.job_id.as_deref().unwrap_or("-"), 40),
                l.memory_mib,
                l.cpus,
                l.seconds_left,
                l.pilot_pid,
                if l.pilot_alive { "alive" } else { "gone" }
            ));
            if let Some(e) = &l.last_error {
                out.push_str(&format!(
                    "  last error: {}\n",
                    printable(e.lines().next().unwrap_or(""), 300)
                ));
            }
        }
    }
    for e in &s.errors {
        out.push_str(&format!(
            "error: {}\n",
            printable(e.lines().next().unwrap_or(""), 300)
        ));
    }
    out
}
