//! `vmpilot kill-all`, the emergency brake: real pilots, real signals, the simulated host.

mod common;

use common::coordinator::{Mode, TestCoordinator};
use common::{Node, bin, stderr, stdout};
use std::process::Command;

const SECRET: &str = "kill-all-secret-0123456789";

fn node_with_coordinator(url: &str) -> Node {
    Node::with_coordinator(url, SECRET, "")
}

#[test]
fn fast_kill_all_stops_every_pilot_and_owned_guest_and_restores_the_node() {
    let coordinator = TestCoordinator::start(SECRET, Mode::Accept);
    let node = node_with_coordinator(&coordinator.url);
    let a = node.spawn_pilot(&[
        "--memory",
        "1G",
        "--walltime",
        "10m",
        "--grace",
        "60s",
        "--lease-id",
        "ka",
    ]);
    let b = node.spawn_pilot(&[
        "--memory",
        "1G",
        "--walltime",
        "10m",
        "--grace",
        "60s",
        "--lease-id",
        "kb",
    ]);
    node.wait_state("ka", "reserved");
    node.wait_state("kb", "reserved");
    node.add_guest("ka-slow", Some("ka"), &["--shutdown-delay", "10m"]);
    node.add_guest("kb-stubborn", Some("kb"), &["--ignore-shutdown"]);
    node.add_guest("bystander", None, &[]);
    let out = node.run(&[
        "kill-all",
        "--yes",
        "--level",
        "fast",
        "--reason",
        "rack on fire",
    ]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(a.finish().0, 5, "ended by signal, restored");
    assert_eq!(b.finish().0, 5);
    for lease in ["ka", "kb"] {
        let r = node.record(lease).unwrap();
        assert_eq!(r["state"], "unreserved", "{r}");
        assert_eq!(r["end_reason"], "admin");
        assert_eq!(
            r["guests"][0]["fate"], "destroyed",
            "fast: no ACPI wait: {r}"
        );
    }
    assert_eq!(
        node.guest_state("bystander"),
        "running",
        "unowned guests are never touched"
    );
    assert!(node.reservations().is_empty());
    assert!(!node.state_dir().join("kill-request.json").exists());
    coordinator.with_log(|l| {
        let killed: Vec<_> = l.applied.iter().filter(|e| e["type"] == "killed").collect();
        assert_eq!(killed.len(), 2, "{:?}", l.applied);
        assert!(
            killed
                .iter()
                .all(|k| k["why"] == "rack on fire" && k["by"] == "root")
        );
    });
}

#[test]
fn graceful_kill_all_gives_guests_their_acpi_shutdown() {
    let node = Node::new("");
    let pilot = node.spawn_pilot(&["--memory", "1G", "--walltime", "10m", "--lease-id", "kg"]);
    node.wait_state("kg", "reserved");
    node.add_guest("polite", Some("kg"), &["--shutdown-delay", "300ms"]);
    let out = node.run(&["kill-all", "--yes", "--graceful"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pilot.finish().0, 5);
    let r = node.record("kg").unwrap();
    assert_eq!(r["guests"][0]["fate"], "shut-down");
    assert_eq!(r["end_reason"], "admin");
}

#[test]
fn kill_all_finishes_the_lease_of_a_pilot_that_is_already_dead() {
    let node = Node::new("");
    let pilot = node.spawn_pilot(&["--memory", "1G", "--walltime", "10m", "--lease-id", "kd"]);
    node.wait_state("kd", "reserved");
    pilot.signal(nix::sys::signal::Signal::SIGKILL);
    pilot.finish();
    let out = node.run(&["kill-all", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("kd"),
        "summary lists the lease: {}",
        stdout(&out)
    );
    assert_eq!(node.record("kd").unwrap()["state"], "unreserved");
    assert_eq!(node.record("kd").unwrap()["end_reason"], "admin");
    assert!(node.reservations().is_empty());
}

#[test]
fn kill_all_while_a_pilot_is_mid_reserve_rolls_it_back() {
    let node = Node::new("");
    node.fault("reserve", "hang", 1, "1500ms");
    let pilot = node.spawn_pilot(&["--memory", "1G", "--walltime", "10m", "--lease-id", "km"]);
    node.wait_state("km", "reserving");
    let out = node.run(&["kill-all", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    pilot.finish();
    let r = node.record("km").unwrap();
    assert_eq!(r["state"], "unreserved", "{r}");
    assert!(node.reservations().is_empty(), "{:?}", node.host());
}

#[test]
fn kill_all_with_nothing_running_is_a_no_op_and_idempotent() {
    let node = Node::new("");
    for _ in 0..2 {
        let out = node.run(&["kill-all", "--yes"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

#[test]
fn kill_all_refuses_to_run_as_a_normal_user() {
    // setpriv (util-linux) drops to nobody; the refusal comes before any file is read.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            bin(),
            "kill-all",
            "--yes",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("must run as root"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn kill_all_without_a_terminal_needs_yes_and_does_nothing_otherwise() {
    let node = Node::new("");
    let pilot = node.spawn_pilot(&["--memory", "1G", "--walltime", "10m", "--lease-id", "ky"]);
    node.wait_state("ky", "reserved");
    let out = node.run(&["kill-all"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert_eq!(
        node.record("ky").unwrap()["state"],
        "reserved",
        "nothing was done"
    );
    pilot.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(pilot.finish().0, 5);
}

/// Issue #12, item 3: kill-all is a fence. A pilot started while a kill-all runs refuses
/// (exit 7) and changes nothing; once kill-all has ended the fence is gone and pilots start
/// again. On vmpilot 0.1 the late pilot reserved the node, and kill-all, which had listed
/// the pilots once, finished its lease behind its back and exited 0.
#[test]
fn a_pilot_started_while_kill_all_runs_refuses_and_the_fence_lifts_when_it_ends() {
    use std::time::{Duration, Instant};
    let coordinator = TestCoordinator::start(SECRET, Mode::Accept);
    let node = node_with_coordinator(&coordinator.url);
    let first = node.spawn_pilot(&[
        "--memory",
        "1G",
        "--walltime",
        "10m",
        "--grace",
        "4s",
        "--lease-id",
        "fence-a",
    ]);
    node.wait_state("fence-a", "reserved");
    // A guest that ignores ACPI keeps the graceful kill-all busy for the whole grace.
    node.add_guest("fence-stubborn", Some("fence-a"), &["--ignore-shutdown"]);
    let kill = common::Pilot {
        child: node
            .cmd(&["kill-all", "--yes", "--graceful", "--reason", "maintenance"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    };
    let request = node.state_dir().join("kill-request.json");
    let until = Instant::now() + Duration::from_secs(10);
    while !request.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(request.exists(), "kill-all never raised its fence");
    let late = node.run(&[
        "run",
        "--memory",
        "1G",
        "--walltime",
        "10m",
        "--lease-id",
        "fence-b",
    ]);
    assert_eq!(late.status.code(), Some(7), "{}", stderr(&late));
    assert!(
        stderr(&late).contains("kill-all") && stderr(&late).contains("maintenance"),
        "the refusal says who is in the way and why: {}",
        stderr(&late)
    );
    assert!(
        node.record("fence-b").is_none(),
        "the refused pilot wrote a record"
    );
    assert_eq!(
        node.reservations(),
        ["fence-a"],
        "the refused pilot touched the host"
    );
    let (code, err) = kill.finish();
    assert_eq!(code, 0, "{err}");
    assert_eq!(first.finish().0, 5);
    assert!(node.reservations().is_empty());
    assert!(!request.exists(), "the fence outlived its kill-all");
    assert!(coordinator.types_for("fence-b").is_empty());
    // Lifted: the pool may submit again.
    let again = node.run_short_lease("fence-c");
    assert!(again.status.success(), "{}", stderr(&again));
}

/// Issue #12, item 3: a kill request left behind by a kill-all that died (SIGKILL, node
/// crash) fences nothing: its issuer is gone, so pilots start. Otherwise one crashed
/// kill-all would keep the node out of the cloud until an admin found the file.
#[test]
fn a_kill_request_left_by_a_dead_kill_all_fences_nothing() {
    let node = Node::new("");
    std::fs::create_dir_all(node.state_dir()).unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    std::fs::write(
        node.state_dir().join("kill-request.json"),
        format!(
            r#"{{"by":"root","why":"crashed","level":"fast","at":"2026-01-01T00:00:00Z","issuer":{{"pid":{pid},"start_time":0,"start_ticks":1,"boot_id":"{}"}}}}"#,
            boot_id.trim()
        ),
    )
    .unwrap();
    let out = node.run_short_lease("after-crash");
    assert!(out.status.success(), "{}", stderr(&out));
}

/// This process's start in clock ticks since boot (`/proc/self/stat` field 22), as a
/// kill request names its issuer.
fn own_start_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    // Fields from 3 (state) on; field 22 is the 20th of them.
    after_comm.split(' ').nth(19).unwrap().parse().unwrap()
}

/// Issue #12, item 3: the fence is checked again once the pilot holds the node lock. A
/// pilot that passed the first check while waiting for the node lock, and finds a kill-all
/// in force when it gets the lock, refuses (exit 7) without touching the host. (The kill
/// request here names this test process as its issuer, so it is in force while the test
/// runs.)
#[test]
fn a_kill_all_that_begins_while_a_pilot_waits_for_the_node_lock_still_fences_it() {
    use std::time::{Duration, Instant};
    let node = Node::new("");
    let lock = node.hold_node_lock();
    let pilot = node.spawn_lease("waits", "5m", None);
    // The record exists: the first fence check has passed; the pilot waits for the lock.
    let until = Instant::now() + Duration::from_secs(10);
    while node.record("waits").is_none() {
        assert!(Instant::now() < until, "the pilot never wrote its record");
        std::thread::sleep(Duration::from_millis(20));
    }
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    std::fs::write(
        node.state_dir().join("kill-request.json"),
        format!(
            r#"{{"by":"root","why":"late brake","level":"fast","at":"2026-01-01T00:00:00Z","issuer":{{"pid":{},"start_time":0,"start_ticks":{},"boot_id":"{}"}}}}"#,
            std::process::id(),
            own_start_ticks(),
            boot_id.trim()
        ),
    )
    .unwrap();
    drop(lock);
    let (code, err) = pilot.finish();
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("late brake"), "{err}");
    let r = node.record("waits").unwrap();
    assert_eq!(r["state"], "unreserved", "{r}");
    assert_eq!(r["end_reason"], "admin", "{r}");
    assert!(
        !common::history(&r).iter().any(|s| s == "reserving"),
        "the host was touched: {r}"
    );
    assert!(node.reservations().is_empty());
}

/// A cgroup-v1 freezer group that holds a process frozen. A frozen task does not act on
/// SIGKILL until it is thawed (it waits in the kernel, in `D` state), which is the
/// "pilot stuck in the kernel" that kill-all must report, not paper over. Thawed and
/// removed on drop.
struct Frozen {
    dir: std::path::PathBuf,
}

impl Frozen {
    const ROOT: &str = "/sys/fs/cgroup/freezer";

    /// None where this machine has no writable cgroup-v1 freezer (cgroup v2 lets a fatal
    /// signal through a frozen group, so it cannot stand in).
    fn new(pid: nix::unistd::Pid) -> Option<Frozen> {
        let dir = std::path::Path::new(Self::ROOT).join(format!("vmpilot-test-{}", pid));
        std::fs::create_dir(&dir).ok()?;
        let group = Frozen { dir };
        std::fs::write(group.dir.join("cgroup.procs"), pid.to_string()).ok()?;
        std::fs::write(group.dir.join("freezer.state"), "FROZEN").ok()?;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_to_string(group.dir.join("freezer.state"))
            .ok()?
            .trim()
            != "FROZEN"
        {
            assert!(std::time::Instant::now() < until, "freezing did not finish");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(group)
    }

    fn thaw(&self) {
        std::fs::write(self.dir.join("freezer.state"), "THAWED").unwrap();
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("freezer.state"), "THAWED");
        // The group empties once its process has died.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

#[test]
fn a_pilot_that_survives_sigkill_is_reported_not_stopped_and_its_lease_is_left_to_it() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: freezing a process needs root");
        return;
    }
    let coordinator = TestCoordinator::start(SECRET, Mode::Accept);
    let node = node_with_coordinator(&coordinator.url);
    let pilot = node.spawn_pilot(&["--memory", "1G", "--walltime", "10m", "--lease-id", "kz"]);
    node.wait_state("kz", "reserved");
    node.add_guest("kz-guest", Some("kz"), &[]);
    let Some(frozen) = Frozen::new(pilot.pid()) else {
        eprintln!("skipped: no writable cgroup-v1 freezer at {}", Frozen::ROOT);
        return;
    };
    let out = node.run(&["kill-all", "--yes", "--level", "fast"]);
    let summary = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(4),
        "a pilot that would not die is a failure:\n{summary}\n{}",
        stderr(&out)
    );
    assert!(
        summary.contains("NOT STOPPED") && summary.contains("kz"),
        "the summary names the survivor: {summary}"
    );
    // kill-all never finished the lease of a pilot that still lives: the record, the
    // guest and the share are the pilot's, and nothing reported an end.
    assert_eq!(node.record("kz").unwrap()["state"], "reserved");
    assert_eq!(node.guest_state("kz-guest"), "running");
    assert_eq!(node.reservations().len(), 1, "{}", node.host());
    coordinator.with_log(|l| {
        assert!(
            !l.applied.iter().any(|e| e["lease_id"] == "kz"
                && ["unreserved", "failed", "recovered"]
                    .contains(&e["type"].as_str().unwrap_or(""))),
            "no end reported while the pilot lives: {:?}",
            l.applied
        );
    });
    // Thawed, the pilot dies of the SIGKILL it holds; now kill-all (or recover) finishes
    // its lease.
    frozen.thaw();
    assert_eq!(pilot.finish().0, 137);
    let out = node.run(&["kill-all", "--yes", "--level", "fast"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(node.record("kz").unwrap()["state"], "unreserved");
    assert_ne!(node.guest_state("kz-guest"), "running");
    assert!(node.reservations().is_empty());
}
