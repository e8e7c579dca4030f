//! The baseline routine (`vmpilot-bench baseline-lease`): the least a pilot could do for a
//! lease on the same node, in a process of its own so it pays the same start-up.
//!
//! It loads the same config, opens the same host backend, makes the same host call to
//! reserve, POSTs one signed `reserved` event, waits for SIGTERM, makes the same host call
//! to release and POSTs one signed `unreserved` event. No lease record, no spool, no node
//! lock, no state machine, no heartbeats: everything the pilot adds for safety is what the
//! ratio to this baseline measures.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use time::OffsetDateTime;
use vmpilot::config::{Config, Overrides};
use vmpilot::coordinator::event::{EventBody, EventEnvelope, PROTOCOL_VERSION};
use vmpilot::coordinator::signature::{SIGNATURE_HEADER, Secret, sign};
use vmpilot::host::LeaseShare;
use vmpilot::lease::EndReason;
use vmpilot::lease::record::LeaseId;

/// POST one event, signed; fails unless the reply is 2xx.
async fn post(
    http: &reqwest::Client,
    url: &str,
    secret: &Secret,
    event: &EventEnvelope,
) -> anyhow::Result<()> {
    let body = serde_json::to_vec(event)?;
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let reply = http
        .post(format!("{url}/v1/events"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, sign(secret, t, &body))
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(
        reply.status().is_success(),
        "coordinator answered {}",
        reply.status()
    );
    Ok(())
}

fn envelope(lease: &LeaseId, node: &str, seq: u64, body: EventBody) -> EventEnvelope {
    EventEnvelope {
        protocol: PROTOCOL_VERSION,
        event_id: uuid::Uuid::new_v4().to_string(),
        lease_id: lease.clone(),
        epoch: 1,
        seq,
        node: node.to_string(),
        job_id: None,
        time: OffsetDateTime::now_utc(),
        body,
    }
}

/// Run the routine for `lease` on the node configured in `config`, reporting to `url`.
pub fn run(config: &Path, lease: &str, url: &str) -> anyhow::Result<()> {
    // Same runtime flavour as the pilot (`src/main.rs`).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let config = Config::load(config, true, &Overrides::default())?;
        let coordinator = config
            .coordinator
            .as_ref()
            .context("no [coordinator] in the config")?;
        let secret = Secret::from_file(&coordinator.secret_file)?;
        let http = reqwest::Client::builder().build()?;
        let host = vmpilot::host::open(&config)?;
        let lease: LeaseId = lease.parse()?;
        let share = LeaseShare {
            lease_id: lease.clone(),
            epoch: 1,
            memory_mib: 1024,
            cpus: 1,
            max_guests: config.lease.max_guests,
        };
        let baseline = host.reserve(&share)?;
        let deadline = OffsetDateTime::now_utc() + Duration::from_secs(3600);
        let reserved = EventBody::Reserved {
            memory_mib: 1024,
            cpus: 1,
            deadline,
            grace_secs: 5,
            hypervisor: None,
        };
        post(
            &http,
            url,
            &secret,
            &envelope(&lease, &config.node_name, 0, reserved),
        )
        .await?;
        term.recv().await;
        host.release(&lease, Some(&baseline))?;
        let unreserved = EventBody::Unreserved {
            reason: EndReason::Cancelled,
            guests: Vec::new(),
        };
        post(
            &http,
            url,
            &secret,
            &envelope(&lease, &config.node_name, 1, unreserved),
        )
        .await?;
        Ok(())
    })
}
