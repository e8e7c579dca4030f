//! Driving the real single-node Slurm of the test bed (tests/testbed/up.sh): submit the
//! project's own job scripts, watch jobs through `scontrol`, and clean up after a test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Is this real component (`slurm`, `libvirt`) enabled? See [`super::it_enabled`].
pub fn enabled(what: &str) -> bool {
    super::it_enabled(
        what,
        &format!(
            "bring the test bed up (`sudo tests/testbed/up.sh`) and set VMPILOT_IT={what} to run this test against the real {what}"
        ),
    )
}

/// Held while a test uses the shared Slurm: the in-process mutex and a file lock, so tests
/// in other test binaries or checkouts running at the same time wait too.
pub struct Serial {
    _file: std::fs::File,
    _guard: MutexGuard<'static, ()>,
}

/// The Slurm tests share one node (and preempt, cancel and fill it): one at a time.
pub fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let path = std::env::temp_dir().join("vmpilot-slurm-tests.lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
    Serial {
        _file: file,
        _guard: guard,
    }
}

/// The repository root (for the job scripts).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run a command, panic with its stderr on failure, return stdout.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sbatch --parsable ARGS` with extra environment; returns the job id.
pub fn sbatch(args: &[&str], env: &[(&str, String)]) -> String {
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "sbatch {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(!id.is_empty(), "sbatch printed no job id");
    id
}

/// The job's `scontrol show job -o` fields (empty once Slurm forgot the job).
pub fn job(id: &str) -> HashMap<String, String> {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Wait until the job is in a final state; returns its fields.
pub fn wait_done(id: &str, limit: Duration) -> HashMap<String, String> {
    let until = Instant::now() + limit;
    loop {
        let j = job(id);
        let state = j.get("JobState").cloned().unwrap_or_default();
        if !matches!(
            state.as_str(),
            "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED" | ""
        ) {
            // COMPLETING covers the epilog; wait it out so its effects are visible.
            return j;
        }
        assert!(
            Instant::now() < until,
            "job {id} still {state} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Wait until the job runs.
pub fn wait_running(id: &str) {
    let until = Instant::now() + Duration::from_secs(60);
    while job(id).get("JobState").map(String::as_str) != Some("RUNNING") {
        assert!(
            Instant::now() < until,
            "job {id} never started: {:?}",
            job(id).get("Reason")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Cancels the jobs it holds when dropped, so a failed test leaves the node free.
#[derive(Default)]
pub struct Jobs(pub Vec<String>);

impl Jobs {
    pub fn add(&mut self, id: &str) -> String {
        self.0.push(id.to_string());
        id.to_string()
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        for id in &self.0 {
            let _ = Command::new("scancel").arg(id).status();
        }
        for id in &self.0 {
            let until = Instant::now() + Duration::from_secs(30);
            while matches!(
                job(id).get("JobState").map(String::as_str),
                Some("PENDING" | "RUNNING" | "COMPLETING" | "CONFIGURING")
            ) && Instant::now() < until
            {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// An Epilog hook in the test bed's hook directory, removed when dropped (a hook left behind
/// would run for other tests' jobs; a failing one drains the node).
pub struct EpilogHook(PathBuf);

impl EpilogHook {
    /// Install `slurm-scripts/epilog.sh` with this node's config and binary.
    pub fn install(name: &str, config: &Path) -> EpilogHook {
        use std::os::unix::fs::PermissionsExt;
        let path = PathBuf::from("/etc/vmpilot-testbed/epilog.d").join(format!("50-{name}"));
        let script = format!(
            "#!/bin/sh\nVMPILOT_BIN={} VMPILOT_CONFIG={} exec {}/slurm-scripts/epilog.sh \"$@\"\n",
            super::bin(),
            config.display(),
            repo().display()
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        EpilogHook(path)
    }
}

impl Drop for EpilogHook {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
