//! The lease record loader: `lease::store::parse_record`. A corrupted or truncated record
//! must give a `StoreError` naming the file, never a panic. A record that does parse is
//! then taken down the path `recover` takes with it — every state-machine event, a new
//! sequence number, the `recovered` event spooled as JSON — which must not panic either.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vmpilot::coordinator::event::EventBody;
use vmpilot::lease::Event;
use vmpilot::lease::store::{StoreError, parse_record};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/var/lib/vmpilot/leases/fuzz.json");
    let record = match parse_record(path, data) {
        Ok(r) => r,
        Err(e) => {
            if let StoreError::Corrupt { .. } = e {
                assert!(
                    e.to_string().contains("fuzz.json"),
                    "error does not name the file: {e}"
                );
            }
            return;
        }
    };
    let _ = record.seconds_left(time::OffsetDateTime::now_utc());
    for event in Event::all() {
        let mut r = record.clone();
        if r.apply(&event).is_ok() {
            let body = EventBody::Recovered {
                outcome: r.state,
                reason: r.end_reason,
                guests: r.guests.clone(),
            };
            let envelope = vmpilot::coordinator::event::next_event(&mut r, body);
            // The spool does `expect("event serializes")`: a loaded record must allow it.
            serde_json::to_vec(&envelope).expect("event from a loaded record serializes");
            serde_json::to_vec_pretty(&r).expect("loaded record serializes again");
        }
    }
});
