//! Crash consistency: SIGKILL the pilot at every point where it persists state or acts on
//! the host (src/crashpoint.rs), then check that `vmpilot recover` brings the host back to
//! its baseline and the record says what happened. Needs the `fault-injection` feature
//! (the README's test command enables it with --all-features).
#![cfg(feature = "fault-injection")]

mod common;

use common::coordinator::{Mode, TestCoordinator};
use common::{Node, Pilot, stderr, stdout};
use vmpilot::crashpoint::Point;

const SECRET: &str = "crash-secret-0123456789abcdef";

/// The events that say how a lease ended.
const END_EVENTS: [&str; 3] = ["unreserved", "failed", "recovered"];

/// Nothing lost, nothing applied twice: of the lease's events the coordinator applied
/// (each id once), exactly one says how it ended, and it is the last.
fn assert_end_reported_once(coordinator: &TestCoordinator, lease: &str, point: Point) {
    let types = coordinator.types_for(lease);
    let ends: Vec<_> = types
        .iter()
        .filter(|t| END_EVENTS.contains(&t.as_str()))
        .collect();
    assert_eq!(ends.len(), 1, "{}: events {types:?}", point.name());
    assert!(
        END_EVENTS.contains(&types.last().unwrap().as_str()),
        "{}: events {types:?}",
        point.name()
    );
    let types: Vec<&str> = types.iter().map(String::as_str).collect();
    coordinator.assert_exactly_once(lease, &types);
}

fn recover_ok(node: &Node, point: Point) {
    let out = node.run(&["recover"]);
    assert!(
        out.status.success(),
        "{}: recover failed:\n{}\n{}",
        point.name(),
        stdout(&out),
        stderr(&out)
    );
}

/// Every node also holds a second lease whose pilot lives through the crash and the
/// recovery (issue #12, item 5): recovering the crashed lease must leave the other's share,
/// record and guest exactly as they were, and the other's own end then restores the node.
#[test]
fn sigkill_at_every_persist_or_act_point_then_recover_restores_the_node() {
    // All points at once, one node each, so the sweep takes one lease's time. One
    // coordinator hears them all (a lease id per point).
    let coordinator = TestCoordinator::start(SECRET, Mode::Accept);
    let others: Vec<(Node, Pilot)> = Point::ALL
        .iter()
        .map(|&point| {
            let node = Node::with_coordinator(&coordinator.url, SECRET, "");
            let other = format!("{}-other", point.name());
            node.add_guest("g-other", Some(&other), &[]);
            let pilot = node.spawn_lease(&other, "10m", None);
            (node, pilot)
        })
        .collect();
    let runs: Vec<(Point, Node, Pilot, Pilot)> = Point::ALL
        .iter()
        .zip(others)
        .map(|(&point, (node, other))| {
            node.wait_state(&format!("{}-other", point.name()), "reserved");
            // A guest owned by the lease, as a coordinator would have started.
            node.add_guest("g", Some(point.name()), &["--shutdown-delay", "100ms"]);
            let pilot = node.spawn_lease(point.name(), "3s", Some(point.name()));
            (point, node, pilot, other)
        })
        .collect();
    for (point, node, pilot, other) in runs {
        let lease = point.name();
        let other_lease = format!("{lease}-other");
        let (code, err) = pilot.finish();
        assert_eq!(
            code,
            128 + 9,
            "{}: the pilot never reached this point:\n{err}",
            point.name()
        );
        recover_ok(&node, point);
        let r = node.record(lease).unwrap();
        assert_eq!(r["state"], "unreserved", "{}: {r}", point.name());
        assert!(
            r.get("end_report").is_none(),
            "{}: end report left unfinished: {r}",
            point.name()
        );
        assert_eq!(
            node.reservations(),
            [other_lease.as_str()],
            "{}: host not at the other lease's share: {:?}",
            point.name(),
            node.host()
        );
        assert_eq!(
            node.record(&other_lease).unwrap()["state"],
            "reserved",
            "{}",
            point.name()
        );
        assert_eq!(node.guest_state("g-other"), "running", "{}", point.name());
        if point != Point::BeginSaved {
            // From `reserving` on, the lease may have had guests: they must be stopped.
            assert_eq!(
                node.guest_state("g"),
                "shut-off",
                "{}: owned guest left running",
                point.name()
            );
        }
        if matches!(point, Point::GuestsStopped | Point::HostReleased) {
            // The pilot stopped the guest before it died: the record keeps saying so rather
            // than recovery's "already-stopped".
            assert_eq!(r["guests"][0]["fate"], "shut-down", "{}: {r}", point.name());
        }
        let again = node.run(&["recover"]);
        assert!(again.status.success(), "{}: second recover", point.name());
        assert!(
            stdout(&again).contains("already finished"),
            "{}: {}",
            point.name(),
            stdout(&again)
        );
        assert_eq!(
            node.spooled(),
            0,
            "{}: events left undelivered",
            point.name()
        );
        assert_end_reported_once(&coordinator, lease, point);
        other.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(
            other.finish().0,
            5,
            "{}: the other lease's pilot",
            point.name()
        );
        assert!(
            node.reservations().is_empty(),
            "{}: {:?}",
            point.name(),
            node.host()
        );
        assert_end_reported_once(&coordinator, &other_lease, point);
    }
}

#[test]
fn a_recovery_killed_part_way_is_finished_by_the_next_one() {
    let coordinator = TestCoordinator::start(SECRET, Mode::Accept);
    for point in [
        Point::GuestsStopped,
        Point::HostReleased,
        Point::UnreservedSaved,
        Point::UnreservedSpooled,
    ] {
        let lease = format!("rk-{}", point.name());
        let lease = lease.as_str();
        let node = Node::with_coordinator(&coordinator.url, SECRET, "");
        node.add_guest("g", Some(lease), &[]);
        let pilot = node.spawn_pilot(&["--memory", "1G", "--walltime", "5m", "--lease-id", lease]);
        node.wait_state(lease, "reserved");
        pilot.signal(nix::sys::signal::Signal::SIGKILL);
        pilot.finish();
        let out = node
            .cmd(&["recover"])
            .env("VMPILOT_CRASH_AT", point.name())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            None,
            "{}: recover should have been killed",
            point.name()
        );
        recover_ok(&node, point);
        let r = node.record(lease).unwrap();
        assert_eq!(r["state"], "unreserved", "{}: {r}", point.name());
        assert!(r.get("end_report").is_none(), "{}: {r}", point.name());
        assert!(node.reservations().is_empty(), "{}", point.name());
        assert_eq!(node.guest_state("g"), "shut-off");
        assert_eq!(
            node.spooled(),
            0,
            "{}: events left undelivered",
            point.name()
        );
        assert_end_reported_once(&coordinator, lease, point);
    }
}
