//! The Prometheus textfile is rewritten on every transition by the pilot and by `recover`.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Node, stderr};

#[test]
fn the_textfile_follows_the_lease_and_counts_failures() {
    let node = Node::new("");
    let prom = node.dir.path().join("textfile").join("vmpilot.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    let text = std::fs::read_to_string(&node.config).unwrap();
    std::fs::write(
        &node.config,
        format!("{text}\n[metrics]\ntextfile = \"{}\"\n", prom.display()),
    )
    .unwrap();

    let pilot = node.spawn_pilot(&["--memory", "1G", "--walltime", "5m", "--lease-id", "m1"]);
    node.wait_state("m1", "reserved");
    // The file is rewritten just after the record is saved: wait for it to catch up.
    let reserved = |t: &str| {
        t.lines().any(|l| {
            l.starts_with("vmpilot_lease_state{")
                && l.contains("state=\"reserved\"")
                && l.ends_with(" 1")
        })
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut during = std::fs::read_to_string(&prom).unwrap_or_default();
    while !reserved(&during) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(20));
        during = std::fs::read_to_string(&prom).unwrap_or_default();
    }
    assert!(
        during.contains("vmpilot_node_hosting{node=\"testnode\"} 1"),
        "{during}"
    );
    assert!(
        during.lines().any(|l| l.starts_with("vmpilot_lease_state{")
            && l.contains("lease=\"m1\"")
            && l.contains("state=\"reserved\"")
            && l.ends_with(" 1")),
        "{during}"
    );
    pilot.signal(nix::sys::signal::Signal::SIGKILL);
    pilot.finish();
    let out = node.run(&["recover"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let after = std::fs::read_to_string(&prom).unwrap();
    assert!(
        after.contains("vmpilot_node_hosting{node=\"testnode\"} 0"),
        "{after}"
    );
    assert!(
        after
            .lines()
            .any(|l| l.starts_with("vmpilot_failures_total{")
                && l.contains("kind=\"pilot-lost\"")
                && l.ends_with(" 1")),
        "{after}"
    );
    let mode = std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "node_exporter must be able to read it");
}

#[test]
fn a_relative_or_non_prom_textfile_is_a_config_error() {
    for bad in ["metrics.prom", "/var/lib/node_exporter/vmpilot.txt"] {
        let node = Node::new(&format!("\n[metrics]\ntextfile = \"{bad}\"\n"));
        let out = node.run(&["check-config"]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("metrics.textfile"),
            "{}",
            stderr(&out)
        );
    }
}
