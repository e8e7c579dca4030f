//! The coordinator's HTTP front: one accept loop for plain HTTP and `[tls]`, with the limits
//! that keep an unauthenticated flood from taking it down.
//!
//! - **Connections are capped** (`max_connections`): a connection past the cap is closed as
//!   soon as it is accepted, so descriptors never run out and the ones held are bounded.
//! - **Nothing waits forever for a client** (`header_timeout`): a TLS handshake, a new
//!   connection's first request, every request's headers and an idle keep-alive connection
//!   are each bounded, so half-sent requests free their slot; once the headers are in, the
//!   whole request (its body included) is bounded by `request_timeout` (408).
//! - **HTTP/1.1 only**: pilots and operators need nothing more, and HTTP/2 would add
//!   streams that idle and multiplex past these bounds.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum_server::accept::{Accept, DefaultAcceptor};
use axum_server::tls_rustls::RustlsConfig;
use hyper_util::rt::TokioTimer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bounds, from the config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Handshake, first request, headers, keep-alive idle.
    pub header_timeout: Duration,
    /// One request once its headers are in.
    pub request_timeout: Duration,
}

/// Descriptors kept free for the database, the log, guest launches and submit scripts.
const RESERVED_DESCRIPTORS: u64 = 128;

/// Raise the soft descriptor limit to the hard one and return the connection cap those
/// descriptors can carry: `wanted`, or less (with a warning) when the limit is lower.
pub fn connection_cap(wanted: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return wanted;
    };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let carried = usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX);
    if carried < wanted {
        tracing::warn!(
            max_connections = wanted,
            descriptor_limit = limit,
            "the descriptor limit cannot carry max_connections; capping at {carried} (raise LimitNOFILE)"
        );
        carried.max(1)
    } else {
        wanted
    }
}

/// Serve `app` on `listener` (over TLS with `tls`) within `limits` until `shutdown`
/// resolves, then drain open requests for up to `drain`.
pub async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    tls: Option<RustlsConfig>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> io::Result<()> {
    let app = app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(drain));
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refused = Arc::new(AtomicU64::new(0));
    let service = app.into_make_service();
    match tls {
        None => {
            let mut server = axum_server::from_tcp(listener)?
                .acceptor(Capped::new(DefaultAcceptor, slots, refused))
                .handle(handle)
                .http1_only()
                .first_request_timeout(limits.header_timeout);
            bound_headers(&mut server, limits);
            server.serve(service).await
        }
        Some(tls) => {
            let mut server = axum_server::from_tcp_rustls(listener, tls)?
                .map(|tls| {
                    Capped::new(tls.handshake_timeout(limits.header_timeout), slots, refused)
                })
                .handle(handle)
                .http1_only()
                .first_request_timeout(limits.header_timeout);
            bound_headers(&mut server, limits);
            server.serve(service).await
        }
    }
}

/// hyper's header timeout needs a timer; it covers each request's headers and, because
/// hyper starts it when it waits for the next request, an idle keep-alive connection too.
fn bound_headers<A: axum_server::Address, Acc>(
    server: &mut axum_server::Server<A, Acc>,
    limits: Limits,
) {
    server
        .http_builder()
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
}

/// An acceptor that lets a connection in only while it can take a slot; the slot is held
/// by the connection's stream and freed when hyper drops it.
#[derive(Clone)]
struct Capped<A> {
    inner: A,
    slots: Arc<Semaphore>,
    refused: Arc<AtomicU64>,
}

impl<A> Capped<A> {
    fn new(inner: A, slots: Arc<Semaphore>, refused: Arc<AtomicU64>) -> Self {
        Capped {
            inner,
            slots,
            refused,
        }
    }
}

impl<I, S, A> Accept<I, S> for Capped<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Slotted<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            drop(stream);
            // Logged on the first refusal and then every 1000th: a flood must not also
            // flood the journal.
            let n = self.refused.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(1000) {
                tracing::warn!(
                    refused = n + 1,
                    "connection limit reached (max_connections): closing new connections"
                );
            }
            return Box::pin(std::future::ready(Err(io::Error::other(
                "connection limit reached",
            ))));
        };
        let accepted = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            Ok((
                Slotted {
                    inner: stream,
                    _slot: slot,
                },
                service,
            ))
        })
    }
}

/// A connection's stream holding its slot.
struct Slotted<S> {
    inner: S,
    _slot: OwnedSemaphorePermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Slotted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Slotted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
