//! A simulated node for the benchmarks (state dir, config, secret), the processes that run
//! on it — real `vmpilot run` pilots and the minimal baseline routine — and what /proc
//! says about them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The shared HMAC secret of the benchmark's coordinators (only ever on loopback).
pub const SECRET: &str = "vmpilot-bench-secret-0123456789abcdef";

/// A simulated node: its own directory with `state/`, `vmpilot.toml` and `secret`.
pub struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    /// A node whose pilots report to `url`; the simulated host is large enough for many
    /// leases at once (`memory_gib`, 64 CPUs).
    pub fn new(url: &str, memory_gib: u32) -> anyhow::Result<Node> {
        Node::with_host(
            url,
            &format!(
                "backend = \"simulated\"\nhost_reserve = \"512M\"\nguest_overhead = \"64M\"\n\n\
                 [host.simulated]\nmemory = \"{memory_gib}G\"\ncpus = 64\n"
            ),
            2,
        )
    }

    /// A node whose pilots report to `url`, with `host` as the body of its `[host]`
    /// section (sub-tables included) and `max_guests` per lease.
    pub fn with_host(url: &str, host: &str, max_guests: u32) -> anyhow::Result<Node> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("vmpilot-bench-")
            .tempdir()?;
        let secret = dir.path().join("secret");
        std::fs::write(&secret, format!("{SECRET}\n"))?;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
        let config = format!(
            r#"state_dir = "{state}"
node_name = "benchnode"

[lease]
grace = "5s"
lock_timeout = "120s"
max_guests = {max_guests}

[coordinator]
url = "{url}"
secret_file = "{secret}"
heartbeat_interval = "30s"

[lrm]
kind = "none"

[log]
level = "info"

[host]
{host}"#,
            state = dir.path().join("state").display(),
            secret = secret.display(),
        );
        std::fs::write(dir.path().join("vmpilot.toml"), config)?;
        Ok(Node { dir })
    }

    /// The node's directory (logs, config, state).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The node's config file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("vmpilot.toml")
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn log_file(&self, name: &str) -> anyhow::Result<std::fs::File> {
        let logs = self.dir.path().join("logs");
        std::fs::create_dir_all(&logs)?;
        Ok(std::fs::File::create(logs.join(format!("{name}.log")))?)
    }

    /// Start `vmpilot run` for `lease` (1 GiB, 1 CPU) with `walltime`.
    pub fn spawn_pilot(&self, bin: &Path, lease: &str, walltime: Duration) -> anyhow::Result<Proc> {
        self.spawn_pilot_with(bin, lease, walltime, "1G")
    }

    /// Start `vmpilot run` for `lease` with `memory` for guests (1 CPU) and `walltime`.
    pub fn spawn_pilot_with(
        &self,
        bin: &Path,
        lease: &str,
        walltime: Duration,
        memory: &str,
    ) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(self.config())
            .args([
                "run",
                "--lease-id",
                lease,
                "--memory",
                memory,
                "--cpus",
                "1",
            ])
            .arg("--walltime")
            .arg(format!("{}s", walltime.as_secs()));
        self.spawn(cmd, lease)
    }

    /// Start the minimal baseline routine (`vmpilot-bench baseline-lease`) for `lease`.
    pub fn spawn_baseline(&self, bench: &Path, lease: &str, url: &str) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(bench);
        cmd.arg("baseline-lease")
            .arg("--config")
            .arg(self.config())
            .args(["--lease-id", lease, "--url", url]);
        self.spawn(cmd, lease)
    }

    fn spawn(&self, mut cmd: Command, name: &str) -> anyhow::Result<Proc> {
        for var in [
            "VMPILOT_STATE_DIR",
            "VMPILOT_CONFIG",
            "SLURM_JOB_ID",
            "PBS_JOBID",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file(name)?);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
        Ok(Proc::new(child, started))
    }

    /// Lease ids holding a share of the simulated host, and the host's whole state.
    pub fn host(&self) -> serde_json::Value {
        std::fs::read(self.state_dir().join("simulated-host.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Reservations left on the simulated host.
    pub fn reservations(&self) -> Vec<String> {
        self.host()["reservations"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The state of `lease`'s record.
    pub fn record_state(&self, lease: &str) -> Option<String> {
        let bytes = std::fs::read(
            self.state_dir()
                .join("leases")
                .join(format!("{lease}.json")),
        )
        .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        v["state"].as_str().map(String::from)
    }
}

/// A started process; a thread waits for it so its exit is timed precisely.
pub struct Proc {
    pid: Pid,
    /// When `spawn` was called.
    pub started: Instant,
    exit: Arc<Mutex<Option<(Instant, ExitStatus)>>>,
    waiter: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    fn new(mut child: Child, started: Instant) -> Proc {
        let pid = Pid::from_raw(child.id() as i32);
        let exit = Arc::new(Mutex::new(None));
        let slot = exit.clone();
        let waiter = std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), status));
            }
        });
        Proc {
            pid,
            started,
            exit,
            waiter: Some(waiter),
        }
    }

    /// Send `sig`; the instant just before it was sent.
    pub fn signal(&self, sig: Signal) -> Instant {
        let at = Instant::now();
        let _ = kill(self.pid, sig);
        at
    }

    /// Wait at most `timeout` for the exit; its instant and status. SIGKILLs the process
    /// when it does not exit in time.
    pub fn wait(&mut self, timeout: Duration) -> Option<(Instant, ExitStatus)> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Some(e) = *self.exit.lock().unwrap_or_else(|e| e.into_inner()) {
                if let Some(w) = self.waiter.take() {
                    let _ = w.join();
                }
                return Some(e);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = kill(self.pid, Signal::SIGKILL);
        None
    }

    /// CPU time (user + system, all threads, including finished ones) so far.
    pub fn cpu(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // Fields after the command name (which may contain spaces) start at field 3.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        // /proc reports in USER_HZ, which Linux fixes at 100 on every mainstream architecture.
        Some(Duration::from_millis((utime + stime) * 10))
    }

    /// Peak resident set (VmHWM), MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    /// Memory now from `/proc/PID/smaps_rollup`, MiB: resident, proportional (shared pages
    /// split among the processes that map them) and private (this process's alone). PSS is
    /// what a node pays per pilot; private is what one more pilot adds.
    pub fn memory_mib(&self) -> Option<Memory> {
        let text = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", self.pid)).ok()?;
        let kb = |key: &str| -> Option<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(key))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        };
        Some(Memory {
            rss: kb("Rss:")? / 1024.0,
            pss: kb("Pss:")? / 1024.0,
            private: (kb("Private_Clean:")? + kb("Private_Dirty:")?) / 1024.0,
        })
    }

    /// Context switches per live thread (voluntary + involuntary), by thread id: every
    /// wake-up of a sleeping thread is one.
    pub fn switches(&self) -> HashMap<i32, u64> {
        let mut out = HashMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return out;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
                continue;
            };
            let n: u64 = status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum();
            out.insert(tid, n);
        }
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self
            .exit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            let _ = kill(self.pid, Signal::SIGKILL);
        }
        if let Some(w) = self.waiter.take() {
            let _ = w.join();
        }
    }
}

/// Wake-ups between two [`Proc::switches`] samples, counting threads present in both and
/// threads that appeared in between.
pub fn wakeups(before: &HashMap<i32, u64>, after: &HashMap<i32, u64>) -> u64 {
    after
        .iter()
        .map(|(tid, n)| n.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

/// A process's memory at one moment (see [`Proc::memory_mib`]), MiB.
#[derive(Debug, Default, Clone, Copy)]
pub struct Memory {
    /// Resident set.
    pub rss: f64,
    /// Proportional set size.
    pub pss: f64,
    /// Private clean + private dirty.
    pub private: f64,
}
