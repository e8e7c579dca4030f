//! A minimal loopback coordinator (axum): it checks each request's signature, parses the
//! event, applies each event id once and answers `{"status":"applied","directives":[]}`,
//! signed as the protocol asks, storing nothing. It has two uses:
//!
//! - in the bench process, where pilots and baseline routines report to it, so the arrival
//!   of an event is timed on the same clock that started the process ([`Loopback`]);
//! - as a child process (`vmpilot-bench serve-baseline`), the floor that the reference
//!   coordinator's ingest and heartbeat figures are compared with: the same HTTP, signature
//!   check and JSON parse, without SQLite.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::routing::{get, post};
use vmpilot::coordinator::signature::{SIGNATURE_HEADER, Secret, sign_reply, verify_which};

/// What arrived, keyed by `(lease_id, type)`: arrival instants in order.
#[derive(Default, Debug)]
pub struct Arrivals {
    /// Arrival instants by lease and event type.
    pub by_lease: HashMap<(String, String), Vec<Instant>>,
    /// Event ids seen (each applied once).
    seen: HashSet<String>,
    /// Re-deliveries of a seen event id (at-least-once delivery; applied once here, as the
    /// protocol requires of a coordinator), as `lease/type`.
    pub duplicates: Vec<String>,
    /// Requests whose signature did not verify.
    pub bad_signatures: usize,
    /// Bodies that were not events.
    pub bad_bodies: usize,
}

struct Shared {
    secrets: Vec<Secret>,
    /// `None` when arrivals are not recorded (the child server under load).
    arrivals: Option<Mutex<Arrivals>>,
    changed: Condvar,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

async fn events(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(HeaderName, String); 1], &'static str) {
    let at = Instant::now();
    let header = headers
        .get(SIGNATURE_HEADER)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let signed = verify_which(&shared.secrets, header, &body, unix_now(), 300).ok();
    let event = serde_json::from_slice::<serde_json::Value>(&body).ok();
    if let Some(arrivals) = &shared.arrivals {
        let mut a = arrivals.lock().unwrap_or_else(|e| e.into_inner());
        if signed.is_none() {
            a.bad_signatures += 1;
        } else if let Some(e) = &event {
            let id = e["event_id"].as_str().unwrap_or("").to_string();
            let key = (
                e["lease_id"].as_str().unwrap_or("").to_string(),
                e["type"].as_str().unwrap_or("").to_string(),
            );
            if a.seen.insert(id) {
                a.by_lease.entry(key).or_default().push(at);
            } else {
                a.duplicates.push(format!("{}/{}", key.0, key.1));
            }
        } else {
            a.bad_bodies += 1;
        }
        drop(a);
        shared.changed.notify_all();
    }
    let (status, reply) = match (signed, event) {
        (None, _) => (StatusCode::UNAUTHORIZED, r#"{"error":"bad signature"}"#),
        (Some(_), None) => (StatusCode::BAD_REQUEST, r#"{"error":"not JSON"}"#),
        (Some(_), Some(_)) => (StatusCode::OK, r#"{"status":"applied","directives":[]}"#),
    };
    let reply_signature = signed
        .map(|secret| sign_reply(secret, unix_now(), header, reply.as_bytes()))
        .unwrap_or_default();
    let name = HeaderName::from_static("vmpilot-signature");
    (status, [(name, reply_signature)], reply)
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/events", post(events))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(shared)
}

/// The in-process coordinator; stops when dropped.
pub struct Loopback {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Loopback {
    /// Start on a free loopback port, with its own one-worker runtime thread.
    pub fn start(secret: &str) -> std::io::Result<Loopback> {
        let shared = Arc::new(Shared {
            secrets: vec![Secret::new(secret)],
            arrivals: Some(Mutex::new(Arrivals::default())),
            changed: Condvar::new(),
        });
        let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(shared.clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Ok(Loopback {
            url,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Look at what arrived.
    pub fn with<T>(&self, f: impl FnOnce(&Arrivals) -> T) -> T {
        let arrivals = self.shared.arrivals.as_ref().expect("loopback records");
        f(&arrivals.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Wait (at most `timeout`) until `lease` has a `kind` event; its first arrival instant.
    pub fn wait_for(&self, lease: &str, kind: &str, timeout: Duration) -> Option<Instant> {
        let arrivals = self.shared.arrivals.as_ref().expect("loopback records");
        let until = Instant::now() + timeout;
        let key = (lease.to_string(), kind.to_string());
        let mut a = arrivals.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(t) = a.by_lease.get(&key).and_then(|v| v.first()) {
                return Some(*t);
            }
            let left = until.checked_duration_since(Instant::now())?;
            a = self
                .shared
                .changed
                .wait_timeout(a, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// How many distinct `kind` events `lease` delivered.
    pub fn count(&self, lease: &str, kind: &str) -> usize {
        self.with(|a| {
            a.by_lease
                .get(&(lease.to_string(), kind.to_string()))
                .map_or(0, Vec::len)
        })
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `vmpilot-bench serve-baseline`: serve on `listen` (two workers, like the reference
/// coordinator) until killed, printing `listening on http://ADDR` first.
pub fn serve_baseline(secret_file: &std::path::Path, listen: SocketAddr) -> anyhow::Result<()> {
    use std::io::Write;
    let secret = Secret::from_file(secret_file)?;
    let shared = Arc::new(Shared {
        secrets: vec![secret],
        arrivals: None,
        changed: Condvar::new(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("listening on http://{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        axum::serve(listener, router(shared)).await?;
        Ok(())
    })
}
