//! Root commands over a state directory the pilot account owns (issue #13, part 1).
//!
//! Sites run pilots as a service account that owns the state directory, while `recover`,
//! `status` and `kill-all` run as root over it. Each test here plays that account: it
//! leaves a real lease behind (a real pilot, SIGKILLed), then plants what the account
//! could plant (symlinks, FIFOs, huge files, crafted records and ledgers), gives the whole
//! directory to `nobody`, and runs the root commands. Victims are stand-in files in the
//! test's own temp dir. Needs root (skipped otherwise).

mod common;

use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::coordinator::{Mode, TestCoordinator};
use common::{Node, stderr, stdout};
use nix::sys::signal::Signal;
use serde_json::Value;

const SECRET: &str = "trust-state-dir-secret-0123456789";
const PRECIOUS: &str = "precious\n";

fn root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: playing root against the pilot account needs root");
    }
    root
}

fn nobody() -> (nix::unistd::Uid, nix::unistd::Gid) {
    let u = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    (u.uid, u.gid)
}

/// Give `dir` and everything in it (symlinks themselves, not their targets) to nobody:
/// what the pilot account owns.
fn give_to_nobody(dir: &Path) {
    let (uid, gid) = nobody();
    std::os::unix::fs::lchown(dir, Some(uid.as_raw()), Some(gid.as_raw())).unwrap();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            give_to_nobody(&path);
        } else {
            std::os::unix::fs::lchown(&path, Some(uid.as_raw()), Some(gid.as_raw())).unwrap();
        }
    }
}

/// A victim file outside the state directory.
fn victim(node: &Node, name: &str) -> PathBuf {
    let p = node.dir.path().join(name);
    std::fs::write(&p, PRECIOUS).unwrap();
    p
}

fn untouched(p: &Path) {
    assert_eq!(
        std::fs::read_to_string(p).unwrap(),
        PRECIOUS,
        "{} was written through the state directory",
        p.display()
    );
}

/// A lease left `reserved` by a SIGKILLed pilot: work for `recover` and `kill-all`.
fn abandoned_lease(node: &Node, lease: &str) {
    let pilot = node.spawn_lease(lease, "10m", None);
    node.wait_state(lease, "reserved");
    pilot.signal(Signal::SIGKILL);
    pilot.finish();
}

/// Run a root command with a bound: a hang is the failure this file looks for.
fn run_bounded(node: &Node, args: &[&str]) -> std::process::Output {
    let mut child = node
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "`vmpilot {args:?}` hung (killed after 60 s): {}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn replace_with_symlink(link: &Path, target: &Path) {
    let _ = std::fs::remove_file(link);
    symlink(target, link).unwrap();
}

#[test]
fn symlinked_lock_and_log_files_never_make_root_write_elsewhere() {
    if !root() {
        return;
    }
    let node = Node::new("");
    abandoned_lease(&node, "sym");
    let state = node.state_dir();
    let lock_victim = victim(&node, "lock-victim");
    let log_victim = victim(&node, "log-victim");
    let lease_lock_victim = victim(&node, "lease-lock-victim");
    replace_with_symlink(&state.join("node.lock"), &lock_victim);
    replace_with_symlink(&state.join("vmpilot.log"), &log_victim);
    replace_with_symlink(&state.join("leases/sym.lock"), &lease_lock_victim);
    give_to_nobody(&state);
    let out = run_bounded(&node, &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    untouched(&lock_victim);
    for args in [&["recover"][..], &["kill-all", "--yes", "--level", "fast"]] {
        let out = run_bounded(&node, args);
        untouched(&lock_victim);
        untouched(&log_victim);
        untouched(&lease_lock_victim);
        let err = stderr(&out);
        assert!(
            err.contains("not logging to") && err.contains("symlink"),
            "`{args:?}` says why it does not log: {err}"
        );
    }
    // recover refused the lease it could not lock safely, and said so: it was not
    // finished behind a lock it could not take.
    let out = run_bounded(&node, &["recover"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        format!("{}{}", stdout(&out), stderr(&out)).contains("symlink"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(node.record("sym").unwrap()["state"], "reserved");
}

#[test]
fn a_record_name_with_newlines_forges_no_log_line_and_is_not_read() {
    if !root() {
        return;
    }
    let node = Node::new("");
    abandoned_lease(&node, "nl");
    let state = node.state_dir();
    let record = std::fs::read(node.record_path("nl")).unwrap();
    std::fs::write(
        state
            .join("leases")
            .join("x\nFORGED: root ran rm -rf everything\n.json"),
        &record,
    )
    .unwrap();
    give_to_nobody(&state);
    let out = run_bounded(&node, &["recover"]);
    let log = std::fs::read_to_string(state.join("vmpilot.log")).unwrap();
    for text in [&log, &stderr(&out), &stdout(&out)] {
        assert!(
            !text.lines().any(|l| l.starts_with("FORGED")),
            "a line was forged:\n{text}"
        );
    }
    assert!(
        stdout(&out).contains("not a lease record") || stderr(&out).contains("not a lease record"),
        "the stray entry is reported: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    // The real lease was still finished.
    assert_eq!(node.record("nl").unwrap()["state"], "unreserved");
}

/// The start of process `pid` in clock ticks since boot (`/proc/PID/stat` field 22).
fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(19).unwrap().parse().unwrap()
}

#[test]
fn kill_all_never_signals_a_process_that_a_record_names() {
    if !root() {
        return;
    }
    let node = Node::new("");
    abandoned_lease(&node, "imp");
    // A root process, named in the record with its real, world-readable identity.
    let mut bystander = Command::new("sleep").arg("120").spawn().unwrap();
    let path = node.record_path("imp");
    let mut record: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    record["pilot"]["pid"] = bystander.id().into();
    record["pilot"]["start_ticks"] = start_ticks(bystander.id()).into();
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
    give_to_nobody(&node.state_dir());
    let status = run_bounded(&node, &["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["leases"][0]["pilot_alive"], false,
        "a process that is no pilot is not shown as one: {status}"
    );
    let out = run_bounded(&node, &["kill-all", "--yes", "--level", "fast"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "kill-all signalled a process a record named"
    );
    // It is no pilot, so the lease was finished like any abandoned one.
    assert_eq!(node.record("imp").unwrap()["state"], "unreserved");
    assert!(node.reservations().is_empty());
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[test]
fn fifos_and_huge_files_neither_hang_nor_exhaust_root_commands() {
    if !root() {
        return;
    }
    let coordinator = TestCoordinator::start(SECRET, Mode::Accept);
    let node = Node::with_coordinator(&coordinator.url, SECRET, "timeout = \"1s\"\n");
    abandoned_lease(&node, "ok");
    let state = node.state_dir();
    let fifo = |p: PathBuf| nix::unistd::mkfifo(&p, nix::sys::stat::Mode::S_IRWXU).unwrap();
    fifo(state.join("leases/fifo.json"));
    fifo(state.join("kill-request.json"));
    std::fs::create_dir_all(state.join("spool")).unwrap();
    fifo(state.join("spool/00000000000000000000000-000000-fifo.json"));
    let huge = std::fs::File::create(state.join("leases/huge.json")).unwrap();
    huge.set_len(1 << 40).unwrap();
    give_to_nobody(&state);
    for args in [&["status"][..], &["recover"]] {
        let out = run_bounded(&node, args);
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            text.contains("FIFO") && text.contains("more than"),
            "`{args:?}` says what it refused:\n{text}"
        );
    }
    // The real lease was finished beside them, its end delivered; the FIFO event was set
    // aside, never sent.
    assert_eq!(node.record("ok").unwrap()["state"], "unreserved");
    assert!(node.reservations().is_empty());
    assert!(
        state
            .join("spool/rejected/00000000000000000000000-000000-fifo.json")
            .exists()
    );
    // A FIFO kill request fences nothing: a new pilot starts.
    let out = node.run_short_lease("after");
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_symlinked_spool_entry_is_never_posted() {
    if !root() {
        return;
    }
    let coordinator = TestCoordinator::start(SECRET, Mode::Accept);
    let node = Node::with_coordinator(&coordinator.url, SECRET, "timeout = \"1s\"\n");
    abandoned_lease(&node, "sp");
    let state = node.state_dir();
    let secret = node.dir.path().join("root-only-secret");
    std::fs::write(&secret, "{\"TOPSECRET\": true}").unwrap();
    let name = "00000000000000000000000-000000-leak.json";
    symlink(&secret, state.join("spool").join(name)).unwrap();
    give_to_nobody(&state);
    let out = run_bounded(&node, &["recover"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    coordinator.with_log(|l| {
        assert!(
            !format!("{:?}", l.applied).contains("TOPSECRET"),
            "root posted a file the spool entry pointed at"
        );
    });
    assert!(
        std::fs::symlink_metadata(state.join("spool/rejected").join(name))
            .unwrap()
            .file_type()
            .is_symlink(),
        "set aside as it was, never followed"
    );
    assert_eq!(node.record("sp").unwrap()["state"], "unreserved");
}

#[test]
fn a_kill_request_the_pilot_account_wrote_fences_nothing() {
    if !root() {
        return;
    }
    let node = Node::new("");
    // A request naming a live process (this test), as a forger would; root never wrote it.
    let me = std::process::id();
    let request = serde_json::json!({
        "by": "admin\nFORGED", "why": "x", "level": "fast",
        "at": "2026-01-01T00:00:00Z",
        "issuer": {"pid": me, "start_time": 0, "start_ticks": start_ticks(me),
                   "boot_id": std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim()}
    });
    std::fs::create_dir_all(node.state_dir()).unwrap();
    std::fs::write(
        node.state_dir().join("kill-request.json"),
        serde_json::to_vec(&request).unwrap(),
    )
    .unwrap();
    give_to_nobody(&node.state_dir());
    let out = node.run_short_lease("forged");
    assert!(
        out.status.success(),
        "a forged kill request fenced the pilot: {}",
        stderr(&out)
    );
}

#[test]
fn what_root_creates_in_the_account_s_directory_belongs_to_the_account() {
    if !root() {
        return;
    }
    let node = Node::new("");
    std::fs::create_dir_all(node.state_dir()).unwrap();
    give_to_nobody(&node.state_dir());
    // Root runs a lease in the account's directory (e.g. recover after a reboot wrote
    // records and locks): all of it stays usable by the account.
    let out = node.run_short_lease("mine");
    assert!(out.status.success(), "{}", stderr(&out));
    let (uid, _) = nobody();
    let mut checked = 0;
    for sub in ["", "leases", "spool"] {
        let dir = node.state_dir().join(sub);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if entry.file_name() == "kill-request.json" {
                continue;
            }
            assert_eq!(
                meta.uid(),
                uid.as_raw(),
                "{} is not the account's",
                entry.path().display()
            );
            assert_eq!(
                meta.mode() & 0o077,
                0,
                "{} is private",
                entry.path().display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "records, locks and the log were checked");
}

#[test]
fn a_crafted_record_and_ledger_never_make_root_write_a_host_value() {
    if !root() {
        return;
    }
    // libvirt's in-process test driver: no daemon, and hugepages off, as a site whose
    // pilots run as an account must have them.
    let node = Node::new("");
    let numeric_victim = node.dir.path().join("numeric-victim");
    std::fs::write(&numeric_victim, "105\n").unwrap();
    let text = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("backend = \"simulated\"", "backend = \"libvirt\"")
        .replace("host_reserve = \"512M\"", "host_reserve = \"0M\"");
    std::fs::write(
        &node.config,
        format!("{text}\n[host.libvirt]\nuri = \"test:///default\"\nhugepages = false\n"),
    )
    .unwrap();
    let state = node.state_dir();
    std::fs::create_dir_all(state.join("leases")).unwrap();
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let record = serde_json::json!({
        "version": 1, "lease_id": "hp", "epoch": 1, "state": "reserved", "node": "testnode",
        "memory_mib": 256, "cpus": 1, "grace_secs": 1,
        "deadline": "2030-01-01T00:00:00Z",
        "pilot": {"pid": dead_pid, "start_time": 0, "start_ticks": 1,
                  "boot_id": std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim()},
        "host_backend": "libvirt",
        "baseline": {"uri": "test:///default", "charged_mib": 256, "cpus": 1,
                     "hugepages": {"path": numeric_victim, "before": 5, "added": 100}},
        "next_seq": 3, "guests": [],
        "history": [
            {"state": "reserving", "event": "start", "at": "2026-12-03T10:00:00Z"},
            {"state": "reserved", "event": "reserved", "at": "2026-12-03T10:00:01Z"}
        ]
    });
    std::fs::write(
        state.join("leases/hp.json"),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
    let ledger = serde_json::json!({
        "version": 1, "node_baseline": 5,
        "leases": {"hp": {"epoch": 1, "charged_mib": 256, "cpus": 1, "delta": 100}}
    });
    std::fs::write(
        state.join("libvirt-ledger.json"),
        serde_json::to_vec(&ledger).unwrap(),
    )
    .unwrap();
    give_to_nobody(&state);
    let out = run_bounded(&node, &["recover"]);
    assert_eq!(
        std::fs::read_to_string(&numeric_victim).unwrap(),
        "105\n",
        "root wrote a number into a file a record named"
    );
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("not root") || text.contains("hugepages off"),
        "says why it did not restore the value: {text}"
    );
    // Even with the ledger root's own, the pool path comes from the config only.
    let (uid, gid) = (0, 0);
    std::os::unix::fs::lchown(state.join("libvirt-ledger.json"), Some(uid), Some(gid)).unwrap();
    let out = run_bounded(&node, &["recover"]);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("hugepages off"), "{text}");
    assert_eq!(std::fs::read_to_string(&numeric_victim).unwrap(), "105\n");
}
