//! The hypervisor boundary: one small trait, one implementation per backend.
//!
//! A backend switches the node into (and out of) hosting mode for one lease at a time,
//! keeping each lease's share separate so several pilots can hold the node at once and each
//! restores only its own. `reserve` returns the *baseline* — the exact host values before
//! the change — which the pilot persists in the lease record; `release` takes it back, so
//! a recovery in another process (after a crash or reboot) restores exactly the same values.
//!
//! Backends are chosen by config or flag only, never silently: `simulated` is a file-backed
//! stand-in that behaves like the real ones (ownership, unreserve policies, failures on
//! demand); `libvirt` and `xen` are real hypervisors.

pub mod baseline;
pub mod bounded;
pub mod budget;
pub mod ledger;
pub mod simulated;
pub mod unreserve;
pub mod xen;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Config, HostBackend};
use crate::lease::record::LeaseId;

pub use baseline::Baseline;

/// Host problems. Exit status: host failure (or environment, when nothing was changed).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The lease does not fit; nothing was changed.
    #[error(
        "the host cannot give this lease what it asks: {detail}\n\nhint: ask for less (--memory/--cpus), or lower host.host_reserve / host.guest_overhead if they are too cautious"
    )]
    Admission {
        /// The numbers.
        detail: String,
    },
    /// The hypervisor cannot be reached.
    #[error("host backend {backend} is not reachable: {detail}")]
    Unreachable {
        /// Backend name.
        backend: HostBackend,
        /// Why.
        detail: String,
    },
    /// The backend is not available in this build.
    #[error(
        "host backend {backend} is not linked into this binary\n\nhint: the libvirt backend is the `vmpilot-libvirt` binary, installed beside `vmpilot` (which hands libvirt work to it by itself); reinstall vmpilot if it is missing, or use `[host] backend = \"simulated\"` to try vmpilot out"
    )]
    Unsupported {
        /// Backend name.
        backend: HostBackend,
    },
    /// The backend's own file in the state directory (its ledger, the simulated host's
    /// state) could not be written: the environment, not the hypervisor, failed.
    #[error(
        "host operation `{op}` cannot write {path}: {source}\n\nhint: {}",
        crate::safe_dir::write_hint(source)
    )]
    StateWrite {
        /// What was attempted.
        op: String,
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An operation failed.
    #[error("host operation `{op}` failed: {detail}")]
    Operation {
        /// What was attempted, e.g. `release lease a1`.
        op: String,
        /// Why it failed.
        detail: String,
    },
    /// An operation took longer than its bound.
    #[error("host operation `{op}` did not finish within {after:?}")]
    Timeout {
        /// What was attempted.
        op: String,
        /// The bound.
        after: Duration,
    },
    /// A guest name is unknown to the hypervisor.
    #[error("no guest named `{0}` on this host")]
    NoSuchGuest(String),
}

/// What a lease asks of the host.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LeaseShare {
    /// The lease.
    pub lease_id: LeaseId,
    /// Its epoch.
    pub epoch: u64,
    /// Memory for guests, MiB.
    pub memory_mib: u64,
    /// CPUs for guests.
    pub cpus: u32,
    /// Guests the lease may run (each costs `guest_overhead`).
    pub max_guests: u32,
}

impl LeaseShare {
    /// Memory admission charges for this share: its guest memory plus `overhead` per guest
    /// it may run, as (overhead total, charged). Checked: sizes come from flags, job
    /// facts and records, and a sum that wrapped would admit a lease of nearly 2^64 MiB.
    pub fn charged_mib(
        &self,
        overhead: vmpilot_common::units::MemSize,
    ) -> Result<(u64, u64), HostError> {
        let total_overhead = overhead.mib().checked_mul(u64::from(self.max_guests));
        match total_overhead.and_then(|o| Some((o, self.memory_mib.checked_add(o)?))) {
            Some(sums) => Ok(sums),
            None => Err(HostError::Admission {
                detail: format!(
                    "{} MiB for guests plus {overhead} overhead for each of {} guests is more than any host has",
                    self.memory_mib, self.max_guests
                ),
            }),
        }
    }
}

/// What the host has, for admission and `check-config`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// All memory, MiB.
    pub total_memory_mib: u64,
    /// Memory not yet given to any lease, MiB.
    pub free_memory_mib: u64,
    /// All CPUs.
    pub total_cpus: u32,
    /// CPUs not yet given to any lease.
    pub free_cpus: u32,
}

/// The lease a guest belongs to (the protocol's type: the coordinator writes it).
pub use vmpilot_protocol::guest_metadata::GuestOwner;

/// A guest as the hypervisor reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Guest {
    /// Domain name.
    pub name: String,
    /// Owner, when the guest carries vmpilot metadata.
    pub owner: Option<GuestOwner>,
    /// Running (or paused) rather than shut off.
    pub running: bool,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// When it was started relative to the host's other guests: larger is later (libvirt
    /// and Xen: the domain id; simulated: the order guests were added). `None` when the
    /// backend cannot tell, or the guest is not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_order: Option<u64>,
}

/// A running watch on the host's guests (see [`Host::watch_guests`]); dropping it stops
/// the watch, waiting a bounded time for its thread.
pub struct GuestWatch {
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl GuestWatch {
    /// A watch that `stop` ends.
    pub fn new(stop: impl FnOnce() + Send + 'static) -> Self {
        GuestWatch {
            stop: Some(Box::new(stop)),
        }
    }
}

impl Drop for GuestWatch {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

impl std::fmt::Debug for GuestWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuestWatch")
    }
}

/// The hypervisor operations a lease needs. Implementations are blocking; the pilot calls
/// them off its async runtime and bounds each call.
pub trait Host: Send + Sync {
    /// Which backend this is.
    fn backend(&self) -> HostBackend;
    /// What the host has.
    fn capacity(&self) -> Result<Capacity, HostError>;
    /// Switch into hosting mode for `share`; returns the baseline to persist. Must change
    /// nothing when it fails.
    fn reserve(&self, share: &LeaseShare) -> Result<Baseline, HostError>;
    /// Give back `lease`'s share and verify the host is back at `baseline`. Idempotent:
    /// releasing a lease that holds nothing succeeds.
    fn release(&self, lease: &LeaseId, baseline: Option<&Baseline>) -> Result<(), HostError>;
    /// Every guest on the host.
    fn guests(&self) -> Result<Vec<Guest>, HostError>;
    /// Ask a guest to shut down (ACPI); returns at once.
    fn shutdown_guest(&self, name: &str) -> Result<(), HostError>;
    /// Stop a guest at once.
    fn destroy_guest(&self, name: &str) -> Result<(), HostError>;
    /// Save a guest's state to disk and stop it; returns where it was saved.
    fn suspend_guest(&self, name: &str) -> Result<String, HostError>;
    /// While `share` is reserved: `Some(what)` when the lease's running guests together use
    /// more memory or CPUs than it was given. The default (backends that cannot tell) says
    /// nothing is over.
    fn over_budget(&self, share: &LeaseShare) -> Result<Option<String>, HostError> {
        let _ = share;
        Ok(None)
    }
    /// While `share` is reserved: confine the lease's running guests to what it holds
    /// (libvirt: pin them to the lease's cpuset and cap their memory; `baseline` is what
    /// [`Host::reserve`] returned, where the cpuset is kept). Called before every budget
    /// check, so a guest is fenced as soon as the backend reports it running. `Some(what)`
    /// names the guests that could not be fenced and why; the pilot reports that like a
    /// budget violation. The default (backends that cannot fence) fences nothing.
    fn fence(
        &self,
        share: &LeaseShare,
        baseline: Option<&Baseline>,
    ) -> Result<Option<String>, HostError> {
        let _ = (share, baseline);
        Ok(None)
    }
    /// Send `()` on `notify` whenever a guest may have started, stopped or changed (and
    /// once after the watch had to reconnect), until the returned watch is dropped; the
    /// pilot re-checks [`Host::over_budget`] on each. `None`: this backend has no events
    /// (the default), and the budget is not watched.
    fn watch_guests(
        &self,
        notify: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Result<Option<GuestWatch>, HostError> {
        let _ = notify;
        Ok(None)
    }
}

/// Does `guest` belong to `lease`? With `exclusive`, every guest on the host does.
pub fn owned_by(guest: &Guest, lease: &LeaseId, exclusive: bool) -> bool {
    exclusive || guest.owner.as_ref().is_some_and(|o| &o.lease_id == lease)
}

/// Open the configured backend.
pub fn open(config: &Config) -> Result<Arc<dyn Host>, HostError> {
    match config.host.backend {
        HostBackend::Simulated => Ok(Arc::new(
            simulated::SimulatedHost::open(
                &config.state_dir,
                config.host.simulated,
                config.host.host_reserve,
                config.host.guest_overhead,
            )?
            .exclusive(config.host.exclusive),
        )),
        HostBackend::Libvirt => match LIBVIRT.get() {
            Some(open) => open(config),
            None => Err(HostError::Unsupported {
                backend: HostBackend::Libvirt,
            }),
        },
        HostBackend::Xen => Ok(Arc::new(xen::XenHost::open(config)?)),
    }
}

/// How a binary that links libvirt opens its backend (`vmpilot_libvirt::open`).
pub type HostOpener = fn(&Config) -> Result<Arc<dyn Host>, HostError>;

/// The libvirt backend, when this process has one. It lives in its own crate so that
/// `vmpilot` maps no libvirt: only `vmpilot-libvirt` (and tests) provide it.
static LIBVIRT: OnceLock<HostOpener> = OnceLock::new();

/// Give this process its libvirt backend (once; later calls are ignored).
pub fn provide_libvirt(open: HostOpener) {
    let _ = LIBVIRT.set(open);
}

/// Whether this process can open the libvirt backend itself.
pub fn has_libvirt() -> bool {
    LIBVIRT.get().is_some()
}
