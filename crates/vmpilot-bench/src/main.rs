//! `vmpilot-bench`: the project's benchmarks in one command (issue 7), each figure next to a
//! baseline measured in the same run on the same machine.
//!
//! Its own crate (`publish = false`): none of it reaches the pilot or the coordinator. Run it
//! with `cargo run --release -p vmpilot-bench [-- --quick]`.
//!
//! | group | figure | baseline |
//! |---|---|---|
//! | `claim` | pilot start → `reserved` at a loopback coordinator | [`baseline`]: the same host call + one signed POST |
//! | `release` | SIGTERM → `unreserved` at the coordinator, and → exit | the same host release + one signed POST |
//! | `footprint` | peak RSS, CPU and wake-ups over a held lease | the baseline routine holding a lease |
//! | `node-lock` | 16 pilots at once on one node, with correctness checks | 16 baseline routines at once |
//! | `coordinator` | reference coordinator ingest rate, heartbeat p50/p99 | [`coord`]'s storage-less server |
//! | `libvirt` | claim, release with 0/1/8 guests per policy, kill-all 4 × 8, on the test bed's libvirtd | `virsh` doing the same in a shell loop |
//!
//! Everything runs on 127.0.0.1 and in temporary directories, bounded in count and time.
//! Figures are reported, never asserted; the correctness checks are. See docs/performance.md.

pub mod baseline;
pub mod coord;
pub mod flood;
pub mod ingest;
pub mod libvirt;
pub mod node;
pub mod pilots;
pub mod report;
pub mod stats;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use self::report::{Machine, Report};

/// Benchmarks for vmpilot and its reference coordinator, each with a baseline measured in
/// the same run. Prints a table and writes bench.md and bench.json.
#[derive(Parser, Debug)]
#[command(name = "vmpilot-bench", version)]
pub struct Args {
    /// Short settings (10 s lease, fewer runs and events): about 1 minute in all.
    #[arg(long)]
    quick: bool,
    /// Runs of each latency figure (default 7, quick 3).
    #[arg(long)]
    runs: Option<usize>,
    /// Length of the held lease for the footprint figures, e.g. 60s (default 60s, quick 10s).
    #[arg(long)]
    lease: Option<humantime::Duration>,
    /// Only these groups (comma-separated): claim (also gives release), footprint,
    /// node-lock, coordinator, flood, libvirt (needs the test bed; runs only when named here).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where bench.md and bench.json go (default: target/bench next to the binaries).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directory holding the `vmpilot` and `vmpilot-coordinator` binaries (default: this
    /// binary's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Do not run `cargo build --release --workspace --bins` first (it runs only under `cargo run`).
    #[arg(long)]
    no_build: bool,
    /// Pilots started at once for the node-lock figure.
    #[arg(long, default_value_t = 16)]
    lock_pilots: usize,
    /// Events per ingest run (default 20000, quick 4000).
    #[arg(long)]
    ingest_events: Option<usize>,
    /// Runs of each libvirt figure (default 3, quick 1).
    #[arg(long)]
    libvirt_runs: Option<usize>,
    /// Concurrent clients for ingest.
    #[arg(long, default_value_t = 32)]
    ingest_clients: usize,
    /// Simulated pilots, one heartbeat each (default 10000, quick 2000).
    #[arg(long)]
    heartbeat_pilots: Option<usize>,
    /// Window the heartbeats are spread over (default 10s, quick 4s).
    #[arg(long)]
    heartbeat_window: Option<humantime::Duration>,
    #[command(subcommand)]
    helper: Option<Helper>,
}

/// Roles this binary plays for the benchmarks themselves.
#[derive(Subcommand, Debug)]
enum Helper {
    /// The baseline lease routine (see `bench::baseline`).
    #[command(hide = true)]
    BaselineLease {
        /// The node's vmpilot config.
        #[arg(long)]
        config: PathBuf,
        /// Lease id.
        #[arg(long)]
        lease_id: String,
        /// Coordinator base URL.
        #[arg(long)]
        url: String,
    },
    /// The storage-less baseline coordinator (see `bench::coord`).
    #[command(hide = true)]
    ServeBaseline {
        /// Secret file.
        #[arg(long)]
        secret_file: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

/// Resolved settings shared by every benchmark.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The `vmpilot` binary.
    pub vmpilot: PathBuf,
    /// The `vmpilot-coordinator` binary.
    pub coordinator: PathBuf,
    /// This binary (for the baseline roles).
    pub bench: PathBuf,
    /// Runs per latency figure.
    pub runs: usize,
    /// Held lease for the footprint.
    pub lease: Duration,
    /// Pilots (and routines) held at once for the footprint.
    pub footprint_procs: usize,
    /// Pilots at once for the node lock.
    pub lock_pilots: usize,
    /// Runs of the node-lock figure.
    pub lock_runs: usize,
    /// Events per ingest run.
    pub ingest_events: usize,
    /// Concurrent ingest clients.
    pub ingest_clients: usize,
    /// Ingest runs.
    pub ingest_runs: usize,
    /// Simulated heartbeating pilots.
    pub hb_pilots: usize,
    /// Window the heartbeats are spread over.
    pub hb_window: Duration,
    /// Heartbeat runs.
    pub hb_runs: usize,
    /// Runs of each libvirt figure.
    pub libvirt_runs: usize,
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Under `cargo run`, build the binaries the benchmarks start, so they are never stale.
fn build_bins(bench: &Path) -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let release = bench
        .parent()
        .and_then(|d| d.file_name())
        .is_some_and(|n| n == "release");
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "--workspace",
        "--bin",
        "vmpilot",
        "--bin",
        "vmpilot-libvirt",
        "--bin",
        "vmpilot-coordinator",
    ]);
    if release {
        cmd.arg("--release");
    }
    if let Some(manifest) = std::env::var_os("CARGO_MANIFEST_DIR") {
        cmd.arg("--manifest-path")
            .arg(Path::new(&manifest).join("Cargo.toml"));
    }
    let status = cmd.status().context("cannot run cargo build")?;
    anyhow::ensure!(status.success(), "cargo build failed");
    Ok(())
}

fn settings(args: &Args) -> anyhow::Result<Ctx> {
    let bench = std::env::current_exe().context("cannot find this binary")?;
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => bench
            .parent()
            .context("binary has no directory")?
            .to_path_buf(),
    };
    if !args.no_build && args.bin_dir.is_none() {
        build_bins(&bench)?;
    }
    let find = |name: &str| {
        let p = bin_dir.join(name);
        if p.exists() {
            Ok(p)
        } else {
            anyhow::bail!(
                "{} not found\n\nhint: build it first (`cargo build --release --workspace --bins`) or pass --bin-dir",
                p.display()
            )
        }
    };
    let q = args.quick;
    Ok(Ctx {
        vmpilot: find("vmpilot")?,
        coordinator: find("vmpilot-coordinator")?,
        bench,
        runs: args.runs.unwrap_or(if q { 3 } else { 7 }).max(1),
        lease: args
            .lease
            .map(Into::into)
            .unwrap_or(Duration::from_secs(if q { 10 } else { 60 })),
        footprint_procs: 3,
        lock_pilots: args.lock_pilots.max(1),
        lock_runs: if q { 1 } else { 3 },
        ingest_events: args
            .ingest_events
            .unwrap_or(if q { 4_000 } else { 20_000 })
            .max(1),
        ingest_clients: args.ingest_clients.max(1),
        ingest_runs: if q { 1 } else { 3 },
        hb_pilots: args
            .heartbeat_pilots
            .unwrap_or(if q { 2_000 } else { 10_000 })
            .max(1),
        hb_window: args
            .heartbeat_window
            .map(Into::into)
            .unwrap_or(Duration::from_secs(if q { 4 } else { 10 })),
        hb_runs: if q { 1 } else { 3 },
        libvirt_runs: args.libvirt_runs.unwrap_or(if q { 1 } else { 3 }).max(1),
    })
}

fn default_out(ctx: &Ctx) -> PathBuf {
    // target/release/vmpilot-bench -> target/bench
    ctx.bench
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("bench"), |t| t.join("bench"))
}

/// Run the selected benchmarks; `Err` only when they could not run at all.
fn run(args: &Args) -> anyhow::Result<Report> {
    let ctx = settings(args)?;
    // libvirt boots real (TCG) guests for ~30 minutes: it runs only when asked for by name,
    // never as part of a plain or `--quick` run.
    let want = |g: &str| {
        if args.only.is_empty() {
            g != "libvirt"
        } else {
            args.only.iter().any(|o| o == g)
        }
    };
    if args.only.is_empty() {
        eprintln!(
            "vmpilot-bench: libvirt not run (it boots guests for ~30 min; ask with `--only libvirt`)"
        );
    }
    let started = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut figures = Vec::new();
    let mut failures = Vec::new();
    type Bench = fn(&Ctx, &mut Vec<report::Figure>, &mut Vec<String>) -> anyhow::Result<()>;
    let groups: [(&str, Bench); 6] = [
        ("claim", pilots::claim_release),
        ("footprint", pilots::footprint),
        ("node-lock", pilots::node_lock),
        ("coordinator", ingest::coordinator),
        ("flood", flood::coordinator_under_flood),
        ("libvirt", libvirt::libvirt),
    ];
    for (name, bench) in groups {
        if !want(name) {
            continue;
        }
        eprintln!("vmpilot-bench: {name} ...");
        if let Err(e) = bench(&ctx, &mut figures, &mut failures) {
            failures.push(format!("{name}: could not run: {e:#}"));
        }
    }
    let report = Report {
        started,
        machine: Machine::probe(),
        settings: serde_json::json!({
            "runs": ctx.runs,
            "lease_secs": ctx.lease.as_secs(),
            "footprint_procs": ctx.footprint_procs,
            "lock_pilots": ctx.lock_pilots,
            "lock_runs": ctx.lock_runs,
            "ingest_events": ctx.ingest_events,
            "ingest_clients": ctx.ingest_clients,
            "ingest_runs": ctx.ingest_runs,
            "heartbeat_pilots": ctx.hb_pilots,
            "heartbeat_window_secs": ctx.hb_window.as_secs_f64(),
            "heartbeat_runs": ctx.hb_runs,
            "libvirt_runs": ctx.libvirt_runs,
            "only": args.only,
            "quick": args.quick,
        }),
        figures,
        failures,
    };
    let out = args.out.clone().unwrap_or_else(|| default_out(&ctx));
    match report.write(&out) {
        Ok(()) => eprintln!(
            "vmpilot-bench: wrote {}/bench.md and bench.json",
            out.display()
        ),
        Err(e) => eprintln!("vmpilot-bench: cannot write to {}: {e}", out.display()),
    }
    Ok(report)
}

/// Entry point of the binary. Exit 0 when every correctness check held, 1 when one failed,
/// 2 when the benchmarks could not run.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let helper = match &args.helper {
        Some(Helper::BaselineLease {
            config,
            lease_id,
            url,
        }) => Some(baseline::run(config, lease_id, url)),
        Some(Helper::ServeBaseline {
            secret_file,
            listen,
        }) => Some(coord::serve_baseline(secret_file, *listen)),
        None => None,
    };
    if let Some(result) = helper {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vmpilot-bench: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match run(&args) {
        Ok(report) => {
            println!("{}", report.markdown());
            if report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("vmpilot-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
