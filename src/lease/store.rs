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

use std::fs::File;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::record::{LeaseId, LeaseRecord, RECORD_VERSION};
use crate::safe_dir::{self, SafeDir};

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
        "cannot write lease record {path}: {source} (vmpilot will not act without a durable record)\n\nhint: {}",
        crate::safe_dir::write_hint(source)
    )]
    Write {
        /// The record path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The state directory does not take a write (`check-config`'s probe).
    #[error(
        "state directory {path} does not take a write: {source}\n\nhint: {}",
        crate::safe_dir::write_hint(source)
    )]
    NotWritable {
        /// The directory.
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
    /// A `.json` entry of `leases/` whose name is no lease id, so no record vmpilot
    /// wrote: reported (its name quoted), never opened.
    #[error(
        "{dir} holds {name}, which is not a lease record\n\nhint: move it out of the state directory; only `<lease-id>.json` and `.lock` files belong there"
    )]
    Stray {
        /// The directory.
        dir: PathBuf,
        /// The entry, quoted.
        name: String,
    },
    /// Another process holds the node lock for too long.
    #[error(
        "node lock {path} is held by {holder} (waited {waited:?})\n\nhint: if that process is gone or stuck, run `vmpilot status`, then `vmpilot recover`"
    )]
    LockBusy {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, from the lock file, quoted.
        holder: String,
        /// How long we waited.
        waited: Duration,
    },
}

/// The largest record vmpilot reads: far above any it writes (a lease's history is a few
/// dozen entries), so a bigger file is not a record.
pub const RECORD_CAP: u64 = 1 << 20;

/// Lock files hold one line naming their holder.
const LOCK_CAP: u64 = 4096;

/// The most entries `leases/` may have: two per lease, and a node has a handful of leases.
const LEASES_CAP: usize = 10_000;

/// The state directory, opened once and used through its descriptor
/// ([`crate::safe_dir`]): what is in it may have been written by the pilot account.
#[derive(Debug, Clone)]
pub struct Store {
    root: SafeDir,
    leases: SafeDir,
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
        let root = SafeDir::open(dir).map_err(err)?;
        let leases = root.subdir("leases").map_err(err)?;
        Ok(Store { root, leases })
    }

    /// The state directory's path (for messages and for opening it elsewhere).
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// The state directory itself, for the other files that live in it.
    pub fn safe_dir(&self) -> &SafeDir {
        &self.root
    }

    fn record_name(id: &LeaseId) -> String {
        format!("{id}.json")
    }

    fn lock_name(id: &LeaseId) -> String {
        format!("{id}.lock")
    }

    /// Where a lease's record lives.
    pub fn record_path(&self, id: &LeaseId) -> PathBuf {
        self.leases.join(&Self::record_name(id))
    }

    /// Persist a record durably (temp file, fsync, rename, fsync dir).
    pub fn save(&self, record: &LeaseRecord) -> Result<(), StoreError> {
        let name = Self::record_name(&record.lease_id);
        // Serializing our own plain data types cannot fail.
        let bytes = serde_json::to_vec_pretty(record).expect("lease record serializes");
        self.leases
            .write_atomic(&name, &bytes)
            .map_err(|source| StoreError::Write {
                path: self.leases.join(&name),
                source,
            })
    }

    /// Load a lease's record, if there is one.
    pub fn load(&self, id: &LeaseId) -> Result<Option<LeaseRecord>, StoreError> {
        let path = self.record_path(id);
        match self.leases.read(&Self::record_name(id), RECORD_CAP) {
            Ok(Some(bytes)) => parse_record(&path, &bytes).map(Some),
            Ok(None) => Ok(None),
            Err(source) => Err(StoreError::Read { path, source }),
        }
    }

    /// Every record in the state directory, sorted by lease id. A record that cannot be read
    /// is returned as an error in its place, so one bad file never hides the others; an
    /// entry whose name is not `<lease-id>.json` (or `.lock`, or a temp file) is reported
    /// the same way when it looks like a record (`*.json`), its name quoted.
    pub fn list(&self) -> Result<Vec<Result<LeaseRecord, StoreError>>, StoreError> {
        let (entries, not_utf8) =
            self.leases
                .entries(LEASES_CAP)
                .map_err(|source| StoreError::Dir {
                    path: self.leases.path().to_path_buf(),
                    source,
                })?;
        let mut out = Vec::new();
        for entry in entries {
            let name = entry.name;
            if name.starts_with(".tmp-") {
                continue;
            }
            let (stem, ext) = name.rsplit_once('.').unwrap_or((name.as_str(), ""));
            let id = stem.parse::<LeaseId>().ok();
            match (ext, id) {
                ("json", Some(id)) => out.push(match self.load(&id) {
                    Ok(Some(r)) => Ok(r),
                    // Gone since the listing: finished and removed meanwhile.
                    Ok(None) => continue,
                    Err(e) => Err(e),
                }),
                ("json", None) => out.push(Err(StoreError::Stray {
                    dir: self.leases.path().to_path_buf(),
                    name: safe_dir::quoted(&name, 80),
                })),
                // Lock files, and whatever else someone put there: not records.
                _ => {}
            }
        }
        if not_utf8 > 0 {
            tracing::warn!(
                dir = %self.leases.path().display(),
                count = not_utf8,
                "ignoring entries whose names are not UTF-8 (not lease records)"
            );
        }
        Ok(out)
    }

    /// Take the node lock, waiting at most `timeout`; `holder` is written into the lock file
    /// for whoever has to wait next.
    pub fn lock_node(&self, timeout: Duration, holder: &str) -> Result<NodeLock, StoreError> {
        let file = lock_waiting(&self.root, "node.lock", timeout, holder)?;
        Ok(NodeLock { _file: file })
    }

    /// Take the node lock if it is free now (for callers that wait themselves, e.g. while
    /// also listening for signals).
    pub fn try_lock_node(&self, holder: &str) -> Result<Option<NodeLock>, StoreError> {
        Ok(try_lock(&self.root, "node.lock", holder)?.map(|file| NodeLock { _file: file }))
    }

    /// Who holds (or last held) the node lock, as written into its file (untrusted).
    pub fn node_lock_holder(&self) -> String {
        holder_of(&self.root, "node.lock")
    }

    /// The node lock's path (for messages).
    pub fn node_lock_path(&self) -> PathBuf {
        self.root.join("node.lock")
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
        Ok(try_lock(&self.leases, &Self::lock_name(id), holder)?
            .map(|file| LeaseLock { _file: file }))
    }

    /// Take a lease's lock, waiting at most `timeout` (see [`Store::try_lock_lease`]).
    pub fn lock_lease(
        &self,
        id: &LeaseId,
        timeout: Duration,
        holder: &str,
    ) -> Result<LeaseLock, StoreError> {
        let file = lock_waiting(&self.leases, &Self::lock_name(id), timeout, holder)?;
        Ok(LeaseLock { _file: file })
    }

    /// Is a lease's lock held by a process right now? A probe: it takes and drops the
    /// lock at once when it is free, so a pilot starting at that instant waits a moment.
    /// A lock file that is not a safe regular file counts as held: nothing may finish
    /// that lease until a person looks.
    pub fn lease_is_held(&self, id: &LeaseId) -> bool {
        let name = Self::lock_name(id);
        if !self.leases.exists(&name) {
            return false;
        }
        !matches!(try_lock(&self.leases, &name, ""), Ok(Some(_)))
    }

    /// Is the pilot a record names running now, proven (see
    /// [`crate::process::ProcessIdentity::is_pilot_holding`])? It runs as the state directory's owner and
    /// holds the lease's lock. Records of vmpilot 0.1 (no start ticks; their pilots held
    /// no lease lock) are judged by identity alone.
    pub fn pilot_is_running(&self, record: &LeaseRecord) -> bool {
        if record.pilot.start_ticks.is_none() {
            return record.pilot.is_alive();
        }
        let Some(lock) = self.leases.file_id(&Self::lock_name(&record.lease_id)) else {
            return false;
        };
        record.pilot.is_pilot_holding(self.root.owner(), lock)
    }

    /// Who holds (or last held) a lease's lock, as written into its file (untrusted).
    pub fn lease_lock_holder(&self, id: &LeaseId) -> String {
        holder_of(&self.leases, &Self::lock_name(id))
    }
}

/// A lease's lock (see [`Store::try_lock_lease`]); released when dropped or when the
/// process dies, so a SIGKILLed pilot never leaves its lease locked.
#[derive(Debug)]
pub struct LeaseLock {
    _file: File,
}

/// Take the flock on `name` in `dir` if it is free; write `holder` into the file once held.
fn try_lock(dir: &SafeDir, name: &str, holder: &str) -> Result<Option<File>, StoreError> {
    let path = || dir.join(name);
    let mut file = dir
        .open_lock(name, LOCK_CAP)
        .map_err(|source| StoreError::Dir {
            path: path(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(source)) => {
            return Err(StoreError::Dir {
                path: path(),
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

/// Take the flock on `name` in `dir`, waiting at most `timeout`.
fn lock_waiting(
    dir: &SafeDir,
    name: &str,
    timeout: Duration,
    holder: &str,
) -> Result<File, StoreError> {
    let started = Instant::now();
    loop {
        if let Some(file) = try_lock(dir, name, holder)? {
            return Ok(file);
        }
        if started.elapsed() >= timeout {
            return Err(StoreError::LockBusy {
                path: dir.join(name),
                holder: safe_dir::quoted(&holder_of(dir, name), 200),
                waited: started.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The holder named in a lock file: its first line, as written. Anyone who can write the
/// state directory may have written it, so it is compared, never trusted, and shown only
/// through [`safe_dir::quoted`].
fn holder_of(dir: &SafeDir, name: &str) -> String {
    let text = match dir.read(name, LOCK_CAP) {
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => String::new(),
    };
    text.lines().next().unwrap_or("").trim().to_string()
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
