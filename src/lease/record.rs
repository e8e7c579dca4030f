//! One lease's persisted record: everything `status`, `recover` and `kill-all` need to know
//! about a lease without asking its pilot (which may be dead).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{EndReason, Event, LeaseState, TransitionError, transition};
use crate::process::ProcessIdentity;

/// Format version of lease records; bumped on incompatible changes.
pub const RECORD_VERSION: u32 = 1;

/// A lease id: the coordinator's slot id, also the record's file name, so it is restricted
/// to characters safe in paths, URLs and logs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(try_from = "String", into = "String")]
pub struct LeaseId(String);

/// A lease id that does not follow the rules.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "lease id `{0}` is not valid: use 1 to 64 letters, digits, `.`, `_` or `-`, not starting with `.`"
)]
pub struct BadLeaseId(pub String);

impl LeaseId {
    /// A fresh random id for pilots started without `--lease-id`.
    pub fn generate() -> Self {
        LeaseId(uuid::Uuid::new_v4().simple().to_string()[..16].to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LeaseId {
    type Err = BadLeaseId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(LeaseId(s.to_string()))
        } else {
            Err(BadLeaseId(s.to_string()))
        }
    }
}

impl TryFrom<String> for LeaseId {
    type Error = BadLeaseId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<LeaseId> for String {
    fn from(id: LeaseId) -> String {
        id.0
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a node name is refused, if it is: a node name is a host name (letters, digits,
/// `-` and `_`, in dot-separated labels of 1 to 63 characters, at most 253 in all, no
/// label starting or ending with `-`). The coordinator puts node names into libvirt URIs
/// and file names and shows them on its page; anything else could change what they mean.
pub fn node_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 253 {
        return Some(format!(
            "is {} characters; a host name has 1 to 253",
            name.len()
        ));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Some(format!(
                "{:?} is not a host name (letters, digits, `-`, `_` and dots only)",
                name.chars().take(80).collect::<String>()
            ));
        }
    }
    None
}

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
    pub baseline: Option<serde_json::Value>,
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
        events: Vec<crate::coordinator::event::EventEnvelope>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_path_safe() {
        for ok in ["slot-1", "a", "A.b_c-9", &"x".repeat(64)] {
            assert!(ok.parse::<LeaseId>().is_ok(), "{ok}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "sp ace", &"x".repeat(65), "é"] {
            assert!(bad.parse::<LeaseId>().is_err(), "{bad}");
        }
        assert_eq!(LeaseId::generate().as_str().len(), 16);
    }
}
