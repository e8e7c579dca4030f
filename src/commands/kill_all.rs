//! `vmpilot kill-all`: the emergency brake. Signals every pilot on the node (verified by
//! pid, start time and boot id), escalates to SIGKILL after a bound, then finishes every
//! lease still open through the same recovery path, and prints a summary.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cli::{KillAllArgs, KillLevel};
use crate::config::Overrides;
use crate::coordinator::outbox::Outbox;
use crate::exit::{EnvironmentError, ExitStatus, UsageError};
use crate::kill_request::{self, KillRequest};
use crate::lease::LeaseState;
use crate::lease::store::Store;
use crate::lrm::LrmKind;
use crate::lrm::cluster::Cluster;
use crate::process::ProcessIdentity;
use crate::recovery::{self, Scope, Trigger};
use crate::release::Releaser;

use super::{Globals, init_logging};

/// Entry point.
pub async fn kill_all(globals: &Globals, args: KillAllArgs) -> anyhow::Result<ExitStatus> {
    if !nix::unistd::geteuid().is_root() {
        return Err(EnvironmentError {
            problem: "kill-all must run as root: it signals other users' pilots and stops guests"
                .into(),
            hint: "run it with sudo".into(),
        }
        .into());
    }
    let config = globals.load(Overrides::default())?;
    init_logging(&config);
    confirm(&args, &config)?;
    if args.cluster {
        return kill_cluster(&config).await;
    }
    let level = args.effective_level();
    // Nothing open (or no state at all): nothing to stop, and no reason to need the
    // hypervisor — the shutdown drain runs this on every node, hosting or not.
    if !config.state_dir.join("leases").is_dir() {
        println!(
            "nothing to stop: no lease records in {}",
            config.state_dir.display()
        );
        return Ok(ExitStatus::Success);
    }
    let store = Store::open(&config.state_dir)?;
    let open = store.list()?.into_iter().any(|r| match r {
        Ok(r) => r.state != LeaseState::Unreserved,
        Err(_) => true,
    });
    if !open {
        println!("nothing to stop: every lease on this node is finished");
        return Ok(ExitStatus::Success);
    }
    let outbox = Outbox::open(&config)?;
    let host = crate::host::open(&config)?;
    let request = KillRequest::new(level, &args.reason);
    kill_request::publish(&config.state_dir, &request)?;
    let (wait, budget) = match level {
        KillLevel::Fast => (Duration::from_secs(5), Duration::from_secs(5)),
        KillLevel::Quick => (Duration::from_secs(15), Duration::from_secs(10)),
        KillLevel::Graceful => {
            let g = config.lease.grace.get();
            (g + Duration::from_secs(5), g)
        }
    };
    let pilots: Vec<ProcessIdentity> = store
        .list()?
        .into_iter()
        .flatten()
        .filter(|r| !r.state.is_terminal() && r.pilot.is_alive())
        .map(|r| r.pilot)
        .collect();
    stop_pilots(&pilots, wait).await;
    let releaser = Releaser {
        config: config.clone(),
        store,
        host,
    };
    let trigger = Trigger::Admin {
        by: request.by.clone(),
        why: request.why.clone(),
        force: request.is_fast(),
    };
    let scope = Scope {
        job: None,
        boot: true,
    };
    let outcomes = recovery::recover_all(&releaser, &outbox, &scope, &trigger, budget).await;
    kill_request::withdraw(&config.state_dir)?;
    outbox.flush(Duration::from_secs(5)).await;
    let outcomes = outcomes?;
    print!("{}", recovery::summary_table(&outcomes));
    if outcomes.iter().any(|o| o.is_failure()) {
        return Ok(ExitStatus::HostFailure);
    }
    Ok(ExitStatus::Success)
}

/// Ask before pulling the brake, unless `--yes`; without a terminal `--yes` is required, so
/// a mistyped pdsh line cannot stop a cluster's worth of guests.
fn confirm(args: &KillAllArgs, config: &crate::config::Config) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if args.yes {
        return Ok(());
    }
    let what = if args.cluster {
        "cancel EVERY pilot job in the cluster".to_string()
    } else {
        format!(
            "stop every pilot and lease guest on node {}",
            config.node_name
        )
    };
    if !std::io::stdin().is_terminal() {
        return Err(UsageError {
            problem: format!("kill-all would {what}, and there is no terminal to confirm it"),
            hint: "add --yes to confirm (as in `vmpilot kill-all --yes --reason \"...\"`)".into(),
        }
        .into());
    }
    eprint!("vmpilot: {what}? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        return Ok(());
    }
    Err(UsageError {
        problem: "kill-all not confirmed; nothing was done".into(),
        hint: "answer y, or pass --yes".into(),
    }
    .into())
}

/// `--cluster`: cancel every pilot job through the batch system and report per job.
async fn kill_cluster(config: &crate::config::Config) -> anyhow::Result<ExitStatus> {
    let on_path = |p: &str| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(p).is_file()))
    };
    let cluster = match config.lrm.kind {
        LrmKind::Slurm => Cluster::Slurm,
        LrmKind::Pbs => Cluster::Pbs,
        LrmKind::Auto if on_path("squeue") => Cluster::Slurm,
        LrmKind::Auto if on_path("qselect") => Cluster::Pbs,
        _ => {
            return Err(EnvironmentError {
                problem: "kill-all --cluster needs a batch system, and none was found (no squeue or qselect on PATH, or `[lrm] kind = \"none\"`)".into(),
                hint: "run it where the batch system's client commands are installed, or set `[lrm] kind`".into(),
            }
            .into());
        }
    };
    let timeout = config.lrm.command_timeout.get();
    let results = cluster
        .cancel_all(timeout, Duration::from_secs(120))
        .await
        .map_err(|e| EnvironmentError {
            problem: format!("cannot list the pilot jobs, so nothing was cancelled: {e}"),
            hint: "check that the batch system answers (`scontrol ping` / `qstat -B`) and that `[lrm] command_timeout` is long enough, then run kill-all --cluster again; each node's own `vmpilot kill-all` works without the batch system".into(),
        })?;
    println!("{:<12} {:<12} {:<16} RESULT", "JOB", "STATE", "NODES");
    for r in &results {
        println!(
            "{:<12} {:<12} {:<16} {}",
            r.job.id, r.job.state, r.job.nodes, r.result
        );
    }
    if results.is_empty() {
        println!("no pilot jobs found");
    }
    if results.iter().any(|r| r.result != "gone") {
        return Ok(ExitStatus::HostFailure);
    }
    Ok(ExitStatus::Success)
}

/// SIGTERM each pilot, wait up to `wait` for all to exit, SIGKILL the rest.
async fn stop_pilots(pilots: &[ProcessIdentity], wait: Duration) {
    let signal_all = |sig: Signal| {
        for p in pilots.iter().filter(|p| p.is_alive()) {
            tracing::info!(pid = p.pid, signal = %sig, "signalling pilot");
            let _ = kill(Pid::from_raw(p.pid as i32), sig);
        }
    };
    signal_all(Signal::SIGTERM);
    let until = Instant::now() + wait;
    while Instant::now() < until && pilots.iter().any(|p| p.is_alive()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal_all(Signal::SIGKILL);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until && pilots.iter().any(|p| p.is_alive()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
