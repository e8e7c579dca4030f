//! Bounded fuzzing in CI (issue 7): every cargo-fuzz (libFuzzer) target in `fuzz/` runs for a
//! while from its committed seeds through `scripts/fuzz-ci.sh`, and any crash, panic,
//! overflow, hang (> 10 s per input) or out-of-memory fails the test with the log's tail.
//!
//! It needs cargo-fuzz and builds the targets with coverage instrumentation (minutes when
//! cold), so it runs only when `VMPILOT_IT` contains `fuzz` (CI does; `scripts/test` installs
//! cargo-fuzz and builds the targets while the test bed comes up). `FUZZ_SECONDS` (default
//! 30 per target) and `FUZZ_SANITIZER` (default `none` here) tune it; long runs and their
//! figures are in docs/testing.md.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

fn enabled() -> bool {
    common::it_enabled(
        "fuzz",
        "bounded fuzzing needs cargo-fuzz (`cargo install --locked cargo-fuzz`) and minutes of building; set VMPILOT_IT=fuzz (CI does) to run it",
    )
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run scripts/fuzz-ci.sh with `env` on top of the defaults this test uses.
fn fuzz_ci(env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/fuzz-ci.sh"));
    // Panics, overflows and hangs are what the parsers can have (they are safe Rust); the
    // sanitizer-free build is several minutes faster. FUZZ_SANITIZER=address overrides.
    if std::env::var_os("FUZZ_SANITIZER").is_none() {
        cmd.env("FUZZ_SANITIZER", "none");
    }
    // The fuzz crate has a target dir of its own; the test build's must not leak into it.
    cmd.env_remove("CARGO_TARGET_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("cannot run scripts/fuzz-ci.sh")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every target `cargo fuzz list` names.
fn targets() -> Vec<String> {
    let out = Command::new("cargo")
        .args(["fuzz", "list"])
        .current_dir(repo().join("fuzz"))
        .env("RUSTC_BOOTSTRAP", "1")
        .output()
        .expect("cannot run `cargo fuzz list`");
    assert!(out.status.success(), "cargo fuzz list: {:?}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Executions the script reported for `target`, if it says the target ran clean.
fn execs(stdout: &str, target: &str) -> Option<u64> {
    let prefix = format!("fuzz-ci: {target} ok, ");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.strip_suffix(" execs"))
        .and_then(|n| n.parse().ok())
}

#[test]
fn every_fuzz_target_runs_its_bounded_time_without_a_crash() {
    if !enabled() {
        return;
    }
    let seconds = std::env::var("FUZZ_SECONDS").unwrap_or_else(|_| "30".into());
    let out = fuzz_ci(&[("FUZZ_SECONDS", &seconds)]);
    let (stdout, stderr) = text(&out);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "bounded fuzzing failed (inputs in fuzz/artifacts/):\n{stdout}\n{stderr}"
    );
    let targets = targets();
    assert!(targets.len() >= 11, "fuzz targets missing: {targets:?}");
    // Each target really ran: a run that executed nothing would pass without testing.
    for t in &targets {
        let n = execs(&stdout, t).unwrap_or_else(|| panic!("no result for {t}:\n{stdout}"));
        assert!(n > 1000, "{t} ran only {n} inputs in {seconds}s:\n{stdout}");
    }

    // The harness reports what libFuzzer finds. Proven with a finding every target has: a
    // 1 MiB memory limit that the fuzzer process itself already exceeds.
    let artifacts = tempfile::tempdir().unwrap();
    let prefix = format!("{}/", artifacts.path().display());
    let flags = format!("-rss_limit_mb=1 -artifact_prefix={prefix}");
    let out = fuzz_ci(&[
        ("FUZZ_SECONDS", "10"),
        ("FUZZ_TARGETS", "units"),
        ("FUZZ_FLAGS", &flags),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("fuzz-ci: units FAILED") && stderr.contains("out-of-memory"),
        "the failure names the target and libFuzzer's finding:\n{stderr}"
    );
    assert!(
        std::fs::read_dir(artifacts.path())
            .unwrap()
            .next()
            .is_some(),
        "libFuzzer left the input behind"
    );
}
