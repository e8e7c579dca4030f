//! The emergency brake on one node: raise the fence (no pilot starts while it is up), signal
//! every live pilot (verified by pid, start and boot id, binary, owner and lease lock) and
//! escalate to SIGKILL after a bound, list again until no live pilot is left, then finish
//! every lease whose pilot is gone through the same recovery path (each under its lease
//! lock). `vmpilot kill-all` (src/commands/kill_all.rs) asks, calls this and prints.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cli::KillLevel;
use crate::config::Config;
use crate::coordinator::outbox::Outbox;
use crate::kill_request::{self, KillRequest};
use crate::lease::LeaseState;
use crate::lease::record::LeaseId;
use crate::lease::store::Store;
use crate::process::ProcessIdentity;
use crate::recovery::{self, Outcome, Scope, Skip, Trigger};

/// What a kill-all did on the node.
#[derive(Debug)]
pub enum NodeKill {
    /// Nothing was open: no pilot signalled, no hypervisor needed (the shutdown drain runs
    /// kill-all on every node, hosting or not). Says why.
    NothingToStop(String),
    /// What happened to each lease kill-all touched, and how many pilots survived SIGKILL
    /// (their leases are left to them).
    Done {
        /// One per lease.
        outcomes: Vec<Outcome>,
        /// Pilots still alive after SIGTERM and SIGKILL.
        survivors: usize,
    },
}

impl NodeKill {
    /// Did every lease end with the node restored?
    pub fn restored(&self) -> bool {
        match self {
            NodeKill::NothingToStop(_) => true,
            NodeKill::Done {
                outcomes,
                survivors,
            } => *survivors == 0 && !outcomes.iter().any(|o| o.is_failure()),
        }
    }
}

/// Stop every pilot and lease on the node at `level`, for `reason`, behind the fence.
pub async fn on_node(config: &Config, level: KillLevel, reason: &str) -> anyhow::Result<NodeKill> {
    if !config.state_dir.join("leases").is_dir() {
        return Ok(NodeKill::NothingToStop(format!(
            "no lease records in {}",
            config.state_dir.display()
        )));
    }
    let store = Store::open(&config.state_dir)?;
    // The fence goes up before anything is listed: a pilot that starts from now on refuses
    // (exit 7), and one that started before is in the listings below.
    let request = KillRequest::new(level, reason);
    kill_request::publish(&config.state_dir, &request)?;
    let result = fenced_kill(config, &store, &request, level).await;
    // Lifted however the kill went; a kill-all that dies lifts it too (see kill_request).
    let lifted = kill_request::withdraw(&config.state_dir);
    let done = result?;
    lifted?;
    Ok(done)
}

/// Behind the fence: signal every live pilot until none is left, then finish what their
/// pilots could not, and say what happened to each lease.
async fn fenced_kill(
    config: &Config,
    store: &Store,
    request: &KillRequest,
    level: KillLevel,
) -> anyhow::Result<NodeKill> {
    let open = store.list()?.into_iter().any(|r| match r {
        Ok(r) => !r.is_finished(),
        Err(_) => true,
    });
    if !open {
        return Ok(NodeKill::NothingToStop(
            "every lease on this node is finished".into(),
        ));
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
    // The brake itself is not interrupted: a signal to kill-all acts as its default.
    let interrupted = std::sync::atomic::AtomicBool::new(false);
    let mut outcomes = recovery::finish_all(
        config,
        store,
        &outbox,
        &scope,
        &trigger,
        budget,
        &interrupted,
    )
    .await?;
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
            && o.skipped == Some(Skip::AlreadyFinished)
        {
            o.from = Some(*from);
            o.note = "its pilot was signalled and ended the lease itself".into();
        }
    }
    // Finished before kill-all began: not part of what it did.
    outcomes.retain(|o| o.skipped != Some(Skip::AlreadyFinished));
    Ok(NodeKill::Done {
        outcomes,
        survivors: survivors.len(),
    })
}

/// How many times kill-all lists and signals the node's pilots before it gives up on one
/// that will not die.
const MAX_ROUNDS: usize = 3;

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
