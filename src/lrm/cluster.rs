//! Pilot jobs across the cluster, for `vmpilot kill-all --cluster`: find every pilot job
//! through the batch system, cancel it, and wait for it to leave.
//!
//! Pilots are recognised by the job name *and* comment the project's job scripts set
//! (`vmpilot` / `vmpilot-pilot`), never by name alone, so an unrelated job that happens to be
//! called `vmpilot` is left alone. Cancelling goes through the batch system, so each job's
//! pilot gets its SIGTERM and each node's epilog (`vmpilot recover --job`) finishes the rest.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::exec::{self, ExecError};

/// The job name the scripts give pilots.
pub const PILOT_JOB_NAME: &str = "vmpilot";
/// The comment the Slurm scripts give pilots.
pub const PILOT_COMMENT: &str = "vmpilot-pilot";

/// A pilot job as the batch system lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PilotJob {
    /// Job id.
    pub id: String,
    /// State when found (e.g. RUNNING, PENDING).
    pub state: String,
    /// Node(s), if running.
    pub nodes: String,
}

/// What became of one pilot job.
#[derive(Debug, Clone, Serialize)]
pub struct Cancelled {
    /// The job.
    pub job: PilotJob,
    /// `gone`, `still there`, or the cancel error.
    pub result: String,
}

/// Which batch system's commands to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// squeue / scancel.
    Slurm,
    /// qselect / qdel / qstat.
    Pbs,
}

/// Why the pilot jobs could not be listed. Nothing has been cancelled when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The batch system's command failed, hung or is missing.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// It answered, but not in the asked-for format: reading it anyway could miss pilots.
    #[error(
        "`{program}` printed a line that is not a job in the format vmpilot asked for: {line:?}\n\nhint: run `{program} -h -o '%i|%j|%k|%T|%N'` by hand; a site wrapper or a changed output format must not alter it"
    )]
    Unreadable {
        /// The command.
        program: &'static str,
        /// The line.
        line: String,
    },
}

/// Parse `squeue -h -o '%i|%j|%k|%T|%N'`: pilots are the jobs with the pilots' name AND
/// comment. A line that is not a job in that format is an error, not skipped: silently
/// reading garbage as "no pilots" would tell an admin the cluster is clear when it is not.
pub fn parse_squeue(text: &str) -> Result<Vec<PilotJob>, ClusterError> {
    let mut pilots = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let unreadable = || ClusterError::Unreadable {
            program: "squeue",
            line: line.chars().take(200).collect(),
        };
        let f: Vec<&str> = line.splitn(5, '|').collect();
        let [id, name, comment, state, nodes] = f.as_slice() else {
            return Err(unreadable());
        };
        // Job ids start with a digit (`123`, `123_4`, `123_[1-5]`); states are upper case.
        let id_ok = id.starts_with(|c: char| c.is_ascii_digit());
        let state_ok =
            !state.is_empty() && state.chars().all(|c| c.is_ascii_uppercase() || c == '_');
        if !id_ok || !state_ok {
            return Err(unreadable());
        }
        if *name == PILOT_JOB_NAME && *comment == PILOT_COMMENT {
            pilots.push(PilotJob {
                id: id.to_string(),
                state: state.to_string(),
                nodes: nodes.to_string(),
            });
        }
    }
    Ok(pilots)
}

impl Cluster {
    /// Every pilot job that is queued or running.
    pub async fn pilots(self, timeout: Duration) -> Result<Vec<PilotJob>, ClusterError> {
        match self {
            Cluster::Slurm => {
                let out = exec::output("squeue", &["-h", "-o", "%i|%j|%k|%T|%N"], timeout).await?;
                parse_squeue(&out)
            }
            Cluster::Pbs => {
                let out =
                    exec::output("qselect", &["-N", PILOT_JOB_NAME, "-s", "QRHW"], timeout).await?;
                Ok(out
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|id| PilotJob {
                        id: id.to_string(),
                        state: "queued-or-running".into(),
                        nodes: String::new(),
                    })
                    .collect())
            }
        }
    }

    /// Cancel every pilot job and wait (up to `wait`) for them to leave the queue. An error
    /// means the first listing failed and nothing was cancelled; once jobs are cancelled,
    /// a listing that fails only leaves them "not confirmed gone".
    pub async fn cancel_all(
        self,
        timeout: Duration,
        wait: Duration,
    ) -> Result<Vec<Cancelled>, ClusterError> {
        let jobs = self.pilots(timeout).await?;
        let mut results = Vec::new();
        for job in &jobs {
            let cancel = match self {
                Cluster::Slurm => exec::output("scancel", &[&job.id], timeout).await,
                Cluster::Pbs => exec::output("qdel", &[&job.id], timeout).await,
            };
            results.push(Cancelled {
                job: job.clone(),
                result: match cancel {
                    Ok(_) => "cancelled".into(),
                    Err(e) => format!("cancel failed: {e}"),
                },
            });
        }
        let until = Instant::now() + wait;
        loop {
            let left: Vec<String> = match self.pilots(timeout).await {
                Ok(jobs) => jobs.into_iter().map(|j| j.id).collect(),
                Err(e) => {
                    for r in results.iter_mut().filter(|r| r.result == "cancelled") {
                        r.result = format!("cancelled, not confirmed gone: {e}");
                    }
                    return Ok(results);
                }
            };
            for r in results.iter_mut().filter(|r| r.result == "cancelled") {
                if !left.contains(&r.job.id) {
                    r.result = "gone".into();
                }
            }
            if left.iter().all(|id| !jobs.iter().any(|j| &j.id == id)) || Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for r in results.iter_mut().filter(|r| r.result == "cancelled") {
            r.result = "still there".into();
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_jobs_with_the_pilot_name_and_comment_are_pilots() {
        let text = "12|vmpilot|vmpilot-pilot|RUNNING|n1\n13|vmpilot|(null)|RUNNING|n2\n14|other|vmpilot-pilot|PENDING|\n15|vmpilot|vmpilot-pilot|PENDING|\n16_3|vmpilot|vmpilot-pilot|COMPLETING|n1\n\n";
        let ids: Vec<_> = parse_squeue(text)
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(ids, ["12", "15", "16_3"]);
    }

    #[test]
    fn output_not_in_the_asked_format_is_an_error_not_an_empty_cluster() {
        for garbage in [
            "garbage",
            "<html><body>Service Unavailable</body></html>",
            "JOBID PARTITION NAME USER ST TIME NODES NODELIST(REASON)",
            "12|vmpilot|vmpilot-pilot|running|n1",
            "|vmpilot|vmpilot-pilot|RUNNING|n1",
        ] {
            let text = format!("12|vmpilot|vmpilot-pilot|RUNNING|n1\n{garbage}\n");
            let e = parse_squeue(&text).unwrap_err().to_string();
            assert!(
                e.contains("squeue") && e.contains("hint:"),
                "{garbage}: {e}"
            );
        }
    }
}
