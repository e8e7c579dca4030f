//! Benchmarks that run real `vmpilot run` pilots on a simulated node against the in-process
//! loopback coordinator, each next to the baseline routine ([`super::baseline`]) measured
//! in the same run: claim and release latency, footprint over a lease, and 16 pilots on
//! one node at once.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::coord::Loopback;
use super::node::{Node, Proc, SECRET, wakeups};
use super::report::Figure;
use super::stats::Summary;
use super::{Ctx, ms};

/// How long any one step may take before the run is counted as failed.
const STEP: Duration = Duration::from_secs(60);

/// What one lease (pilot or baseline) measured.
#[derive(Debug, Default, Clone, Copy)]
struct LeaseTimes {
    /// Process start → `reserved` at the coordinator.
    claim: Option<Duration>,
    /// SIGTERM → `unreserved` at the coordinator.
    release: Option<Duration>,
    /// SIGTERM → process exited.
    exit: Option<Duration>,
}

/// Start, wait for `reserved`, hold `hold`, SIGTERM, wait for `unreserved` and the exit.
/// Checks are appended to `failures`.
fn one_lease(
    coord: &Loopback,
    node: &Node,
    mut proc: Proc,
    lease: &str,
    hold: Duration,
    expect_code: i32,
    failures: &mut Vec<String>,
) -> LeaseTimes {
    let mut t = LeaseTimes::default();
    let Some(reserved) = coord.wait_for(lease, "reserved", STEP) else {
        failures.push(format!("{lease}: no `reserved` within {STEP:?}"));
        return t;
    };
    t.claim = Some(reserved - proc.started);
    std::thread::sleep(hold);
    let sent = proc.signal(Signal::SIGTERM);
    match coord.wait_for(lease, "unreserved", STEP) {
        Some(at) => t.release = Some(at - sent),
        None => failures.push(format!("{lease}: no `unreserved` within {STEP:?}")),
    }
    match proc.wait(STEP) {
        Some((at, status)) => {
            t.exit = Some(at - sent);
            if status.code() != Some(expect_code) {
                failures.push(format!("{lease}: exit {status}, expected {expect_code}"));
            }
        }
        None => failures.push(format!("{lease}: did not exit within {STEP:?}")),
    }
    if node.reservations().iter().any(|r| r == lease) {
        failures.push(format!("{lease}: still holds a reservation on the host"));
    }
    t
}

/// `; N re-deliveries (…)` for a note, or nothing.
fn redeliveries(events: &[String]) -> String {
    if events.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = events.iter().take(4).map(String::as_str).collect();
    format!(
        "; {} re-deliveries, deduplicated ({}{})",
        events.len(),
        shown.join(", "),
        if events.len() > shown.len() {
            ", …"
        } else {
            ""
        }
    )
}

fn summary(v: impl Iterator<Item = Option<Duration>>) -> Option<Summary> {
    Summary::of(&v.flatten().map(ms).collect::<Vec<_>>())
}

/// Claim latency and release latency with no guests, `ctx.runs` times each (after one
/// warm-up of each that is not counted).
pub fn claim_release(
    ctx: &Ctx,
    figures: &mut Vec<Figure>,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let coord = Loopback::start(SECRET)?;
    let node = Node::new(&coord.url, 64)?;
    let hold = Duration::from_millis(200);
    let (mut pilot, mut base) = (Vec::new(), Vec::new());
    for i in 0..=ctx.runs {
        let lease = format!("claim-{i}");
        let p = node.spawn_pilot(&ctx.vmpilot, &lease, Duration::from_secs(600))?;
        let tp = one_lease(&coord, &node, p, &lease, hold, 5, failures);
        if node.record_state(&lease).as_deref() != Some("unreserved") {
            failures.push(format!(
                "{lease}: record is {:?}, not unreserved",
                node.record_state(&lease)
            ));
        }
        let lease = format!("claim-base-{i}");
        let b = node.spawn_baseline(&ctx.bench, &lease, &coord.url)?;
        let tb = one_lease(&coord, &node, b, &lease, hold, 0, failures);
        if i > 0 {
            pilot.push(tp);
            base.push(tb);
        }
    }
    let bad = coord.with(|a| a.bad_signatures + a.bad_bodies);
    if bad > 0 {
        failures.push(format!(
            "claim/release: {bad} unsigned or unreadable events"
        ));
    }
    let redelivered = coord.with(|a| a.duplicates.clone());
    let base_name = "host call + 1 signed POST";
    figures.push(Figure {
        group: "claim".into(),
        name: "claim latency, simulated host: start → `reserved` at coordinator".into(),
        unit: "ms".into(),
        value: summary(pilot.iter().map(|t| t.claim)),
        baseline_name: base_name.into(),
        baseline: summary(base.iter().map(|t| t.claim)),
        goal: Some("≤ 50 ms".into()),
        note: format!(
            "includes process start and config load in both{}",
            redeliveries(&redelivered)
        ),
    });
    figures.push(Figure {
        group: "release".into(),
        name: "release latency, 0 guests: SIGTERM → `unreserved` at coordinator".into(),
        unit: "ms".into(),
        value: summary(pilot.iter().map(|t| t.release)),
        baseline_name: "host release + 1 signed POST".into(),
        baseline: summary(base.iter().map(|t| t.release)),
        goal: Some("≤ 100 ms".into()),
        note: "pilot also delivers `unreserving` first".into(),
    });
    figures.push(Figure {
        group: "release".into(),
        name: "release, 0 guests: SIGTERM → pilot exited (node restored, spool empty)".into(),
        unit: "ms".into(),
        value: summary(pilot.iter().map(|t| t.exit)),
        baseline_name: "routine exited".into(),
        baseline: summary(base.iter().map(|t| t.exit)),
        goal: Some("≤ 100 ms".into()),
        note: String::new(),
    });
    Ok(())
}

/// What /proc said about one process over the held lease.
#[derive(Debug, Default, Clone, Copy)]
struct Footprint {
    peak_rss_mib: Option<f64>,
    /// PSS at the end of the hold.
    pss_mib: Option<f64>,
    /// Private memory at the end of the hold.
    private_mib: Option<f64>,
    /// CPU over the hold, percent of one core.
    cpu_pct: Option<f64>,
    /// CPU from start to the end of the hold, ms.
    cpu_total_ms: Option<f64>,
    /// Wake-ups per minute while holding.
    wakeups_per_min: Option<f64>,
}

/// `ctx.footprint_procs` pilots and as many baseline routines, all holding a lease for
/// `ctx.lease` at the same time; peak RSS and CPU from /proc.
pub fn footprint(
    ctx: &Ctx,
    figures: &mut Vec<Figure>,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let coord = Loopback::start(SECRET)?;
    let node = Node::new(&coord.url, 64)?;
    let n = ctx.footprint_procs;
    let mut procs: Vec<(String, Proc, bool)> = Vec::new();
    for i in 0..n {
        let lease = format!("fp-{i}");
        let walltime = ctx.lease + Duration::from_secs(120);
        procs.push((
            lease.clone(),
            node.spawn_pilot(&ctx.vmpilot, &lease, walltime)?,
            true,
        ));
        let lease = format!("fp-base-{i}");
        procs.push((
            lease.clone(),
            node.spawn_baseline(&ctx.bench, &lease, &coord.url)?,
            false,
        ));
    }
    for (lease, _, _) in &procs {
        if coord.wait_for(lease, "reserved", STEP).is_none() {
            failures.push(format!("{lease}: no `reserved` within {STEP:?}"));
        }
    }
    let start: Vec<_> = procs
        .iter()
        .map(|(_, p, _)| (p.cpu(), p.switches()))
        .collect();
    let held_from = Instant::now();
    std::thread::sleep(ctx.lease);
    let held = held_from.elapsed();
    let mut results: Vec<(bool, Footprint)> = Vec::new();
    for ((_, p, is_pilot), (cpu0, sw0)) in procs.iter().zip(&start) {
        let cpu1 = p.cpu();
        let memory = p.memory_mib();
        let f = Footprint {
            peak_rss_mib: p.peak_rss_mib(),
            pss_mib: memory.map(|m| m.pss),
            private_mib: memory.map(|m| m.private),
            cpu_pct: match (cpu0, cpu1) {
                (Some(a), Some(b)) => {
                    Some(100.0 * (b.saturating_sub(*a)).as_secs_f64() / held.as_secs_f64())
                }
                _ => None,
            },
            cpu_total_ms: cpu1.map(ms),
            wakeups_per_min: Some(wakeups(sw0, &p.switches()) as f64 * 60.0 / held.as_secs_f64()),
        };
        results.push((*is_pilot, f));
    }
    for (lease, mut p, is_pilot) in procs {
        p.signal(Signal::SIGTERM);
        match p.wait(STEP) {
            Some((_, status)) if status.code() == Some(if is_pilot { 5 } else { 0 }) => {}
            other => failures.push(format!("{lease}: ended with {:?}", other.map(|o| o.1))),
        }
    }
    if !node.reservations().is_empty() {
        failures.push(format!(
            "footprint: reservations left: {:?}",
            node.reservations()
        ));
    }
    let pick = |pilot: bool, f: fn(&Footprint) -> Option<f64>| {
        Summary::of(
            &results
                .iter()
                .filter(|(p, _)| *p == pilot)
                .filter_map(|(_, r)| f(r))
                .collect::<Vec<_>>(),
        )
    };
    let lease_note = format!(
        "{n} pilots + {n} routines held {} s at once; heartbeat every 30 s",
        ctx.lease.as_secs()
    );
    let base_name = "routine holding the same lease";
    figures.push(Figure {
        group: "footprint".into(),
        name: "peak RSS (VmHWM) over the lease".into(),
        unit: "MiB".into(),
        value: pick(true, |f| f.peak_rss_mib),
        baseline_name: base_name.into(),
        baseline: pick(false, |f| f.peak_rss_mib),
        goal: Some("≤ 8 MiB".into()),
        note: lease_note.clone(),
    });
    figures.push(Figure {
        group: "footprint".into(),
        name: "PSS at the end of the hold (smaps_rollup)".into(),
        unit: "MiB".into(),
        value: pick(true, |f| f.pss_mib),
        baseline_name: base_name.into(),
        baseline: pick(false, |f| f.pss_mib),
        goal: None,
        note: "shared pages split among the processes mapping them".into(),
    });
    figures.push(Figure {
        group: "footprint".into(),
        name: "private memory at the end of the hold".into(),
        unit: "MiB".into(),
        value: pick(true, |f| f.private_mib),
        baseline_name: base_name.into(),
        baseline: pick(false, |f| f.private_mib),
        goal: Some("≤ 4 MiB".into()),
        note: "Private_Clean + Private_Dirty: what one more pilot costs".into(),
    });
    figures.push(Figure {
        group: "footprint".into(),
        name: "CPU while holding (utime+stime / wall)".into(),
        unit: "% of a core".into(),
        value: pick(true, |f| f.cpu_pct),
        baseline_name: base_name.into(),
        baseline: pick(false, |f| f.cpu_pct),
        goal: Some("≤ 0.1 %".into()),
        note: "/proc/PID/stat, 10 ms ticks".into(),
    });
    figures.push(Figure {
        group: "footprint".into(),
        name: "CPU from start to the end of the hold".into(),
        unit: "ms".into(),
        value: pick(true, |f| f.cpu_total_ms),
        baseline_name: base_name.into(),
        baseline: pick(false, |f| f.cpu_total_ms),
        goal: None,
        note: String::new(),
    });
    figures.push(Figure {
        group: "footprint".into(),
        name: "wake-ups while holding (context switches, all threads)".into(),
        unit: "per min".into(),
        value: pick(true, |f| f.wakeups_per_min),
        baseline_name: base_name.into(),
        baseline: pick(false, |f| f.wakeups_per_min),
        goal: None,
        note: "no polling: only heartbeats should wake the pilot".into(),
    });
    Ok(())
}

/// `ctx.lock_pilots` pilots started at once on one node, all SIGTERMed once all are
/// reserved; the same with baseline routines. Correctness: every pilot restored (exit 5),
/// every record `unreserved`, no reservation left, the host's totals as before, every
/// lease's `reserved` and `unreserved` delivered exactly once.
pub fn node_lock(
    ctx: &Ctx,
    figures: &mut Vec<Figure>,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let n = ctx.lock_pilots;
    let (mut p_claim, mut p_release, mut b_claim, mut b_release) = (vec![], vec![], vec![], vec![]);
    let mut checks_ok = true;
    let mut redelivered = Vec::new();
    for run in 0..ctx.lock_runs {
        for pilots in [true, false] {
            let coord = Loopback::start(SECRET)?;
            let node = Node::new(&coord.url, 64)?;
            let leases: Vec<String> = (0..n)
                .map(|i| format!("{}-{run}-{i}", if pilots { "lock" } else { "lock-base" }))
                .collect();
            let t0 = Instant::now();
            let mut procs = Vec::new();
            for lease in &leases {
                procs.push(if pilots {
                    node.spawn_pilot(&ctx.vmpilot, lease, Duration::from_secs(600))?
                } else {
                    node.spawn_baseline(&ctx.bench, lease, &coord.url)?
                });
            }
            let mut last_reserved = None;
            for lease in &leases {
                match coord.wait_for(lease, "reserved", Duration::from_secs(180)) {
                    Some(t) => last_reserved = last_reserved.max(Some(t)),
                    None => {
                        failures.push(format!("{lease}: no `reserved`"));
                        checks_ok = false;
                    }
                }
            }
            let host_held = node.host();
            let t_sig = Instant::now();
            for p in &procs {
                p.signal(Signal::SIGTERM);
            }
            let mut last_exit = None;
            for (lease, mut p) in leases.iter().zip(procs) {
                match p.wait(STEP) {
                    Some((at, status)) => {
                        last_exit = last_exit.max(Some(at));
                        let want = if pilots { 5 } else { 0 };
                        if status.code() != Some(want) {
                            failures.push(format!("{lease}: exit {status}, expected {want}"));
                            checks_ok = false;
                        }
                    }
                    None => {
                        failures.push(format!("{lease}: did not exit"));
                        checks_ok = false;
                    }
                }
            }
            for lease in &leases {
                for kind in ["reserved", "unreserved"] {
                    if coord.count(lease, kind) != 1 {
                        failures.push(format!(
                            "{lease}: {} `{kind}` events",
                            coord.count(lease, kind)
                        ));
                        checks_ok = false;
                    }
                }
                if pilots && node.record_state(lease).as_deref() != Some("unreserved") {
                    failures.push(format!("{lease}: record {:?}", node.record_state(lease)));
                    checks_ok = false;
                }
            }
            if host_held["reservations"].as_object().map_or(0, |m| m.len()) != n {
                failures.push(format!(
                    "node lock: {} reservations while all held, expected {n}",
                    host_held["reservations"].as_object().map_or(0, |m| m.len())
                ));
                checks_ok = false;
            }
            if !node.reservations().is_empty() {
                failures.push(format!(
                    "node lock: reservations left: {:?}",
                    node.reservations()
                ));
                checks_ok = false;
            }
            let bad = coord.with(|a| a.bad_signatures + a.bad_bodies);
            if bad > 0 {
                failures.push(format!("node lock: {bad} unsigned or unreadable events"));
                checks_ok = false;
            }
            redelivered.extend(coord.with(|a| a.duplicates.clone()));
            let claim = last_reserved.map(|t| ms(t - t0));
            let release = last_exit.map(|t| ms(t - t_sig));
            if pilots {
                p_claim.extend(claim);
                p_release.extend(release);
            } else {
                b_claim.extend(claim);
                b_release.extend(release);
            }
        }
    }
    let note = if checks_ok {
        format!(
            "correct: all restored, no reservation left, each event applied once{}",
            redeliveries(&redelivered)
        )
    } else {
        "INCORRECT: see failures".to_string()
    };
    figures.push(Figure {
        group: "node-lock".into(),
        name: format!("{n} pilots at once on one node: start → all `reserved`"),
        unit: "ms".into(),
        value: Summary::of(&p_claim),
        baseline_name: format!("{n} routines at once (no node lock)"),
        baseline: Summary::of(&b_claim),
        goal: None,
        note: note.clone(),
    });
    figures.push(Figure {
        group: "node-lock".into(),
        name: format!("{n} pilots at once: SIGTERM → all exited, node restored"),
        unit: "ms".into(),
        value: Summary::of(&p_release),
        baseline_name: format!("{n} routines at once"),
        baseline: Summary::of(&b_release),
        goal: None,
        note,
    });
    Ok(())
}
