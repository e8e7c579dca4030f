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

/// `recover` under a signal (systemd stopping the boot unit, an admin's Ctrl-C): the lease it
/// is finishing is finished, no other is started (left as it was, exit 6), and the next
/// `recover` takes over. A second signal ends it at once. Before, recover had no handler and
/// died wherever the signal found it.
#[test]
fn a_signal_lets_recover_finish_the_lease_it_is_on_and_start_no_other() {
    use std::process::Stdio;
    for double in [false, true] {
        let node = Node::new("");
        for lease in ["ra", "rb"] {
            let pilot =
                node.spawn_pilot(&["--memory", "1G", "--walltime", "5m", "--lease-id", lease]);
            node.wait_state(lease, "reserved");
            node.add_guest(
                &format!("g-{lease}"),
                Some(lease),
                &["--shutdown-delay", "2s"],
            );
            pilot.signal(Signal::SIGKILL);
            let _ = pilot.finish();
        }
        let recover = node
            .cmd(&["recover"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(recover.id() as i32);
        // Whichever lease it takes first: wait until that lease's guest is being stopped.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let first = loop {
            let host = node.host();
            let asked = host["guests"].as_array().unwrap().iter().find_map(|g| {
                (!g["shutdown_requested_ms"].is_null()).then(|| {
                    g["name"]
                        .as_str()
                        .unwrap()
                        .trim_start_matches("g-")
                        .to_string()
                })
            });
            if let Some(lease) = asked {
                break lease;
            }
            assert!(
                std::time::Instant::now() < until,
                "recover stopped no guest: {host}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let other = if first == "ra" { "rb" } else { "ra" };
        nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
        if double {
            std::thread::sleep(std::time::Duration::from_millis(100));
            nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
        }
        let out = recover.wait_with_output().unwrap();
        let stdout = common::stdout(&out);
        if double {
            assert_eq!(
                out.status.code(),
                Some(1),
                "the second signal ends it at once: {stdout}"
            );
        } else {
            assert_eq!(
                out.status.code(),
                Some(6),
                "{stdout}{}",
                common::stderr(&out)
            );
            assert!(stdout.contains("interrupted by a signal"), "{stdout}");
            assert_eq!(
                node.record(&first).unwrap()["state"],
                "unreserved",
                "{stdout}"
            );
        }
        assert_eq!(
            node.record(other).unwrap()["state"],
            "reserved",
            "not started: {stdout}"
        );
        let out = node.run(&["recover"]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        for lease in ["ra", "rb"] {
            assert_eq!(node.record(lease).unwrap()["state"], "unreserved");
        }
        assert!(node.reservations().is_empty());
    }
}
