//! The HTTP API (docs/openapi.yaml): event ingest for pilots, read endpoints for anyone who
//! can reach the coordinator (or, with `protect_reads`, for holders of the admin token),
//! and operator endpoints (directives, pilot submission) behind a
//! bearer token.
//!
//! Every error is JSON `{"error": "..."}` with a status that tells a pilot what to do:
//! 4xx — this body will never be accepted (the pilot moves it to `spool/rejected/`);
//! 503 — try again later (database busy or shutting down).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;

use super::AppState;
use super::db::DbError;
use super::guests;
use super::ingest::{DirectiveRefusal, DirectiveRequest};
use super::message::{IngestStatus, MessageError, SUPPORTED_PROTOCOLS, parse_event};
use super::pool::SubmitRequest;
use super::query;
use super::web;
use vmpilot_protocol::signature::{
    SIGNATURE_HEADER, Secret, SignatureError, node_secret, sign, sign_reply, verify, verify_which,
};

/// The routes, with the body limit applied to every request.
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/", get(web::status_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/events", post(post_event).get(get_events))
        .route("/v1/leases", get(list_leases))
        .route("/v1/leases/{id}", get(get_lease))
        .route("/v1/leases/{id}/release", post(release))
        .route("/v1/leases/{id}/shorten", post(shorten))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{node}/leases/{id}", get(get_node_lease))
        .route(
            "/v1/nodes/{node}/leases/{id}/release",
            post(release_on_node),
        )
        .route(
            "/v1/nodes/{node}/leases/{id}/shorten",
            post(shorten_on_node),
        )
        .route("/v1/pilots", post(submit_pilots).get(list_pilots))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            reads_need_token,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// With `protect_reads`, every read (the status page, `GET /v1/...`) needs the admin token;
/// only `/healthz` stays open, for load balancers. Writes check their own credentials.
async fn reads_need_token(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let is_read =
        request.method() == axum::http::Method::GET || request.method() == axum::http::Method::HEAD;
    if state.config.protect_reads
        && is_read
        && request.uri().path() != "/healthz"
        && let Err(e) = authorize(&state, request.headers())
    {
        return e.into_response();
    }
    next.run(request).await
}

/// An error reply: status and a JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
    bearer_challenge: bool,
}

impl ApiError {
    /// `{"error": message}` with `status`.
    pub fn new(status: StatusCode, message: impl std::fmt::Display) -> Self {
        ApiError {
            status,
            body: json!({ "error": message.to_string() }),
            bearer_challenge: false,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.bearer_challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"vmpilot-coordinator\""),
            );
        }
        response
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        tracing::error!("{e:#}");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}"))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::new(e.status(), e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::new(e.status(), e.body_text())
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `POST /v1/events`: size, signature, version, shape, then the durable write.
async fn post_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                format!(
                    "body is larger than the limit of {} bytes",
                    state.config.max_body_bytes
                ),
            )
        } else {
            ApiError::new(status, e.body_text())
        }
    })?;
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!("missing {SIGNATURE_HEADER} header"),
            )
        })?;
    let window = state.config.replay_window.as_secs() as i64;
    // MACs over the body are CPU work an unauthenticated sender can ask for: they run on
    // the blocking pool, so a flood of them cannot stall the runtime's other requests.
    let (claimed, candidates, verified) = {
        let (config, body, signature) = (state.config.clone(), body.clone(), signature.to_string());
        tokio::task::spawn_blocking(move || {
            // The node the event claims, read leniently before it is authenticated (bounded
            // by max_body_bytes), only to derive that node's key: with per-node keys, only
            // the claimed node's secret verifies it.
            let claimed = claimed_node(&body);
            let mut candidates = config.secrets.clone();
            if let Some(node) = &claimed {
                candidates.extend(config.node_masters.iter().map(|m| node_secret(m, node)));
            }
            let verified = verify_which(&candidates, &signature, &body, unix_now(), window)
                .map(|v| candidates.iter().position(|c| std::ptr::eq(c, v)));
            (claimed, candidates, verified)
        })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("signature check failed: {e}"),
            )
        })?
    };
    let verified = verified
        .map_err(|e| {
            tracing::warn!("refused an event: {e}");
            let hint = match e {
                SignatureError::Stale { .. } => "; check the clocks of the node and the coordinator",
                SignatureError::Mismatch => "; the node's coordinator.secret_file must hold one of the coordinator's secret_files",
                SignatureError::Malformed => "",
            };
            ApiError::new(StatusCode::UNAUTHORIZED, format!("{e}{hint}"))
        })?
        .expect("verify_which returns one of the candidates");
    let shared = state.config.secrets.len();
    let event = parse_event(&body).map_err(|e| {
        let mut err = ApiError::new(StatusCode::BAD_REQUEST, &e);
        if let MessageError::Unsupported(_) = e {
            err.body["supported"] = json!(SUPPORTED_PROTOCOLS);
        }
        err
    })?;
    // A per-node key vouches for one node only: the event's own `node` must be the one
    // the key was derived for.
    let by_node_key = verified >= shared;
    if by_node_key && claimed.as_deref() != Some(event.node.as_str()) {
        tracing::warn!("refused an event whose node does not match the key that signed it");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "signature does not match the event's node",
        ));
    }
    let secret = candidates[verified].clone();
    // parse_event accepted it as JSON, so it is UTF-8.
    let text = String::from_utf8_lossy(&body).into_owned();
    let reply = state.db.ingest(event.clone(), text).await?;
    if reply.status == IngestStatus::Applied {
        guests::after_event(&state, &event);
    }
    // Signed with the secret the pilot used, over its request's signature: see
    // `coordinator::signature`.
    let bytes = serde_json::to_vec(&reply).expect("a reply serializes");
    let reply_signature = sign_reply(&secret, unix_now(), signature, &bytes);
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (
                header::HeaderName::from_static("vmpilot-signature"),
                reply_signature,
            ),
        ],
        bytes,
    )
        .into_response())
}

/// Operator endpoints: `Authorization: Bearer <admin token>`.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.config.admin_token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "operator endpoints are disabled\n\nhint: set `admin_token_file` in the coordinator config",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    // Compare in constant time: MAC a fixed message with the given token, then let
    // `verify` check that MAC against the real token with `Mac::verify_slice`.
    const PROBE: &[u8] = b"vmpilot-coordinator-admin";
    let ok = given.is_some_and(|g| {
        let mac = sign(&Secret::new(g), 0, PROBE);
        verify(std::slice::from_ref(token), &mac, PROBE, 0, 1).is_ok()
    });
    if ok {
        Ok(())
    } else {
        let mut e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token\n\nhint: send `Authorization: Bearer <contents of admin_token_file>`",
        );
        e.bearer_challenge = true;
        Err(e)
    }
}

/// `?after=&limit=&lease_id=` of `GET /v1/events`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: usize,
    lease_id: Option<String>,
}

fn default_limit() -> usize {
    100
}

async fn get_events(
    State(state): State<AppState>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<query::EventsPage>, ApiError> {
    let Query(q) = q?;
    if q.limit == 0 || q.limit > query::MAX_LIST {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`limit` must be 1 to {}", query::MAX_LIST),
        ));
    }
    let page = state
        .db
        .read(move |c| query::events(c, q.after, q.limit, q.lease_id.as_deref()))
        .await?;
    Ok(Json(page))
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default = "default_list")]
    limit: usize,
}

fn default_list() -> usize {
    query::MAX_LIST
}

/// `{"leases": [...]}`.
#[derive(Serialize, Deserialize, Debug)]
pub struct LeaseList {
    /// Lease epochs, most recently heard from first.
    pub leases: Vec<query::LeaseView>,
}

async fn list_leases(
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<LeaseList>, ApiError> {
    let Query(q) = q?;
    let leases = state.db.read(move |c| query::leases(c, q.limit)).await?;
    Ok(Json(LeaseList { leases }))
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct LeaseQuery {
    epoch: Option<u64>,
}

/// One lease epoch and the list of all its epochs.
#[derive(Serialize, Deserialize, Debug)]
pub struct LeaseDetail {
    /// The requested (or newest) epoch.
    #[serde(flatten)]
    pub lease: query::LeaseView,
    /// Every epoch known for this lease id, newest first.
    pub epochs: Vec<u64>,
}

/// `GET /v1/leases/{id}`: the lease with this id, when one node has it (409 naming the
/// nodes otherwise: epochs are per node, so the id alone does not name one lease).
async fn get_lease(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<LeaseQuery>, QueryRejection>,
) -> Result<Json<LeaseDetail>, ApiError> {
    let Query(q) = q?;
    let lookup = id.clone();
    let nodes = state.db.read(move |c| query::nodes_of(c, &lookup)).await?;
    match nodes.as_slice() {
        [] => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no lease `{id}` is known"),
        )),
        [node] => lease_detail(&state, node.clone(), id, q.epoch).await,
        several => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "lease `{id}` is known on {} nodes: {}\n\nhint: name the node: /v1/nodes/{{node}}/leases/{id}",
                several.len(),
                several.join(", ")
            ),
        )),
    }
}

/// `GET /v1/nodes/{node}/leases/{id}`.
async fn get_node_lease(
    State(state): State<AppState>,
    Path((node, id)): Path<(String, String)>,
    q: Result<Query<LeaseQuery>, QueryRejection>,
) -> Result<Json<LeaseDetail>, ApiError> {
    let Query(q) = q?;
    lease_detail(&state, node, id, q.epoch).await
}

async fn lease_detail(
    state: &AppState,
    node: String,
    id: String,
    epoch: Option<u64>,
) -> Result<Json<LeaseDetail>, ApiError> {
    let (n, lookup) = (node.clone(), id.clone());
    let found = state
        .db
        .read(move |c| {
            let lease = query::lease(c, &n, &lookup, epoch)?;
            Ok(lease.map(|l| (l, query::epochs(c, &n, &lookup))))
        })
        .await?;
    match found {
        Some((lease, epochs)) => Ok(Json(LeaseDetail {
            lease,
            epochs: epochs?,
        })),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no lease `{id}` is known on node `{node}`"),
        )),
    }
}

/// `{"nodes": [...]}`.
#[derive(Serialize, Deserialize, Debug)]
pub struct NodeList {
    /// Nodes by name.
    pub nodes: Vec<query::NodeView>,
}

async fn list_nodes(State(state): State<AppState>) -> Result<Json<NodeList>, ApiError> {
    let nodes = state.db.read(query::nodes).await?;
    Ok(Json(NodeList { nodes }))
}

async fn directive(
    state: AppState,
    node: Option<String>,
    id: String,
    request: DirectiveRequest,
) -> Result<Response, ApiError> {
    match state.db.create_directive(node, id, request).await? {
        Ok(view) => {
            tracing::info!(node = %view.node, lease = %view.lease_id, epoch = view.epoch, kind = %view.kind, "directive created");
            Ok((StatusCode::ACCEPTED, Json(view)).into_response())
        }
        Err(refusal) => {
            let status = match refusal {
                DirectiveRefusal::UnknownLease(_) => StatusCode::NOT_FOUND,
                DirectiveRefusal::Ambiguous { .. } | DirectiveRefusal::Ended { .. } => {
                    StatusCode::CONFLICT
                }
                DirectiveRefusal::NotEarlier { .. } => StatusCode::BAD_REQUEST,
            };
            Err(ApiError::new(status, refusal))
        }
    }
}

async fn release(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    directive(state, None, id, DirectiveRequest::Release).await
}

async fn release_on_node(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((node, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    directive(state, Some(node), id, DirectiveRequest::Release).await
}

/// Body of `POST /v1/leases/{id}/shorten`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ShortenRequest {
    #[serde(with = "time::serde::rfc3339")]
    deadline: OffsetDateTime,
}

async fn shorten(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<ShortenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let Json(req) = body?;
    directive(state, None, id, DirectiveRequest::Shorten(req.deadline)).await
}

async fn shorten_on_node(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((node, id)): Path<(String, String)>,
    body: Result<Json<ShortenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let Json(req) = body?;
    directive(
        state,
        Some(node),
        id,
        DirectiveRequest::Shorten(req.deadline),
    )
    .await
}

/// `{"pilots": [...]}`.
#[derive(Serialize, Deserialize, Debug)]
pub struct PilotList {
    /// Newest first.
    pub pilots: Vec<query::PilotView>,
}

async fn list_pilots(State(state): State<AppState>) -> Result<Json<PilotList>, ApiError> {
    let pilots = state.db.read(|c| query::pilots(c, query::MAX_LIST)).await?;
    Ok(Json(PilotList { pilots }))
}

async fn submit_pilots(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<SubmitRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let Json(req) = body?;
    let Some(pool) = &state.pool else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "pilot submission is not configured\n\nhint: add a [pool] section to the coordinator config",
        ));
    };
    let (job_ids, error) = pool.submit(&state.db, &req, "api").await;
    match error {
        None => Ok((StatusCode::CREATED, Json(json!({ "job_ids": job_ids }))).into_response()),
        Some(e) => {
            tracing::warn!(submitted = job_ids.len(), "pilot submission failed: {e:#}");
            let status = if e.is_bad_request() && job_ids.is_empty() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::BAD_GATEWAY
            };
            let mut err = ApiError::new(status, format!("{e:#}"));
            err.body["job_ids"] = json!(job_ids);
            Err(err)
        }
    }
}

/// The `node` an event body claims, if it names a valid host name; read before the body
/// is authenticated, so nothing else is taken from it.
fn claimed_node(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Claim {
        node: String,
    }
    let claim: Claim = serde_json::from_slice(body).ok()?;
    vmpilot_protocol::lease_id::node_name_problem(&claim.node)
        .is_none()
        .then_some(claim.node)
}
