//! Slurm: job facts from `scontrol show job -o ID`.
//!
//! Walltime left is computed from `TimeLimit` − `RunTime` of the same answer, both durations,
//! so it does not depend on the time zone `scontrol` prints `EndTime` in (22.05 has no
//! `SLURM_JOB_END_TIME`). After a SIGTERM, a set `PreemptTime` tells preemption apart from
//! a cancel (with `PreemptMode=CANCEL` Slurm sets it when preemption starts).

use std::collections::HashMap;
use std::time::Duration;

use super::{JobFacts, LrmError, parse_clock};
use crate::exec;

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

    async fn show_job(&self, timeout: Duration) -> Result<HashMap<String, String>, LrmError> {
        let out = exec::output("scontrol", &["show", "job", "-o", &self.job_id], timeout)
            .await
            .map_err(|source| LrmError::Query {
                lrm: "slurm",
                job: self.job_id.clone(),
                source,
            })?;
        let fields = parse_show_job(&out);
        if fields.get("JobId").map(String::as_str)
            != Some(self.job_id.split('_').next().unwrap_or(""))
        {
            return Err(self.garbage(format!("no JobId={} in: {}", self.job_id, excerpt(&out))));
        }
        Ok(fields)
    }

    fn garbage(&self, detail: String) -> LrmError {
        LrmError::Garbage {
            lrm: "slurm",
            job: self.job_id.clone(),
            command: format!("scontrol show job -o {}", self.job_id),
            detail,
        }
    }

    /// Read the job's facts.
    pub async fn facts(&self) -> Result<JobFacts, LrmError> {
        let f = self.show_job(self.timeout).await?;
        facts_from(&self.job_id, &f, self.cpus_on_node).map_err(|d| self.garbage(d))
    }

    /// Did Slurm start preempting this job?
    pub async fn was_preempted(&self) -> bool {
        match self.show_job(PREEMPT_CHECK_TIMEOUT.min(self.timeout)).await {
            Ok(f) => f
                .get("PreemptTime")
                .is_some_and(|t| !matches!(t.as_str(), "None" | "Unknown" | "")),
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell preemption from cancel");
                false
            }
        }
    }
}

fn excerpt(text: &str) -> String {
    let t: String = text.trim().chars().take(200).collect();
    if t.is_empty() {
        "<empty output>".into()
    } else {
        t
    }
}

/// Split `Key=Value Key=Value ...` (one line, `-o`). Values never contain spaces for the keys
/// vmpilot reads.
pub fn parse_show_job(text: &str) -> HashMap<String, String> {
    text.split_whitespace()
        .filter_map(|tok| tok.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
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

fn facts_from(
    job: &str,
    f: &HashMap<String, String>,
    cpus_on_node: Option<u32>,
) -> Result<JobFacts, String> {
    let get = |k: &str| f.get(k).map(String::as_str);
    let time_left = match get("TimeLimit") {
        Some("UNLIMITED") | Some("Partition_Limit") => None,
        Some(limit) => {
            let limit =
                parse_clock(limit).ok_or_else(|| format!("TimeLimit={limit} is not a duration"))?;
            let run = get("RunTime")
                .and_then(parse_clock)
                .ok_or_else(|| "RunTime is missing or not a duration".to_string())?;
            Some(limit.saturating_sub(run))
        }
        None => return Err("no TimeLimit field".into()),
    };
    let nodes: u64 = get("NumNodes")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    let cpus = cpus_on_node.or_else(|| {
        let total: u32 = get("NumCPUs")?.parse().ok()?;
        Some(total / nodes as u32)
    });
    let memory_mib = match get("MinMemoryNode").and_then(parse_slurm_mem) {
        Some(m) if m > 0 => Some(m),
        _ => match (get("MinMemoryCPU").and_then(parse_slurm_mem), cpus) {
            (Some(per_cpu), Some(c)) if per_cpu > 0 => per_cpu.checked_mul(u64::from(c)),
            _ => get("TRES")
                .and_then(|t| t.split(',').find_map(|kv| kv.strip_prefix("mem=")))
                .and_then(parse_slurm_mem)
                .map(|m| m / nodes),
        },
    };
    Ok(JobFacts {
        lrm: "slurm",
        job_id: job.to_string(),
        nodes: get("NodeList").map(String::from),
        memory_mib,
        cpus,
        time_left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from Slurm 22.05.8 (`scontrol show job -o 9`), a running job.
    const RUNNING: &str = "JobId=9 JobName=probe UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901751 Nice=0 Account=(null) QOS=(null) JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:02 TimeLimit=00:02:00 TimeMin=N/A SubmitTime=2026-11-22T19:08:59 EligibleTime=2026-11-22T19:08:59 AccrueTime=2026-11-22T19:08:59 StartTime=2026-11-22T19:08:59 EndTime=2026-11-22T19:10:59 Deadline=N/A PreemptEligibleTime=2026-11-22T19:08:59 PreemptTime=None SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-22T19:08:59 Scheduler=Main Partition=low AllocNode:Sid=localhost:1034 ReqNodeList=(null) ExcNodeList=(null) NodeList=vm BatchHost=vm NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=300M,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryNode=300M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=(null) WorkDir=/tmp StdErr=/tmp/slurm-9.out StdIn=/dev/null StdOut=/tmp/slurm-9.out Power= \n";

    #[test]
    fn facts_from_a_recorded_running_job() {
        let f = facts_from("9", &parse_show_job(RUNNING), None).unwrap();
        assert_eq!(f.time_left, Some(Duration::from_secs(118)));
        assert_eq!(f.memory_mib, Some(300));
        assert_eq!(f.cpus, Some(1));
        assert_eq!(f.nodes.as_deref(), Some("vm"));
    }

    #[test]
    fn unlimited_jobs_and_per_cpu_memory() {
        let text = RUNNING
            .replace("TimeLimit=00:02:00", "TimeLimit=UNLIMITED")
            .replace("MinMemoryNode=300M", "MinMemoryCPU=2G")
            .replace("NumCPUs=1", "NumCPUs=4");
        let f = facts_from("9", &parse_show_job(&text), None).unwrap();
        assert_eq!(f.time_left, None);
        assert_eq!(f.memory_mib, Some(8192));
        assert_eq!(f.cpus, Some(4));
    }

    #[test]
    fn garbage_is_reported_not_guessed() {
        assert!(
            facts_from("9", &parse_show_job("hello world"), None)
                .unwrap_err()
                .contains("TimeLimit")
        );
        let bad = RUNNING.replace("TimeLimit=00:02:00", "TimeLimit=soon");
        assert!(
            facts_from("9", &parse_show_job(&bad), None)
                .unwrap_err()
                .contains("soon")
        );
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
