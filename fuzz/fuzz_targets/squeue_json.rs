//! Slurm's `squeue --json` listing: `lrm::squeue_json::parse`, then what the pilot and
//! `kill-all --cluster` derive from each job (state, id matching, run time, memory from
//! the allocated TRES).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmpilot::lrm::slurm::parse_slurm_mem;
use vmpilot::lrm::squeue_json::parse;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(jobs) = parse(&text) {
        for job in jobs {
            let _ = job.is_active();
            let _ = job.is("123_4");
            let _ = job.run_secs(u64::MAX);
            let _ = job.run_secs(0);
            for kv in job.tres_alloc.split(',') {
                if let Some(m) = kv.strip_prefix("mem=") {
                    let _ = parse_slurm_mem(m);
                }
            }
        }
    }
});
