//! PBS (Torque, OpenPBS, PBS Pro): job facts from `qstat -f -F json ID` where `qstat` has
//! JSON (OpenPBS, PBS Pro), else from `qstat -f ID` read strictly, else from the job's
//! environment (`PBS_WALLTIME`, `PBS_NUM_PPN`/`NCPUS`) when `qstat` cannot answer.
//!
//! Walltime left is `Resource_List.walltime` − `resources_used.walltime`. Without `qstat`
//! only `PBS_WALLTIME` is known and the job is assumed to have started now; the pilot is
//! exec'd as the job starts, so the error is seconds, well inside the safety margin, and it
//! is logged. PBS has no pre-walltime warning signal, which is why the margin matters.

use std::collections::HashMap;
use std::time::Duration;

use super::{Env, JobFacts, LrmError, parse_clock, qstat_json};
use vmpilot_common::command::{self, ExecError};

/// A PBS job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pbs {
    /// `PBS_JOBID`, e.g. `123.server`.
    pub job_id: String,
    env_walltime: Option<Duration>,
    env_cpus: Option<u32>,
    timeout: Duration,
}

impl Pbs {
    /// The job `job_id`, with what the environment tells about it.
    pub fn new(job_id: &str, env: &Env, timeout: Duration) -> Self {
        let num = |k: &str| env.get(k).and_then(|v| v.trim().parse::<u64>().ok());
        Pbs {
            job_id: job_id.to_string(),
            env_walltime: num("PBS_WALLTIME").map(Duration::from_secs),
            env_cpus: ["PBS_NUM_PPN", "NCPUS", "PBS_NP"]
                .iter()
                .find_map(|k| num(k))
                .map(|n| n as u32),
            timeout,
        }
    }

    /// Read the job's facts: `qstat -f -F json` (OpenPBS, PBS Pro), else `qstat -f` (Torque
    /// and other `qstat`s without JSON), else the environment's walltime.
    pub async fn facts(&self) -> Result<JobFacts, LrmError> {
        let problem = match self.facts_from_qstat().await {
            Ok(mut f) => {
                f.cpus = f.cpus.or(self.env_cpus);
                return Ok(f);
            }
            Err(problem) => problem,
        };
        match self.env_walltime {
            Some(walltime) => {
                tracing::warn!(error = %problem, "qstat gave no job facts; using PBS_WALLTIME from the environment and assuming the job started now");
                Ok(JobFacts {
                    lrm: "pbs",
                    job_id: self.job_id.clone(),
                    nodes: None,
                    memory_mib: None,
                    cpus: self.env_cpus,
                    time_left: Some(walltime),
                })
            }
            None => Err(problem),
        }
    }

    async fn facts_from_qstat(&self) -> Result<JobFacts, LrmError> {
        let query = |source| LrmError::Query {
            lrm: "pbs",
            job: self.job_id.clone(),
            source,
        };
        let garbage = |command: String, detail| LrmError::Garbage {
            lrm: "pbs",
            job: self.job_id.clone(),
            command,
            detail,
        };
        let json =
            command::output("qstat", &["-f", "-F", "json", &self.job_id], self.timeout).await;
        match json {
            Ok(out) => qstat_json::parse(&out, &self.job_id)
                .and_then(|j| facts_from(&self.job_id, j))
                .map_err(|d| garbage(format!("qstat -f -F json {}", self.job_id), d)),
            // A qstat without JSON (Torque, Slurm's wrapper) refuses the option: read its text.
            // A missing or hanging qstat will not do better on a second try.
            Err(e @ (ExecError::NotFound { .. } | ExecError::Timeout { .. })) => Err(query(e)),
            Err(_) => {
                let out = command::output("qstat", &["-f", &self.job_id], self.timeout)
                    .await
                    .map_err(query)?;
                facts_from_qstat(&self.job_id, &out)
                    .map_err(|d| garbage(format!("qstat -f {}", self.job_id), d))
            }
        }
    }
}

/// The facts from a job's resources, however `qstat` printed them (JSON or text).
fn facts_from(job: &str, j: qstat_json::QstatJob) -> Result<JobFacts, String> {
    let time_left = match &j.walltime {
        None => None,
        Some(w) => {
            let limit = parse_clock(w)
                .ok_or_else(|| format!("Resource_List.walltime = {w} is not a duration"))?;
            let used = j
                .walltime_used
                .as_deref()
                .and_then(parse_clock)
                .unwrap_or_default();
            Some(limit.saturating_sub(used))
        }
    };
    let cpus = j
        .ncpus
        .and_then(|n| u32::try_from(n).ok())
        .or_else(|| ppn(j.nodes.as_deref()?));
    Ok(JobFacts {
        lrm: "pbs",
        job_id: job.to_string(),
        nodes: j.exec_host,
        memory_mib: j.mem.as_deref().and_then(parse_pbs_mem),
        cpus,
        time_left,
    })
}

/// CPUs per node of a Torque `nodes=1:ppn=4` request.
fn ppn(nodes: &str) -> Option<u32> {
    nodes
        .split(':')
        .find_map(|p| p.strip_prefix("ppn="))?
        .parse()
        .ok()
}

/// Parse `qstat -f` into `key -> value`, joining continuation lines. A key printed twice is
/// an error: the real line is always there, so a second one can only come from a value a
/// submitter chose (a variable with a newline in it) and must not override it.
pub fn parse_qstat_f(text: &str) -> Result<HashMap<String, String>, String> {
    let mut fields = HashMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("Job Id:") {
            if fields
                .insert("Job Id".to_string(), id.trim().to_string())
                .is_some()
            {
                return Err("two `Job Id:` lines: more than one job in the output".into());
            }
            continue;
        }
        match line.split_once(" = ") {
            Some((k, v)) if !line.starts_with("\t\t") => {
                let key = k.trim().to_string();
                if fields.insert(key.clone(), v.trim().to_string()).is_some() {
                    return Err(format!("`{}` appears twice", key.escape_debug()));
                }
                last = Some(key);
            }
            _ => {
                if let Some(v) = last.as_ref().and_then(|k| fields.get_mut(k)) {
                    v.push_str(line.trim());
                }
            }
        }
    }
    Ok(fields)
}

/// PBS sizes (`8gb`, `4096mb`, `1048576kb`, `100b`; binary units) in MiB.
pub fn parse_pbs_mem(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    // Checked: an absurd size from qstat is "unknown", not a wrapped number (found by fuzzing).
    let kib = match unit {
        "b" | "" => n / 1024,
        "kb" | "k" => n,
        "mb" | "m" => n.checked_mul(1024)?,
        "gb" | "g" => n.checked_mul(1024 * 1024)?,
        "tb" | "t" => n.checked_mul(1024 * 1024 * 1024)?,
        _ => return None,
    };
    Some(kib / 1024)
}

fn facts_from_qstat(job: &str, text: &str) -> Result<JobFacts, String> {
    let f = parse_qstat_f(text)?;
    let excerpt: String = text.trim().chars().take(200).collect();
    if !f.contains_key("Job Id") {
        return Err(format!(
            "no `Job Id:` line in: {}",
            if excerpt.is_empty() {
                "<empty output>"
            } else {
                &excerpt
            }
        ));
    }
    let get = |k: &str| f.get(k).cloned();
    facts_from(
        job,
        qstat_json::QstatJob {
            walltime: get("Resource_List.walltime"),
            walltime_used: get("resources_used.walltime"),
            ncpus: get("Resource_List.ncpus").and_then(|c| c.parse().ok()),
            mem: get("Resource_List.mem"),
            nodes: get("Resource_List.nodes"),
            exec_host: get("exec_host"),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Torque 6 `qstat -f` of a running job (structure as printed by pbs_server; values
    /// from a job like the ones pbs-scripts/vmpilot.pbs submits).
    const TORQUE: &str = "Job Id: 1234.headnode.example.org
    Job_Name = vmpilot
    Job_Owner = cloud@headnode.example.org
    resources_used.cput = 00:00:01
    resources_used.mem = 5120kb
    resources_used.vmem = 30120kb
    resources_used.walltime = 00:10:05
    job_state = R
    queue = vmhosts
    server = headnode.example.org
    Checkpoint = u
    ctime = Sun Nov 22 19:00:00 2026
    exec_host = node042/0-3
    Rerunable = False
    Resource_List.mem = 8gb
    Resource_List.nodect = 1
    Resource_List.nodes = 1:ppn=4
    Resource_List.walltime = 02:00:00
    Variable_List = PBS_O_QUEUE=vmhosts,PBS_O_HOME=/home/cloud,PBS_O_LOGNAME=cloud,
\tPBS_O_PATH=/usr/bin:/bin,PBS_O_SHELL=/bin/bash
    start_time = Sun Nov 22 19:00:02 2026
";

    #[test]
    fn facts_from_torque_qstat() {
        let f = facts_from_qstat("1234.headnode.example.org", TORQUE).unwrap();
        assert_eq!(f.time_left, Some(Duration::from_secs(7200 - 605)));
        assert_eq!(f.memory_mib, Some(8192));
        assert_eq!(f.cpus, Some(4));
        assert_eq!(f.nodes.as_deref(), Some("node042/0-3"));
        let fields = parse_qstat_f(TORQUE).unwrap();
        assert!(fields["Variable_List"].ends_with("PBS_O_SHELL=/bin/bash"));
    }

    #[test]
    fn a_key_printed_twice_is_refused_not_resolved() {
        // A variable whose value carries a newline and a fake resource line.
        let injected = TORQUE.replace(
            "PBS_O_SHELL=/bin/bash",
            "PBS_O_SHELL=/bin/bash\n    Resource_List.walltime = 999:00:00",
        );
        let e = facts_from_qstat("1234.headnode.example.org", &injected).unwrap_err();
        assert!(
            e.contains("Resource_List.walltime") && e.contains("twice"),
            "{e}"
        );
        let two = format!("{TORQUE}{TORQUE}");
        assert!(
            facts_from_qstat("1234", &two)
                .unwrap_err()
                .contains("Job Id")
        );
    }

    #[test]
    fn empty_or_garbage_qstat_is_an_error() {
        assert!(
            facts_from_qstat("1", "")
                .unwrap_err()
                .contains("empty output")
        );
        assert!(facts_from_qstat("1", "qstat: Unknown Job Id 1").is_err());
        let bad = TORQUE.replace("02:00:00", "two hours");
        assert!(
            facts_from_qstat("1", &bad)
                .unwrap_err()
                .contains("two hours")
        );
    }

    #[test]
    fn pbs_environment_gives_walltime_and_cpus() {
        // Recorded from a Torque job's environment (`env | grep PBS`).
        let env: Env = [
            ("PBS_JOBID", "1234.headnode.example.org"),
            ("PBS_WALLTIME", "7200"),
            ("PBS_NUM_PPN", "4"),
            (
                "PBS_NODEFILE",
                "/var/spool/torque/aux/1234.headnode.example.org",
            ),
            ("PBS_O_WORKDIR", "/home/cloud"),
            ("PBS_QUEUE", "vmhosts"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let p = Pbs::new("1234.headnode.example.org", &env, Duration::from_secs(1));
        assert_eq!(p.env_walltime, Some(Duration::from_secs(7200)));
        assert_eq!(p.env_cpus, Some(4));
    }

    #[test]
    fn pbs_memory_units() {
        assert_eq!(parse_pbs_mem("8gb"), Some(8192));
        assert_eq!(parse_pbs_mem("4096MB"), Some(4096));
        assert_eq!(parse_pbs_mem("1048576kb"), Some(1024));
        assert_eq!(parse_pbs_mem("lots"), None);
        assert_eq!(
            parse_pbs_mem("77777777777778g"),
            None,
            "overflow is unknown, not wrapped"
        );
    }
}
