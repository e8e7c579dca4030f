//! The reference coordinator (`vmpilot-coordinator`): the other end of the pilot's signed
//! callbacks, a small operator API, a status page and a pilot pool.
//!
//! What it owns and the invariants it keeps:
//!
//! - **Ingest** (`POST /v1/events`, [`api`]): a request is checked in a fixed order — body
//!   size (413), signature and replay window (401), protocol version (400 with the supported
//!   list), shape (400) — and only then handed to the single SQLite writer ([`db`]). A `200`
//!   is sent only after the transaction holding the event has been committed with
//!   `synchronous=FULL`, so an acknowledged event survives a SIGKILL or a power cut.
//! - **Idempotency**: `event_id` is `UNIQUE` in the append-only event log; a re-delivered
//!   event is acknowledged (`"duplicate"`) and changes nothing.
//! - **Directives** (`release`, `shorten`) are created by an operator for a lease's current
//!   epoch and returned in the reply to every event of exactly that lease and epoch until the
//!   lease reports that it is ending. A directive can never reach another epoch.
//! - **One lease per node**: leases, directives and guest launches are keyed by `(node,
//!   lease_id, epoch)`; epochs count per node, so a slot id reused on two nodes is two
//!   leases ([`db`] migrates older files).
//! - **Retention**: heartbeats older than `heartbeat_retention` are pruned hourly; every
//!   other event is kept.
//! - **Lost leases**: a reserved lease silent for `lost_after` is flagged `lost` ([`run`]'s
//!   background task); the pilot keeps to its own deadline whatever the coordinator thinks.
//! - **Pool** ([`pool`]): `POST /v1/pilots` and an optional background loop run the project's
//!   `vmpilot-submit` scripts; every job id is recorded as soon as it is known.
//! - **Guests** ([`guests`]): on `reserved` the configured domain templates are started on the
//!   node with the lease's metadata, after the event is acknowledged; when the lease is over
//!   their definitions are retired. Outcomes are stored with the lease.
//! - **TLS**: with `[tls]` the API is served over HTTPS (rustls); without it, plain HTTP,
//!   meant for loopback or behind a TLS proxy. Either way connections are capped and every
//!   wait for a client is bounded ([`serve`]).
//!
//! The binary (`src/main.rs`) only parses flags and calls [`run`].

pub mod api;
pub mod config;
pub mod db;
pub mod guests;
pub mod ingest;
pub mod message;
pub mod pool;
pub mod query;
pub mod serve;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use self::config::{Config, ConfigError};
use self::db::{Db, DbError};
use self::pool::Pool;

/// Why the coordinator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// The config is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database could not be opened or failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr}: {source}\n\nhint: another coordinator may be running; change `listen` in the config"
    )]
    Bind {
        /// The address from the config.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    /// The TLS certificate or key cannot be used.
    #[error(
        "cannot use the TLS certificate {cert} with key {key}: {source}\n\nhint: both must be PEM; the key must match the certificate (check `[tls]` in the config)"
    )]
    Tls {
        /// `tls.cert_file`.
        cert: std::path::PathBuf,
        /// `tls.key_file`.
        key: std::path::PathBuf,
        /// What rustls said.
        source: std::io::Error,
    },
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Everything a request handler needs; cloned cheaply into every handler.
#[derive(Clone)]
pub struct AppState {
    /// The validated config.
    pub config: Arc<Config>,
    /// The database (one writer thread, pooled readers).
    pub db: Db,
    /// The pilot pool, when `[pool]` is configured.
    pub pool: Option<Arc<Pool>>,
    /// Guest launches and retirements in flight (awaited at shutdown).
    pub tasks: Arc<guests::Tasks>,
}

/// Run the coordinator until SIGTERM or SIGINT: bind, serve, then drain in-flight requests,
/// stop the background tasks and close the database.
///
/// `ready` is called once with the bound address (the binary prints it, so a config with
/// port 0 is usable by scripts and tests).
pub async fn run(config: Config, ready: impl FnOnce(SocketAddr)) -> Result<(), CoordError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| CoordError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(CoordError::Serve)?;
    let tls = match &config.tls {
        Some(t) => Some(tls_config(t).await?),
        None => {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "listening beyond loopback over plain HTTP: configure [tls] or put a TLS proxy in front, the admin token travels in the clear");
            }
            None
        }
    };
    let db = Db::open(&config.database)?;
    let config = Arc::new(config);
    let pool = config.pool.clone().map(|p| Arc::new(Pool::new(p)));
    let tasks = Arc::new(guests::Tasks::default());
    let state = AppState {
        config: config.clone(),
        db: db.clone(),
        pool: pool.clone(),
        tasks: tasks.clone(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let lost_task = tokio::spawn(lost_loop(state.clone(), stop_rx.clone()));
    let retention_task = tokio::spawn(retention_loop(state.clone(), stop_rx.clone()));
    let pool_task = pool.map(|p| tokio::spawn(pool::pool_loop(p, db.clone(), stop_rx.clone())));
    let shutdown = shutdown_signal()?;
    ready(addr);
    tracing::info!(%addr, https = tls.is_some(), database = %config.database.display(), "coordinator started");
    let app = api::router(state);
    let limits = serve::Limits {
        max_connections: serve::connection_cap(config.max_connections),
        header_timeout: config.header_timeout,
        request_timeout: config.request_timeout,
    };
    let listener = listener.into_std().map_err(CoordError::Serve)?;
    let served = serve::serve(listener, app, tls, limits, shutdown, DRAIN_LIMIT).await;
    tasks.drain(DRAIN_LIMIT).await;
    // Whatever the server did, stop the background tasks and close the database so every
    // committed write is checkpointed and the file is left clean.
    let _ = stop_tx.send(true);
    let _ = lost_task.await;
    let _ = retention_task.await;
    if let Some(t) = pool_task {
        let _ = t.await;
    }
    db.close().await;
    tracing::info!("coordinator stopped");
    served.map_err(CoordError::Serve)
}

/// How long shutdown waits for in-flight HTTPS connections and guest launches.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Load `[tls]` into a rustls server config (ring provider, installed once per process).
async fn tls_config(
    tls: &config::TlsConfig,
) -> Result<axum_server::tls_rustls::RustlsConfig, CoordError> {
    // Both ring and aws-lc-rs are compiled in (dependencies ask for each), so rustls cannot
    // pick a provider by itself. A second install in the same process is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert_file, &tls.key_file)
        .await
        .map_err(|source| CoordError::Tls {
            cert: tls.cert_file.clone(),
            key: tls.key_file.clone(),
            source,
        })
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, CoordError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(CoordError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(CoordError::Signals)?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "stopping: draining in-flight requests");
    })
}

/// Flags reserved leases that have been silent for `lost_after`, every quarter of that
/// (at most every 10 s), until `stop` turns true.
async fn lost_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    let lost_after = state.config.lost_after;
    let every = (lost_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        match state.db.mark_lost(lost_after).await {
            Ok(leases) => {
                for (node, lease, epoch) in leases {
                    tracing::warn!(%node, %lease, epoch, "lease lost: no event for {}", humantime::format_duration(lost_after));
                }
            }
            Err(e) => tracing::error!("lost-lease check failed: {e:#}"),
        }
    }
}

/// How often old heartbeats are pruned (and once at start).
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Deletes heartbeats older than `heartbeat_retention`, at start and then hourly, until
/// `stop` turns true.
async fn retention_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    let retention = state.config.heartbeat_retention;
    loop {
        match state.db.prune_heartbeats(retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deleted = n,
                "pruned heartbeats older than {}",
                humantime::format_duration(retention)
            ),
            Err(e) => tracing::error!("pruning old heartbeats failed: {e:#}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETENTION_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}
