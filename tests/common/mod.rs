//! Test harness: a node (temp state dir + config) driven through the real `vmpilot`
//! binary, real processes and real signals. Like ripgrep's `Dir`, each test gets its own.

#![allow(dead_code)]

pub mod coordinator;
pub mod refcoord;
pub mod slurm;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// Should tests of the real component `what` run? `VMPILOT_IT` lists the enabled ones (CI
/// enables them all). When it does not name `what`, the test prints why it is skipped and
/// `needs`: what running it takes.
pub fn it_enabled(what: &str, needs: &str) -> bool {
    let it = std::env::var("VMPILOT_IT").unwrap_or_default();
    let on = it.split(',').any(|c| c.trim() == what);
    if !on {
        eprintln!("SKIPPED: VMPILOT_IT={it:?} does not name `{what}`; {needs}");
    }
    on
}

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_vmpilot")
}

/// Path of another workspace member's binary (`vmpilot-coordinator`, `vmpilot-libvirt`):
/// cargo names only this package's own binaries to its tests. It builds the others, beside
/// `vmpilot`, when the workspace is tested (`cargo test --workspace`, the one test command),
/// because their crates have integration tests of their own (`crates/*/tests/binary.rs`):
/// cargo builds a package's binaries for its integration tests, and builds everything before
/// it runs any test.
pub fn workspace_bin(name: &str) -> PathBuf {
    let path = std::path::Path::new(bin())
        .parent()
        .expect("the vmpilot binary has a directory")
        .join(name);
    assert!(
        path.is_file(),
        "{} is not built: run the tests with `cargo test --workspace` (or `cargo build --workspace` first)",
        path.display()
    );
    path
}

/// The shared libraries of libvirt that process `pid` has mapped (empty: none).
pub fn libvirt_mappings(pid: Pid) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut libs: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|path| path.contains("libvirt"))
        .map(String::from)
        .collect();
    libs.dedup();
    libs
}

/// The file name of the program process `pid` runs.
pub fn exe_name(pid: Pid) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Path of the reference coordinator's binary.
pub fn coordinator_bin() -> PathBuf {
    workspace_bin("vmpilot-coordinator")
}

/// A simulated node: its own state dir and config file.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Node {
    /// A node with the simulated host (8 GiB, 4 CPUs, 512 MiB reserve) and `extra` TOML
    /// appended to the config.
    pub fn new(extra: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("vmpilot.toml");
        let state = dir.path().join("state");
        let text = format!(
            "state_dir = \"{}\"\nnode_name = \"testnode\"\n\n[lease]\ngrace = \"5s\"\nlock_timeout = \"2s\"\nmax_guests = 2\n\n[host]\nbackend = \"simulated\"\nhost_reserve = \"512M\"\nguest_overhead = \"64M\"\n\n[host.simulated]\nmemory = \"8G\"\ncpus = 4\n\n[log]\nlevel = \"debug\"\n{extra}",
            state.display()
        );
        std::fs::write(&config, text).unwrap();
        Node { dir, config }
    }

    /// A node whose pilots report to the coordinator at `url`, signing with `secret`;
    /// `extra` is appended to the `[coordinator]` section (e.g. `timeout = "1s"`).
    pub fn with_coordinator(url: &str, secret: &str, extra: &str) -> Node {
        let node = Node::new("");
        let secret_file = node.secret_file(secret);
        let text = std::fs::read_to_string(&node.config).unwrap();
        std::fs::write(
            &node.config,
            format!(
                "{text}\n[coordinator]\nurl = \"{url}\"\nsecret_file = \"{}\"\n{extra}",
                secret_file.display()
            ),
        )
        .unwrap();
        node
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A `vmpilot` command with this node's config.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("VMPILOT_STATE_DIR")
            .env_remove("VMPILOT_CONFIG");
        c.env_remove("SLURM_JOB_ID").env_remove("PBS_JOBID");
        c
    }

    /// Run to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Start a pilot in the background.
    pub fn spawn_pilot(&self, args: &[&str]) -> Pilot {
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

    /// Start `vmpilot run` for `lease` (1 GiB, 1 CPU, a 1 s grace) with `walltime`; with
    /// `crash_at`, the pilot SIGKILLs itself at that crash point (`fault-injection` builds).
    pub fn spawn_lease(&self, lease: &str, walltime: &str, crash_at: Option<&str>) -> Pilot {
        let mut cmd = self.cmd(&[
            "run",
            "--memory",
            "1G",
            "--cpus",
            "1",
            "--walltime",
            walltime,
            "--grace",
            "1s",
            "--lease-id",
            lease,
        ]);
        if let Some(point) = crash_at {
            cmd.env("VMPILOT_CRASH_AT", point);
        }
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Pilot { child }
    }

    pub fn record_path(&self, lease: &str) -> PathBuf {
        self.state_dir()
            .join("leases")
            .join(format!("{lease}.json"))
    }

    /// The lease record, if written yet.
    pub fn record(&self, lease: &str) -> Option<Value> {
        let bytes = std::fs::read(self.record_path(lease)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Wait until the lease record is in `state`.
    pub fn wait_state(&self, lease: &str, state: &str) -> Value {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(r) = self.record(lease)
                && r["state"] == state
            {
                return r;
            }
            assert!(
                Instant::now() < until,
                "lease {lease} never reached {state}: {:?}",
                self.record(lease)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The simulated host's state file.
    pub fn host(&self) -> Value {
        let bytes = std::fs::read(self.state_dir().join("simulated-host.json"))
            .unwrap_or_else(|_| b"{}".to_vec());
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Lease ids holding a share of the simulated host.
    pub fn reservations(&self) -> Vec<String> {
        let host = self.host();
        host["reservations"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// A simulated guest's state (`running`, `shut-off`, `saved`).
    pub fn guest_state(&self, name: &str) -> String {
        let host = self.host();
        host["guests"]
            .as_array()
            .and_then(|gs| gs.iter().find(|g| g["name"] == name))
            .map(|g| g["state"].as_str().unwrap().to_string())
            .unwrap_or_default()
    }

    /// Add a guest to the simulated host (as a coordinator would).
    pub fn add_guest(&self, name: &str, lease: Option<&str>, extra: &[&str]) {
        let mut args = vec!["simulated", "add-guest", "--name", name];
        if let Some(l) = lease {
            args.extend(["--lease", l]);
        }
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Arm a simulated-host fault.
    pub fn fault(&self, op: &str, mode: &str, times: u32, hang: &str) {
        let t = times.to_string();
        let out = self.run(&[
            "simulated",
            "fault",
            "--op",
            op,
            "--mode",
            mode,
            "--times",
            &t,
            "--hang",
            hang,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Take this node's `node.lock` as a pilot would, and hold it until the file is
    /// dropped: what another process changing the host looks like to a pilot.
    pub fn hold_node_lock(&self) -> std::fs::File {
        std::fs::create_dir_all(self.state_dir()).unwrap();
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.state_dir().join("node.lock"))
            .unwrap();
        lock.lock().unwrap();
        lock
    }

    /// Wait (bounded) until a pilot has asked the simulated guest `name` to shut down,
    /// which it does only after listing the lease's guests.
    pub fn wait_shutdown_requested(&self, name: &str) {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let host = self.host();
            let asked = host["guests"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == name && !g["shutdown_requested_ms"].is_null());
            if asked {
                return;
            }
            assert!(
                Instant::now() < until,
                "no pilot asked `{name}` to shut down: {host}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Run a whole short lease (1 GiB, 2 s walltime, 1 s grace) to its end.
    pub fn run_short_lease(&self, lease: &str) -> Output {
        self.short_lease(lease).output().unwrap()
    }

    /// The command for a whole short lease (1 GiB, 2 s walltime, 1 s grace), to adjust
    /// (environment, ...) before running it.
    pub fn short_lease(&self, lease: &str) -> Command {
        self.cmd(&[
            "run",
            "--memory",
            "1G",
            "--walltime",
            "2s",
            "--grace",
            "1s",
            "--lease-id",
            lease,
        ])
    }

    /// Files waiting in the spool.
    pub fn spooled(&self) -> usize {
        std::fs::read_dir(self.state_dir().join("spool"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Write a coordinator secret file (0600) and return its path.
    pub fn secret_file(&self, secret: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.path().join("secret");
        std::fs::write(&p, format!("{secret}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }
}

/// A running pilot process.
pub struct Pilot {
    pub child: Child,
}

impl Pilot {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    /// Wait for exit (bounded) and return (exit code, stderr).
    pub fn finish(mut self) -> (i32, String) {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let out = self.child.wait_with_output().unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                use std::os::unix::process::ExitStatusExt;
                let code = status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
                return (code, stderr);
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                panic!("pilot did not exit within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// States the record went through, from its history.
/// The events a record's history went through, in order (e.g. `pilot-lost`).
pub fn history_events(record: &Value) -> Vec<String> {
    record["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap().to_string())
        .collect()
}

pub fn history(record: &Value) -> Vec<String> {
    record["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap().to_string())
        .collect()
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Does the path exist?
pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// The cross-process lock of the real-libvirt tests: shared for ordinary tests, exclusive
/// for one that stops libvirtd (so no other test sees it gone).
pub fn libvirt_lock(exclusive: bool) -> std::fs::File {
    let path = std::env::temp_dir().join("vmpilot-libvirt-tests.lock");
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    if exclusive {
        f.lock().unwrap();
    } else {
        f.lock_shared().unwrap();
    }
    f
}

/// `program` with `args`, run in a private mount namespace where `/proc/stat` is a copy
/// whose `btime` is `step_secs` later: what every process sees after CLOCK_REALTIME is
/// stepped forward (the kernel keeps the boot instant on the monotonic clock and derives
/// `btime` from the wall clock). libfaketime cannot move `btime`; this can. `None` when
/// this machine cannot do it (not root, no `unshare`), saying why.
pub fn with_clock_stepped(
    node: &Node,
    step_secs: i64,
    program: &str,
    args: &[&str],
) -> Option<std::process::Output> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: stepping btime needs root (a private mount namespace)");
        return None;
    }
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let shifted: String = stat
        .lines()
        .map(|l| match l.strip_prefix("btime ") {
            Some(t) => format!("btime {}\n", t.trim().parse::<i64>().unwrap() + step_secs),
            None => format!("{l}\n"),
        })
        .collect();
    let copy = node.dir.path().join("proc-stat-stepped");
    std::fs::write(&copy, shifted).unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" /proc/stat && shift && exec "$@""#)
        .arg("sh")
        .arg(&copy)
        .arg(program)
        .args(args)
        .env_remove("SLURM_JOB_ID")
        .env_remove("PBS_JOBID")
        .output();
    match out {
        Ok(out) if !out.status.success() && stderr(&out).contains("mount") => {
            eprintln!(
                "SKIPPED: cannot bind-mount over /proc/stat: {}",
                stderr(&out)
            );
            None
        }
        Ok(out) => Some(out),
        Err(e) => {
            eprintln!("SKIPPED: cannot run unshare: {e}");
            None
        }
    }
}

/// `vmpilot` on `node` with `args`, the clock stepped by `step_secs` (see above).
pub fn vmpilot_clock_stepped(node: &Node, step_secs: i64, args: &[&str]) -> std::process::Output {
    let config = node.config.display().to_string();
    let mut full = vec!["--config", &config];
    full.extend_from_slice(args);
    with_clock_stepped(node, step_secs, bin(), &full).unwrap()
}
