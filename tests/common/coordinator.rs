//! A test coordinator: real HTTP on 127.0.0.1 (axum), which checks every request's
//! signature with the shared secret, applies each event id once, records what it got, and
//! signs its 2xx replies as the protocol asks.
//! It can misbehave on demand ([`Mode`], switchable while it runs) and serve HTTPS with a
//! certificate from a private test CA ([`TestCa`]).

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::routing::post;
use serde_json::Value;
use vmpilot::coordinator::signature::{SIGNATURE_HEADER, Secret, sign_reply, verify};

/// How the test coordinator answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 for good signatures, 401 otherwise.
    Accept,
    /// 503 for everything.
    Unavailable,
    /// 400 for everything.
    Reject,
    /// Every request hangs — up to 30 s, or until the mode changes — and then gets a 503
    /// without being applied: a coordinator that accepts connections and never answers.
    Hang,
    /// A 502 with an HTML body (not applied) for the first try of each durable event, then
    /// a 200 whose body is garbage (applied); heartbeats always get the garbage 200: not JSON, not UTF-8, truncated, over-long, or JSON with tempting but
    /// malformed `release`/`shorten` directives for the very lease that sent the event.
    Garbage,
    /// Applies every event and answers 200 with the directives set, but signs the reply
    /// with a secret the pilot does not have: a forged or misconfigured acknowledgement.
    ForgedReplies,
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
    mode: Mutex<Mode>,
    /// Set when the coordinator stops, so hung requests end.
    stopping: AtomicBool,
    log: Mutex<Log>,
    /// Event ids posted at least once (`Mode::Garbage` fails the first try of each).
    tried: Mutex<std::collections::HashSet<String>>,
    /// Directives returned in every 200 reply.
    directives: Mutex<Vec<Value>>,
}

pub struct TestCoordinator {
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A private CA and a certificate it signed for 127.0.0.1 / localhost, all PEM.
pub struct TestCa {
    /// The CA certificate: what a client must trust.
    pub ca_pem: String,
    /// The server certificate.
    pub cert_pem: String,
    /// The server's private key.
    pub key_pem: String,
}

impl TestCa {
    /// A fresh CA and server certificate.
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "vmpilot test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        TestCa {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
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
) -> (StatusCode, [(HeaderName, String); 1], Vec<u8>) {
    let (status, reply) = answer(shared.as_ref(), &headers, &body).await;
    let request_signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let key = if *shared.mode.lock().unwrap() == Mode::ForgedReplies {
        Secret::new("not-the-pilots-secret-0123456789")
    } else {
        shared.secret.clone()
    };
    let signature = if status.is_success() {
        sign_reply(&key, unix_now(), request_signature, &reply)
    } else {
        String::new()
    };
    (
        status,
        [(HeaderName::from_static("vmpilot-signature"), signature)],
        reply,
    )
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn answer(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> (StatusCode, Vec<u8>) {
    if *shared.mode.lock().unwrap() == Mode::Hang {
        shared.log.lock().unwrap().posts += 1;
        let until = Instant::now() + Duration::from_secs(30);
        while *shared.mode.lock().unwrap() == Mode::Hang
            && !shared.stopping.load(Ordering::SeqCst)
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        return (StatusCode::SERVICE_UNAVAILABLE, Vec::new());
    }
    let garbage = *shared.mode.lock().unwrap() == Mode::Garbage;
    if garbage && first_try_of_durable_event(shared, body) {
        shared.log.lock().unwrap().posts += 1;
        let html = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";
        return (StatusCode::BAD_GATEWAY, html.to_vec());
    }
    let status = apply(shared, headers, body);
    let reply = if status == StatusCode::OK && garbage {
        garbage_reply(shared, body)
    } else if status == StatusCode::OK {
        serde_json::json!({"status": "applied", "directives": *shared.directives.lock().unwrap()})
            .to_string()
            .into_bytes()
    } else {
        Vec::new()
    };
    (status, reply)
}

/// Is this the first time this durable (non-heartbeat) event is posted?
fn first_try_of_durable_event(shared: &Shared, body: &[u8]) -> bool {
    let event: Value = serde_json::from_slice(body).unwrap_or_default();
    let id = event["event_id"].as_str().unwrap_or("").to_string();
    event["type"] != "heartbeat" && shared.tried.lock().unwrap().insert(id)
}

/// The next garbage body, naming the event's own lease and epoch so a pilot that half-reads
/// garbage would be tempted to obey it.
fn garbage_reply(shared: &Shared, event: &[u8]) -> Vec<u8> {
    let event: Value = serde_json::from_slice(event).unwrap_or_default();
    let (lease, epoch) = (event["lease_id"].clone(), event["epoch"].clone());
    let release = serde_json::json!({"type": "release", "lease_id": lease, "epoch": epoch});
    let n = shared.log.lock().unwrap().posts;
    match n % 8 {
        0 => b"<html><body>OK</body></html>".to_vec(),
        1 => b"\xff\xfe\x00{\"directives\":[".to_vec(),
        2 => serde_json::json!([release]).to_string().into_bytes(),
        3 => serde_json::json!({"status": "applied", "directives": release})
            .to_string()
            .into_bytes(),
        4 => serde_json::json!({"status": "applied", "directives": [
            {"type": "release", "lease_id": lease, "epoch": epoch.to_string()},
            {"type": "shorten", "lease_id": lease, "epoch": epoch, "deadline": "yesterday"},
        ]})
        .to_string()
        .into_bytes(),
        5 => {
            // A valid release, but past the pilot's 64 KiB reply limit.
            let pad = "x".repeat(70 * 1024);
            serde_json::json!({"status": "applied", "directives": [release], "pad": pad})
                .to_string()
                .into_bytes()
        }
        6 => {
            let mut full = serde_json::json!({"status": "applied", "directives": [release]})
                .to_string()
                .into_bytes();
            full.truncate(full.len() - 3);
            full
        }
        _ => Vec::new(),
    }
}

fn apply(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> StatusCode {
    let mut log = shared.log.lock().unwrap();
    log.posts += 1;
    match *shared.mode.lock().unwrap() {
        Mode::Unavailable => return StatusCode::SERVICE_UNAVAILABLE,
        Mode::Reject => return StatusCode::BAD_REQUEST,
        Mode::Accept | Mode::Hang | Mode::Garbage | Mode::ForgedReplies => {}
    }
    let header = headers
        .get(SIGNATURE_HEADER)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if verify(
        std::slice::from_ref(&shared.secret),
        header,
        body,
        unix_now(),
        300,
    )
    .is_err()
    {
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
        Self::serve(port, secret, mode, None)
    }

    /// Start HTTPS on `port` (0: any) with `ca`'s server certificate.
    pub fn start_tls_on(port: u16, secret: &str, mode: Mode, ca: &TestCa) -> TestCoordinator {
        Self::serve(port, secret, mode, Some(ca))
    }

    fn serve(port: u16, secret: &str, mode: Mode, tls: Option<&TestCa>) -> TestCoordinator {
        let shared = Arc::new(Shared {
            secret: Secret::new(secret),
            mode: Mutex::new(mode),
            stopping: AtomicBool::new(false),
            log: Mutex::new(Log::default()),
            tried: Mutex::default(),
            directives: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        listener.set_nonblocking(true).unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route("/v1/events", post(events))
            .with_state(shared.clone());
        let pems = tls.map(|ca| (ca.cert_pem.clone(), ca.key_pem.clone()));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Some((cert, key)) = pems else {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await
                        .unwrap();
                    return;
                };
                // Another test in this process may have installed it already.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let config = axum_server::tls_rustls::RustlsConfig::from_pem(
                    cert.into_bytes(),
                    key.into_bytes(),
                )
                .await
                .unwrap();
                let handle = axum_server::Handle::new();
                let h = handle.clone();
                tokio::spawn(async move {
                    let _ = stopped.await;
                    h.graceful_shutdown(Some(Duration::from_secs(1)));
                });
                axum_server::from_tcp_rustls(listener, config)
                    .unwrap()
                    .handle(handle)
                    .serve(app.into_make_service())
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

    /// Answer as `mode` from now on (requests hanging in [`Mode::Hang`] end at once).
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Assert that the lease's durable events arrived, each exactly once, as `types` (in
    /// order), and that no event id was ever applied twice.
    pub fn assert_exactly_once(&self, lease: &str, types: &[&str]) {
        assert_eq!(self.types_for(lease), types, "events of lease {lease}");
        self.with_log(|l| {
            let mut ids: Vec<&str> = l
                .applied
                .iter()
                .map(|e| e["event_id"].as_str().unwrap())
                .collect();
            let n = ids.len();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), n, "an event id was applied twice");
            assert_eq!(l.bad_signatures, 0, "badly signed posts");
        });
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
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
