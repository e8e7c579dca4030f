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

/// Parse `squeue -h -o '%i|%j|%k|%T|%N'`: pilots are the jobs with the pilots' name AND comment.
pub fn parse_squeue(text: &str) -> Vec<PilotJob> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.trim().splitn(5, '|').collect();
            match f.as_slice() {
                [id, name, comment, state, nodes]
                    if *name == PILOT_JOB_NAME && *comment == PILOT_COMMENT =>
                {
                    Some(PilotJob {
                        id: id.to_string(),
                        state: state.to_string(),
                        nodes: nodes.to_string(),
                    })
                }
                _ => None,
            }
        })
        .collect()
}

impl Cluster {
    /// Every pilot job that is queued or running.
    pub async fn pilots(self, timeout: Duration) -> Result<Vec<PilotJob>, ExecError> {
        match self {
            Cluster::Slurm => {
                let out = exec::output("squeue", &["-h", "-o", "%i|%j|%k|%T|%N"], timeout).await?;
                Ok(parse_squeue(&out))
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

    /// Cancel every pilot job and wait (up to `wait`) for them to leave the queue.
    pub async fn cancel_all(
        self,
        timeout: Duration,
        wait: Duration,
    ) -> Result<Vec<Cancelled>, ExecError> {
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
            let left: Vec<String> = self
                .pilots(timeout)
                .await?
                .into_iter()
                .map(|j| j.id)
                .collect();
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
        let text = "12|vmpilot|vmpilot-pilot|RUNNING|n1\n13|vmpilot|(null)|RUNNING|n2\n14|other|vmpilot-pilot|PENDING|\n15|vmpilot|vmpilot-pilot|PENDING|\ngarbage\n";
        let ids: Vec<_> = parse_squeue(text).into_iter().map(|j| j.id).collect();
        assert_eq!(ids, ["12", "15"]);
    }
}
