//! Reporting a lease's end exactly once, whatever crashes in between.
//!
//! The record is the write-ahead log for its last events ([`EndReport`]): the save that
//! ends a lease makes the report `Due`; [`report_end`] writes the events into the record,
//! saves it, spools them and marks the report `Done`. `recover` finishes a report a crash
//! interrupted with [`resume`] (the same events again: same ids, so the coordinator takes
//! them once) or, when no event was written yet, [`report_end`] with [`end_body`].

use super::event::{self, EventBody, EventEnvelope};
use super::outbox::Outbox;
use crate::crashpoint::{self, Point};
use crate::lease::record::{EndReport, LeaseRecord};
use crate::lease::store::Store;
use crate::lease::{EndReason, LeaseState};

/// What says how the lease ended, from its record alone: `unreserved` with the reason and
/// the guests' fates, or `failed` with the error.
pub fn end_body(record: &LeaseRecord) -> EventBody {
    let guests = record.guests.clone();
    match record.state {
        LeaseState::Unreserved => EventBody::Unreserved {
            reason: record.end_reason.unwrap_or(EndReason::Deadline),
            guests,
        },
        _ => EventBody::Failed {
            reason: record.end_reason,
            error: record.last_error.clone().unwrap_or_default(),
            guests,
        },
    }
}

/// Report the end of `record`'s lease with `bodies`, in that order. An event whose sequence
/// number cannot be persisted is not sent (see `Pilot::emit`): the events are reported lost
/// (logged whole) and the store's error returned; the record on disk still says the report
/// is due, so `recover` reports the end.
pub fn report_end(
    outbox: &Outbox,
    store: &Store,
    record: &mut LeaseRecord,
    bodies: Vec<EventBody>,
) -> anyhow::Result<()> {
    let events: Vec<EventEnvelope> = bodies
        .into_iter()
        .map(|body| event::next_event(record, body))
        .collect();
    record.end_report = EndReport::Spooling {
        events: events.clone(),
    };
    if let Err(e) = store.save(record) {
        for event in &events {
            outbox.report_lost(
                event,
                "its sequence number could not be persisted in the lease record; `vmpilot recover` reports the lease's end from the record on disk",
            );
        }
        return Err(e.into());
    }
    spool_and_finish(outbox, store, record, &events)
}

/// Finish a report a crash interrupted after its events were written into the record:
/// spool them again (those still in the spool are not doubled) and mark the report done.
/// Returns whether there was such a report; a `Due` one is left to the caller.
pub fn resume(outbox: &Outbox, store: &Store, record: &mut LeaseRecord) -> anyhow::Result<bool> {
    let EndReport::Spooling { events } = &record.end_report else {
        return Ok(false);
    };
    let events = events.clone();
    tracing::info!(lease = %record.lease_id, events = events.len(), "finishing the report of the lease's end that a crash interrupted");
    spool_and_finish(outbox, store, record, &events)?;
    Ok(true)
}

fn spool_and_finish(
    outbox: &Outbox,
    store: &Store,
    record: &mut LeaseRecord,
    events: &[EventEnvelope],
) -> anyhow::Result<()> {
    for event in events {
        outbox.emit_once(event)?;
    }
    crashpoint::hit(Point::UnreservedSpooled);
    record.end_report = EndReport::Done;
    // If this save fails, a later `recover` spools the same events again: harmless.
    store.save(record)?;
    Ok(())
}
