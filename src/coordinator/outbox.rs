//! Where the pilot, `recover` and `kill-all` send events: logged always, spooled and
//! delivered when a coordinator is configured.
//!
//! Delivery runs in the background with exponential backoff and jitter while the spool has
//! a backlog, and sleeps on a notification otherwise, so an idle pilot makes no wake-ups.
//!
//! An event that cannot be spooled (disk full, read-only file system) is not dropped: it is
//! kept in memory, in order, and delivered directly after the spooled ones; while any event
//! waits in memory, newer ones wait there too, so order is kept. What is still in memory
//! when the process ends is written to the log in full, at error level ([`Outbox::flush`]):
//! it is the one copy left, and the process says so.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Notify;

use super::client::{CoordinatorClient, PostOutcome, TLS_FAILED};
use super::event::EventEnvelope;
use super::signature::Secret;
use super::spool::{Backlog, DeliveryReport, Spool, SpoolError};
use crate::config::Config;

/// First retry delay after a failed delivery pass.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Bound of one background delivery pass.
const PASS_BOUND: Duration = Duration::from_secs(30);

/// The event sink.
#[derive(Debug)]
pub struct Outbox {
    spool: Option<Spool>,
    client: Option<CoordinatorClient>,
    wake: Notify,
    /// Events the spool could not take, oldest first; delivered directly.
    unspooled: Mutex<VecDeque<EventEnvelope>>,
    /// One direct delivery of `unspooled` at a time.
    delivering_unspooled: tokio::sync::Mutex<()>,
    /// Events reported lost (logged whole, at error level).
    lost: AtomicUsize,
}

impl Outbox {
    /// Build from config: spool + signed client when a coordinator is configured, log-only
    /// otherwise. Fails (before any host change) if the secret is unusable.
    pub fn open(config: &Config) -> anyhow::Result<Arc<Outbox>> {
        let Some(c) = &config.coordinator else {
            return Ok(Arc::new(Outbox {
                spool: None,
                client: None,
                wake: Notify::new(),
                unspooled: Mutex::default(),
                delivering_unspooled: tokio::sync::Mutex::default(),
                lost: AtomicUsize::new(0),
            }));
        };
        let secret = Secret::from_file(&c.secret_file)?;
        let client = CoordinatorClient::from_config(c, secret)
            .context("cannot build the coordinator HTTP client")?;
        Ok(Arc::new(Outbox {
            spool: Some(Spool::open(&config.state_dir)?),
            client: Some(client),
            wake: Notify::new(),
            unspooled: Mutex::default(),
            delivering_unspooled: tokio::sync::Mutex::default(),
            lost: AtomicUsize::new(0),
        }))
    }

    /// Log the event and, with a coordinator, persist it in the spool and wake delivery. An
    /// event the spool cannot take is kept in memory and delivered directly (logged as an
    /// error); the `Result` is kept for callers that want to know, but is never an error.
    pub fn emit(&self, event: &EventEnvelope) -> Result<(), SpoolError> {
        tracing::info!(
            lease = %event.lease_id,
            epoch = event.epoch,
            seq = event.seq,
            event = event.body.kind(),
            id = %event.event_id,
            "event"
        );
        if let Some(spool) = &self.spool {
            // A poisoned lock only means another thread panicked mid-push: the queue is intact.
            let mut memory = self.unspooled.lock().unwrap_or_else(|p| p.into_inner());
            if !memory.is_empty() {
                tracing::error!(id = %event.event_id, waiting = memory.len(), "older events could not be spooled; keeping this one in memory behind them, to be delivered directly");
                memory.push_back(event.clone());
            } else if let Err(e) = spool.enqueue(event) {
                tracing::error!(id = %event.event_id, event = event.body.kind(), error = %e, "cannot spool the event; keeping it in memory and delivering it directly");
                memory.push_back(event.clone());
            }
            drop(memory);
            self.wake.notify_one();
        }
        Ok(())
    }

    /// [`Outbox::emit`], unless the spool already holds this very event (an interrupted
    /// report being finished). One that was already delivered goes again: the coordinator
    /// knows its id and takes it once.
    pub fn emit_once(&self, event: &EventEnvelope) -> Result<(), SpoolError> {
        if let Some(spool) = &self.spool
            && spool.holds(&event.event_id)?
        {
            tracing::info!(id = %event.event_id, event = event.body.kind(), "already spooled");
            return Ok(());
        }
        self.emit(event)
    }

    /// An event that will not be delivered: print it whole, at error level, so the log
    /// holds the one copy left, and count it ([`Outbox::lost`]).
    pub fn report_lost(&self, event: &EventEnvelope, why: &str) {
        let json = serde_json::to_string(event).expect("event serializes");
        tracing::error!(event = %json, why, "EVENT LOST: it will not reach the coordinator; this log line is its only copy");
        self.lost.fetch_add(1, Ordering::SeqCst);
    }

    /// Events reported lost so far.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }

    /// Events waiting in memory because the spool could not take them.
    pub fn unspooled(&self) -> usize {
        self.unspooled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Deliver the in-memory events, oldest first, until one fails transiently or `until`.
    /// A refused one is logged in full and dropped (there is no `rejected/` for it).
    async fn deliver_unspooled(
        &self,
        client: &CoordinatorClient,
        until: Instant,
    ) -> Option<String> {
        let _one = self.delivering_unspooled.lock().await;
        loop {
            let front = self
                .unspooled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .front()
                .cloned();
            // Nothing left in memory: everything was delivered, no reason to report.
            let event = front?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Some("time bound reached".into());
            }
            let body = serde_json::to_vec(&event).expect("event serializes");
            match client.post_event(&body, left).await {
                PostOutcome::Accepted(_) => {}
                PostOutcome::Rejected {
                    status,
                    body: reply,
                } => {
                    tracing::error!(%status, reply = %reply, event = %String::from_utf8_lossy(&body), "coordinator rejected an event that was never spooled; it is only in this log");
                }
                PostOutcome::Transient(why) => return Some(why),
            }
            // Only this (locked) function pops; `emit` only pushes at the back.
            self.unspooled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
        }
    }

    /// One delivery pass: the spool, then (once the spool is empty) the in-memory events.
    async fn deliver_all(
        &self,
        spool: &Spool,
        client: &CoordinatorClient,
        until: Instant,
    ) -> DeliveryReport {
        let mut report = spool.deliver(client, until).await;
        if report.remaining == 0 {
            report.stopped_by = self.deliver_unspooled(client, until).await;
        }
        report.remaining += self.unspooled();
        report
    }

    /// Deliver what is waiting, within `bound`. `None` without a coordinator.
    pub async fn flush(&self, bound: Duration) -> Option<DeliveryReport> {
        let (spool, client) = (self.spool.as_ref()?, self.client.as_ref()?);
        let report = self
            .deliver_all(spool, client, Instant::now() + bound)
            .await;
        let memory: Vec<EventEnvelope> = self
            .unspooled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let why = format!(
            "it could neither be spooled nor delivered ({})",
            report.stopped_by.as_deref().unwrap_or("no time left")
        );
        for event in &memory {
            self.report_lost(event, &why);
        }
        if report.remaining > 0 {
            tracing::warn!(
                remaining = report.remaining,
                why = report.stopped_by.as_deref().unwrap_or(""),
                "events stay spooled; `vmpilot recover` or the next pilot delivers them"
            );
        }
        Some(report)
    }

    /// Background delivery: runs until the task is dropped.
    pub async fn deliver_forever(self: Arc<Self>) {
        let (Some(spool), Some(client)) = (&self.spool, &self.client) else {
            return;
        };
        let mut backoff = BACKOFF_START;
        let mut last_why: Option<String> = None;
        loop {
            let report = self
                .deliver_all(spool, client, Instant::now() + PASS_BOUND)
                .await;
            if report.remaining == 0 {
                backoff = BACKOFF_START;
                last_why = None;
                self.wake.notified().await;
                continue;
            }
            // A TLS failure never heals by retrying: say so at once, once per cause.
            let why = report.stopped_by.clone().unwrap_or_default();
            if why.starts_with(TLS_FAILED) && last_why.as_deref() != Some(why.as_str()) {
                tracing::error!(remaining = report.remaining, why = %why, "coordinator delivery deferred");
            } else {
                tracing::debug!(remaining = report.remaining, why = %why, "coordinator delivery deferred");
            }
            last_why = Some(why);
            let jitter = rand::random_range(0.5..1.5);
            tokio::time::sleep(backoff.mul_f64(jitter)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Send an event now, without spooling it (heartbeats); returns the reply body on a 2xx.
    pub async fn send_now(&self, event: &EventEnvelope) -> Option<String> {
        let client = self.client.as_ref()?;
        let body = serde_json::to_vec(event).expect("event serializes");
        match client.post_event(&body, Duration::from_secs(60)).await {
            PostOutcome::Accepted(reply) => Some(reply),
            PostOutcome::Rejected { status, body } => {
                tracing::error!(%status, reply = %body, event = event.body.kind(), "coordinator rejected an event");
                None
            }
            PostOutcome::Transient(why) => {
                tracing::debug!(why = %why, event = event.body.kind(), "coordinator unreachable");
                None
            }
        }
    }

    /// Is a coordinator configured?
    pub fn has_coordinator(&self) -> bool {
        self.client.is_some()
    }

    /// Backlog for `status`; `None` without a coordinator.
    pub fn backlog(&self) -> Option<Backlog> {
        self.spool.as_ref().and_then(|s| s.backlog().ok())
    }
}
