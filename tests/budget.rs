//! Guests over a lease's budget while it is reserved (issue 4): detected when the host says
//! guests changed, reported in the log and to the coordinator (an `over-budget` event), and
//! with `[host] over_budget = "stop-newest"` the lease's newest guests destroyed until it
//! fits. Real binary and signals on the simulated host (whose guest watch stands in for
//! libvirt's lifecycle events); tests/libvirt.rs has the same against real libvirt.

mod common;

use std::time::{Duration, Instant};

use common::coordinator::{Mode, TestCoordinator};
use common::{Node, Pilot};
use nix::sys::signal::Signal;
use serde_json::Value;

const SECRET: &str = "test-secret-0123456789abcdef";

/// A node with `over_budget = policy` and, when given, a coordinator at `url`.
fn node(policy: &str, coordinator: Option<&str>) -> Node {
    let node = Node::new("");
    let mut text = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("[host]\n", &format!("[host]\nover_budget = \"{policy}\"\n"));
    if let Some(url) = coordinator {
        let secret = node.secret_file(SECRET);
        text.push_str(&format!(
            "\n[coordinator]\nurl = \"{url}\"\nsecret_file = \"{}\"\ntimeout = \"1s\"\n",
            secret.display()
        ));
    }
    std::fs::write(&node.config, text).unwrap();
    node
}

/// A pilot for `lease` with 1 GiB and 2 CPUs for five minutes.
fn pilot(node: &Node, lease: &str) -> Pilot {
    let p = node.spawn_pilot(&[
        "--memory",
        "1G",
        "--cpus",
        "2",
        "--walltime",
        "5m",
        "--lease-id",
        lease,
    ]);
    node.wait_state(lease, "reserved");
    p
}

/// Wait (bounded) until `f` gives something.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "{what} did not happen within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn over_budget_events(c: &TestCoordinator, lease: &str) -> Vec<Value> {
    c.with_log(|l| {
        l.applied
            .iter()
            .filter(|e| e["lease_id"] == lease && e["type"] == "over-budget")
            .cloned()
            .collect()
    })
}

#[test]
fn a_guest_over_the_lease_s_memory_is_reported_to_the_coordinator_once() {
    let coordinator = TestCoordinator::start(SECRET, Mode::Accept);
    let node = node("report", Some(&coordinator.url));
    let pilot = pilot(&node, "ob1");
    node.add_guest("small", Some("ob1"), &["--memory", "512M"]);
    node.add_guest("stranger", None, &["--memory", "4G"]);
    // Within budget so far: give the watch time to have looked.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(over_budget_events(&coordinator, "ob1").is_empty());
    let added = Instant::now();
    node.add_guest("big", Some("ob1"), &["--memory", "768M"]);
    let event = wait_for("the over-budget event", || {
        over_budget_events(&coordinator, "ob1").into_iter().next()
    });
    assert!(
        added.elapsed() < Duration::from_secs(5),
        "{:?}",
        added.elapsed()
    );
    let detail = event["detail"].as_str().unwrap();
    assert!(
        detail.contains("1280 MiB") && detail.contains("small, big") && detail.contains("1024 MiB"),
        "{detail}"
    );
    assert!(!detail.contains("stranger"), "{detail}");
    assert_eq!(event["action"], "reported");
    assert_eq!(event["epoch"], 1);
    // Still over budget: more guest changes do not repeat the report.
    node.add_guest("another-stranger", None, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(over_budget_events(&coordinator, "ob1").len(), 1);
    assert_eq!(node.guest_state("big"), "running", "report touches nothing");
    let r = node.record("ob1").unwrap();
    assert!(
        r["last_error"]
            .as_str()
            .unwrap()
            .starts_with("over budget: "),
        "{r}"
    );
    pilot.signal(Signal::SIGTERM);
    let (code, err) = pilot.finish();
    assert_eq!(code, 5, "the lease goes on and ends normally: {err}");
    assert!(
        err.contains("lease over budget") && err.contains("action=reported"),
        "{err}"
    );
    assert_eq!(
        coordinator.types_for("ob1"),
        ["reserved", "over-budget", "unreserving", "unreserved"]
    );
    let seqs: Vec<u64> = coordinator.with_log(|l| {
        l.applied
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    });
    assert_eq!(seqs, [0, 1, 2, 3], "a durable event in sequence");
}

#[test]
fn stop_newest_destroys_the_lease_s_newest_guests_until_it_fits() {
    let node = node("stop-newest", None);
    let pilot = pilot(&node, "ob2");
    node.add_guest("other-lease", Some("zz"), &["--memory", "4G"]);
    node.add_guest("first", Some("ob2"), &["--memory", "400M"]);
    node.add_guest("second", Some("ob2"), &["--memory", "400M"]);
    node.add_guest("third", Some("ob2"), &["--memory", "400M"]);
    wait_for("the newest guest destroyed", || {
        (node.guest_state("third") == "shut-off").then_some(())
    });
    let r = wait_for("the violation recorded", || {
        node.record("ob2").filter(|r| r["last_error"].is_string())
    });
    let last = r["last_error"].as_str().unwrap();
    assert!(last.contains("(stopped third)"), "{last}");
    assert_eq!(node.guest_state("first"), "running");
    assert_eq!(node.guest_state("second"), "running");
    assert_eq!(
        node.guest_state("other-lease"),
        "running",
        "not the lease's"
    );
    pilot.signal(Signal::SIGTERM);
    let (code, err) = pilot.finish();
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("destroying the lease's newest guest") && err.contains("guest=third"),
        "{err}"
    );
    let r = node.record("ob2").unwrap();
    assert_eq!(r["state"], "unreserved");
}

#[test]
fn a_lease_that_starts_over_budget_is_caught_at_once() {
    let node = node("stop-newest", None);
    // The coordinator was quick: two guests before the pilot even holds the lease.
    node.add_guest("early-a", Some("ob3"), &["--memory", "700M"]);
    node.add_guest("early-b", Some("ob3"), &["--memory", "700M"]);
    let pilot = pilot(&node, "ob3");
    wait_for("the newest guest destroyed", || {
        (node.guest_state("early-b") == "shut-off").then_some(())
    });
    assert_eq!(node.guest_state("early-a"), "running");
    pilot.signal(Signal::SIGTERM);
    let (code, err) = pilot.finish();
    assert_eq!(code, 5, "{err}");
}
