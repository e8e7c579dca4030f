//! A bounded flood of requests no honest pilot sends, aimed at the coordinator while honest
//! pilots heartbeat (issue #13, item 3). Three kinds, all on 127.0.0.1, all stopping at a
//! deadline and a request cap:
//!
//! - bad signatures: heartbeat-shaped bodies with the most MAC work a header may ask for
//!   (four wrong `v1=` values), as fast as they are refused;
//! - oversized signature headers (64 KiB of empty `v1=` values), refused before any MAC;
//! - half-sent requests: connections that send part of their headers and wait, reopened
//!   whenever the coordinator closes them (after `header_timeout`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use vmpilot::coordinator::signature::SIGNATURE_HEADER;

/// How hard to push.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    /// Concurrent bad-signature senders.
    pub bad_clients: usize,
    /// Concurrent oversized-header senders.
    pub oversized_clients: usize,
    /// Half-sent connections held open at once.
    pub half_open: usize,
    /// At most this many requests in all (the flood is bounded in count, not only time).
    pub max_requests: usize,
}

/// What the flood did.
#[derive(Debug, Default)]
pub struct Sent {
    /// Bad-signature requests answered (any status).
    pub bad: AtomicUsize,
    /// ... of which were refused with 401.
    pub refused: AtomicUsize,
    /// Oversized-header requests answered or cut off.
    pub oversized: AtomicUsize,
    /// Half-sent connections the coordinator closed.
    pub half_open_closed: AtomicUsize,
}

/// Flood `base_url` until `until`.
pub async fn run(base_url: String, flood: Flood, until: Instant) -> Arc<Sent> {
    let sent = Arc::new(Sent::default());
    let budget = Arc::new(AtomicUsize::new(flood.max_requests));
    let take = |budget: &AtomicUsize| {
        budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(flood.bad_clients + flood.oversized_clients)
        .build()
        .expect("a reqwest client");
    let url = format!("{base_url}/v1/events");
    let mut tasks = Vec::new();
    let bad_header = format!(
        "t={},{}",
        unix_now(),
        vec![format!("v1={}", "0".repeat(64)); 4].join(",")
    );
    let body = r#"{"protocol":1,"event_id":"flood","type":"heartbeat","lease_id":"flood","epoch":1,"seq":0,"node":"flood","time":"2026-01-01T00:00:00Z","deadline":"2026-01-01T01:00:00Z","state":"reserved"}"#;
    for _ in 0..flood.bad_clients {
        let (http, url, sent, budget, header) = (
            http.clone(),
            url.clone(),
            sent.clone(),
            budget.clone(),
            bad_header.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until && take(&budget) {
                let r = http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(SIGNATURE_HEADER, &header)
                    .body(body)
                    .send()
                    .await;
                sent.bad.fetch_add(1, Ordering::Relaxed);
                if r.is_ok_and(|r| r.status() == reqwest::StatusCode::UNAUTHORIZED) {
                    sent.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let huge = format!("t={},{}", unix_now(), "v1=,".repeat(16 * 1024));
    for _ in 0..flood.oversized_clients {
        let (http, url, sent, budget, header) = (
            http.clone(),
            url.clone(),
            sent.clone(),
            budget.clone(),
            huge.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until && take(&budget) {
                let _ = http
                    .post(&url)
                    .header(SIGNATURE_HEADER, &header)
                    .body(body)
                    .send()
                    .await;
                sent.oversized.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let addr = base_url.trim_start_matches("http://").to_string();
    for _ in 0..flood.half_open {
        let (addr, sent, budget) = (addr.clone(), sent.clone(), budget.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until && take(&budget) {
                let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if s.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .is_err()
                {
                    continue;
                }
                let mut buf = [0u8; 512];
                // Wait for the coordinator to close it (or for the flood to end).
                let closed = tokio::time::timeout_at(until, async {
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
                if closed.is_ok() {
                    sent.half_open_closed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    sent
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Honest pilots heartbeating (the issue's 1,000) to a reference coordinator, quiet and
/// then while a bounded flood runs: their p99 in both, and what the flood sent. The
/// coordinator runs with `header_timeout = "2s"` so half-sent connections turn over within
/// the window; flood, pilots and coordinator share this machine's CPUs.
pub fn coordinator_under_flood(
    ctx: &super::Ctx,
    figures: &mut Vec<super::report::Figure>,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    use super::ingest::{Server, blast, heartbeats, reserved, signed};
    use super::stats::{Summary, percentile};
    use vmpilot::coordinator::signature::Secret;

    let pilots = 1000;
    let dir = tempfile::Builder::new()
        .prefix("vmpilot-bench-flood-")
        .tempdir()?;
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{}\n", super::node::SECRET))?;
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600))?;
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\ndatabase = \"coord.db\"\nsecret_files = [\"secret\"]\nlost_after = \"1h\"\nheader_timeout = \"2s\"\n",
    )?;
    let mut cmd = std::process::Command::new(&ctx.coordinator);
    cmd.arg("--config").arg(&config).env("RUST_LOG", "warn");
    let server = Server::start(cmd, &dir.path().join("coordinator.log"))?;
    let secret = Secret::new(super::node::SECRET);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The flood gets its own runtime, so its tasks do not queue the honest pilots' sends.
    let flood_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("{}/v1/events", server.url);
    let setup = Arc::new(
        (0..pilots)
            .map(|i| signed(&secret, reserved(&format!("hb-{i}"), i)))
            .collect::<Vec<_>>(),
    );
    let (ok, _) = rt.block_on(blast(&http, &url, setup, 32));
    if ok != pilots {
        failures.push(format!(
            "flood setup: {} of {pilots} leases refused",
            pilots - ok
        ));
    }
    let flood = Flood {
        bad_clients: 32,
        oversized_clients: 4,
        half_open: 256,
        max_requests: 500_000,
    };
    let (mut quiet, mut flooded) = (Vec::new(), Vec::new());
    let mut notes = Vec::new();
    for round in 0..ctx.hb_runs {
        let (lat, failed) = rt.block_on(heartbeats(&http, &url, &secret, pilots, ctx.hb_window));
        quiet.extend(percentile(&lat, 99.0));
        if failed > 0 {
            failures.push(format!(
                "flood run {round}: {failed} quiet heartbeats failed"
            ));
        }
        let until = Instant::now() + ctx.hb_window + Duration::from_millis(500);
        let attack = flood_rt.spawn(run(server.url.clone(), flood, until));
        let (lat, failed) = rt.block_on(heartbeats(&http, &url, &secret, pilots, ctx.hb_window));
        let sent = flood_rt.block_on(attack)?;
        flooded.extend(percentile(&lat, 99.0));
        if failed > 0 {
            failures.push(format!(
                "flood run {round}: {failed} of {pilots} honest heartbeats failed under the flood"
            ));
        }
        let secs = (ctx.hb_window + Duration::from_millis(500)).as_secs_f64();
        notes.push(format!(
            "{:.0} bad-signature req/s ({} refused 401), {} oversized headers, {} half-sent connections closed by the coordinator",
            sent.bad.load(Ordering::Relaxed) as f64 / secs,
            sent.refused.load(Ordering::Relaxed),
            sent.oversized.load(Ordering::Relaxed),
            sent.half_open_closed.load(Ordering::Relaxed),
        ));
    }
    figures.push(super::report::Figure {
        group: "flood".into(),
        name: "heartbeat reply latency p99 under a flood".into(),
        unit: "ms".into(),
        value: Summary::of(&flooded),
        baseline_name: "same coordinator, no flood".into(),
        baseline: Summary::of(&quiet),
        goal: Some("≤ 50 ms".into()),
        note: format!(
            "{pilots} pilots × 1 heartbeat over {} s while 32 clients send bad signatures, 4 send 64 KiB signature headers and 256 connections stay half-sent; per run: {}",
            ctx.hb_window.as_secs_f64(),
            notes.join("; ")
        ),
    });
    drop(rt);
    drop(flood_rt);
    match server.stop() {
        Some(0) => {}
        other => failures.push(format!(
            "flooded coordinator: SIGTERM exit {other:?}, expected 0"
        )),
    }
    Ok(())
}
