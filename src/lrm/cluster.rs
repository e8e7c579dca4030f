//! Pilot jobs across the cluster, for `vmpilot kill-all --cluster`: find every pilot job
//! through the batch system, cancel it, and wait for it to leave.
//!
//! Pilots are recognised by the job name *and* comment the project's job scripts set
//! (`vmpilot` / `vmpilot-pilot`), never by name alone, so an unrelated job that happens to be
//! called `vmpilot` is left alone. Cancelling goes through the batch system, so each job's
//! pilot gets its SIGTERM and each node's epilog (`vmpilot recover --job`) finishes the rest.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::squeue_json;
use vmpilot_common::command::{self, ExecError};

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
    /// It answered, but not with the listing asked for: reading it anyway could miss pilots.
    #[error(
        "`{command}` did not print a job listing: {detail}\n\nhint: run `{command}` by hand; vmpilot needs Slurm 21.08 or later with its JSON serializer, and a site wrapper must not alter the output"
    )]
    Unreadable {
        /// The command.
        command: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// The Slurm command kill-all lists jobs with.
const SQUEUE: &str = "squeue --json";

/// Pilots in `squeue --json`: the active jobs with the pilots' name AND comment. Names and
/// comments are strings in JSON, so no user's job name can fake or hide a pilot (the text
/// format `%i|%j|%k|…` could be broken by a `|` in any job's name). Output that is not the
/// listing is an error, not "no pilots": that would tell an admin the cluster is clear
/// when it is not.
pub fn pilots_in_squeue_json(text: &str) -> Result<Vec<PilotJob>, ClusterError> {
    let jobs = squeue_json::parse(text).map_err(|detail| ClusterError::Unreadable {
        command: SQUEUE,
        detail,
    })?;
    Ok(jobs
        .into_iter()
        .filter(|j| j.is_active() && j.name == PILOT_JOB_NAME && j.comment == PILOT_COMMENT)
        .map(|j| PilotJob {
            id: j.job_id.to_string(),
            state: j.state,
            nodes: j.nodes,
        })
        .collect())
}

impl Cluster {
    /// Every pilot job that is queued or running.
    pub async fn pilots(self, timeout: Duration) -> Result<Vec<PilotJob>, ClusterError> {
        match self {
            Cluster::Slurm => {
                let out = command::output("squeue", &["--json"], timeout).await?;
                pilots_in_squeue_json(&out)
            }
            Cluster::Pbs => {
                let out =
                    command::output("qselect", &["-N", PILOT_JOB_NAME, "-s", "QRHW"], timeout)
                        .await?;
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
                Cluster::Slurm => command::output("scancel", &[&job.id], timeout).await,
                Cluster::Pbs => command::output("qdel", &[&job.id], timeout).await,
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

    fn job(id: u64, name: &str, comment: &str, state: &str) -> String {
        format!(
            r#"{{"job_id": {id}, "name": {name:?}, "comment": {comment:?}, "job_state": "{state}", "nodes": "n1"}}"#
        )
    }

    #[test]
    fn only_active_jobs_with_the_pilot_name_and_comment_are_pilots() {
        let jobs = [
            job(12, "vmpilot", "vmpilot-pilot", "RUNNING"),
            job(13, "vmpilot", "", "RUNNING"),
            job(14, "other", "vmpilot-pilot", "PENDING"),
            job(15, "vmpilot", "vmpilot-pilot", "PENDING"),
            job(16, "vmpilot", "vmpilot-pilot", "COMPLETING"),
            job(17, "vmpilot", "vmpilot-pilot", "CANCELLED"),
            job(
                18,
                "vmpilot|vmpilot-pilot|RUNNING|n1",
                "vmpilot-pilot|x",
                "RUNNING",
            ),
            job(
                19,
                "vmpilot\n20|vmpilot|vmpilot-pilot|RUNNING|n1",
                "",
                "RUNNING",
            ),
        ];
        let text = format!(r#"{{"errors": [], "jobs": [{}]}}"#, jobs.join(","));
        let ids: Vec<_> = pilots_in_squeue_json(&text)
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(ids, ["12", "15", "16"]);
    }

    #[test]
    fn output_that_is_not_the_listing_is_an_error_not_an_empty_cluster() {
        for garbage in [
            "garbage",
            "<html><body>Service Unavailable</body></html>",
            "12|vmpilot|vmpilot-pilot|RUNNING|n1",
            r#"{"meta": {}}"#,
        ] {
            let e = pilots_in_squeue_json(garbage).unwrap_err().to_string();
            assert!(
                e.contains("squeue --json") && e.contains("hint:"),
                "{garbage}: {e}"
            );
        }
    }
}
