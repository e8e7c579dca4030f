//! The batch system (local resource manager) the pilot runs under: detection from the
//! environment, and the job's facts read through the batch system itself.
//!
//! The facts decide the lease: the deadline comes from the job's remaining walltime, and the
//! memory and CPUs handed to guests must fit what the job was allocated (VMs live outside the
//! job's cgroup, so the batch system cannot enforce it; the pilot must). Every query runs with
//! a timeout and keeps the tool's stderr; any failure happens before the host is touched.

pub mod cluster;
pub mod pbs;
pub mod qstat_json;
pub mod slurm;
pub mod squeue_json;

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use vmpilot_common::command::ExecError;

/// Which batch system, as configured (`[lrm] kind`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LrmKind {
    /// Detect from the environment.
    Auto,
    /// Slurm.
    Slurm,
    /// PBS, Torque, OpenPBS, PBS Pro.
    Pbs,
    /// No batch system: standalone, `--walltime` required.
    None,
}

/// What the batch system says about the pilot's job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobFacts {
    /// `slurm` or `pbs`.
    pub lrm: &'static str,
    /// Job id as the batch system prints it.
    pub job_id: String,
    /// Node name(s) the job runs on.
    pub nodes: Option<String>,
    /// Memory allocated to the job on this node, MiB (`None`: unknown or unlimited).
    pub memory_mib: Option<u64>,
    /// CPUs allocated on this node.
    pub cpus: Option<u32>,
    /// Walltime left (`None`: no limit).
    pub time_left: Option<Duration>,
}

/// Batch-system problems. All happen before any host change. Exit status: environment.
#[derive(Debug, thiserror::Error)]
pub enum LrmError {
    /// `kind` forces a batch system whose job variables are missing.
    #[error(
        "[lrm] kind = \"{kind}\" but {var} is not set: this process is not running inside a {kind} job\n\nhint: submit the pilot with the scripts in {scripts}/, or set `[lrm] kind = \"auto\"`"
    )]
    NotInJob {
        /// The configured kind.
        kind: &'static str,
        /// The variable that is missing.
        var: &'static str,
        /// Where the job scripts are.
        scripts: &'static str,
    },
    /// A query command failed, hung or is missing.
    #[error(
        "cannot read job {job} from {lrm}: {source}\n\nhint: nothing was changed on this node; check that the batch system's controller answers (`scontrol ping` for Slurm, `qstat -B` for PBS) and that its tools are in PATH (each call is bounded by `[lrm] command_timeout`)"
    )]
    Query {
        /// Batch system.
        lrm: &'static str,
        /// Job id.
        job: String,
        /// Why.
        source: ExecError,
    },
    /// The command answered, but not in a form we understand.
    #[error(
        "cannot read job {job} from {lrm}: unexpected output of `{command}`: {detail}\n\nhint: this vmpilot reads Slurm through `squeue --json` (Slurm 21.08 or later, built with its JSON serializer) and PBS through `qstat -f -F json` or `qstat -f`; run the command above by hand and report its output"
    )]
    Garbage {
        /// Batch system.
        lrm: &'static str,
        /// Job id.
        job: String,
        /// The command.
        command: String,
        /// What was wrong (with an excerpt of the output).
        detail: String,
    },
}

/// The process environment, injectable for tests.
pub type Env = HashMap<String, String>;

/// The batch system this pilot runs under, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lrm {
    /// A Slurm job.
    Slurm(slurm::Slurm),
    /// A PBS job.
    Pbs(pbs::Pbs),
}

/// Decide which batch system the pilot runs under. PBS variables win over Slurm ones: real
/// Slurm never sets `PBS_JOBID`, while a PBS-on-Slurm shim sets both.
pub fn detect(kind: LrmKind, env: &Env, timeout: Duration) -> Result<Option<Lrm>, LrmError> {
    let slurm = || {
        env.get("SLURM_JOB_ID")
            .map(|id| Lrm::Slurm(slurm::Slurm::new(id, timeout)))
    };
    let pbs = || {
        env.get("PBS_JOBID")
            .map(|id| Lrm::Pbs(pbs::Pbs::new(id, env, timeout)))
    };
    match kind {
        LrmKind::None => Ok(None),
        LrmKind::Auto => Ok(pbs().or_else(slurm)),
        LrmKind::Slurm => slurm().map(Some).ok_or(LrmError::NotInJob {
            kind: "slurm",
            var: "SLURM_JOB_ID",
            scripts: "slurm-scripts",
        }),
        LrmKind::Pbs => pbs().map(Some).ok_or(LrmError::NotInJob {
            kind: "pbs",
            var: "PBS_JOBID",
            scripts: "pbs-scripts",
        }),
    }
}

impl Lrm {
    /// The job id.
    pub fn job_id(&self) -> &str {
        match self {
            Lrm::Slurm(s) => &s.job_id,
            Lrm::Pbs(p) => &p.job_id,
        }
    }

    /// Read the job's facts through the batch system.
    pub async fn facts(&self) -> Result<JobFacts, LrmError> {
        match self {
            Lrm::Slurm(s) => s.facts().await,
            Lrm::Pbs(p) => p.facts().await,
        }
    }

    /// After a SIGTERM: was the job preempted (rather than cancelled)? `false` when the batch
    /// system cannot tell or does not answer quickly.
    pub async fn was_preempted(&self) -> bool {
        match self {
            Lrm::Slurm(s) => s.was_preempted().await,
            Lrm::Pbs(_) => false,
        }
    }
}

/// Parse `[D-]HH:MM:SS`, `MM:SS`, `HH:MM:SS` or `D-HH` as Slurm and PBS print durations.
pub fn parse_clock(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (days, rest) = match text.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, text),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| p.parse::<u64>().ok())
        .collect::<Option<_>>()?;
    // Checked arithmetic: a batch system printing garbage must give "not a duration", never
    // a wrapped (wrong) lease length. Found by the `clock` fuzz target.
    let hms = |h: u64, m: u64, s: u64| {
        h.checked_mul(3600)?
            .checked_add(m.checked_mul(60)?)?
            .checked_add(s)
    };
    let secs = match (parts.as_slice(), text.contains('-')) {
        ([h], true) => hms(*h, 0, 0)?,
        ([h, m], true) => hms(*h, *m, 0)?,
        ([m, s], false) => hms(0, *m, *s)?,
        ([h, m, s], _) => hms(*h, *m, *s)?,
        ([s], false) => *s,
        _ => return None,
    };
    Some(Duration::from_secs(
        days.checked_mul(86400)?.checked_add(secs)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn clocks_in_every_batch_system_format() {
        assert_eq!(parse_clock("00:02:00"), Some(Duration::from_secs(120)));
        assert_eq!(parse_clock("1:58"), Some(Duration::from_secs(118)));
        assert_eq!(
            parse_clock("2-03:04:05"),
            Some(Duration::from_secs(2 * 86400 + 3 * 3600 + 245))
        );
        assert_eq!(parse_clock("1-00"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_clock("45"), Some(Duration::from_secs(45)));
        // The last three overflowed before (fuzz/crashes/): now plain "not a duration".
        for bad in [
            "",
            "UNLIMITED",
            "1:2:3:4",
            "a:b",
            "-1",
            "NOT_SET",
            "11111111110111110-0",
            "0222222222222222-0",
            "9999999999999999999:00:00",
        ] {
            assert_eq!(parse_clock(bad), None, "{bad}");
        }
    }

    #[test]
    fn detection_follows_the_environment_and_the_override() {
        let t = Duration::from_secs(1);
        assert_eq!(detect(LrmKind::Auto, &env(&[]), t).unwrap(), None);
        let slurm = detect(LrmKind::Auto, &env(&[("SLURM_JOB_ID", "42")]), t)
            .unwrap()
            .unwrap();
        assert_eq!(slurm.job_id(), "42");
        assert!(matches!(slurm, Lrm::Slurm(_)));
        let both = env(&[("SLURM_JOB_ID", "42"), ("PBS_JOBID", "42.server")]);
        assert!(matches!(
            detect(LrmKind::Auto, &both, t).unwrap(),
            Some(Lrm::Pbs(_))
        ));
        assert!(matches!(
            detect(LrmKind::Slurm, &both, t).unwrap(),
            Some(Lrm::Slurm(_))
        ));
        assert_eq!(detect(LrmKind::None, &both, t).unwrap(), None);
        let e = detect(LrmKind::Pbs, &env(&[("SLURM_JOB_ID", "1")]), t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("PBS_JOBID") && e.contains("pbs-scripts"), "{e}");
    }
}
