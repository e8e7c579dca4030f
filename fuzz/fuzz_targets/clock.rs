//! `lrm::parse_clock`: durations as Slurm and PBS print them (`[D-]HH:MM:SS`, `MM:SS`,
//! `D-HH`, ...). Any text gives a duration or `None`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmpilot::lrm::parse_clock;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_clock(text);
    }
});
