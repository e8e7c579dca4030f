//! One lease's persisted record: everything `status`, `recover` and `kill-all` need to know
//! about a lease without asking its pilot (which may be dead).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{EndReason, Event, LeaseState, TransitionError, transition};
use crate::process::ProcessIdentity;

/// Format version of lease records; bumped on incompatible changes.
pub const RECORD_VERSION: u32 = 1;

pub use vmpilot_protocol::event::GuestFate;
pub use vmpilot_protocol::lease_id::{BadLeaseId, LeaseId, node_name_problem};

/// One step of a lease's history, kept in the record for post-mortems.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The state entered.
    pub state: LeaseState,
    /// The event that caused it.
    pub event: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The persisted lease.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LeaseRecord {
    /// Record format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// Lease id (file name).
    pub lease_id: LeaseId,
    /// Incremented each time a lease id is reused on this node; fences stale directives.
    pub epoch: u64,
    /// Current state.
    pub state: LeaseState,
    /// Why it ended (or is ending); the first reason wins.
    pub end_reason: Option<EndReason>,
    /// Node name.
    pub node: String,
    /// Batch job id, when under a batch system.
    pub job_id: Option<String>,
    /// Memory handed to guests, MiB.
    pub memory_mib: u64,
    /// CPUs handed to guests.
    pub cpus: u32,
    /// Grace before the deadline, seconds.
    pub grace_secs: u64,
    /// The "must be gone by" instant.
    #[serde(with = "time::serde::rfc3339")]
    pub deadline: OffsetDateTime,
    /// The pilot that owns this lease; `recover` checks pid *and* start time.
    pub pilot: ProcessIdentity,
    /// Host backend that holds the reservation.
    pub host_backend: String,
    /// The host's values before this lease changed them, as the backend recorded them;
    /// release and recovery restore exactly these.
    pub baseline: Option<crate::host::Baseline>,
    /// Next per-lease event sequence number.
    pub next_seq: u64,
    /// What each guest went through at unreserve.
    #[serde(default)]
    pub guests: Vec<GuestFate>,
    /// The last error, for `status` and post-mortems.
    pub last_error: Option<String>,
    /// Every state entered.
    pub history: Vec<HistoryEntry>,
    /// Whether the events that report the lease's end are safely spooled. Absent (done) in
    /// records written before it existed.
    #[serde(default, skip_serializing_if = "EndReport::is_done")]
    pub end_report: EndReport,
}

/// Reporting a lease's end without losing it or sending it twice as new. The record is the
/// spool's write-ahead log for its last events: entering `unreserved` or `failed` makes the
/// report `Due` in the same save; the events are then written here (`Spooling`), saved,
/// spooled, and the report is `Done`. A crash anywhere in between leaves `Due` or
/// `Spooling`, and `recover` finishes the report (`Spooling`: the very same events, whose
/// ids the coordinator already knows if they did get through). See `coordinator::report`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "kebab-case", tag = "step", deny_unknown_fields)]
pub enum EndReport {
    /// Nothing to report, or reported.
    #[default]
    Done,
    /// The lease ended; no event about it exists yet.
    Due,
    /// These events report the end; they may or may not be in the spool yet.
    Spooling {
        /// The events, exactly as spooled.
        events: Vec<vmpilot_protocol::event::EventEnvelope>,
    },
}

impl EndReport {
    /// Nothing left to do.
    pub fn is_done(&self) -> bool {
        matches!(self, EndReport::Done)
    }
}

impl LeaseRecord {
    /// Nothing is left to do for this lease: restored, and its end reported. What
    /// `recover` and `kill-all` skip.
    pub fn is_finished(&self) -> bool {
        self.state == LeaseState::Unreserved && self.end_report.is_done()
    }

    /// Apply `event` through [`transition`], stamping the history. The first event that
    /// ends the lease sets `end_reason`; later ones (a second SIGTERM) do not overwrite it.
    /// Entering `unreserved` or `failed` makes the end report [`EndReport::Due`], so the
    /// save that records the end also records that it must be reported.
    pub fn apply(&mut self, event: &Event) -> Result<LeaseState, TransitionError> {
        let to = transition(self.state, event)?;
        if self.end_reason.is_none() {
            self.end_reason = event.end_reason();
        }
        if matches!(to, LeaseState::Unreserved | LeaseState::Failed) {
            self.end_report = EndReport::Due;
        }
        self.state = to;
        self.history.push(HistoryEntry {
            state: to,
            event: event.to_string(),
            at: OffsetDateTime::now_utc(),
        });
        Ok(to)
    }

    /// Take the next event sequence number.
    pub fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Seconds left until the deadline (negative once past).
    pub fn seconds_left(&self, now: OffsetDateTime) -> i64 {
        (self.deadline - now).whole_seconds()
    }
}
