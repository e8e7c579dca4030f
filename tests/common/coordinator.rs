//! A test coordinator: real HTTP on 127.0.0.1 (axum), which checks every request's
//! signature with the shared secret, applies each event id once, and records what it got.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use vmpilot::coordinator::signature::{SIGNATURE_HEADER, Secret, verify};

/// How the test coordinator answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 for good signatures, 401 otherwise.
    Accept,
    /// 503 for everything.
    Unavailable,
    /// 400 for everything.
    Reject,
}

#[derive(Default)]
pub struct Log {
    /// Every POST that reached the handler.
    pub posts: usize,
    /// Posts whose signature did not verify.
    pub bad_signatures: usize,
    /// Events applied, in order of first arrival.
    pub applied: Vec<Value>,
    /// Re-deliveries of an already applied event id.
    pub duplicates: usize,
}

struct Shared {
    secret: Secret,
    mode: Mode,
    log: Mutex<Log>,
    /// Directives returned in every 200 reply.
    directives: Mutex<Vec<Value>>,
}

pub struct TestCoordinator {
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A loopback port that is free right now (for a coordinator that starts later).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn events(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let status = apply(&shared, &headers, &body);
    let reply = if status == StatusCode::OK {
        serde_json::json!({"status": "applied", "directives": *shared.directives.lock().unwrap()})
            .to_string()
    } else {
        String::new()
    };
    (status, reply)
}

fn apply(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> StatusCode {
    let mut log = shared.log.lock().unwrap();
    log.posts += 1;
    match shared.mode {
        Mode::Unavailable => return StatusCode::SERVICE_UNAVAILABLE,
        Mode::Reject => return StatusCode::BAD_REQUEST,
        Mode::Accept => {}
    }
    let header = headers
        .get(SIGNATURE_HEADER)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if verify(std::slice::from_ref(&shared.secret), header, body, now, 300).is_err() {
        log.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(event) = serde_json::from_slice::<Value>(body) else {
        return StatusCode::BAD_REQUEST;
    };
    if log
        .applied
        .iter()
        .any(|e| e["event_id"] == event["event_id"])
    {
        log.duplicates += 1;
    } else {
        log.applied.push(event);
    }
    StatusCode::OK
}

impl TestCoordinator {
    /// Start on a random loopback port.
    pub fn start(secret: &str, mode: Mode) -> TestCoordinator {
        Self::start_on(0, secret, mode)
    }

    /// Start on `port` (0: any).
    pub fn start_on(port: u16, secret: &str, mode: Mode) -> TestCoordinator {
        let shared = Arc::new(Shared {
            secret: Secret::new(secret),
            mode,
            log: Mutex::new(Log::default()),
            directives: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route("/v1/events", post(events))
            .with_state(shared.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        TestCoordinator {
            url,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Return these directives in every reply from now on.
    pub fn set_directives(&self, directives: Vec<Value>) {
        *self.shared.directives.lock().unwrap() = directives;
    }

    /// Inspect what arrived.
    pub fn with_log<T>(&self, f: impl FnOnce(&Log) -> T) -> T {
        f(&self.shared.log.lock().unwrap())
    }

    /// Types of applied durable events (heartbeats left out) for one lease, in order.
    pub fn types_for(&self, lease: &str) -> Vec<String> {
        self.with_log(|l| {
            l.applied
                .iter()
                .filter(|e| e["lease_id"] == lease && e["type"] != "heartbeat")
                .map(|e| e["type"].as_str().unwrap().to_string())
                .collect()
        })
    }
}

impl Drop for TestCoordinator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
