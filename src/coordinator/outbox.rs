//! Where the pilot, `recover` and `kill-all` send events: logged always, spooled and
//! delivered when a coordinator is configured.
//!
//! Delivery runs in the background with exponential backoff and jitter while the spool has
//! a backlog, and sleeps on a notification otherwise, so an idle pilot makes no wake-ups.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Notify;

use super::client::{CoordinatorClient, PostOutcome};
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
            }));
        };
        let secret = Secret::from_file(&c.secret_file)?;
        let client = match &c.ca_file {
            Some(ca) => CoordinatorClient::with_ca_file(&c.url, secret, c.timeout.get(), ca)?,
            None => CoordinatorClient::new(&c.url, secret, c.timeout.get())
                .context("cannot build the coordinator HTTP client")?,
        };
        Ok(Arc::new(Outbox {
            spool: Some(Spool::open(&config.state_dir)?),
            client: Some(client),
            wake: Notify::new(),
        }))
    }

    /// Log the event and, with a coordinator, persist it in the spool and wake delivery.
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
            spool.enqueue(event)?;
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Deliver what is waiting, within `bound`. `None` without a coordinator.
    pub async fn flush(&self, bound: Duration) -> Option<DeliveryReport> {
        let (spool, client) = (self.spool.as_ref()?, self.client.as_ref()?);
        let report = spool.deliver(client, Instant::now() + bound).await;
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
        loop {
            let report = spool.deliver(client, Instant::now() + PASS_BOUND).await;
            if report.remaining == 0 {
                backoff = BACKOFF_START;
                self.wake.notified().await;
                continue;
            }
            tracing::debug!(remaining = report.remaining, why = ?report.stopped_by, "coordinator delivery deferred");
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
