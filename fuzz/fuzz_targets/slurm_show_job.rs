//! Slurm's `scontrol show job -o` output: `lrm::slurm::parse_show_job`, then the public
//! value parsers the facts derivation uses on its fields (`parse_clock` on `TimeLimit` /
//! `RunTime`, `parse_slurm_mem` on the memory fields and `TRES`). The derivation itself
//! (`facts_from`) is private and so is not reached from here.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmpilot::lrm::parse_clock;
use vmpilot::lrm::slurm::{parse_show_job, parse_slurm_mem};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let fields = parse_show_job(&text);
    for key in ["TimeLimit", "RunTime"] {
        if let Some(v) = fields.get(key) {
            let _ = parse_clock(v);
        }
    }
    for key in ["MinMemoryNode", "MinMemoryCPU"] {
        if let Some(v) = fields.get(key) {
            let _ = parse_slurm_mem(v);
        }
    }
    if let Some(tres) = fields.get("TRES") {
        for kv in tres.split(',') {
            if let Some(m) = kv.strip_prefix("mem=") {
                let _ = parse_slurm_mem(m);
            }
        }
    }
});
