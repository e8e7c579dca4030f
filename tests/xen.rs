//! The Xen backend as a process: the real `vmpilot` binary against a FAKE `xl`
//! (tests/fakes/xl, a script that models dom0's memory and guests in a state file). No Xen
//! hypervisor can run on the project's machines, so these tests check vmpilot's side of the
//! `xl` contract: the commands it runs, its bounds, and what it restores.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Node, Pilot, history};
use nix::sys::signal::Signal;
use serde_json::Value;

/// A node whose host is the fake `xl`, with its own fake state.
struct XenNode {
    node: Node,
    env: Vec<(String, String)>,
}

fn fake_xl() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fakes/xl")
}

impl XenNode {
    /// dom0 starts at 4096 MiB; `host` TOML goes into `[host]`, `xen` overrides keys of
    /// `[host.xen]`.
    fn new(host: &str, xen: &[(&str, &str)], env: &[(&str, &str)]) -> XenNode {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("vmpilot.toml");
        let xl = fake_xl().display().to_string();
        let mut keys = vec![
            ("xl", xl.as_str()),
            ("dom0_min_memory", "1G"),
            ("balloon_timeout", "5s"),
            ("command_timeout", "5s"),
        ];
        for (k, v) in xen {
            keys.retain(|(d, _)| d != k);
            keys.push((k, v));
        }
        let section: String = keys
            .iter()
            .map(|(k, v)| format!("{k} = \"{v}\"\n"))
            .collect();
        let text = format!(
            "state_dir = \"{}\"\nnode_name = \"xennode\"\n\n[lease]\ngrace = \"8s\"\nlock_timeout = \"2s\"\nmax_guests = 2\n\n\
             [host]\nbackend = \"xen\"\n{host}\n\n[host.xen]\n{section}\n[log]\nlevel = \"debug\"\n",
            dir.path().join("state").display(),
        );
        std::fs::write(&config, text).unwrap();
        let mut all = vec![
            (
                "FAKE_XL_STATE".to_string(),
                dir.path().join("xl.json").display().to_string(),
            ),
            (
                "FAKE_XL_LOG".to_string(),
                dir.path().join("xl.log").display().to_string(),
            ),
        ];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        XenNode {
            node: Node { dir, config },
            env: all,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.node.cmd(args);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn pilot(&self, args: &[&str]) -> Pilot {
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        let child = self
            .cmd(&full)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Pilot { child }
    }

    /// Run the fake directly (only the state file env, never the failure knobs).
    fn xl(&self, args: &[&str]) -> String {
        let out = Command::new(fake_xl())
            .args(args)
            .env("FAKE_XL_STATE", &self.env[0].1)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::stderr(&out));
        common::stdout(&out)
    }

    /// The fake's state (dom0 memory and target, guests).
    fn state(&self) -> Value {
        serde_json::from_slice(&std::fs::read(&self.env[0].1).unwrap()).unwrap()
    }

    fn xl_log(&self) -> String {
        std::fs::read_to_string(&self.env[1].1).unwrap_or_default()
    }

    fn guest_names(&self) -> Vec<String> {
        self.state()["guests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap().to_string())
            .collect()
    }
}

fn fates(record: &Value) -> Vec<(String, String)> {
    record["guests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap().to_string(),
                g["fate"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn dom0_is_ballooned_down_for_the_lease_and_restored_exactly() {
    let x = XenNode::new("", &[], &[("FAKE_XL_BALLOON_STEP", "512")]);
    // Create the state with a guest that is nobody's before the lease starts.
    x.xl(&["fake-create", "bystander", "512", "1"]);
    let pilot = x.pilot(&["--memory", "1G", "--walltime", "5m", "--lease-id", "x1"]);
    let r = x.node.wait_state("x1", "reserved");
    assert_eq!(r["baseline"]["dom0_before_mib"], 4096, "{r}");
    assert_eq!(r["baseline"]["lowered_by_mib"], 1024);
    assert_eq!(
        x.state()["dom0"],
        3072,
        "waited for the balloon: {}",
        x.state()
    );
    assert!(x.xl_log().contains("mem-set 0 3072m"), "{}", x.xl_log());
    let epoch = r["epoch"].as_u64().unwrap();
    x.xl(&[
        "fake-create",
        &format!("vmpilot:x1:{epoch}:polite"),
        "256",
        "1",
    ]);
    // One that ignores ACPI: destroyed when the grace runs out.
    x.xl(&[
        "fake-create",
        &format!("vmpilot:x1:{epoch}:stubborn"),
        "256",
        "1",
        "--ignore-shutdown",
    ]);
    x.xl(&["fake-create", "vmpilot:other:1:theirs", "256", "1"]);
    pilot.signal(Signal::SIGTERM);
    let (code, err) = pilot.finish();
    assert_eq!(code, 5, "{err}");
    let r = x.node.record("x1").unwrap();
    assert_eq!(r["state"], "unreserved", "{r}");
    assert_eq!(
        history(&r),
        ["reserving", "reserved", "unreserving", "unreserved"]
    );
    assert_eq!(
        fates(&r),
        [
            (format!("vmpilot:x1:{epoch}:polite"), "shut-down".into()),
            (format!("vmpilot:x1:{epoch}:stubborn"), "destroyed".into()),
        ]
    );
    assert_eq!(x.state()["dom0"], 4096, "dom0 restored: {}", x.state());
    assert_eq!(x.guest_names(), ["bystander", "vmpilot:other:1:theirs"]);
    let ledger: Value =
        serde_json::from_slice(&std::fs::read(x.node.state_dir().join("xen-ledger.json")).unwrap())
            .unwrap();
    assert_eq!(ledger["leases"], serde_json::json!({}), "{ledger}");
    assert_eq!(ledger["node_baseline"], Value::Null);
}

#[test]
fn dom0_minimum_is_respected_and_nothing_changes() {
    let x = XenNode::new("", &[("dom0_min_memory", "3G")], &[]);
    let out = x
        .cmd(&[
            "run",
            "--memory",
            "2G",
            "--walltime",
            "1m",
            "--lease-id",
            "x2",
        ])
        .output()
        .unwrap();
    let err = common::stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "admission is a usage error: {err}"
    );
    assert!(
        err.contains("dom0 has 4096 MiB and must keep 3072 MiB")
            && err.contains("only 1024 MiB can be ballooned out"),
        "{err}"
    );
    assert!(!x.xl_log().contains("mem-set"), "{}", x.xl_log());
    assert_eq!(x.state()["dom0"], 4096);
}

#[test]
fn a_hanging_xl_is_killed_at_its_timeout() {
    let x = XenNode::new(
        "",
        &[("command_timeout", "1s")],
        &[("FAKE_XL_HANG", "mem-set")],
    );
    let started = Instant::now();
    let out = x
        .cmd(&[
            "run",
            "--memory",
            "1G",
            "--walltime",
            "1m",
            "--lease-id",
            "x3",
        ])
        .output()
        .unwrap();
    let took = started.elapsed();
    let err = common::stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("mem-set 0 3072m") && err.contains("did not finish within 1s"),
        "{err}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(x.state()["dom0"], 4096, "nothing changed");
    let r = x.node.record("x3").unwrap();
    assert!(r["last_error"].as_str().unwrap().contains("mem-set"), "{r}");
    // The hung fakes were killed with their process group, not left sleeping.
    let state_path = &x.env[0].1;
    let leftovers: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read(e.path().join("environ"))
                .map(|env| {
                    env.split(|b| *b == 0)
                        .any(|kv| kv == format!("FAKE_XL_STATE={state_path}").as_bytes())
                })
                .unwrap_or(false)
        })
        .collect();
    assert!(leftovers.is_empty(), "fake xl still running: {leftovers:?}");
}

#[test]
fn a_balloon_that_never_arrives_is_rolled_back() {
    // dom0 moves 1 MiB per `xl list`: 1 GiB can never be reached within 1 s.
    let x = XenNode::new(
        "",
        &[("balloon_timeout", "1s")],
        &[("FAKE_XL_BALLOON_STEP", "1")],
    );
    let out = x
        .cmd(&[
            "run",
            "--memory",
            "1G",
            "--walltime",
            "1m",
            "--lease-id",
            "x4",
        ])
        .output()
        .unwrap();
    let err = common::stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("balloon dom0 to 3072 MiB"), "{err}");
    let log = x.xl_log();
    assert!(log.contains("mem-set 0 4096m"), "rolled back: {log}");
    let dom0 = x.state()["dom0"].as_u64().unwrap();
    assert!(4096 - dom0 <= 4, "dom0 back within the slack: {dom0}");
}

#[test]
fn suspend_saves_owned_guests_with_xl_save() {
    let x = XenNode::new("on_unreserve = \"suspend\"", &[], &[]);
    let pilot = x.pilot(&["--memory", "512M", "--walltime", "5m", "--lease-id", "x5"]);
    let r = x.node.wait_state("x5", "reserved");
    let name = format!("vmpilot:x5:{}:vm", r["epoch"]);
    x.xl(&["fake-create", &name, "256", "1"]);
    pilot.signal(Signal::SIGTERM);
    let (code, err) = pilot.finish();
    assert_eq!(code, 5, "{err}");
    let r = x.node.record("x5").unwrap();
    assert_eq!(r["guests"][0]["fate"], "suspended", "{r}");
    let saved = r["guests"][0]["detail"].as_str().unwrap();
    assert!(saved.ends_with("vmpilot_x5_1_vm.save"), "{saved}");
    assert!(std::fs::read_to_string(saved).unwrap().contains(&name));
    assert!(x.guest_names().is_empty());
    assert_eq!(x.state()["dom0"], 4096);
}

#[test]
fn a_failing_xl_keeps_its_stderr_in_the_error() {
    let x = XenNode::new("", &[], &[("FAKE_XL_FAIL", "list")]);
    let out = x.cmd(&["check-config"]).output().unwrap();
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(3), "unreachable host: {err}");
    assert!(
        err.contains("list 0") && err.contains("fake failure injected") && err.contains("hint:"),
        "{err}"
    );
}
