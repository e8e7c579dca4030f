//! The admin's kill request: the fence `kill-all` raises on a node, and the file that tells
//! pilots a SIGTERM comes from `kill-all`.
//!
//! A pilot cannot tell an admin's SIGTERM from the batch system's, but the difference
//! matters to the coordinator (reason `admin` vs `cancelled`) and to how hard guests are
//! stopped (`--fast` destroys at once). `kill-all` writes this file before it looks for
//! pilots and removes it when done. While it is in force it is also a fence: `vmpilot run`
//! refuses to start (exit status 7), checked once before anything and again once it holds
//! the node lock, so no pilot can slip in behind kill-all's back.
//!
//! The request names the kill-all process that raised it (pid, start, boot). It is in force
//! only while that process runs: the fence is lifted when kill-all ends, however it ends,
//! and a file left by a kill-all that was itself killed fences nothing (the next kill-all
//! replaces it).

use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cli::KillLevel;
use crate::process::ProcessIdentity;
use crate::safe_dir::{SafeDir, quoted};

/// File name under `state_dir`.
pub const FILE: &str = "kill-request.json";

/// Who asked, why, and how hard.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KillRequest {
    /// The admin's user name.
    pub by: String,
    /// The admin's reason.
    pub why: String,
    /// `graceful`, `quick` or `fast`.
    pub level: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The kill-all process that raised it: the request is in force while it runs.
    #[serde(default)]
    pub issuer: Option<ProcessIdentity>,
}

/// `vmpilot run` refused to start: a kill-all is in progress on this node. Exit status 7.
#[derive(Debug, thiserror::Error)]
#[error(
    "a kill-all is in progress on this node (by {}: {}), so no pilot may start; nothing was changed\n\nhint: the fence is lifted when that kill-all ends; to keep pilots off the node after it, drain the node in the batch system",
    quoted(by, 64),
    quoted(why, 200)
)]
pub struct Fenced {
    /// Who pulled the brake.
    pub by: String,
    /// Their reason.
    pub why: String,
}

impl From<&KillRequest> for Fenced {
    fn from(k: &KillRequest) -> Self {
        Fenced {
            by: k.by.clone(),
            why: k.why.clone(),
        }
    }
}

impl KillRequest {
    /// A request from the current user.
    pub fn new(level: KillLevel, why: &str) -> Self {
        let by = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()));
        KillRequest {
            by,
            why: why.to_string(),
            level: match level {
                KillLevel::Graceful => "graceful",
                KillLevel::Quick => "quick",
                KillLevel::Fast => "fast",
            }
            .into(),
            at: OffsetDateTime::now_utc(),
            issuer: Some(ProcessIdentity::current()),
        }
    }

    /// Is the kill-all that raised this still running?
    pub fn is_in_force(&self) -> bool {
        self.issuer.as_ref().is_some_and(ProcessIdentity::is_alive)
    }

    /// Guests are destroyed at once.
    pub fn is_fast(&self) -> bool {
        self.level == "fast"
    }
}

/// A request is a few hundred bytes; a bigger file is not one.
const CAP: u64 = 64 * 1024;

/// Publish a request (durably, before any pilot is signalled).
pub fn publish(state_dir: &Path, request: &KillRequest) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(request).expect("kill request serializes");
    SafeDir::open(state_dir)?.write_atomic_unshared(FILE, &bytes)
}

/// The request in force, if any: one written by root (only root runs kill-all; the
/// pilot account can write the state directory too, and a request it forged is ignored)
/// whose kill-all still runs.
pub fn current(state_dir: &Path) -> Option<KillRequest> {
    let dir = SafeDir::open(state_dir).ok()?;
    if dir.owner_of(FILE)? != 0 {
        tracing::warn!(
            file = %dir.join(FILE).display(),
            "ignoring a kill request not written by root"
        );
        return None;
    }
    let bytes = dir.read(FILE, CAP).ok()??;
    let request: KillRequest = serde_json::from_slice(&bytes).ok()?;
    request.is_in_force().then_some(request)
}

/// Withdraw the request.
pub fn withdraw(state_dir: &Path) -> std::io::Result<()> {
    SafeDir::open(state_dir)?.remove(FILE).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_in_force_only_while_its_kill_all_runs() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: a kill request is honoured only when root wrote it");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(current(dir.path()).is_none());
        let mine = KillRequest::new(KillLevel::Fast, "test");
        publish(dir.path(), &mine).unwrap();
        assert_eq!(current(dir.path()), Some(mine.clone()));
        // Left behind by a kill-all that died: fences nothing.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = ProcessIdentity::of(child.id());
        child.wait().unwrap();
        let stale = KillRequest {
            issuer: gone.or(Some(ProcessIdentity {
                pid: u32::MAX,
                start_time: 0,
                start_ticks: Some(0),
                boot_id: crate::process::boot_id(),
            })),
            ..mine.clone()
        };
        publish(dir.path(), &stale).unwrap();
        assert!(current(dir.path()).is_none());
        withdraw(dir.path()).unwrap();
        withdraw(dir.path()).unwrap();
    }
}
