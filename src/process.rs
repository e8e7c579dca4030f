//! Who a pilot process is, in a way that survives pid reuse, reboots and clock steps.
//!
//! A pid alone is not an identity: after a crash or a reboot another process may hold it,
//! and `recover` or `kill-all` must never mistake it for the pilot. A pilot is identified by
//! its pid, its start time and the kernel's boot id; all three must match.
//!
//! The start time is the one the kernel keeps: clock ticks since boot (field 22 of
//! `/proc/PID/stat`). It never moves. A start time in seconds since the epoch (what
//! records of vmpilot 0.1 hold, from sysinfo) is derived from `btime` in `/proc/stat`,
//! which moves every time CLOCK_REALTIME is stepped (an NTP step at boot, `date -s`, a
//! resumed VM): after a one-second step a live pilot would read as dead, and `recover`
//! would finish its lease under it. Such records are still read; their liveness is judged
//! the old way, which is all they carry.

use serde::{Deserialize, Serialize};

/// Identity of a (pilot) process.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// Process id.
    pub pid: u32,
    /// Start time, seconds since the epoch, as the kernel reported it when the process was
    /// seen. Informative only (it moves with clock steps): liveness is judged by
    /// `start_ticks` whenever the record has it.
    pub start_time: u64,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22); immune to clock
    /// steps. `None` in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ticks: Option<u64>,
    /// `/proc/sys/kernel/random/boot_id` when the process was seen.
    pub boot_id: String,
}

/// The kernel's id of the current boot; empty if unreadable (then no process is ever
/// taken as alive across the unknown boot, which errs on the side of recovering).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// What `/proc/PID/stat` says of a live process: its start in ticks since boot. `None`
/// for no such process, or one that has exited and waits to be reaped (a zombie).
pub fn start_ticks_of(pid: u32) -> Option<u64> {
    let pid = i32::try_from(pid).ok().filter(|p| *p > 0)?;
    let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    if matches!(stat.state, 'Z' | 'X' | 'x') {
        return None;
    }
    Some(stat.starttime)
}

/// The start time the way vmpilot 0.1 recorded it (seconds since the epoch, from sysinfo):
/// for records that have nothing better.
fn legacy_start_time_of(pid: u32) -> Option<u64> {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};
    let mut sys = System::new().ok()?;
    let spid = Pid::from_u32(pid);
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[spid]),
        true,
        ProcessRefreshKind::nothing(),
    );
    let process = sys.process(spid)?;
    if matches!(
        process.status(),
        ProcessStatus::Zombie | ProcessStatus::Dead
    ) {
        return None;
    }
    Some(process.start_time())
}

/// The file name of a process's executable, without the " (deleted)" the kernel adds
/// once the binary was replaced (an upgrade while the pilot runs).
fn exe_name(pid: &str) -> Option<String> {
    let target = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = target.file_name()?.to_str()?;
    Some(name.strip_suffix(" (deleted)").unwrap_or(name).to_string())
}

/// The names the pilot runs under: `vmpilot`, and `vmpilot-libvirt`, which `vmpilot` becomes
/// on a libvirt node (`crate::entry`).
const PILOT_BINARIES: [&str; 2] = ["vmpilot", crate::entry::LIBVIRT_BINARY];

/// Does process `pid` run a pilot binary: one of [`PILOT_BINARIES`] or, for a renamed
/// install, a binary of the same name as this one?
fn runs_vmpilot(pid: i32) -> bool {
    let Some(theirs) = exe_name(&pid.to_string()) else {
        return false;
    };
    PILOT_BINARIES.contains(&theirs.as_str()) || exe_name("self").is_some_and(|ours| ours == theirs)
}

/// Does process `pid` hold the file `(device, inode)` open? Each of its descriptors is
/// only stat'ed (through /proc, which names the open file), never opened.
fn holds_open(pid: i32, (dev, ino): (u64, u64)) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino))
}

impl ProcessIdentity {
    /// The identity of this process.
    pub fn current() -> Self {
        let pid = std::process::id();
        ProcessIdentity {
            pid,
            start_time: legacy_start_time_of(pid).unwrap_or(0),
            // Our own entry in /proc always exists while we run.
            start_ticks: start_ticks_of(pid),
            boot_id: boot_id(),
        }
    }

    /// The identity of another running process, if there is one with this pid.
    pub fn of(pid: u32) -> Option<Self> {
        Some(ProcessIdentity {
            pid,
            start_ticks: Some(start_ticks_of(pid)?),
            start_time: legacy_start_time_of(pid).unwrap_or(0),
            boot_id: boot_id(),
        })
    }

    /// Is this a running vmpilot process of `uid` that holds `lock` (the lease's lock
    /// file, as `(device, inode)`) open? Records can be written by the pilot account, and
    /// pid, start time and boot id are world-readable, so a record can name any process;
    /// before root signals a "pilot" or leaves a lease to it, it proves the process is
    /// one: alive with that identity, running a binary named like this one, as the state
    /// directory's owner, and holding the lease's lock, which a pilot does for its whole
    /// life and no other process does.
    pub fn is_pilot_holding(&self, uid: u32, lock: (u64, u64)) -> bool {
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        let Ok(process) = procfs::process::Process::new(pid) else {
            return false;
        };
        let runs_as = process
            .status()
            .is_ok_and(|s| s.ruid == uid && s.euid == uid);
        self.is_alive() && runs_as && runs_vmpilot(pid) && holds_open(pid, lock)
    }

    /// Is this exact process still running (same boot, same pid, same start)? Judged by
    /// ticks since boot, which no clock step moves; by the legacy start time only for
    /// records that carry nothing else.
    pub fn is_alive(&self) -> bool {
        if self.boot_id.is_empty() || self.boot_id != boot_id() {
            return false;
        }
        match self.start_ticks {
            Some(ticks) => start_ticks_of(self.pid) == Some(ticks),
            None => legacy_start_time_of(self.pid) == Some(self.start_time),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_an_impostor_is_not() {
        let me = ProcessIdentity::current();
        assert!(me.start_ticks.is_some());
        assert!(me.is_alive());
        let reused_pid = ProcessIdentity {
            start_ticks: me.start_ticks.map(|t| t + 1),
            ..me.clone()
        };
        assert!(!reused_pid.is_alive());
        let other_boot = ProcessIdentity {
            boot_id: "00000000-0000-0000-0000-000000000000".into(),
            ..me.clone()
        };
        assert!(!other_boot.is_alive());
        // The wall-clock start time is not consulted when ticks are known.
        let clock_stepped = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(clock_stepped.is_alive());
    }

    #[test]
    fn records_of_vmpilot_0_1_are_still_judged() {
        let me = ProcessIdentity::current();
        let json = format!(
            r#"{{"pid": {}, "start_time": {}, "boot_id": "{}"}}"#,
            me.pid, me.start_time, me.boot_id
        );
        let old: ProcessIdentity = serde_json::from_str(&json).unwrap();
        assert_eq!(old.start_ticks, None);
        assert!(old.is_alive());
        let old_impostor = ProcessIdentity {
            start_time: me.start_time + 1,
            ..old
        };
        assert!(!old_impostor.is_alive());
    }

    #[test]
    fn a_reaped_child_is_dead_and_a_zombie_too() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let id = ProcessIdentity::of(child.id()).unwrap();
        assert!(id.is_alive());
        // Not reaped yet: a zombie once it exits.
        std::thread::sleep(std::time::Duration::from_millis(600));
        assert!(!id.is_alive(), "a zombie is not alive");
        child.wait().unwrap();
        assert!(!id.is_alive());
        assert!(ProcessIdentity::of(0).is_none());
        assert!(ProcessIdentity::of(u32::MAX).is_none());
    }
}
