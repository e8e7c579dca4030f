//! Everything that changes the database, each a function run by the writer thread inside
//! its batch transaction (see `db.rs`): applying a pilot event, creating a directive,
//! marking silent leases lost, recording a submitted pilot.
//!
//! Invariants:
//! - the event log is append-only; `event_id` is unique, so a re-delivered event is a no-op
//!   that still gets the lease's pending directives back;
//! - a lease row is keyed by `(node, lease_id, epoch)`: epochs count per node, so the same
//!   slot id on two nodes is two leases, and events of an older epoch — delivered late from
//!   a node's spool — never touch the newer lease;
//! - within an epoch the lease's state follows the event with the highest `seq`; an older
//!   event only fills in fields that are still unknown.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;
use time::OffsetDateTime;

use super::db::{DbError, rfc3339};
use super::guests::Launch;
use super::message::{Directive, EventReply, GuestFate, IncomingBody, IncomingEvent, IngestStatus};
use vmpilot_protocol::lease_id::LeaseId;

/// A lease row while it is being updated.
#[derive(Debug, Default, Clone)]
struct LeaseRow {
    node: String,
    job_id: Option<String>,
    state: String,
    reason: Option<String>,
    error: Option<String>,
    note: Option<String>,
    memory_mib: Option<i64>,
    cpus: Option<i64>,
    deadline: Option<String>,
    grace_secs: Option<i64>,
    reserved_at: Option<String>,
    ended_at: Option<String>,
    last_seq: i64,
    last_seen_ms: i64,
    guests: Option<String>,
    lost: bool,
    lost_at: Option<String>,
}

/// Store `event` (whose exact bytes are `body`) and apply it; the reply carries the
/// lease's pending directives.
pub fn apply_event(
    conn: &Connection,
    event: &IncomingEvent,
    body: &str,
    received: OffsetDateTime,
) -> Result<EventReply, DbError> {
    let lease = event.lease_id.as_str();
    let node = event.node.as_str();
    let received_text = rfc3339(received);
    let received_ms = (received.unix_timestamp_nanos() / 1_000_000) as i64;
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO events (event_id, source, type, lease_id, epoch, seq, node, received_at, body)
             VALUES (?1, 'pilot', ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            event.event_id,
            event.body.kind(),
            lease,
            event.epoch as i64,
            event.seq as i64,
            event.node,
            received_text,
            body
        ])?;
    if inserted == 0 {
        return Ok(EventReply {
            status: IngestStatus::Duplicate,
            directives: pending_directives(conn, node, &event.lease_id, event.epoch)?,
        });
    }
    conn.prepare_cached(
        "INSERT INTO nodes (name, first_seen, last_seen_ms, last_job_id, last_lease, last_epoch)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (name) DO UPDATE SET
           last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
           last_job_id = coalesce(excluded.last_job_id, last_job_id),
           last_lease = excluded.last_lease, last_epoch = excluded.last_epoch",
    )?
    .execute(params![
        event.node,
        received_text,
        received_ms,
        event.job_id,
        lease,
        event.epoch as i64
    ])?;
    let existing = load_lease(conn, node, lease, event.epoch)?;
    let newer = existing
        .as_ref()
        .is_none_or(|row| event.seq as i64 >= row.last_seq);
    let mut row = existing.unwrap_or_else(|| LeaseRow {
        node: event.node.clone(),
        state: "reserving".into(),
        last_seq: event.seq as i64,
        ..LeaseRow::default()
    });
    apply_body(&mut row, event, newer, &received_text);
    row.last_seen_ms = row.last_seen_ms.max(received_ms);
    row.lost = false;
    if newer {
        row.last_seq = event.seq as i64;
        if event.job_id.is_some() {
            row.job_id = event.job_id.clone();
        }
    }
    save_lease(conn, lease, event.epoch, &row)?;
    if event.body.ends_lease() {
        conn.prepare_cached(
            "UPDATE directives SET status = 'done', done_at = ?3
             WHERE node = ?4 AND lease_id = ?1 AND epoch = ?2 AND status = 'pending'",
        )?
        .execute(params![lease, event.epoch as i64, received_text, node])?;
    }
    if let IncomingBody::Heartbeat { deadline, .. } = &event.body {
        complete_shortens(conn, node, lease, event.epoch, *deadline, &received_text)?;
    }
    if let (IncomingBody::Reserved { .. }, Some(job)) = (&event.body, &event.job_id) {
        conn.prepare_cached(
            "UPDATE pilots SET lease_id = ?2, epoch = ?3, reserved_at = ?4, node = ?5
             WHERE job_id = ?1 AND lease_id IS NULL",
        )?
        .execute(params![job, lease, event.epoch as i64, received_text, node])?;
    }
    Ok(EventReply {
        status: IngestStatus::Applied,
        directives: pending_directives(conn, node, &event.lease_id, event.epoch)?,
    })
}

/// Fold one event's fields into the row. `newer`: this event is the latest of its epoch, so
/// it decides the state; otherwise it only fills gaps.
fn apply_body(row: &mut LeaseRow, event: &IncomingEvent, newer: bool, received: &str) {
    let guests_json = |g: &[GuestFate]| serde_json::to_string(g).ok();
    let fill = |slot: &mut Option<String>, v: Option<String>| {
        if newer || slot.is_none() {
            *slot = v.or(slot.take());
        }
    };
    let state = match &event.body {
        IncomingBody::Reserved {
            memory_mib,
            cpus,
            deadline,
            grace_secs,
            ..
        } => {
            row.memory_mib = Some(*memory_mib as i64);
            row.cpus = Some(i64::from(*cpus));
            row.grace_secs = Some(*grace_secs as i64);
            row.reserved_at = row.reserved_at.take().or(Some(rfc3339(event.time)));
            fill(&mut row.deadline, Some(rfc3339(*deadline)));
            "reserved".to_string()
        }
        IncomingBody::Heartbeat {
            deadline,
            state: pilot_state,
        } => {
            fill(&mut row.deadline, Some(rfc3339(*deadline)));
            // A heartbeat reports liveness; it never moves a lease out of an ending state
            // (it may have been sent just before `unreserving` and arrive after it).
            if matches!(row.state.as_str(), "reserving" | "reserved" | "") {
                pilot_state.clone()
            } else {
                row.state.clone()
            }
        }
        IncomingBody::Unreserving { reason, .. } => {
            fill(&mut row.reason, Some(reason.clone()));
            "unreserving".into()
        }
        IncomingBody::Unreserved { reason, guests } => {
            fill(&mut row.reason, Some(reason.clone()));
            fill(&mut row.guests, guests_json(guests));
            "unreserved".into()
        }
        IncomingBody::Failed {
            reason,
            error,
            guests,
        } => {
            fill(&mut row.reason, reason.clone());
            fill(&mut row.error, Some(error.clone()));
            fill(&mut row.guests, guests_json(guests));
            "failed".into()
        }
        IncomingBody::Recovered {
            outcome,
            reason,
            guests,
        } => {
            fill(&mut row.reason, reason.clone());
            fill(&mut row.guests, guests_json(guests));
            fill(&mut row.note, Some("finished by `vmpilot recover`".into()));
            outcome.clone()
        }
        IncomingBody::OverBudget { detail, action } => {
            // A warning while the lease goes on: recorded, the state stays as it was.
            fill(
                &mut row.error,
                Some(format!("over budget: {detail} ({action})")),
            );
            row.state.clone()
        }
        IncomingBody::Killed { by, why, outcome } => {
            fill(&mut row.reason, Some("admin".into()));
            fill(&mut row.note, Some(format!("kill-all by {by}: {why}")));
            outcome.clone()
        }
    };
    if event.body.ends_lease() && !matches!(event.body, IncomingBody::Unreserving { .. }) {
        fill(&mut row.ended_at, Some(received.to_string()));
    }
    if newer {
        row.state = state;
    }
}

fn load_lease(
    conn: &Connection,
    node: &str,
    lease: &str,
    epoch: u64,
) -> Result<Option<LeaseRow>, DbError> {
    let row = conn
        .prepare_cached(
            "SELECT node, job_id, state, reason, error, note, memory_mib, cpus, deadline, grace_secs,
                    reserved_at, ended_at, last_seq, last_seen_ms, guests, lost, lost_at
             FROM leases WHERE node = ?3 AND lease_id = ?1 AND epoch = ?2",
        )?
        .query_row(params![lease, epoch as i64, node], |r| {
            Ok(LeaseRow {
                node: r.get(0)?,
                job_id: r.get(1)?,
                state: r.get(2)?,
                reason: r.get(3)?,
                error: r.get(4)?,
                note: r.get(5)?,
                memory_mib: r.get(6)?,
                cpus: r.get(7)?,
                deadline: r.get(8)?,
                grace_secs: r.get(9)?,
                reserved_at: r.get(10)?,
                ended_at: r.get(11)?,
                last_seq: r.get(12)?,
                last_seen_ms: r.get(13)?,
                guests: r.get(14)?,
                lost: r.get(15)?,
                lost_at: r.get(16)?,
            })
        })
        .optional()?;
    Ok(row)
}

fn save_lease(conn: &Connection, lease: &str, epoch: u64, row: &LeaseRow) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO leases (lease_id, epoch, node, job_id, state, reason, error, note,
             memory_mib, cpus, deadline, grace_secs, reserved_at, ended_at, last_seq, last_seen_ms,
             guests, lost, lost_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
    )?
    .execute(params![
        lease,
        epoch as i64,
        row.node,
        row.job_id,
        row.state,
        row.reason,
        row.error,
        row.note,
        row.memory_mib,
        row.cpus,
        row.deadline,
        row.grace_secs,
        row.reserved_at,
        row.ended_at,
        row.last_seq,
        row.last_seen_ms,
        row.guests,
        row.lost,
        row.lost_at
    ])?;
    Ok(())
}

/// A heartbeat showing a deadline at or before a pending `shorten`'s means the pilot has
/// applied it: stop repeating it.
fn complete_shortens(
    conn: &Connection,
    node: &str,
    lease: &str,
    epoch: u64,
    reported: OffsetDateTime,
    now: &str,
) -> Result<(), DbError> {
    let pending: Vec<(i64, String)> = conn
        .prepare_cached(
            "SELECT id, deadline FROM directives WHERE node = ?3 AND lease_id = ?1 AND epoch = ?2
             AND type = 'shorten' AND status = 'pending'",
        )?
        .query_map(params![lease, epoch as i64, node], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    for (id, deadline) in pending {
        let asked =
            OffsetDateTime::parse(&deadline, &time::format_description::well_known::Rfc3339);
        if asked.is_ok_and(|asked| reported <= asked) {
            conn.prepare_cached(
                "UPDATE directives SET status = 'done', done_at = ?2 WHERE id = ?1",
            )?
            .execute(params![id, now])?;
        }
    }
    Ok(())
}

/// Pending directives for one lease epoch on one node, oldest first.
pub fn pending_directives(
    conn: &Connection,
    node: &str,
    lease: &LeaseId,
    epoch: u64,
) -> Result<Vec<Directive>, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT type, deadline FROM directives
         WHERE node = ?3 AND lease_id = ?1 AND epoch = ?2 AND status = 'pending' ORDER BY id",
    )?;
    let rows = stmt.query_map(params![lease.as_str(), epoch as i64, node], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, deadline) = row?;
        let deadline = deadline.and_then(|d| {
            OffsetDateTime::parse(&d, &time::format_description::well_known::Rfc3339).ok()
        });
        out.push(match (kind.as_str(), deadline) {
            ("shorten", Some(deadline)) => Directive::Shorten {
                lease_id: lease.clone(),
                epoch,
                deadline,
            },
            _ => Directive::Release {
                lease_id: lease.clone(),
                epoch,
            },
        });
    }
    Ok(out)
}

/// What an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectiveRequest {
    /// End the lease now.
    Release,
    /// Bring its deadline forward to this instant.
    Shorten(OffsetDateTime),
}

/// Why a directive was not created (the API maps these to 404/409/400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirectiveRefusal {
    /// No `reserved` event was ever received for this lease id (on that node).
    #[error("no reserved lease `{0}` is known")]
    UnknownLease(String),
    /// The id is live on more than one node and no node was named.
    #[error(
        "lease `{lease}` is live on {} nodes: {}\n\nhint: name the node: /v1/nodes/{{node}}/leases/{lease}/...", nodes.len(), nodes.join(", ")
    )]
    Ambiguous {
        /// The lease id.
        lease: String,
        /// The nodes it is live on.
        nodes: Vec<String>,
    },
    /// The current epoch has already ended or is ending.
    #[error(
        "lease `{lease}` epoch {epoch} on {node} is already {state}\n\nhint: directives only reach a lease that is still reserved"
    )]
    Ended {
        /// The lease.
        lease: String,
        /// Its node.
        node: String,
        /// Its current epoch.
        epoch: u64,
        /// Its state.
        state: String,
    },
    /// A shorten that would not shorten.
    #[error(
        "new deadline {requested} is not earlier than the lease's deadline {current}\n\nhint: `shorten` can only bring a deadline forward; the walltime is the limit"
    )]
    NotEarlier {
        /// Asked for.
        requested: String,
        /// Current deadline.
        current: String,
    },
}

/// A directive as the API shows it.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct DirectiveView {
    /// Row id.
    pub id: i64,
    /// `release` or `shorten`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The lease.
    pub lease_id: String,
    /// The node of the lease.
    pub node: String,
    /// The epoch it targets.
    pub epoch: u64,
    /// New deadline (`shorten`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// `pending`, `done` or `superseded`.
    pub status: String,
    /// When an operator created it.
    pub created_at: String,
    /// When the lease reported it was ending (or a newer shorten replaced it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_at: Option<String>,
}

/// Create a directive for the lease's current epoch (the newest epoch with a `reserved`)
/// on `node`, or, without a node, on the one node where the id is live. A second `release`
/// returns the pending one; a new `shorten` supersedes older ones.
pub fn create_directive(
    conn: &Connection,
    node: Option<&str>,
    lease: &str,
    request: DirectiveRequest,
    now: OffsetDateTime,
) -> Result<Result<DirectiveView, DirectiveRefusal>, DbError> {
    // Per node, its newest reserved epoch of this id (SQLite takes the other columns from
    // the row holding the max).
    let current: Vec<(String, i64, String, Option<String>)> = conn
        .prepare_cached(
            "SELECT node, max(epoch), state, deadline FROM leases
             WHERE lease_id = ?1 AND (?2 IS NULL OR node = ?2) AND reserved_at IS NOT NULL
             GROUP BY node ORDER BY node",
        )?
        .query_map(params![lease, node], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let live = |state: &str| matches!(state, "reserved" | "reserving");
    let live_nodes: Vec<String> = current
        .iter()
        .filter(|c| live(&c.2))
        .map(|c| c.0.clone())
        .collect();
    if live_nodes.len() > 1 {
        return Ok(Err(DirectiveRefusal::Ambiguous {
            lease: lease.to_string(),
            nodes: live_nodes,
        }));
    }
    let chosen = current
        .iter()
        .find(|c| live(&c.2))
        .or_else(|| current.first());
    let Some((node, epoch, state, deadline)) = chosen.cloned() else {
        return Ok(Err(DirectiveRefusal::UnknownLease(lease.to_string())));
    };
    if !live(&state) {
        return Ok(Err(DirectiveRefusal::Ended {
            lease: lease.to_string(),
            node,
            epoch: epoch as u64,
            state,
        }));
    }
    let now_text = rfc3339(now);
    let (kind, new_deadline) = match request {
        DirectiveRequest::Release => {
            let existing: Option<i64> = conn
                .prepare_cached(
                    "SELECT id FROM directives WHERE node = ?3 AND lease_id = ?1 AND epoch = ?2
                     AND type = 'release' AND status = 'pending'",
                )?
                .query_row(params![lease, epoch, node], |r| r.get(0))
                .optional()?;
            if let Some(id) = existing {
                return Ok(Ok(directive_by_id(conn, id)?));
            }
            ("release", None)
        }
        DirectiveRequest::Shorten(requested) => {
            let current = deadline.as_deref().and_then(|d| {
                OffsetDateTime::parse(d, &time::format_description::well_known::Rfc3339).ok()
            });
            if let Some(current) = current
                && requested >= current
            {
                return Ok(Err(DirectiveRefusal::NotEarlier {
                    requested: rfc3339(requested),
                    current: rfc3339(current),
                }));
            }
            conn.prepare_cached(
                "UPDATE directives SET status = 'superseded', done_at = ?3
                 WHERE node = ?4 AND lease_id = ?1 AND epoch = ?2 AND type = 'shorten'
                   AND status = 'pending'",
            )?
            .execute(params![lease, epoch, now_text, node])?;
            ("shorten", Some(rfc3339(requested)))
        }
    };
    conn.prepare_cached(
        "INSERT INTO directives (lease_id, epoch, type, deadline, status, created_at, node)
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6)",
    )?
    .execute(params![lease, epoch, kind, new_deadline, now_text, node])?;
    let view = directive_by_id(conn, conn.last_insert_rowid())?;
    log_coordinator_event(
        conn,
        "directive",
        lease,
        epoch,
        Some(&node),
        &now_text,
        json!({"directive": &view}),
    )?;
    Ok(Ok(view))
}

/// One directive by row id.
pub fn directive_by_id(conn: &Connection, id: i64) -> Result<DirectiveView, DbError> {
    Ok(conn
        .prepare_cached(
            "SELECT id, type, lease_id, epoch, deadline, status, created_at, done_at, node
             FROM directives WHERE id = ?1",
        )?
        .query_row([id], directive_from_row)?)
}

/// Map a `SELECT id, type, lease_id, epoch, deadline, status, created_at, done_at, node` row.
pub fn directive_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DirectiveView> {
    Ok(DirectiveView {
        id: r.get(0)?,
        kind: r.get(1)?,
        lease_id: r.get(2)?,
        epoch: r.get::<_, i64>(3)? as u64,
        deadline: r.get(4)?,
        status: r.get(5)?,
        created_at: r.get(6)?,
        done_at: r.get(7)?,
        node: r.get(8)?,
    })
}

/// Append a coordinator-side entry (`lost`, `directive`) to the event log, so the log is
/// the whole story of a lease.
fn log_coordinator_event(
    conn: &Connection,
    kind: &str,
    lease: &str,
    epoch: i64,
    node: Option<&str>,
    at: &str,
    mut detail: serde_json::Value,
) -> Result<(), DbError> {
    if let Some(obj) = detail.as_object_mut() {
        obj.insert("type".into(), json!(kind));
        obj.insert("lease_id".into(), json!(lease));
        obj.insert("epoch".into(), json!(epoch));
        obj.insert("time".into(), json!(at));
    }
    conn.prepare_cached(
        "INSERT INTO events (event_id, source, type, lease_id, epoch, seq, node, received_at, body)
         VALUES (?1, 'coordinator', ?2, ?3, ?4, NULL, ?5, ?6, ?7)",
    )?
    .execute(params![
        format!("coordinator-{}", uuid::Uuid::new_v4()),
        kind,
        lease,
        epoch,
        node,
        at,
        detail.to_string()
    ])?;
    Ok(())
}

/// Flag reserved leases last heard from before `cutoff_ms`; returns them as
/// `(node, lease, epoch)`.
pub fn mark_lost(
    conn: &Connection,
    cutoff_ms: i64,
    now: OffsetDateTime,
) -> Result<Vec<(String, String, u64)>, DbError> {
    let silent: Vec<(String, i64, String)> = conn
        .prepare_cached(
            "SELECT lease_id, epoch, node FROM leases
             WHERE state = 'reserved' AND lost = 0 AND last_seen_ms < ?1",
        )?
        .query_map([cutoff_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let now_text = rfc3339(now);
    for (lease, epoch, node) in &silent {
        conn.prepare_cached(
            "UPDATE leases SET lost = 1, lost_at = ?3
             WHERE node = ?4 AND lease_id = ?1 AND epoch = ?2",
        )?
        .execute(params![lease, epoch, now_text, node])?;
        log_coordinator_event(
            conn,
            "lost",
            lease,
            *epoch,
            Some(node),
            &now_text,
            json!({"node": node}),
        )?;
    }
    Ok(silent
        .into_iter()
        .map(|(l, e, n)| (n, l, e as u64))
        .collect())
}

/// Heartbeats deleted per transaction, so pruning a large backlog never holds the writer
/// (and every pilot's acknowledgement) for long.
pub const PRUNE_BATCH: i64 = 5000;

/// Delete up to [`PRUNE_BATCH`] pilot heartbeats received before `cutoff` (RFC 3339);
/// returns how many went. Every other event stays: they are the leases' history.
pub fn prune_heartbeats(conn: &Connection, cutoff: &str) -> Result<usize, DbError> {
    let n = conn
        .prepare_cached(
            "DELETE FROM events WHERE cursor IN (
                 SELECT cursor FROM events
                 WHERE type = 'heartbeat' AND source = 'pilot' AND received_at < ?1
                 LIMIT ?2)",
        )?
        .execute(params![cutoff, PRUNE_BATCH])?;
    // Give the freed pages back to the file system where the database allows it (new
    // databases do; older ones reuse the pages, so the file stops growing).
    conn.execute_batch("PRAGMA incremental_vacuum(1000);")?;
    Ok(n)
}

/// A submitted pilot job.
#[derive(Debug, Clone, Default)]
pub struct NewPilot {
    /// Job id as the submit script printed it.
    pub job_id: String,
    /// `slurm` or `pbs`.
    pub batch_system: String,
    /// `api` or `pool`.
    pub origin: String,
    /// `--memory`.
    pub memory: String,
    /// `--cpus`.
    pub cpus: u32,
    /// `--time`.
    pub time_limit: String,
    /// `--partition`.
    pub partition: Option<String>,
}

/// Record a submitted pilot.
pub fn record_pilot(conn: &Connection, p: &NewPilot, now: OffsetDateTime) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO pilots (job_id, batch_system, origin, submitted_at, memory, cpus, time_limit, partition)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        p.job_id,
        p.batch_system,
        p.origin,
        rfc3339(now),
        p.memory,
        p.cpus,
        p.time_limit,
        p.partition
    ])?;
    Ok(())
}

/// Store what happened to a lease's guest templates (launch, then retirement).
pub fn record_launches(
    conn: &Connection,
    lease: &str,
    epoch: u64,
    node: &str,
    uri: &str,
    launched: &[Launch],
    now: OffsetDateTime,
) -> Result<(), DbError> {
    let json = serde_json::to_string(launched).unwrap_or_else(|_| "[]".into());
    conn.prepare_cached(
        "INSERT OR REPLACE INTO guest_launches (lease_id, epoch, node, uri, launched, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![lease, epoch as i64, node, uri, json, rfc3339(now)])?;
    Ok(())
}

/// The launches recorded for a lease epoch on a node, with the URI they used.
pub fn launches(
    conn: &Connection,
    node: &str,
    lease: &str,
    epoch: u64,
) -> Result<Option<(String, Vec<Launch>)>, DbError> {
    let row: Option<(String, String)> = conn
        .prepare_cached(
            "SELECT uri, launched FROM guest_launches
             WHERE node = ?3 AND lease_id = ?1 AND epoch = ?2",
        )?
        .query_row(params![lease, epoch as i64, node], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    Ok(row.map(|(uri, json)| (uri, serde_json::from_str(&json).unwrap_or_default())))
}

impl super::db::Db {
    /// Store a lease's guest launches.
    pub async fn record_launches(
        &self,
        lease: String,
        epoch: u64,
        node: String,
        uri: String,
        launched: Vec<Launch>,
    ) -> Result<(), DbError> {
        self.write(move |conn| {
            record_launches(
                conn,
                &lease,
                epoch,
                &node,
                &uri,
                &launched,
                OffsetDateTime::now_utc(),
            )
        })
        .await
    }

    /// The launches recorded for a lease epoch on a node.
    pub async fn launches(
        &self,
        node: String,
        lease: String,
        epoch: u64,
    ) -> Result<Option<(String, Vec<Launch>)>, DbError> {
        self.read(move |conn| launches(conn, &node, &lease, epoch))
            .await
    }

    /// The stored state of a lease epoch on a node (`None`: no such lease).
    pub async fn lease_state(
        &self,
        node: String,
        lease: String,
        epoch: u64,
    ) -> Result<Option<String>, DbError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT state FROM leases WHERE node = ?3 AND lease_id = ?1 AND epoch = ?2",
                )?
                .query_row(params![lease, epoch as i64, node], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    /// Store and apply one event; resolves after it is durably committed.
    pub async fn ingest(&self, event: IncomingEvent, body: String) -> Result<EventReply, DbError> {
        self.write(move |conn| apply_event(conn, &event, &body, OffsetDateTime::now_utc()))
            .await
    }

    /// Flag reserved leases silent for longer than `after`.
    pub async fn mark_lost(
        &self,
        after: std::time::Duration,
    ) -> Result<Vec<(String, String, u64)>, DbError> {
        let cutoff = super::db::now_ms() - after.as_millis() as i64;
        self.write(move |conn| mark_lost(conn, cutoff, OffsetDateTime::now_utc()))
            .await
    }

    /// Create a directive for the lease's current epoch (on `node`, or where it is live).
    pub async fn create_directive(
        &self,
        node: Option<String>,
        lease: String,
        request: DirectiveRequest,
    ) -> Result<Result<DirectiveView, DirectiveRefusal>, DbError> {
        self.write(move |conn| {
            create_directive(
                conn,
                node.as_deref(),
                &lease,
                request,
                OffsetDateTime::now_utc(),
            )
        })
        .await
    }

    /// Delete heartbeats older than `retention`, batch by batch; returns how many went.
    pub async fn prune_heartbeats(&self, retention: std::time::Duration) -> Result<usize, DbError> {
        let cutoff = rfc3339(
            OffsetDateTime::now_utc()
                - time::Duration::try_from(retention).unwrap_or(time::Duration::MAX),
        );
        let mut total = 0;
        loop {
            let cutoff = cutoff.clone();
            let n = self
                .write(move |conn| prune_heartbeats(conn, &cutoff))
                .await?;
            total += n;
            if (n as i64) < PRUNE_BATCH {
                return Ok(total);
            }
        }
    }

    /// Record a submitted pilot.
    pub async fn record_pilot(&self, pilot: NewPilot) -> Result<(), DbError> {
        self.write(move |conn| record_pilot(conn, &pilot, OffsetDateTime::now_utc()))
            .await
    }
}
