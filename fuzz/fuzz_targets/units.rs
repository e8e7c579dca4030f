//! `units`: sizes (`MemSize`) and durations (`units::Duration`) as users write them in
//! flags and the config. Anything parses or fails with a `UnitError`; what parses prints
//! and parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmpilot_common::units::{Duration, MemSize};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(size) = text.parse::<MemSize>() {
        let printed = size.to_string();
        assert_eq!(
            printed.parse::<MemSize>(),
            Ok(size),
            "size {text:?} printed as {printed:?}"
        );
    }
    if let Ok(d) = text.parse::<Duration>() {
        let printed = d.to_string();
        assert_eq!(
            printed.parse::<Duration>(),
            Ok(d),
            "duration {text:?} printed as {printed:?}"
        );
    }
});
