//! Benchmarks on the test bed's real libvirtd (QEMU under TCG, tests/testbed/up.sh): claim
//! latency on the libvirt host, release latency with 0, 1 and 8 tiny guests per unreserve
//! policy, and `kill-all --fast` of 4 pilots × 8 guests. The floor for each is `virsh`
//! doing the same to the same guests in a shell loop, in the same run.
//!
//! The group is skipped (with a note, not a failure) when libvirt or the test bed's guest
//! kernel is missing. Guests are named `vmpilot-bench-*-PID` and removed afterwards, also when
//! a run fails or is interrupted (SIGINT/SIGTERM), and guests an earlier run left behind
//! (its PID gone) are removed first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;

use super::coord::Loopback;
use super::node::{Node, Proc, SECRET};
use super::report::Figure;
use super::stats::Summary;
use super::{Ctx, ms};

const URI: &str = "qemu:///system";
/// The test bed's guest kernel (tests/testbed/up.sh).
const KERNEL: &str = "/var/cache/vmpilot-testbed/guest/vmlinuz";
/// Longest a step may take (8 TCG guests booting at once on 2 cores take about a minute).
const STEP: Duration = Duration::from_secs(240);
/// Tiny guest memory, KiB.
const GUEST_KIB: u64 = 131_072;

/// Why the group cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    if !Path::new(KERNEL).exists() {
        return Some(format!(
            "{KERNEL} missing: bring the test bed up (`sudo tests/testbed/up.sh`)"
        ));
    }
    match Command::new("virsh").args(["-c", URI, "version"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "{URI} does not answer: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run virsh: {e}")),
    }
}

fn virsh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("virsh")
        .args(["-q", "-c", URI])
        .args(args)
        .output()
        .context("cannot run virsh")?;
    anyhow::ensure!(
        out.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Guests defined for one run; destroyed and undefined (managed save included) on drop.
struct Guests {
    names: Vec<String>,
    consoles: Vec<PathBuf>,
}

impl Guests {
    /// Define and start `n` tiny guests named `{prefix}-{i}`, owned by `owner` (lease id,
    /// epoch) when given.
    fn start(
        dir: &Path,
        prefix: &str,
        n: usize,
        owner: Option<(&str, u64)>,
    ) -> anyhow::Result<Guests> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testbed/guest-xml.sh");
        let mut g = Guests {
            names: Vec::new(),
            consoles: Vec::new(),
        };
        let meta = owner.map_or(String::new(), |(lease, epoch)| {
            format!(
                "<vmpilot:lease xmlns:vmpilot=\"https://vmpilot.dev/xmlns/lease/1\" id=\"{lease}\" epoch=\"{epoch}\"/>"
            )
        });
        for i in 0..n {
            anyhow::ensure!(
                !INTERRUPTED.load(Ordering::SeqCst),
                "interrupted: no more guests"
            );
            let name = format!("vmpilot-bench-{prefix}-{i}-{}", std::process::id());
            let console = dir.join(format!("{name}.console"));
            let _ = std::fs::remove_file(&console);
            let out = Command::new(&script)
                .args([
                    name.as_str(),
                    "",
                    &GUEST_KIB.to_string(),
                    &console.display().to_string(),
                    "",
                    &meta,
                ])
                .output()
                .with_context(|| format!("cannot run {}", script.display()))?;
            anyhow::ensure!(out.status.success(), "guest-xml.sh failed");
            let xml = dir.join(format!("{name}.xml"));
            std::fs::write(&xml, &out.stdout)?;
            g.names.push(name.clone());
            g.consoles.push(console);
            virsh(&["define", &xml.display().to_string()])?;
            virsh(&["start", &name])?;
        }
        Ok(g)
    }

    /// Wait until every guest's console says it handles ACPI (needed before a shutdown).
    fn wait_booted(&self) -> anyhow::Result<()> {
        let until = Instant::now() + STEP;
        for c in &self.consoles {
            loop {
                let text = std::fs::read_to_string(c).unwrap_or_default();
                if text.contains("VMPILOT-GUEST-READY") {
                    break;
                }
                anyhow::ensure!(Instant::now() < until, "{} never booted", c.display());
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// Names of guests still running.
    fn running(&self) -> Vec<String> {
        self.names
            .iter()
            .filter(|n| virsh(&["domstate", n]).is_ok_and(|s| s == "running"))
            .cloned()
            .collect()
    }
}

impl Drop for Guests {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = virsh(&["destroy", n]);
            let _ = virsh(&["undefine", "--managed-save", n]);
        }
    }
}

/// The floor: `virsh` stopping `guests` in a shell loop the way `policy` would.
fn floor(policy: &str, guests: &Guests) -> anyhow::Result<Duration> {
    let names = guests.names.join(" ");
    let body = match policy {
        "destroy" => "for g in $G; do virsh -q -c qemu:///system destroy $g >/dev/null; done",
        "suspend" => "for g in $G; do virsh -q -c qemu:///system managedsave $g >/dev/null; done",
        // ACPI to each, then wait until none is running.
        _ => {
            "for g in $G; do virsh -q -c qemu:///system shutdown $g >/dev/null; done; \
             while virsh -q -c qemu:///system list --name | grep -q .; do \
               left=0; for g in $G; do [ \"$(virsh -q -c qemu:///system domstate $g)\" = running ] && left=1; done; \
               [ $left = 0 ] && break; sleep 0.05; done"
        }
    };
    let started = Instant::now();
    let status = Command::new("sh")
        .args(["-c", body])
        .env("G", names)
        .status()
        .context("cannot run sh")?;
    let took = started.elapsed();
    anyhow::ensure!(status.success(), "the {policy} floor loop failed");
    Ok(took)
}

/// A libvirt node for the benchmarks. Fencing is off: with it, each guest needs a QEMU
/// overhead of ~180 MiB in its budget, and 4 × 8 guests would not fit the memory libvirt
/// reports here (NUMA cell 0 only); fencing does not take part in releasing anyway.
fn libvirt_node(url: &str, policy: &str, max_guests: u32) -> anyhow::Result<Node> {
    let node = Node::with_host(
        url,
        &format!(
            "backend = \"libvirt\"\non_unreserve = \"{policy}\"\nhost_reserve = \"256M\"\n\
             guest_overhead = \"32M\"\n\n[host.libvirt]\nuri = \"{URI}\"\nfence = false\n"
        ),
        max_guests,
    )?;
    // A grace a site would give guests (the bench node's default is 5 s): with 8 TCG guests
    // the ACPI shutdown and the destroys after it need more than 5 s.
    let config =
        std::fs::read_to_string(node.config())?.replace("grace = \"5s\"", "grace = \"30s\"");
    std::fs::write(node.config(), config)?;
    Ok(node)
}

fn epoch_of(node: &Node, lease: &str) -> u64 {
    std::fs::read(
        node.state_dir()
            .join("leases")
            .join(format!("{lease}.json")),
    )
    .ok()
    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    .and_then(|v| v["epoch"].as_u64())
    .unwrap_or(0)
}

/// Guest memory for a lease of `n` tiny guests (each 128 MiB + 32 MiB overhead, rounded up).
fn lease_memory(n: usize) -> String {
    format!("{}M", (n.max(1) as u64) * 192)
}

/// One pilot with `n` owned guests under `policy`: claim and SIGTERM → exit.
fn pilot_run(
    ctx: &Ctx,
    coord: &Loopback,
    policy: &str,
    n: usize,
    tag: &str,
    failures: &mut Vec<String>,
) -> anyhow::Result<(Duration, Duration)> {
    let node = libvirt_node(&coord.url, policy, n.max(1) as u32)?;
    let lease = format!("lv-{tag}");
    let mut pilot: Proc = node.spawn_pilot_with(
        &ctx.vmpilot,
        &lease,
        Duration::from_secs(1800),
        &lease_memory(n),
    )?;
    let reserved = coord
        .wait_for(&lease, "reserved", STEP)
        .with_context(|| format!("{lease}: no `reserved` (log in {})", node.dir().display()))?;
    let claim = reserved - pilot.started;
    let guests = Guests::start(node.dir(), tag, n, Some((&lease, epoch_of(&node, &lease))))?;
    if policy == "shutdown" {
        guests.wait_booted()?;
    }
    let sent = pilot.signal(Signal::SIGTERM);
    let (at, status) = pilot
        .wait(STEP)
        .with_context(|| format!("{lease}: did not exit"))?;
    if status.code() != Some(5) {
        failures.push(format!("{lease}: exit {status}, expected 5"));
    }
    if node.record_state(&lease).as_deref() != Some("unreserved") {
        failures.push(format!("{lease}: record {:?}", node.record_state(&lease)));
    }
    let left = guests.running();
    if !left.is_empty() {
        failures.push(format!("{lease}: guests left running: {left:?}"));
    }
    Ok((claim, at - sent))
}

fn summary(v: &[Duration]) -> Option<Summary> {
    Summary::of(&v.iter().copied().map(ms).collect::<Vec<_>>())
}

/// Claim and release on libvirt, per policy and guest count; then kill-all 4 × 8.
pub fn libvirt(
    ctx: &Ctx,
    figures: &mut Vec<Figure>,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    if let Some(why) = unavailable() {
        eprintln!("vmpilot-bench: libvirt skipped: {why}");
        return Ok(());
    }
    let swept = sweep(|pid| !alive(pid));
    if swept > 0 {
        eprintln!("vmpilot-bench: removed {swept} guest(s) an interrupted run left defined");
    }
    // Interrupted (Ctrl-C, SIGTERM), this run removes its own guests before it exits: the
    // `Guests` drop guards do not run when a signal ends the process.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let handle = signals.handle();
    let cleaner = std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            // Stop new guests first, let a `virsh define` in flight finish, then sweep
            // until a pass finds nothing left.
            INTERRUPTED.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(500));
            let me = std::process::id();
            let mut n = 0;
            loop {
                let removed = sweep(|pid| pid == me);
                n += removed;
                if removed == 0 {
                    break;
                }
            }
            eprintln!("vmpilot-bench: interrupted; removed {n} guest(s) of this run");
            std::process::exit(128 + sig);
        }
    });
    let result = run_libvirt(ctx, figures, failures);
    handle.close();
    let _ = cleaner.join();
    result
}

/// Set when SIGINT/SIGTERM arrived during the libvirt group: no guest is defined after it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Destroy and undefine every `vmpilot-bench-*-PID` guest whose PID `matches`; how many.
fn sweep(matches: impl Fn(u32) -> bool) -> usize {
    let Ok(list) = virsh(&["list", "--all", "--name"]) else {
        return 0;
    };
    let mut n = 0;
    for name in list.lines().map(str::trim) {
        let pid = name
            .strip_prefix("vmpilot-bench-")
            .and_then(|rest| rest.rsplit('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(&matches) {
            let _ = virsh(&["destroy", name]);
            if virsh(&["undefine", "--managed-save", name]).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// Is process `pid` alive (a guest's creator that may still clean up after itself)?
fn alive(pid: u32) -> bool {
    i32::try_from(pid)
        .is_ok_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok())
}

fn run_libvirt(
    ctx: &Ctx,
    figures: &mut Vec<Figure>,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    // The real-libvirt tests' lock (tests/common/mod.rs): shared, so a test that restarts
    // libvirtd waits for the benchmark and the other way round.
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("vmpilot-libvirt-tests.lock"))?;
    lock.lock_shared()?;
    let coord = Loopback::start(SECRET)?;
    let runs = ctx.libvirt_runs;
    let scratch = tempfile::Builder::new()
        .prefix("vmpilot-bench-floor-")
        .tempdir()?;
    let mut claims = Vec::new();
    // 0 guests does not depend on the policy: measured once, under destroy.
    let cases: [(&str, usize); 7] = [
        ("destroy", 0),
        ("destroy", 1),
        ("destroy", 8),
        ("shutdown", 1),
        ("shutdown", 8),
        ("suspend", 1),
        ("suspend", 8),
    ];
    for (policy, n) in cases {
        eprintln!("vmpilot-bench: libvirt release, {policy}, {n} guest(s) ...");
        let (mut pilot, mut base) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let tag = format!("{policy}-{n}-{run}");
            match pilot_run(ctx, &coord, policy, n, &tag, failures) {
                Ok((claim, release)) => {
                    claims.push(claim);
                    pilot.push(release);
                }
                Err(e) => failures.push(format!("libvirt {tag}: {e:#}")),
            }
            if n > 0 {
                let guests = Guests::start(scratch.path(), &format!("floor-{tag}"), n, None)?;
                if policy == "shutdown" {
                    guests.wait_booted()?;
                }
                base.push(floor(policy, &guests)?);
            }
        }
        figures.push(Figure {
            group: "libvirt".into(),
            name: format!("release, libvirt, {n} guest(s), `{policy}`: SIGTERM → pilot exited"),
            unit: "ms".into(),
            value: summary(&pilot),
            baseline_name: if n > 0 {
                format!("virsh {policy} loop (the floor)")
            } else {
                "—".into()
            },
            baseline: summary(&base),
            goal: Some(match (n, policy) {
                (0, _) => "≤ 100 ms".into(),
                (8, "destroy") => "≤ 2 s; ≤ 1.2× floor".into(),
                _ => "≤ 1.2× floor".into(),
            }),
            note: format!(
                "{runs} run(s); host restored and `unreserved` spooled before exit{}",
                if policy == "shutdown" {
                    "; guests booted (ACPI handler up) first"
                } else {
                    ""
                }
            ),
        });
    }
    figures.push(Figure {
        group: "libvirt".into(),
        name: "claim latency, libvirt host: start → `reserved` at coordinator".into(),
        unit: "ms".into(),
        value: summary(&claims),
        baseline_name: "—".into(),
        baseline: None,
        goal: Some("≤ 1 s".into()),
        note: format!("{} pilots of the release runs", claims.len()),
    });
    kill_all(ctx, &coord, scratch.path(), figures, failures)
}

/// `vmpilot kill-all --fast` with 4 pilots × 8 owned guests, against the destroy floor.
fn kill_all(
    ctx: &Ctx,
    coord: &Loopback,
    scratch: &Path,
    figures: &mut Vec<Figure>,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    // 4 pilots × 8 guests; each lease needs a CPU of its own, so a machine with fewer CPUs
    // than 4 gets as many pilots as it has CPUs, with the same 32 guests among them.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pilots_n = 4.min(cpus).max(1);
    let per = 32 / pilots_n;
    eprintln!("vmpilot-bench: libvirt kill-all, {pilots_n} pilots × {per} guests ...");
    let (mut took, mut base) = (Vec::new(), Vec::new());
    for run in 0..ctx.libvirt_runs {
        let node = libvirt_node(&coord.url, "destroy", per as u32)?;
        let mut pilots = Vec::new();
        let mut guests = Vec::new();
        for p in 0..pilots_n {
            let lease = format!("ka-{run}-{p}");
            pilots.push(node.spawn_pilot_with(
                &ctx.vmpilot,
                &lease,
                Duration::from_secs(1800),
                &lease_memory(per),
            )?);
            coord
                .wait_for(&lease, "reserved", STEP)
                .with_context(|| format!("{lease}: no `reserved`"))?;
        }
        for p in 0..pilots_n {
            let lease = format!("ka-{run}-{p}");
            let tag = format!("ka-{run}-{p}");
            guests.push(Guests::start(
                node.dir(),
                &tag,
                per,
                Some((&lease, epoch_of(&node, &lease))),
            )?);
        }
        let started = Instant::now();
        let out = Command::new(&ctx.vmpilot)
            .arg("--config")
            .arg(node.config())
            .args(["kill-all", "--fast", "--yes", "--reason", "vmpilot-bench"])
            .output()
            .context("cannot run vmpilot kill-all")?;
        took.push(started.elapsed());
        if !out.status.success() {
            failures.push(format!(
                "kill-all run {run}: exit {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        for mut p in pilots {
            if p.wait(Duration::from_secs(30)).is_none() {
                failures.push(format!("kill-all run {run}: a pilot survived"));
            }
        }
        let left: Vec<String> = guests.iter().flat_map(Guests::running).collect();
        if !left.is_empty() {
            failures.push(format!("kill-all run {run}: guests left running: {left:?}"));
        }
        drop(guests);
        let all = Guests::start(scratch, &format!("ka-floor-{run}"), pilots_n * per, None)?;
        base.push(floor("destroy", &all)?);
    }
    figures.push(Figure {
        group: "libvirt".into(),
        name: format!("kill-all --fast, {pilots_n} pilots × {per} guests: command → exit"),
        unit: "ms".into(),
        value: summary(&took),
        baseline_name: "virsh destroy loop (the floor)".into(),
        baseline: summary(&base),
        goal: Some("≤ 5 s".into()),
        note: format!(
            "every pilot gone, no owned guest running, node restored{}",
            if pilots_n < 4 {
                format!("; {cpus} CPUs here: {pilots_n} one-CPU leases fit, not 4")
            } else {
                String::new()
            }
        ),
    });
    Ok(())
}
