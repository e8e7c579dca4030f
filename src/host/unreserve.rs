//! Stopping a lease's guests when the lease ends, the same way for every backend.
//!
//! The policy (`[host] on_unreserve`) says how: ACPI shutdown then destroy, managed save, or
//! destroy at once. Whatever the policy, the whole step is bounded: guests still running
//! when the bound is reached are destroyed, and a second SIGTERM (`force`) switches every
//! guest to destroy at once. Guests are handled in parallel, a few at a time.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Guest, Host};
use crate::config::UnreservePolicy;
use crate::lease::record::GuestFate;

/// How many guests are stopped at once; hypervisors serialize much of the work anyway.
pub const STOP_CONCURRENCY: usize = 4;

/// How often a guest's state is checked while it shuts down.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(100);

/// Most time kept at the end of the bound for destroying guests that ignored the ACPI
/// request (a real `virsh destroy` takes 1–2 s, more on a loaded host); at most a third of
/// the bound.
const DESTROY_RESERVE: Duration = Duration::from_secs(5);

/// Stop `guests` according to `policy` within `bound`. Never fails as a whole: each guest's
/// fate says what happened to it, including failures.
pub fn stop_guests(
    host: &dyn Host,
    guests: Vec<Guest>,
    policy: UnreservePolicy,
    bound: Duration,
    force: &AtomicBool,
) -> Vec<GuestFate> {
    // ACPI shutdown may use the bound minus what a destroy needs afterwards.
    let deadline = Instant::now() + bound - DESTROY_RESERVE.min(bound / 3);
    let queue = Mutex::new(guests);
    let fates = Mutex::new(Vec::new());
    let workers = STOP_CONCURRENCY.min(queue.lock().map(|q| q.len()).unwrap_or(0));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while let Some(guest) = queue.lock().ok().and_then(|mut q| q.pop()) {
                    let fate = stop_one(host, &guest, policy, deadline, force);
                    if let Ok(mut f) = fates.lock() {
                        f.push(fate);
                    }
                }
            });
        }
    });
    let mut fates = fates.into_inner().unwrap_or_default();
    fates.sort_by(|a, b| a.name.cmp(&b.name));
    fates
}

fn fate(name: &str, fate: &str, detail: Option<String>) -> GuestFate {
    GuestFate {
        name: name.to_string(),
        fate: fate.to_string(),
        detail,
    }
}

fn stop_one(
    host: &dyn Host,
    guest: &Guest,
    policy: UnreservePolicy,
    deadline: Instant,
    force: &AtomicBool,
) -> GuestFate {
    if !guest.running {
        return fate(&guest.name, "already-stopped", None);
    }
    if force.load(Ordering::SeqCst) {
        return destroy(host, &guest.name, None);
    }
    match policy {
        UnreservePolicy::Destroy => destroy(host, &guest.name, None),
        UnreservePolicy::Suspend => match host.suspend_guest(&guest.name) {
            Ok(saved_to) => fate(&guest.name, "suspended", Some(saved_to)),
            Err(e) => destroy(host, &guest.name, Some(format!("suspend failed: {e}"))),
        },
        UnreservePolicy::Shutdown => shutdown(host, &guest.name, deadline, force),
    }
}

fn shutdown(host: &dyn Host, name: &str, deadline: Instant, force: &AtomicBool) -> GuestFate {
    if let Err(e) = host.shutdown_guest(name) {
        return destroy(host, name, Some(format!("shutdown request failed: {e}")));
    }
    loop {
        match host.guests() {
            Ok(list) if !list.iter().any(|g| g.name == name && g.running) => {
                return fate(name, "shut-down", None);
            }
            _ => {}
        }
        if force.load(Ordering::SeqCst) {
            return destroy(host, name, Some("second termination signal".into()));
        }
        if Instant::now() >= deadline {
            return destroy(
                host,
                name,
                Some("did not shut down within the grace".into()),
            );
        }
        std::thread::sleep(SHUTDOWN_CHECK);
    }
}

fn destroy(host: &dyn Host, name: &str, why: Option<String>) -> GuestFate {
    match host.destroy_guest(name) {
        Ok(()) => fate(name, "destroyed", why),
        Err(e) => fate(
            name,
            "failed",
            Some(match why {
                Some(w) => format!("{w}; destroy failed: {e}"),
                None => format!("destroy failed: {e}"),
            }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SimulatedConfig;
    use crate::host::simulated::{SimGuest, SimState, SimulatedHost};
    use crate::units::MemSize;

    fn host_with(dir: &std::path::Path, guests: &[(&str, Option<u64>)]) -> SimulatedHost {
        let h = SimulatedHost::open(
            dir,
            SimulatedConfig {
                memory: MemSize(4096),
                cpus: 4,
            },
            MemSize(0),
            MemSize(0),
        )
        .unwrap();
        h.with_node("add", |n| {
            for (name, delay) in guests {
                n.guests.push(SimGuest {
                    name: name.to_string(),
                    owner: None,
                    memory_mib: 64,
                    vcpus: 1,
                    state: SimState::Running,
                    shutdown_delay_ms: *delay,
                    shutdown_requested_ms: None,
                });
            }
            Ok(())
        })
        .unwrap();
        h
    }

    #[test]
    fn shutdown_policy_destroys_what_ignores_acpi_at_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let h = host_with(dir.path(), &[("polite", Some(50)), ("stubborn", None)]);
        let guests = h.guests().unwrap();
        let fates = stop_guests(
            &h,
            guests,
            UnreservePolicy::Shutdown,
            Duration::from_millis(500),
            &AtomicBool::new(false),
        );
        let got: Vec<_> = fates
            .iter()
            .map(|f| (f.name.as_str(), f.fate.as_str()))
            .collect();
        assert_eq!(got, [("polite", "shut-down"), ("stubborn", "destroyed")]);
        assert!(h.guests().unwrap().iter().all(|g| !g.running));
    }

    #[test]
    fn force_skips_the_graceful_step() {
        let dir = tempfile::tempdir().unwrap();
        let h = host_with(dir.path(), &[("slow", Some(60_000))]);
        let fates = stop_guests(
            &h,
            h.guests().unwrap(),
            UnreservePolicy::Shutdown,
            Duration::from_secs(60),
            &AtomicBool::new(true),
        );
        assert_eq!(fates[0].fate, "destroyed");
    }

    #[test]
    fn suspend_reports_where_and_destroy_is_immediate() {
        let dir = tempfile::tempdir().unwrap();
        let h = host_with(dir.path(), &[("a", None)]);
        let fates = stop_guests(
            &h,
            h.guests().unwrap(),
            UnreservePolicy::Suspend,
            Duration::from_secs(1),
            &AtomicBool::new(false),
        );
        assert_eq!(fates[0].fate, "suspended");
        assert!(fates[0].detail.as_deref().unwrap().contains("a.save"));
        let h2dir = tempfile::tempdir().unwrap();
        let h2 = host_with(h2dir.path(), &[("b", None)]);
        let fates = stop_guests(
            &h2,
            h2.guests().unwrap(),
            UnreservePolicy::Destroy,
            Duration::from_secs(1),
            &AtomicBool::new(false),
        );
        assert_eq!(fates[0].fate, "destroyed");
    }
}
