//! Each lease's share of a real host, kept apart so several leases can hold one node.
//!
//! The libvirt and Xen backends change at most one host-wide value per lease — the hugepage
//! pool (`nr_hugepages`) or dom0's memory — and several leases may move it at once. This
//! ledger (one JSON file under `state_dir`, rewritten atomically under an `flock`) records
//! what every lease holds and by how much it moved that value (its *delta*), plus the value
//! before the first lease moved it (the *node baseline*). Releasing a lease undoes only its
//! own delta while others remain, and restores the node baseline exactly when it is the
//! last one out.
//!
//! The entry is written *before* the host value changes, so a crash part-way leaves a
//! ledger entry that `release` (in `recover`) can undo; it is removed only once the value is
//! back.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Guest, HostError, LeaseShare, owned_by};
use crate::config::HostBackend;
use crate::lease::record::LeaseId;
use crate::safe_dir::SafeDir;

/// Version of the ledger file layout.
const LEDGER_VERSION: u32 = 1;

/// What one lease holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// Lease epoch.
    pub epoch: u64,
    /// Memory charged in admission (lease memory plus per-guest overhead), MiB.
    pub charged_mib: u64,
    /// CPUs given to the lease.
    pub cpus: u32,
    /// How far this lease moved the host value (hugepages added: positive; dom0 MiB
    /// ballooned out: negative); 0 when it moved nothing.
    #[serde(default)]
    pub delta: i64,
    /// The CPUs the lease's guests are pinned to (libvirt with `fence = true`), so another
    /// lease picks others; empty when nothing is pinned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpuset: Vec<u32>,
}

/// The ledger's content.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LedgerState {
    /// File layout version.
    pub version: u32,
    /// The host value before the first lease still holding a delta moved it.
    #[serde(default)]
    pub node_baseline: Option<u64>,
    /// Shares by lease.
    #[serde(default)]
    pub leases: BTreeMap<LeaseId, Share>,
}

impl Default for LedgerState {
    fn default() -> Self {
        LedgerState {
            version: LEDGER_VERSION,
            node_baseline: None,
            leases: BTreeMap::new(),
        }
    }
}

impl LedgerState {
    /// CPUs held by all leases.
    pub fn cpus(&self) -> u32 {
        self.leases
            .values()
            .map(|s| s.cpus)
            .fold(0, u32::saturating_add)
    }

    /// CPUs pinned for leases other than `lease`.
    pub fn pinned_cpus(&self, lease: &LeaseId) -> Vec<u32> {
        self.leases
            .iter()
            .filter(|(id, _)| *id != lease)
            .flat_map(|(_, s)| s.cpuset.iter().copied())
            .collect()
    }

    /// Does any lease other than `lease` hold a delta?
    pub fn others_moved(&self, lease: &LeaseId) -> bool {
        self.leases
            .iter()
            .any(|(id, s)| id != lease && s.delta != 0)
    }

    /// The value the host should have once `lease` is gone: the node baseline plus what the
    /// other leases still hold. Computed from the ledger alone, never from the value the
    /// host has now, so a release repeated after a crash (value written, entry not yet
    /// removed) writes the same target again and never takes another lease's share. Only a
    /// ledger without a baseline (none has been written so since 0.1) falls back to
    /// `current - delta`.
    pub fn value_after_release(&self, lease: &LeaseId, current: u64) -> u64 {
        let target = match self.node_baseline {
            Some(baseline) => {
                let others: i128 = self
                    .leases
                    .iter()
                    .filter(|(id, _)| *id != lease)
                    .map(|(_, s)| i128::from(s.delta))
                    .sum();
                i128::from(baseline) + others
            }
            None => {
                let delta = self.leases.get(lease).map_or(0, |s| s.delta);
                i128::from(current) - i128::from(delta)
            }
        };
        u64::try_from(target.max(0)).unwrap_or(u64::MAX)
    }

    /// Record `share` for `lease`, remembering `current` as the node baseline when this is
    /// the first lease to move the value.
    pub fn add(&mut self, lease: &LeaseId, share: Share, current: u64) {
        if share.delta != 0 && !self.others_moved(lease) {
            self.node_baseline = Some(current);
        }
        self.leases.insert(lease.clone(), share);
    }

    /// Forget `lease`; the node baseline goes with the last lease that moved the value.
    pub fn remove(&mut self, lease: &LeaseId) {
        self.leases.remove(lease);
        if !self.leases.values().any(|s| s.delta != 0) {
            self.node_baseline = None;
        }
    }
}

/// The ledger file of one backend.
#[derive(Debug)]
pub struct Ledger {
    dir: SafeDir,
    name: String,
    lock_name: String,
    backend: HostBackend,
}

/// A ledger is a few entries per lease; a bigger file is not one.
const LEDGER_CAP: u64 = 1 << 20;

/// The ledger, locked; [`LedgerGuard::save`] writes changes, dropping it unlocks.
pub struct LedgerGuard<'a> {
    ledger: &'a Ledger,
    /// The content, to read and change.
    pub state: LedgerState,
    /// Who wrote the ledger file (None: there was none yet).
    owner: Option<u32>,
    _lock: File,
}

impl Ledger {
    /// The ledger `{state_dir}/{name}-ledger.json` (created on first save).
    pub fn open(state_dir: &Path, name: &str, backend: HostBackend) -> Result<Self, HostError> {
        let dir = SafeDir::open(state_dir).map_err(|e| HostError::Unreachable {
            backend,
            detail: format!("cannot open state directory {}: {e}", state_dir.display()),
        })?;
        Ok(Ledger {
            dir,
            name: format!("{name}-ledger.json"),
            lock_name: format!("{name}-ledger.lock"),
            backend,
        })
    }

    /// Where the ledger lives.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// Lock and read the ledger.
    pub fn lock(&self, op: &str) -> Result<LedgerGuard<'_>, HostError> {
        let fail = |detail: String| HostError::Operation {
            op: op.to_string(),
            detail,
        };
        let lock = self
            .dir
            .open_lock(&self.lock_name, 4096)
            .map_err(|e| fail(format!("{}: {e}", self.dir.join(&self.lock_name).display())))?;
        lock.lock().map_err(|e| {
            fail(format!(
                "cannot lock {}: {e}",
                self.dir.join(&self.lock_name).display()
            ))
        })?;
        let owner = self.dir.owner_of(&self.name);
        let state = match self.dir.read(&self.name, LEDGER_CAP) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).map_err(|e| {
                fail(format!(
                    "{} ledger {} is corrupt: {e}\n\nhint: it records what each lease holds on this host; \
                     repair it by hand (or remove it once no lease is active)",
                    self.backend,
                    self.path().display()
                ))
            })?,
            Ok(None) => LedgerState::default(),
            Err(e) => return Err(fail(format!("{}: {e}", self.path().display()))),
        };
        Ok(LedgerGuard {
            ledger: self,
            state,
            owner,
            _lock: lock,
        })
    }
}

impl LedgerGuard<'_> {
    /// Write the ledger atomically and durably.
    pub fn save(&self, op: &str) -> Result<(), HostError> {
        // A struct of plain maps and integers always serializes.
        let bytes = serde_json::to_vec_pretty(&self.state).expect("ledger serializes");
        self.ledger
            .dir
            .write_atomic(&self.ledger.name, &bytes)
            .map_err(|source| HostError::StateWrite {
                op: op.to_string(),
                path: self.ledger.path(),
                source,
            })
    }

    /// May root set a host-wide value (the hugepage pool, dom0's memory) from what this
    /// ledger says? Only when root wrote it: changing those values needs root, so a
    /// ledger written by the pilot account never moved them, and numbers it holds are
    /// not root's to apply.
    pub fn check_trusted_for_host_values(&self, op: &str) -> Result<(), HostError> {
        match self.owner {
            Some(uid) if uid != 0 && nix::unistd::geteuid().is_root() => {
                Err(HostError::Operation {
                    op: op.to_string(),
                    detail: format!(
                        "the ledger {} (written by uid {uid}, not root) says this lease moved a host-wide value; \
                         root does not set host values from a file another account wrote\n\n\
                         hint: pilots that grow hugepages or balloon dom0 run as root (docs/security.md); \
                         check the value by hand, then remove the lease's entry from the ledger",
                        self.ledger.path().display()
                    ),
                })
            }
            _ => Ok(()),
        }
    }
}

/// How the running guests of `share`'s lease exceed what it was given, if they do.
pub fn budget_excess(guests: &[Guest], share: &LeaseShare, exclusive: bool) -> Option<String> {
    let mine: Vec<&Guest> = guests
        .iter()
        .filter(|g| g.running && owned_by(g, &share.lease_id, exclusive))
        .collect();
    let memory: u64 = mine
        .iter()
        .map(|g| g.memory_mib)
        .fold(0, u64::saturating_add);
    let vcpus: u32 = mine.iter().map(|g| g.vcpus).fold(0, u32::saturating_add);
    if memory <= share.memory_mib && vcpus <= share.cpus {
        return None;
    }
    let names: Vec<&str> = mine.iter().map(|g| g.name.as_str()).collect();
    Some(format!(
        "lease {}'s running guests ({}) use {memory} MiB and {vcpus} vCPUs, but the lease has {} MiB and {} CPUs",
        share.lease_id,
        names.join(", "),
        share.memory_mib,
        share.cpus
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::GuestOwner;

    fn id(s: &str) -> LeaseId {
        s.parse().unwrap()
    }

    fn share(delta: i64) -> Share {
        Share {
            epoch: 1,
            charged_mib: 100,
            cpus: 1,
            delta,
            cpuset: Vec::new(),
        }
    }

    #[test]
    fn last_lease_out_restores_the_node_baseline_others_undo_their_delta() {
        let mut s = LedgerState::default();
        s.add(&id("a"), share(10), 5);
        s.add(&id("b"), share(20), 15);
        assert_eq!(s.node_baseline, Some(5));
        // a leaves first: only its 10 come off.
        assert_eq!(s.value_after_release(&id("a"), 35), 25);
        // Released again after a crash between writing 25 and dropping a's entry: the
        // same 25, not 15 (which would take 10 of b's pages). Issue #12, item 5: vmpilot
        // 0.1 computed `current - delta` and gave 15.
        assert_eq!(s.value_after_release(&id("a"), 25), 25);
        s.remove(&id("a"));
        assert_eq!(s.node_baseline, Some(5));
        // b is the last one: the exact value before any lease, whatever the host says.
        assert_eq!(s.value_after_release(&id("b"), 26), 5);
        assert_eq!(s.value_after_release(&id("b"), 5), 5);
        s.remove(&id("b"));
        assert_eq!(s, LedgerState::default());
    }

    #[test]
    fn negative_deltas_and_zero_deltas() {
        let mut s = LedgerState::default();
        s.add(&id("plain"), share(0), 4096);
        assert_eq!(
            s.node_baseline, None,
            "a lease that moved nothing sets no baseline"
        );
        s.add(&id("x"), share(-1024), 4096);
        s.add(&id("y"), share(-512), 3072);
        assert_eq!(s.value_after_release(&id("x"), 2560), 3584);
        assert_eq!(s.value_after_release(&id("x"), 3584), 3584, "repeated");
        assert_eq!(s.cpus(), 3);
    }

    #[test]
    fn ledger_file_round_trips_under_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path(), "libvirt", HostBackend::Libvirt).unwrap();
        {
            let mut g = l.lock("t").unwrap();
            g.state.add(&id("a"), share(3), 7);
            g.save("t").unwrap();
        }
        let g = l.lock("t").unwrap();
        assert_eq!(g.state.leases[&id("a")].delta, 3);
        assert_eq!(g.state.node_baseline, Some(7));
        drop(g);
        std::fs::write(l.path(), b"{nope").unwrap();
        let e = l.lock("t").err().unwrap().to_string();
        assert!(e.contains("corrupt") && e.contains("hint:"), "{e}");
    }

    #[test]
    fn budget_counts_only_the_lease_s_running_guests() {
        let g = |name: &str, lease: Option<&str>, running, mem, vcpus| Guest {
            name: name.into(),
            owner: lease.map(|l| GuestOwner {
                lease_id: id(l),
                epoch: 1,
            }),
            running,
            memory_mib: mem,
            vcpus,
            started_order: None,
        };
        let guests = [
            g("a", Some("l"), true, 512, 1),
            g("b", Some("l"), true, 512, 1),
            g("off", Some("l"), false, 4096, 8),
            g("other", Some("m"), true, 4096, 8),
            g("free", None, true, 4096, 8),
        ];
        let mut s = LeaseShare {
            lease_id: id("l"),
            epoch: 1,
            memory_mib: 1024,
            cpus: 2,
            max_guests: 4,
        };
        assert_eq!(budget_excess(&guests, &s, false), None);
        s.memory_mib = 1000;
        let e = budget_excess(&guests, &s, false).unwrap();
        assert!(e.contains("1024 MiB") && e.contains("a, b"), "{e}");
        s.memory_mib = 1 << 20;
        assert!(
            budget_excess(&guests, &s, true).is_some(),
            "exclusive owns all"
        );
    }
}
