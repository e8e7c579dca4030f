//! `vmpilot-libvirt` is the whole pilot command with libvirt linked in. (Having tests here
//! also makes `cargo test --workspace` build the binary, which the root package's tests run
//! through `vmpilot`'s hand-over.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_vmpilot-libvirt");

#[test]
fn it_is_the_vmpilot_command() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("vmpilot {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: vmpilot-libvirt run"));
}

/// With libvirt linked in, an unreachable libvirtd is an environment error (exit 3) with a
/// hint, not "not linked into this binary".
#[test]
fn it_opens_libvirt_itself() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vmpilot.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[host]\nbackend = \"libvirt\"\n[host.libvirt]\nuri = \"qemu+unix:///system?socket=/nonexistent/libvirt-sock\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("check-config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("not reachable") && err.contains("hint:"),
        "{err}"
    );
    assert!(!err.contains("not linked"), "{err}");
}
