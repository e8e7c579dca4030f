//! Protocol v1 messages as the coordinator reads and writes them (docs/protocol.md,
//! docs/schemas/).
//!
//! The coordinator parses events with its own, deliberately tolerant types rather than the
//! pilot's: unknown fields are ignored and enumerations such as `reason` stay strings, so a
//! newer pilot that adds a field or a reason within protocol v1 is still accepted. What the
//! protocol requires — ids, epoch, sequence number, times, the per-type fields — is checked.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use vmpilot_protocol::lease_id::{LeaseId, node_name_problem};

/// Protocol versions this coordinator accepts.
pub const SUPPORTED_PROTOCOLS: [u64; 1] = [1];

/// Longest accepted `event_id`.
const MAX_EVENT_ID: usize = 128;

/// One pilot event.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct IncomingEvent {
    /// Protocol version (checked before parsing, see [`check_protocol`]).
    pub protocol: u64,
    /// Idempotency key.
    pub event_id: String,
    /// The lease.
    pub lease_id: LeaseId,
    /// The lease's epoch on its node.
    pub epoch: u64,
    /// Per-lease sequence number.
    pub seq: u64,
    /// Node name.
    pub node: String,
    /// Batch job id.
    #[serde(default)]
    pub job_id: Option<String>,
    /// When it happened (pilot's clock).
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The type-specific part.
    #[serde(flatten)]
    pub body: IncomingBody,
}

/// Guest fates are read in the protocol crate's form (name, fate, detail).
pub use vmpilot_protocol::event::GuestFate;

/// The node's hypervisor as a `reserved` event reports it.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct IncomingHypervisor {
    /// `libvirt`, `xen`, `simulated` (kept a string: a newer pilot may add one).
    pub backend: String,
    /// The node-local libvirt URI (`libvirt` only).
    #[serde(default)]
    pub uri: Option<String>,
}

/// The type-specific part of an event.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum IncomingBody {
    /// The node hosts for this lease until `deadline`.
    Reserved {
        /// Memory for guests, MiB.
        memory_mib: u64,
        /// CPUs for guests.
        cpus: u32,
        /// Must-be-gone-by instant.
        #[serde(with = "time::serde::rfc3339")]
        deadline: OffsetDateTime,
        /// Seconds before the deadline at which unreserving starts.
        grace_secs: u64,
        /// The node's hypervisor, when the pilot says (guest templates need it).
        #[serde(default)]
        hypervisor: Option<IncomingHypervisor>,
    },
    /// Still alive (sent while reserved).
    Heartbeat {
        /// The current deadline (may be earlier than at `reserved` after a `shorten`).
        #[serde(with = "time::serde::rfc3339")]
        deadline: OffsetDateTime,
        /// The pilot's lease state.
        state: String,
    },
    /// The lease is ending.
    Unreserving {
        /// Why.
        reason: String,
        /// The signal, when a signal ended it.
        #[serde(default)]
        signal: Option<String>,
    },
    /// The node is restored.
    Unreserved {
        /// Why the lease ended.
        reason: String,
        /// Each guest's fate.
        #[serde(default)]
        guests: Vec<GuestFate>,
    },
    /// Restoring failed.
    Failed {
        /// Why the lease ended.
        #[serde(default)]
        reason: Option<String>,
        /// What went wrong.
        error: String,
        /// Each guest's fate.
        #[serde(default)]
        guests: Vec<GuestFate>,
    },
    /// `vmpilot recover` finished the lease.
    Recovered {
        /// `unreserved` or `failed`.
        outcome: String,
        /// Why the lease ended.
        #[serde(default)]
        reason: Option<String>,
        /// Each guest's fate.
        #[serde(default)]
        guests: Vec<GuestFate>,
    },
    /// While reserved, the lease's guests used more than its budget.
    OverBudget {
        /// What was over, with numbers.
        detail: String,
        /// What the pilot did about it (`reported`, `destroyed NAME`...).
        action: String,
    },
    /// An admin's `kill-all` ended the lease.
    Killed {
        /// Who.
        by: String,
        /// Their reason.
        why: String,
        /// `unreserved` or `failed`.
        outcome: String,
    },
}

impl IncomingBody {
    /// The `type` name.
    pub fn kind(&self) -> &'static str {
        match self {
            IncomingBody::Reserved { .. } => "reserved",
            IncomingBody::Heartbeat { .. } => "heartbeat",
            IncomingBody::Unreserving { .. } => "unreserving",
            IncomingBody::Unreserved { .. } => "unreserved",
            IncomingBody::Failed { .. } => "failed",
            IncomingBody::Recovered { .. } => "recovered",
            IncomingBody::Killed { .. } => "killed",
            IncomingBody::OverBudget { .. } => "over-budget",
        }
    }

    /// The lease is ending or over: pending directives are done.
    pub fn ends_lease(&self) -> bool {
        !matches!(
            self,
            IncomingBody::Reserved { .. }
                | IncomingBody::Heartbeat { .. }
                | IncomingBody::OverBudget { .. }
        )
    }
}

/// Why a request body is not an event we can take.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    /// Not JSON, or not an object.
    #[error("body is not a JSON object: {0}")]
    NotJson(String),
    /// `protocol` is missing or not a number.
    #[error("`protocol` is missing or not an integer")]
    NoProtocol,
    /// A version we do not speak.
    #[error("unsupported protocol version {0}")]
    Unsupported(u64),
    /// JSON, but not a valid v1 event.
    #[error("not a valid protocol v1 event: {0}")]
    Invalid(String),
}

/// Check the version before anything else, so a pilot speaking v2 gets the supported list
/// and not a confusing "missing field".
pub fn check_protocol(value: &serde_json::Value) -> Result<(), MessageError> {
    let obj = value
        .as_object()
        .ok_or_else(|| MessageError::NotJson("expected an object".into()))?;
    let version = obj
        .get("protocol")
        .and_then(|v| v.as_u64())
        .ok_or(MessageError::NoProtocol)?;
    if SUPPORTED_PROTOCOLS.contains(&version) {
        Ok(())
    } else {
        Err(MessageError::Unsupported(version))
    }
}

/// Parse and check one event body.
pub fn parse_event(body: &[u8]) -> Result<IncomingEvent, MessageError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| MessageError::NotJson(e.to_string()))?;
    check_protocol(&value)?;
    let event: IncomingEvent =
        serde_json::from_value(value).map_err(|e| MessageError::Invalid(e.to_string()))?;
    if event.event_id.is_empty() || event.event_id.len() > MAX_EVENT_ID {
        return Err(MessageError::Invalid(format!(
            "`event_id` must be 1 to {MAX_EVENT_ID} characters"
        )));
    }
    if let Some(problem) = node_name_problem(&event.node) {
        return Err(MessageError::Invalid(format!("`node` {problem}")));
    }
    Ok(event)
}

/// Directives go to the pilot in the protocol crate's form, the one the pilot reads.
pub use vmpilot_protocol::directive::Directive;

/// Whether an event was stored now or had been already.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IngestStatus {
    /// Stored and applied now.
    Applied,
    /// Seen before; acknowledged, not applied again.
    Duplicate,
}

/// The `200` reply to an event.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EventReply {
    /// Applied or duplicate.
    pub status: IngestStatus,
    /// Pending directives for the event's lease and epoch.
    pub directives: Vec<Directive>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(extra: &str) -> String {
        format!(
            r#"{{"protocol":1,"event_id":"e1","lease_id":"l1","epoch":2,"seq":0,"node":"n1","job_id":"7","time":"2026-01-01T00:00:00Z"{extra}}}"#
        )
    }

    #[test]
    fn every_type_parses_and_unknown_fields_are_ignored() {
        let cases = [
            r#","type":"reserved","memory_mib":1024,"cpus":2,"deadline":"2026-01-01T01:00:00Z","grace_secs":60,"future":true"#,
            r#","type":"heartbeat","deadline":"2026-01-01T01:00:00Z","state":"reserved""#,
            r#","type":"unreserving","reason":"deadline""#,
            r#","type":"unreserved","reason":"deadline","guests":[{"name":"g","fate":"shut-down"}]"#,
            r#","type":"failed","reason":"host-error","error":"boom","guests":[]"#,
            r#","type":"recovered","outcome":"unreserved","reason":"pilot-lost","guests":[]"#,
            r#","type":"killed","by":"root","why":"maintenance","outcome":"unreserved""#,
        ];
        for c in cases {
            let e = parse_event(event(c).as_bytes()).unwrap_or_else(|e| panic!("{c}: {e}"));
            assert_eq!(e.epoch, 2);
        }
    }

    #[test]
    fn version_is_checked_before_shape() {
        let v2 = r#"{"protocol":2,"whatever":true}"#;
        assert_eq!(
            parse_event(v2.as_bytes()),
            Err(MessageError::Unsupported(2))
        );
        assert_eq!(parse_event(b"{}"), Err(MessageError::NoProtocol));
        assert!(matches!(
            parse_event(b"nope"),
            Err(MessageError::NotJson(_))
        ));
        let missing = event(r#","type":"reserved""#);
        let e = parse_event(missing.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("memory_mib"), "{e}");
        let bad_type = event(r#","type":"exploded""#);
        assert!(matches!(
            parse_event(bad_type.as_bytes()),
            Err(MessageError::Invalid(_))
        ));
    }

    #[test]
    fn directives_have_the_documented_shape() {
        let d = Directive::Release {
            lease_id: "l".parse().unwrap(),
            epoch: 3,
        };
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({"type":"release","lease_id":"l","epoch":3})
        );
    }
}
