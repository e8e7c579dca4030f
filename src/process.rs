//! Who a pilot process is, in a way that survives pid reuse and reboots.
//!
//! A pid alone is not an identity: after a crash or a reboot another process may hold it,
//! and `recover` or `kill-all` must never mistake it for the pilot. A pilot is identified by
//! its pid, its start time and the kernel's boot id; all three must match.

use serde::{Deserialize, Serialize};
use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};

/// Identity of a (pilot) process.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// Process id.
    pub pid: u32,
    /// Start time, seconds since the epoch, as the kernel reports it.
    pub start_time: u64,
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

fn start_time_of(pid: u32) -> Option<u64> {
    let mut sys = System::new().ok()?;
    let spid = Pid::from_u32(pid);
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[spid]),
        true,
        ProcessRefreshKind::nothing(),
    );
    let process = sys.process(spid)?;
    // A zombie has finished: its parent just has not reaped it yet.
    if matches!(
        process.status(),
        ProcessStatus::Zombie | ProcessStatus::Dead
    ) {
        return None;
    }
    Some(process.start_time())
}

impl ProcessIdentity {
    /// The identity of this process.
    pub fn current() -> Self {
        let pid = std::process::id();
        ProcessIdentity {
            pid,
            // Our own entry in /proc always exists while we run.
            start_time: start_time_of(pid).unwrap_or(0),
            boot_id: boot_id(),
        }
    }

    /// Is this exact process still running (same boot, same pid, same start time)?
    pub fn is_alive(&self) -> bool {
        if self.boot_id.is_empty() || self.boot_id != boot_id() {
            return false;
        }
        start_time_of(self.pid) == Some(self.start_time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_an_impostor_is_not() {
        let me = ProcessIdentity::current();
        assert!(me.is_alive());
        let reused_pid = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(!reused_pid.is_alive());
        let other_boot = ProcessIdentity {
            boot_id: "00000000-0000-0000-0000-000000000000".into(),
            ..me
        };
        assert!(!other_boot.is_alive());
    }

    #[test]
    fn a_reaped_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcessIdentity {
            pid: child.id(),
            start_time: start_time_of(child.id()).unwrap_or(0),
            boot_id: boot_id(),
        };
        child.wait().unwrap();
        assert!(!id.is_alive());
    }
}
