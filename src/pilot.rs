//! The pilot itself: claim the node for one lease, hold it until the deadline or a signal,
//! give it back.
//!
//! Check, act, record — and record the intent before acting: `Reserving` is saved before
//! the host is touched and `Unreserving` before guests are stopped, so a pilot killed at any
//! point leaves a record `vmpilot recover` can finish. While reserved the pilot sleeps until
//! the next timer or signal; it never polls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::coordinator::directive::{self, Directive};
use crate::coordinator::event::{self, EventBody};
use crate::coordinator::outbox::Outbox;
use crate::coordinator::report;
use crate::crashpoint::{self, Point};
use crate::deadline;
use crate::exit::{EnvironmentError, ExitStatus, UsageError};
use crate::host::bounded::bounded;
use crate::host::{HostError, LeaseShare};
use crate::kill_request::{self, Fenced, KillRequest};
use crate::lease::record::{LeaseId, LeaseRecord, RECORD_VERSION};
use crate::lease::store::Store;
use crate::lease::{EndReason, Event, LeaseState};
use crate::lrm::Lrm;
use crate::process::ProcessIdentity;
use crate::progress;
use crate::release::Releaser;
use crate::signals::{PilotSignal, Signals, Waited};

/// The longest a reservation may take before it is treated as a host failure.
const MAX_RESERVE_TIME: Duration = Duration::from_secs(120);

/// Time allowed after the node is restored to hand the last events to the coordinator.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// What one pilot run asks for; built by `commands::run` from flags, config and the LRM.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// Lease id.
    pub lease_id: LeaseId,
    /// Memory for guests, MiB.
    pub memory_mib: u64,
    /// CPUs for guests.
    pub cpus: u32,
    /// Time from now to the deadline.
    pub lifetime: Duration,
    /// Grace before the deadline.
    pub grace: Duration,
    /// Batch job id.
    pub job_id: Option<String>,
}

/// The heartbeat task and the record it reports; the task stops when this is dropped.
struct Heartbeats {
    record: watch::Sender<LeaseRecord>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

struct Pilot {
    releaser: Releaser,
    outbox: Arc<Outbox>,
    signals: Signals,
    record: LeaseRecord,
    /// Monotonic deadline: wall-clock steps cannot move it.
    deadline: Instant,
    grace: Duration,
    /// Set when an admin's kill-all ended this lease.
    killed_by: Option<KillRequest>,
    /// The batch system, asked after a SIGTERM whether it is preempting the job.
    lrm: Option<Lrm>,
    /// The first failure to persist the record once the host was changed. Such a failure
    /// never stops the lease from ending in time (the deadline comes first, and giving the
    /// node back is safe to repeat); it is returned when the lease is over.
    unpersisted: Option<anyhow::Error>,
}

/// Run one lease to its end. Returns the exit status; errors are things that prevented the
/// lease from starting (nothing changed) or a failure to persist state.
pub async fn run(
    config: Config,
    request: LeaseRequest,
    lrm: Option<Lrm>,
) -> anyhow::Result<ExitStatus> {
    // Handlers first: a signal from now on is queued, never lost.
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    // The kill-all fence, before anything is written (checked again under the node lock).
    if let Some(k) = kill_request::current(&config.state_dir) {
        return Err(Fenced::from(&k).into());
    }
    let store = Store::open(&config.state_dir)?;
    // The lease's lock, held until this process exits: while it is held no `recover` or
    // `kill-all` finishes this lease, and no second pilot takes the same lease id.
    let holder = format!(
        "pilot pid {} of lease {}",
        std::process::id(),
        request.lease_id
    );
    let lock_timeout = config.lease.lock_timeout.get();
    let _lease_lock = match signals
        .poll_until(lock_timeout, || {
            store.try_lock_lease(&request.lease_id, &holder)
        })
        .await?
    {
        Waited::Done(lock) => lock,
        Waited::Signalled(sig) => {
            tracing::info!(lease = %request.lease_id, signal = ?sig, "terminated while waiting for the lease's lock; nothing was changed");
            return Ok(ExitStatus::SignalRestored);
        }
        Waited::TimedOut(waited) => {
            return Err(EnvironmentError {
                problem: format!(
                    "lease {} is in use on this node by {} (waited {:.1}s); one process at a time holds a lease id, and nothing was changed",
                    request.lease_id,
                    display_holder(&store.lease_lock_holder(&request.lease_id)),
                    waited.as_secs_f64()
                ),
                hint: "use another --lease-id; `vmpilot status` shows the lease".into(),
            }
            .into());
        }
    };
    let outbox = Outbox::open(&config)?;
    let host = crate::host::open(&config)?;
    let epoch = next_epoch(&store, &request.lease_id)?;
    let now = OffsetDateTime::now_utc();
    let record = LeaseRecord {
        version: RECORD_VERSION,
        lease_id: request.lease_id.clone(),
        epoch,
        state: LeaseState::Begin,
        end_reason: None,
        node: config.node_name.clone(),
        job_id: request.job_id.clone(),
        memory_mib: request.memory_mib,
        cpus: request.cpus,
        grace_secs: request.grace.as_secs(),
        deadline: now + request.lifetime,
        pilot: ProcessIdentity::current(),
        host_backend: host.backend().to_string(),
        baseline: None,
        next_seq: 0,
        guests: Vec::new(),
        last_error: None,
        history: Vec::new(),
        end_report: Default::default(),
    };
    store.save(&record)?;
    crashpoint::hit(Point::BeginSaved);
    tracing::info!(lease = %record.lease_id, epoch, job = ?record.job_id, deadline = %record.deadline, state = "begin", "lease created");
    let delivery = tokio::spawn(outbox.clone().deliver_forever());
    let mut pilot = Pilot {
        releaser: Releaser {
            config,
            store,
            host,
        },
        outbox: outbox.clone(),
        signals,
        record,
        deadline: Instant::now() + request.lifetime,
        grace: request.grace,
        killed_by: None,
        lrm,
        unpersisted: None,
    };
    let result = pilot.drive().await;
    progress::finish();
    delivery.abort();
    outbox.flush(FINAL_FLUSH).await;
    let lost = outbox.lost();
    if lost > 0 {
        // The outbox printed each of them in full; say so where admins look first too.
        pilot.record.last_error = Some(format!(
            "{lost} coordinator event(s) were lost (could not be persisted or delivered); each is in this pilot's log (`EVENT LOST`)"
        ));
        if let Err(e) = pilot.releaser.store.save(&pilot.record) {
            tracing::error!(error = %e, "cannot record the lost events in the lease record");
        }
    }
    result
}

/// A lock holder as written in its file (untrusted: quoted), or a phrase when it names none.
fn display_holder(holder: &str) -> String {
    if holder.is_empty() {
        "another process".into()
    } else {
        crate::safe_dir::quoted(holder, 200)
    }
}

/// A lease id may be reused once its previous lease is over; each reuse gets a new epoch.
fn next_epoch(store: &Store, id: &LeaseId) -> anyhow::Result<u64> {
    match store.load(id)? {
        None => Ok(1),
        Some(old) if old.state.is_terminal() && old.state != LeaseState::Failed => {
            Ok(old.epoch + 1)
        }
        Some(old) => Err(EnvironmentError {
            problem: format!(
                "lease {id} already exists on this node in state `{}` (pilot pid {})",
                old.state, old.pilot.pid
            ),
            hint: "use another --lease-id, or if that pilot is gone run `vmpilot recover`".into(),
        }
        .into()),
    }
}

impl Pilot {
    async fn drive(&mut self) -> anyhow::Result<ExitStatus> {
        let lock_timeout = self.releaser.config.lease.lock_timeout.get();
        let store = self.releaser.store.clone();
        let holder = format!(
            "pid {} reserving lease {}",
            std::process::id(),
            self.record.lease_id
        );
        let lock = match self
            .signals
            .poll_until(lock_timeout, || store.try_lock_node(&holder))
            .await
        {
            Ok(Waited::Done(lock)) => lock,
            Ok(Waited::Signalled(sig)) => {
                // Ended before it began: nothing to roll back.
                let event = self.signal_event(&sig).await;
                self.apply(&event)?;
                self.emit_end()?;
                return Ok(self.exit_status());
            }
            Ok(Waited::TimedOut(waited)) => {
                let e = crate::lease::store::StoreError::LockBusy {
                    path: store.node_lock_path(),
                    holder: display_holder(&store.node_lock_holder()),
                    waited,
                };
                self.record.last_error = Some(e.to_string());
                self.apply(&Event::HostError)?;
                self.emit_end()?;
                return Err(e.into());
            }
            Err(e) => {
                self.record.last_error = Some(e.to_string());
                self.apply(&Event::HostError)?;
                self.emit_end()?;
                return Err(e.into());
            }
        };
        // Checked again under the node lock: a kill-all that began after the first check
        // has listed the leases already, or is about to see this one.
        if let Some(k) = kill_request::current(&self.releaser.config.state_dir) {
            tracing::warn!(lease = %self.record.lease_id, by = %k.by, "a kill-all began; this pilot does not start");
            self.killed_by = Some(k.clone());
            self.apply(&Event::AdminKill)?;
            self.emit_end()?;
            return Err(Fenced::from(&k).into());
        }
        if let Err(e) = self.exclusive_admission() {
            self.record.last_error = Some(e.to_string());
            self.apply(&Event::HostError)?;
            self.emit_end()?;
            return Err(e);
        }
        self.apply(&Event::Start)?;
        crashpoint::hit(Point::ReservingSaved);
        let share = LeaseShare {
            lease_id: self.record.lease_id.clone(),
            epoch: self.record.epoch,
            memory_mib: self.record.memory_mib,
            cpus: self.record.cpus,
            max_guests: self.releaser.config.lease.max_guests,
        };
        let host = self.releaser.host.clone();
        let limit = self.time_to_unreserve().min(MAX_RESERVE_TIME);
        let mut reserving = tokio::task::spawn_blocking(move || host.reserve(&share));
        let reserved = match tokio::time::timeout(limit, &mut reserving).await {
            Ok(joined) => joined,
            Err(_) => return self.rollback_hung(reserving, lock, limit).await,
        };
        drop(lock);
        match reserved {
            Ok(Ok(baseline)) => {
                crashpoint::hit(Point::HostReserved);
                self.record.baseline = Some(baseline);
                if let Err(e) = self.releaser.store.save(&self.record) {
                    return self.abandon(e.into()).await;
                }
                crashpoint::hit(Point::BaselineSaved);
            }
            Ok(Err(e)) => return self.rollback(e).await,
            Err(join) => {
                let e = HostError::Operation {
                    op: "reserve".into(),
                    detail: format!("host call panicked: {join}"),
                };
                return self.rollback(e).await;
            }
        }
        // A signal that arrived while reserving rolls the reservation straight back.
        if let Some(sig) = self.signals.try_recv() {
            let event = self.signal_event(&sig).await;
            return self.unreserve(event).await;
        }
        if let Err(e) = self.apply(&Event::ReservedOk) {
            return self.abandon(e).await;
        }
        crashpoint::hit(Point::ReservedSaved);
        let reserved = EventBody::Reserved {
            memory_mib: self.record.memory_mib,
            cpus: self.record.cpus,
            deadline: self.record.deadline,
            grace_secs: self.record.grace_secs,
            hypervisor: Some(event::hypervisor(&self.releaser.config)),
        };
        if let Err(e) = self.emit(reserved) {
            return self.abandon(e).await;
        }
        crashpoint::hit(Point::ReservedSpooled);
        let event = self.hold().await;
        self.unreserve(event).await
    }

    /// `host.exclusive = true`: one lease on the node at a time. Refused (nothing changed)
    /// while any other lease may hold a share of the host, its own `failed` ones included.
    /// Called under the node lock, so two pilots cannot both pass.
    fn exclusive_admission(&self) -> anyhow::Result<()> {
        if !self.releaser.config.host.exclusive {
            return Ok(());
        }
        let others: Vec<String> = self
            .releaser
            .store
            .list()?
            .into_iter()
            .filter_map(|r| match r {
                Ok(r) if r.lease_id == self.record.lease_id || !r.state.holds_host() => None,
                Ok(r) => Some(format!("{} ({})", r.lease_id, r.state)),
                // An unreadable record may hold the host: fail closed.
                Err(e) => Some(format!("an unreadable record ({e})")),
            })
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        Err(UsageError {
            problem: format!(
                "host.exclusive = true allows one lease at a time on this node, and {} already hold(s) it; nothing was changed",
                others.join(", ")
            ),
            hint: "wait for that lease to end (a `failed` one needs `vmpilot recover` or an admin), or set `[host] exclusive = false` to share the node between leases".into(),
        }
        .into())
    }

    /// Sleep until it is time to unreserve or a signal says so.
    async fn hold(&mut self) -> Event {
        progress::start(&self.record);
        let (mut directives, heartbeats) = self.start_heartbeats();
        let (mut over_budget, budget_watch) = self.start_budget_watch();
        let event = loop {
            let unreserve_at = deadline::unreserve_at(self.deadline, self.grace);
            let sig = tokio::select! {
                _ = tokio::time::sleep_until(unreserve_at.into()) => break Event::Deadline,
                sig = self.signals.recv() => sig,
                Some(d) = directives.recv() => match d {
                    Directive::Release { .. } => {
                        tracing::info!(lease = %self.record.lease_id, "coordinator released the lease");
                        break Event::CoordinatorRelease;
                    }
                    Directive::Shorten { deadline, .. } => {
                        if let Err(e) = self.shorten(deadline, &heartbeats) {
                            tracing::error!(error = %e, "cannot persist the shortened deadline");
                        }
                        continue;
                    }
                },
                Some(violation) = over_budget.recv() => {
                    self.report_over_budget(violation);
                    continue;
                }
            };
            break match sig {
                Some(sig) => self.signal_event(&sig).await,
                None => Event::Deadline,
            };
        };
        // Before unreserving: no guest is stopped for the budget from here on.
        drop(budget_watch);
        drop(heartbeats);
        event
    }

    /// Heartbeats while reserved, in their own task so a slow coordinator never delays a
    /// signal or the deadline. Directives from the replies come back on the channel; the
    /// watch carries the record so heartbeats show the current deadline.
    fn start_heartbeats(&self) -> (mpsc::Receiver<Directive>, Heartbeats) {
        let (tx, rx) = mpsc::channel(8);
        let (record_tx, record_rx) = watch::channel(self.record.clone());
        let Some(interval) = self
            .releaser
            .config
            .coordinator
            .as_ref()
            .map(|c| c.heartbeat_interval.get())
        else {
            return (
                rx,
                Heartbeats {
                    record: record_tx,
                    task: None,
                },
            );
        };
        let outbox = self.outbox.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval.mul_f64(rand::random_range(0.9..1.1))).await;
                let record = record_rx.borrow().clone();
                let Some(reply) = outbox.send_now(&event::heartbeat(&record)).await else {
                    continue;
                };
                for d in directive::for_lease(&reply, &record.lease_id, record.epoch) {
                    if tx.send(d).await.is_err() {
                        return;
                    }
                }
            }
        });
        (
            rx,
            Heartbeats {
                record: record_tx,
                task: Some(task),
            },
        )
    }

    /// Move the deadline earlier (never later), on the monotonic clock too.
    fn shorten(&mut self, to: OffsetDateTime, heartbeats: &Heartbeats) -> anyhow::Result<()> {
        if to >= self.record.deadline {
            tracing::warn!(lease = %self.record.lease_id, current = %self.record.deadline, asked = %to, "ignoring a shorten directive that is not earlier than the deadline");
            return Ok(());
        }
        let earlier = (self.record.deadline - to).unsigned_abs();
        self.deadline = self
            .deadline
            .checked_sub(earlier)
            .unwrap_or_else(Instant::now);
        self.record.deadline = to;
        self.releaser.store.save(&self.record)?;
        let _ = heartbeats.record.send(self.record.clone());
        tracing::info!(lease = %self.record.lease_id, deadline = %to, "coordinator shortened the lease");
        Ok(())
    }

    /// What a signal means: an admin kill while a kill request stands, a preemption when
    /// the batch system says so, a cancel otherwise.
    async fn signal_event(&mut self, sig: &PilotSignal) -> Event {
        let PilotSignal::Terminate(name) = sig else {
            return sig.event();
        };
        if let Some(request) = kill_request::current(&self.releaser.config.state_dir) {
            self.killed_by = Some(request);
            return Event::AdminKill;
        }
        let preempted = match &self.lrm {
            Some(lrm) => lrm.was_preempted().await,
            None => false,
        };
        Event::Terminate {
            signal: name.to_string(),
            preempted,
        }
    }

    /// The reservation failed and changed nothing (the `Host` contract); release anyway,
    /// since release is idempotent, then report the error to the caller.
    async fn rollback(&mut self, error: HostError) -> anyhow::Result<ExitStatus> {
        tracing::error!(lease = %self.record.lease_id, error = %error, "reservation failed; rolling back");
        self.begin_rollback(&error)?;
        self.finish_rollback(error).await
    }

    /// The reservation did not return in time. It may still land, so keep the node lock and
    /// wait for it within the grace; if it never returns the host state is unknown and the
    /// lease is marked failed rather than pretending the node is clean.
    async fn rollback_hung(
        &mut self,
        reserving: tokio::task::JoinHandle<Result<crate::host::Baseline, HostError>>,
        lock: crate::lease::store::NodeLock,
        after: Duration,
    ) -> anyhow::Result<ExitStatus> {
        let error = HostError::Timeout {
            op: "reserve".into(),
            after,
        };
        tracing::error!(lease = %self.record.lease_id, error = %error, "reservation hangs; rolling back");
        self.begin_rollback(&error)?;
        let wait = self.budget();
        match tokio::time::timeout(wait, reserving).await {
            Ok(Ok(Ok(baseline))) => {
                self.record.baseline = Some(baseline);
                self.releaser.store.save(&self.record)?;
            }
            Ok(_) => {}
            Err(_) => {
                self.record.last_error = Some(format!(
                    "{error}; it never returned, so the host state is unknown"
                ));
                self.apply(&Event::HostError)?;
                self.emit_end()?;
                return Ok(ExitStatus::HostFailure);
            }
        }
        drop(lock);
        self.finish_rollback(error).await
    }

    fn begin_rollback(&mut self, error: &HostError) -> anyhow::Result<()> {
        self.record.last_error = Some(error.to_string());
        self.apply(&Event::HostError)?;
        self.emit(EventBody::Unreserving {
            reason: EndReason::HostError,
            signal: None,
        })
    }

    async fn finish_rollback(&mut self, error: HostError) -> anyhow::Result<ExitStatus> {
        let budget = self.budget();
        self.releaser
            .finish(&mut self.record, budget, Arc::new(AtomicBool::new(true)))
            .await?;
        self.emit_end()?;
        if self.record.state == LeaseState::Failed {
            return Ok(ExitStatus::HostFailure);
        }
        Err(error.into())
    }

    /// The host holds the lease's share but its record cannot be written (disk full): do
    /// not leave the node in VM mode with no pilot; give it back now, then report `error`.
    async fn abandon(&mut self, error: anyhow::Error) -> anyhow::Result<ExitStatus> {
        if !error.is::<crate::lease::store::StoreError>() {
            return Err(error);
        }
        self.record.last_error = Some(format!("{error:#}"));
        self.tolerate(Err(error))?;
        self.unreserve(Event::HostError).await
    }

    /// Let a failure to persist the record pass (logged, remembered in `unpersisted`), so
    /// that ending the lease goes on; any other error is returned.
    fn tolerate(&mut self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        match result {
            Err(e) if e.is::<crate::lease::store::StoreError>() => {
                tracing::error!(lease = %self.record.lease_id, error = %format!("{e:#}"), "cannot persist the lease record; giving the node back anyway (safe to repeat: `vmpilot recover` finishes from the last record on disk)");
                self.unpersisted.get_or_insert(e);
                Ok(())
            }
            other => other,
        }
    }

    /// End the lease: persist the intent, stop guests, restore the host, persist the end.
    /// A record that cannot be persisted (disk full) does not stop any of it: the node is
    /// given back by the deadline and the persistence error is returned afterwards.
    async fn unreserve(&mut self, event: Event) -> anyhow::Result<ExitStatus> {
        let status = self.unreserve_tolerant(event).await?;
        match self.unpersisted.take() {
            None => Ok(status),
            Some(e) => Err(e.context(format!(
                "lease {} ended (state `{}`), but its record could not be kept up to date; once there is space, run `vmpilot recover` to finish the record",
                self.record.lease_id, self.record.state
            ))),
        }
    }

    async fn unreserve_tolerant(&mut self, event: Event) -> anyhow::Result<ExitStatus> {
        progress::finish();
        let signal = match &event {
            Event::Terminate { signal, .. } => Some(signal.clone()),
            _ => None,
        };
        let applied = self.apply(&event).map(drop);
        self.tolerate(applied)?;
        crashpoint::hit(Point::UnreservingSaved);
        let unreserving = self.emit(EventBody::Unreserving {
            reason: self.record.end_reason.unwrap_or(EndReason::Deadline),
            signal,
        });
        self.tolerate(unreserving)?;
        crashpoint::hit(Point::UnreservingSpooled);
        // What remains of the grace, never past the deadline.
        let budget = self.budget();
        let fast_kill = self.killed_by.as_ref().is_some_and(|k| k.is_fast());
        let force = Arc::new(AtomicBool::new(fast_kill));
        let releaser = self.releaser.clone();
        let mut record = self.record.clone();
        let flag = force.clone();
        let finishing = async move {
            let r = releaser.finish(&mut record, budget, flag).await;
            (record, r)
        };
        tokio::pin!(finishing);
        let (record, saved) = loop {
            tokio::select! {
                done = &mut finishing => break done,
                Some(sig) = self.signals.recv() => {
                    if let PilotSignal::Terminate(name) = sig {
                        tracing::warn!(signal = name, "second termination signal: destroying guests now");
                        force.store(true, Ordering::SeqCst);
                    }
                }
            }
        };
        self.record = record;
        self.tolerate(saved.map_err(Into::into))?;
        let end = self.emit_end();
        self.tolerate(end)?;
        Ok(self.exit_status())
    }

    fn exit_status(&self) -> ExitStatus {
        let by_signal = matches!(
            self.record.end_reason,
            Some(EndReason::Cancelled | EndReason::Preempted | EndReason::Admin)
        );
        match (self.record.state, by_signal) {
            (LeaseState::Unreserved, true) => ExitStatus::SignalRestored,
            (LeaseState::Unreserved, false) => ExitStatus::Success,
            (_, true) => ExitStatus::SignalNotRestored,
            (_, false) => ExitStatus::HostFailure,
        }
    }

    fn time_to_unreserve(&self) -> Duration {
        deadline::unreserve_at(self.deadline, self.grace)
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1))
    }

    /// Time for unreserving that starts now: what remains of the grace, never past the
    /// deadline.
    fn budget(&self) -> Duration {
        deadline::unreserve_budget(
            Instant::now(),
            self.deadline,
            self.grace,
            Duration::from_secs(1),
        )
    }

    /// Apply an event and persist the new state before anything acts on it.
    fn apply(&mut self, event: &Event) -> anyhow::Result<LeaseState> {
        let to = self.record.apply(event)?;
        self.releaser.store.save(&self.record)?;
        crate::metrics::publish(&self.releaser.config, &self.releaser.store);
        tracing::info!(
            lease = %self.record.lease_id,
            job = self.record.job_id.as_deref().unwrap_or("-"),
            state = %to,
            event = %event,
            reason = self.record.end_reason.map(|r| r.as_str()).unwrap_or("-"),
            "transition"
        );
        Ok(to)
    }

    /// Record the event's sequence number, then hand the event to the outbox. An event whose
    /// sequence number cannot be persisted is not sent: `vmpilot recover` would number its
    /// `recovered` event from the record on disk, reusing that number, and a coordinator
    /// would ignore it as older than what it already had. It is reported lost instead
    /// (logged whole), and the `recovered` event tells the coordinator how the lease ended.
    fn emit(&mut self, body: EventBody) -> anyhow::Result<()> {
        let event = event::next_event(&mut self.record, body);
        if let Err(e) = self.releaser.store.save(&self.record) {
            self.outbox.report_lost(
                &event,
                "its sequence number could not be persisted in the lease record",
            );
            return Err(e.into());
        }
        self.outbox.emit(&event)?;
        Ok(())
    }

    /// Report how the lease ended (and who killed it, after a kill-all), exactly once even
    /// across a crash: see `coordinator::report`.
    fn emit_end(&mut self) -> anyhow::Result<()> {
        let mut bodies = vec![report::end_body(&self.record)];
        if let Some(k) = self.killed_by.clone() {
            bodies.push(EventBody::Killed {
                by: k.by,
                why: k.why,
                outcome: self.record.state,
            });
        }
        report::report_end(&self.outbox, &self.releaser.store, &mut self.record, bodies)
    }

    /// Fence the lease's guests and check them against its budget whenever the host says
    /// they changed (and once at the start), in a task of its own so a slow hypervisor never delays a
    /// signal or the deadline. Violations come back on the channel, each reported once.
    fn start_budget_watch(&self) -> (mpsc::Receiver<crate::host::budget::Violation>, BudgetWatch) {
        let (found, rx) = mpsc::channel(8);
        let stop = Arc::new(AtomicBool::new(false));
        let share = LeaseShare {
            lease_id: self.record.lease_id.clone(),
            epoch: self.record.epoch,
            memory_mib: self.record.memory_mib,
            cpus: self.record.cpus,
            max_guests: self.releaser.config.lease.max_guests,
        };
        let host = &self.releaser.config.host;
        let task = tokio::spawn(watch_budget(
            self.releaser.host.clone(),
            share,
            self.record.baseline.clone(),
            (host.over_budget, host.exclusive),
            stop.clone(),
            found,
        ));
        (rx, BudgetWatch { stop, task })
    }

    /// Log a budget violation, keep it as the lease's last error and tell the coordinator;
    /// the lease goes on.
    fn report_over_budget(&mut self, violation: crate::host::budget::Violation) {
        tracing::error!(lease = %self.record.lease_id, detail = %violation.detail, action = %violation.action, "lease over budget");
        self.record.last_error = Some(format!(
            "over budget: {} ({})",
            violation.detail, violation.action
        ));
        let body = EventBody::OverBudget {
            detail: violation.detail,
            action: violation.action,
        };
        if let Err(e) = self.emit(body) {
            tracing::error!(lease = %self.record.lease_id, error = %e, "cannot record the over-budget event");
        }
    }
}

/// Longest a budget check (with `stop-newest`, its destroys) or starting the guest watch
/// may take; a hung hypervisor then costs a warning, not the lease.
const BUDGET_CALL_LIMIT: Duration = Duration::from_secs(60);

/// The budget task; dropping it stops further checks and any further guest stops.
struct BudgetWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BudgetWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.abort();
    }
}

/// A guest watch dropped on a blocking thread: stopping it may wait on the hypervisor.
struct OffRuntime(Option<crate::host::GuestWatch>);

impl Drop for OffRuntime {
    fn drop(&mut self) {
        if let Some(watch) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || drop(watch))),
                Err(_) => drop(watch),
            }
        }
    }
}

/// The budget task: start the host's guest watch, then check and apply the policy on
/// every notification (a burst of them is one check).
async fn watch_budget(
    host: Arc<dyn crate::host::Host>,
    share: LeaseShare,
    baseline: Option<crate::host::Baseline>,
    (policy, exclusive): (crate::config::OverBudgetPolicy, bool),
    stop: Arc<AtomicBool>,
    found: mpsc::Sender<crate::host::budget::Violation>,
) {
    let (notify, mut changes) = mpsc::unbounded_channel();
    // A guest may have started between the `reserved` event and the watch.
    let _ = notify.send(());
    let h = host.clone();
    let watching = bounded("watch guests", BUDGET_CALL_LIMIT, move || {
        h.watch_guests(notify)
    });
    let _watch = match watching.await {
        Ok(Some(w)) => OffRuntime(Some(w)),
        Ok(None) => {
            tracing::debug!(lease = %share.lease_id, "this host backend has no guest events; the budget is checked once");
            OffRuntime(None)
        }
        Err(HostError::Timeout { .. }) => {
            tracing::warn!(lease = %share.lease_id, after = ?BUDGET_CALL_LIMIT, "starting the guest watch hangs; the budget is not watched");
            return;
        }
        Err(e) => {
            tracing::warn!(lease = %share.lease_id, error = %e, "cannot watch the lease's guests; the budget is checked once");
            OffRuntime(None)
        }
    };
    let mut last: Option<crate::host::budget::Violation> = None;
    while changes.recv().await.is_some() {
        while changes.try_recv().is_ok() {}
        let (h, s, b, st) = (host.clone(), share.clone(), baseline.clone(), stop.clone());
        let checking = bounded("check the budget", BUDGET_CALL_LIMIT, move || {
            crate::host::budget::enforce(h.as_ref(), &s, b.as_ref(), policy, exclusive, &st)
        });
        match checking.await {
            // Reported once: a lease that stays over budget is not reported at every event.
            Ok(Some(v)) if last.as_ref() != Some(&v) => {
                last = Some(v.clone());
                if found.send(v).await.is_err() {
                    return;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => last = None,
            Err(e) => {
                tracing::warn!(lease = %share.lease_id, error = %e, "cannot check the lease's guests against its budget")
            }
        }
    }
}
