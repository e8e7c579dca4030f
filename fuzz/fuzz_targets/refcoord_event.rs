//! The coordinator's event decoder, `refcoord::message::parse_event` (what `POST
//! /v1/events` runs on every body whose signature checked out). Any bytes give an event or
//! a `MessageError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmpilot_coordinator::message::parse_event;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = parse_event(data) {
        assert!(!event.event_id.is_empty() && event.event_id.len() <= 128);
        assert!(!event.node.is_empty());
        let _ = (event.body.kind(), event.body.ends_lease());
    }
});
