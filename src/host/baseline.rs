//! The baseline: what a reservation changed on the host, persisted in the lease record
//! before anything else happens, so that release (in the pilot or in `recover`, possibly
//! after a reboot) restores exactly that. One typed value per backend; on disk it is the
//! backend's plain JSON object (the same as before it was typed), told apart by its fields.
//!
//! A record is written by the pilot account and read by root: a baseline that is none of
//! these shapes makes the record unreadable (reported, kept for a post-mortem), and one of
//! another backend is refused by the backend that reads it, never silently ignored.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::HostError;

/// What a reservation changed, by backend.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum Baseline {
    /// A libvirt reservation (it alone has `uri`).
    Libvirt(LibvirtBaseline),
    /// A Xen reservation (it alone has `dom0_before_mib`).
    Xen(XenBaseline),
    /// A simulated reservation (it alone has `reserved_mib_before`).
    Simulated(SimulatedBaseline),
}

impl Baseline {
    /// The backend that wrote it, for messages.
    pub fn backend(&self) -> &'static str {
        match self {
            Baseline::Libvirt(_) => "libvirt",
            Baseline::Xen(_) => "xen",
            Baseline::Simulated(_) => "simulated",
        }
    }
}

/// The error a backend gives for a record whose baseline another backend wrote (the config's
/// backend changed under an open lease, or the record was edited).
pub fn wrong_backend(op: &str, found: &Baseline, expected: &str) -> HostError {
    HostError::Operation {
        op: op.to_string(),
        detail: format!(
            "the lease record's baseline was written by the {} backend, and this node's backend is {expected}\n\n\
             hint: finish the lease with the backend that reserved it (set `[host] backend` back), then change the backend",
            found.backend()
        ),
    }
}

/// What a libvirt reservation changed, persisted in the lease record.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LibvirtBaseline {
    /// The connection URI the lease was admitted on.
    pub uri: String,
    /// Memory charged (lease memory + overhead per guest), MiB.
    pub charged_mib: u64,
    /// CPUs given.
    pub cpus: u32,
    /// The hugepage pool change, when hugepages are on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepages: Option<HugepageBaseline>,
    /// The CPUs the lease's guests are pinned to, when fencing is on (the libvirt crate's `fence`). Kept here
    /// so every process that handles the lease (pilot, `recover`) knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<Vec<u32>>,
}

/// The hugepage pool before and after a lease grew it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HugepageBaseline {
    /// The pool file, for whoever reads the record; a release uses the config's path only.
    pub path: PathBuf,
    /// Pages before the lease.
    pub before: u64,
    /// Pages the lease added.
    pub added: u64,
}

/// What a Xen reservation changed, persisted in the lease record.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct XenBaseline {
    /// dom0's memory before this lease, MiB.
    pub dom0_before_mib: u64,
    /// How much this lease ballooned out of dom0, MiB.
    pub lowered_by_mib: u64,
    /// CPUs given.
    pub cpus: u32,
}

/// The baseline a simulated reservation records: what it charged, so release can check
/// that exactly that share comes off.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SimulatedBaseline {
    /// Memory charged, MiB.
    pub charged_mib: u64,
    /// CPUs given.
    pub cpus: u32,
    /// What the host had reserved before this lease, MiB.
    pub reserved_mib_before: u64,
}
