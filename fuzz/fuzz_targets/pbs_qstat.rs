//! PBS `qstat -f` output, text and JSON: `lrm::pbs::parse_qstat_f` and
//! `lrm::qstat_json::parse`, then the public value parsers the facts derivation uses
//! (`parse_clock` on the walltimes, `parse_pbs_mem` on `Resource_List.mem`). The
//! derivation itself (`facts_from_qstat`) is private.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmpilot::lrm::parse_clock;
use vmpilot::lrm::pbs::{parse_pbs_mem, parse_qstat_f};
use vmpilot::lrm::qstat_json;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(fields) = parse_qstat_f(&text) {
        for key in ["Resource_List.walltime", "resources_used.walltime"] {
            if let Some(v) = fields.get(key) {
                let _ = parse_clock(v);
            }
        }
        if let Some(v) = fields.get("Resource_List.mem") {
            let _ = parse_pbs_mem(v);
        }
    }
    if let Ok(job) = qstat_json::parse(&text, "12.pbs") {
        for v in [&job.walltime, &job.walltime_used].into_iter().flatten() {
            let _ = parse_clock(v);
        }
        if let Some(m) = &job.mem {
            let _ = parse_pbs_mem(m);
        }
    }
});
