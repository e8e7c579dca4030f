//! `vmpilot kill-all`: the emergency brake. Raises the fence (no pilot starts while it
//! runs), signals every live pilot on the node (verified by pid, start and boot id) and
//! escalates to SIGKILL after a bound, lists again until no live pilot is left, then
//! finishes every lease whose pilot is gone through the same recovery path (each under its
//! lease lock), and prints what really happened to each lease.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cli::{KillAllArgs, KillLevel};
use crate::config::Overrides;
use crate::coordinator::outbox::Outbox;
use crate::exit::{EnvironmentError, ExitStatus, UsageError};
use crate::kill_request::{self, KillRequest};
use crate::lease::LeaseState;
use crate::lease::record::LeaseId;
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
    // Nothing ever ran here (or no state at all): nothing to stop, and no reason to need
    // the hypervisor — the shutdown drain runs this on every node, hosting or not.
    if !config.state_dir.join("leases").is_dir() {
        println!(
            "nothing to stop: no lease records in {}",
            config.state_dir.display()
        );
        return Ok(ExitStatus::Success);
    }
    let store = Store::open(&config.state_dir)?;
    // The fence goes up before anything is listed: a pilot that starts from now on refuses
    // (exit 7), and one that started before is in the listings below.
    let request = KillRequest::new(level, &args.reason);
    kill_request::publish(&config.state_dir, &request)?;
    let result = fenced_kill(&config, &store, &request, level).await;
    // Lifted however the kill went; a kill-all that dies lifts it too (see kill_request).
    let lifted = kill_request::withdraw(&config.state_dir);
    let status = result?;
    lifted?;
    Ok(status)
}

/// Behind the fence: signal every live pilot until none is left, then finish what their
/// pilots could not, and say what happened to each lease.
async fn fenced_kill(
    config: &crate::config::Config,
    store: &Store,
    request: &KillRequest,
    level: KillLevel,
) -> anyhow::Result<ExitStatus> {
    let open = store.list()?.into_iter().any(|r| match r {
        Ok(r) => !r.is_finished(),
        Err(_) => true,
    });
    if !open {
        println!("nothing to stop: every lease on this node is finished");
        return Ok(ExitStatus::Success);
    }
    let (wait, budget) = match level {
        KillLevel::Fast => (Duration::from_secs(5), Duration::from_secs(5)),
        KillLevel::Quick => (Duration::from_secs(15), Duration::from_secs(10)),
        KillLevel::Graceful => {
            let g = config.lease.grace.get();
            (g + Duration::from_secs(5), g)
        }
    };
    // Re-listed until no live pilot is left: one that was starting when the fence went up
    // shows up in a later round. Bounded: a pilot that survives SIGKILL (stuck in the
    // kernel) is reported, never finished behind its back.
    let mut signalled: BTreeMap<LeaseId, LeaseState> = BTreeMap::new();
    let mut survivors = Vec::new();
    for round in 0..MAX_ROUNDS {
        let mut live: Vec<(LeaseId, LeaseState, ProcessIdentity)> = Vec::new();
        for r in store.list()?.into_iter().flatten() {
            if r.is_finished() {
                continue;
            }
            if store.pilot_is_running(&r) {
                live.push((r.lease_id, r.state, r.pilot));
            } else if round == 0 && r.pilot.is_alive() {
                // The record names a live process that is no pilot of this lease (pid,
                // start and boot id are world-readable): it is never signalled.
                tracing::warn!(lease = %r.lease_id, pid = r.pilot.pid, "the record names a running process that is not this lease's pilot (not a vmpilot of the state directory's owner holding the lease's lock); not signalling it");
            }
        }
        if live.is_empty() {
            survivors.clear();
            break;
        }
        tracing::info!(round, pilots = live.len(), "stopping live pilots");
        for (id, state, _) in &live {
            signalled.entry(id.clone()).or_insert(*state);
        }
        let pilots: Vec<ProcessIdentity> = live.iter().map(|(_, _, p)| p.clone()).collect();
        stop_pilots(&pilots, wait).await;
        survivors = live
            .into_iter()
            .filter(|(_, _, p)| p.is_alive())
            .map(|(id, _, p)| (id, p))
            .collect();
    }
    let outbox = Outbox::open(config)?;
    let trigger = Trigger::Admin {
        by: request.by.clone(),
        why: request.why.clone(),
        force: request.is_fast(),
    };
    // Identity is honoured (not `boot`): a lease whose pilot still runs is never finished
    // from here, only reported.
    let scope = Scope {
        job: None,
        boot: false,
    };
    let planned = recovery::plan(store, &scope)?;
    let planned = recovery::finish_reports(&outbox, store, planned, &scope, &trigger).await;
    let mut outcomes = if recovery::needs_host(&planned) {
        let releaser = Releaser {
            config: config.clone(),
            store: store.clone(),
            host: crate::host::open(config)?,
        };
        recovery::execute(&releaser, &outbox, planned, &scope, &trigger, budget).await?
    } else {
        recovery::known_outcomes(planned)
    };
    outbox.flush(Duration::from_secs(5)).await;
    for o in &mut outcomes {
        let Ok(id) = o.lease.parse::<LeaseId>() else {
            continue;
        };
        if let Some((_, pilot)) = survivors.iter().find(|(s, _)| *s == id) {
            o.unfinished = true;
            o.note = format!(
                "NOT STOPPED: pilot pid {} survived SIGTERM and SIGKILL; its lease was left to it",
                pilot.pid
            );
        } else if let Some(from) = signalled.get(&id)
            && o.note == "skipped: already finished"
        {
            o.from = Some(*from);
            o.note = "its pilot was signalled and ended the lease itself".into();
        }
    }
    // Finished before kill-all began: not part of what it did.
    outcomes.retain(|o| o.note != "skipped: already finished");
    print!("{}", recovery::summary_table(&outcomes));
    if outcomes.iter().any(|o| o.is_failure()) || !survivors.is_empty() {
        return Ok(ExitStatus::HostFailure);
    }
    Ok(ExitStatus::Success)
}

/// How many times kill-all lists and signals the node's pilots before it gives up on one
/// that will not die.
const MAX_ROUNDS: usize = 3;

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
