//! Finishing leases whose pilot cannot: after a SIGKILL, a crash, a reboot, or an admin's
//! kill-all.
//!
//! Recovery is not a special path: it loads each record, decides from the pilot's identity
//! (pid, start time, boot id) whether the pilot is gone, and drives the lease to its end
//! through the same `transition()` and the same [`Releaser`] the pilot uses. Running it
//! twice is harmless: finished leases are skipped.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::Serialize;

use crate::coordinator::event::EventBody;
use crate::coordinator::outbox::Outbox;
use crate::coordinator::report;
use crate::lease::record::LeaseRecord;
use crate::lease::store::Store;
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
}

impl Outcome {
    /// Did this lease end with the node not restored (or unreadable)?
    pub fn is_failure(&self) -> bool {
        self.to == Some(LeaseState::Failed) || self.to.is_none() && self.from.is_none()
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
pub fn plan(store: &Store, scope: &Scope, trigger: &Trigger) -> anyhow::Result<Vec<Planned>> {
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
                }));
                continue;
            }
        };
        if let Some(job) = &scope.job
            && !same_job(record.job_id.as_deref(), job)
        {
            continue;
        }
        planned.push(match skip_reason(&record, scope, trigger) {
            Some(o) => Planned::Known(o),
            None if record.state == LeaseState::Unreserved => Planned::Report(Box::new(record)),
            None => Planned::Finish(Box::new(record)),
        });
    }
    Ok(planned)
}

/// Does the plan need the host?
pub fn needs_host(plan: &[Planned]) -> bool {
    plan.iter().any(|p| matches!(p, Planned::Finish(_)))
}

/// Report the ends a crash left unreported (no host needed); the rest of the plan is
/// unchanged. Never stops at the first failure.
pub fn finish_reports(outbox: &Outbox, store: &Store, plan: Vec<Planned>) -> Vec<Planned> {
    plan.into_iter()
        .map(|p| match p {
            Planned::Report(mut record) => Planned::Known(report_one(outbox, store, &mut record)),
            other => other,
        })
        .collect()
}

/// Finish the end report of one ended lease: the events a crash left in the record, or its
/// `unreserved`/`failed` event if none was written yet.
fn report_one(outbox: &Outbox, store: &Store, record: &mut LeaseRecord) -> Outcome {
    let state = Some(record.state);
    let done = match report::resume(outbox, store, record) {
        Ok(true) => Ok(()),
        Ok(false) => {
            let body = report::end_body(record);
            report::report_end(outbox, store, record, vec![body])
        }
        Err(e) => Err(e),
    };
    Outcome {
        lease: record.lease_id.to_string(),
        from: state,
        to: state,
        note: match done {
            Ok(()) => "reported the end a crash left unreported".into(),
            Err(e) => format!("cannot report the end: {e:#}"),
        },
    }
}

/// Carry out a plan. Never stops at the first failure.
pub async fn execute(
    releaser: &Releaser,
    outbox: &Arc<Outbox>,
    plan: Vec<Planned>,
    trigger: &Trigger,
    budget: Duration,
) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for p in plan {
        outcomes.push(match p {
            Planned::Known(o) => o,
            Planned::Finish(mut record) => {
                recover_one(releaser, outbox, &mut record, trigger, budget).await?
            }
            Planned::Report(mut record) => report_one(outbox, &releaser.store, &mut record),
        });
    }
    Ok(outcomes)
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

/// Recover (or kill) every lease in `scope`: [`plan`] then [`execute`].
pub async fn recover_all(
    releaser: &Releaser,
    outbox: &Arc<Outbox>,
    scope: &Scope,
    trigger: &Trigger,
    budget: Duration,
) -> anyhow::Result<Vec<Outcome>> {
    let planned = plan(&releaser.store, scope, trigger)?;
    let planned = finish_reports(outbox, &releaser.store, planned);
    execute(releaser, outbox, planned, trigger, budget).await
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

fn skip_reason(record: &LeaseRecord, scope: &Scope, trigger: &Trigger) -> Option<Outcome> {
    let ended = record.state == LeaseState::Unreserved;
    let note = if ended && record.end_report.is_done() {
        "already finished"
    } else if !scope.boot
        && (ended || matches!(trigger, Trigger::PilotLost))
        && record.pilot.is_alive()
    {
        // A live pilot finishes its own lease, and its own report: a second one from here
        // would reach the coordinator as a different event.
        "pilot still running"
    } else {
        return None;
    };
    Some(Outcome {
        lease: record.lease_id.to_string(),
        from: Some(record.state),
        to: Some(record.state),
        note: format!("skipped: {note}"),
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
