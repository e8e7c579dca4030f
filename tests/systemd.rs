//! The systemd units in `systemd/`: `systemd-analyze verify` on every unit and drop-in, the
//! ordering docs/operations.md promises, and the vmpilot command lines they run.
//!
//! systemd is installed but is not PID 1 on the test machines, so `systemctl` cannot load
//! units; `systemd-analyze verify --root=DIR` can, offline. The units are laid out in a
//! temporary root the way the package installs them (plus the drop-ins as an admin installs
//! them, and stand-ins for `slurmd.service`/`pbs_mom.service` from tests/systemd-standins/),
//! beside a copy of the machine's own system units (`sysinit.target` and friends).
//!
//! `systemd-analyze verify` exits 0 on most mistakes (an unknown key, a bad value) and only
//! *prints* them, so these tests fail on any line it prints about our files, and
//! `a_typo_in_a_unit_is_caught` proves that they do.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use vmpilot::cli::{Cli, Command as Sub, KillLevel};

/// Our units, as shipped in /lib/systemd/system.
const UNITS: [&str; 2] = ["vmpilot-recover.service", "vmpilot-drain.service"];
/// The batch daemons we ship drop-ins for.
const DAEMONS: [&str; 2] = ["slurmd.service", "pbs_mom.service"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `systemd-analyze`, or `None` (with the reason printed) where it cannot run. In CI
/// (`CI` set) a missing systemd-analyze is a failure, not a skip.
fn analyzer() -> Option<PathBuf> {
    let found = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze not found; CI must have systemd installed (apt-get install systemd)"
        );
        eprintln!("SKIP: systemd-analyze not found (install systemd to run this test)");
    }
    found
}

/// A temporary root holding the machine's system units, our units, the drop-ins and the
/// stand-ins, and executables at the paths the units name.
struct UnitRoot {
    dir: tempfile::TempDir,
}

impl UnitRoot {
    fn new() -> UnitRoot {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let lib = root.join("lib/systemd/system");
        let etc = root.join("etc/systemd/system");
        for d in [&lib, &etc, &root.join("usr/bin"), &root.join("bin")] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        // The machine's own units (targets, libvirtd if present); ours shadow nothing there.
        let system = ["/lib/systemd/system", "/usr/lib/systemd/system"]
            .iter()
            .map(Path::new)
            .find(|p| p.join("sysinit.target").exists())
            .expect("no system unit directory with sysinit.target");
        copy_tree(system, &lib);
        // Any real batch daemon unit is replaced by the stand-in: the test must not depend
        // on what the machine happens to have installed.
        for d in DAEMONS {
            let _ = std::fs::remove_file(lib.join(d));
            std::fs::copy(repo().join("tests/systemd-standins").join(d), etc.join(d))
                .expect("copy stand-in");
        }
        for u in UNITS {
            std::fs::copy(repo().join("systemd").join(u), lib.join(u)).expect("copy unit");
        }
        for d in DAEMONS {
            let dropins = etc.join(format!("{d}.d"));
            std::fs::create_dir_all(&dropins).expect("mkdir drop-in dir");
            std::fs::copy(
                repo().join("systemd").join(format!("{d}.d/vmpilot.conf")),
                dropins.join("vmpilot.conf"),
            )
            .expect("copy drop-in");
        }
        // verify checks that ExecStart=/ExecStop= programs exist and are executable. The
        // command lines themselves are checked against the real CLI in `exec_lines_parse`.
        for exe in ["usr/bin/vmpilot", "bin/true"] {
            std::fs::copy("/bin/true", root.join(exe)).expect("copy executable");
        }
        UnitRoot { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Run `systemd-analyze verify` on our units and the daemons (which load the drop-ins);
    /// return the problems it reported about our files.
    fn verify(&self, analyze: &Path) -> Vec<String> {
        let mut args = vec![
            "verify".to_string(),
            "--man=no".into(),
            format!("--root={}", self.path().display()),
        ];
        args.extend(UNITS.iter().chain(DAEMONS.iter()).map(|s| s.to_string()));
        let out = Command::new(analyze)
            .args(&args)
            .output()
            .expect("run systemd-analyze");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "systemd-analyze {} -> {}\n{text}",
            args.join(" "),
            out.status
        );
        let mut problems = ours(&text);
        if !out.status.success() {
            problems.push(format!("systemd-analyze verify exited with {}", out.status));
        }
        problems
    }
}

/// The lines of systemd-analyze's output that concern our units, drop-ins or stand-ins.
/// Anything else (a warning about one of the machine's own units) is printed, not failed on.
fn ours(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            l.contains("vmpilot")
                || DAEMONS
                    .iter()
                    .any(|d| l.contains(d.trim_end_matches(".service")))
        })
        .map(str::to_string)
        .collect()
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read unit dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(entry.path()).expect("stat");
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(entry.path()).expect("readlink");
            std::os::unix::fs::symlink(link, &target).expect("symlink");
        } else if meta.is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// `(section, key, value)` of every assignment in a unit file or drop-in.
fn settings(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).expect("read unit");
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').expect("key=value");
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

/// All values of `key` in `section`, space-separated lists flattened.
fn values(s: &[(String, String, String)], section: &str, key: &str) -> Vec<String> {
    s.iter()
        .filter(|(sec, k, _)| sec == section && k == key)
        .flat_map(|(_, _, v)| v.split_whitespace().map(str::to_string))
        .collect()
}

fn one(s: &[(String, String, String)], section: &str, key: &str) -> String {
    let v: Vec<_> = s
        .iter()
        .filter(|(sec, k, _)| sec == section && k == key)
        .map(|(_, _, v)| v.clone())
        .collect();
    assert_eq!(
        v.len(),
        1,
        "{section}.{key} must be set exactly once: {v:?}"
    );
    v[0].clone()
}

/// Split a systemd command line the way systemd does for our simple cases (double quotes).
fn split_command(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quotes in {line}");
    if any {
        words.push(cur);
    }
    words
}

#[test]
fn units_and_dropins_pass_systemd_analyze_verify() {
    let Some(analyze) = analyzer() else { return };
    let root = UnitRoot::new();
    let problems = root.verify(&analyze);
    assert!(
        problems.is_empty(),
        "systemd-analyze verify reported problems with our units:\n{}",
        problems.join("\n")
    );
}

/// The check above must be able to fail: systemd-analyze exits 0 on these mistakes and only
/// prints them, so each one is injected here and must be reported.
#[test]
fn a_typo_in_a_unit_is_caught() {
    let Some(analyze) = analyzer() else { return };
    let cases: [(&str, &str, &str); 5] = [
        // (file in the root, text to replace, replacement)
        (
            "lib/systemd/system/vmpilot-drain.service",
            "RemainAfterExit=yes",
            "RemainAfterExit=yess",
        ),
        (
            "lib/systemd/system/vmpilot-drain.service",
            "TimeoutStopSec=3min",
            "TimeoutStopSec=3mn",
        ),
        (
            "lib/systemd/system/vmpilot-recover.service",
            "\nBefore=",
            "\nBefor=",
        ),
        (
            "etc/systemd/system/slurmd.service.d/vmpilot.conf",
            "Requires=vmpilot-recover.service",
            "Requires=vmpilot-recovr.service",
        ),
        (
            "etc/systemd/system/pbs_mom.service.d/vmpilot.conf",
            "After=vmpilot-recover.service",
            "Afterr=vmpilot-recover.service",
        ),
    ];
    for (file, from, to) in cases {
        let root = UnitRoot::new();
        let path = root.path().join(file);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.contains(from),
            "{file} no longer contains {from:?}: update this test"
        );
        std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
        let problems = root.verify(&analyze);
        assert!(
            !problems.is_empty(),
            "replacing {from:?} with {to:?} in {file} went unnoticed"
        );
    }
    // A missing program is caught too (systemd-analyze exits non-zero).
    let root = UnitRoot::new();
    std::fs::remove_file(root.path().join("usr/bin/vmpilot")).expect("rm");
    assert!(
        !root.verify(&analyze).is_empty(),
        "missing /usr/bin/vmpilot went unnoticed"
    );
}

/// The commands the units run are valid vmpilot command lines (checked with the real CLI
/// definitions, so renaming an option breaks this test, not a node's boot).
#[test]
fn exec_lines_parse_with_the_real_cli() {
    let recover = settings(&repo().join("systemd/vmpilot-recover.service"));
    let words = split_command(&one(&recover, "Service", "ExecStart"));
    assert_eq!(words[0], "/usr/bin/vmpilot");
    let cli = Cli::try_parse_from(&words).expect("recover ExecStart parses");
    match cli.command {
        Sub::Recover(a) => assert!(a.boot && a.job.is_none(), "{a:?}"),
        other => panic!("ExecStart runs {other:?}, not recover --boot"),
    }

    let drain = settings(&repo().join("systemd/vmpilot-drain.service"));
    assert_eq!(one(&drain, "Service", "ExecStart"), "/bin/true");
    let words = split_command(&one(&drain, "Service", "ExecStop"));
    assert_eq!(words[0], "/usr/bin/vmpilot");
    let cli = Cli::try_parse_from(&words).expect("drain ExecStop parses");
    match cli.command {
        Sub::KillAll(a) => {
            assert_eq!(a.level, KillLevel::Graceful);
            assert_eq!(a.reason, "node shutdown");
            // No terminal at shutdown: without --yes kill-all refuses and the drain does
            // nothing (caught by the real reboot test, tests/reboot.rs).
            assert!(a.yes, "the drain's kill-all must pass --yes");
        }
        other => panic!("ExecStop runs {other:?}, not kill-all"),
    }
}

/// The ordering and failure semantics docs/operations.md describes.
#[test]
fn ordering_is_as_documented() {
    let recover = settings(&repo().join("systemd/vmpilot-recover.service"));
    assert_eq!(one(&recover, "Service", "Type"), "oneshot");
    // Without it, restarting slurmd (which Requires= recover) would rerun --boot recovery
    // under running pilots.
    assert_eq!(one(&recover, "Service", "RemainAfterExit"), "yes");
    assert_eq!(one(&recover, "Unit", "RefuseManualStart"), "yes");
    let after = values(&recover, "Unit", "After");
    assert!(after.contains(&"libvirtd.service".into()), "{after:?}");
    let before = values(&recover, "Unit", "Before");
    for d in DAEMONS {
        assert!(
            before.contains(&d.to_string()),
            "recover must be Before={d}: {before:?}"
        );
    }
    for key in ["Requires", "Wants", "BindsTo", "Requisite", "PartOf"] {
        let v = values(&recover, "Unit", key);
        assert!(
            !v.iter().any(|u| DAEMONS.contains(&u.as_str())),
            "recover must only order the batch daemons, not {key}= them"
        );
    }
    assert_eq!(
        values(&recover, "Install", "WantedBy"),
        ["multi-user.target"]
    );

    let drain = settings(&repo().join("systemd/vmpilot-drain.service"));
    assert_eq!(one(&drain, "Service", "Type"), "oneshot");
    assert_eq!(one(&drain, "Service", "RemainAfterExit"), "yes");
    let after = values(&drain, "Unit", "After");
    // Started after them = stopped before them at shutdown.
    for u in [
        "libvirtd.service",
        "libvirt-guests.service",
        "network.target",
    ]
    .into_iter()
    .chain(DAEMONS)
    {
        assert!(
            after.contains(&u.to_string()),
            "drain must be After={u}: {after:?}"
        );
    }
    let timeout = one(&drain, "Service", "TimeoutStopSec");
    let timeout: humantime::Duration = timeout.parse().expect("TimeoutStopSec parses");
    assert!(
        timeout.as_secs() >= 120 && timeout.as_secs() <= 600,
        "TimeoutStopSec must cover 2 x default grace and stay bounded: {timeout}"
    );

    for d in DAEMONS {
        let dropin = settings(&repo().join(format!("systemd/{d}.d/vmpilot.conf")));
        assert_eq!(
            values(&dropin, "Unit", "Requires"),
            ["vmpilot-recover.service"]
        );
        assert_eq!(
            values(&dropin, "Unit", "After"),
            ["vmpilot-recover.service"]
        );
    }
}

#[test]
fn command_splitting_handles_quotes() {
    assert_eq!(
        split_command(r#"/usr/bin/vmpilot kill-all --reason "node shutdown""#),
        ["/usr/bin/vmpilot", "kill-all", "--reason", "node shutdown"]
    );
}
