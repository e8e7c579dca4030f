//! The HTTP side: POST a spooled event, signed, with a timeout; classify the answer.
//!
//! A failure to reach the coordinator is transient (the event stays spooled), but its cause
//! is spelled out whole — in particular a TLS failure, which no amount of retrying fixes, is
//! named as such so an admin sees that the certificate is not trusted.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::signature::{SIGNATURE_HEADER, Secret, sign, verify_reply};
use crate::config::CoordinatorConfig;

/// How a POST ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostOutcome {
    /// 2xx: the coordinator stored it (or already had it).
    Accepted(String),
    /// 4xx: the coordinator will never accept this body; retrying is pointless.
    Rejected {
        /// HTTP status.
        status: u16,
        /// Reply body (truncated), for the log.
        body: String,
    },
    /// Connection failure, timeout, 5xx or 429: try again later.
    Transient(String),
}

/// Signs and sends events to `{url}/v1/events`.
#[derive(Debug, Clone)]
pub struct CoordinatorClient {
    events_url: String,
    secret: Secret,
    http: reqwest::Client,
    timeout: Duration,
}

/// The coordinator's CA file (`coordinator.ca_file`) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    /// The file cannot be read.
    #[error(
        "cannot read coordinator.ca_file {path}: {source}\n\nhint: check the path and its permissions"
    )]
    Read {
        /// The CA file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file holds no usable PEM certificate.
    #[error(
        "coordinator.ca_file {path} holds no PEM certificate{detail}\n\nhint: it must contain one or more `-----BEGIN CERTIFICATE-----` blocks (the CA that signed the coordinator's certificate)"
    )]
    NoCertificate {
        /// The CA file.
        path: PathBuf,
        /// Why parsing failed, if it did.
        detail: String,
    },
}

/// Start of the message of a [`PostOutcome::Transient`] caused by TLS.
pub const TLS_FAILED: &str = "TLS with the coordinator failed";

/// Longest error reply body kept for logs.
const MAX_LOGGED_BODY: usize = 512;

/// Longest 2xx reply body read for directives.
const MAX_REPLY_BODY: usize = 64 * 1024;

/// How far a reply's signature time may be from the pilot's clock, seconds: as generous as
/// the coordinator's usual replay window. The reply is bound to its request anyway.
const REPLY_WINDOW_SECS: i64 = 300;

impl CoordinatorClient {
    /// A client for the coordinator at `base_url`.
    pub fn new(base_url: &str, secret: Secret, timeout: Duration) -> Result<Self, reqwest::Error> {
        Self::build(base_url, secret, timeout, Vec::new(), None)
    }

    /// The client `[coordinator]` describes: its URL, timeout, private CA (`ca_file`) and
    /// proxy (`proxy`; without it no proxy is used, whatever the environment says).
    pub fn from_config(c: &CoordinatorConfig, secret: Secret) -> anyhow::Result<Self> {
        let roots = match &c.ca_file {
            Some(ca) => load_roots(ca)?,
            None => Vec::new(),
        };
        Ok(Self::build(
            &c.url,
            secret,
            c.timeout.get(),
            roots,
            c.proxy.as_deref(),
        )?)
    }

    /// A client that also trusts the CA certificates in the PEM file `ca_file` (a site's
    /// private CA), besides the built-in web roots.
    pub fn with_ca_file(
        base_url: &str,
        secret: Secret,
        timeout: Duration,
        ca_file: &Path,
    ) -> anyhow::Result<Self> {
        Ok(Self::build(
            base_url,
            secret,
            timeout,
            load_roots(ca_file)?,
            None,
        )?)
    }

    fn build(
        base_url: &str,
        secret: Secret,
        timeout: Duration,
        roots: Vec<reqwest::Certificate>,
        proxy: Option<&str>,
    ) -> Result<Self, reqwest::Error> {
        // The job's environment is the submitter's (`--export=ALL`): its HTTP(S)_PROXY and
        // ALL_PROXY must not route signed events elsewhere. Only the config names a proxy.
        // A redirect is not followed either: the events go to the configured URL or wait.
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("vmpilot/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        if let Some(proxy) = proxy {
            builder = builder.proxy(reqwest::Proxy::all(proxy)?);
        }
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
        let http = builder.build()?;
        Ok(CoordinatorClient {
            events_url: format!("{}/v1/events", base_url.trim_end_matches('/')),
            secret,
            http,
            timeout,
        })
    }

    /// POST one event body (the exact spooled bytes), waiting at most `left` (and never
    /// more than the configured timeout).
    pub async fn post_event(&self, body: &[u8], left: Duration) -> PostOutcome {
        if left < MIN_ATTEMPT {
            // Started this late, the request would time out on our side after the
            // coordinator may have applied it: the retry would then arrive as a duplicate.
            return PostOutcome::Transient(format!(
                "less than {} ms left: not started",
                MIN_ATTEMPT.as_millis()
            ));
        }
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let signature = sign(&self.secret, t, body);
        let request = self
            .http
            .post(&self.events_url)
            .timeout(self.timeout.min(left))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, &signature)
            .body(body.to_vec());
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return PostOutcome::Transient(describe_send_error(&e)),
        };
        let status = response.status();
        // The coordinator's clock, to tell a refused timestamp (this node's clock is off,
        // which heals) from a refused secret (which does not).
        let skew = clock_skew_secs(response.headers(), SystemTime::now());
        let reply_signature = response
            .headers()
            .get(SIGNATURE_HEADER)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        // A 2xx reply carries directives and is read whole (up to MAX_REPLY_BODY, beyond
        // which it is garbage anyway); an error reply is only logged, so it is cut short.
        let (full, too_long) = read_capped(response, MAX_REPLY_BODY).await;
        if status.is_success() {
            if too_long {
                // Too long to check its signature: as good as no answer.
                return PostOutcome::Transient(format!(
                    "coordinator answered {status} with a reply over {MAX_REPLY_BODY} bytes; not taken as delivered"
                ));
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            if let Err(e) = verify_reply(
                &self.secret,
                &reply_signature,
                &signature,
                &full,
                now,
                REPLY_WINDOW_SECS,
            ) {
                return PostOutcome::Transient(format!(
                    "coordinator answered {status}, but its reply's signature does not check out ({e}): \
                     not taken as delivered and its directives ignored; the coordinator must sign its replies \
                     with this node's secret (docs/protocol.md)"
                ));
            }
            return PostOutcome::Accepted(String::from_utf8_lossy(&full).into_owned());
        }
        let text: String = String::from_utf8_lossy(&full)
            .chars()
            .take(MAX_LOGGED_BODY)
            .collect();
        if status.as_u16() == 401
            && let Some(skew) = skew.filter(|s| s.abs() >= SKEW_SUSPECT_SECS)
        {
            // Every retry is signed anew: once the clock is synced (chrony at boot) the
            // same event goes through. Keep it spooled; never move it to `rejected/`.
            tracing::warn!(
                skew_secs = skew,
                "coordinator refused the signature and its clock differs from this node's by {skew}s; retrying (sync this node's clock: chronyc tracking / timedatectl)"
            );
            return PostOutcome::Transient(format!(
                "coordinator answered {status}: this node's clock is {skew}s off the coordinator's (its Date header), so the signature's timestamp is outside its window; retrying until the clock is synced"
            ));
        }
        if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408 {
            PostOutcome::Rejected {
                status: status.as_u16(),
                body: text,
            }
        } else if status.is_redirection() {
            PostOutcome::Transient(format!(
                "coordinator answered {status} (a redirect, which is never followed); kept spooled\n\n\
                 hint: set coordinator.url to the URL that answers, not one that redirects"
            ))
        } else {
            PostOutcome::Transient(format!("coordinator answered {status}"))
        }
    }
}

/// The CA certificates in the PEM file `ca_file` (a site's private CA).
fn load_roots(ca_file: &Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(ca_file).map_err(|source| CaFileError::Read {
        path: ca_file.to_path_buf(),
        source,
    })?;
    let no_cert = |detail: String| CaFileError::NoCertificate {
        path: ca_file.to_path_buf(),
        detail,
    };
    // reqwest accepts text without any PEM block as an empty bundle; refuse that here.
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(no_cert(String::new()).into());
    }
    let roots =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| no_cert(format!(" ({e})")))?;
    if roots.is_empty() {
        return Err(no_cert(String::new()).into());
    }
    Ok(roots)
}

/// The least time left for which a request is started at all.
pub const MIN_ATTEMPT: Duration = Duration::from_millis(250);

/// A clock difference from the coordinator's this large makes a 401 a timestamp problem:
/// synced clocks differ by milliseconds (and `Date` has whole seconds), and no sensible
/// replay window is this short. Erring this way costs retries, never an event.
const SKEW_SUSPECT_SECS: i64 = 5;

/// This node's clock minus the coordinator's, from the reply's `Date` header (seconds;
/// positive: this node is ahead). `None` without a readable header.
fn clock_skew_secs(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<i64> {
    let date = headers.get(reqwest::header::DATE)?.to_str().ok()?;
    let theirs = httpdate::parse_http_date(date).ok()?;
    Some(match now.duration_since(theirs) {
        Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX),
        Err(behind) => -i64::try_from(behind.duration().as_secs()).unwrap_or(i64::MAX),
    })
}

/// The whole cause of a failed request: reqwest's own message names only the URL, the
/// interesting part (refused, timed out, certificate not trusted) is in its sources. A TLS
/// failure is prefixed with [`TLS_FAILED`].
fn describe_send_error(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut tls = false;
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        // rustls errors travel inside an io::Error (whose `source` skips them).
        let inner_is_rustls = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<rustls::Error>());
        // How deep the rustls error sits depends on hyper's wrapping; its text does not.
        let tls_text = ["certificate", "TLS", "tls handshake", "HandshakeFailure"]
            .iter()
            .any(|w| part.contains(w));
        tls |= c.is::<rustls::Error>() || inner_is_rustls || tls_text;
        cause = c.source();
    }
    if e.is_timeout() && !text.contains("timed out") {
        text.push_str(" (timed out)");
    }
    if tls {
        format!(
            "{TLS_FAILED}: {text} (if the coordinator uses a private CA, set coordinator.ca_file)"
        )
    } else {
        text
    }
}

/// Read at most `cap` bytes of a reply, so a misbehaving coordinator cannot make the pilot
/// buffer an endless body. Returns the bytes and whether they were cut.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        if buf.len() + chunk.len() > cap {
            return (buf, true);
        }
        buf.extend_from_slice(&chunk);
    }
    (buf, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #12, item 10: the final flush of a pilot under contention started requests
    /// with as little as 50 ms left; those timed out on our side after the coordinator had
    /// applied them, and the retries arrived as duplicates. With less than `MIN_ATTEMPT`
    /// left nothing is sent (a real listener on loopback sees no connection); with enough
    /// left the request is made.
    #[tokio::test]
    async fn no_request_is_started_with_less_than_the_minimum_left() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let client = CoordinatorClient::new(
            &url,
            Secret::new("min-attempt-secret-0123"),
            Duration::from_secs(5),
        )
        .unwrap();
        let outcome = client
            .post_event(b"{}", MIN_ATTEMPT - Duration::from_millis(1))
            .await;
        assert!(
            matches!(&outcome, PostOutcome::Transient(why) if why.contains("not started")),
            "{outcome:?}"
        );
        assert!(listener.accept().is_err(), "a connection was made");
        // Enough time: the request goes out (and times out, as nothing answers).
        let outcome = client.post_event(b"{}", Duration::from_millis(400)).await;
        assert!(matches!(outcome, PostOutcome::Transient(_)), "{outcome:?}");
        assert!(listener.accept().is_ok(), "no connection was made");
    }
}
