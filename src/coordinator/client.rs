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

/// Longest reply body kept for logs.
const MAX_LOGGED_BODY: usize = 512;

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
        let text: String = response
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(MAX_LOGGED_BODY)
            .collect();
        if status.is_success() {
            PostOutcome::Accepted(text)
        } else if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408 {
            PostOutcome::Rejected {
                status: status.as_u16(),
                body: text,
            }
        } else {
            PostOutcome::Transient(format!("coordinator answered {status}"))
        }
    }
}
