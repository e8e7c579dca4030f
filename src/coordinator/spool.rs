//! The durable outbox: one atomically written file per event, removed only after the
//! coordinator acknowledged it with a 2xx.
//!
//! Layout under `state_dir/spool` (0700): `<nanos>-<event id>.json`, delivered in name
//! order (oldest first); `rejected/` keeps events the coordinator refused with a 4xx, so a
//! poison event cannot block the queue and is still there for an admin to read.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::client::{CoordinatorClient, PostOutcome};
use super::event::EventEnvelope;
use crate::safe_dir::SafeDir;

/// Spool problems.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool directory or a file in it cannot be written.
    #[error(
        "cannot write to the event spool {path}: {source}\n\nhint: {}",
        crate::safe_dir::write_hint(source)
    )]
    Write {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The spool directory cannot be read.
    #[error("cannot read the event spool {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The spool directory, used through its descriptor ([`crate::safe_dir`]): root delivers
/// what the pilot account spooled, so a spooled "event" may be anything that account put
/// there (a symlink to a root-only file would otherwise be read by root and posted).
#[derive(Debug, Clone)]
pub struct Spool {
    dir: SafeDir,
    rejected: SafeDir,
}

/// An event is a few KiB; a bigger file is not one of ours.
const EVENT_CAP: u64 = 1 << 20;

/// The most entries a spool directory may have (a week of heartbeats of several leases
/// with the coordinator down is a few thousand).
const SPOOL_CAP: usize = 200_000;

/// What one delivery pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Acknowledged and removed.
    pub delivered: usize,
    /// Refused with a 4xx and moved to `rejected/`.
    pub rejected: usize,
    /// Still waiting.
    pub remaining: usize,
    /// Why the pass stopped early, if it did.
    pub stopped_by: Option<String>,
}

/// Backlog figures for `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Backlog {
    /// Events waiting.
    pub pending: usize,
    /// Age of the oldest, seconds.
    pub oldest_age_secs: Option<u64>,
    /// Events the coordinator refused.
    pub rejected: usize,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl Spool {
    /// Open (creating, 0700) `state_dir/spool`.
    pub fn open(state_dir: &Path) -> Result<Spool, SpoolError> {
        let err = |path: PathBuf| move |source| SpoolError::Write { path, source };
        let root = SafeDir::open(state_dir).map_err(err(state_dir.to_path_buf()))?;
        let dir = root.subdir("spool").map_err(err(root.join("spool")))?;
        let rejected = dir.subdir("rejected").map_err(err(dir.join("rejected")))?;
        Ok(Spool { dir, rejected })
    }

    /// Durably add an event. Names sort by creation time, then by a process-local counter.
    pub fn enqueue(&self, event: &EventEnvelope) -> Result<PathBuf, SpoolError> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{:024}-{n:06}-{}.json", now_nanos(), event.event_id);
        let bytes = serde_json::to_vec(event).expect("event serializes");
        self.dir
            .write_atomic(&name, &bytes)
            .map_err(|source| SpoolError::Write {
                path: self.dir.join(&name),
                source,
            })?;
        Ok(self.dir.join(&name))
    }

    /// Is the event with this id waiting in the spool?
    pub fn holds(&self, event_id: &str) -> Result<bool, SpoolError> {
        let suffix = format!("-{event_id}.json");
        Ok(self.pending()?.iter().any(|name| name.ends_with(&suffix)))
    }

    /// Names of the waiting events, oldest first.
    pub fn pending(&self) -> Result<Vec<String>, SpoolError> {
        list_json(&self.dir)
    }

    /// Backlog figures.
    pub fn backlog(&self) -> Result<Backlog, SpoolError> {
        let pending = self.pending()?;
        let oldest_age_secs = pending.first().and_then(|name| {
            let modified = self.dir.modified(name).ok()?;
            Some(SystemTime::now().duration_since(modified).ok()?.as_secs())
        });
        Ok(Backlog {
            pending: pending.len(),
            oldest_age_secs,
            rejected: list_json(&self.rejected)?.len(),
        })
    }

    /// Deliver waiting events in order until the spool is empty, the coordinator fails
    /// transiently (the rest wait for the next pass, keeping order), or `until` passes.
    /// Only one process delivers at a time; others wait for the delivery lock until `until`.
    pub async fn deliver(&self, client: &CoordinatorClient, until: Instant) -> DeliveryReport {
        let mut report = DeliveryReport::default();
        let Some(_lock) = self.delivery_lock(until).await else {
            report.stopped_by = Some("another process is delivering".into());
            report.remaining = self.pending().map(|p| p.len()).unwrap_or(0);
            return report;
        };
        let pending = match self.pending() {
            Ok(p) => p,
            Err(e) => {
                report.stopped_by = Some(e.to_string());
                return report;
            }
        };
        let total = pending.len();
        for name in pending {
            if Instant::now() >= until {
                report.stopped_by = Some("time bound reached".into());
                break;
            }
            let path = self.dir.join(&name);
            let body = match self.dir.read(&name, EVENT_CAP) {
                Ok(Some(body)) => body,
                // Delivered by another process meanwhile.
                Ok(None) => continue,
                Err(e) => {
                    // Not a file vmpilot spooled (or unreadable): never sent, set aside.
                    tracing::error!(event = %path.display(), error = %e, "not delivering a spool entry that is not a safe event file; moved to spool/rejected");
                    let _ = self.dir.rename_to(&name, &self.rejected, &name);
                    report.rejected += 1;
                    continue;
                }
            };
            let left = until.saturating_duration_since(Instant::now());
            match client.post_event(&body, left).await {
                PostOutcome::Accepted(_) => {
                    let _ = self.dir.remove(&name);
                    report.delivered += 1;
                }
                PostOutcome::Rejected {
                    status,
                    body: reply,
                } => {
                    tracing::error!(event = %path.display(), %status, reply = %reply, "coordinator rejected an event; kept in spool/rejected");
                    let _ = self.dir.rename_to(&name, &self.rejected, &name);
                    report.rejected += 1;
                }
                PostOutcome::Transient(why) => {
                    report.stopped_by = Some(why);
                    break;
                }
            }
        }
        let _ = self.dir.sync();
        report.remaining = total - report.delivered - report.rejected;
        report
    }

    async fn delivery_lock(&self, until: Instant) -> Option<File> {
        let file = self.dir.open_lock(".deliver.lock", 4096).ok()?;
        loop {
            if file.try_lock().is_ok() {
                return Some(file);
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Names of the `*.json` entries of `dir` (not dot files), sorted: delivery order.
fn list_json(dir: &SafeDir) -> Result<Vec<String>, SpoolError> {
    let (entries, _) = dir.entries(SPOOL_CAP).map_err(|source| SpoolError::Read {
        path: dir.path().to_path_buf(),
        source,
    })?;
    Ok(entries
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .collect())
}
