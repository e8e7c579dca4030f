//! Building the pilot's events from its lease record and config. The messages themselves
//! (protocol v1, docs/protocol.md) are the protocol crate's: see `vmpilot_protocol::event`.

use time::OffsetDateTime;

pub use vmpilot_protocol::event::{EventBody, EventEnvelope, Hypervisor, PROTOCOL_VERSION};

use crate::config::{Config, HostBackend};
use crate::lease::record::LeaseRecord;

/// The node's hypervisor as a config's `[host]` section describes it.
pub fn hypervisor(config: &Config) -> Hypervisor {
    Hypervisor {
        backend: config.host.backend,
        uri: (config.host.backend == HostBackend::Libvirt).then(|| config.host.libvirt.uri.clone()),
    }
}

/// A heartbeat for `record`: not durable, so it takes no sequence number of its own.
pub fn heartbeat(record: &LeaseRecord) -> EventEnvelope {
    EventEnvelope {
        protocol: PROTOCOL_VERSION,
        event_id: uuid::Uuid::new_v4().to_string(),
        lease_id: record.lease_id.clone(),
        epoch: record.epoch,
        seq: record.next_seq.saturating_sub(1),
        node: record.node.clone(),
        job_id: record.job_id.clone(),
        time: OffsetDateTime::now_utc(),
        body: EventBody::Heartbeat {
            deadline: record.deadline,
            state: record.state,
        },
    }
}

/// A new event for `record`, taking its next sequence number (the caller persists the
/// record afterwards so numbers are never reused).
pub fn next_event(record: &mut LeaseRecord, body: EventBody) -> EventEnvelope {
    EventEnvelope {
        protocol: PROTOCOL_VERSION,
        event_id: uuid::Uuid::new_v4().to_string(),
        lease_id: record.lease_id.clone(),
        epoch: record.epoch,
        seq: record.take_seq(),
        node: record.node.clone(),
        job_id: record.job_id.clone(),
        time: OffsetDateTime::now_utc(),
        body,
    }
}
