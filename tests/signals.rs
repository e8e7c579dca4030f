//! Every termination signal the pilot handles ends the lease cleanly, with the same outcome
//! as SIGTERM (tests/pilot.rs covers SIGTERM, SIGUSR1 and a double SIGTERM).

mod common;

use common::Node;
use nix::sys::signal::Signal;

#[test]
fn sigint_and_sighup_unreserve_like_sigterm() {
    for (sig, lease) in [(Signal::SIGINT, "int"), (Signal::SIGHUP, "hup")] {
        let node = Node::new("");
        let pilot = node.spawn_pilot(&["--memory", "1G", "--walltime", "5m", "--lease-id", lease]);
        node.wait_state(lease, "reserved");
        node.add_guest("g", Some(lease), &[]);
        pilot.signal(sig);
        let (code, err) = pilot.finish();
        assert_eq!(code, 5, "{sig}: {err}");
        let r = node.record(lease).unwrap();
        assert_eq!(r["state"], "unreserved");
        assert_eq!(r["end_reason"], "cancelled");
        assert_eq!(r["guests"][0]["fate"], "shut-down");
        let history = common::history(&r);
        assert!(history.iter().any(|h| h == "unreserving"));
        assert!(
            r["history"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["event"] == format!("terminate({})", sig.as_str())),
            "{r}"
        );
        assert!(node.reservations().is_empty());
    }
}
