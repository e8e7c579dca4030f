//! PBS `qstat -f` output: `lrm::pbs::parse_qstat_f`, then the public value parsers the
//! facts derivation uses (`parse_clock` on the walltimes, `parse_pbs_mem` on
//! `Resource_List.mem`). The derivation itself (`facts_from_qstat`) is private.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmpilot::lrm::parse_clock;
use vmpilot::lrm::pbs::{parse_pbs_mem, parse_qstat_f};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let fields = parse_qstat_f(&text);
    for key in ["Resource_List.walltime", "resources_used.walltime"] {
        if let Some(v) = fields.get(key) {
            let _ = parse_clock(v);
        }
    }
    if let Some(v) = fields.get("Resource_List.mem") {
        let _ = parse_pbs_mem(v);
    }
});
