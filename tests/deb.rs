//! The .deb package: build it with packaging/build-deb.sh, install it with `dpkg -i`, check
//! what an admin relies on (binaries, man pages, completions, units enabled and passing
//! `systemd-analyze verify` *as installed*, the state directory, no live config), then purge
//! it so the machine is left as it was.
//!
//! It changes the machine (root, dpkg), so it runs only when `VMPILOT_IT` contains `deb`
//! (CI sets it); otherwise it prints why it is skipped. `assets_cover_the_repository` runs
//! everywhere: it checks the package metadata against the tree without building anything.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

const PACKAGE: &str = "vmpilot";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn enabled() -> bool {
    common::it_enabled(
        "deb",
        "the .deb install test changes the machine (dpkg -i/-P as root); set VMPILOT_IT=deb (CI does) to run it",
    )
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    eprintln!(
        "$ {shown} -> {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "command failed: {cmd:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PACKAGE])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("installed"))
}

/// Purges the package when dropped, so a failing assertion still leaves the machine clean.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if installed() || Path::new("/var/lib/dpkg/info/vmpilot.list").exists() {
            let _ = run(Command::new("dpkg").args(["--purge", PACKAGE]));
        }
    }
}

/// Lines of `systemd-analyze` output that concern our units, drop-ins or the batch daemons
/// they are applied to.
fn our_problems(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            !l.trim().is_empty()
                && (l.contains("vmpilot") || l.contains("slurmd") || l.contains("pbs_mom"))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn deb_installs_verifies_and_purges() {
    if !enabled() {
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the .deb test installs a package: run it as root"
    );
    if installed() {
        eprintln!("note: {PACKAGE} is installed already (a previous run?); it is purged first");
        ok(Command::new("dpkg").args(["--purge", PACKAGE]));
    }
    let state_dir_before = Path::new("/var/lib/vmpilot").exists();
    let config_before = Path::new("/etc/vmpilot/vmpilot.toml").exists();

    // Build (the script installs cargo-deb if needed); its last stdout line is the path.
    let started = Instant::now();
    // The debug build `cargo test` just made is packaged: a second, release build would
    // double CI's compile time and proves nothing more about the package's layout.
    // Same features as this test build: otherwise cargo rebuilds target/debug/vmpilot
    // without them, and later test binaries (the crash sweeps) run a binary that cannot
    // crash on demand.
    let features = if cfg!(feature = "fault-injection") {
        "fault-injection"
    } else {
        ""
    };
    let out = run(Command::new("bash")
        .arg(repo().join("packaging/build-deb.sh"))
        .env("VMPILOT_DEB_PROFILE", "dev")
        .env("VMPILOT_DEB_FEATURES", features)
        .stdin(Stdio::null()));
    assert!(out.status.success(), "packaging/build-deb.sh failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = PathBuf::from(stdout.lines().last().expect("build-deb.sh printed nothing"));
    assert!(deb.is_file(), "{} is not a file", deb.display());
    eprintln!("built {} in {:?}", deb.display(), started.elapsed());

    let _purge = Purge;
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(installed());

    // Binaries.
    let version = ok(Command::new("/usr/bin/vmpilot").arg("--version"));
    assert_eq!(
        version.trim(),
        format!("vmpilot {}", env!("CARGO_PKG_VERSION"))
    );
    ok(Command::new("/usr/bin/vmpilot-coordinator").arg("--version"));
    // The libvirt backend ships as its own binary, beside the one that execs it.
    let libvirt_version = ok(Command::new("/usr/bin/vmpilot-libvirt").arg("--version"));
    assert_eq!(libvirt_version.trim(), version.trim());

    // Man pages (the units' Documentation= points at two of them) and completions.
    for page in [
        "vmpilot",
        "vmpilot-run",
        "vmpilot-recover",
        "vmpilot-kill-all",
    ] {
        let file = format!("/usr/share/man/man1/{page}.1.gz");
        assert!(Path::new(&file).is_file(), "{file} missing");
    }
    if Path::new("/usr/bin/man").exists() {
        let found = ok(Command::new("man").args(["-w", "vmpilot"]));
        assert_eq!(found.trim(), "/usr/share/man/man1/vmpilot.1.gz");
    }
    for f in [
        "/usr/share/bash-completion/completions/vmpilot",
        "/usr/share/zsh/vendor-completions/_vmpilot",
        "/usr/share/fish/vendor_completions.d/vmpilot.fish",
    ] {
        let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{f} missing or empty");
    }

    // Config: the example only. A live config marks a node as a vmpilot node for the epilogs.
    assert!(Path::new("/etc/vmpilot/vmpilot.toml.example").is_file());
    assert_eq!(
        Path::new("/etc/vmpilot/vmpilot.toml").exists(),
        config_before,
        "the package must not install a live config"
    );

    // State directory: 0700 root when the package created it.
    let meta = std::fs::metadata("/var/lib/vmpilot").expect("/var/lib/vmpilot exists");
    assert!(meta.is_dir());
    if !state_dir_before {
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.uid(), 0);
    }

    // Job and epilog scripts, executable where the source is.
    for dir in ["slurm-scripts", "pbs-scripts"] {
        for entry in std::fs::read_dir(repo().join(dir)).expect("read scripts") {
            let entry = entry.expect("entry");
            let installed = Path::new("/usr/share/vmpilot")
                .join(dir)
                .join(entry.file_name());
            let meta = std::fs::metadata(&installed)
                .unwrap_or_else(|_| panic!("{} not installed", installed.display()));
            let src_exec = entry.metadata().expect("stat").permissions().mode() & 0o100 != 0;
            let inst_exec = meta.permissions().mode() & 0o111 != 0;
            assert_eq!(
                src_exec,
                inst_exec,
                "{} executable bit",
                installed.display()
            );
        }
    }

    // Units: installed, enabled (deb-systemd-helper works without systemd as PID 1).
    for unit in ["vmpilot-recover.service", "vmpilot-drain.service"] {
        assert!(
            Path::new("/lib/systemd/system").join(unit).is_file()
                || Path::new("/usr/lib/systemd/system").join(unit).is_file(),
            "{unit} not installed"
        );
        let wants = Path::new("/etc/systemd/system/multi-user.target.wants").join(unit);
        assert!(wants.is_symlink(), "{unit} not enabled");
    }

    // systemd-analyze verify on the INSTALLED units, man pages checked, with the shipped
    // drop-ins applied the way an admin installs them (a unit directory searched before the
    // system's) and a stand-in for a batch daemon whose real unit is not installed here.
    let dropins = tempfile::tempdir().expect("tempdir");
    for daemon in ["slurmd.service", "pbs_mom.service"] {
        let d = dropins.path().join(format!("{daemon}.d"));
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::copy(
            Path::new("/usr/share/vmpilot/systemd")
                .join(format!("{daemon}.d"))
                .join("vmpilot.conf"),
            d.join("vmpilot.conf"),
        )
        .expect("copy installed drop-in");
        let real = [
            "/lib/systemd/system",
            "/usr/lib/systemd/system",
            "/etc/systemd/system",
        ]
        .iter()
        .any(|dir| Path::new(dir).join(daemon).exists());
        if !real {
            std::fs::copy(
                repo().join("tests/systemd-standins").join(daemon),
                dropins.path().join(daemon),
            )
            .expect("copy stand-in");
        }
    }
    let out = run(Command::new("systemd-analyze")
        .env(
            "SYSTEMD_UNIT_PATH",
            format!("{}:", dropins.path().display()),
        )
        .args([
            "verify",
            "--man=yes",
            "vmpilot-recover.service",
            "vmpilot-drain.service",
            "slurmd.service",
            "pbs_mom.service",
        ]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let problems = our_problems(&text);
    assert!(
        out.status.success() && problems.is_empty(),
        "systemd-analyze verify on the installed units: {}\n{}",
        out.status,
        problems.join("\n")
    );

    // Purge: files, unit links and the (empty) state directory go.
    ok(Command::new("dpkg").args(["--purge", PACKAGE]));
    assert!(!installed());
    assert!(!Path::new("/usr/bin/vmpilot").exists());
    for unit in ["vmpilot-recover.service", "vmpilot-drain.service"] {
        let wants = Path::new("/etc/systemd/system/multi-user.target.wants").join(unit);
        assert!(!wants.is_symlink(), "{unit} still enabled after purge");
    }
    if !state_dir_before {
        assert!(!Path::new("/var/lib/vmpilot").exists());
    }
}

/// `(source, dest)` of every asset in `[package.metadata.deb]`.
fn assets() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("Cargo.toml")).expect("read Cargo.toml");
    let manifest: toml::Table = text.parse().expect("Cargo.toml parses");
    let list = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .expect("assets is an array");
    list.iter()
        .map(|a| {
            let a = a.as_array().expect("asset is [source, dest, mode]");
            (
                a[0].as_str().expect("source").to_string(),
                a[1].as_str().expect("dest").to_string(),
            )
        })
        .collect()
}

/// Files in the tree matching a cargo-deb source pattern (only `*` in the last component).
fn matches(pattern: &str) -> Vec<PathBuf> {
    let path = repo().join(pattern);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file name");
    let Some((prefix, suffix)) = name.split_once('*') else {
        return if path.exists() { vec![path] } else { vec![] };
    };
    let dir = path.parent().expect("parent");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    entries
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect()
}

/// Every non-generated asset exists, every job/epilog script and doc is packaged, the unit
/// drop-ins are shipped, and no live config is: a renamed or added file breaks this test
/// instead of a site's install.
#[test]
fn assets_cover_the_repository() {
    let assets = assets();
    let mut packaged: BTreeSet<PathBuf> = BTreeSet::new();
    for (source, dest) in &assets {
        assert!(
            !dest.starts_with('/'),
            "{dest}: cargo-deb destinations are relative"
        );
        assert_ne!(dest, "etc/vmpilot/vmpilot.toml", "never ship a live config");
        if source.starts_with("target/") {
            continue; // built or generated by packaging/build-deb.sh
        }
        let found = matches(source);
        assert!(!found.is_empty(), "asset {source} matches no file");
        packaged.extend(found);
    }
    for dir in ["slurm-scripts", "pbs-scripts", "docs"] {
        for entry in std::fs::read_dir(repo().join(dir)).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                assert!(
                    packaged.contains(&path),
                    "{} is not in [package.metadata.deb] assets",
                    path.display()
                );
            }
        }
    }
    for daemon in ["slurmd", "pbs_mom"] {
        let dropin = repo().join(format!("systemd/{daemon}.service.d/vmpilot.conf"));
        assert!(
            packaged.contains(&dropin),
            "{} not packaged",
            dropin.display()
        );
    }
    let bins: Vec<_> = assets
        .iter()
        .filter(|(s, _)| s.starts_with("target/release/"))
        .map(|(s, _)| s.trim_start_matches("target/release/").to_string())
        .collect();
    assert!(bins.contains(&"vmpilot".to_string()));
    // Every binary target is either shipped or named here as a development tool, so a new
    // operational binary cannot be forgotten silently.
    const NOT_PACKAGED: [&str; 1] = ["vmpilot-bench"];
    for entry in std::fs::read_dir(repo().join("src/bin"))
        .into_iter()
        .flatten()
    {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
            assert!(
                bins.contains(&stem.to_string()) || NOT_PACKAGED.contains(&stem),
                "binary {stem} is neither in [package.metadata.deb] assets nor in NOT_PACKAGED"
            );
        }
    }
}
