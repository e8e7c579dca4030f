//! Slurm: job facts from `squeue --json` (see `squeue_json` for why not the text formats).
//!
//! Walltime left is the time limit minus the time run, computed as `scontrol` computes
//! `RunTime` (22.05 has no `SLURM_JOB_END_TIME`). After a SIGTERM, a set `preempt_time`
//! tells preemption apart from a cancel (with `PreemptMode=CANCEL` Slurm sets it when
//! preemption starts).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::squeue_json::{self, SlurmJob};
use super::{JobFacts, LrmError};
use vmpilot_common::command;

/// How long the preemption check after a SIGTERM may take (it delays unreserving).
const PREEMPT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A Slurm job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slurm {
    /// `SLURM_JOB_ID`.
    pub job_id: String,
    cpus_on_node: Option<u32>,
    timeout: Duration,
}

impl Slurm {
    /// The job `job_id`; commands time out after `timeout`.
    pub fn new(job_id: &str, timeout: Duration) -> Self {
        Slurm {
            job_id: job_id.to_string(),
            cpus_on_node: std::env::var("SLURM_CPUS_ON_NODE")
                .ok()
                .and_then(|c| c.parse().ok()),
            timeout,
        }
    }

    /// This job's entry of `squeue --json --jobs ID` (22.05 lists every job regardless).
    async fn query(&self, timeout: Duration) -> Result<SlurmJob, LrmError> {
        let out = command::output("squeue", &["--json", "--jobs", &self.job_id], timeout)
            .await
            .map_err(|source| LrmError::Query {
                lrm: "slurm",
                job: self.job_id.clone(),
                source,
            })?;
        squeue_json::parse(&out)
            .map_err(|d| self.garbage(d))?
            .into_iter()
            .find(|j| j.is(&self.job_id))
            .ok_or_else(|| self.garbage(format!("job {} is not in the listing", self.job_id)))
    }

    fn garbage(&self, detail: String) -> LrmError {
        LrmError::Garbage {
            lrm: "slurm",
            job: self.job_id.clone(),
            command: format!("squeue --json --jobs {}", self.job_id),
            detail,
        }
    }

    /// Read the job's facts.
    pub async fn facts(&self) -> Result<JobFacts, LrmError> {
        let job = self.query(self.timeout).await?;
        Ok(facts_from(
            &self.job_id,
            &job,
            self.cpus_on_node,
            unix_now(),
        ))
    }

    /// Did Slurm start preempting this job?
    pub async fn was_preempted(&self) -> bool {
        match self.query(PREEMPT_CHECK_TIMEOUT.min(self.timeout)).await {
            Ok(job) => job.preempt_time.is_some(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell preemption from cancel");
                false
            }
        }
    }
}

/// Wall-clock seconds, the clock Slurm's start times are in.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Slurm memory with unit suffix (`300M`, `4G`, `1T`, `512K`) in MiB.
pub fn parse_slurm_mem(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, unit) = t.split_at(
        t.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len()),
    );
    let n: f64 = num.parse().ok()?;
    let mib = match unit {
        "" | "M" => n,
        "K" => n / 1024.0,
        "G" => n * 1024.0,
        "T" => n * 1024.0 * 1024.0,
        _ => return None,
    };
    // Checked: `as` would saturate a huge or non-finite number into a plausible size.
    (mib.is_finite() && mib >= 0.0 && mib < u64::MAX as f64).then(|| mib.floor() as u64)
}

fn facts_from(job_id: &str, job: &SlurmJob, cpus_on_node: Option<u32>, now: u64) -> JobFacts {
    let time_left = job.time_limit_min.map(|limit| {
        Duration::from_secs(limit.saturating_mul(60).saturating_sub(job.run_secs(now)))
    });
    let nodes = job.node_count.unwrap_or(1).max(1);
    let cpus = cpus_on_node.or_else(|| u32::try_from(job.cpus? / nodes).ok());
    let memory_mib = job
        .memory_per_node
        .or_else(|| match (job.memory_per_cpu, cpus) {
            (Some(per_cpu), Some(c)) => per_cpu.checked_mul(u64::from(c)),
            _ => job
                .tres_alloc
                .split(',')
                .find_map(|kv| kv.strip_prefix("mem="))
                .and_then(parse_slurm_mem)
                .map(|m| m / nodes),
        });
    JobFacts {
        lrm: "slurm",
        job_id: job_id.to_string(),
        nodes: (!job.nodes.is_empty()).then(|| job.nodes.clone()),
        memory_mib,
        cpus,
        time_left,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> Vec<SlurmJob> {
        squeue_json::parse(squeue_json::SLURM_22_05).unwrap()
    }

    #[test]
    fn facts_from_a_recorded_running_job_ignore_its_hostile_strings() {
        let job = &recorded()[0];
        let f = facts_from("123", job, None, job.start_time + 62);
        assert_eq!(f.time_left, Some(Duration::from_secs(3 * 60 - 62)));
        assert_eq!(f.memory_mib, Some(100), "not the 1T in its name");
        assert_eq!(f.cpus, Some(1));
        assert_eq!(f.nodes.as_deref(), Some("vm"));
    }

    #[test]
    fn unlimited_jobs_and_per_cpu_memory() {
        let mut job = recorded().remove(1);
        let f = facts_from("124", &job, None, job.start_time);
        assert_eq!(f.time_left, None);
        assert_eq!(f.memory_mib, Some(50));
        job.cpus = Some(4);
        let f = facts_from("124", &job, None, job.start_time);
        assert_eq!((f.memory_mib, f.cpus), (Some(200), Some(4)));
        assert_eq!(
            facts_from("124", &job, Some(2), job.start_time).memory_mib,
            Some(100),
            "SLURM_CPUS_ON_NODE wins"
        );
        job.memory_per_cpu = None;
        assert_eq!(
            facts_from("124", &job, None, job.start_time).memory_mib,
            Some(50),
            "from the allocated TRES"
        );
    }

    #[test]
    fn a_run_longer_than_the_limit_leaves_no_time() {
        let job = &recorded()[0];
        let f = facts_from("123", job, None, job.start_time + 3600);
        assert_eq!(f.time_left, Some(Duration::ZERO));
    }

    #[test]
    fn slurm_memory_units() {
        assert_eq!(parse_slurm_mem("300M"), Some(300));
        assert_eq!(parse_slurm_mem("4G"), Some(4096));
        assert_eq!(parse_slurm_mem("1.5G"), Some(1536));
        assert_eq!(parse_slurm_mem("2048K"), Some(2));
        assert_eq!(parse_slurm_mem("12"), Some(12));
        assert_eq!(parse_slurm_mem("lots"), None);
    }
}
