//! The node's own catalog as a [`CatalogSource`]: the realm's tools, resources and prompts,
//! filtered by what the request's credential may call, and calls made by an in-process caller through routing
//! like any client's (deadlines, balancing, `BUSY` at its in-flight limit, provider loss,
//! calls to other nodes), with progress and logs arriving as `NOTICE`s ahead of the
//! `RESULT`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fovea_core::frame::{Call, CallResult};
use fovea_core::tool::{Kind, Notice};
use fovea_core::{ErrorCode, Headers};
use rmcp::model::Extensions;
use rmcp::transport::streamable_http_server::session::SessionRestoreMarker;
use rmcp::ErrorData as McpError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::service::{find_in, CallOutcome, CatalogSource, EntryPage, Found, Lookup};
use super::McpState;
use crate::auth::Permissions;
use crate::handle::outbound::Outbound;
use crate::handle::{Answers, Handle};
use crate::routing::calls::{route_call, Origin};
use crate::routing::Realm;
use crate::sync::lock;

/// Most entries in one `tools/list` (`resources/list`, …) page.
const PAGE_ITEMS: usize = 100;

/// Who a request is from: what its credential admitted (set on the HTTP request by the
/// endpoint's guard).
#[derive(Clone)]
pub(crate) struct Admitted {
    pub realm: Arc<Realm>,
    pub user: String,
    pub perms: Arc<Permissions>,
}

impl Admitted {
    /// Whom a legacy session belongs to: (realm, user).
    pub fn owner(&self) -> (String, String) {
        (self.realm.name.clone(), self.user.clone())
    }
}

fn admitted(extensions: &Extensions) -> Result<Admitted, McpError> {
    extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<Admitted>())
        .cloned()
        .ok_or_else(|| McpError::internal_error("request without credentials", None))
}

/// What the in-process caller's handle receives for one call.
struct Waiting {
    notices: mpsc::Sender<Notice>,
    done: oneshot::Sender<CallResult>,
    /// A streamed answer's chunks so far, the front of the result.
    body: bytes::BytesMut,
}

/// Largest answer the MCP endpoint assembles for one tool call (a streamed answer is
/// gathered here, since an MCP result is one message); larger ones fail the call with
/// `PAYLOAD_TOO_LARGE`.
pub(crate) const MAX_TOOL_RESULT: usize = 64 * 1024 * 1024;

/// Longest chunk passed on whole as a progress notification's message: a streaming tool's
/// tokens and lines are; a file's blocks are counted in bytes only.
const MAX_PROGRESS_TEXT: usize = 4096;

/// Calls in flight by id. Bounded by `McpConfig::max_calls_in_flight`.
type WaitingCalls = Arc<Mutex<HashMap<u64, Waiting>>>;

/// Hands each answer straight to the call waiting for it (no frames in between).
struct Deliver(WaitingCalls);

impl Answers for Deliver {
    fn result(&self, mut result: CallResult) {
        if let Some(w) = lock(&self.0).remove(&result.call_id) {
            // A streamed answer is its chunks, then the result's payload.
            if !w.body.is_empty() && result.code == ErrorCode::NoError {
                let mut body = w.body;
                body.extend_from_slice(&result.payload);
                result.payload = body.freeze();
            }
            let _ = w.done.send(result);
        }
    }

    fn data(&self, call_id: u64, chunk: &Bytes) -> bool {
        let mut waiting = lock(&self.0);
        let Some(w) = waiting.get_mut(&call_id) else { return true };
        if w.body.len() + chunk.len() > MAX_TOOL_RESULT {
            return false;
        }
        w.body.extend_from_slice(chunk);
        // Each chunk is progress for the agent: the bytes so far, and the chunk itself
        // when it is short text. A full channel drops progress, never the answer.
        let text = std::str::from_utf8(chunk).ok().filter(|t| t.len() <= MAX_PROGRESS_TEXT);
        let notice = Notice::Progress { progress: w.body.len() as f64, total: None, message: text.map(str::to_owned) };
        let _ = w.notices.try_send(notice);
        true
    }

    fn notice(&self, n: fovea_core::frame::Notice) -> bool {
        let to = lock(&self.0).get(&n.id).map(|w| w.notices.clone());
        match (to, Notice::from_wire(n.kind, &n.body)) {
            (Some(to), Some(notice)) => to.try_send(notice).is_ok(),
            _ => false,
        }
    }
}

/// The in-process caller: one [`Handle`] for all MCP calls of the node.
pub(crate) struct Caller {
    handle: Arc<Handle>,
    waiting: WaitingCalls,
    next_id: AtomicU64,
}

impl Caller {
    pub fn new(out: Outbound, max_answer: usize) -> Arc<Caller> {
        let waiting = WaitingCalls::default();
        let handle = Handle::with_answers(out, max_answer, Box::new(Deliver(waiting.clone())));
        Arc::new(Caller { handle: Arc::new(handle), waiting, next_id: AtomicU64::new(1) })
    }

    /// Fires the deadlines of the caller's calls until `stop`, then ends its calls.
    pub async fn drive(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = self.handle.expire_next() => {}
                () = stop.cancelled() => break,
            }
        }
        self.handle.out.close();
        self.handle.abandon_all();
    }
}

/// Cancels a call whose future was dropped before its outcome arrived.
struct Pending<'a> {
    caller: &'a Caller,
    call_id: u64,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done && lock(&self.caller.waiting).remove(&self.call_id).is_some() {
            self.caller.handle.cancel_call(self.call_id);
        }
    }
}

/// The endpoint's catalog: the entries of the request's realm that its credential may call.
pub(crate) struct LocalCatalog {
    pub state: Arc<McpState>,
}

impl CatalogSource for LocalCatalog {
    async fn page(&self, extensions: &Extensions, kind: Kind, cursor: &str) -> Result<EntryPage, McpError> {
        let id = admitted(extensions)?;
        Ok(id.realm.with_tools(|c| {
            let visible =
                |p: &str, d: &fovea_core::tool::Descriptor| d.kind() == kind && id.perms.call.name(p.as_bytes());
            let (page, next) = c.page(cursor, PAGE_ITEMS, usize::MAX, visible);
            (page.into_iter().map(|(p, t)| (p.to_owned(), t.clone())).collect(), next)
        }))
    }

    async fn find(&self, extensions: &Extensions, lookup: Lookup<'_>) -> Result<Option<Found>, McpError> {
        let id = admitted(extensions)?;
        // An entry the credential may not call does not exist for it.
        Ok(id.realm.with_tools(|c| find_in(c, lookup, |p| id.perms.call.name(p.as_bytes()))))
    }

    /// In any realm of the node: the header check runs before the credential is read. It
    /// only compares headers with the body; the call itself is still checked as any.
    fn lookup(&self, name: &str) -> Option<Found> {
        let realms = self.state.shared.router.realms();
        realms.values().find_map(|realm| realm.with_tools(|c| find_in(c, Lookup::Named(Kind::Tool, name), |_| true)))
    }

    async fn call(
        &self,
        extensions: &Extensions,
        procedure: &str,
        headers: Headers,
        payload: Bytes,
        notices: mpsc::Sender<Notice>,
        mut replies: mpsc::Receiver<Notice>,
    ) -> CallOutcome {
        let Ok(id) = admitted(extensions) else {
            return CallOutcome::failed(ErrorCode::InternalError, "request without credentials");
        };
        let (state, caller) = (&self.state, &self.state.caller);
        let max = state.config.max_calls_in_flight;
        let call_id = caller.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, outcome) = oneshot::channel();
        {
            let mut waiting = lock(&caller.waiting);
            if waiting.len() >= max {
                let message =
                    format!("{max} tool calls are in flight on this node's MCP endpoint, its limit; retry shortly");
                return CallOutcome::failed(ErrorCode::Busy, message);
            }
            waiting.insert(call_id, Waiting { notices, done, body: bytes::BytesMut::new() });
        }
        let mut pending = Pending { caller, call_id, done: false };
        let timeout_ms = u64::try_from(state.config.call_timeout.as_millis()).unwrap_or(u64::MAX);
        let call = Call {
            call_id,
            procedure: Bytes::copy_from_slice(procedure.as_bytes()),
            timeout_ms,
            headers,
            payload,
            // The agent gets one result: a streamed answer is gathered (`Deliver::data`),
            // its chunks passed on as progress.
            flags: fovea_core::frame::call_flags::STREAM_ANSWER,
        };
        let router = &state.shared.router;
        router.stats.calls.fetch_add(1, Ordering::Relaxed);
        let mut rng = fovea_core::balance::Rng::new(router.seed ^ call_id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        route_call(router, &id.realm, &caller.handle, &mut rng, call, std::time::Instant::now(), Origin::Here);
        tokio::pin!(outcome);
        let outcome = loop {
            tokio::select! {
                o = &mut outcome => break o,
                // The agent's answer to a question of the provider goes back on this call.
                Some(reply) = replies.recv() => {
                    let (kind, body) = reply.to_wire();
                    caller.handle.notify_provider(call_id, kind, body);
                }
            }
        };
        pending.done = true;
        match outcome {
            Ok(r) => CallOutcome { code: r.code, headers: r.headers, payload: r.payload },
            Err(_) => CallOutcome::failed(ErrorCode::GoingAway, "the node is shutting down"),
        }
    }

    async fn watch(&self, extensions: &Extensions) -> Option<watch::Receiver<u64>> {
        admitted(extensions).ok().map(|id| id.realm.watch_tools())
    }

    async fn updates(&self, extensions: &Extensions, procedure: &str) -> Option<mpsc::Receiver<String>> {
        let id = admitted(extensions).ok()?;
        self.state.updates.watch(&id.realm, procedure)
    }

    /// Who is asking, in an otherwise empty request: the HTTP request's headers are not
    /// kept for the session's life.
    fn keep(&self, extensions: &Extensions) -> Extensions {
        let mut kept = Extensions::new();
        if let Ok(id) = admitted(extensions) {
            let (mut parts, ()) = axum::http::Request::new(()).into_parts();
            parts.extensions.insert(id);
            kept.insert(parts);
        }
        kept
    }

    async fn kind_versions(&self, extensions: &Extensions) -> Option<[u64; 4]> {
        admitted(extensions).ok().map(|id| id.realm.with_tools(|c| c.kind_versions()))
    }

    fn restored_versions(&self, extensions: &Extensions) -> Option<[u64; 4]> {
        let marker = extensions.get::<SessionRestoreMarker>()?;
        self.state.sessions.opened_versions(&marker.id)
    }

    fn hold(&self, extensions: &Extensions) {
        let session = extensions
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.headers.get("mcp-session-id"))
            .and_then(|v| v.to_str().ok());
        if let Some(id) = session {
            self.state.sessions.hold(id);
        }
    }

    fn realm(&self, extensions: &Extensions) -> String {
        admitted(extensions).map(|id| id.realm.name.clone()).unwrap_or_default()
    }

    fn counted_method(&self, method: fovea_core::tool::answers::Method, failed: bool) {
        let i = method as usize;
        self.state.stats.method_calls[i].fetch_add(1, Ordering::Relaxed);
        if failed {
            self.state.stats.method_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counted_question(&self, outcome: super::QuestionOutcome) {
        self.state.stats.questions[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn counted(&self, failed: bool) {
        self.state.stats.tool_calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.state.stats.tool_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
