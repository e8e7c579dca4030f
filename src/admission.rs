//! Admission: how much memory and how many CPUs a lease may take, from what was asked and
//! what the batch system gave the job. Nothing on the node changes before this passes.

use crate::config::Config;
use crate::exit::UsageError;
use crate::lrm::JobFacts;
use vmpilot_common::units::MemSize;

/// Memory and CPUs for guests: what was asked (or, under a batch system, what the job was
/// given), refused when it exceeds the job's allocation. Guests live outside the job's
/// cgroup, so this check is the only thing keeping them within what the batch system granted.
pub fn fit_to_job(
    config: &Config,
    memory: Option<MemSize>,
    cpus: Option<u32>,
    job: Option<&JobFacts>,
) -> Result<(u64, u32), UsageError> {
    // Checked: a wrapped sum would admit a lease of nearly 2^64 MiB in a 300 MiB job.
    let too_big = |what: String| UsageError {
        problem: format!("{what} is more than any host can have"),
        hint: "give sizes in MiB/GiB that fit the node, e.g. --memory 4G".into(),
    };
    let overhead = config
        .host
        .guest_overhead
        .mib()
        .checked_mul(u64::from(config.lease.max_guests))
        .ok_or_else(|| {
            too_big(format!(
                "host.guest_overhead ({}) x lease.max_guests ({})",
                config.host.guest_overhead, config.lease.max_guests
            ))
        })?;
    let job_memory = job.and_then(|j| j.memory_mib);
    let memory = match (memory, job_memory) {
        (Some(m), _) => m.mib(),
        (None, Some(jm)) if jm > overhead => jm - overhead,
        (None, Some(jm)) => {
            return Err(UsageError {
                problem: format!(
                    "the job has {jm} MiB, not more than the guest overhead ({overhead} MiB = host.guest_overhead x lease.max_guests)"
                ),
                hint: "submit the pilot with more memory (--mem / -l mem)".into(),
            });
        }
        (None, None) => {
            return Err(UsageError {
                problem: "no guest memory: --memory is required when the batch system does not say how much the job has".into(),
                hint: "pass e.g. --memory 4G".into(),
            });
        }
    };
    let charged = memory.checked_add(overhead).ok_or_else(|| {
        too_big(format!(
            "--memory {memory} MiB plus {overhead} MiB guest overhead"
        ))
    })?;
    if let Some(jm) = job_memory
        && charged > jm
    {
        return Err(UsageError {
            problem: format!(
                "--memory {memory} MiB + {overhead} MiB guest overhead ({} guests x {}) is more than the job's {jm} MiB",
                config.lease.max_guests, config.host.guest_overhead
            ),
            hint: "ask for less --memory, or submit the pilot with more memory (--mem / -l mem)"
                .into(),
        });
    }
    let job_cpus = job.and_then(|j| j.cpus);
    let cpus = cpus.or(job_cpus).unwrap_or(1);
    if let Some(jc) = job_cpus
        && cpus > jc
    {
        return Err(UsageError {
            problem: format!("--cpus {cpus} is more than the job's {jc} CPUs"),
            hint: "ask for fewer --cpus, or submit the pilot with more (--cpus-per-task / ppn)"
                .into(),
        });
    }
    if memory == 0 || cpus == 0 {
        return Err(UsageError {
            problem: "--memory and --cpus must be more than zero".into(),
            hint: "e.g. --memory 4G --cpus 2".into(),
        });
    }
    Ok((memory, cpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(overhead: &str, max_guests: u32) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmpilot.toml");
        std::fs::write(
            &path,
            format!(
                "state_dir = \"{}\"\n[lease]\nmax_guests = {max_guests}\n[host]\nbackend = \"simulated\"\nguest_overhead = \"{overhead}\"\n",
                dir.path().display()
            ),
        )
        .unwrap();
        Config::load(&path, true, &Default::default()).unwrap()
    }

    fn job(memory_mib: Option<u64>, cpus: Option<u32>) -> JobFacts {
        JobFacts {
            lrm: "slurm",
            job_id: "1".into(),
            nodes: None,
            memory_mib,
            cpus,
            time_left: None,
        }
    }

    #[test]
    fn the_job_s_memory_less_the_overhead_is_the_default() {
        let c = config("64M", 2);
        assert_eq!(
            fit_to_job(&c, None, None, Some(&job(Some(1024), Some(4)))).unwrap(),
            (1024 - 128, 4)
        );
        assert_eq!(
            fit_to_job(
                &c,
                Some(MemSize(512)),
                Some(2),
                Some(&job(Some(1024), Some(4)))
            )
            .unwrap(),
            (512, 2)
        );
    }

    #[test]
    fn more_than_the_job_has_is_refused() {
        let c = config("64M", 2);
        let e =
            fit_to_job(&c, Some(MemSize(1000)), None, Some(&job(Some(1024), None))).unwrap_err();
        assert!(e.problem.contains("more than the job's 1024 MiB"), "{e}");
        let e = fit_to_job(&c, None, Some(8), Some(&job(Some(1024), Some(4)))).unwrap_err();
        assert!(e.problem.contains("more than the job's 4 CPUs"), "{e}");
        let e = fit_to_job(&c, None, None, Some(&job(Some(100), None))).unwrap_err();
        assert!(
            e.problem.contains("not more than the guest overhead"),
            "{e}"
        );
        let e = fit_to_job(&c, None, None, None).unwrap_err();
        assert!(e.problem.contains("--memory is required"), "{e}");
    }

    #[test]
    fn sums_that_would_wrap_are_refused() {
        let c = config("64M", 2);
        let e = fit_to_job(
            &c,
            Some(MemSize(u64::MAX)),
            None,
            Some(&job(Some(300), None)),
        )
        .unwrap_err();
        assert!(e.problem.contains("more than any host can have"), "{e}");
    }
}
