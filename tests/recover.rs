//! `vmpilot recover --boot` on a node that a crash left with lease records in every state of
//! the lease state machine (docs/state-machine.md), each produced for real: a pilot SIGKILLed
//! at each crash point (src/crashpoint.rs), a pilot whose restore failed (`failed`), a pilot
//! that is alive but frozen, and leases that ended normally. Then one `recover --boot` must
//! finish every unfinished lease whatever its pid says (but for the one whose live pilot
//! holds the lease's lock), leave the terminal records alone, spool one event per finished
//! lease, and a second run must change nothing.
//!
//! Needs the `fault-injection` feature (the README's test command enables it with
//! --all-features). Simulated host; a loopback coordinator that answers 503, so every event
//! stays in the spool where the test can count it.
#![cfg(feature = "fault-injection")]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::coordinator::{Mode, TestCoordinator};
use common::{Node, Pilot, history, stderr, stdout};
use nix::sys::signal::Signal;
use serde_json::Value;
use vmpilot::crashpoint::Point;

const SECRET: &str = "recover-boot-secret-0123456789";

/// A boot id that is not this boot's: the records of "the previous boot".
const OLD_BOOT: &str = "00000000-0000-4000-8000-000000000001";

/// A node big enough to hold every lease's share at once.
fn big_node(coordinator: &TestCoordinator) -> Node {
    let node = Node::with_coordinator(&coordinator.url, SECRET, "timeout = \"1s\"\n");
    let text = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("memory = \"8G\"\ncpus = 4", "memory = \"64G\"\ncpus = 64")
        .replace("max_guests = 2", "max_guests = 4");
    std::fs::write(&node.config, text).unwrap();
    node
}

/// Every spooled event as (lease, type), and the file names.
fn spool(node: &Node) -> (Vec<(String, String)>, Vec<PathBuf>) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(node.state_dir().join("spool"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let events = files
        .iter()
        .map(|p| {
            let e: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            (
                e["lease_id"].as_str().unwrap().to_string(),
                e["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (events, files)
}

/// Rewrite the record's pilot identity: the pilot of another boot whose pid (and start
/// time) now belong to a live process of this boot, as after a reboot.
fn from_previous_boot(node: &Node, lease: &str, live: &Value) {
    let path = node.record_path(lease);
    let mut r: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    r["pilot"] = live.clone();
    r["pilot"]["boot_id"] = OLD_BOOT.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&r).unwrap()).unwrap();
}

fn record_bytes(node: &Node, lease: &str) -> Vec<u8> {
    std::fs::read(node.record_path(lease)).unwrap()
}

#[test]
fn recover_boot_finishes_leases_left_in_every_state_once() {
    let coordinator = TestCoordinator::start(SECRET, Mode::Unavailable);
    let node = big_node(&coordinator);
    node.add_guest("bystander", None, &[]);

    // `failed`: restoring the host fails for as long as the pilot tries.
    node.add_guest("g-failed", Some("failed"), &["--shutdown-delay", "50ms"]);
    node.fault("release", "error", 1000, "0s");
    let (code, err) = node.spawn_lease("failed", "2s", None).finish();
    assert_eq!(code, 4, "the host failed, not restored:\n{err}");
    assert_eq!(node.record("failed").unwrap()["state"], "failed");
    // The hypervisor is well again (disarm what the pilot did not use up).
    let host_file = node.state_dir().join("simulated-host.json");
    let mut host: Value = serde_json::from_slice(&std::fs::read(&host_file).unwrap()).unwrap();
    host["faults"] = serde_json::json!([]);
    std::fs::write(&host_file, serde_json::to_vec(&host).unwrap()).unwrap();

    // `unreserved`: a lease that ended on its own.
    node.add_guest("g-done", Some("done"), &["--shutdown-delay", "50ms"]);
    assert_eq!(node.spawn_lease("done", "2s", None).finish().0, 0);

    // Every crash point, one lease each (in parallel: the node lock orders the reserves).
    let crashed: Vec<(Point, String, Pilot)> = Point::ALL
        .iter()
        .map(|&p| {
            let lease = format!("crash-{}", p.name());
            node.add_guest(
                &format!("g-{lease}"),
                Some(&lease),
                &["--shutdown-delay", "50ms"],
            );
            let pilot = node.spawn_lease(&lease, "2s", Some(p.name()));
            (p, lease, pilot)
        })
        .collect();
    let mut crash_states = BTreeMap::new();
    for (p, lease, pilot) in crashed {
        let (code, err) = pilot.finish();
        assert_eq!(code, 128 + 9, "{}: never reached:\n{err}", p.name());
        crash_states.insert(lease.clone(), node.record(&lease).unwrap()["state"].clone());
    }

    // `reserved` with a pilot that is alive (frozen): it holds its lease's lock, which no
    // process of a previous boot can, so even --boot leaves it alone (issue #12).
    node.add_guest("g-frozen", Some("frozen"), &["--shutdown-delay", "50ms"]);
    let frozen = node.spawn_lease("frozen", "10m", None);
    let live = node.wait_state("frozen", "reserved")["pilot"].clone();
    frozen.signal(Signal::SIGSTOP);

    // The crashed pilots are from "the previous boot", their pids now someone else's.
    for lease in crash_states.keys() {
        from_previous_boot(&node, lease, &live);
    }

    // What the node looks like now: every state of the machine is on disk.
    let mut states: Vec<String> = crash_states
        .values()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    states.extend(["failed", "unreserved", "reserved"].map(String::from));
    for s in [
        "begin",
        "reserving",
        "reserved",
        "unreserving",
        "unreserved",
        "failed",
    ] {
        assert!(
            states.iter().any(|x| x == s),
            "no record in {s}: {crash_states:?}"
        );
    }
    let status: Value = serde_json::from_slice(&node.run(&["status", "--json"]).stdout).unwrap();
    let frozen_status = status["leases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lease_id"] == "frozen")
        .unwrap();
    assert_eq!(frozen_status["pilot_alive"], true, "{frozen_status}");

    // Terminal records whose end was reported stay as they are. Those killed between saving
    // the end and finishing its report (`end_report` in the record) only get the report
    // finished: a `due` one its `unreserved` event, a `spooling` one nothing new (its events
    // are in the spool already).
    let ended: Vec<(String, Value)> = crash_states
        .iter()
        .filter(|(_, s)| *s == "unreserved")
        .map(|(l, _)| (l.clone(), node.record(l).unwrap()))
        .collect();
    let terminal: Vec<String> = ended
        .iter()
        .filter(|(_, r)| r.get("end_report").is_none())
        .map(|(l, _)| l.clone())
        .chain(["done".to_string()])
        .collect();
    let unreported: Vec<(String, Value)> = ended
        .into_iter()
        .filter(|(_, r)| r.get("end_report").is_some())
        .collect();
    let due: Vec<String> = unreported
        .iter()
        .filter(|(_, r)| r["end_report"]["step"] == "due")
        .map(|(l, _)| l.clone())
        .collect();
    assert!(
        !due.is_empty() && unreported.len() > due.len(),
        "a crash after saving the end and one after spooling it: {unreported:?}"
    );
    let before: BTreeMap<String, Vec<u8>> = terminal
        .iter()
        .map(|l| (l.clone(), record_bytes(&node, l)))
        .collect();
    let (spooled_before, files_before) = spool(&node);

    let out = node.run(&["recover", "--boot"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let table = stdout(&out);

    // Every unfinished lease was treated as dead and finished.
    let unfinished: Vec<String> = crash_states
        .iter()
        .filter(|(_, s)| *s != "unreserved")
        .map(|(l, _)| l.clone())
        .chain(["failed".to_string()])
        .collect();
    for lease in &unfinished {
        let r = node.record(lease).unwrap();
        assert_eq!(r["state"], "unreserved", "{lease}: {r}\n{table}");
        let events = common::history_events(&r);
        assert!(
            events.iter().any(|e| e == "pilot-lost"),
            "{lease}: the record does not say recovery ended it: {events:?}"
        );
        assert_eq!(
            history(&r).last().map(String::as_str),
            Some("unreserved"),
            "{lease}"
        );
        assert!(table.contains(lease.as_str()), "{lease} missing:\n{table}");
        if lease != "crash-begin-saved" {
            assert_eq!(
                node.guest_state(&format!("g-{lease}")),
                "shut-off",
                "{lease}: owned guest left running"
            );
        }
    }
    let frozen_record = node.record("frozen").unwrap();
    assert_eq!(
        frozen_record["state"], "reserved",
        "a live pilot's lease was ended by --boot: {frozen_record}"
    );
    assert!(
        table.contains("frozen") && table.contains("pilot still running"),
        "{table}"
    );
    assert_eq!(node.guest_state("g-frozen"), "running");
    // The host is back at its baseline but for the live lease; other guests were not touched.
    assert_eq!(node.reservations(), ["frozen"], "{:?}", node.host());
    assert_eq!(node.guest_state("bystander"), "running");
    for (lease, bytes) in &before {
        assert_eq!(
            &record_bytes(&node, lease),
            bytes,
            "{lease}: terminal record rewritten"
        );
    }
    for (lease, was) in &unreported {
        let r = node.record(lease).unwrap();
        assert!(r.get("end_report").is_none(), "{lease}: {r}");
        assert_eq!(
            r["history"], was["history"],
            "{lease}: only the report changes"
        );
        assert!(table.contains("reported the end"), "{lease}:\n{table}");
    }
    // One `recovered` event per finished lease, nothing for the finished ones.
    let (spooled_after, files_after) = spool(&node);
    let new: Vec<(String, String)> = spooled_after
        .iter()
        .filter(|e| !spooled_before.contains(e))
        .cloned()
        .collect();
    assert_eq!(
        files_after.len() - files_before.len(),
        unfinished.len() + due.len(),
        "new events: {new:?}"
    );
    for lease in &due {
        let n = new
            .iter()
            .filter(|(l, t)| l == lease && t == "unreserved")
            .count();
        assert_eq!(n, 1, "{lease}: {new:?}");
    }
    for lease in &unfinished {
        let n = new
            .iter()
            .filter(|(l, t)| l == lease && t == "recovered")
            .count();
        assert_eq!(n, 1, "{lease}: {new:?}");
    }

    // A second run finds nothing to do and changes nothing.
    let records: BTreeMap<String, Vec<u8>> = unfinished
        .iter()
        .chain(terminal.iter())
        .chain(unreported.iter().map(|(l, _)| l))
        .map(|l| (l.clone(), record_bytes(&node, l)))
        .collect();
    let again = node.run(&["recover", "--boot"]);
    assert!(again.status.success(), "{}", stderr(&again));
    for (lease, bytes) in &records {
        assert_eq!(&record_bytes(&node, lease), bytes, "{lease} rewritten");
    }
    assert_eq!(spool(&node).1, files_after, "second run spooled events");
    assert!(
        !stdout(&again).contains("restored"),
        "second run restored something:\n{}",
        stdout(&again)
    );

    // Once the frozen pilot is really gone, --boot finishes its lease too.
    frozen.signal(Signal::SIGKILL);
    frozen.finish();
    let last = node.run(&["recover", "--boot"]);
    assert!(last.status.success(), "{}", stderr(&last));
    let r = node.record("frozen").unwrap();
    assert_eq!(r["state"], "unreserved", "{r}");
    assert_eq!(r["end_reason"], "pilot-lost", "{r}");
    assert_eq!(node.guest_state("g-frozen"), "shut-off");
    assert!(node.reservations().is_empty(), "{:?}", node.host());
}

/// Issue #12, item 2: one finisher per lease. An epilog's `recover` and an admin's
/// `kill-all` start on the same dead pilot's lease at once (its guest takes a while to
/// shut down). Exactly one of them finishes it; the other waits for the lease's lock and
/// then finds the work done. The guest is stopped once, the share released once, the end
/// reported once, and no event `seq` of the lease is used twice. On vmpilot 0.1 both
/// stopped the guest, both released, and the end reached the coordinator twice.
#[test]
fn recover_and_kill_all_racing_on_one_lease_finish_it_once() {
    let coordinator = TestCoordinator::start(SECRET, common::coordinator::Mode::Accept);
    for round in 0..3 {
        let lease = format!("race{round}");
        let node = big_node(&coordinator);
        let pilot = node.spawn_lease(&lease, "10m", None);
        node.wait_state(&lease, "reserved");
        node.add_guest(
            &format!("g-{lease}"),
            Some(&lease),
            &["--shutdown-delay", "800ms"],
        );
        pilot.signal(nix::sys::signal::Signal::SIGKILL);
        pilot.finish();
        let spawn = |args: &[&str]| common::Pilot {
            child: node
                .cmd(args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        };
        let (recover, kill) = if round % 2 == 0 {
            let r = spawn(&["recover"]);
            (r, spawn(&["kill-all", "--yes", "--graceful"]))
        } else {
            let k = spawn(&["kill-all", "--yes", "--graceful"]);
            (spawn(&["recover"]), k)
        };
        let (rc, rerr) = recover.finish();
        let (kc, kerr) = kill.finish();
        assert_eq!(
            (rc, kc),
            (0, 0),
            "round {round}\nrecover: {rerr}\nkill-all: {kerr}"
        );
        let r = node.record(&lease).unwrap();
        assert_eq!(r["state"], "unreserved", "round {round}: {r}");
        let ends = common::history_events(&r)
            .into_iter()
            .filter(|e| e == "pilot-lost" || e == "admin-kill")
            .count();
        assert_eq!(ends, 1, "round {round}: finished twice: {r}");
        assert_eq!(r["guests"].as_array().unwrap().len(), 1, "{r}");
        assert!(node.reservations().is_empty(), "round {round}");
        // Delivered: the outbox of the winner flushes; a later recover resends leftovers.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while node.spooled() > 0 && std::time::Instant::now() < until {
            let _ = node.run(&["recover"]);
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let types = coordinator.types_for(&lease);
        let ends: Vec<&String> = types
            .iter()
            .filter(|t| ["recovered", "killed", "unreserved", "failed"].contains(&t.as_str()))
            .collect();
        assert_eq!(
            ends.len(),
            1,
            "round {round}: the end was reported {types:?}"
        );
        coordinator.with_log(|l| {
            let mut seqs: Vec<u64> = l
                .applied
                .iter()
                .filter(|e| e["lease_id"] == lease.as_str() && e["type"] != "heartbeat")
                .map(|e| e["seq"].as_u64().unwrap())
                .collect();
            let n = seqs.len();
            seqs.sort();
            seqs.dedup();
            assert_eq!(
                seqs.len(),
                n,
                "round {round}: a seq was reused: {:?}",
                l.applied
            );
        });
    }
}
