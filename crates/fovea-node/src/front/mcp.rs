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
//! stateless requests). This module adds what rmcp leaves to the server: credentials
//! (`Authorization: Bearer`), binding sessions to their user, session caps, counting
//! reaped sessions, and the mapping between tools and procedures.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fovea_core::frame::{notice, Call, CallResult};
use fovea_core::tool::{self, tool_name, ToolDescriptor};
use fovea_core::{Deframer, Frame, Headers};
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, ClientCapabilities, ContentBlock,
    Implementation, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities,
    ServerConfig, SubscriptionFilter, Tool,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::Shared;
use crate::auth::Permissions;
use crate::config::McpConfig;
use crate::handle::outbound::Outbound;
use crate::handle::Handle;
use crate::routing::calls::{route_call, Origin};
use crate::routing::Realm;

/// Most tools in one `tools/list` page.
const PAGE_ITEMS: usize = 100;

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
    pub tool_calls: AtomicU64,
    /// Tool calls answered with an error result (remote failure, timeout, busy, …).
    pub tool_errors: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Who a request is from: what its credential admitted.
#[derive(Clone)]
pub(crate) struct Identity {
    realm: Arc<Realm>,
    user: String,
    perms: Arc<Permissions>,
}

impl Identity {
    fn owner(&self) -> (String, String) {
        (self.realm.name.clone(), self.user.clone())
    }
}

/// One event of a call in flight, for the task waiting on it.
enum CallEvent {
    Notice(u64, Bytes),
    Done(CallResult),
}

/// The in-process caller: one [`Handle`] for all MCP calls of the node.
struct Caller {
    handle: Arc<Handle>,
    waiting: Mutex<HashMap<u64, mpsc::Sender<CallEvent>>>,
    next_id: AtomicU64,
}

impl Caller {
    /// Reads what the routing layer queued for the caller (`RESULT`, `NOTICE`) and hands
    /// each to the call waiting for it; fires call deadlines.
    async fn drive(self: Arc<Self>, stop: CancellationToken) {
        let mut deframer = Deframer::new(fovea_core::limits::MAX_FRAME);
        let mut chunks = Vec::new();
        loop {
            // A full queue drops notices (never results); nothing here is ever "too slow".
            let _ = self.handle.out.take_into(&mut chunks);
            for c in chunks.drain(..) {
                deframer.push(c);
            }
            while let Ok(Some(frame)) = deframer.next_frame() {
                self.dispatch(frame);
            }
            tokio::select! {
                () = self.handle.out.wait() => {}
                () = self.handle.expire_next() => {}
                () = stop.cancelled() => break,
            }
        }
        self.handle.out.close();
        self.handle.abandon_all();
    }

    fn dispatch(&self, frame: Frame) {
        match frame {
            Frame::Result(r) => {
                if let Some(tx) = lock(&self.waiting).remove(&r.call_id) {
                    // The waiter's channel has room for its one result (see `call`).
                    let _ = tx.try_send(CallEvent::Done(r));
                }
            }
            Frame::Notice(n) => {
                let tx = lock(&self.waiting).get(&n.id).cloned();
                if let Some(tx) = tx {
                    let _ = tx.try_send(CallEvent::Notice(n.kind, n.body));
                }
            }
            _ => {}
        }
    }
}

/// Shared by every session and request of the endpoint.
pub(crate) struct McpState {
    shared: Arc<Shared>,
    caller: Arc<Caller>,
    config: McpConfig,
    sessions: Arc<LocalSessionManager>,
    /// Legacy sessions by id: their owner (realm, user).
    owners: Mutex<HashMap<String, (String, String)>>,
    pub stats: McpStats,
}

impl McpState {
    /// Legacy sessions open now.
    pub fn open_sessions(&self) -> usize {
        lock(&self.owners).len()
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
    let caller = Arc::new(Caller {
        handle: Arc::new(Handle::new(out, limits.max_payload)),
        waiting: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
    });
    tokio::spawn(caller.clone().drive(stop.clone()));
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(config.session_idle);
    let sessions = Arc::new(sessions);
    let state = Arc::new(McpState {
        shared: shared.clone(),
        caller,
        config: config.clone(),
        sessions: sessions.clone(),
        owners: Mutex::new(HashMap::new()),
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
    let http = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_allowed_origins(origins)
        .with_max_request_body_bytes(config.max_body_bytes)
        .with_json_response(true)
        .with_cancellation_token(stop.child_token());
    let handler_state = state.clone();
    let service: StreamableHttpService<Handler, LocalSessionManager> =
        StreamableHttpService::new(move || Ok(Handler::new(handler_state.clone())), sessions, http);
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
    if let Some(id) = &session {
        // A session belongs to the user who opened it; to anyone else it does not exist.
        if lock(&state.owners).get(id).is_some_and(|o| *o != owner) {
            return (StatusCode::NOT_FOUND, "no such session").into_response();
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
    req.extensions_mut().insert(identity);
    let response = next.run(req).await;
    let opened = response.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    match (session, opened) {
        (None, Some(id)) => {
            let refused = {
                let mut owners = lock(&state.owners);
                let mine = owners.values().filter(|o| **o == owner).count();
                let refused = if owners.len() >= state.config.max_sessions {
                    Some((
                        StatusCode::SERVICE_UNAVAILABLE,
                        "this node has its maximum of MCP sessions open: retry later",
                    ))
                } else if mine >= state.config.max_sessions_per_user {
                    Some((StatusCode::TOO_MANY_REQUESTS, "this user has its maximum of MCP sessions open: close some (DELETE) or wait for idle ones to expire"))
                } else {
                    None
                };
                if refused.is_none() {
                    owners.insert(id.clone(), owner);
                }
                refused
            };
            if let Some((status, text)) = refused {
                state.stats.sessions_refused.fetch_add(1, Ordering::Relaxed);
                let sessions = state.sessions.clone();
                tokio::spawn(async move {
                    use rmcp::transport::streamable_http_server::session::SessionManager;
                    let _ = sessions.close_session(&id.into()).await;
                });
                let mut r = (status, text).into_response();
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
                return r;
            }
            state.stats.sessions_opened.fetch_add(1, Ordering::Relaxed);
        }
        (Some(id), _)
            if method == Method::DELETE
                && response.status().is_success()
                && lock(&state.owners).remove(&id).is_some() =>
        {
            state.stats.sessions_deleted.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    response
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
fn authenticate(state: &McpState, req: &Request, remote: SocketAddr) -> Option<Identity> {
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
                Some(Identity { realm: realm.clone(), user, perms })
            })
        }
        _ if remote.ip().is_loopback() => {
            let realm = realms.get(crate::DEFAULT_REALM)?;
            let admission = realm.admission();
            let (user, perms) = match *admission {
                crate::auth::Admission::Open => admission.admit(&crate::auth::credential_of(b"", None))?,
                crate::auth::Admission::Users(_) => return None,
            };
            Some(Identity { realm: realm.clone(), user, perms })
        }
        _ => None,
    }
}

/// Forgets sessions rmcp closed for idleness, counting them as reaped.
async fn reap(state: Arc<McpState>, stop: CancellationToken) {
    let every = (state.config.session_idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let live: std::collections::HashSet<String> =
            state.sessions.sessions.read().await.keys().map(|k| k.to_string()).collect();
        let mut owners = lock(&state.owners);
        let before = owners.len();
        owners.retain(|id, _| live.contains(id));
        let reaped = before - owners.len();
        if reaped > 0 {
            state.stats.sessions_reaped.fetch_add(reaped as u64, Ordering::Relaxed);
        }
    }
}

/// The MCP server of one legacy session or one stateless request.
#[derive(Clone)]
struct Handler {
    state: Arc<McpState>,
    /// Legacy sessions: the level `logging/setLevel` chose (`None`: every level).
    #[allow(deprecated)]
    log_level: Arc<Mutex<Option<rmcp::model::LoggingLevel>>>,
    /// Ends the session's tools watch when the session (its last handler clone) ends.
    _session: Arc<DropGuard>,
    watch: CancellationToken,
}

impl Handler {
    fn new(state: Arc<McpState>) -> Handler {
        let watch = CancellationToken::new();
        Handler { state, log_level: Arc::default(), _session: Arc::new(watch.clone().drop_guard()), watch }
    }
}

fn identity(extensions: &rmcp::model::Extensions) -> Result<Identity, McpError> {
    extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<Identity>())
        .cloned()
        .ok_or_else(|| McpError::internal_error("request without credentials", None))
}

/// The MCP `Tool` of a procedure.
fn to_tool(procedure: &str, descriptor: &ToolDescriptor) -> Option<Tool> {
    serde_json::from_value(Value::Object(tool::tool_json(procedure, descriptor))).ok()
}

/// The procedure a tool name stands for in `realm`, with its descriptor.
fn resolve(realm: &Realm, name: &str) -> Option<(String, ToolDescriptor)> {
    realm.with_tools(|c| {
        // The common case: a reversible name, whose procedure is found directly.
        let direct = name.replace("__", ".");
        if let Some(t) = c.get(&direct).filter(|_| tool_name(&direct) == name) {
            return Some((direct, t.clone()));
        }
        let (page, _) = c.page("", usize::MAX, usize::MAX, |p| tool_name(p) == name);
        page.first().map(|(p, t)| ((*p).to_owned(), (*t).clone()))
    })
}

/// A provider's answer as an MCP result ([`fovea_core::tool::result_json`]).
pub(crate) fn to_result(result: CallResult, procedure: &str, realm: &str) -> CallToolResult {
    tool_result(result.code, &result.headers, &result.payload, procedure, realm)
}

/// A call's outcome (a `RESULT`'s code, headers and payload) as the MCP result every
/// front end (this endpoint, `fovea mcp` on stdio) returns, in either protocol era.
pub fn tool_result(
    code: fovea_core::ErrorCode,
    headers: &Headers,
    payload: &[u8],
    procedure: &str,
    realm: &str,
) -> CallToolResult {
    let json = tool::result_json(code, headers, payload, procedure, realm);
    let mut r = serde_json::from_value::<CallToolResult>(json).unwrap_or_else(|e| {
        error_result(format!("the provider of {procedure} sent a tool result that is not MCP: {e}"))
    });
    // The wire has no `resultType` before 2026-07-28; rmcp drops it again for older
    // peers, so set it as its own constructors do.
    if r.result_type.is_none() {
        r.result_type = CallToolResult::success(Vec::new()).result_type;
    }
    r
}

fn error_result(text: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text)])
}

#[allow(deprecated)]
fn parse_level(level: &str) -> Option<rmcp::model::LoggingLevel> {
    serde_json::from_value(Value::String(level.to_owned())).ok()
}

/// Severity rank of a level (debug 0 … emergency 7).
#[allow(deprecated)]
pub fn rank(level: &rmcp::model::LoggingLevel) -> usize {
    const LEVELS: [&str; 8] = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];
    let name = serde_json::to_value(level).ok();
    LEVELS.iter().position(|l| name.as_ref().and_then(Value::as_str) == Some(l)).unwrap_or(0)
}

/// What fovea's MCP servers (the node's endpoint, `fovea mcp` on stdio) declare: tools with
/// `listChanged`, logging, and empty resources and prompts (clients probe them).
pub fn server_config() -> ServerConfig {
    #[allow(deprecated)]
    let caps = ServerCapabilities::builder()
        .enable_tools()
        .enable_tool_list_changed()
        .enable_logging()
        .enable_resources()
        .enable_prompts()
        .build();
    ServerConfig::new(caps)
        .with_server_info(Implementation::new("fovea", env!("CARGO_PKG_VERSION")))
        .with_instructions("Tools of this fovea realm: each is a procedure served by a service somewhere in the mesh.")
}

impl ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        server_config()
    }

    #[allow(deprecated)]
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        *lock(&self.log_level) = Some(request.level);
        Ok(())
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // A legacy session: tell it when the realm's tools change, while it lasts.
        let Ok(identity) = identity(&context.extensions) else { return };
        let mut rx = identity.realm.watch_tools();
        let (peer, stop) = (context.peer.clone(), self.watch.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    () = stop.cancelled() => return,
                }
                if peer.notify_tool_list_changed().await.is_err() {
                    return;
                }
            }
        });
    }

    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        Some(requested.supported_by(&self.get_info().capabilities))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let identity = identity(&context.request_context().extensions)?;
        let mut rx = identity.realm.watch_tools();
        loop {
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Ok(()) },
                () = context.cancelled() => return Ok(()),
            }
            if context.accepted().tools_list_changed == Some(true)
                && context.sink().notify_tool_list_changed().await.is_err()
            {
                return Ok(());
            }
        }
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let id = identity(&context.extensions)?;
        let cursor = request.and_then(|r| r.cursor).unwrap_or_default();
        let (tools, next) = id.realm.with_tools(|c| {
            let (page, next) = c.page(&cursor, PAGE_ITEMS, usize::MAX, |p| id.perms.call.name(p.as_bytes()));
            (page.iter().filter_map(|(p, t)| to_tool(p, t)).collect::<Vec<_>>(), next)
        });
        let mut result = ListToolsResult::with_all_items(tools);
        // Cache hints exist from 2026-07-28. The list depends on the caller's permissions
        // (private), and list_changed announces changes, so a second of freshness is safe.
        if context.protocol_version().is_some_and(|v| !v.has_initialize()) {
            result = result.with_ttl_ms(1000).with_cache_scope(CacheScope::Private);
        }
        result.next_cursor = next;
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let id = identity(&context.extensions)?;
        let state = &self.state;
        state.stats.tool_calls.fetch_add(1, Ordering::Relaxed);
        let unknown = || McpError::invalid_params(format!("unknown tool {:?}", request.name), None);
        let (procedure, descriptor) = resolve(&id.realm, &request.name).ok_or_else(unknown)?;
        if !id.perms.call.name(procedure.as_bytes()) {
            return Err(unknown());
        }
        let declared = serde_json::to_value(context.client_capabilities().unwrap_or_default()).unwrap_or_default();
        if let Some(missing) = tool::missing_capabilities(&descriptor, &declared) {
            let caps: ClientCapabilities = serde_json::from_value(Value::Object(missing)).unwrap_or_default();
            return Err(McpError::missing_required_client_capability(caps));
        }
        let arguments = Value::Object(request.arguments.clone().unwrap_or_default());
        if let Some(schema) = descriptor.json().get("inputSchema") {
            tool::check_arguments(schema, &arguments, "arguments").map_err(|e| McpError::invalid_params(e, None))?;
        }
        let payload = Bytes::from(serde_json::to_vec(&arguments).unwrap_or_default());
        let result = self.call(&id, &procedure, payload, &context).await;
        if result.is_error == Some(true) {
            state.stats.tool_errors.fetch_add(1, Ordering::Relaxed);
        }
        Ok(result.into())
    }
}

impl Handler {
    /// One mesh call, passing its notices on and cancelling it with the MCP request.
    // MCP logging is deprecated by SEP-2577 but still part of both eras we serve.
    #[allow(deprecated)]
    async fn call(
        &self,
        id: &Identity,
        procedure: &str,
        payload: Bytes,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let caller = &self.state.caller;
        let call_id = caller.next_id.fetch_add(1, Ordering::Relaxed);
        // Room for the result and a burst of notices; a full channel drops notices only.
        let (tx, mut rx) = mpsc::channel(64);
        if lock(&caller.waiting).len() >= self.state.config.max_calls_in_flight {
            return error_result(format!(
                "busy: {} tool calls are in flight on this node's MCP endpoint, its limit; retry shortly",
                self.state.config.max_calls_in_flight
            ));
        }
        lock(&caller.waiting).insert(call_id, tx);
        let timeout_ms = u64::try_from(self.state.config.call_timeout.as_millis()).unwrap_or(u64::MAX);
        let call = Call {
            call_id,
            procedure: Bytes::copy_from_slice(procedure.as_bytes()),
            timeout_ms,
            headers: Headers::new(),
            payload,
        };
        self.state.shared.router.stats.calls.fetch_add(1, Ordering::Relaxed);
        let mut rng =
            fovea_core::balance::Rng::new(self.state.shared.router.seed ^ call_id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let now = std::time::Instant::now();
        let router = &self.state.shared.router;
        route_call(router, &id.realm, &caller.handle, &mut rng, call, now, Origin::Here);
        let progress_token = context.meta.get_progress_token();
        let modern = context.protocol_version().is_some_and(|v| !v.has_initialize());
        #[allow(deprecated)]
        let min_level = if modern { context.meta.log_level() } else { *lock(&self.log_level) };
        loop {
            let event = tokio::select! {
                e = rx.recv() => e,
                () = context.ct.cancelled() => {
                    lock(&caller.waiting).remove(&call_id);
                    caller.handle.cancel_call(call_id);
                    return error_result("cancelled".into());
                }
            };
            match event {
                Some(CallEvent::Done(r)) => return to_result(r, procedure, &id.realm.name),
                Some(CallEvent::Notice(kind, body)) => {
                    let Ok(Value::Object(v)) = serde_json::from_slice::<Value>(&body) else { continue };
                    if kind == notice::PROGRESS {
                        let (Some(token), Some(progress)) =
                            (&progress_token, v.get("progress").and_then(Value::as_f64))
                        else {
                            continue;
                        };
                        let mut p = ProgressNotificationParam::new(token.clone(), progress);
                        p.total = v.get("total").and_then(Value::as_f64);
                        p.message = v.get("message").and_then(Value::as_str).map(str::to_owned);
                        let _ = context.peer.notify_progress(p).await;
                    } else if kind == notice::LOG {
                        let Some(level) = v.get("level").and_then(Value::as_str).and_then(parse_level) else {
                            continue;
                        };
                        // 2026-07-28: logs only when the request asked, at its level;
                        // a legacy session: from the level it set (all until it sets one).
                        let wanted = match (modern, &min_level) {
                            (true, None) => false,
                            (_, Some(min)) => rank(&level) >= rank(min),
                            (false, None) => true,
                        };
                        if wanted {
                            #[allow(deprecated)]
                            let mut m = rmcp::model::LoggingMessageNotificationParam::new(
                                level,
                                v.get("data").cloned().unwrap_or(Value::Null),
                            );
                            m.logger = v.get("logger").and_then(Value::as_str).map(str::to_owned);
                            #[allow(deprecated)]
                            let _ = context.peer.notify_logging_message(m).await;
                        }
                    }
                }
                None => return error_result("the node is shutting down".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fovea_core::tool::{META_PROCEDURE, META_REQUIRES, TOOL_RESULT_TYPE};
    use fovea_core::ErrorCode;

    #[test]
    fn results() {
        let r = |code, headers: Headers, payload: &'static [u8]| {
            to_result(CallResult { call_id: 1, code, headers, payload: Bytes::from_static(payload) }, "p.x", "default")
        };
        let text = r(ErrorCode::NoError, Headers::new(), b"hello");
        assert_eq!(text.is_error, Some(false));
        assert!(text.structured_content.is_none());
        let obj = r(ErrorCode::NoError, Headers::new(), br#"{"n":1}"#);
        assert_eq!(obj.structured_content, Some(serde_json::json!({"n": 1})));
        let full = r(
            ErrorCode::NoError,
            Headers::from_pairs([("content-type", TOOL_RESULT_TYPE)]).unwrap(),
            br#"{"content":[{"type":"image","data":"AAAA","mimeType":"image/png"}],"isError":false}"#,
        );
        assert_eq!(serde_json::to_value(&full).unwrap()["content"][0]["type"], "image");
        assert_eq!(r(ErrorCode::NoProvider, Headers::new(), b"").is_error, Some(true));
        assert_eq!(r(ErrorCode::ApplicationError, Headers::new(), b"boom").is_error, Some(true));
        let bad = r(ErrorCode::NoError, Headers::from_pairs([("content-type", TOOL_RESULT_TYPE)]).unwrap(), b"[");
        assert_eq!(bad.is_error, Some(true));
        assert_ne!(r(ErrorCode::NoError, Headers::new(), b"\xff\xfe").is_error, Some(true));
    }

    #[test]
    fn tools_carry_their_procedure() {
        let d = ToolDescriptor::parse(
            br#"{"description":"adds","_meta":{"io.fovea/requiredClientCapabilities":{"sampling":{}}}}"#,
        )
        .unwrap();
        let t = to_tool("math.add", &d).unwrap();
        assert_eq!(t.name, "math__add");
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["_meta"][META_PROCEDURE], "math.add");
        assert!(json["_meta"].get(META_REQUIRES).is_none());
    }
}
