//! The `vmpilot-coordinator` binary's own contract (the coordinator's behaviour is tested
//! from the root package, `tests/refcoord.rs`, which runs this binary; having tests here
//! also makes `cargo test --workspace` build it).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_vmpilot-coordinator");

#[test]
fn version_and_a_config_error_exit_code() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("vmpilot-coordinator "));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coord.toml");
    std::fs::write(&config, "no_such_key = 1\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no_such_key"), "{err}");
}
