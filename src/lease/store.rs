//! Lease records on disk, and the node lock that serializes host changes.
//!
//! Layout under `state_dir` (0700):
//! - `leases/<lease-id>.json` — one record per lease (0600), replaced atomically;
//! - `leases/<lease-id>.lock` — the lease's flock: held by its pilot for the pilot's whole
//!   life and by `recover`/`kill-all` while they finish the lease, so exactly one process
//!   changes a lease at a time (docs/state-machine.md, "Who may change a lease");
//! - `node.lock` — flock held while any process changes the host; its content names the
//!   holder so a waiter that gives up can say who is in the way.
//!
//! Records are written before each side effect (the intent) and after it; see `lease`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::record::{LeaseId, LeaseRecord, RECORD_VERSION};
use crate::fsutil;

/// Things that go wrong with the state directory. Exit status: environment.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory cannot be created or used.
    #[error(
        "state directory {path} is not usable: {source}\n\nhint: run as root or set `state_dir` (or --state-dir) to a directory this user owns"
    )]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A record could not be written (disk full, read-only file system...).
    #[error(
        "cannot write lease record {path}: {source}\n\nhint: free space in the state directory; vmpilot will not act without a durable record"
    )]
    Write {
        /// The record path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A record could not be read.
    #[error("cannot read lease record {path}: {source}")]
    Read {
        /// The record path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A record is not valid JSON or does not match the format.
    #[error(
        "lease record {path} is corrupt: {detail}\n\nhint: keep it for a post-mortem and move it out of the state directory; check the host by hand (`vmpilot status`)"
    )]
    Corrupt {
        /// The record path.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A record written by another vmpilot version.
    #[error(
        "lease record {path} has format version {found}, this vmpilot reads version {RECORD_VERSION}\n\nhint: finish it with the vmpilot version that wrote it"
    )]
    Version {
        /// The record path.
        path: PathBuf,
        /// The version found.
        found: u64,
    },
    /// Another process holds the node lock for too long.
    #[error(
        "node lock {path} is held by {holder} (waited {waited:?})\n\nhint: if that process is gone or stuck, run `vmpilot status`, then `vmpilot recover`"
    )]
    LockBusy {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, from the lock file.
        holder: String,
        /// How long we waited.
        waited: Duration,
    },
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// The node lock; released when dropped (or when the process dies, which is why it is a
/// flock and not a pid file).
#[derive(Debug)]
pub struct NodeLock {
    _file: File,
}

impl Store {
    /// Open (creating, 0700) the state directory.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let err = |source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        fsutil::ensure_private_dir(dir).map_err(err)?;
        fsutil::ensure_private_dir(&dir.join("leases")).map_err(err)?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a lease's record lives.
    pub fn record_path(&self, id: &LeaseId) -> PathBuf {
        self.dir.join("leases").join(format!("{id}.json"))
    }

    /// Persist a record durably (temp file, fsync, rename, fsync dir).
    pub fn save(&self, record: &LeaseRecord) -> Result<(), StoreError> {
        let path = self.record_path(&record.lease_id);
        // Serializing our own plain data types cannot fail.
        let bytes = serde_json::to_vec_pretty(record).expect("lease record serializes");
        fsutil::write_atomic(&path, &bytes).map_err(|source| StoreError::Write { path, source })
    }

    /// Load a lease's record, if there is one.
    pub fn load(&self, id: &LeaseId) -> Result<Option<LeaseRecord>, StoreError> {
        let path = self.record_path(id);
        match fs::read(&path) {
            Ok(bytes) => parse_record(&path, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Read { path, source }),
        }
    }

    /// Every record in the state directory, sorted by lease id. A record that cannot be read
    /// is returned as an error in its place, so one bad file never hides the others.
    pub fn list(&self) -> Result<Vec<Result<LeaseRecord, StoreError>>, StoreError> {
        let leases = self.dir.join("leases");
        let entries = fs::read_dir(&leases).map_err(|source| StoreError::Dir {
            path: leases.clone(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        Ok(paths
            .into_iter()
            .map(|path| match fs::read(&path) {
                Ok(bytes) => parse_record(&path, &bytes),
                Err(source) => Err(StoreError::Read { path, source }),
            })
            .collect())
    }

    /// Take the node lock, waiting at most `timeout`; `holder` is written into the lock file
    /// for whoever has to wait next.
    pub fn lock_node(&self, timeout: Duration, holder: &str) -> Result<NodeLock, StoreError> {
        let file = lock_waiting(&self.dir.join("node.lock"), timeout, holder)?;
        Ok(NodeLock { _file: file })
    }

    /// Take the node lock if it is free now (for callers that wait themselves, e.g. while
    /// also listening for signals).
    pub fn try_lock_node(&self, holder: &str) -> Result<Option<NodeLock>, StoreError> {
        Ok(try_lock(&self.dir.join("node.lock"), holder)?.map(|file| NodeLock { _file: file }))
    }

    /// Who holds (or last held) the node lock, as written into its file.
    pub fn node_lock_holder(&self) -> String {
        holder_of(&self.dir.join("node.lock"))
    }

    /// Where a lease's lock lives (beside its record).
    pub fn lease_lock_path(&self, id: &LeaseId) -> PathBuf {
        self.dir.join("leases").join(format!("{id}.lock"))
    }

    /// Take a lease's lock if it is free now. Its pilot holds it from before the record is
    /// first written until the pilot exits; `recover` and `kill-all` hold it for the whole
    /// of finishing the lease. Whoever holds it is the one process that may change the
    /// lease, so a lease is never finished twice or under a live pilot.
    pub fn try_lock_lease(
        &self,
        id: &LeaseId,
        holder: &str,
    ) -> Result<Option<LeaseLock>, StoreError> {
        Ok(try_lock(&self.lease_lock_path(id), holder)?.map(|file| LeaseLock { _file: file }))
    }

    /// Take a lease's lock, waiting at most `timeout` (see [`Store::try_lock_lease`]).
    pub fn lock_lease(
        &self,
        id: &LeaseId,
        timeout: Duration,
        holder: &str,
    ) -> Result<LeaseLock, StoreError> {
        let file = lock_waiting(&self.lease_lock_path(id), timeout, holder)?;
        Ok(LeaseLock { _file: file })
    }

    /// Is a lease's lock held by a process right now? A probe: it takes and drops the
    /// lock at once when it is free, so a pilot starting at that instant waits a moment.
    pub fn lease_is_held(&self, id: &LeaseId) -> bool {
        let path = self.lease_lock_path(id);
        if !path.exists() {
            return false;
        }
        matches!(try_lock(&path, ""), Ok(None))
    }

    /// Who holds (or last held) a lease's lock, as written into its file.
    pub fn lease_lock_holder(&self, id: &LeaseId) -> String {
        holder_of(&self.lease_lock_path(id))
    }
}

/// A lease's lock (see [`Store::try_lock_lease`]); released when dropped or when the
/// process dies, so a SIGKILLed pilot never leaves its lease locked.
#[derive(Debug)]
pub struct LeaseLock {
    _file: File,
}

/// Take the flock on `path` if it is free; write `holder` into the file once held.
fn try_lock(path: &Path, holder: &str) -> Result<Option<File>, StoreError> {
    let mut file = open_lock_file(path).map_err(|source| StoreError::Dir {
        path: path.to_path_buf(),
        source,
    })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(source)) => {
            return Err(StoreError::Dir {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    if !holder.is_empty() {
        // Naming the holder is best effort: the lock itself is what protects the host.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = file.write_all(holder.as_bytes());
    }
    Ok(Some(file))
}

/// Take the flock on `path`, waiting at most `timeout`.
fn lock_waiting(path: &Path, timeout: Duration, holder: &str) -> Result<File, StoreError> {
    let started = Instant::now();
    loop {
        if let Some(file) = try_lock(path, holder)? {
            return Ok(file);
        }
        if started.elapsed() >= timeout {
            return Err(StoreError::LockBusy {
                path: path.to_path_buf(),
                holder: holder_of(path),
                waited: started.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The holder named in a lock file (at most a line of it).
fn holder_of(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(file) = File::open(path) {
        let _ = file.take(256).read_to_string(&mut text);
    }
    text.lines().next().unwrap_or("").trim().to_string()
}

fn open_lock_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(path)
}

/// Parse a record, checking the format version first so an old or new format gives a
/// version error rather than a confusing field error. Never panics on any input.
pub fn parse_record(path: &Path, bytes: &[u8]) -> Result<LeaseRecord, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not JSON ({e})")))?;
    let version = value
        .get("version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| corrupt("no numeric `version` field".into()))?;
    if version != u64::from(RECORD_VERSION) {
        return Err(StoreError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_records_give_clear_errors_not_panics() {
        let p = Path::new("/state/leases/x.json");
        for bytes in [&b""[..], b"{", b"[]", b"{\"version\": \"1\"}", b"\xff\xfe"] {
            let e = parse_record(p, bytes).unwrap_err().to_string();
            assert!(e.contains("corrupt") && e.contains("x.json"), "{e}");
        }
        let e = parse_record(p, b"{\"version\": 99}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 99"), "{e}");
        let e = parse_record(p, b"{\"version\": 1}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field"), "{e}");
    }

    #[test]
    fn a_busy_lock_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let _held = store
            .lock_node(Duration::from_secs(1), "pid 4242 lease a")
            .unwrap();
        let e = store
            .lock_node(Duration::from_millis(100), "pid 1 lease b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pid 4242 lease a"), "{e}");
        drop(_held);
        store
            .lock_node(Duration::from_millis(100), "pid 1 lease b")
            .unwrap();
    }
}
