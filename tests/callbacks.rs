//! Coordinator callbacks over real HTTP on 127.0.0.1: signed events, the durable spool, and
//! a coordinator that is down, failing or refusing.

mod common;

use common::coordinator::{Mode, TestCoordinator, free_port};
use common::{Node, stderr};
use nix::sys::signal::Signal;

const SECRET: &str = "test-secret-0123456789abcdef";

fn node_with_coordinator(url: &str) -> Node {
    let node = Node::new("");
    let secret = node.secret_file(SECRET);
    let text = std::fs::read_to_string(&node.config).unwrap();
    std::fs::write(
        &node.config,
        format!(
            "{text}\n[coordinator]\nurl = \"{url}\"\nsecret_file = \"{}\"\ntimeout = \"1s\"\n",
            secret.display()
        ),
    )
    .unwrap();
    node
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
