//! Serde of the pilot's protocol message, `coordinator::event::EventEnvelope` (what the
//! spool holds and what is POSTed). Any bytes parse or fail cleanly; a message that
//! parses serializes and parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmpilot::coordinator::event::EventEnvelope;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = serde_json::from_slice::<EventEnvelope>(data) else {
        return;
    };
    let _ = event.body.kind();
    let Ok(bytes) = serde_json::to_vec(&event) else {
        return;
    };
    let again: EventEnvelope =
        serde_json::from_slice(&bytes).expect("a serialized event parses back");
    assert_eq!(event, again, "event changed in a serde round trip");
});
