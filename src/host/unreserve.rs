//! Stopping a lease's guests when the lease ends, the same way for every backend.
//!
//! The policy (`[host] on_unreserve`) says how: ACPI shutdown then destroy, managed save, or
//! destroy at once. The gentle part is bounded: guests still running when the bound is
//! reached are destroyed, and a second SIGTERM (`force`) switches every guest to destroy at
//! once. Destroys are never cut short by the bound. They all run at once, so ending many
//! guests costs about one destroy, and a destroy that starts in time is waited for (up to
//! [`DESTROY_OVERRUN`] past the bound; see `release.rs`). ACPI requests go to every guest
//! first and the guests are then watched together, so they shut down in parallel too.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Guest, Host};
use crate::config::UnreservePolicy;
use crate::lease::record::GuestFate;

/// How many managed saves run at once: each writes the guest's memory to disk, and more in
/// parallel only compete for the same disk.
pub const SUSPEND_CONCURRENCY: usize = 4;

/// Most destroys run at once. A destroy is mostly waiting (for QEMU to exit, for Xen to
/// scrub memory), so all of a lease's guests are destroyed together up to this many.
pub const DESTROY_CONCURRENCY: usize = 32;

/// How often the guests are checked while they shut down.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(100);

/// Most time kept at the end of the bound for destroying guests that ignored the ACPI
/// request (a real `virsh destroy` takes 0.1–2 s, more on a loaded host); at most a third of
/// the bound. Destroys run in parallel, so this does not grow with the number of guests.
const DESTROY_RESERVE: Duration = Duration::from_secs(5);

/// How long past the bound a destroy that started in time is still waited for before the
/// hypervisor is taken to hang. The batch system's kill delay must cover it (docs/batch-systems.md
/// asks for KillWait ≥ grace + 15 s).
pub const DESTROY_OVERRUN: Duration = Duration::from_secs(10);

/// Stop `guests` according to `policy`; the gentle part (ACPI shutdown) ends within `bound`.
/// Never fails as a whole: each guest's fate says what happened to it, including failures.
pub fn stop_guests(
    host: &dyn Host,
    guests: Vec<Guest>,
    policy: UnreservePolicy,
    bound: Duration,
    force: &AtomicBool,
) -> Vec<GuestFate> {
    // ACPI shutdown may use the bound minus what a destroy needs afterwards.
    let gentle_until = Instant::now() + bound - DESTROY_RESERVE.min(bound / 3);
    let (running, stopped): (Vec<_>, Vec<_>) = guests.into_iter().partition(|g| g.running);
    let mut fates: Vec<_> = stopped
        .iter()
        .map(|g| fate(&g.name, "already-stopped", None))
        .collect();
    let names: Vec<String> = running.into_iter().map(|g| g.name).collect();
    let to_destroy: Vec<(String, Option<String>)> = if force.load(Ordering::SeqCst) {
        names.into_iter().map(|n| (n, None)).collect()
    } else {
        match policy {
            UnreservePolicy::Destroy => names.into_iter().map(|n| (n, None)).collect(),
            UnreservePolicy::Suspend => suspend_all(host, names, &mut fates),
            UnreservePolicy::Shutdown => shutdown_all(host, names, gentle_until, force, &mut fates),
        }
    };
    fates.extend(in_parallel(
        to_destroy,
        DESTROY_CONCURRENCY,
        |(name, why)| destroy(host, &name, why),
    ));
    fates.sort_by(|a, b| a.name.cmp(&b.name));
    fates
}

/// Run `work` on every item, at most `concurrency` at a time; the results in no particular
/// order.
fn in_parallel<T: Send, R: Send>(
    items: Vec<T>,
    concurrency: usize,
    work: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let workers = concurrency.min(items.len());
    let queue = Mutex::new(items);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while let Some(item) = queue.lock().ok().and_then(|mut q| q.pop()) {
                    let result = work(item);
                    if let Ok(mut r) = results.lock() {
                        r.push(result);
                    }
                }
            });
        }
    });
    results.into_inner().unwrap_or_default()
}

fn fate(name: &str, fate: &str, detail: Option<String>) -> GuestFate {
    GuestFate {
        name: name.to_string(),
        fate: fate.to_string(),
        detail,
    }
}

/// Managed-save every guest; those whose save fails are returned to be destroyed.
fn suspend_all(
    host: &dyn Host,
    names: Vec<String>,
    fates: &mut Vec<GuestFate>,
) -> Vec<(String, Option<String>)> {
    let results = in_parallel(names, SUSPEND_CONCURRENCY, |name| {
        let result = host.suspend_guest(&name);
        (name, result)
    });
    let mut failed = Vec::new();
    for (name, result) in results {
        match result {
            Ok(saved_to) => fates.push(fate(&name, "suspended", Some(saved_to))),
            Err(e) => failed.push((name, Some(format!("suspend failed: {e}")))),
        }
    }
    failed
}

/// Ask every guest to shut down, then watch them all until they are off or `gentle_until`
/// (or a second termination signal); those still running are returned to be destroyed.
fn shutdown_all(
    host: &dyn Host,
    names: Vec<String>,
    gentle_until: Instant,
    force: &AtomicBool,
    fates: &mut Vec<GuestFate>,
) -> Vec<(String, Option<String>)> {
    let mut to_destroy = Vec::new();
    let mut waiting = Vec::new();
    for name in names {
        match host.shutdown_guest(&name) {
            Ok(()) => waiting.push(name),
            Err(e) => to_destroy.push((name, Some(format!("shutdown request failed: {e}")))),
        }
    }
    while !waiting.is_empty() {
        // A failed listing is retried at the next check; the bound still holds.
        if let Ok(list) = host.guests() {
            waiting.retain(|name| {
                let still_running = list.iter().any(|g| &g.name == name && g.running);
                if !still_running {
                    fates.push(fate(name, "shut-down", None));
                }
                still_running
            });
        }
        if waiting.is_empty() {
            break;
        }
        let why = if force.load(Ordering::SeqCst) {
            "second termination signal"
        } else if Instant::now() >= gentle_until {
            "did not shut down within the grace"
        } else {
            std::thread::sleep(SHUTDOWN_CHECK);
            continue;
        };
        to_destroy.extend(waiting.drain(..).map(|n| (n, Some(why.to_string()))));
    }
    to_destroy
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
    use vmpilot_common::units::MemSize;

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

    /// Every guest is asked to shut down before any is waited for, so they shut down in
    /// parallel: the requests all went out before the first guest could have finished.
    #[test]
    fn shutdown_requests_go_to_every_guest_before_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..12).map(|i| format!("g{i:02}")).collect();
        let spec: Vec<_> = names.iter().map(|n| (n.as_str(), Some(1000))).collect();
        let h = host_with(dir.path(), &spec);
        let fates = stop_guests(
            &h,
            h.guests().unwrap(),
            UnreservePolicy::Shutdown,
            Duration::from_secs(60),
            &AtomicBool::new(false),
        );
        assert!(fates.iter().all(|f| f.fate == "shut-down"), "{fates:?}");
        let asked: Vec<u64> = h
            .with_node("read", |n| {
                Ok(n.guests
                    .iter()
                    .filter_map(|g| g.shutdown_requested_ms)
                    .collect())
            })
            .unwrap();
        assert_eq!(asked.len(), 12);
        let spread = asked.iter().max().unwrap() - asked.iter().min().unwrap();
        assert!(spread < 1000, "requests {spread} ms apart: {asked:?}");
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
