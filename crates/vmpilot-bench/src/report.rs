//! The results: one row per figure (median, min, max, the baseline measured in the same
//! run, the ratio and the goal), printed as a table and written as Markdown and JSON.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::stats::Summary;

/// One measured figure and its baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Which benchmark it belongs to (`claim`, `footprint`, ...).
    pub group: String,
    /// What is measured.
    pub name: String,
    /// Unit of every number in the row.
    pub unit: String,
    /// The measurement over the runs; `None` when it could not be taken.
    pub value: Option<Summary>,
    /// What the baseline is.
    pub baseline_name: String,
    /// The baseline over the same runs.
    pub baseline: Option<Summary>,
    /// The goal, as text (`≤ 50 ms`), if it states one.
    pub goal: Option<String>,
    /// Anything worth knowing about the row (failures, counts).
    pub note: String,
}

impl Figure {
    /// Median of the figure over median of its baseline, when both are known and the
    /// baseline is not zero.
    pub fn ratio(&self) -> Option<f64> {
        let (v, b) = (self.value?, self.baseline?);
        (b.median != 0.0).then(|| v.median / b.median)
    }
}

/// The machine the figures were taken on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `nproc`.
    pub cpus: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// MemTotal, MiB.
    pub memory_mib: u64,
    /// `uname -r`.
    pub kernel: String,
}

impl Machine {
    /// Read from /proc.
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_mib = meminfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kb| kb / 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_mib,
            kernel,
        }
    }
}

/// Everything one `vmpilot-bench` run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When it ran (RFC 3339, UTC).
    pub started: String,
    /// Where it ran.
    pub machine: Machine,
    /// The command line's settings, for reproducing.
    pub settings: serde_json::Value,
    /// The figures, in run order.
    pub figures: Vec<Figure>,
    /// Correctness checks that failed (empty: all held).
    pub failures: Vec<String>,
}

/// A number with a sensible count of digits for its size.
fn num(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn cell(s: Option<Summary>) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{} ({}–{})", num(s.median), num(s.min), num(s.max)),
        Some(s) => num(s.median),
        None => "—".into(),
    }
}

impl Report {
    /// The table as Markdown (also what is printed).
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "Machine: {} CPUs ({}), {} MiB memory, Linux {}; run {}.\n",
            m.cpus, m.cpu_model, m.memory_mib, m.kernel, self.started
        );
        let _ = writeln!(
            out,
            "Each cell: median (min–max) over the runs. Ratio = median / baseline median.\n"
        );
        let _ = writeln!(
            out,
            "| figure | unit | vmpilot | baseline | baseline value | ratio | goal | note |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
        for f in &self.figures {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                f.name,
                f.unit,
                cell(f.value),
                f.baseline_name,
                cell(f.baseline),
                f.ratio().map_or("—".into(), |r| format!("{r:.2}×")),
                f.goal.as_deref().unwrap_or("—"),
                f.note.replace('|', "/"),
            );
        }
        if self.failures.is_empty() {
            let _ = writeln!(out, "\nCorrectness checks: all held.");
        } else {
            let _ = writeln!(out, "\nCorrectness checks that FAILED:");
            for f in &self.failures {
                let _ = writeln!(out, "- {f}");
            }
        }
        out
    }

    /// Write `bench.md` and `bench.json` into `dir` (created).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("bench.md"), self.markdown())?;
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("bench.json"), json)
    }
}
