//! Crash consistency: SIGKILL the pilot at every point where it persists state or acts on
//! the host (src/crashpoint.rs), then check that `vmpilot recover` brings the host back to
//! its baseline and the record says what happened. Needs the `fault-injection` feature
//! (the README's test command enables it with --all-features).
#![cfg(feature = "fault-injection")]

mod common;

use common::{Node, Pilot, stderr, stdout};
use vmpilot::crashpoint::Point;

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

#[test]
fn sigkill_at_every_persist_or_act_point_then_recover_restores_the_node() {
    // All points at once, one node each, so the sweep takes one lease's time.
    let runs: Vec<(Point, Node, Pilot)> = Point::ALL
        .iter()
        .map(|&point| {
            let node = Node::new("");
            // A guest owned by the lease, as a coordinator would have started.
            node.add_guest("g", Some("crash"), &["--shutdown-delay", "100ms"]);
            let pilot = node.spawn_lease("crash", "3s", Some(point.name()));
            (point, node, pilot)
        })
        .collect();
    for (point, node, pilot) in runs {
        let (code, err) = pilot.finish();
        assert_eq!(
            code,
            128 + 9,
            "{}: the pilot never reached this point:\n{err}",
            point.name()
        );
        recover_ok(&node, point);
        let r = node.record("crash").unwrap();
        assert_eq!(r["state"], "unreserved", "{}: {r}", point.name());
        assert!(
            node.reservations().is_empty(),
            "{}: host not at baseline: {:?}",
            point.name(),
            node.host()
        );
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
    }
}

#[test]
fn a_recovery_killed_part_way_is_finished_by_the_next_one() {
    for point in [
        Point::GuestsStopped,
        Point::HostReleased,
        Point::UnreservedSaved,
    ] {
        let node = Node::new("");
        node.add_guest("g", Some("rk"), &[]);
        let pilot = node.spawn_pilot(&["--memory", "1G", "--walltime", "5m", "--lease-id", "rk"]);
        node.wait_state("rk", "reserved");
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
        assert_eq!(
            node.record("rk").unwrap()["state"],
            "unreserved",
            "{}",
            point.name()
        );
        assert!(node.reservations().is_empty(), "{}", point.name());
        assert_eq!(node.guest_state("g"), "shut-off");
    }
}
