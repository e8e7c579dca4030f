//! Lease states and end reasons: the names a lease's life is told in, on disk, on the wire
//! and in logs. Which moves between states are legal is the pilot's business
//! (`vmpilot::lease::transition`), not the protocol's.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a lease is in its life. Vocabulary of the 2008 workspace pilot.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseState {
    /// Record written, host untouched.
    Begin,
    /// Intent: the host is being switched into hosting mode for this lease.
    Reserving,
    /// The host holds this lease's share; guests may run.
    Reserved,
    /// Intent: guests are being stopped and the host restored.
    Unreserving,
    /// Done: the host is back at its baseline for this lease.
    Unreserved,
    /// Done badly: restoring the host failed; the node must not take batch work as is.
    Failed,
}

impl LeaseState {
    /// Every state, in table order.
    pub const ALL: [LeaseState; 6] = [
        LeaseState::Begin,
        LeaseState::Reserving,
        LeaseState::Reserved,
        LeaseState::Unreserving,
        LeaseState::Unreserved,
        LeaseState::Failed,
    ];

    /// The lease is over and its pilot has nothing left to do.
    pub fn is_terminal(self) -> bool {
        matches!(self, LeaseState::Unreserved | LeaseState::Failed)
    }

    /// The host may hold a share for this lease (node is in hosting mode).
    pub fn holds_host(self) -> bool {
        matches!(
            self,
            LeaseState::Reserving
                | LeaseState::Reserved
                | LeaseState::Unreserving
                | LeaseState::Failed
        )
    }

    /// The kebab-case name used on disk, in JSON and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Begin => "begin",
            LeaseState::Reserving => "reserving",
            LeaseState::Reserved => "reserved",
            LeaseState::Unreserving => "unreserving",
            LeaseState::Unreserved => "unreserved",
            LeaseState::Failed => "failed",
        }
    }
}

impl fmt::Display for LeaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a lease ended; reported to the coordinator and shown by `status`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// The lease ran to its deadline.
    Deadline,
    /// The job was cancelled (scancel, qdel) or otherwise terminated by a signal.
    Cancelled,
    /// The batch system preempted the job for higher-priority work.
    Preempted,
    /// The batch system warned that walltime is near.
    EarlyWarning,
    /// An admin's kill-all.
    Admin,
    /// The coordinator released the lease.
    CoordinatorRelease,
    /// The host backend failed.
    HostError,
    /// The pilot died and `recover` finished the lease.
    PilotLost,
}

impl EndReason {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Deadline => "deadline",
            EndReason::Cancelled => "cancelled",
            EndReason::Preempted => "preempted",
            EndReason::EarlyWarning => "early-warning",
            EndReason::Admin => "admin",
            EndReason::CoordinatorRelease => "coordinator-release",
            EndReason::HostError => "host-error",
            EndReason::PilotLost => "pilot-lost",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
