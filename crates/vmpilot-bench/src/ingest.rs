//! The reference coordinator (`vmpilot-coordinator`, a child process with its own SQLite
//! file) under load from this process on 127.0.0.1, next to the storage-less baseline
//! server (`vmpilot-bench serve-baseline`) taking the same requests:
//!
//! - ingest: a bounded number of distinct signed `reserved` events sent by N concurrent
//!   clients as fast as they are answered; accepted events per second;
//! - heartbeats: many simulated pilots, each sending one heartbeat at a time spread evenly
//!   over a window (open loop: latency counts from the scheduled send time, so a slow server
//!   cannot hide its queueing); p50 and p99.
//!
//! Afterwards the coordinator is stopped with SIGTERM and its database is opened to check
//! that every acknowledged event was stored.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vmpilot::coordinator::signature::{SIGNATURE_HEADER, Secret, sign};

use super::node::SECRET;
use super::report::Figure;
use super::stats::{Summary, percentile};
use super::{Ctx, ms};

/// A server child process that printed `listening on http://ADDR`.
pub(super) struct Server {
    child: Child,
    /// Its base URL.
    pub(super) url: String,
}

impl Server {
    /// Start `cmd`, its stderr to `log`, and wait for its address.
    pub(super) fn start(mut cmd: Command, log: &Path) -> anyhow::Result<Server> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| {
                format!(
                    "{:?} did not start: {}",
                    cmd.get_program(),
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })?
            .to_string();
        Ok(Server { child, url })
    }

    /// SIGTERM and wait (bounded); the exit code.
    pub(super) fn stop(mut self) -> Option<i32> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A signed event body and its signature header.
pub(super) struct Signed {
    body: Vec<u8>,
    header: String,
}

/// Sign `body` now.
pub(super) fn signed(secret: &Secret, body: String) -> Signed {
    let header = sign(secret, unix_now(), body.as_bytes());
    Signed {
        body: body.into_bytes(),
        header,
    }
}

/// A protocol v1 `reserved` event for `lease` (epoch 1, seq 0) on one of 100 nodes.
pub(super) fn reserved(lease: &str, i: usize) -> String {
    let now = time::OffsetDateTime::now_utc();
    serde_json::json!({
        "protocol": 1, "event_id": uuid::Uuid::new_v4().to_string(), "lease_id": lease,
        "epoch": 1, "seq": 0, "node": format!("node{:03}", i % 100), "job_id": i.to_string(),
        "time": rfc3339(now), "type": "reserved", "memory_mib": 4096, "cpus": 2,
        "deadline": rfc3339(now + Duration::from_secs(3600)), "grace_secs": 60,
    })
    .to_string()
}

/// A heartbeat for `lease` (seq 0: the `reserved` before it).
fn heartbeat(lease: &str, i: usize) -> String {
    let now = time::OffsetDateTime::now_utc();
    serde_json::json!({
        "protocol": 1, "event_id": uuid::Uuid::new_v4().to_string(), "lease_id": lease,
        "epoch": 1, "seq": 0, "node": format!("node{:03}", i % 100), "job_id": i.to_string(),
        "time": rfc3339(now), "type": "heartbeat", "state": "reserved",
        "deadline": rfc3339(now + Duration::from_secs(3600)),
    })
    .to_string()
}

/// POST one signed body; `true` on 2xx.
async fn post(http: &reqwest::Client, url: &str, s: &Signed) -> bool {
    http.post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, &s.header)
        .body(s.body.clone())
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Send every body with `clients` concurrent workers; (accepted, elapsed).
pub(super) async fn blast(
    http: &reqwest::Client,
    url: &str,
    bodies: Arc<Vec<Signed>>,
    clients: usize,
) -> (usize, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, bodies, next, ok) = (
            http.clone(),
            url.to_string(),
            bodies.clone(),
            next.clone(),
            ok.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(s) = bodies.get(i) else { return };
                if post(&http, &url, s).await {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (ok.load(Ordering::Relaxed), started.elapsed())
}

/// One heartbeat per pilot, spread evenly over `window`; latencies (ms) of the accepted
/// ones from their scheduled time, and the count refused or failed.
pub(super) async fn heartbeats(
    http: &reqwest::Client,
    url: &str,
    secret: &Secret,
    pilots: usize,
    window: Duration,
) -> (Vec<f64>, usize) {
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::with_capacity(pilots);
    for i in 0..pilots {
        let at = start + window.mul_f64(i as f64 / pilots as f64);
        let (http, url, secret) = (http.clone(), url.to_string(), secret.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let s = signed(&secret, heartbeat(&format!("hb-{i}"), i));
            let ok = post(&http, &url, &s).await;
            ok.then(|| ms(at.elapsed()))
        }));
    }
    let (mut lat, mut failed) = (Vec::with_capacity(pilots), 0);
    for t in tasks {
        match t.await {
            Ok(Some(l)) => lat.push(l),
            _ => failed += 1,
        }
    }
    (lat, failed)
}

/// Ingest throughput and heartbeat latency of the reference coordinator vs the baseline.
pub fn coordinator(
    ctx: &Ctx,
    figures: &mut Vec<Figure>,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("vmpilot-bench-coord-")
        .tempdir()?;
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n"))?;
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600))?;
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\ndatabase = \"coord.db\"\nsecret_files = [\"secret\"]\nlost_after = \"1h\"\n",
    )?;
    let mut cmd = Command::new(&ctx.coordinator);
    cmd.arg("--config").arg(&config).env("RUST_LOG", "warn");
    let real = Server::start(cmd, &dir.path().join("coordinator.log"))?;
    let mut cmd = Command::new(&ctx.bench);
    cmd.arg("serve-baseline")
        .arg("--secret-file")
        .arg(&secret_file);
    let base = Server::start(cmd, &dir.path().join("baseline.log"))?;
    let secret = Secret::new(SECRET);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let targets = [(&real.url, true), (&base.url, false)];
    let mut sent_to_real = 0usize;
    let (mut rate_real, mut rate_base) = (Vec::new(), Vec::new());
    for run in 0..ctx.ingest_runs {
        for (url, is_real) in targets {
            let bodies: Arc<Vec<Signed>> = Arc::new(
                (0..ctx.ingest_events)
                    .map(|i| signed(&secret, reserved(&format!("ing-{run}-{i}"), i)))
                    .collect(),
            );
            let url = format!("{url}/v1/events");
            let (ok, took) = rt.block_on(blast(&http, &url, bodies, ctx.ingest_clients));
            if ok != ctx.ingest_events {
                failures.push(format!(
                    "ingest run {run}: {} of {} events refused ({})",
                    ctx.ingest_events - ok,
                    ctx.ingest_events,
                    if is_real { "coordinator" } else { "baseline" }
                ));
            }
            let rate = ok as f64 / took.as_secs_f64();
            if is_real {
                sent_to_real += ok;
                rate_real.push(rate);
            } else {
                rate_base.push(rate);
            }
        }
    }
    figures.push(Figure {
        group: "coordinator".into(),
        name: format!(
            "ingest: signed `reserved` events accepted and stored, {} clients",
            ctx.ingest_clients
        ),
        unit: "events/s".into(),
        value: Summary::of(&rate_real),
        baseline_name: "same HTTP + signature + JSON, nothing stored".into(),
        baseline: Summary::of(&rate_base),
        goal: Some("≥ 5,000/s".into()),
        note: format!(
            "{} events per run; client on the same machine",
            ctx.ingest_events
        ),
    });
    // Heartbeats: the leases exist first (not timed), then one heartbeat each.
    let hb_setup: Arc<Vec<Signed>> = Arc::new(
        (0..ctx.hb_pilots)
            .map(|i| signed(&secret, reserved(&format!("hb-{i}"), i)))
            .collect(),
    );
    for (url, is_real) in targets {
        let (ok, _) = rt.block_on(blast(
            &http,
            &format!("{url}/v1/events"),
            hb_setup.clone(),
            ctx.ingest_clients,
        ));
        if is_real {
            sent_to_real += ok;
        }
    }
    let (mut p50, mut p99, mut b50, mut b99) = (vec![], vec![], vec![], vec![]);
    for run in 0..ctx.hb_runs {
        for (url, is_real) in targets {
            let (lat, failed) = rt.block_on(heartbeats(
                &http,
                &format!("{url}/v1/events"),
                &secret,
                ctx.hb_pilots,
                ctx.hb_window,
            ));
            if failed > 0 {
                failures.push(format!(
                    "heartbeat run {run}: {failed} heartbeats refused or failed ({})",
                    if is_real { "coordinator" } else { "baseline" }
                ));
            }
            if is_real {
                sent_to_real += lat.len();
            }
            let (a, b) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
            let (v50, v99) = if is_real {
                (&mut p50, &mut p99)
            } else {
                (&mut b50, &mut b99)
            };
            v50.extend(a);
            v99.extend(b);
        }
    }
    let hb_note = format!(
        "{} pilots × 1 heartbeat over {} s ({:.0}/s), open loop",
        ctx.hb_pilots,
        ctx.hb_window.as_secs_f64(),
        ctx.hb_pilots as f64 / ctx.hb_window.as_secs_f64()
    );
    for (name, v, b, goal) in [
        ("p50", &p50, &b50, None),
        ("p99", &p99, &b99, Some("≤ 50 ms")),
    ] {
        figures.push(Figure {
            group: "coordinator".into(),
            name: format!("heartbeat reply latency {name}"),
            unit: "ms".into(),
            value: Summary::of(v),
            baseline_name: "same, nothing stored".into(),
            baseline: Summary::of(b),
            goal: goal.map(String::from),
            note: hb_note.clone(),
        });
    }
    drop(rt);
    let _ = base.stop();
    match real.stop() {
        Some(0) => {}
        other => failures.push(format!("coordinator: SIGTERM exit {other:?}, expected 0")),
    }
    match stored_events(&dir.path().join("coord.db")) {
        Ok(n) if n == sent_to_real => {}
        Ok(n) => failures.push(format!(
            "coordinator stored {n} pilot events, {sent_to_real} were acknowledged"
        )),
        Err(e) => failures.push(format!("cannot count stored events: {e:#}")),
    }
    Ok(())
}

/// Pilot events in the coordinator's database.
fn stored_events(db: &PathBuf) -> anyhow::Result<usize> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM events WHERE source = 'pilot'",
        [],
        |r| r.get(0),
    )?;
    Ok(n as usize)
}
