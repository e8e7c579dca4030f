//! Bounded randomized interleaving (issue #12): several real pilots on one simulated node,
//! with SIGTERMs, SIGUSR1s, SIGKILLs, `recover` (some under a stepped clock), `kill-all`
//! (some under a stepped clock), a second pilot for a lease id already in use, and guests
//! started late, in an order and with pauses drawn from a seeded generator. After each
//! iteration, once everything has settled, the invariants of the hand-back must hold:
//!
//! - the node is restored (no share held) when no live pilot holds a lease, and every
//!   record says `unreserved`: record, host and ledger agree;
//! - no guest of a finished lease runs (unless it was started after that lease's end, which
//!   is the coordinator's side and tested in tests/e2e.rs);
//! - the coordinator heard each lease epoch's end exactly once, and no `seq` of a lease
//!   epoch was used by two different events;
//! - no process exited with an internal error.
//!
//! The seed is printed; `VMPILOT_INTERLEAVE_SEED=N` repeats a run. Bounded in iterations and
//! in time (it stops early, saying how far it got, rather than run long on a slow machine).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::coordinator::{Mode, TestCoordinator};
use common::{Node, Pilot, stderr, stdout};
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const SECRET: &str = "interleave-secret-0123456789";
const ITERATIONS: usize = 300;
const TIME_BOUND: Duration = Duration::from_secs(50);
const DEFAULT_SEED: u64 = 0x1212_5eed;

/// The events that say how a lease epoch ended. `killed` says who pulled the brake: a
/// pilot sends it beside its end, a kill-all that finished the lease sends it alone.
const END_EVENTS: [&str; 4] = ["unreserved", "failed", "recovered", "killed"];

/// Exit statuses a pilot may end with here: a clean end (0), refused (3: lease id in use;
/// 7: kill-all fence), ended by a signal and restored (5), SIGKILLed (137), or killed by a
/// SIGUSR1/SIGTERM that came before it had installed its handlers (138, 143: it had
/// written nothing yet, which the invariants check).
const PILOT_EXITS: [i32; 7] = [0, 3, 5, 7, 137, 138, 143];

/// A kill-all in the background may be signalled too: killed by it, or done (0, 4).
const KILL_ALL_EXITS: [i32; 5] = [0, 4, 137, 138, 143];

struct Started {
    lease: String,
    pilot: Pilot,
}

/// A guest the test started for a lease, and when that start had completed.
struct LateGuest {
    name: String,
    epoch: u64,
    lease: String,
    added: OffsetDateTime,
}

fn spawn(node: &Node, lease: &str) -> Pilot {
    node.spawn_pilot(&[
        "--memory",
        "512M",
        "--cpus",
        "1",
        "--walltime",
        "5m",
        "--grace",
        "3s",
        "--lease-id",
        lease,
    ])
}

/// When the lease's latest epoch began to end (its first move into `unreserving`, or into
/// `unreserved` straight from `begin`), from the record's history.
fn ending_started(record: &Value) -> Option<OffsetDateTime> {
    record["history"]
        .as_array()?
        .iter()
        .find(|h| h["state"] == "unreserving" || h["state"] == "unreserved")
        .and_then(|h| OffsetDateTime::parse(h["at"].as_str()?, &Rfc3339).ok())
}

fn records(node: &Node) -> Vec<Value> {
    let Ok(dir) = std::fs::read_dir(node.state_dir().join("leases")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect()
}

fn run_ok(node: &Node, what: &str, out: &std::process::Output, ctx: &str) {
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(4)),
        "{ctx}: `{what}` exited {code:?}\n{}\n{}",
        stdout(out),
        stderr(out)
    );
    let _ = node;
}

/// Iterations run on this many independent simulated nodes at once: each iteration is
/// mostly waiting on processes, so a 2-core machine runs several side by side.
const WORKERS: usize = 3;

#[test]
fn random_interleavings_of_pilots_signals_recover_and_kill_all_keep_the_hand_back_promise() {
    let seed = std::env::var("VMPILOT_INTERLEAVE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let only: Option<usize> = std::env::var("VMPILOT_INTERLEAVE_ITERATION")
        .ok()
        .and_then(|s| s.parse().ok());
    eprintln!(
        "interleaving seed {seed} (VMPILOT_INTERLEAVE_SEED={seed} repeats this run; \
         VMPILOT_INTERLEAVE_ITERATION=K repeats only iteration K)"
    );
    let root = nix::unistd::geteuid().is_root();
    let coordinator = TestCoordinator::start(SECRET, Mode::Accept);
    let started_at = Instant::now();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| {
                loop {
                    let it = match only {
                        Some(k) if next.fetch_add(1, Ordering::SeqCst) == 0 => k,
                        Some(_) => break,
                        None => next.fetch_add(1, Ordering::SeqCst),
                    };
                    if it >= ITERATIONS.max(only.map_or(0, |k| k + 1))
                        || started_at.elapsed() > TIME_BOUND
                        || failed.load(Ordering::SeqCst)
                    {
                        break;
                    }
                    // Stop the other workers once one iteration fails (its panic is
                    // re-raised when the scope ends).
                    let guard = FailFlag(&failed);
                    iteration(seed, it, &coordinator, root);
                    std::mem::forget(guard);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    let done = done.into_inner();
    eprintln!(
        "interleaving: {done} of {ITERATIONS} iterations in {:?} on {WORKERS} nodes (seed {seed})",
        started_at.elapsed()
    );
    assert!(done > 0, "no iteration ran");
}

/// Sets the flag when dropped during a panic (it is forgotten on success).
struct FailFlag<'a>(&'a AtomicBool);

impl Drop for FailFlag<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// One iteration: its own node, leases and generator, seeded from the run's seed and the
/// iteration number, so it does the same whichever worker runs it.
fn iteration(seed: u64, it: usize, coordinator: &TestCoordinator, root: bool) {
    let mut rng = StdRng::seed_from_u64(seed ^ (it as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let ctx = format!("seed {seed}, iteration {it}");
    let node = Node::with_coordinator(&coordinator.url, SECRET, "timeout = \"1s\"\n");
    let text = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("max_guests = 2", "max_guests = 4");
    std::fs::write(&node.config, text).unwrap();
    let leases: Vec<String> = (0..rng.random_range(1..=3))
        .map(|i| format!("i{it}-{i}"))
        .collect();
    let mut pilots: Vec<Started> = leases
        .iter()
        .map(|l| Started {
            lease: l.clone(),
            pilot: spawn(&node, l),
        })
        .collect();
    let mut late: Vec<LateGuest> = Vec::new();
    let mut actions = Vec::new();
    for _ in 0..rng.random_range(2..=6) {
        std::thread::sleep(Duration::from_millis(rng.random_range(0..80)));
        let action = rng.random_range(0..9);
        let target = rng.random_range(0..pilots.len());
        let p = &pilots[target];
        // Lease actions name one of the iteration's leases (not a kill-all process).
        let lease = leases[rng.random_range(0..leases.len())].clone();
        match action {
            0 => {
                actions.push(format!("SIGTERM {}", p.lease));
                let _ = nix::sys::signal::kill(p.pilot.pid(), Signal::SIGTERM);
            }
            1 => {
                actions.push(format!("SIGUSR1 {}", p.lease));
                let _ = nix::sys::signal::kill(p.pilot.pid(), Signal::SIGUSR1);
            }
            2 => {
                actions.push(format!("SIGKILL {}", p.lease));
                let _ = nix::sys::signal::kill(p.pilot.pid(), Signal::SIGKILL);
            }
            3 | 4 => {
                let step = if root && rng.random_bool(0.5) {
                    rng.random_range(-7200..7200)
                } else {
                    0
                };
                let (what, args): (&str, &[&str]) = if action == 3 {
                    ("recover", &["recover"])
                } else {
                    ("kill-all", &["kill-all", "--yes", "--level", "fast"])
                };
                actions.push(format!("{what} (clock {step:+}s)"));
                let out = if step == 0 {
                    node.run(args)
                } else {
                    common::vmpilot_clock_stepped(&node, step, args)
                };
                run_ok(&node, what, &out, &ctx);
            }
            5 => {
                actions.push(format!("second pilot for {lease}"));
                pilots.push(Started {
                    pilot: spawn(&node, &lease),
                    lease,
                });
            }
            6 | 7 => {
                let name = format!("late-{}", late.len());
                actions.push(format!("guest {name} for {lease}"));
                // Owned by the lease's current epoch, as a coordinator would start it:
                // only for a lease past `begin` (a coordinator starts guests after
                // `reserved`; one that was never reserved has none to stop).
                let Some(epoch) = node
                    .record(&lease)
                    .filter(|r| r["state"] != "begin")
                    .and_then(|r| r["epoch"].as_u64())
                    .map(|e| e.to_string())
                else {
                    continue;
                };
                let out = node.run(&[
                    "simulated",
                    "add-guest",
                    "--name",
                    &name,
                    "--lease",
                    &lease,
                    "--epoch",
                    &epoch,
                ]);
                assert!(out.status.success(), "{ctx}: {}", stderr(&out));
                late.push(LateGuest {
                    epoch: epoch.parse().unwrap(),
                    name,
                    lease,
                    added: OffsetDateTime::now_utc(),
                });
            }
            _ => {
                actions.push("kill-all in the background".into());
                let child = node
                    .cmd(&["kill-all", "--yes", "--level", "fast"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                pilots.push(Started {
                    lease: "(kill-all)".into(),
                    pilot: Pilot { child },
                });
            }
        }
    }
    let ctx = format!("{ctx}, actions {actions:?}");
    // Settle: stop every pilot, wait for every process, finish what SIGKILL left. A
    // pilot spawned just before a kill-all may check the fence after that kill-all
    // ended, and then starts: kill-all again until every process is gone (bounded).
    let mut rounds = 0;
    loop {
        let out = node.run(&["kill-all", "--yes", "--level", "fast"]);
        run_ok(&node, "kill-all", &out, &ctx);
        std::thread::sleep(Duration::from_millis(50));
        let mut running = 0;
        for s in pilots.iter_mut() {
            if s.pilot.child.try_wait().unwrap().is_none() {
                running += 1;
            }
        }
        rounds += 1;
        if running == 0 {
            break;
        }
        assert!(
            rounds < 50,
            "{ctx}: {running} process(es) outlive 50 kill-alls"
        );
    }
    for s in pilots {
        let (code, err) = s.pilot.finish();
        if s.lease == "(kill-all)" {
            assert!(
                KILL_ALL_EXITS.contains(&code),
                "{ctx}: background kill-all exited {code}: {err}"
            );
        } else {
            assert!(
                PILOT_EXITS.contains(&code),
                "{ctx}: pilot of {} exited {code}:\n{err}",
                s.lease
            );
        }
    }
    let out = node.run(&["recover"]);
    assert!(
        out.status.success(),
        "{ctx}: final recover\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );

    // Record, host and ledger agree: nothing held, every lease over.
    assert!(
        node.reservations().is_empty(),
        "{ctx}: host {}",
        node.host()
    );
    let records = records(&node);
    for r in &records {
        assert_eq!(r["state"], "unreserved", "{ctx}: {r}");
    }
    // No guest of a finished lease runs, unless it was started after the lease began
    // to end (then stopping it is the coordinator's part). Judged for guests of the
    // epoch the record now holds (the record of an earlier epoch is gone).
    let host = node.host();
    for g in &late {
        let state = node.guest_state(&g.name);
        let record = records
            .iter()
            .find(|r| r["lease_id"] == g.lease.as_str() && r["epoch"] == g.epoch);
        let ending = record.and_then(ending_started);
        let before_the_end = ending.is_some_and(|e| g.added < e);
        if before_the_end {
            assert_ne!(
                state, "running",
                "{ctx}: guest {} of {} still runs: {host}",
                g.name, g.lease
            );
        }
    }
    // Every event delivered; each lease epoch's end heard once; no seq used twice.
    assert_eq!(node.spooled(), 0, "{ctx}: events left in the spool");
    coordinator.with_log(|log| {
        let mine: Vec<&Value> = log
            .applied
            .iter()
            .filter(|e| leases.iter().any(|l| e["lease_id"] == l.as_str()))
            .filter(|e| e["type"] != "heartbeat")
            .collect();
        let mut ends: BTreeMap<(String, u64), Vec<String>> = BTreeMap::new();
        let mut seqs: BTreeSet<(String, u64, u64)> = BTreeSet::new();
        for e in &mine {
            let key = (
                e["lease_id"].as_str().unwrap().to_string(),
                e["epoch"].as_u64().unwrap(),
            );
            let kind = e["type"].as_str().unwrap().to_string();
            assert!(
                seqs.insert((key.0.clone(), key.1, e["seq"].as_u64().unwrap())),
                "{ctx}: seq {} of {key:?} used twice: {mine:?}",
                e["seq"]
            );
            if END_EVENTS.contains(&kind.as_str()) {
                ends.entry(key).or_default().push(kind);
            }
        }
        for (key, kinds) in &ends {
            let killed = kinds.iter().filter(|k| *k == "killed").count();
            assert!(
                kinds.len() - killed <= 1 && killed <= 1,
                "{ctx}: the end of {key:?} was reported {kinds:?}"
            );
        }
        // A lease epoch that was reserved had its end reported.
        for r in &records {
            let key = (
                r["lease_id"].as_str().unwrap().to_string(),
                r["epoch"].as_u64().unwrap(),
            );
            let reached_reserved = r["history"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["state"] == "reserved");
            if reached_reserved {
                assert!(
                    ends.contains_key(&key),
                    "{ctx}: no end heard for {key:?}: {r}"
                );
            }
        }
    });
}
