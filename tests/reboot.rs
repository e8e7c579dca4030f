//! The real reboot test: a node with systemd as PID 1 (Debian in systemd-nspawn, booted by
//! tests/testbed/node-reboot.sh) carrying the project's units, the slurmd drop-in, a stand-in
//! `slurmd.service` and the `vmpilot` binary under test, with the simulated host and its state
//! directory on the node's disk. Three boots:
//!
//! 1. after a crash: lease records left by real pilots on the node's disk (SIGKILLed while
//!    `reserved`, SIGKILLed mid-unreserve at a crash point, one that ended normally) —
//!    `vmpilot-recover.service` must finish before slurmd starts, finish the open leases as
//!    `pilot-lost`, leave the finished one alone and restore the simulated host;
//! 2. an orderly `systemctl reboot` from inside with a lease running: `vmpilot-drain.service`
//!    must end it gracefully (`unreserved` by the admin kill, not `pilot-lost`), and the next
//!    boot (new boot id) runs recovery before slurmd again;
//! 3. power loss (the nspawn process and the node's PID 1 SIGKILLed) with a lease running:
//!    the next boot's recovery finishes it as `pilot-lost` before slurmd starts.
//!
//! The pilots inside the node run in transient units ordered like batch jobs under slurmd
//! (stopped only after the drain's ExecStop) and deaf to systemd's stop signal
//! (`KillSignal=SIGCONT`): only the drain can end them gracefully; without it they are
//! SIGKILLed at shutdown and the lease shows up as `pilot-lost`.
//!
//! Root, debootstrap'd rootfs (cached) — runs only when `VMPILOT_IT` contains `nspawn`.
#![cfg(feature = "fault-injection")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Node, history, history_events, stderr, stdout};
use nix::sys::signal::Signal;

const NODEFS: &str = "/var/cache/vmpilot-testbed/nodefs";

fn enabled() -> bool {
    common::it_enabled(
        "nspawn",
        &format!(
            "the reboot test boots a systemd-nspawn node as root (debootstrap'd rootfs in {NODEFS}); set VMPILOT_IT=nspawn (CI does) to run it"
        ),
    )
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/testbed/node-reboot.sh")
}

fn show(out: &Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

/// The booted node; powered off (and its boot loop ended) when dropped.
struct NspawnNode {
    run: tempfile::TempDir,
}

impl NspawnNode {
    fn script(&self, args: &[&str]) -> Output {
        let out = Command::new("bash")
            .arg(script())
            .args(args)
            .env("NODEFS", NODEFS)
            .env("STATE", self.run.path())
            .output()
            .expect("run node-reboot.sh");
        eprintln!("node-reboot.sh {} -> {}", args.join(" "), out.status);
        out
    }

    /// Wait for the node to finish booting; its boot id.
    fn wait_booted(&self) -> String {
        let out = self.script(&["wait"]);
        assert!(
            out.status.success(),
            "node did not boot: {}\n{}",
            show(&out),
            self.console()
        );
        stdout(&out).trim().to_string()
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.run.path().join("console.log")).unwrap_or_default()
    }

    /// Run `sh -c cmd` inside the node (all of its namespaces).
    fn sh(&self, cmd: &str) -> Output {
        let pid = self.script(&["pid"]);
        assert!(pid.status.success(), "node not running\n{}", self.console());
        Command::new("timeout")
            .args([
                "30",
                "nsenter",
                "-t",
                stdout(&pid).trim(),
                "-a",
                "sh",
                "-c",
                cmd,
            ])
            .output()
            .expect("nsenter")
    }

    fn prop(&self, unit: &str, prop: &str) -> String {
        let out = self.sh(&format!("systemctl show -P {prop} {unit}"));
        assert!(out.status.success(), "{}", show(&out));
        stdout(&out).trim().to_string()
    }

    /// This boot: recovery succeeded and finished before the batch daemon's process started.
    fn assert_recover_before_slurmd(&self, boot: &str) {
        let recovered: u64 = self
            .prop("vmpilot-recover.service", "ActiveEnterTimestampMonotonic")
            .parse()
            .unwrap();
        let slurmd: u64 = self
            .prop("slurmd.service", "ExecMainStartTimestampMonotonic")
            .parse()
            .unwrap();
        let result = self.prop("vmpilot-recover.service", "Result");
        let journal = self.journal();
        assert_eq!(result, "success", "{boot}: recovery failed\n{journal}");
        assert!(
            recovered > 0 && slurmd > 0 && recovered <= slurmd,
            "{boot}: recovery done at {recovered} us, slurmd started at {slurmd} us\n{journal}"
        );
    }

    fn journal(&self) -> String {
        show(&self.sh(
            "journalctl -b --no-pager -o short-monotonic -u vmpilot-recover -u vmpilot-drain -u slurmd -u 'pilot-*'",
        ))
    }

    /// Start `vmpilot run` for `lease` inside the node, in a transient unit stopped only
    /// after the drain and deaf to systemd's stop signal.
    fn start_pilot(&self, lease: &str) {
        let out = self.sh(&format!(
            "systemd-run --unit=pilot-{lease} -p After=slurmd.service -p Before=vmpilot-drain.service \
             -p KillSignal=SIGCONT -p SendSIGHUP=no -p TimeoutStopSec=10s \
             /usr/bin/vmpilot run --memory 1G --cpus 1 --walltime 10m --grace 2s --lease-id {lease}"
        ));
        assert!(out.status.success(), "{}", show(&out));
    }
}

impl Drop for NspawnNode {
    fn drop(&mut self) {
        let _ = self.script(&["stop"]);
    }
}

/// Wait for a boot whose id is not in `old`; its id.
fn wait_new_boot(node: &NspawnNode, old: &[String]) -> String {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let id = node.wait_booted();
        if !old.contains(&id) {
            return id;
        }
        assert!(
            Instant::now() < until,
            "no new boot after {old:?}\n{}",
            node.console()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Recovery finished the lease: `pilot-lost` in its history, then restored. `reason` is the
/// end reason: `pilot-lost`, or the one the pilot had already recorded when it died.
fn assert_lost_and_finished(host: &Node, lease: &str, reason: &str, journal: &str) {
    let r = host.record(lease).unwrap();
    assert_eq!(r["state"], "unreserved", "{lease}: {r}\n{journal}");
    assert_eq!(r["end_reason"], reason, "{lease}: {r}\n{journal}");
    assert!(
        history_events(&r).contains(&"pilot-lost".to_string()),
        "{lease}: not finished by recovery: {r}\n{journal}"
    );
    assert_eq!(history(&r).last().map(String::as_str), Some("unreserved"));
}

#[test]
fn node_reboots_recover_before_slurmd_and_drain_on_orderly_shutdown() {
    if !enabled() {
        return;
    }
    let prep = Command::new("bash")
        .arg(script())
        .arg("prepare")
        .env("NODEFS", NODEFS)
        .output()
        .unwrap();
    assert!(prep.status.success(), "prepare: {}", show(&prep));
    let node = NspawnNode {
        run: tempfile::tempdir().unwrap(),
    };
    let out = node.script(&["install", common::bin()]);
    assert!(out.status.success(), "install: {}", show(&out));

    // The node's disk, driven from the host with the same simulated host before it boots.
    let host = Node::new("");
    // vmpilot refuses a state directory that is a symlink (docs/security.md): its config
    // names the real directory; the symlink only serves this test's own reads.
    let real_state = Path::new(NODEFS).join("var/lib/vmpilot");
    std::os::unix::fs::symlink(&real_state, host.state_dir()).unwrap();
    let text = std::fs::read_to_string(&host.config).unwrap().replace(
        &format!("state_dir = \"{}\"", host.state_dir().display()),
        &format!("state_dir = \"{}\"", real_state.display()),
    );
    std::fs::write(&host.config, text).unwrap();

    // ---- the previous boot crashed with leases in several states
    host.add_guest("bystander", None, &[]);
    host.add_guest("g-lost-reserved", Some("lost-reserved"), &[]);
    let p = host.spawn_lease("lost-reserved", "10m", None);
    host.wait_state("lost-reserved", "reserved");
    p.signal(Signal::SIGKILL);
    assert_eq!(p.finish().0, 128 + 9);
    host.add_guest("g-lost-unreserving", Some("lost-unreserving"), &[]);
    let (code, err) = host
        .spawn_lease("lost-unreserving", "2s", Some("guests-stopped"))
        .finish();
    assert_eq!(code, 128 + 9, "crash point never reached:\n{err}");
    let (code, err) = host.spawn_lease("done", "2s", None).finish();
    assert_eq!(code, 0, "{err}");
    assert_eq!(host.record("lost-reserved").unwrap()["state"], "reserved");
    assert_eq!(
        host.record("lost-unreserving").unwrap()["state"],
        "unreserving"
    );
    assert_eq!(host.reservations().len(), 2, "{:?}", host.host());
    let done_before = std::fs::read(host.record_path("done")).unwrap();

    // ---- boot 1
    let out = node.script(&["start"]);
    assert!(out.status.success(), "{}", show(&out));
    let boot1 = node.wait_booted();
    node.assert_recover_before_slurmd("boot 1");
    let journal = node.journal();
    assert_lost_and_finished(&host, "lost-reserved", "pilot-lost", &journal);
    // It died while ending at its deadline: the first reason stands.
    assert_lost_and_finished(&host, "lost-unreserving", "deadline", &journal);
    assert_eq!(host.guest_state("g-lost-reserved"), "shut-off");
    assert_eq!(host.guest_state("bystander"), "running");
    assert_eq!(
        std::fs::read(host.record_path("done")).unwrap(),
        done_before,
        "a finished lease was rewritten"
    );
    assert!(host.reservations().is_empty(), "{:?}", host.host());

    // ---- orderly reboot with a lease running: the drain ends it
    node.start_pilot("orderly");
    host.wait_state("orderly", "reserved");
    let out = node.sh("systemctl reboot");
    assert!(out.status.success(), "{}", show(&out));
    let boot2 = wait_new_boot(&node, std::slice::from_ref(&boot1));
    node.assert_recover_before_slurmd("boot 2");
    let r = host.record("orderly").unwrap();
    let log = format!(
        "{r}\nthis boot:\n{}\nconsole:\n{}",
        node.journal(),
        node.console()
    );
    assert_eq!(r["state"], "unreserved", "{log}");
    assert_eq!(r["end_reason"], "admin", "not ended by the drain: {log}");
    assert!(
        !history_events(&r).contains(&"pilot-lost".to_string()),
        "the drain did not end the lease gracefully: {log}"
    );
    assert!(host.reservations().is_empty(), "{:?}", host.host());

    // ---- power loss with a lease running
    node.start_pilot("powerloss");
    host.wait_state("powerloss", "reserved");
    let out = node.script(&["powerloss"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        host.record("powerloss").unwrap()["state"],
        "reserved",
        "nothing may finish the lease between the power loss and the next boot"
    );
    let out = node.script(&["start"]);
    assert!(out.status.success(), "{}", show(&out));
    let boot3 = wait_new_boot(&node, &[boot1.clone(), boot2.clone()]);
    node.assert_recover_before_slurmd("boot 3");
    assert_lost_and_finished(&host, "powerloss", "pilot-lost", &node.journal());
    assert!(host.reservations().is_empty(), "{:?}", host.host());
    assert_eq!(host.guest_state("bystander"), "running");
    eprintln!("boots: {boot1} -> {boot2} (orderly) -> {boot3} (power loss)");
}
