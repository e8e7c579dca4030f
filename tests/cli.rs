//! The command-line contract: help, config errors, exit codes, generated docs.

mod common;

use common::{Node, bin, stderr, stdout};
use std::process::Command;

#[test]
fn every_subcommand_has_help() {
    for sub in ["run", "status", "check-config", "recover", "kill-all"] {
        let out = Command::new(bin()).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub}");
        assert!(stdout(&out).contains("Usage: vmpilot"), "{sub}");
    }
}

#[test]
fn config_errors_name_file_key_and_hint_and_exit_2() {
    let node = Node::new("bogus_key = 1\n");
    let out = node.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.starts_with("vmpilot: config "), "{err}");
    assert!(
        err.contains("vmpilot.toml") && err.contains("bogus_key"),
        "{err}"
    );
    assert!(err.contains("docs/config.md"), "{err}");
}

#[test]
fn an_explicit_missing_config_is_an_error() {
    let out = Command::new(bin())
        .args(["--config", "/nonexistent/vmpilot.toml", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/vmpilot.toml"));
}

#[test]
fn grace_longer_than_the_walltime_is_refused_before_anything_changes() {
    let node = Node::new("");
    let out = node.run(&[
        "run",
        "--memory",
        "1G",
        "--walltime",
        "10s",
        "--grace",
        "30s",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("grace"), "{}", stderr(&out));
    assert!(
        !node.state_dir().join("leases").exists()
            || std::fs::read_dir(node.state_dir().join("leases"))
                .unwrap()
                .count()
                == 0
    );
}

#[test]
fn bad_arguments_exit_2_with_a_clear_message() {
    let node = Node::new("");
    for (args, needle) in [
        (
            vec!["run", "--memory", "lots", "--walltime", "1m"],
            "not a size",
        ),
        (
            vec!["run", "--memory", "1G", "--walltime", "soon"],
            "not a duration",
        ),
        (vec!["run", "--memory", "1G"], "no --walltime"),
        (vec!["run", "--walltime", "1m"], "--memory is required"),
        (
            vec!["run", "--memory", "1G", "--walltime", "10000years"],
            "year 9999",
        ),
        (
            vec![
                "run",
                "--memory",
                "1G",
                "--walltime",
                "1m",
                "--lease-id",
                "../etc",
            ],
            "lease id",
        ),
        (
            vec![
                "run",
                "--memory",
                "1G",
                "--walltime",
                "1m",
                "--coordinator",
                "http://example.org",
            ],
            "plain HTTP",
        ),
    ] {
        let out = node.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn check_config_prints_what_it_resolved_and_changes_nothing() {
    let node = Node::new("");
    let out = node.run(&["check-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("backend = \"simulated\""), "{text}");
    assert!(text.contains("8192 MiB memory"), "{text}");
    assert!(text.contains("# ok"), "{text}");
    assert!(node.reservations().is_empty());
}

#[test]
fn an_unreachable_libvirt_is_refused_before_anything_changes() {
    let node = Node::new(
        "[host.libvirt]\nuri = \"qemu+unix:///system?socket=/nonexistent/libvirt-sock\"\n",
    );
    let out = node.run(&[
        "run",
        "--host",
        "libvirt",
        "--memory",
        "1G",
        "--walltime",
        "1m",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("libvirt"), "{}", stderr(&out));
}

#[test]
fn man_page_and_completions_are_generated_from_the_cli() {
    let out = Command::new(bin())
        .args(["generate", "man"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let man = stdout(&out);
    assert!(
        man.contains(".TH vmpilot") && man.contains("EXIT STATUS"),
        "{man}"
    );
    assert!(man.contains("vmpilot\\-kill\\-all(1)"), "{man}");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["generate", "man", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let page = std::fs::read_to_string(dir.path().join("vmpilot-kill-all.1")).unwrap();
    assert!(page.contains("\\-\\-reason"), "{page}");
    let out = Command::new(bin())
        .args(["generate", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(stdout(&out).contains("--walltime"));
    let out = Command::new(bin())
        .args(["generate", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn status_on_an_empty_node_says_batch_mode() {
    let node = Node::new("");
    let out = node.run(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("batch mode"));
    assert!(stdout(&out).contains("no leases"));
}

#[test]
fn a_corrupt_record_gives_a_clear_error_and_a_safe_recover() {
    let node = Node::new("");
    let leases = node.state_dir().join("leases");
    std::fs::create_dir_all(&leases).unwrap();
    std::fs::write(
        leases.join("broken.json"),
        b"{\"version\": 1, \"lease_id\": \"bro",
    )
    .unwrap();
    let out = node.run(&["status"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("corrupt"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("hosting"),
        "an unreadable record must not look like a clean node"
    );
    let out = node.run(&["recover"]);
    assert_eq!(out.status.code(), Some(4), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("corrupt") && stderr(&out).contains("broken.json"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn recover_on_a_node_that_never_hosted_does_nothing_and_creates_nothing() {
    // What the batch epilog runs after every job: it must not need the hypervisor (this
    // config's libvirt is unreachable) nor create the state directory.
    let node = Node::new(
        "[host.libvirt]\nuri = \"qemu+unix:///system?socket=/nonexistent/libvirt-sock\"\n",
    );
    let text = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("backend = \"simulated\"", "backend = \"libvirt\"");
    std::fs::write(&node.config, text).unwrap();
    let out = node.run(&["recover", "--job", "12345"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("nothing to recover"),
        "{}",
        stdout(&out)
    );
    assert!(!node.state_dir().exists());
}

#[test]
fn kill_all_on_a_node_with_nothing_open_needs_no_hypervisor() {
    // The shutdown drain runs kill-all on every node: with no open lease it must succeed
    // even when the hypervisor is unreachable.
    let node = Node::new(
        "[host.libvirt]\nuri = \"qemu+unix:///system?socket=/nonexistent/libvirt-sock\"\n",
    );
    let text = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("backend = \"simulated\"", "backend = \"libvirt\"");
    std::fs::write(&node.config, text).unwrap();
    let out = node.run(&["kill-all", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("nothing to stop"), "{}", stdout(&out));
}

/// On a libvirt node `vmpilot` hands over to `vmpilot-libvirt` from its own directory only,
/// and only when nobody else can write it: a missing or writable helper is refused with a
/// hint, before anything on the node is touched (exit 3, environment).
#[test]
fn a_libvirt_node_needs_a_trusted_vmpilot_libvirt_beside_vmpilot() {
    let node = Node::new("");
    let text = std::fs::read_to_string(&node.config).unwrap();
    std::fs::write(
        &node.config,
        text.replace("backend = \"simulated\"", "backend = \"libvirt\""),
    )
    .unwrap();
    let alone = tempfile::tempdir().unwrap();
    let copy = alone.path().join("vmpilot");
    std::fs::copy(bin(), &copy).unwrap();
    let run = |args: &[&str]| {
        Command::new(&copy)
            .arg("--config")
            .arg(&node.config)
            .args(args)
            .output()
            .unwrap()
    };
    for args in [
        &["check-config"][..],
        &["recover"],
        &["run", "--walltime", "1m"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("vmpilot-libvirt") && err.contains("hint:"),
            "{args:?}: {err}"
        );
    }
    assert!(
        !node.state_dir().exists(),
        "nothing was created before the hand-over"
    );
    // A helper anyone may write is not run.
    let helper = alone.path().join("vmpilot-libvirt");
    std::fs::write(&helper, "#!/bin/sh\necho ran >&2\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run(&["check-config"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("writable by group or others") && !stderr(&out).contains("ran"),
        "{}",
        stderr(&out)
    );
    // Status opens no host: it runs in `vmpilot` itself.
    let out = run(&["status"]);
    assert!(
        !stderr(&out).contains("vmpilot-libvirt"),
        "{}",
        stderr(&out)
    );
}

/// A full state disk is the environment's fault, not a bug or the host's: every command says
/// so (exit 3) with one hint, and nothing on the node is left half-switched. Before, a full
/// disk made `check-config` exit 1 ("internal error") and `run` exit 4 ("host operation
/// `open` failed") without a hint. Needs root (a 64 KiB tmpfs).
#[test]
fn a_full_state_disk_is_an_environment_error_with_one_hint() {
    struct Mounted(std::path::PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let node = Node::new("");
    let disk = node.dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&disk)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
        return;
    }
    let _unmount = Mounted(disk.clone());
    let text = std::fs::read_to_string(&node.config).unwrap();
    let state = disk.join("state");
    std::fs::write(
        &node.config,
        text.replace(
            &format!("state_dir = \"{}\"", node.state_dir().display()),
            &format!("state_dir = \"{}\"", state.display()),
        ),
    )
    .unwrap();
    // A first lease creates the state directory; then the disk fills up.
    let out = node.run_short_lease("before");
    assert!(out.status.success(), "{}", stderr(&out));
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", disk.join("fill").display()))
        .output();
    for args in [
        &["check-config"][..],
        &[
            "run",
            "--walltime",
            "5m",
            "--memory",
            "1G",
            "--cpus",
            "1",
            "--lease-id",
            "full",
        ],
    ] {
        let out = node.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(err.contains("No space left on device"), "{args:?}: {err}");
        assert_eq!(err.matches("hint:").count(), 1, "{args:?}: one hint: {err}");
        assert!(err.contains("free space"), "{args:?}: {err}");
    }
    // Nothing was reserved: the space comes back and the node is in batch mode.
    std::fs::remove_file(disk.join("fill")).unwrap();
    let status = node.run(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["mode"], "batch", "{status}");
    assert!(node.reservations().is_empty());
}
