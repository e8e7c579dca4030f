//! The coordinator's SQLite database: one writer thread, a few pooled readers.
//!
//! Durability is the point. The file is in WAL mode with `synchronous=FULL`, and the writer
//! replies to a request only after the `COMMIT` that holds its change returned, so whatever
//! was acknowledged over HTTP is on disk. To make that cheap, the writer thread takes every
//! job that is waiting (up to [`MAX_BATCH`]) into one transaction — a group commit: one fsync
//! covers many events — and runs each job in its own savepoint, so one failing job does not
//! take its neighbours down. Statements are prepared once and cached per connection.
//!
//! Readers (API, status page) use their own connections; WAL lets them read while the
//! writer writes. Schema: see [`SCHEMA`] (older files are migrated on open); the domain operations live in `ingest.rs`
//! (writes) and `query.rs` (reads).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

/// Most jobs committed together.
pub const MAX_BATCH: usize = 512;
/// Jobs that may wait for the writer before senders are slowed down.
const QUEUE: usize = 8192;
/// Read connections kept open.
const MAX_IDLE_READERS: usize = 8;

/// The schema version this coordinator writes (`meta.schema_version`).
pub const SCHEMA_VERSION: i64 = 2;

/// The schema of a new database. A lease is `(node, lease_id, epoch)`: epochs count per
/// node, so one slot id may be live on two nodes at once. Every list the status page and
/// the API show has an index in the order it is shown.
pub const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta (key, value) VALUES ('schema_version', '2');
CREATE TABLE events (
    cursor      INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,
    source      TEXT NOT NULL,
    type        TEXT NOT NULL,
    lease_id    TEXT,
    epoch       INTEGER,
    seq         INTEGER,
    node        TEXT,
    received_at TEXT NOT NULL,
    body        TEXT NOT NULL
);
CREATE TABLE nodes (
    name         TEXT PRIMARY KEY,
    first_seen   TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    last_job_id  TEXT,
    last_lease   TEXT,
    last_epoch   INTEGER
);
CREATE TABLE leases (
    lease_id     TEXT NOT NULL,
    epoch        INTEGER NOT NULL,
    node         TEXT NOT NULL,
    job_id       TEXT,
    state        TEXT NOT NULL,
    reason       TEXT,
    error        TEXT,
    note         TEXT,
    memory_mib   INTEGER,
    cpus         INTEGER,
    deadline     TEXT,
    grace_secs   INTEGER,
    reserved_at  TEXT,
    ended_at     TEXT,
    last_seq     INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    guests       TEXT,
    lost         INTEGER NOT NULL DEFAULT 0,
    lost_at      TEXT,
    PRIMARY KEY (node, lease_id, epoch)
);
CREATE TABLE directives (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    lease_id   TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    type       TEXT NOT NULL,
    deadline   TEXT,
    status     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    done_at    TEXT,
    node       TEXT NOT NULL DEFAULT ''
);
CREATE TABLE guest_launches (
    lease_id   TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    node       TEXT NOT NULL,
    uri        TEXT NOT NULL,
    launched   TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (node, lease_id, epoch)
);
CREATE TABLE pilots (
    job_id       TEXT PRIMARY KEY,
    batch_system TEXT NOT NULL,
    origin       TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    memory       TEXT,
    cpus         INTEGER,
    time_limit   TEXT,
    partition    TEXT,
    lease_id     TEXT,
    epoch        INTEGER,
    reserved_at  TEXT,
    node         TEXT
);
";

/// Indexes, the same for new and migrated databases (each named after the query it serves).
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS events_by_lease ON events (lease_id, epoch);
CREATE INDEX IF NOT EXISTS events_by_age ON events (type, received_at);
CREATE INDEX IF NOT EXISTS leases_live ON leases (state, lost, last_seen_ms);
CREATE INDEX IF NOT EXISTS leases_by_recency ON leases (last_seen_ms);
CREATE INDEX IF NOT EXISTS leases_by_id ON leases (lease_id, epoch);
CREATE INDEX IF NOT EXISTS directives_pending ON directives (node, lease_id, epoch, status);
CREATE INDEX IF NOT EXISTS pilots_by_submission ON pilots (submitted_at);
";

/// Version 1 keyed leases, directives and guest launches by `(lease_id, epoch)` only. Rows
/// keep their node (for a lease id that two nodes shared, the node of its latest event,
/// which is what version 1 showed); directives take their lease's node.
const MIGRATE_1_TO_2: &str = "
DROP INDEX IF EXISTS directives_pending;
CREATE TABLE leases_v2 (
    lease_id TEXT NOT NULL, epoch INTEGER NOT NULL, node TEXT NOT NULL, job_id TEXT,
    state TEXT NOT NULL, reason TEXT, error TEXT, note TEXT, memory_mib INTEGER, cpus INTEGER,
    deadline TEXT, grace_secs INTEGER, reserved_at TEXT, ended_at TEXT,
    last_seq INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL, guests TEXT,
    lost INTEGER NOT NULL DEFAULT 0, lost_at TEXT,
    PRIMARY KEY (node, lease_id, epoch)
);
INSERT INTO leases_v2 (lease_id, epoch, node, job_id, state, reason, error, note, memory_mib,
    cpus, deadline, grace_secs, reserved_at, ended_at, last_seq, last_seen_ms, guests, lost, lost_at)
  SELECT lease_id, epoch, node, job_id, state, reason, error, note, memory_mib,
    cpus, deadline, grace_secs, reserved_at, ended_at, last_seq, last_seen_ms, guests, lost, lost_at
  FROM leases;
DROP TABLE leases;
ALTER TABLE leases_v2 RENAME TO leases;
ALTER TABLE directives ADD COLUMN node TEXT NOT NULL DEFAULT '';
UPDATE directives SET node = coalesce((SELECT l.node FROM leases l
    WHERE l.lease_id = directives.lease_id AND l.epoch = directives.epoch), '');
CREATE TABLE guest_launches_v2 (
    lease_id TEXT NOT NULL, epoch INTEGER NOT NULL, node TEXT NOT NULL, uri TEXT NOT NULL,
    launched TEXT NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (node, lease_id, epoch)
);
INSERT INTO guest_launches_v2 SELECT lease_id, epoch, node, uri, launched, updated_at
  FROM guest_launches;
DROP TABLE guest_launches;
ALTER TABLE guest_launches_v2 RENAME TO guest_launches;
ALTER TABLE pilots ADD COLUMN node TEXT;
UPDATE pilots SET node = (SELECT l.node FROM leases l
    WHERE l.lease_id = pilots.lease_id AND l.epoch = pilots.epoch);
UPDATE meta SET value = '2' WHERE key = 'schema_version';
";

/// Create the schema in a new database, or bring an older one up to [`SCHEMA_VERSION`], in
/// one transaction: a failed migration leaves the file as it was.
fn set_up(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
    let has_meta: bool = tx.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
        [],
        |r| r.get(0),
    )?;
    let empty: bool = tx.query_row("SELECT count(*) = 0 FROM sqlite_master", [], |r| r.get(0))?;
    if empty {
        // Only possible before the first table: lets pruning give space back to the disk.
        tx.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")?;
    }
    let version: i64 = if has_meta {
        tx.query_row(
            "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )?
    } else {
        tx.execute_batch(SCHEMA)?;
        SCHEMA_VERSION
    };
    match version {
        1 => tx.execute_batch(MIGRATE_1_TO_2)?,
        SCHEMA_VERSION => {}
        newer => {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
                Some(format!(
                    "schema version {newer} is newer than this coordinator's {SCHEMA_VERSION}; run the newer coordinator or restore a backup"
                )),
            ));
        }
    }
    tx.execute_batch(INDEXES)?;
    tx.commit()
}

/// Database failures.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The file cannot be opened or set up.
    #[error(
        "cannot open the database {path}: {source}\n\nhint: check `database` in the config and that its directory is writable"
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The database directory cannot be created.
    #[error("cannot create the database directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A statement failed.
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The transaction holding this change could not be committed; nothing was stored.
    #[error("database commit failed: {0}")]
    Commit(String),
    /// The writer has stopped (shutdown in progress, or it crashed).
    #[error("the database writer has stopped")]
    Closed,
    /// A blocking read task panicked or was cancelled.
    #[error("database read task failed: {0}")]
    Task(String),
}

/// Called after the batch's `COMMIT` with its error, if any; sends the job's reply.
type Finish = Box<dyn FnOnce(Option<&str>) + Send>;

/// One unit of work for the writer.
trait WriteJob: Send {
    /// Run inside the batch transaction; say whether to keep the savepoint, and how to
    /// reply once the batch is committed.
    fn run(self: Box<Self>, conn: &Connection) -> (bool, Finish);
    /// The job cannot run (no transaction could be started): reply with `why`.
    fn fail(self: Box<Self>, why: String);
}

type Job = Box<dyn WriteJob>;

/// A closure and the channel its result goes back on.
struct Typed<T, F> {
    f: F,
    reply: oneshot::Sender<Result<T, DbError>>,
}

impl<T, F> WriteJob for Typed<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> (bool, Finish) {
        let Typed { f, reply } = *self;
        let result = f(conn);
        let keep = result.is_ok();
        let finish: Finish = Box::new(move |commit_error| {
            let _ = reply.send(match commit_error {
                Some(e) => Err(DbError::Commit(e.to_string())),
                None => result,
            });
        });
        (keep, finish)
    }

    fn fail(self: Box<Self>, why: String) {
        let _ = self.reply.send(Err(DbError::Commit(why)));
    }
}

enum Msg {
    Job(Job),
    Close(oneshot::Sender<()>),
}

struct Inner {
    path: PathBuf,
    tx: mpsc::Sender<Msg>,
    readers: Mutex<Vec<Connection>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

fn open_conn(path: &Path, flags: OpenFlags) -> Result<Connection, DbError> {
    let err = |source| DbError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(path, flags).map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    // FULL (not NORMAL) so that a commit is on disk before we acknowledge, even across a
    // power cut; the group commit in the writer keeps the fsync count low.
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .map_err(err)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl Db {
    /// Open (creating) the database and start the writer thread.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| DbError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut conn = open_conn(path, OpenFlags::default())?;
        set_up(&mut conn).map_err(|source| DbError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|source| DbError::Dir {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Db {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                tx,
                readers: Mutex::new(Vec::new()),
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    /// Run `f` in the writer's transaction; resolves after the commit. An `Err` from `f`
    /// rolls back only `f`'s own changes.
    pub async fn write<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(Typed { f, reply });
        self.inner
            .tx
            .send(Msg::Job(job))
            .await
            .map_err(|_| DbError::Closed)?;
        answer.await.map_err(|_| DbError::Closed)?
    }

    /// Run `f` on a read connection, on tokio's blocking pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match inner.readers.lock().ok().and_then(|mut r| r.pop()) {
                Some(c) => c,
                None => {
                    let c = open_conn(&inner.path, OpenFlags::default())?;
                    c.execute_batch("PRAGMA query_only=1;")?;
                    c
                }
            };
            let result = f(&conn);
            if let Ok(mut idle) = inner.readers.lock()
                && idle.len() < MAX_IDLE_READERS
            {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Finish every queued write, checkpoint and close. Later writes fail with `Closed`.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.inner.tx.send(Msg::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
        if let Ok(mut readers) = self.inner.readers.lock() {
            readers.clear();
        }
        let handle = self.inner.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// The writer: block for one message, take whatever else is waiting, commit it together.
fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<Msg>) {
    let mut closing = None;
    while closing.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut jobs = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Job(j) => jobs.push(j),
                Msg::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if jobs.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !jobs.is_empty() {
            run_batch(&conn, jobs);
        }
    }
    // Fold the WAL into the main file so the database is one self-contained file at rest.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!("WAL checkpoint at shutdown failed: {e}");
    }
    drop(conn);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

fn run_batch(conn: &Connection, jobs: Vec<Job>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        tracing::error!("cannot begin a transaction: {e}");
        for job in jobs {
            job.fail(format!("cannot begin a transaction: {e}"));
        }
        return;
    }
    let mut finishes = Vec::with_capacity(jobs.len());
    for job in jobs {
        let savepoint = conn.execute_batch("SAVEPOINT job");
        let (keep, finish) = job.run(conn);
        if savepoint.is_ok() {
            let end = if keep {
                "RELEASE job"
            } else {
                "ROLLBACK TO job; RELEASE job"
            };
            if let Err(e) = conn.execute_batch(end) {
                tracing::error!("savepoint: {e}");
            }
        }
        finishes.push(finish);
    }
    let commit = conn.execute_batch("COMMIT").err().map(|e| e.to_string());
    if commit.is_some() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for finish in finishes {
        finish(commit.as_deref());
    }
}

/// Now as unix milliseconds.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// RFC 3339 text for a time, in UTC, to the millisecond.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    let ms = t.millisecond();
    t.to_offset(time::UtcOffset::UTC)
        .replace_millisecond(ms)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        // Formatting a UTC time with a 4-digit year cannot fail.
        .unwrap_or_default()
}

/// RFC 3339 text for unix milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version 1 schema as the first release created it (tables only; its indexes do
    /// not matter to the migration).
    const SCHEMA_V1: &str = "
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('schema_version', '1');
    CREATE TABLE events (cursor INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
        source TEXT NOT NULL, type TEXT NOT NULL, lease_id TEXT, epoch INTEGER, seq INTEGER,
        node TEXT, received_at TEXT NOT NULL, body TEXT NOT NULL);
    CREATE TABLE nodes (name TEXT PRIMARY KEY, first_seen TEXT NOT NULL,
        last_seen_ms INTEGER NOT NULL, last_job_id TEXT, last_lease TEXT, last_epoch INTEGER);
    CREATE TABLE leases (lease_id TEXT NOT NULL, epoch INTEGER NOT NULL, node TEXT NOT NULL,
        job_id TEXT, state TEXT NOT NULL, reason TEXT, error TEXT, note TEXT, memory_mib INTEGER,
        cpus INTEGER, deadline TEXT, grace_secs INTEGER, reserved_at TEXT, ended_at TEXT,
        last_seq INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL, guests TEXT,
        lost INTEGER NOT NULL DEFAULT 0, lost_at TEXT, PRIMARY KEY (lease_id, epoch));
    CREATE TABLE directives (id INTEGER PRIMARY KEY AUTOINCREMENT, lease_id TEXT NOT NULL,
        epoch INTEGER NOT NULL, type TEXT NOT NULL, deadline TEXT, status TEXT NOT NULL,
        created_at TEXT NOT NULL, done_at TEXT);
    CREATE INDEX directives_pending ON directives (lease_id, epoch, status);
    CREATE TABLE guest_launches (lease_id TEXT NOT NULL, epoch INTEGER NOT NULL,
        node TEXT NOT NULL, uri TEXT NOT NULL, launched TEXT NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (lease_id, epoch));
    CREATE TABLE pilots (job_id TEXT PRIMARY KEY, batch_system TEXT NOT NULL, origin TEXT NOT NULL,
        submitted_at TEXT NOT NULL, memory TEXT, cpus INTEGER, time_limit TEXT, partition TEXT,
        lease_id TEXT, epoch INTEGER, reserved_at TEXT);
    INSERT INTO leases (lease_id, epoch, node, state, last_seq, last_seen_ms)
        VALUES ('slot-1', 1, 'node-a', 'reserved', 3, 1000);
    INSERT INTO directives (lease_id, epoch, type, status, created_at)
        VALUES ('slot-1', 1, 'release', 'pending', '2026-12-01T00:00:00Z');
    INSERT INTO guest_launches VALUES ('slot-1', 1, 'node-a', 'qemu:///system', '[]', 'x');
    INSERT INTO pilots (job_id, batch_system, origin, submitted_at, lease_id, epoch)
        VALUES ('77', 'slurm', 'pool', 'x', 'slot-1', 1);
    ";

    /// Issue #13, item 4: databases written before leases were keyed by node are migrated on
    /// open, every row kept and given its node, and the same id can then exist per node.
    #[tokio::test]
    async fn a_version_1_database_is_migrated_keeping_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(SCHEMA_V1)
            .unwrap();
        let db = Db::open(&path).unwrap();
        let (version, directive_node, pilot_node, launches) = db
            .read(|c| {
                let q = |sql: &str| c.query_row(sql, [], |r| r.get::<_, String>(0));
                Ok((
                    q("SELECT value FROM meta WHERE key = 'schema_version'")?,
                    q("SELECT node FROM directives")?,
                    q("SELECT node FROM pilots")?,
                    q("SELECT node || ' ' || uri FROM guest_launches")?,
                ))
            })
            .await
            .unwrap();
        assert_eq!(version, "2");
        assert_eq!(
            directive_node, "node-a",
            "the directive took its lease's node"
        );
        assert_eq!(pilot_node, "node-a");
        assert_eq!(launches, "node-a qemu:///system");
        db.write(|c| {
            c.execute_batch(
                "INSERT INTO leases (lease_id, epoch, node, state, last_seq, last_seen_ms)
                 VALUES ('slot-1', 1, 'node-b', 'reserved', 0, 2000)",
            )?;
            Ok(())
        })
        .await
        .expect("the same (lease_id, epoch) on another node is another lease");
        db.close().await;
        // Opening again changes nothing; a newer schema is refused, not downgraded.
        let db = Db::open(&path).unwrap();
        let n: i64 = db
            .read(|c| Ok(c.query_row("SELECT count(*) FROM leases", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(n, 2);
        db.write(|c| {
            c.execute_batch("UPDATE meta SET value = '3' WHERE key = 'schema_version'")?;
            Ok(())
        })
        .await
        .unwrap();
        db.close().await;
        let e = Db::open(&path)
            .err()
            .expect("a newer schema is refused")
            .to_string();
        assert!(e.contains("newer") && e.contains("backup"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_are_batched_committed_and_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("sub/c.db")).unwrap();
        let mut handles = Vec::new();
        for i in 0..200 {
            let db = db.clone();
            handles.push(tokio::spawn(async move {
                db.write(move |c| {
                    c.execute(
                        "INSERT INTO meta (key, value) VALUES (?1, 'x')",
                        [format!("k{}", i % 150)],
                    )?;
                    Ok(())
                })
                .await
            }));
        }
        let mut failed = 0;
        for h in handles {
            if h.await.unwrap().is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 50, "duplicates fail alone, neighbours commit");
        let n: i64 = db
            .read(|c| Ok(c.query_row("SELECT count(*) FROM meta", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(n, 151);
        db.close().await;
        assert!(matches!(db.write(|_| Ok(())).await, Err(DbError::Closed)));
    }
}
