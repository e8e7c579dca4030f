//! The HTTP side: POST a spooled event, signed, with a timeout; classify the answer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::signature::{SIGNATURE_HEADER, Secret, sign};

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

/// Longest error reply body kept for logs.
const MAX_LOGGED_BODY: usize = 512;

/// Longest 2xx reply body read for directives.
const MAX_REPLY_BODY: usize = 64 * 1024;

impl CoordinatorClient {
    /// A client for the coordinator at `base_url`.
    pub fn new(base_url: &str, secret: Secret, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("vmpilot/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout)
            .build()?;
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
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let request = self
            .http
            .post(&self.events_url)
            .timeout(self.timeout.min(left).max(Duration::from_millis(50)))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sign(&self.secret, t, body))
            .body(body.to_vec());
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return PostOutcome::Transient(format!("{e:#}")),
        };
        let status = response.status();
        // A 2xx reply carries directives and is parsed whole (up to MAX_REPLY_BODY, beyond
        // which it is garbage anyway); an error reply is only logged, so it is cut short.
        let (full, too_long) = read_capped(response, MAX_REPLY_BODY).await;
        if status.is_success() {
            if too_long {
                tracing::warn!(
                    limit = MAX_REPLY_BODY,
                    "coordinator reply too long; ignoring its directives"
                );
                return PostOutcome::Accepted(String::new());
            }
            return PostOutcome::Accepted(full);
        }
        let text: String = full.chars().take(MAX_LOGGED_BODY).collect();
        if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408 {
            PostOutcome::Rejected {
                status: status.as_u16(),
                body: text,
            }
        } else {
            PostOutcome::Transient(format!("coordinator answered {status}"))
        }
    }
}

/// Read at most `cap` bytes of a reply, so a misbehaving coordinator cannot make the pilot
/// buffer an endless body. Returns the text and whether it was cut.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> (String, bool) {
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        if buf.len() + chunk.len() > cap {
            return (String::from_utf8_lossy(&buf).into_owned(), true);
        }
        buf.extend_from_slice(&chunk);
    }
    (String::from_utf8_lossy(&buf).into_owned(), false)
}
