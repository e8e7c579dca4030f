//! Batch-system faults on the test bed's real Slurm (tests/testbed/up.sh) that fake tools
//! cannot stand in for: slurmctld down when a pilot starts inside a real running job.
//! (`squeue`/`scontrol` missing, slow or printing garbage are in tests/lrm_faults.rs.)
//! Run with `VMPILOT_IT=slurm` (CI does); each test holds the cross-process Slurm lock.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::slurm::{Jobs, enabled, sbatch, serial, wait_running};
use common::{Node, stderr};

/// The pid file tests/testbed/up.sh's slurm.conf gives slurmctld.
const CTLD_PID_FILE: &str = "/run/vmpilot-testbed/slurmctld.pid";

fn ctld_pid() -> Option<i32> {
    std::fs::read_to_string(CTLD_PID_FILE)
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Run `program args` until it succeeds, at most `limit`.
fn wait_ok(limit: Duration, program: &str, args: &[&str]) -> bool {
    let until = Instant::now() + limit;
    loop {
        let ok = Command::new("timeout")
            .arg("10")
            .arg(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
        if ok || Instant::now() > until {
            return ok;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// slurmctld stopped for as long as this lives; dropping it starts slurmctld again exactly
/// as tests/testbed/up.sh does and waits until it answers, so later tests find Slurm up
/// even when this one fails.
struct CtldStopped;

impl CtldStopped {
    fn stop() -> CtldStopped {
        let pid = ctld_pid().expect("slurmctld pid file (is the test bed up?)");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let until = Instant::now() + Duration::from_secs(15);
        while alive(pid) {
            assert!(Instant::now() < until, "slurmctld {pid} does not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
        CtldStopped
    }
}

impl Drop for CtldStopped {
    fn drop(&mut self) {
        // up.sh: `(cd / && /usr/sbin/slurmctld)`; it daemonizes.
        let started = Command::new("/usr/sbin/slurmctld")
            .current_dir("/")
            .status()
            .is_ok_and(|s| s.success());
        let answers = started && wait_ok(Duration::from_secs(30), "scontrol", &["ping"]);
        let sinfo = answers && wait_ok(Duration::from_secs(30), "sinfo", &["-h", "-o", "%T"]);
        // A restarted slurmctld shows other slurmds (the test bed's netns node n2) as
        // `unknown` until they register again (~20 s): wait, so their tests find them idle.
        let registered = sinfo
            && wait_until(Duration::from_secs(60), || {
                !node_states().iter().any(|(_, s)| s.starts_with("unk"))
            });
        if !registered && !std::thread::panicking() {
            panic!(
                "slurmctld did not come back with every node registered ({:?}); run tests/testbed/up.sh",
                node_states()
            );
        }
    }
}

fn wait_until(limit: Duration, f: impl Fn() -> bool) -> bool {
    let until = Instant::now() + limit;
    while !f() {
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

/// Every node Slurm knows, with its state (`idle`, `mixed`, `unknown`, ...).
fn node_states() -> Vec<(String, String)> {
    let out = Command::new("timeout")
        .args(["10", "sinfo", "-h", "-N", "-o", "%N %T"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, s)| (n.to_string(), s.trim().to_string()))
        .collect()
}

/// The state Slurm gives the test bed's own node (named after the short host name).
fn node_state() -> String {
    let host = nix::unistd::gethostname().unwrap();
    let host = host.to_string_lossy();
    let short = host.split('.').next().unwrap().to_string();
    node_states()
        .into_iter()
        .find(|(n, _)| *n == short)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

/// A pilot started in a real running job while slurmctld is down cannot learn its job's
/// facts (walltime, memory): it must stop with a clear error naming the job and exit 3, with
/// no lease record and nothing changed on the host — then Slurm comes back as it was.
#[test]
fn slurmctld_down_when_the_pilot_starts_is_a_clear_error_that_changes_nothing() {
    if !enabled("slurm") {
        return;
    }
    let _serial = serial();
    let mut jobs = Jobs::default();
    let id = jobs.add(&sbatch(
        &[
            "-J",
            "vmpilot-faults-ctld-down",
            "-t",
            "5",
            "--mem",
            "512M",
            "-o",
            "/dev/null",
            "--wrap",
            "sleep 300",
        ],
        &[],
    ));
    wait_running(&id);
    let node = Node::new("[lrm]\ncommand_timeout = \"5s\"\n");
    let (out, took) = {
        let _down = CtldStopped::stop();
        let started = Instant::now();
        // The job's facts exactly as the pilot gets them inside the job.
        let out = node
            .cmd(&["run", "--memory", "256M", "--lease-id", "ctld"])
            .env("SLURM_JOB_ID", &id)
            .output()
            .unwrap();
        (out, started.elapsed())
    };
    let err = stderr(&out);
    eprintln!("pilot with slurmctld down ({took:?}):\n{err}");
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&id), "the job is named: {err}");
    assert!(
        err.contains("Unable to contact slurm controller") || err.contains("did not finish within"),
        "the cause is given: {err}"
    );
    assert!(err.contains("scontrol ping"), "says what to check: {err}");
    assert!(
        took < Duration::from_secs(15),
        "bounded by lrm.command_timeout: {took:?}"
    );
    assert!(node.record("ctld").is_none(), "a lease record was written");
    assert!(node.reservations().is_empty(), "{}", node.host());

    // Slurm is back and still knows the job; cancel it and wait for the node to be free.
    let state = common::slurm::job(&id);
    assert_eq!(
        state.get("JobState").map(String::as_str),
        Some("RUNNING"),
        "{state:?}"
    );
    drop(jobs);
    let until = Instant::now() + Duration::from_secs(60);
    while !matches!(node_state().as_str(), "idle" | "mixed") {
        assert!(
            Instant::now() < until,
            "node not usable after slurmctld came back: {}",
            node_state()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
