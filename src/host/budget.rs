//! Keeping a reserved lease's guests within its budget, the same way for every backend.
//!
//! The backend first confines the lease's running guests to what it holds ([`Host::fence`]:
//! libvirt pins them to the lease's CPUs and caps their memory), then says whether they use
//! more than the lease was given ([`Host::over_budget`]), and wakes the pilot when guests
//! change ([`Host::watch_guests`]). A guest that cannot be fenced is reported like a budget
//! violation (and only reported: the policy below acts on the numbers alone);
//! this module applies `[host] over_budget` to what it finds: `report` touches nothing,
//! `stop-newest` destroys the lease's most recently started running guest, checks again,
//! and repeats until the lease is back within budget. Guests of other leases and unowned
//! guests are never touched.
//!
//! Every step is a blocking host call; the pilot runs [`enforce`] off its runtime, bounds
//! it, and raises `stop` when the lease starts ending so no guest is destroyed behind the
//! unreserve step's back.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{Guest, Host, HostError, LeaseShare, owned_by};
use crate::config::OverBudgetPolicy;
use crate::lease::record::LeaseId;

/// What a budget check found and what was done about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The backend's account: guests and totals against the lease's.
    pub detail: String,
    /// `reported`, or which guests `stop-newest` stopped (and what failed).
    pub action: String,
}

/// Fence `share`'s guests, check them and apply `policy`; `None` when every guest is fenced
/// and the lease is within budget. `baseline` is the lease's, from [`Host::reserve`].
pub fn enforce(
    host: &dyn Host,
    share: &LeaseShare,
    baseline: Option<&crate::host::Baseline>,
    policy: OverBudgetPolicy,
    exclusive: bool,
    stop: &AtomicBool,
) -> Result<Option<Violation>, HostError> {
    // Fence first: a guest that just started is confined before it is counted.
    let unfenced = host.fence(share, baseline)?;
    let Some(detail) = host.over_budget(share)? else {
        return Ok(unfenced.map(|detail| Violation {
            detail,
            action: "reported".to_string(),
        }));
    };
    let action = match policy {
        OverBudgetPolicy::Report => "reported".to_string(),
        OverBudgetPolicy::StopNewest => stop_newest(host, share, exclusive, stop),
    };
    let detail = match unfenced {
        Some(f) => format!("{detail}; {f}"),
        None => detail,
    };
    Ok(Some(Violation { detail, action }))
}

/// Destroy the newest owned guest until the lease is within budget; says what it did.
fn stop_newest(host: &dyn Host, share: &LeaseShare, exclusive: bool, stop: &AtomicBool) -> String {
    let mut stopped: Vec<String> = Vec::new();
    let outcome = loop {
        if stop.load(Ordering::SeqCst) {
            break Some("the lease is ending; the unreserve step stops the rest".to_string());
        }
        let guests = match host.guests() {
            Ok(g) => g,
            Err(e) => break Some(format!("cannot list guests: {e}")),
        };
        let Some(newest) = newest_owned(&guests, &share.lease_id, exclusive) else {
            break Some("no running guest of the lease is left to stop".to_string());
        };
        // A guest still up after a destroy that succeeded must not make this loop forever.
        if stopped.contains(&newest.name) {
            break Some(format!("{} is still running after destroy", newest.name));
        }
        tracing::warn!(lease = %share.lease_id, guest = %newest.name, "over budget: destroying the lease's newest guest");
        if let Err(e) = host.destroy_guest(&newest.name) {
            break Some(format!("destroy {} failed: {e}", newest.name));
        }
        stopped.push(newest.name.clone());
        match host.over_budget(share) {
            Ok(None) => break None,
            Ok(Some(_)) => {}
            Err(e) => break Some(format!("cannot check the budget again: {e}")),
        }
    };
    describe(&stopped, outcome)
}

/// `stopped a, b`, `stopped a; still over budget: why`, or `stopped nothing: why`.
fn describe(stopped: &[String], problem: Option<String>) -> String {
    match (stopped.is_empty(), problem) {
        (false, None) => format!("stopped {}", stopped.join(", ")),
        (false, Some(why)) => format!("stopped {}; still over budget: {why}", stopped.join(", ")),
        (true, Some(why)) => format!("stopped nothing: {why}"),
        (true, None) => "stopped nothing".to_string(),
    }
}

/// The lease's most recently started running guest: the largest `started_order`, guests
/// whose order is unknown counting as older than any known; ties go to the last name.
pub fn newest_owned<'a>(
    guests: &'a [Guest],
    lease: &LeaseId,
    exclusive: bool,
) -> Option<&'a Guest> {
    guests
        .iter()
        .filter(|g| g.running && owned_by(g, lease, exclusive))
        .max_by(|a, b| (a.started_order, &a.name).cmp(&(b.started_order, &b.name)))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::config::HostBackend;
    use crate::host::{Capacity, GuestOwner};

    fn guest(
        name: &str,
        lease: Option<&str>,
        running: bool,
        mib: u64,
        order: Option<u64>,
    ) -> Guest {
        Guest {
            name: name.into(),
            owner: lease.map(|l| GuestOwner {
                lease_id: l.parse().unwrap(),
                epoch: 1,
            }),
            running,
            memory_mib: mib,
            vcpus: 1,
            started_order: order,
        }
    }

    fn share(mib: u64) -> LeaseShare {
        LeaseShare {
            lease_id: "a".parse().unwrap(),
            epoch: 1,
            memory_mib: mib,
            cpus: 8,
            max_guests: 4,
        }
    }

    /// Guests in memory; destroy marks one off, or fails for the names in `stuck`.
    struct Fake {
        guests: Mutex<Vec<Guest>>,
        stuck: Vec<&'static str>,
        /// What `fence` reports as not fenced.
        unfenced: Option<&'static str>,
    }

    impl Host for Fake {
        fn backend(&self) -> HostBackend {
            HostBackend::Simulated
        }
        fn capacity(&self) -> Result<Capacity, HostError> {
            panic!("budget enforcement must not call Host::capacity")
        }
        fn reserve(&self, _: &LeaseShare) -> Result<crate::host::Baseline, HostError> {
            panic!("budget enforcement must not call Host::reserve")
        }
        fn release(&self, _: &LeaseId, _: Option<&crate::host::Baseline>) -> Result<(), HostError> {
            panic!("budget enforcement must not call Host::release")
        }
        fn guests(&self) -> Result<Vec<Guest>, HostError> {
            Ok(self.guests.lock().unwrap().clone())
        }
        fn shutdown_guest(&self, _: &str) -> Result<(), HostError> {
            panic!("budget enforcement must not call Host::shutdown_guest")
        }
        fn destroy_guest(&self, name: &str) -> Result<(), HostError> {
            if self.stuck.contains(&name) {
                return Err(HostError::Operation {
                    op: format!("destroy guest {name}"),
                    detail: "stuck".into(),
                });
            }
            for g in self.guests.lock().unwrap().iter_mut() {
                if g.name == name {
                    g.running = false;
                }
            }
            Ok(())
        }
        fn suspend_guest(&self, _: &str) -> Result<String, HostError> {
            panic!("budget enforcement must not call Host::suspend_guest")
        }
        fn fence(
            &self,
            _: &LeaseShare,
            _: Option<&crate::host::Baseline>,
        ) -> Result<Option<String>, HostError> {
            Ok(self.unfenced.map(String::from))
        }
        fn over_budget(&self, share: &LeaseShare) -> Result<Option<String>, HostError> {
            Ok(crate::host::ledger::budget_excess(
                &self.guests()?,
                share,
                false,
            ))
        }
    }

    fn fake(stuck: Vec<&'static str>) -> Fake {
        Fake {
            guests: Mutex::new(vec![
                guest("old", Some("a"), true, 512, Some(3)),
                guest("newest", Some("a"), true, 512, Some(9)),
                guest("middle", Some("a"), true, 512, Some(5)),
                guest("stranger", None, true, 4096, Some(12)),
                guest("other-lease", Some("b"), true, 4096, Some(11)),
            ]),
            stuck,
            unfenced: None,
        }
    }

    fn running(h: &Fake) -> Vec<String> {
        h.guests()
            .unwrap()
            .into_iter()
            .filter(|g| g.running)
            .map(|g| g.name)
            .collect()
    }

    #[test]
    fn newest_is_the_latest_started_owned_running_guest() {
        let gs = [
            guest("x", Some("a"), true, 1, None),
            guest("y", Some("a"), true, 1, Some(2)),
            guest("z", Some("a"), false, 1, Some(7)),
            guest("w", None, true, 1, Some(9)),
        ];
        let id: LeaseId = "a".parse().unwrap();
        assert_eq!(newest_owned(&gs, &id, false).unwrap().name, "y");
        assert_eq!(newest_owned(&gs, &id, true).unwrap().name, "w", "exclusive");
        assert!(newest_owned(&gs[2..3], &id, false).is_none(), "not running");
    }

    #[test]
    fn a_guest_that_cannot_be_fenced_is_reported_and_nothing_is_stopped() {
        let mut h = fake(vec![]);
        h.unfenced = Some("cannot fence guests: old: pin vCPU 0: denied");
        let v = enforce(
            &h,
            &share(2048),
            None,
            OverBudgetPolicy::StopNewest,
            false,
            &AtomicBool::new(false),
        )
        .unwrap()
        .unwrap();
        assert_eq!(v.action, "reported");
        assert!(v.detail.contains("old: pin vCPU 0"), "{}", v.detail);
        assert_eq!(running(&h).len(), 5, "within budget: nothing stopped");
        // Over budget too: both are in the detail, and the policy acts on the numbers.
        let v = enforce(
            &h,
            &share(600),
            None,
            OverBudgetPolicy::StopNewest,
            false,
            &AtomicBool::new(false),
        )
        .unwrap()
        .unwrap();
        assert!(
            v.detail.contains("1536 MiB") && v.detail.contains("cannot fence"),
            "{}",
            v.detail
        );
        assert_eq!(v.action, "stopped newest, middle");
    }

    #[test]
    fn report_touches_nothing() {
        let h = fake(vec![]);
        let v = enforce(
            &h,
            &share(1000),
            None,
            OverBudgetPolicy::Report,
            false,
            &AtomicBool::new(false),
        )
        .unwrap()
        .unwrap();
        assert_eq!(v.action, "reported");
        assert!(v.detail.contains("1536 MiB"), "{}", v.detail);
        assert_eq!(running(&h).len(), 5);
        let within = enforce(
            &h,
            &share(2048),
            None,
            OverBudgetPolicy::Report,
            false,
            &AtomicBool::new(false),
        );
        assert_eq!(within.unwrap(), None);
    }

    #[test]
    fn stop_newest_stops_only_as_many_of_the_lease_s_newest_as_needed() {
        let h = fake(vec![]);
        let v = enforce(
            &h,
            &share(600),
            None,
            OverBudgetPolicy::StopNewest,
            false,
            &AtomicBool::new(false),
        )
        .unwrap()
        .unwrap();
        assert_eq!(v.action, "stopped newest, middle");
        assert_eq!(running(&h), ["old", "stranger", "other-lease"]);
    }

    #[test]
    fn stop_newest_says_what_failed_and_stops_when_the_lease_ends() {
        let h = fake(vec!["middle"]);
        let v = enforce(
            &h,
            &share(600),
            None,
            OverBudgetPolicy::StopNewest,
            false,
            &AtomicBool::new(false),
        )
        .unwrap()
        .unwrap();
        assert!(
            v.action
                .starts_with("stopped newest; still over budget: destroy middle failed"),
            "{}",
            v.action
        );
        let h = fake(vec![]);
        let v = enforce(
            &h,
            &share(600),
            None,
            OverBudgetPolicy::StopNewest,
            false,
            &AtomicBool::new(true),
        )
        .unwrap()
        .unwrap();
        assert!(
            v.action.starts_with("stopped nothing: the lease is ending"),
            "{}",
            v.action
        );
        assert_eq!(running(&h).len(), 5);
    }
}
