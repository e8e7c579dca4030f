//! Finishing leases whose pilot cannot: after a SIGKILL, a crash, a reboot, or an admin's
//! kill-all.
//!
//! Recovery is not a special path: it loads each record, decides from the pilot's identity
//! (pid, start time, boot id) whether the pilot is gone, and drives the lease to its end
//! through the same `transition()` and the same [`Releaser`] the pilot uses. Each lease is
//! finished under its lock (`Store::try_lock_lease`), with the record loaded again under
//! it: a live pilot holds that lock, and of two finishers (an epilog's `recover` and an
//! admin's `kill-all`) the second waits, bounded, and then finds the work done. Running it
//! twice is harmless: finished leases are skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;
use crate::coordinator::event::EventBody;
use crate::coordinator::outbox::Outbox;
use crate::coordinator::report;
use crate::lease::record::LeaseRecord;
use crate::lease::store::{LeaseLock, Store};
use crate::lease::{Event, LeaseState};
use crate::release::Releaser;

/// Which leases to look at.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Only leases of this batch job.
    pub job: Option<String>,
    /// Boot time: every unfinished lease is dead whatever its pid says.
    pub boot: bool,
}

/// Who ends the leases, and how.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// `vmpilot recover`: the pilot is gone.
    PilotLost,
    /// `vmpilot kill-all`: an admin says so.
    Admin {
        /// The admin's user name.
        by: String,
        /// The admin's reason.
        why: String,
        /// Destroy guests at once instead of following the unreserve policy.
        force: bool,
    },
}

/// What happened to one lease.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Lease id (or the record's file name when it could not be read).
    pub lease: String,
    /// State found.
    pub from: Option<LeaseState>,
    /// State left.
    pub to: Option<LeaseState>,
    /// `recovered`, `skipped: ...`, or the error.
    pub note: String,
    /// Nobody was proven to be finishing this lease: it was due, but its lock stayed with
    /// another finisher past the bound, or its pilot outlived a kill-all.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unfinished: bool,
    /// Why it was left alone, when it was (what callers branch on; `note` is for people).
    #[serde(skip)]
    pub skipped: Option<Skip>,
}

/// Why recovery left a lease alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The lease had already ended before this run looked at it.
    AlreadyFinished,
    /// Its pilot still runs and finishes the lease itself.
    PilotRunning,
}

impl Skip {
    fn note(self) -> &'static str {
        match self {
            Skip::AlreadyFinished => "skipped: already finished",
            Skip::PilotRunning => "skipped: pilot still running",
        }
    }
}

impl Outcome {
    fn known(record: &LeaseRecord, note: impl Into<String>) -> Self {
        Outcome {
            lease: record.lease_id.to_string(),
            from: Some(record.state),
            to: Some(record.state),
            note: note.into(),
            unfinished: false,
            skipped: None,
        }
    }

    /// Did this lease end with the node not restored (or unreadable, or not finished)?
    pub fn is_failure(&self) -> bool {
        self.unfinished
            || self.to == Some(LeaseState::Failed)
            || self.to.is_none() && self.from.is_none()
    }
}

/// What recovery will do with each record, decided without touching the host.
#[derive(Debug)]
pub enum Planned {
    /// Nothing to do (finished, pilot alive, unreadable): the outcome is known already.
    Known(Outcome),
    /// This lease must be finished.
    Finish(Box<LeaseRecord>),
    /// This lease ended, but a crash came before its end was reported: no host work.
    Report(Box<LeaseRecord>),
}

/// Look at every record in `scope` and decide. Cheap: reads records and `/proc` only, so an
/// epilog on a node with nothing to recover never needs the hypervisor.
pub fn plan(store: &Store, scope: &Scope) -> anyhow::Result<Vec<Planned>> {
    let mut planned = Vec::new();
    for entry in store.list()? {
        let record = match entry {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "unreadable lease record");
                planned.push(Planned::Known(Outcome {
                    lease: "?".into(),
                    from: None,
                    to: None,
                    note: e.to_string(),
                    unfinished: false,
                    skipped: None,
                }));
                continue;
            }
        };
        if let Some(job) = &scope.job
            && !same_job(record.job_id.as_deref(), job)
        {
            continue;
        }
        planned.push(decide(store, record, scope));
    }
    Ok(planned)
}

fn decide(store: &Store, record: LeaseRecord, scope: &Scope) -> Planned {
    match skip_reason(store, &record, scope) {
        Some(o) => Planned::Known(o),
        None if record.state == LeaseState::Unreserved => Planned::Report(Box::new(record)),
        None => Planned::Finish(Box::new(record)),
    }
}

/// Does the plan need the host?
pub fn needs_host(plan: &[Planned]) -> bool {
    plan.iter().any(|p| matches!(p, Planned::Finish(_)))
}

/// How long a finisher waits for a lease's lock held by another finisher, beyond its own
/// budget: that one may be stopping guests for as long as its own budget allows.
const LOCK_WAIT_SLACK: Duration = Duration::from_secs(5);

/// A planned lease with its lock held: the plan was made again from the record as it is
/// under the lock, so what another finisher did meanwhile is seen, never redone.
struct Claimed {
    _lock: LeaseLock,
    planned: Planned,
}

/// Take the lock of a lease the plan says must be finished or reported, waiting at most
/// `wait` for another finisher; a lock held by the lease's own pilot means it is alive.
async fn claim(
    store: &Store,
    record: &LeaseRecord,
    scope: &Scope,
    trigger: &Trigger,
    wait: Duration,
) -> Result<Claimed, Outcome> {
    let holder = format!(
        "{} pid {} finishing lease {}",
        match trigger {
            Trigger::PilotLost => "recover",
            Trigger::Admin { .. } => "kill-all",
        },
        std::process::id(),
        record.lease_id
    );
    let started = Instant::now();
    let pilot_holder = format!("pilot pid {} ", record.pilot.pid);
    let lock = loop {
        match store.try_lock_lease(&record.lease_id, &holder) {
            Ok(Some(lock)) => break lock,
            Ok(None) => {}
            // Not finished, and a failure: the node is not restored.
            Err(e) => {
                return Err(Outcome {
                    unfinished: true,
                    ..Outcome::known(record, format!("not finished: cannot lock: {e}"))
                });
            }
        }
        let held_by = store.lease_lock_holder(&record.lease_id);
        if held_by.starts_with(&pilot_holder) {
            // A pilot kill-all could not prove (e.g. it runs as another user than the
            // state directory's owner) and so did not signal: not stopped.
            let admin = matches!(trigger, Trigger::Admin { .. });
            return Err(Outcome {
                unfinished: admin,
                ..Outcome::known(
                    record,
                    "skipped: pilot still running (it holds the lease's lock)",
                )
            });
        }
        if started.elapsed() >= wait {
            tracing::error!(lease = %record.lease_id, holder = %held_by.escape_debug(), waited = ?started.elapsed(), "the lease's lock is held by another process; not finishing it");
            return Err(Outcome {
                unfinished: true,
                ..Outcome::known(
                    record,
                    format!(
                        "not finished: its lock is held by {} (waited {:.0}s)",
                        held_by.escape_debug(),
                        started.elapsed().as_secs_f64()
                    ),
                )
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let fresh = match store.load(&record.lease_id) {
        Ok(Some(r)) => r,
        Ok(None) => return Err(Outcome::known(record, "skipped: the record is gone")),
        Err(e) => {
            return Err(Outcome {
                lease: record.lease_id.to_string(),
                from: None,
                to: None,
                note: e.to_string(),
                unfinished: false,
                skipped: None,
            });
        }
    };
    let planned = match decide(store, fresh, scope) {
        // It was due when planned: someone finished it while this process waited.
        Planned::Known(o) if o.skipped == Some(Skip::AlreadyFinished) => Planned::Known(Outcome {
            from: Some(record.state),
            note: "finished by another process meanwhile".into(),
            skipped: None,
            ..o
        }),
        other => other,
    };
    Ok(Claimed {
        _lock: lock,
        planned,
    })
}

/// Report the ends a crash left unreported (no host needed); the rest of the plan is
/// unchanged. Never stops at the first failure.
pub async fn finish_reports(
    outbox: &Outbox,
    store: &Store,
    plan: Vec<Planned>,
    scope: &Scope,
    trigger: &Trigger,
) -> Vec<Planned> {
    let mut out = Vec::new();
    for p in plan {
        out.push(match p {
            Planned::Report(record) => {
                match claim(store, &record, scope, trigger, LOCK_WAIT_SLACK).await {
                    Err(o) => Planned::Known(o),
                    Ok(Claimed {
                        planned: Planned::Report(mut fresh),
                        _lock,
                    }) => Planned::Known(report_one(outbox, store, &mut fresh)),
                    // Under the lock it needs host work after all (or none): keep that
                    // for `execute`, which claims it again.
                    Ok(Claimed { planned, .. }) => planned,
                }
            }
            other => other,
        });
    }
    out
}

/// Finish the end report of one ended lease: the events a crash left in the record, or its
/// `unreserved`/`failed` event if none was written yet.
fn report_one(outbox: &Outbox, store: &Store, record: &mut LeaseRecord) -> Outcome {
    let done = match report::resume(outbox, store, record) {
        Ok(true) => Ok(()),
        Ok(false) => {
            let body = report::end_body(record);
            report::report_end(outbox, store, record, vec![body])
        }
        Err(e) => Err(e),
    };
    Outcome::known(
        record,
        match done {
            Ok(()) => "reported the end a crash left unreported".to_string(),
            Err(e) => format!("cannot report the end: {e:#}"),
        },
    )
}

/// Carry out a plan, each lease under its lock. Never stops at the first failure.
///
/// Once `interrupted` is set (a signal to `recover`), the lease being finished is finished
/// (its own bound holds), and no further lease is started: each is reported as left
/// unfinished, for the next `recover` (its record is untouched).
pub async fn execute(
    releaser: &Releaser,
    outbox: &Arc<Outbox>,
    plan: Vec<Planned>,
    scope: &Scope,
    trigger: &Trigger,
    budget: Duration,
    interrupted: &AtomicBool,
) -> anyhow::Result<Vec<Outcome>> {
    let wait = budget + crate::host::unreserve::DESTROY_OVERRUN + LOCK_WAIT_SLACK;
    let mut outcomes = Vec::new();
    for p in plan {
        let record = match p {
            Planned::Known(o) => {
                outcomes.push(o);
                continue;
            }
            Planned::Finish(r) | Planned::Report(r) => r,
        };
        if interrupted.load(Ordering::SeqCst) {
            outcomes.push(Outcome {
                unfinished: true,
                ..Outcome::known(
                    &record,
                    "not started: interrupted by a signal; run `vmpilot recover` again",
                )
            });
            continue;
        }
        let claimed = match claim(&releaser.store, &record, scope, trigger, wait).await {
            Ok(c) => c,
            Err(o) => {
                outcomes.push(o);
                continue;
            }
        };
        outcomes.push(match claimed.planned {
            Planned::Known(o) => o,
            Planned::Finish(mut fresh) => {
                recover_one(releaser, outbox, &mut fresh, trigger, budget).await?
            }
            Planned::Report(mut fresh) => report_one(outbox, &releaser.store, &mut fresh),
        });
    }
    Ok(outcomes)
}

/// Everything `recover` and `kill-all` do with the records in `scope`: [`plan`], report what
/// a crash left unreported, then [`execute`] what needs the host, opening it only then (an
/// epilog on a node with nothing to finish never needs the hypervisor).
pub async fn finish_all(
    config: &Config,
    store: &Store,
    outbox: &Arc<Outbox>,
    scope: &Scope,
    trigger: &Trigger,
    budget: Duration,
    interrupted: &AtomicBool,
) -> anyhow::Result<Vec<Outcome>> {
    let planned = plan(store, scope)?;
    let planned = finish_reports(outbox, store, planned, scope, trigger).await;
    if !needs_host(&planned) {
        return Ok(known_outcomes(planned));
    }
    let releaser = Releaser {
        config: config.clone(),
        store: store.clone(),
        host: crate::host::open(config)?,
    };
    execute(
        &releaser,
        outbox,
        planned,
        scope,
        trigger,
        budget,
        interrupted,
    )
    .await
}

/// The outcomes of a plan that needs no host work.
pub fn known_outcomes(plan: Vec<Planned>) -> Vec<Outcome> {
    plan.into_iter()
        .filter_map(|p| match p {
            Planned::Known(o) => Some(o),
            Planned::Finish(_) | Planned::Report(_) => None,
        })
        .collect()
}

/// PBS epilogues pass `123.server` while a PBS-on-Slurm shim may record `123`: compare the
/// full ids, or the numeric parts when one side has no server suffix.
fn same_job(recorded: Option<&str>, asked: &str) -> bool {
    let Some(recorded) = recorded else {
        return false;
    };
    recorded == asked
        || (!recorded.contains('.') || !asked.contains('.'))
            && recorded.split('.').next() == asked.split('.').next()
}

fn skip_reason(store: &Store, record: &LeaseRecord, scope: &Scope) -> Option<Outcome> {
    let skip = if record.is_finished() {
        Skip::AlreadyFinished
    } else if !scope.boot && store.pilot_is_running(record) {
        // A live pilot finishes its own lease, and its own report: a second one from here
        // would reach the coordinator as a different event. kill-all signals it instead.
        Skip::PilotRunning
    } else {
        return None;
    };
    Some(Outcome {
        skipped: Some(skip),
        ..Outcome::known(record, skip.note())
    })
}

async fn recover_one(
    releaser: &Releaser,
    outbox: &Arc<Outbox>,
    record: &mut LeaseRecord,
    trigger: &Trigger,
    budget: Duration,
) -> anyhow::Result<Outcome> {
    let from = record.state;
    // A failed lease's report that a crash interrupted goes out first, as it was written;
    // the recovery's own event then says how the lease really ended.
    report::resume(outbox, &releaser.store, record)?;
    let (event, force) = match trigger {
        Trigger::PilotLost => (Event::PilotLost, false),
        Trigger::Admin { force, .. } => (Event::AdminKill, *force),
    };
    let to = record.apply(&event)?;
    releaser.store.save(record)?;
    crate::metrics::publish(&releaser.config, &releaser.store);
    tracing::info!(lease = %record.lease_id, from = %from, state = %to, event = %event, "recovering");
    if to == LeaseState::Unreserving {
        releaser
            .finish(record, budget, Arc::new(AtomicBool::new(force)))
            .await?;
    }
    let outcome = record.state;
    let body = match trigger {
        Trigger::PilotLost => EventBody::Recovered {
            outcome,
            reason: record.end_reason,
            guests: record.guests.clone(),
        },
        Trigger::Admin { by, why, .. } => EventBody::Killed {
            by: by.clone(),
            why: why.clone(),
            outcome,
        },
    };
    report::report_end(outbox, &releaser.store, record, vec![body])?;
    Ok(Outcome {
        lease: record.lease_id.to_string(),
        from: Some(from),
        to: Some(outcome),
        note: match outcome {
            LeaseState::Unreserved => "restored".into(),
            _ => record
                .last_error
                .clone()
                .unwrap_or_else(|| "not restored".into()),
        },
        unfinished: false,
        skipped: None,
    })
}

/// A short table for humans.
pub fn summary_table(outcomes: &[Outcome]) -> String {
    let mut out = format!("{:<24} {:<12} {:<12} NOTE\n", "LEASE", "FROM", "TO");
    for o in outcomes {
        let show = |s: Option<LeaseState>| s.map(|s| s.to_string()).unwrap_or_else(|| "?".into());
        out.push_str(&format!(
            "{:<24} {:<12} {:<12} {}\n",
            o.lease,
            show(o.from),
            show(o.to),
            o.note.lines().next().unwrap_or("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::same_job;

    #[test]
    fn job_ids_match_with_or_without_the_pbs_server_suffix() {
        assert!(same_job(Some("42"), "42"));
        assert!(same_job(Some("42.server"), "42.server"));
        assert!(same_job(Some("42.server"), "42"));
        assert!(same_job(Some("42"), "42.server"));
        assert!(!same_job(Some("42.a"), "42.b"));
        assert!(!same_job(Some("421"), "42"));
        assert!(!same_job(None, "42"));
    }
}
