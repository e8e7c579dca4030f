//! The admin's kill request: a file that tells pilots a SIGTERM comes from `kill-all`.
//!
//! A pilot cannot tell an admin's SIGTERM from the batch system's, but the difference
//! matters to the coordinator (reason `admin` vs `cancelled`) and to how hard guests are
//! stopped (`--fast` destroys at once). `kill-all` writes this file before signalling and
//! removes it when done; a pilot that is terminated while it exists reports an admin kill.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cli::KillLevel;
use crate::fsutil;

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
        }
    }

    /// Guests are destroyed at once.
    pub fn is_fast(&self) -> bool {
        self.level == "fast"
    }
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Publish a request (durably, before any pilot is signalled).
pub fn publish(state_dir: &Path, request: &KillRequest) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(request).expect("kill request serializes");
    fsutil::write_atomic(&path(state_dir), &bytes)
}

/// The request in force, if any.
pub fn current(state_dir: &Path) -> Option<KillRequest> {
    let bytes = std::fs::read(path(state_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Withdraw the request.
pub fn withdraw(state_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path(state_dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
