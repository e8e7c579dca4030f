//! Pilot → coordinator event messages (protocol v1, docs/protocol.md).
//!
//! Every message carries the protocol version, a unique event id (the coordinator's
//! idempotency key), the lease id and epoch, a per-lease sequence number, the node, the
//! batch job and the time. The `type` field selects the body.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::lease_id::LeaseId;
use crate::state::{EndReason, LeaseState};

/// The protocol version pilots speak.
pub const PROTOCOL_VERSION: u32 = 1;

/// One event, as spooled and as POSTed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EventEnvelope {
    /// Protocol version.
    pub protocol: u32,
    /// Unique id; re-delivery of the same id must not be applied twice.
    pub event_id: String,
    /// Lease id.
    pub lease_id: LeaseId,
    /// Lease epoch.
    pub epoch: u64,
    /// Per-lease sequence number, from 0, without gaps in one pilot's run.
    pub seq: u64,
    /// Node name.
    pub node: String,
    /// Batch job id.
    pub job_id: Option<String>,
    /// When the event happened.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// What happened.
    #[serde(flatten)]
    pub body: EventBody,
}

/// The node's hypervisor as a coordinator needs it to start guests for a lease.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Hypervisor {
    /// The pilot's host backend.
    pub backend: HostBackend,
    /// The libvirt connection URI the pilot uses (`libvirt` only). It is local to the node
    /// (e.g. `qemu:///system`); a remote coordinator maps it to a remote URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

/// The event-specific part.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum EventBody {
    /// The node is hosting for this lease until `deadline`.
    Reserved {
        /// Memory for guests, MiB.
        memory_mib: u64,
        /// CPUs for guests.
        cpus: u32,
        /// The lease's "must be gone by" instant.
        #[serde(with = "time::serde::rfc3339")]
        deadline: OffsetDateTime,
        /// Seconds before the deadline at which unreserving starts.
        grace_secs: u64,
        /// Where the lease's guests are to be defined (absent from pilots before it was
        /// added; a coordinator then has to know the node's hypervisor itself).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hypervisor: Option<Hypervisor>,
    },
    /// The lease is alive and holds the node (sent while reserved, not spooled: a late
    /// heartbeat is worthless). Its `seq` is that of the last durable event.
    Heartbeat {
        /// The current deadline.
        #[serde(with = "time::serde::rfc3339")]
        deadline: OffsetDateTime,
        /// The lease state.
        state: LeaseState,
    },
    /// The lease is ending; guests are being stopped.
    Unreserving {
        /// Why.
        reason: EndReason,
        /// The signal, when a signal ended it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
    },
    /// The node is restored for this lease.
    Unreserved {
        /// Why the lease ended.
        reason: EndReason,
        /// Each guest's fate.
        guests: Vec<GuestFate>,
    },
    /// Restoring failed; the node needs an admin or `recover`.
    Failed {
        /// Why the lease ended.
        reason: Option<EndReason>,
        /// What went wrong.
        error: String,
        /// Each guest's fate.
        guests: Vec<GuestFate>,
    },
    /// `recover` finished a lease whose pilot was gone.
    Recovered {
        /// `unreserved` or `failed`.
        outcome: LeaseState,
        /// Why the lease ended.
        reason: Option<EndReason>,
        /// Each guest's fate.
        guests: Vec<GuestFate>,
    },
    /// An admin's kill-all ended the lease.
    Killed {
        /// Who ran it (user name).
        by: String,
        /// The admin's reason.
        why: String,
        /// `unreserved` or `failed`.
        outcome: LeaseState,
    },
    /// While reserved, the lease's running guests use more memory or CPUs than it was
    /// given (`[host] over_budget`); the lease goes on.
    OverBudget {
        /// What was found: the guests and their totals against the lease's.
        detail: String,
        /// What the pilot did: `reported`, or which guests it stopped (`stop-newest`).
        action: String,
    },
}

impl EventBody {
    /// The `type` name.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::Reserved { .. } => "reserved",
            EventBody::Heartbeat { .. } => "heartbeat",
            EventBody::Unreserving { .. } => "unreserving",
            EventBody::Unreserved { .. } => "unreserved",
            EventBody::Failed { .. } => "failed",
            EventBody::Recovered { .. } => "recovered",
            EventBody::Killed { .. } => "killed",
            EventBody::OverBudget { .. } => "over-budget",
        }
    }
}

/// What happened to one guest when its lease ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GuestFate {
    /// Domain name.
    pub name: String,
    /// `shut-down`, `destroyed`, `suspended`, `already-stopped` or `failed`.
    pub fate: String,
    /// Where a suspended guest was saved, or why stopping failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Which hypervisor backend hosts the guests.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum HostBackend {
    /// A file-backed stand-in for a hypervisor, for trying vmpilot out and for fast tests.
    Simulated,
    /// libvirt (KVM/QEMU).
    Libvirt,
    /// Xen through `xl`.
    Xen,
}

impl fmt::Display for HostBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostBackend::Simulated => "simulated",
            HostBackend::Libvirt => "libvirt",
            HostBackend::Xen => "xen",
        })
    }
}
