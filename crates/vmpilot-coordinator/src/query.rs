//! Read-only views of the database for the API and the status page. Every view is a plain
//! serde struct whose JSON shape is documented in docs/schemas/ and docs/openapi.yaml.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::db::{Db, DbError, rfc3339_ms};
use super::guests::Launch;
use super::ingest::{DirectiveView, directive_from_row};
use super::message::GuestFate;

/// Most rows one list returns.
pub const MAX_LIST: usize = 1000;

/// A lease epoch as the API shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct LeaseView {
    /// Lease id.
    pub lease_id: String,
    /// Epoch on its node.
    pub epoch: u64,
    /// Node.
    pub node: String,
    /// Batch job.
    pub job_id: Option<String>,
    /// Last reported state (`reserved`, `unreserving`, `unreserved`, `failed`, …).
    pub state: String,
    /// Why it ended or is ending.
    pub reason: Option<String>,
    /// What failed (`failed`).
    pub error: Option<String>,
    /// Recovery or kill-all detail.
    pub note: Option<String>,
    /// Guest memory, MiB.
    pub memory_mib: Option<u64>,
    /// Guest CPUs.
    pub cpus: Option<u32>,
    /// Current deadline.
    pub deadline: Option<String>,
    /// Grace before the deadline, seconds.
    pub grace_secs: Option<u64>,
    /// When the pilot reported `reserved`.
    pub reserved_at: Option<String>,
    /// When the coordinator learnt the lease had ended.
    pub ended_at: Option<String>,
    /// Highest sequence number applied.
    pub last_seq: u64,
    /// When the coordinator last heard about this lease.
    pub last_seen: String,
    /// Silent for longer than `lost_after` while reserved.
    pub lost: bool,
    /// When it was marked lost.
    pub lost_at: Option<String>,
    /// Each guest's fate, once the lease ended.
    pub guests: Vec<GuestFate>,
    /// The guests the coordinator started from its templates for this lease, and what
    /// became of their definitions.
    pub launched: Vec<Launch>,
    /// Seconds to the deadline while the lease holds the node (negative: overdue).
    pub time_left_secs: Option<i64>,
    /// Directives not yet answered by the lease ending.
    pub pending_directives: Vec<DirectiveView>,
}

impl LeaseView {
    /// Failed, lost, or ended by a host error: what the status page highlights.
    pub fn is_trouble(&self) -> bool {
        self.lost || self.state == "failed" || self.reason.as_deref() == Some("host-error")
    }
}

/// A node as the API shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct NodeView {
    /// Node name as the pilot reports it.
    pub name: String,
    /// First event from it.
    pub first_seen: String,
    /// Latest event from it.
    pub last_seen: String,
    /// Batch job of that event.
    pub last_job_id: Option<String>,
    /// Lease of that event.
    pub last_lease: Option<String>,
    /// Epoch of that event.
    pub last_epoch: Option<u64>,
    /// Leases holding the node now (reserved or unreserving, not lost).
    pub active_leases: u64,
    /// Leases on it that are failed or lost.
    pub troubled_leases: u64,
}

/// One entry of the event log.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EventView {
    /// Position in the log; strictly increasing, never reused.
    pub cursor: i64,
    /// `pilot` (a received event) or `coordinator` (`lost`, `directive`).
    pub source: String,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Lease.
    pub lease_id: Option<String>,
    /// Epoch.
    pub epoch: Option<u64>,
    /// Pilot's sequence number.
    pub seq: Option<u64>,
    /// Node.
    pub node: Option<String>,
    /// When the coordinator stored it.
    pub received_at: String,
    /// The event as received (pilot) or recorded (coordinator).
    pub event: serde_json::Value,
}

/// A page of the event log.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EventsPage {
    /// Entries with `cursor > after`, oldest first.
    pub events: Vec<EventView>,
    /// Pass as `after` for the next page (equal to `after` when nothing new).
    pub next_cursor: i64,
}

/// A submitted pilot.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PilotView {
    /// Batch job id.
    pub job_id: String,
    /// `slurm` or `pbs`.
    pub batch_system: String,
    /// `api` or `pool`.
    pub origin: String,
    /// When submitted.
    pub submitted_at: String,
    /// Requested memory.
    pub memory: Option<String>,
    /// Requested CPUs.
    pub cpus: Option<u32>,
    /// Requested time limit.
    pub time_limit: Option<String>,
    /// Partition or queue.
    pub partition: Option<String>,
    /// The lease it claimed, once `reserved` arrived with this job id.
    pub lease_id: Option<String>,
    /// That lease's epoch.
    pub epoch: Option<u64>,
    /// When `reserved` arrived.
    pub reserved_at: Option<String>,
}

const LEASE_COLUMNS: &str =
    "lease_id, epoch, node, job_id, state, reason, error, note, memory_mib, cpus,
     deadline, grace_secs, reserved_at, ended_at, last_seq, last_seen_ms, guests, lost, lost_at,
     (SELECT launched FROM guest_launches g
      WHERE g.node = leases.node AND g.lease_id = leases.lease_id AND g.epoch = leases.epoch)
     AS launched";

fn lease_from_row(r: &rusqlite::Row<'_>, now: OffsetDateTime) -> rusqlite::Result<LeaseView> {
    let state: String = r.get(4)?;
    let deadline: Option<String> = r.get(10)?;
    let holds = matches!(state.as_str(), "reserving" | "reserved" | "unreserving");
    let time_left_secs = deadline
        .as_deref()
        .filter(|_| holds)
        .and_then(|d| OffsetDateTime::parse(d, &time::format_description::well_known::Rfc3339).ok())
        .map(|d| (d - now).whole_seconds());
    let guests: Option<String> = r.get(16)?;
    let launched: Option<String> = r.get(19)?;
    Ok(LeaseView {
        lease_id: r.get(0)?,
        epoch: r.get::<_, i64>(1)? as u64,
        node: r.get(2)?,
        job_id: r.get(3)?,
        state,
        reason: r.get(5)?,
        error: r.get(6)?,
        note: r.get(7)?,
        memory_mib: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        cpus: r.get::<_, Option<i64>>(9)?.map(|v| v as u32),
        deadline,
        grace_secs: r.get::<_, Option<i64>>(11)?.map(|v| v as u64),
        reserved_at: r.get(12)?,
        ended_at: r.get(13)?,
        last_seq: r.get::<_, i64>(14)? as u64,
        last_seen: rfc3339_ms(r.get(15)?),
        lost: r.get(17)?,
        lost_at: r.get(18)?,
        guests: guests
            .and_then(|g| serde_json::from_str(&g).ok())
            .unwrap_or_default(),
        launched: launched
            .and_then(|g| serde_json::from_str(&g).ok())
            .unwrap_or_default(),
        time_left_secs,
        pending_directives: Vec::new(),
    })
}

fn with_directives(conn: &Connection, mut lease: LeaseView) -> Result<LeaseView, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, type, lease_id, epoch, deadline, status, created_at, done_at, node
         FROM directives
         WHERE node = ?3 AND lease_id = ?1 AND epoch = ?2 AND status = 'pending' ORDER BY id",
    )?;
    lease.pending_directives = stmt
        .query_map(
            params![lease.lease_id, lease.epoch as i64, lease.node],
            directive_from_row,
        )?
        .collect::<Result<_, _>>()?;
    Ok(lease)
}

/// The lease list's query (also the status page's).
fn leases_sql() -> String {
    format!("SELECT {LEASE_COLUMNS} FROM leases ORDER BY last_seen_ms DESC LIMIT ?1")
}

/// Leases, most recently heard from first.
pub fn leases(conn: &Connection, limit: usize) -> Result<Vec<LeaseView>, DbError> {
    let now = OffsetDateTime::now_utc();
    let sql = leases_sql();
    let rows: Vec<LeaseView> = conn
        .prepare_cached(&sql)?
        .query_map([limit.min(MAX_LIST) as i64], |r| lease_from_row(r, now))?
        .collect::<Result<_, _>>()?;
    rows.into_iter().map(|l| with_directives(conn, l)).collect()
}

/// One lease on `node`: `epoch`, or the newest epoch.
pub fn lease(
    conn: &Connection,
    node: &str,
    id: &str,
    epoch: Option<u64>,
) -> Result<Option<LeaseView>, DbError> {
    let now = OffsetDateTime::now_utc();
    let sql = format!(
        "SELECT {LEASE_COLUMNS} FROM leases
         WHERE node = ?3 AND lease_id = ?1 AND (?2 IS NULL OR epoch = ?2)
         ORDER BY epoch DESC LIMIT 1"
    );
    let row = conn
        .prepare_cached(&sql)?
        .query_row(params![id, epoch.map(|e| e as i64), node], |r| {
            lease_from_row(r, now)
        })
        .optional()?;
    row.map(|l| with_directives(conn, l)).transpose()
}

/// The nodes a lease id is known on, by name.
pub fn nodes_of(conn: &Connection, id: &str) -> Result<Vec<String>, DbError> {
    Ok(conn
        .prepare_cached("SELECT DISTINCT node FROM leases WHERE lease_id = ?1 ORDER BY node")?
        .query_map([id], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Every epoch known for a lease id on a node, newest first.
pub fn epochs(conn: &Connection, node: &str, id: &str) -> Result<Vec<u64>, DbError> {
    Ok(conn
        .prepare_cached(
            "SELECT epoch FROM leases WHERE node = ?2 AND lease_id = ?1 ORDER BY epoch DESC",
        )?
        .query_map(params![id, node], |r| r.get::<_, i64>(0).map(|e| e as u64))?
        .collect::<Result<_, _>>()?)
}

/// The node list's query: the counts search each node's leases by the key's node prefix.
const NODES_SQL: &str =
    "SELECT n.name, n.first_seen, n.last_seen_ms, n.last_job_id, n.last_lease, n.last_epoch,
       (SELECT count(*) FROM leases l WHERE l.node = n.name AND l.lost = 0
           AND l.state IN ('reserving', 'reserved', 'unreserving')),
       (SELECT count(*) FROM leases l WHERE l.node = n.name AND (l.lost = 1 OR l.state = 'failed'))
     FROM nodes n ORDER BY n.name LIMIT ?1";

/// Nodes, by name.
pub fn nodes(conn: &Connection) -> Result<Vec<NodeView>, DbError> {
    let mut stmt = conn.prepare_cached(NODES_SQL)?;
    let rows = stmt.query_map([MAX_LIST as i64], |r| {
        Ok(NodeView {
            name: r.get(0)?,
            first_seen: r.get(1)?,
            last_seen: rfc3339_ms(r.get(2)?),
            last_job_id: r.get(3)?,
            last_lease: r.get(4)?,
            last_epoch: r.get::<_, Option<i64>>(5)?.map(|e| e as u64),
            active_leases: r.get::<_, i64>(6)? as u64,
            troubled_leases: r.get::<_, i64>(7)? as u64,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventView> {
    let body: String = r.get(8)?;
    Ok(EventView {
        cursor: r.get(0)?,
        source: r.get(1)?,
        kind: r.get(2)?,
        lease_id: r.get(3)?,
        epoch: r.get::<_, Option<i64>>(4)?.map(|e| e as u64),
        seq: r.get::<_, Option<i64>>(5)?.map(|e| e as u64),
        node: r.get(6)?,
        received_at: r.get(7)?,
        event: serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
    })
}

const EVENT_COLUMNS: &str = "cursor, source, type, lease_id, epoch, seq, node, received_at, body";

/// Log entries after `after`, oldest first; optionally for one lease.
pub fn events(
    conn: &Connection,
    after: i64,
    limit: usize,
    lease: Option<&str>,
) -> Result<EventsPage, DbError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE cursor > ?1 AND (?3 IS NULL OR lease_id = ?3)
         ORDER BY cursor LIMIT ?2"
    );
    let events: Vec<EventView> = conn
        .prepare_cached(&sql)?
        .query_map(
            params![after, limit.min(MAX_LIST) as i64, lease],
            event_from_row,
        )?
        .collect::<Result<_, _>>()?;
    let next_cursor = events.last().map_or(after, |e| e.cursor);
    Ok(EventsPage {
        events,
        next_cursor,
    })
}

fn recent_events_sql() -> String {
    format!("SELECT {EVENT_COLUMNS} FROM events ORDER BY cursor DESC LIMIT ?1")
}

/// The newest `limit` log entries, newest first (status page).
pub fn recent_events(conn: &Connection, limit: usize) -> Result<Vec<EventView>, DbError> {
    let sql = recent_events_sql();
    Ok(conn
        .prepare_cached(&sql)?
        .query_map([limit.min(MAX_LIST) as i64], event_from_row)?
        .collect::<Result<_, _>>()?)
}

const PILOTS_SQL: &str =
    "SELECT job_id, batch_system, origin, submitted_at, memory, cpus, time_limit, partition,
            lease_id, epoch, reserved_at
     FROM pilots ORDER BY submitted_at DESC LIMIT ?1";

/// Submitted pilots, newest first.
pub fn pilots(conn: &Connection, limit: usize) -> Result<Vec<PilotView>, DbError> {
    let mut stmt = conn.prepare_cached(PILOTS_SQL)?;
    let rows = stmt.query_map([limit.min(MAX_LIST) as i64], |r| {
        Ok(PilotView {
            job_id: r.get(0)?,
            batch_system: r.get(1)?,
            origin: r.get(2)?,
            submitted_at: r.get(3)?,
            memory: r.get(4)?,
            cpus: r.get::<_, Option<i64>>(5)?.map(|v| v as u32),
            time_limit: r.get(6)?,
            partition: r.get(7)?,
            lease_id: r.get(8)?,
            epoch: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
            reserved_at: r.get(10)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Everything the status page shows, read in one transaction so it is consistent.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Nodes.
    pub nodes: Vec<NodeView>,
    /// Leases, most recent first.
    pub leases: Vec<LeaseView>,
    /// Newest events first.
    pub events: Vec<EventView>,
    /// Newest pilots first.
    pub pilots: Vec<PilotView>,
}

impl Db {
    /// Read the status page's data.
    pub async fn snapshot(&self) -> Result<Snapshot, DbError> {
        self.read(|conn| {
            conn.execute_batch("BEGIN")?;
            let snap = (|| {
                Ok(Snapshot {
                    nodes: nodes(conn)?,
                    leases: leases(conn, 200)?,
                    events: recent_events(conn, 50)?,
                    pilots: pilots(conn, 20)?,
                })
            })();
            let _ = conn.execute_batch("COMMIT");
            snap
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #13, item 3: the status page's queries ran unindexed correlated scans (every
    /// node counted its leases by reading all of them). Each query's plan must read tables
    /// only through an index, and sort nothing in a temporary tree.
    #[tokio::test]
    async fn the_status_page_and_list_queries_read_through_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("c.db")).unwrap();
        let queries = [
            ("leases", leases_sql()),
            ("nodes", NODES_SQL.to_string()),
            ("events", recent_events_sql()),
            ("pilots", PILOTS_SQL.to_string()),
        ];
        let plans = db
            .read(move |c| {
                let mut out = Vec::new();
                for (name, sql) in queries {
                    let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                    let lines: Vec<String> = stmt
                        .query_map([10], |r| r.get::<_, String>(3))?
                        .collect::<Result<_, _>>()?;
                    out.push((name, lines));
                }
                Ok(out)
            })
            .await
            .unwrap();
        for (name, lines) in plans {
            for line in &lines {
                assert!(
                    !line.contains("TEMP B-TREE"),
                    "{name} sorts in a temporary tree: {lines:?}"
                );
                // `cursor` is the rowid: the event log's table is its own index.
                let rowid_order = name == "events" && line == "SCAN events";
                assert!(
                    !line.starts_with("SCAN") || line.contains("USING") || rowid_order,
                    "{name} scans a table without an index: {lines:?}"
                );
            }
        }
    }
}
