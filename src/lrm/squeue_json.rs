//! Slurm's structured job listing, `squeue --json`: the one source vmpilot reads Slurm jobs
//! from, for the pilot's own job facts and for `kill-all --cluster`.
//!
//! Job names, comments, working directories and output paths are chosen by whoever submits
//! a job. In the text formats (`scontrol show job -o`, `squeue -o '%i|%j|…'`) such a string
//! can carry separators and fake fields (`MinMemoryNode=1T`, `|RUNNING|`); in JSON it is
//! just a string value, so no user can shift what the pilot reads.
//!
//! Slurm 22.05 (OpenAPI v0.0.38) prints numbers plainly, `null` when unset or infinite, and
//! the state as a string; Slurm 23.02 and later wrap numbers as `{"set", "infinite",
//! "number"}` and print the state as a list of flags. Both forms are read. 22.05 also
//! ignores `--jobs`/`--name` filters under `--json` and lists recently ended jobs, so
//! callers select jobs by id and by state themselves.

use serde::Deserialize;

/// One job of `squeue --json`, the fields vmpilot uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmJob {
    /// The job's own id (an array task's is its unique id, not the array's).
    pub job_id: u64,
    /// For an array task: the array's id and the task's index.
    pub array: Option<(u64, u64)>,
    /// Job name (user-chosen).
    pub name: String,
    /// Job comment (user-chosen).
    pub comment: String,
    /// Base state, e.g. `RUNNING`, `PENDING`, `COMPLETED`.
    pub state: String,
    /// Time limit in minutes (`None`: unlimited).
    pub time_limit_min: Option<u64>,
    /// Start, and last resume when it was suspended (Unix seconds; 0 when unset).
    pub start_time: u64,
    /// Last suspend or resume time (Unix seconds; 0 when never suspended).
    pub suspend_time: u64,
    /// Seconds run before the last suspension.
    pub pre_sus_time: u64,
    /// When Slurm started preempting the job (`None`: it did not).
    pub preempt_time: Option<u64>,
    /// Memory per node, MiB.
    pub memory_per_node: Option<u64>,
    /// Memory per CPU, MiB.
    pub memory_per_cpu: Option<u64>,
    /// CPUs of the whole job.
    pub cpus: Option<u64>,
    /// Nodes of the job.
    pub node_count: Option<u64>,
    /// Node list (`vm`, `n[1-4]`).
    pub nodes: String,
    /// Allocated TRES, e.g. `cpu=1,mem=1G,node=1`.
    pub tres_alloc: String,
}

/// States in which a job is over: it holds no node and needs no cancelling.
const FINAL_STATES: &[&str] = &[
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
];

impl SlurmJob {
    /// Is the job still queued, running or finishing (anything but a final state)?
    pub fn is_active(&self) -> bool {
        !FINAL_STATES.contains(&self.state.as_str())
    }

    /// Is this the job `id` as Slurm names it in `SLURM_JOB_ID` (`123`) or `squeue` (`123_4`)?
    pub fn is(&self, id: &str) -> bool {
        match id.split_once('_') {
            None => id.parse() == Ok(self.job_id),
            Some((array, task)) => {
                matches!((array.parse(), task.parse()), (Ok(a), Ok(t)) if self.array == Some((a, t)))
            }
        }
    }

    /// Seconds the job has run at `now` (Unix seconds), as `scontrol` computes `RunTime`:
    /// zero before it starts, the time run before a suspension while suspended, otherwise
    /// the time since it started (or last resumed, plus what it ran before).
    pub fn run_secs(&self, now: u64) -> u64 {
        if self.start_time == 0 || self.state == "PENDING" {
            0
        } else if self.state == "SUSPENDED" {
            self.pre_sus_time
        } else if self.suspend_time != 0 {
            now.saturating_sub(self.suspend_time)
                .saturating_add(self.pre_sus_time)
        } else {
            now.saturating_sub(self.start_time)
        }
    }
}

/// Parse `squeue --json`. Errors are a short description: the caller names the command.
pub fn parse(text: &str) -> Result<Vec<SlurmJob>, String> {
    let listing: Listing = serde_json::from_str(text).map_err(|e| {
        let excerpt: String = text.trim().chars().take(200).collect();
        format!("not the JSON job listing of `squeue --json` ({e}): {excerpt:?}")
    })?;
    if let Some(first) = listing.errors.first() {
        return Err(format!("squeue reported an error: {}", first.describe()));
    }
    listing.jobs.into_iter().map(RawJob::into_job).collect()
}

#[derive(Deserialize)]
struct Listing {
    #[serde(default)]
    errors: Vec<RawError>,
    jobs: Vec<RawJob>,
}

#[derive(Deserialize)]
struct RawError {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    error_number: Option<i64>,
}

impl RawError {
    fn describe(&self) -> String {
        let text = [&self.description, &self.error]
            .into_iter()
            .flatten()
            .find(|t| !t.is_empty())
            .cloned()
            .unwrap_or_else(|| "no description".into());
        match self.error_number {
            Some(n) => format!("{text} (error {n})"),
            None => text,
        }
    }
}

#[derive(Deserialize)]
struct RawJob {
    job_id: Number,
    #[serde(default)]
    array_job_id: Number,
    #[serde(default)]
    array_task_id: Number,
    #[serde(default)]
    name: String,
    #[serde(default)]
    comment: String,
    job_state: State,
    #[serde(default)]
    time_limit: Number,
    #[serde(default)]
    start_time: Number,
    #[serde(default)]
    suspend_time: Number,
    #[serde(default)]
    pre_sus_time: Number,
    #[serde(default)]
    preempt_time: Number,
    #[serde(default)]
    memory_per_node: Number,
    #[serde(default)]
    memory_per_cpu: Number,
    #[serde(default)]
    cpus: Number,
    #[serde(default)]
    node_count: Number,
    #[serde(default)]
    nodes: String,
    #[serde(default)]
    tres_alloc_str: String,
}

/// Slurm's "no value" and "infinite" markers for 32-bit fields (`NO_VAL`, `INFINITE`).
const NO_VAL32: u64 = 0xffff_fffe;

impl RawJob {
    fn into_job(self) -> Result<SlurmJob, String> {
        let job_id = self
            .job_id
            .value()
            .ok_or("a job without a job_id".to_string())?;
        let state = self
            .job_state
            .base()
            .ok_or_else(|| format!("job {job_id} has no job_state"))?;
        if state.is_empty() || !state.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            return Err(format!("job {job_id} has job_state {state:?}"));
        }
        // 0 is "no array" in 22.05; an unset task id is `null` (or unset) in every version.
        let array = match (self.array_job_id.value(), self.array_task_id.value()) {
            (Some(a), Some(t)) if a != 0 => Some((a, t)),
            _ => None,
        };
        let positive = |n: Number| n.value().filter(|v| *v > 0 && *v < NO_VAL32);
        Ok(SlurmJob {
            job_id,
            array,
            name: self.name,
            comment: self.comment,
            state,
            time_limit_min: self.time_limit.value().filter(|m| *m < NO_VAL32),
            start_time: self.start_time.value().unwrap_or(0),
            suspend_time: self.suspend_time.value().unwrap_or(0),
            pre_sus_time: self.pre_sus_time.value().unwrap_or(0),
            preempt_time: positive(self.preempt_time),
            memory_per_node: positive(self.memory_per_node),
            memory_per_cpu: positive(self.memory_per_cpu),
            cpus: positive(self.cpus),
            node_count: positive(self.node_count),
            nodes: self.nodes,
            tres_alloc: self.tres_alloc_str,
        })
    }
}

/// A number as Slurm prints it: plain, `null`, or `{"set": …, "infinite": …, "number": …}`.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(untagged)]
enum Number {
    /// `null` or missing.
    #[default]
    Unset,
    /// 22.05.
    Plain(u64),
    /// 23.02 and later.
    Wrapped {
        #[serde(default)]
        set: bool,
        #[serde(default)]
        infinite: bool,
        #[serde(default)]
        number: u64,
    },
}

impl Number {
    /// The value; `None` when unset or infinite.
    fn value(self) -> Option<u64> {
        match self {
            Number::Unset => None,
            Number::Plain(n) => Some(n),
            Number::Wrapped {
                set: true,
                infinite: false,
                number,
            } => Some(number),
            Number::Wrapped { .. } => None,
        }
    }
}

/// A job state: `"RUNNING"` (22.05) or `["RUNNING", "COMPLETING"]` (23.02 and later, base
/// state first).
#[derive(Deserialize)]
#[serde(untagged)]
enum State {
    One(String),
    Flags(Vec<String>),
}

impl State {
    fn base(self) -> Option<String> {
        match self {
            State::One(s) => Some(s),
            State::Flags(f) => f.into_iter().next(),
        }
    }
}

/// Recorded from Slurm 22.05.8 (`squeue --json`), trimmed to a running job with a
/// hostile name, comment and output path, and an unlimited job with per-CPU memory.
/// The other ~100 fields per job are dropped; they are ignored by the parser.
#[cfg(test)]
pub(crate) const SLURM_22_05: &str = r#"{
  "meta": {"plugin": {"type": "openapi\/v0.0.38", "name": "Slurm OpenAPI v0.0.38"},
       "Slurm": {"version": {"major": 22, "micro": 8, "minor": 5}, "release": "22.05.8"}},
  "errors": [
  ],
  "jobs": [
{"account": "", "array_job_id": 0, "array_task_id": null, "comment": "a|b|c TimeLimit=9",
 "cpus": 1, "end_time": 1796302279, "job_id": 123, "job_state": "RUNNING",
 "memory_per_cpu": null, "memory_per_node": 100, "name": "x TimeLimit=30-00:00:00 MinMemoryNode=1T",
 "node_count": 1, "nodes": "vm", "pre_sus_time": 0, "preempt_time": 0,
 "standard_output": "\/tmp\/o TimeLimit=30-00:00:00.out", "start_time": 1796302099,
 "suspend_time": 0, "time_limit": 3, "tres_alloc_str": "cpu=1,mem=100M,node=1,billing=1"},
{"array_job_id": 0, "array_task_id": null, "comment": "", "cpus": 1, "job_id": 124,
 "job_state": "RUNNING", "memory_per_cpu": 50, "memory_per_node": null, "name": "j.sh",
 "node_count": 1, "nodes": "vm", "pre_sus_time": 0, "preempt_time": 0,
 "start_time": 1796302099, "suspend_time": 0, "time_limit": null,
 "tres_alloc_str": "cpu=1,mem=50M,node=1,billing=1"},
{"array_job_id": 0, "array_task_id": null, "comment": "vmpilot-pilot", "cpus": 1,
 "job_id": 110, "job_state": "CANCELLED", "memory_per_node": 1024, "name": "vmpilot",
 "node_count": 1, "nodes": "vm", "start_time": 1796300852, "time_limit": 5,
 "tres_alloc_str": "cpu=1,mem=1G,node=1,billing=1"}
  ]
}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_22_05_listing() {
        let jobs = parse(SLURM_22_05).unwrap();
        assert_eq!(jobs.len(), 3);
        let hostile = &jobs[0];
        assert_eq!(hostile.name, "x TimeLimit=30-00:00:00 MinMemoryNode=1T");
        assert_eq!(hostile.comment, "a|b|c TimeLimit=9");
        assert_eq!(hostile.time_limit_min, Some(3));
        assert_eq!(hostile.memory_per_node, Some(100));
        assert_eq!(hostile.preempt_time, None);
        assert_eq!(hostile.run_secs(1796302099 + 42), 42);
        assert!(hostile.is("123") && !hostile.is("12") && !hostile.is("123_0"));
        assert!(hostile.is_active());
        assert_eq!(jobs[1].time_limit_min, None, "null is unlimited");
        assert_eq!(jobs[1].memory_per_cpu, Some(50));
        assert!(
            !jobs[2].is_active(),
            "a cancelled job is not listed as active"
        );
    }

    #[test]
    fn the_wrapped_numbers_and_state_flags_of_newer_slurm() {
        let text = r#"{"jobs": [{"job_id": {"set": true, "infinite": false, "number": 7},
            "array_job_id": {"set": true, "infinite": false, "number": 5},
            "array_task_id": {"set": true, "infinite": false, "number": 2},
            "job_state": ["RUNNING", "COMPLETING"],
            "time_limit": {"set": true, "infinite": true, "number": 0},
            "preempt_time": {"set": true, "infinite": false, "number": 1796302100},
            "memory_per_node": {"set": false, "infinite": false, "number": 0},
            "memory_per_cpu": {"set": true, "infinite": false, "number": 256},
            "cpus": {"set": true, "infinite": false, "number": 4}}]}"#;
        let job = &parse(text).unwrap()[0];
        assert_eq!(job.job_id, 7);
        assert!(job.is("7") && job.is("5_2") && !job.is("5_3"));
        assert_eq!(job.state, "RUNNING");
        assert_eq!(job.time_limit_min, None, "infinite");
        assert_eq!(job.preempt_time, Some(1796302100));
        assert_eq!((job.memory_per_node, job.memory_per_cpu), (None, Some(256)));
        assert_eq!(job.cpus, Some(4));
    }

    #[test]
    fn suspended_jobs_count_only_the_time_they_ran() {
        let mut job = parse(SLURM_22_05).unwrap().remove(0);
        job.state = "SUSPENDED".into();
        job.pre_sus_time = 30;
        job.suspend_time = 1796302200;
        assert_eq!(job.run_secs(1796302900), 30);
        job.state = "RUNNING".into();
        assert_eq!(
            job.run_secs(1796302210),
            40,
            "resumed: 30 before plus 10 since"
        );
    }

    #[test]
    fn anything_but_the_listing_is_an_error_not_an_empty_cluster() {
        for bad in [
            "",
            "garbage",
            "<html><body>502 Bad Gateway</body></html>",
            "12|vmpilot|vmpilot-pilot|RUNNING|n1",
            r#"{"errors": []}"#,
            r#"{"jobs": [{"job_state": "RUNNING"}]}"#,
            r#"{"jobs": [{"job_id": 1, "job_state": "running"}]}"#,
            r#"{"jobs": [{"job_id": 1}]}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let e = parse(
            r#"{"errors": [{"error": "Unable to contact slurm controller", "error_number": 1007}], "jobs": []}"#,
        )
        .unwrap_err();
        assert!(e.contains("Unable to contact slurm controller"), "{e}");
    }
}
