//! Pilot submission: `POST /v1/pilots` and the background pool that keeps `pool.target`
//! pilots queued or running.
//!
//! Both run the project's own `vmpilot-submit` (slurm-scripts/ or pbs-scripts/), one call per
//! pilot, with a timeout, and record each job id in the database the moment the script
//! printed it — so a coordinator that dies half-way through a batch of submissions still
//! knows about every job it created. The pool loop counts pilots with one command per round
//! (`squeue -h -n vmpilot -o %i` or `qselect -N vmpilot -s QR`) and submits at most
//! `max_submit_per_round`, so a broken cluster gets a trickle, not a flood.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::config::{BatchSystem, PoolConfig, SubmitDefaults};
use super::db::{Db, DbError};
use super::ingest::NewPilot;
use vmpilot_common::command::{self, ExecError};

/// Most pilots one API request may submit.
pub const MAX_COUNT: u32 = 100;

/// What `POST /v1/pilots` accepts; absent fields take `[pool]`'s defaults.
#[derive(Deserialize, Serialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// How many pilots (1 to [`MAX_COUNT`]).
    #[serde(default = "one")]
    pub count: u32,
    /// Job memory (`512M`, `4G`).
    pub memory: Option<String>,
    /// Job CPUs.
    pub cpus: Option<u32>,
    /// Time limit (`01:00:00`, `90`, `1-00:00:00`).
    pub time: Option<String>,
    /// Partition (Slurm) or queue (PBS).
    pub partition: Option<String>,
}

fn one() -> u32 {
    1
}

/// Pilot submission failures.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The request asks for something the scripts would refuse.
    #[error("{0}")]
    BadRequest(String),
    /// The submit script or the count command failed.
    #[error("{0}")]
    Exec(#[from] ExecError),
    /// The submit script succeeded but did not print a job id.
    #[error(
        "the submit script printed no job id (stdout: {stdout:?})\n\nhint: run it by hand with --dry-run to see what it does"
    )]
    NoJobId {
        /// What it printed.
        stdout: String,
    },
    /// Recording the job failed (it was submitted).
    #[error("job {job_id} was submitted but could not be recorded: {source}")]
    Record {
        /// The job.
        job_id: String,
        /// The database error.
        source: DbError,
    },
}

impl PoolError {
    /// The caller's fault (400) rather than the cluster's (502).
    pub fn is_bad_request(&self) -> bool {
        match self {
            PoolError::BadRequest(_) => true,
            // vmpilot-submit exits 2 for bad arguments, before submitting anything.
            PoolError::Exec(ExecError::Failed { status, .. }) => status == "exit status: 2",
            _ => false,
        }
    }
}

/// How the pool is doing, for the status page.
#[derive(Serialize, Debug, Clone, Default)]
pub struct PoolStatus {
    /// Pilots to keep queued or running.
    pub target: u32,
    /// Pilots counted at the last check.
    pub active: Option<usize>,
    /// When the last check ran.
    pub last_check: Option<String>,
    /// What went wrong at the last check, if anything.
    pub last_error: Option<String>,
    /// Pilots the pool loop submitted since start.
    pub submitted: u64,
}

/// The pool: config plus what the loop last saw.
#[derive(Debug)]
pub struct Pool {
    config: PoolConfig,
    status: Mutex<PoolStatus>,
}

/// One pilot's resolved options.
#[derive(Debug, Clone)]
struct Params {
    memory: String,
    cpus: u32,
    time: String,
    partition: Option<String>,
}

fn check(ok: bool, what: &str, value: &str) -> Result<(), PoolError> {
    if ok {
        Ok(())
    } else {
        Err(PoolError::BadRequest(format!(
            "`{what}` value `{value}` is not valid"
        )))
    }
}

impl Pool {
    /// A pool with `config`.
    pub fn new(config: PoolConfig) -> Pool {
        let status = PoolStatus {
            target: config.target,
            ..PoolStatus::default()
        };
        Pool {
            config,
            status: Mutex::new(status),
        }
    }

    /// What the loop last saw.
    pub fn status(&self) -> PoolStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn params(&self, req: &SubmitRequest) -> Result<Params, PoolError> {
        let d: &SubmitDefaults = &self.config.defaults;
        let p = Params {
            memory: req.memory.clone().unwrap_or_else(|| d.memory.clone()),
            cpus: req.cpus.unwrap_or(d.cpus),
            time: req.time.clone().unwrap_or_else(|| d.time.clone()),
            partition: req.partition.clone().or_else(|| d.partition.clone()),
        };
        // The scripts validate too; checking here gives a clean 400 before anything runs
        // and keeps option-looking values (`--foo`) away from their argument parsers.
        let m = &p.memory;
        check(
            !m.is_empty()
                && m.len() < 16
                && m.trim_end_matches(['M', 'G', 'T'])
                    .chars()
                    .all(|c| c.is_ascii_digit())
                && !m.starts_with('0'),
            "memory",
            m,
        )?;
        check((1..=4096).contains(&p.cpus), "cpus", &p.cpus.to_string())?;
        check(
            !p.time.is_empty()
                && p.time.len() < 20
                && p.time
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == ':' || c == '-')
                && !p.time.starts_with('-'),
            "time",
            &p.time,
        )?;
        if let Some(part) = &p.partition {
            check(
                !part.is_empty()
                    && part.len() < 64
                    && !part.starts_with('-')
                    && part.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ',' | '@')
                    }),
                "partition",
                part,
            )?;
        }
        Ok(p)
    }

    fn argv(&self, p: &Params) -> Vec<String> {
        let d = &self.config.defaults;
        let mut a: Vec<String> = vec![
            "--memory".into(),
            p.memory.clone(),
            "--cpus".into(),
            p.cpus.to_string(),
            "--time".into(),
            p.time.clone(),
        ];
        let optional = [
            ("--partition", &p.partition),
            ("--grace", &d.grace),
            ("--config", &d.node_config),
            ("--coordinator", &d.coordinator_url),
            ("--output", &d.output),
        ];
        for (flag, value) in optional {
            if let Some(v) = value {
                a.push(flag.into());
                a.push(v.clone());
            }
        }
        if d.preemptible {
            a.push("--preemptible".into());
        }
        a
    }

    async fn submit_one(&self, p: &Params) -> Result<String, PoolError> {
        let script = self.config.submit_script.to_string_lossy().into_owned();
        let argv = self.argv(p);
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let stdout = command::output(&script, &args, self.config.submit_timeout).await?;
        let job_id = stdout.lines().map(str::trim).rfind(|l| !l.is_empty());
        match job_id {
            Some(id) if !id.contains(char::is_whitespace) => Ok(id.to_string()),
            _ => Err(PoolError::NoJobId { stdout }),
        }
    }

    /// Submit `req.count` pilots, recording each. Returns the job ids submitted and, if it
    /// stopped early, why.
    pub async fn submit(
        &self,
        db: &Db,
        req: &SubmitRequest,
        origin: &str,
    ) -> (Vec<String>, Option<PoolError>) {
        let params = match self.params(req) {
            Ok(p) => p,
            Err(e) => return (Vec::new(), Some(e)),
        };
        if req.count == 0 || req.count > MAX_COUNT {
            let e = PoolError::BadRequest(format!("`count` must be 1 to {MAX_COUNT}"));
            return (Vec::new(), Some(e));
        }
        let mut ids = Vec::new();
        for _ in 0..req.count {
            let job_id = match self.submit_one(&params).await {
                Ok(id) => id,
                Err(e) => return (ids, Some(e)),
            };
            let record = NewPilot {
                job_id: job_id.clone(),
                batch_system: match self.config.batch_system {
                    BatchSystem::Slurm => "slurm".into(),
                    BatchSystem::Pbs => "pbs".into(),
                },
                origin: origin.into(),
                memory: params.memory.clone(),
                cpus: params.cpus,
                time_limit: params.time.clone(),
                partition: params.partition.clone(),
            };
            ids.push(job_id.clone());
            if let Err(source) = db.record_pilot(record).await {
                return (ids, Some(PoolError::Record { job_id, source }));
            }
            tracing::info!(job = %job_id, origin, "pilot submitted");
        }
        (ids, None)
    }

    /// Pilots queued or running, by the count command.
    pub async fn count_active(&self) -> Result<usize, PoolError> {
        let (program, args) = self
            .config
            .count_command
            .split_first()
            .ok_or_else(|| PoolError::BadRequest("pool.count_command is empty".into()))?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = command::output(program, &args, self.config.submit_timeout).await?;
        Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
    }

    /// One round: count, then submit what is missing (bounded).
    async fn round(&self, db: &Db) -> Result<(usize, u32), PoolError> {
        let active = self.count_active().await?;
        let missing = (self.config.target as usize).saturating_sub(active);
        let count = missing.min(self.config.max_submit_per_round as usize) as u32;
        if count == 0 {
            return Ok((active, 0));
        }
        let req = SubmitRequest {
            count,
            ..SubmitRequest::default()
        };
        let (ids, err) = self.submit(db, &req, "pool").await;
        match err {
            Some(e) => Err(e),
            None => Ok((active, ids.len() as u32)),
        }
    }
}

/// Keep `target` pilots queued or running until `stop` turns true. Does nothing with
/// target 0. The first round runs at once.
///
/// A round is never cancelled half-way: a submit script killed mid-run may have submitted a
/// job we would then not record. Shutdown therefore waits for the current round (at most
/// `max_submit_per_round` × `submit_timeout`).
pub async fn pool_loop(pool: std::sync::Arc<Pool>, db: Db, mut stop: watch::Receiver<bool>) {
    if pool.config.target == 0 {
        return;
    }
    loop {
        let result = pool.round(&db).await;
        if let Ok(mut s) = pool.status.lock() {
            s.last_check = Some(super::db::rfc3339(time::OffsetDateTime::now_utc()));
            match &result {
                Ok((active, submitted)) => {
                    s.active = Some(*active);
                    s.submitted += u64::from(*submitted);
                    s.last_error = None;
                }
                Err(e) => s.last_error = Some(format!("{e:#}")),
            }
        }
        if let Err(e) = result {
            tracing::warn!("pool round failed: {e:#}");
        }
        tokio::select! {
            _ = tokio::time::sleep(pool.config.interval) => {}
            _ = stop.changed() => return,
        }
    }
}
