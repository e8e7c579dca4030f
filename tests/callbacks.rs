//! Coordinator callbacks over real HTTP on 127.0.0.1: signed events, the durable spool, and
//! a coordinator that is down, failing or refusing.

mod common;

use common::coordinator::{Mode, TestCoordinator, free_port};
use common::{Node, stderr};
use nix::sys::signal::Signal;

const SECRET: &str = "test-secret-0123456789abcdef";

fn node_with_coordinator(url: &str) -> Node {
    Node::with_coordinator(url, SECRET, "timeout = \"1s\"\n")
}

#[test]
fn the_coordinator_receives_every_event_signed_and_in_order() {
    let coordinator = TestCoordinator::start(SECRET, Mode::Accept);
    let node = node_with_coordinator(&coordinator.url);
    let out = node.run(&[
        "run",
        "--memory",
        "1G",
        "--cpus",
        "2",
        "--walltime",
        "3s",
        "--grace",
        "1s",
        "--lease-id",
        "c1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        coordinator.types_for("c1"),
        ["reserved", "unreserving", "unreserved"]
    );
    coordinator.with_log(|log| {
        assert_eq!(log.bad_signatures, 0);
        let seqs: Vec<u64> = log
            .applied
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [0, 1, 2]);
        let reserved = &log.applied[0];
        assert_eq!(reserved["protocol"], 1);
        assert_eq!(reserved["memory_mib"], 1024);
        assert_eq!(reserved["cpus"], 2);
        assert_eq!(reserved["node"], "testnode");
        assert_eq!(reserved["epoch"], 1);
        assert!(reserved["deadline"].as_str().is_some());
        assert_eq!(log.applied[1]["reason"], "deadline");
        assert_eq!(log.applied[2]["reason"], "deadline");
    });
    assert_eq!(node.spooled(), 0, "acknowledged events leave the spool");
    let log = std::fs::read_to_string(node.state_dir().join("vmpilot.log")).unwrap();
    assert!(
        !log.contains(SECRET) && !stderr(&out).contains(SECRET),
        "the secret leaked into logs"
    );
}

#[test]
fn a_wrong_secret_is_refused_by_the_coordinator_and_surfaced() {
    let coordinator = TestCoordinator::start("another-secret-0123456789", Mode::Accept);
    let node = node_with_coordinator(&coordinator.url);
    let out = node.run(&[
        "run",
        "--memory",
        "1G",
        "--walltime",
        "2s",
        "--grace",
        "1s",
        "--lease-id",
        "bad",
    ]);
    assert!(
        out.status.success(),
        "the lease does not depend on the coordinator: {}",
        stderr(&out)
    );
    coordinator.with_log(|log| {
        assert!(log.bad_signatures >= 1);
        assert!(log.applied.is_empty());
    });
    assert!(
        stderr(&out).contains("coordinator rejected an event"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    let rejected = std::fs::read_dir(node.state_dir().join("spool/rejected"))
        .unwrap()
        .count();
    assert!(rejected >= 1, "a refused event is kept for the admin");
}

#[test]
fn coordinator_down_for_the_whole_lease_then_up_gets_every_event_exactly_once() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let node = node_with_coordinator(&url);
    // Lease 1 runs to its deadline, lease 2 is killed and recovered: all with nobody listening.
    let out = node.run(&[
        "run",
        "--memory",
        "1G",
        "--walltime",
        "3s",
        "--grace",
        "1s",
        "--lease-id",
        "d1",
    ]);
    assert!(
        out.status.success(),
        "the deadline wins over a dead coordinator: {}",
        stderr(&out)
    );
    assert!(node.reservations().is_empty());
    let pilot = node.spawn_pilot(&["--memory", "1G", "--walltime", "5m", "--lease-id", "d2"]);
    node.wait_state("d2", "reserved");
    // The `reserved` event is spooled just after the state is saved; kill after both.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while node.spooled() < 4 && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    pilot.signal(Signal::SIGKILL);
    pilot.finish();
    let spooled_before = node.spooled();
    assert_eq!(spooled_before, 4, "3 events of d1 + `reserved` of d2");

    // A 5xx coordinator is no better: events stay spooled.
    {
        let failing = TestCoordinator::start_on(port, SECRET, Mode::Unavailable);
        let out = node.run(&["recover"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(failing.with_log(|l| l.posts) >= 1);
        assert_eq!(node.spooled(), spooled_before + 1, "+ `recovered` of d2");
    }

    let coordinator = TestCoordinator::start_on(port, SECRET, Mode::Accept);
    let out = node.run(&["recover"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(node.spooled(), 0);
    assert_eq!(
        coordinator.types_for("d1"),
        ["reserved", "unreserving", "unreserved"]
    );
    assert_eq!(coordinator.types_for("d2"), ["reserved", "recovered"]);
    // Later runs deliver nothing again.
    let out = node.run(&["recover"]);
    assert!(out.status.success());
    coordinator.with_log(|log| {
        assert_eq!(log.duplicates, 0);
        assert_eq!(log.applied.len(), 5);
        assert_eq!(log.posts, 5, "nothing sent twice");
        let d2: Vec<_> = log
            .applied
            .iter()
            .filter(|e| e["lease_id"] == "d2")
            .collect();
        assert_eq!(d2[1]["outcome"], "unreserved");
        assert_eq!(d2[1]["reason"], "pilot-lost");
    });
}

#[test]
fn the_next_pilot_run_delivers_what_an_earlier_one_left() {
    let port = free_port();
    let node = node_with_coordinator(&format!("http://127.0.0.1:{port}"));
    let out = node.run(&[
        "run",
        "--memory",
        "1G",
        "--walltime",
        "2s",
        "--grace",
        "1s",
        "--lease-id",
        "e1",
    ]);
    assert!(out.status.success());
    assert_eq!(node.spooled(), 3);
    let coordinator = TestCoordinator::start_on(port, SECRET, Mode::Accept);
    let out = node.run(&[
        "run",
        "--memory",
        "1G",
        "--walltime",
        "2s",
        "--grace",
        "1s",
        "--lease-id",
        "e2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(node.spooled(), 0);
    assert_eq!(
        coordinator.types_for("e1"),
        ["reserved", "unreserving", "unreserved"]
    );
    assert_eq!(
        coordinator.types_for("e2"),
        ["reserved", "unreserving", "unreserved"]
    );
    coordinator.with_log(|log| {
        let order: Vec<String> = log
            .applied
            .iter()
            .map(|e| e["lease_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(order[..3], ["e1", "e1", "e1"], "oldest first");
    });
}

#[test]
fn a_world_readable_secret_is_refused_before_anything_changes() {
    use std::os::unix::fs::PermissionsExt;
    let node = node_with_coordinator("http://127.0.0.1:9");
    let secret = node.dir.path().join("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = node.run(&[
        "run",
        "--memory",
        "1G",
        "--walltime",
        "1m",
        "--lease-id",
        "s",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    assert!(node.record("s").is_none());
    assert!(node.reservations().is_empty());
}

fn node_with_heartbeats(url: &str) -> Node {
    let node = node_with_coordinator(url);
    let text = std::fs::read_to_string(&node.config).unwrap();
    std::fs::write(&node.config, format!("{text}heartbeat_interval = \"1s\"\n")).unwrap();
    node
}

#[test]
fn heartbeats_flow_while_reserved_and_a_release_directive_ends_the_lease() {
    let coordinator = TestCoordinator::start(SECRET, Mode::Accept);
    let node = node_with_heartbeats(&coordinator.url);
    let pilot = node.spawn_pilot(&["--memory", "1G", "--walltime", "5m", "--lease-id", "h1"]);
    node.wait_state("h1", "reserved");
    // Let a couple of heartbeats through before asking for the node back.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let beats = coordinator.with_log(|l| {
        l.applied
            .iter()
            .filter(|e| e["type"] == "heartbeat" && e["lease_id"] == "h1")
            .count()
    });
    assert!(beats >= 1, "no heartbeat while reserved");
    coordinator.set_directives(vec![
        serde_json::json!({"type": "release", "lease_id": "h1", "epoch": 1}),
    ]);
    let (code, err) = pilot.finish();
    assert_eq!(code, 0, "{err}");
    let r = node.record("h1").unwrap();
    assert_eq!(r["end_reason"], "coordinator-release");
    assert!(node.reservations().is_empty());
    coordinator.with_log(|l| {
        let hb = l.applied.iter().find(|e| e["type"] == "heartbeat").unwrap();
        assert_eq!(hb["state"], "reserved");
        assert_eq!(hb["epoch"], 1);
        assert!(hb["deadline"].as_str().is_some());
    });
}

#[test]
fn a_directive_for_a_stale_epoch_or_another_lease_does_nothing() {
    let coordinator = TestCoordinator::start(SECRET, Mode::Accept);
    coordinator.set_directives(vec![
        serde_json::json!({"type": "release", "lease_id": "h2", "epoch": 7}),
        serde_json::json!({"type": "release", "lease_id": "someone-else", "epoch": 1}),
        serde_json::json!({"type": "self-destruct", "lease_id": "h2", "epoch": 1}),
    ]);
    let node = node_with_heartbeats(&coordinator.url);
    let out = node.run(&[
        "run",
        "--memory",
        "1G",
        "--walltime",
        "5s",
        "--grace",
        "1s",
        "--lease-id",
        "h2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(node.record("h2").unwrap()["end_reason"], "deadline");
    assert!(stderr(&out).contains("stale epoch"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not understand"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_shorten_directive_moves_the_deadline_earlier_but_never_later() {
    let coordinator = TestCoordinator::start(SECRET, Mode::Accept);
    let node = node_with_heartbeats(&coordinator.url);
    let pilot = node.spawn_pilot(&[
        "--memory",
        "1G",
        "--walltime",
        "5m",
        "--grace",
        "1s",
        "--lease-id",
        "h3",
    ]);
    let r = node.wait_state("h3", "reserved");
    let original = r["deadline"].as_str().unwrap().to_string();
    let later = (time::OffsetDateTime::now_utc() + time::Duration::hours(5))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let sooner = (time::OffsetDateTime::now_utc() + time::Duration::seconds(4))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    coordinator.set_directives(vec![
        serde_json::json!({"type": "shorten", "lease_id": "h3", "epoch": 1, "deadline": later}),
    ]);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(
        node.record("h3").unwrap()["deadline"],
        original.as_str(),
        "a later deadline was applied"
    );
    coordinator.set_directives(vec![
        serde_json::json!({"type": "shorten", "lease_id": "h3", "epoch": 1, "deadline": sooner}),
    ]);
    let (code, err) = pilot.finish();
    assert_eq!(code, 0, "{err}");
    let r = node.record("h3").unwrap();
    assert_eq!(r["end_reason"], "deadline");
    assert_eq!(r["deadline"], sooner.as_str());
    assert!(node.reservations().is_empty());
}
