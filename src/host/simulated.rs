//! A pretend hypervisor whose whole state is one JSON file under `state_dir`.
//!
//! Separate processes (the pilot, `status`, `recover`, tests) see the same node because the
//! state lives on disk and every operation is a locked read-modify-write. It behaves like the
//! real backends where it matters: admission with numbers, per-lease shares, guest
//! ownership by metadata, ACPI shutdown that a guest may take its time over or ignore, and
//! failures or hangs on demand (`faults`) so the safeguards can be tested quickly.
//!
//! Its guest watch ([`Host::watch_guests`]) is the one place it differs in kind: a real
//! hypervisor pushes lifecycle events, while this one checks every 200 ms whether the state
//! file was rewritten (every change, from any process, rewrites it) and says so. That is
//! a stand-in for events so the pilot's budget watch can be tested quickly; the libvirt
//! backend is event-driven.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use super::baseline::{Baseline, SimulatedBaseline, wrong_backend};
use super::ledger::budget_excess;
use super::{Capacity, Guest, GuestOwner, GuestWatch, Host, HostError, LeaseShare};
use crate::config::{HostBackend, SimulatedConfig};
use crate::lease::record::LeaseId;
use crate::safe_dir::SafeDir;
use vmpilot_common::units::MemSize;

/// The simulated host's file.
pub const STATE_FILE: &str = "simulated-host.json";

/// How often the guest watch looks at the state file.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// A host operation that can be made to fail or hang.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FaultOp {
    /// `reserve`.
    Reserve,
    /// `release`.
    Release,
    /// `shutdown_guest`.
    Shutdown,
    /// `destroy_guest`.
    Destroy,
    /// `suspend_guest`.
    Suspend,
}

/// How a faulty operation misbehaves.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FaultMode {
    /// Return an error.
    Error,
    /// Sleep for `hang_ms` before doing the operation.
    Hang,
    /// Panic, as a bug in a backend would: callers must not take it for success.
    Panic,
}

/// An injected failure, consumed `times` times.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Which operation.
    pub op: FaultOp,
    /// What it does.
    pub mode: FaultMode,
    /// How many more calls it affects.
    pub times: u32,
    /// Hang length.
    #[serde(default)]
    pub hang_ms: u64,
}

/// A guest's run state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SimState {
    /// Running.
    Running,
    /// Shut off.
    ShutOff,
    /// Saved to disk (managed save).
    Saved,
}

/// A simulated guest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SimGuest {
    /// Domain name.
    pub name: String,
    /// Lease metadata, if any.
    pub owner: Option<GuestOwner>,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Run state.
    pub state: SimState,
    /// How long an ACPI shutdown takes; `None`: the guest ignores it.
    pub shutdown_delay_ms: Option<u64>,
    /// When an ACPI shutdown was requested (ms since the epoch).
    #[serde(default)]
    pub shutdown_requested_ms: Option<u64>,
}

/// One lease's share of the simulated host.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SimReservation {
    /// Memory charged (lease memory + overhead), MiB.
    pub memory_mib: u64,
    /// CPUs.
    pub cpus: u32,
    /// Lease epoch.
    pub epoch: u64,
}

/// The whole simulated node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct SimNode {
    /// Total memory, MiB.
    pub memory_mib: u64,
    /// Total CPUs.
    pub cpus: u32,
    /// Shares by lease.
    pub reservations: BTreeMap<LeaseId, SimReservation>,
    /// Guests.
    pub guests: Vec<SimGuest>,
    /// Injected failures.
    pub faults: Vec<Fault>,
}

/// The simulated backend.
#[derive(Debug)]
pub struct SimulatedHost {
    path: PathBuf,
    lock_path: PathBuf,
    dir: SafeDir,
    size: SimulatedConfig,
    host_reserve: MemSize,
    guest_overhead: MemSize,
    /// `[host] exclusive`: every guest belongs to the lease.
    exclusive: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn op_error(op: &str, detail: impl Into<String>) -> HostError {
    HostError::Operation {
        op: op.to_string(),
        detail: detail.into(),
    }
}

impl SimNode {
    fn reserved_mib(&self) -> u64 {
        self.reservations
            .values()
            .map(|r| r.memory_mib)
            .fold(0, u64::saturating_add)
    }

    fn reserved_cpus(&self) -> u32 {
        self.reservations
            .values()
            .map(|r| r.cpus)
            .fold(0, u32::saturating_add)
    }

    /// Settle guests whose ACPI shutdown has had time to complete.
    fn settle(&mut self) {
        let now = now_ms();
        for g in &mut self.guests {
            if let (SimState::Running, Some(asked), Some(delay)) =
                (g.state, g.shutdown_requested_ms, g.shutdown_delay_ms)
                && now >= asked + delay
            {
                g.state = SimState::ShutOff;
            }
        }
    }

    /// Consume a fault for `op`, if one is armed.
    fn take_fault(&mut self, op: FaultOp) -> Option<Fault> {
        let i = self.faults.iter().position(|f| f.op == op && f.times > 0)?;
        let fault = self.faults[i].clone();
        self.faults[i].times -= 1;
        if self.faults[i].times == 0 {
            self.faults.remove(i);
        }
        Some(fault)
    }

    fn guest_mut(&mut self, name: &str) -> Result<&mut SimGuest, HostError> {
        self.guests
            .iter_mut()
            .find(|g| g.name == name)
            .ok_or_else(|| HostError::NoSuchGuest(name.to_string()))
    }
}

impl SimulatedHost {
    /// Open (creating if needed) the simulated node under `state_dir`.
    pub fn open(
        state_dir: &Path,
        size: SimulatedConfig,
        host_reserve: MemSize,
        guest_overhead: MemSize,
    ) -> Result<Self, HostError> {
        let unreachable = |detail: String| HostError::Unreachable {
            backend: HostBackend::Simulated,
            detail,
        };
        let dir = SafeDir::open(state_dir)
            .map_err(|e| unreachable(format!("{}: {e}", state_dir.display())))?;
        let host = SimulatedHost {
            path: state_dir.join(STATE_FILE),
            lock_path: state_dir.join("simulated-host.lock"),
            dir,
            size,
            host_reserve,
            guest_overhead,
            exclusive: false,
        };
        // Read once so an unreadable or corrupt file is reported at open, not mid-lease.
        host.with_node("open", |_| Ok(()))?;
        Ok(host)
    }

    /// Count every guest as the lease's (`[host] exclusive`), for the budget check.
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// Run `f` on the node under the file lock, saving any change atomically.
    pub fn with_node<T>(
        &self,
        op: &str,
        f: impl FnOnce(&mut SimNode) -> Result<T, HostError>,
    ) -> Result<T, HostError> {
        let lock = self.lock()?;
        let mut node = self.read(op)?;
        let before = node.clone();
        node.memory_mib = self.size.memory.mib();
        node.cpus = self.size.cpus;
        node.settle();
        let out = f(&mut node);
        if node != before {
            let bytes = serde_json::to_vec_pretty(&node).expect("simulated node serializes");
            self.dir
                .write_atomic(STATE_FILE, &bytes)
                .map_err(|source| HostError::StateWrite {
                    op: op.to_string(),
                    path: self.path.clone(),
                    source,
                })?;
        }
        drop(lock);
        out
    }

    fn lock(&self) -> Result<File, HostError> {
        let file = self
            .dir
            .open_lock("simulated-host.lock", 4096)
            .map_err(|e| HostError::Unreachable {
                backend: HostBackend::Simulated,
                detail: format!("{}: {e}", self.lock_path.display()),
            })?;
        file.lock().map_err(|e| op_error("lock", e.to_string()))?;
        Ok(file)
    }

    fn read(&self, op: &str) -> Result<SimNode, HostError> {
        match self
            .dir
            .read(STATE_FILE, 16 << 20)
            .and_then(|b| b.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound)))
        {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                op_error(
                    op,
                    format!(
                        "simulated host file {} is corrupt: {e}",
                        self.path.display()
                    ),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SimNode::default()),
            Err(e) => Err(op_error(op, format!("{}: {e}", self.path.display()))),
        }
    }

    /// Apply an armed fault for `op`: error out, or hang (outside the lock) then proceed.
    fn fault(&self, op: FaultOp, what: &str) -> Result<(), HostError> {
        let fault = self.with_node(what, |n| Ok(n.take_fault(op)))?;
        match fault {
            Some(Fault {
                mode: FaultMode::Error,
                ..
            }) => Err(op_error(what, "injected failure (simulated host fault)")),
            Some(Fault {
                mode: FaultMode::Hang,
                hang_ms,
                ..
            }) => {
                std::thread::sleep(Duration::from_millis(hang_ms));
                Ok(())
            }
            Some(Fault {
                mode: FaultMode::Panic,
                ..
            }) => panic!("{what}: injected panic (simulated host fault)"),
            None => Ok(()),
        }
    }
}

impl Host for SimulatedHost {
    fn backend(&self) -> HostBackend {
        HostBackend::Simulated
    }

    fn capacity(&self) -> Result<Capacity, HostError> {
        self.with_node("capacity", |n| {
            Ok(Capacity {
                total_memory_mib: n.memory_mib,
                free_memory_mib: n.memory_mib.saturating_sub(n.reserved_mib()),
                total_cpus: n.cpus,
                free_cpus: n.cpus.saturating_sub(n.reserved_cpus()),
            })
        })
    }

    fn reserve(&self, share: &LeaseShare) -> Result<Baseline, HostError> {
        let what = format!("reserve lease {}", share.lease_id);
        self.fault(FaultOp::Reserve, &what)?;
        let (overhead, charged) = share.charged_mib(self.guest_overhead)?;
        let reserve = self.host_reserve.mib();
        self.with_node(&what, |n| {
            if n.reservations.contains_key(&share.lease_id) {
                return Err(op_error(&what, "the lease already holds a share of this host"));
            }
            let free = n
                .memory_mib
                .saturating_sub(n.reserved_mib().saturating_add(reserve));
            if charged > free {
                return Err(HostError::Admission {
                    detail: format!(
                        "needs {charged} MiB ({} MiB for guests + {overhead} MiB overhead for {} guests), \
                         but only {free} MiB are free ({} MiB total, {} MiB held by other leases, {reserve} MiB host reserve)",
                        share.memory_mib,
                        share.max_guests,
                        n.memory_mib,
                        n.reserved_mib()
                    ),
                });
            }
            let free_cpus = n.cpus.saturating_sub(n.reserved_cpus());
            if share.cpus > free_cpus {
                return Err(HostError::Admission {
                    detail: format!(
                        "needs {} CPUs but only {free_cpus} of {} are free",
                        share.cpus, n.cpus
                    ),
                });
            }
            let baseline = SimulatedBaseline {
                charged_mib: charged,
                cpus: share.cpus,
                reserved_mib_before: n.reserved_mib(),
            };
            n.reservations.insert(
                share.lease_id.clone(),
                SimReservation {
                    memory_mib: charged,
                    cpus: share.cpus,
                    epoch: share.epoch,
                },
            );
            Ok(Baseline::Simulated(baseline))
        })
    }

    fn release(&self, lease: &LeaseId, baseline: Option<&Baseline>) -> Result<(), HostError> {
        let what = format!("release lease {lease}");
        self.fault(FaultOp::Release, &what)?;
        let expected = match baseline {
            None => None,
            Some(Baseline::Simulated(b)) => Some(b),
            Some(other) => return Err(wrong_backend(&what, other, "simulated")),
        };
        self.with_node(&what, |n| {
            if let (Some(held), Some(exp)) = (n.reservations.get(lease), expected)
                && (held.memory_mib != exp.charged_mib || held.cpus != exp.cpus)
            {
                {
                    return Err(op_error(
                        &what,
                        format!(
                            "the host holds {} MiB/{} CPUs for this lease, the record says {} MiB/{} CPUs",
                            held.memory_mib, held.cpus, exp.charged_mib, exp.cpus
                        ),
                    ));
                }
            }
            n.reservations.remove(lease);
            Ok(())
        })
    }

    fn guests(&self) -> Result<Vec<Guest>, HostError> {
        self.with_node("list guests", |n| {
            Ok(n.guests
                .iter()
                .enumerate()
                .map(|(i, g)| Guest {
                    name: g.name.clone(),
                    owner: g.owner.clone(),
                    running: g.state == SimState::Running,
                    memory_mib: g.memory_mib,
                    vcpus: g.vcpus,
                    // Guests are kept in the order they were added (re-adding one moves it
                    // last), which is the order they started.
                    started_order: (g.state == SimState::Running).then_some(i as u64 + 1),
                })
                .collect())
        })
    }

    fn shutdown_guest(&self, name: &str) -> Result<(), HostError> {
        let what = format!("shutdown guest {name}");
        self.fault(FaultOp::Shutdown, &what)?;
        self.with_node(&what, |n| {
            let g = n.guest_mut(name)?;
            if g.state == SimState::Running && g.shutdown_requested_ms.is_none() {
                g.shutdown_requested_ms = Some(now_ms());
            }
            Ok(())
        })
    }

    fn destroy_guest(&self, name: &str) -> Result<(), HostError> {
        let what = format!("destroy guest {name}");
        self.fault(FaultOp::Destroy, &what)?;
        self.with_node(&what, |n| {
            n.guest_mut(name)?.state = SimState::ShutOff;
            Ok(())
        })
    }

    fn suspend_guest(&self, name: &str) -> Result<String, HostError> {
        let what = format!("suspend guest {name}");
        self.fault(FaultOp::Suspend, &what)?;
        let saved_to = format!("simulated-save/{name}.save");
        self.with_node(&what, |n| {
            n.guest_mut(name)?.state = SimState::Saved;
            Ok(saved_to)
        })
    }

    fn over_budget(&self, share: &LeaseShare) -> Result<Option<String>, HostError> {
        Ok(budget_excess(&self.guests()?, share, self.exclusive))
    }

    fn watch_guests(&self, notify: UnboundedSender<()>) -> Result<Option<GuestWatch>, HostError> {
        let path = self.path.clone();
        let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
        // Taken now, not in the thread: a change made right after this returns must be seen.
        let mut seen = fingerprint(&path);
        let thread = std::thread::Builder::new()
            .name("vmpilot-sim-watch".into())
            .spawn(move || {
                // Any message, or the watch dropped: stop.
                while let Err(std_mpsc::RecvTimeoutError::Timeout) =
                    stop_rx.recv_timeout(WATCH_INTERVAL)
                {
                    let now = fingerprint(&path);
                    if now != seen {
                        seen = now;
                        if notify.send(()).is_err() {
                            return;
                        }
                    }
                }
            })
            .map_err(|e| op_error("watch guests", format!("cannot start a thread: {e}")))?;
        Ok(Some(GuestWatch::new(move || {
            drop(stop_tx);
            // Bounded: the thread wakes at least every WATCH_INTERVAL.
            let _ = thread.join();
        })))
    }
}

/// What tells a rewrite of the state file: it is replaced atomically (new inode), and its
/// modification time and size change.
fn fingerprint(path: &Path) -> Option<(u64, SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(dir: &Path) -> SimulatedHost {
        SimulatedHost::open(
            dir,
            SimulatedConfig {
                memory: MemSize(8192),
                cpus: 4,
            },
            MemSize(1024),
            MemSize(128),
        )
        .unwrap()
    }

    fn share(id: &str, mib: u64, cpus: u32) -> LeaseShare {
        LeaseShare {
            lease_id: id.parse().unwrap(),
            epoch: 1,
            memory_mib: mib,
            cpus,
            max_guests: 2,
        }
    }

    #[test]
    fn shares_add_up_and_each_release_removes_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        let a = h.reserve(&share("a", 2048, 1)).unwrap();
        let _b = h.reserve(&share("b", 1024, 2)).unwrap();
        let cap = h.capacity().unwrap();
        assert_eq!(cap.free_memory_mib, 8192 - (2048 + 256) - (1024 + 256));
        assert_eq!(cap.free_cpus, 1);
        h.release(&"a".parse().unwrap(), Some(&a)).unwrap();
        let cap = h.capacity().unwrap();
        assert_eq!(cap.free_memory_mib, 8192 - (1024 + 256));
        // Releasing twice is harmless.
        h.release(&"a".parse().unwrap(), Some(&a)).unwrap();
    }

    #[test]
    fn admission_refuses_with_numbers_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        let e = h.reserve(&share("big", 7000, 1)).unwrap_err().to_string();
        assert!(
            e.contains("7256 MiB") && e.contains("1024 MiB host reserve"),
            "{e}"
        );
        let e = h.reserve(&share("cpu", 10, 5)).unwrap_err().to_string();
        assert!(e.contains("5 CPUs"), "{e}");
        assert_eq!(h.capacity().unwrap().free_memory_mib, 8192);
    }

    #[test]
    fn faults_fire_the_requested_number_of_times() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        h.with_node("arm", |n| {
            n.faults.push(Fault {
                op: FaultOp::Release,
                mode: FaultMode::Error,
                times: 1,
                hang_ms: 0,
            });
            Ok(())
        })
        .unwrap();
        let id: LeaseId = "a".parse().unwrap();
        let b = h.reserve(&share("a", 100, 1)).unwrap();
        assert!(h.release(&id, Some(&b)).is_err());
        h.release(&id, Some(&b)).unwrap();
    }

    #[test]
    fn acpi_shutdown_takes_its_delay_and_can_be_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        h.with_node("add", |n| {
            for (name, delay) in [("quick", Some(0)), ("stubborn", None)] {
                n.guests.push(SimGuest {
                    name: name.into(),
                    owner: None,
                    memory_mib: 64,
                    vcpus: 1,
                    state: SimState::Running,
                    shutdown_delay_ms: delay,
                    shutdown_requested_ms: None,
                });
            }
            Ok(())
        })
        .unwrap();
        h.shutdown_guest("quick").unwrap();
        h.shutdown_guest("stubborn").unwrap();
        let running: Vec<_> = h
            .guests()
            .unwrap()
            .into_iter()
            .filter(|g| g.running)
            .map(|g| g.name)
            .collect();
        assert_eq!(running, ["stubborn"]);
        h.destroy_guest("stubborn").unwrap();
        assert!(h.guests().unwrap().iter().all(|g| !g.running));
        assert!(matches!(
            h.destroy_guest("nope"),
            Err(HostError::NoSuchGuest(_))
        ));
    }
    #[test]
    fn the_watch_says_when_guests_change_and_the_budget_sees_them() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watch = h.watch_guests(tx).unwrap().unwrap();
        let lease = share("a", 1000, 4);
        assert_eq!(h.over_budget(&lease).unwrap(), None);
        for name in ["first", "second"] {
            h.with_node("add", |n| {
                n.guests.push(SimGuest {
                    name: name.into(),
                    owner: Some(GuestOwner {
                        lease_id: "a".parse().unwrap(),
                        epoch: 1,
                    }),
                    memory_mib: 600,
                    vcpus: 1,
                    state: SimState::Running,
                    shutdown_delay_ms: Some(0),
                    shutdown_requested_ms: None,
                });
                Ok(())
            })
            .unwrap();
        }
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while rx.try_recv().is_err() {
            assert!(std::time::Instant::now() < until, "no notification");
            std::thread::sleep(Duration::from_millis(20));
        }
        let over = h.over_budget(&lease).unwrap().unwrap();
        assert!(over.contains("1200 MiB"), "{over}");
        let orders: Vec<_> = h
            .guests()
            .unwrap()
            .iter()
            .map(|g| g.started_order)
            .collect();
        assert_eq!(orders, [Some(1), Some(2)], "the order guests were added");
        // Dropping the watch returns (it joins the thread), and the thread is gone with its
        // sender: the channel ends.
        drop(watch);
        while rx.blocking_recv().is_some() {}
    }
}
