//! The MCP front end: a node serves the Model Context Protocol over Streamable HTTP at
//! `/mcp`, and its tools are the realm's procedures that carry a descriptor.
//!
//! MCP is a front end on the mesh's own routing, not a second system: a `tools/call` is a
//! mesh RPC call from an in-process caller (a `Handle` like any client connection's, whose
//! outbound queue this module decodes instead of writing to a socket). So deadlines,
//! balancing, admission (`BUSY` at the caller's in-flight limit), provider loss and calls
//! to other nodes behave exactly as for SDK callers, and progress and logs arrive as
//! `NOTICE`s ahead of the `RESULT`.
//!
//! The protocol itself is rmcp's (both eras on one URL: 2025-11-25 sessions and 2026-07-28
//! stateless requests). The MCP server is [`McpServer`], shared with `fovea mcp` on stdio;
//! `local.rs` gives it this node's catalog and calls. This module adds what rmcp leaves to
//! the endpoint: credentials (`Authorization: Bearer`), binding sessions to their user,
//! session caps, hibernating idle sessions (`sessions.rs`), counting reaped sessions, and
//! JSON-RPC errors for malformed requests.

mod local;
mod rounds;
mod service;
mod sessions;
mod tasks;
mod updates;

pub use service::{
    find_in, server_config, tool_result, CallOutcome, CatalogSource, EntryPage, Found, Lookup, McpServer,
    QuestionOutcome, MAX_QUESTIONS_PER_CALL, MAX_RESOURCE_SUBSCRIPTIONS,
};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::config::McpConfig;
use crate::handle::outbound::Outbound;
use local::{Admitted, Caller, LocalCatalog};

/// Counters of the MCP endpoint (`/metrics`: `fovea_mcp_*`).
#[derive(Debug, Default)]
pub struct McpStats {
    pub requests: AtomicU64,
    pub unauthorized: AtomicU64,
    pub sessions_opened: AtomicU64,
    pub sessions_deleted: AtomicU64,
    /// Sessions closed for idleness (clients rarely send `DELETE`).
    pub sessions_reaped: AtomicU64,
    /// Sessions refused at `max_sessions` or `max_sessions_per_user`.
    pub sessions_refused: AtomicU64,
    /// Tool calls made (to a tool that exists for the requester, with valid arguments).
    pub tool_calls: AtomicU64,
    /// Tool calls answered with an error result (remote failure, timeout, busy, …).
    pub tool_errors: AtomicU64,
    /// Calls serving `resources/read`, `prompts/get`, `completion/complete` (by
    /// [`fovea_core::tool::answers::Method`] as index), past the lookup.
    pub method_calls: [AtomicU64; 3],
    /// Of those, the ones answered with a JSON-RPC error.
    pub method_errors: [AtomicU64; 3],
    /// Providers' questions to agents (elicitation, sampling, roots), by what became of
    /// them ([`QuestionOutcome`] as index).
    pub questions: [AtomicU64; 4],
}

/// Shared by every session and request of the endpoint.
pub(crate) struct McpState {
    shared: Arc<Shared>,
    caller: Arc<Caller>,
    updates: Arc<updates::Updates>,
    config: McpConfig,
    /// Legacy sessions, live and hibernated, with their owners.
    sessions: Arc<sessions::Sessions>,
    /// Tool calls kept as tasks (the tasks extension), for every session and request.
    tasks: Arc<tasks::Tasks>,
    pub stats: McpStats,
}

impl McpState {
    /// Legacy sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Legacy sessions hibernated now (their worker closed until their next request).
    pub fn hibernated_sessions(&self) -> usize {
        self.sessions.hibernated()
    }

    /// Sessions hibernated, and woken by a request, since the start.
    pub fn hibernations(&self) -> (u64, u64) {
        (self.sessions.hibernations.load(Ordering::Relaxed), self.sessions.wakes.load(Ordering::Relaxed))
    }

    /// Agents' subscriptions to resource updates now (one per resource and session).
    pub fn resource_watches(&self) -> usize {
        self.updates.watching()
    }

    /// Tasks the endpoint holds now (running or finished, until they expire).
    pub fn tasks(&self) -> usize {
        self.tasks.len()
    }
}

/// Serves the MCP endpoint until `stop`.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    config: McpConfig,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let limits = &shared.config.limits;
    let out = Outbound::new(limits.max_pending_bytes, limits.slow_consumer_timeout, false);
    let caller = Caller::new(out, limits.max_payload);
    tokio::spawn(caller.clone().drive(stop.clone()));
    let updates = updates::Updates::new(limits.max_pending_bytes, limits.slow_consumer_timeout, limits.max_payload);
    tokio::spawn(updates.clone().drive(stop.clone()));
    let sessions = Arc::new(sessions::Sessions::new(&config));
    let state = Arc::new(McpState {
        shared: shared.clone(),
        caller,
        updates,
        config: config.clone(),
        sessions: sessions.clone(),
        tasks: Arc::default(),
        stats: McpStats::default(),
    });
    let _ = shared.mcp.set(state.clone());
    tokio::spawn(reap(state.clone(), stop.clone()));
    let port = listener.local_addr()?.port();
    let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into(), "[::1]".into()];
    hosts.extend(config.allowed_hosts.iter().cloned());
    let mut origins: Vec<String> = ["http://localhost", "http://127.0.0.1", "http://[::1]"]
        .iter()
        .flat_map(|o| [format!("{o}:{port}"), format!("{o}:*")])
        .collect();
    origins.extend(config.allowed_origins.iter().cloned());
    let mut http = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_allowed_origins(origins)
        .with_max_request_body_bytes(config.max_body_bytes)
        .with_json_response(true)
        .with_cancellation_token(stop.child_token());
    // Where rmcp finds a hibernated session's `initialize` to replay.
    http.session_store = Some(sessions.clone());
    let catalog = Arc::new(LocalCatalog { state: state.clone() });
    let tasks = state.tasks.clone();
    let service: StreamableHttpService<McpServer<LocalCatalog>, sessions::Sessions> = StreamableHttpService::new(
        move || Ok(McpServer::new(catalog.clone()).with_tasks(tasks.clone())),
        sessions,
        http,
    );
    let app = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .into_make_service_with_connect_info::<SocketAddr>();
    // Without TCP_NODELAY, small SSE writes wait for the peer's delayed ACK (~40 ms).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
}

/// Authenticates every request, binds legacy sessions to their user and caps them.
async fn guard(
    State(state): State<Arc<McpState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let Some(identity) = authenticate(&state, &req, remote) else {
        state.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
        let body = r#"{"error":"unauthorized: send Authorization: Bearer <token> with a token of the realm (fovea token new)"}"#;
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"fovea\""), (header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
    };
    let owner = identity.owner();
    let session = req.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    // The request counts as the session's open (it cannot hibernate) until its response
    // ends; a session unknown here goes on to rmcp, which answers 404.
    let mut open = None;
    if let Some(id) = &session {
        match state.sessions.enter(id, &owner).await {
            // A session belongs to the user who opened it; to anyone else it does not exist.
            sessions::Entered::Foreign => return (StatusCode::NOT_FOUND, "no such session").into_response(),
            sessions::Entered::Unknown => {}
            sessions::Entered::Open(guard) => open = Some(guard),
        }
    }
    let method = req.method().clone();
    if method == Method::POST && is_json(&req) {
        // rmcp answers a body it cannot take as a JSON-RPC message with a plain-text 415;
        // JSON-RPC and MCP's transport say 400 with an error object that agents can parse.
        let (parts, body) = req.into_parts();
        let Ok(body) = axum::body::to_bytes(body, state.config.max_body_bytes).await else {
            let text = format!("the request body is over this endpoint's {} bytes", state.config.max_body_bytes);
            return (StatusCode::PAYLOAD_TOO_LARGE, text).into_response();
        };
        if let Err((id, code, message)) = check_jsonrpc(&body) {
            let error = serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
            return (StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
        }
        req = Request::from_parts(parts, axum::body::Body::from(body));
    }
    let realm = session.is_none().then(|| identity.realm.clone());
    req.extensions_mut().insert(identity);
    let response = next.run(req).await;
    let opened = response.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    match (session, opened) {
        (None, Some(id)) => {
            // The catalog's versions when the session opens: what it, once restored from
            // hibernation, announces changes against.
            let versions = realm.map(|r| r.with_tools(|c| c.kind_versions()));
            if let Err((status, text)) = state.sessions.admit(&id, owner, versions).await {
                state.stats.sessions_refused.fetch_add(1, Ordering::Relaxed);
                let mut r = (status, text).into_response();
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
                return r;
            }
            state.stats.sessions_opened.fetch_add(1, Ordering::Relaxed);
        }
        (Some(id), _) if method == Method::DELETE && response.status().is_success() && state.sessions.forget(&id) => {
            state.stats.sessions_deleted.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    match open {
        Some(guard) => response.map(|body| axum::body::Body::new(sessions::Tracked::new(body, guard))),
        None => response,
    }
}

/// Whether a request says its body is JSON (`application/json`, any parameters).
fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// JSON-RPC's parse error.
const PARSE_ERROR: i64 = -32700;
/// JSON-RPC's invalid request.
const INVALID_REQUEST: i64 = -32600;

/// Checks that `body` is one JSON-RPC 2.0 message (request, notification or response).
/// `Err((id, code, message))`: what to answer, with the request's id when it had a valid
/// one. Batches are refused: MCP removed them (2025-06-18) and rmcp does not take them.
fn check_jsonrpc(body: &[u8]) -> Result<(), (Value, i64, String)> {
    let null = || Value::Null;
    // serde_json stops at 128 levels of nesting with an error, so depth is bounded too.
    let msg: Value = serde_json::from_slice(body).map_err(|e| (null(), PARSE_ERROR, format!("parse error: {e}")))?;
    let invalid = |id: Value, why: &str| Err((id, INVALID_REQUEST, format!("invalid request: {why}")));
    let obj = match msg {
        Value::Object(obj) => obj,
        Value::Array(_) => return invalid(null(), "JSON-RPC batches are not supported by MCP; send one message"),
        _ => return invalid(null(), "a JSON-RPC message is a JSON object"),
    };
    let id = match obj.get("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.clone()),
        Some(Value::Null) => return invalid(null(), "the id must be a string or a number, not null"),
        Some(_) => return invalid(null(), "the id must be a string or a number"),
    };
    let echo = || id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid(echo(), r#"the "jsonrpc" member must be "2.0""#);
    }
    match obj.get("method") {
        Some(Value::String(_)) => Ok(()),
        Some(_) => invalid(echo(), r#"the "method" member must be a string"#),
        None if id.is_some() && (obj.contains_key("result") || obj.contains_key("error")) => Ok(()),
        None => invalid(echo(), r#"a request needs a "method" (and a response an "id" and a "result" or "error")"#),
    }
}

/// The realm and user a request's credential admits, or `None` (401).
///
/// `Authorization: Bearer <token>` is checked against every realm's users (the first realm,
/// in name order, that admits it); without one, a loopback client joins the open `default`
/// realm of a node without realm configuration, as on the QUIC side.
fn authenticate(state: &McpState, req: &Request, remote: SocketAddr) -> Option<Admitted> {
    let realms = state.shared.router.realms();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match bearer {
        Some(token) if !token.is_empty() => {
            let credential = crate::auth::credential_of(token.as_bytes(), None);
            let mut names: Vec<&String> = realms.keys().collect();
            names.sort();
            names.into_iter().find_map(|name| {
                let realm = realms.get(name)?;
                let admission = realm.admission();
                if matches!(*admission, crate::auth::Admission::Open) {
                    return None;
                }
                let (user, perms) = admission.admit(&credential)?;
                Some(Admitted { realm: realm.clone(), user, perms })
            })
        }
        _ if remote.ip().is_loopback() => {
            let realm = realms.get(crate::config::DEFAULT_REALM)?;
            let admission = realm.admission();
            let (user, perms) = match *admission {
                crate::auth::Admission::Open => admission.admit(&crate::auth::credential_of(b"", None))?,
                crate::auth::Admission::Users(_) => return None,
            };
            Some(Admitted { realm: realm.clone(), user, perms })
        }
        _ => None,
    }
}

/// Sweeps the sessions: counts those that ended for idleness as reaped, and hibernates
/// idle ones.
async fn reap(state: Arc<McpState>, stop: CancellationToken) {
    let shortest = state.config.hibernate_after.map_or(state.config.session_idle, |h| h.min(state.config.session_idle));
    let every = (shortest / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let reaped = state.sessions.sweep().await;
        if reaped > 0 {
            state.stats.sessions_reaped.fetch_add(reaped, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> Option<i64> {
        check_jsonrpc(body.as_bytes()).err().map(|(_, code, _)| code)
    }

    #[test]
    fn one_json_rpc_message_passes_and_anything_else_gets_its_error() {
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), None);
        assert_eq!(code(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#), None);
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#), None);
        assert_eq!(code("{"), Some(PARSE_ERROR));
        assert_eq!(code(&format!("{}{}", "[".repeat(200), "]".repeat(200))), Some(PARSE_ERROR));
        assert_eq!(code(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#), Some(INVALID_REQUEST));
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#), Some(INVALID_REQUEST));
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":[1],"method":"ping"}"#), Some(INVALID_REQUEST));
        assert_eq!(code(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#), Some(INVALID_REQUEST));
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":1}"#), Some(INVALID_REQUEST));
        let (id, _, _) = check_jsonrpc(br#"{"jsonrpc":"1.0","id":7,"method":"x"}"#).unwrap_err();
        assert_eq!(id, Value::from(7), "a valid id is echoed");
    }
}
