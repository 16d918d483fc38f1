//! What AI agents see, in the SDK: registering a procedure as an MCP tool
//! ([`Client::register_tool`]), resource or resource template ([`Client::register_resource`])
//! or prompt ([`Client::register_prompt`]), progress and logs during a call ([`Notice`]),
//! and the realm's catalog ([`Client::catalog`], [`Client::tools`], [`Client::watch_tools`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use fovea_core::frame::{ToolList, ToolsQuery, VERSION_MCP_KINDS, VERSION_TOOLS};
use fovea_core::tool::{tool_name, Descriptor, Kind};
use fovea_core::{Frame, Headers};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::rpc::{Registration, Response};
use crate::{lock, Client, ClientError};

pub use fovea_core::tool::answers::{Method as McpMethod, MCP_RESULT_TYPE, METHOD_HEADER, RESOURCE_UPDATED_PREFIX};
pub use fovea_core::tool::{Kind as EntryKind, Notice, LOG_LEVELS};

/// How long [`Client::tools`] waits for one page.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most pages [`Client::tools`] follows: 1000 pages of 100 tools is far past any catalog a
/// node holds, and a node answering with cursors forever must not loop us forever.
const MAX_PAGES: usize = 1000;

/// One entry of the realm's catalog, as [`Client::catalog`] lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogEntry {
    /// The procedure to call.
    pub procedure: String,
    /// Its MCP name ([`fovea_core::tool::tool_name`]).
    pub name: String,
    /// What it is to agents: a tool, resource, resource template or prompt.
    pub kind: EntryKind,
    /// The descriptor: the MCP fields of its kind (a tool's `description`, `inputSchema`, …).
    pub descriptor: Map<String, Value>,
}

impl Client {
    /// Provides `procedure` as a tool: like [`Client::register`], and agents connected to
    /// any node of the realm see it (through MCP) with `descriptor`: a JSON object with
    /// `description` (required), `inputSchema`, and optionally `outputSchema`, `title`,
    /// `annotations`, `icons`, `_meta`.
    ///
    /// A tool call's payload is the arguments object as JSON. Answer with any payload (UTF-8
    /// text becomes a text result, a JSON object also `structuredContent`), or with a full
    /// MCP `CallToolResult` under the header `content-type: application/mcp-tool-result+json`
    /// (docs/PROTOCOL.md). Send progress and logs with [`crate::Request::notify`].
    ///
    /// # Errors
    /// As [`Client::register`], and [`ClientError::InvalidTool`] for a descriptor the node
    /// would refuse; [`ClientError::Unsupported`] when the node is older than tools.
    pub async fn register_tool(&self, procedure: &str, descriptor: &Value) -> Result<Registration, ClientError> {
        self.register_kind(procedure, Kind::Tool, descriptor).await
    }

    /// Provides `procedure` as an MCP resource (a descriptor with `uri`) or resource
    /// template (with an RFC 6570 `uriTemplate`): agents on any node of the realm list it
    /// and read it. Optional fields: `name`, `title`, `description`, `mimeType`, `size`,
    /// `annotations`, `icons`, `_meta`.
    ///
    /// Each read is a request with the header `mcp-method: resources/read` ([`crate::Request::mcp_method`])
    /// and the params `{"uri": …}` as payload (from a template, also `"variables"`: the
    /// values the URI gave the template's). Answer with the content (text or bytes, with a
    /// `content-type` header or the descriptor's `mimeType`), or a whole `ReadResourceResult`
    /// under `content-type: application/mcp-result+json`; fail with code
    /// [`ErrorCode::NotFound`](fovea_core::ErrorCode::NotFound) for a URI the template
    /// matches but that does not exist. Completions of a template's variables arrive as
    /// `completion/complete` requests.
    ///
    /// # Errors
    /// As [`Client::register_tool`], and [`ClientError::Unsupported`] below protocol 7.
    pub async fn register_resource(&self, procedure: &str, descriptor: &Value) -> Result<Registration, ClientError> {
        let kind = if descriptor.get("uriTemplate").is_some() { Kind::ResourceTemplate } else { Kind::Resource };
        self.register_kind(procedure, kind, descriptor).await
    }

    /// Tells agents that resource `uri`, served by `procedure`, changed: every agent on
    /// any node that subscribed to it (`resources/subscribe`, or a 2026-07-28 listen) gets
    /// `notifications/resources/updated`, and reads it again. This publishes `uri` to
    /// `$mcp.updated.<procedure>`, so it needs permission to publish there; anyone may,
    /// not only the provider (`fovea pub '$mcp.updated.docs.readme' docs://readme`).
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn resource_updated(&self, procedure: &str, uri: &str) -> Result<(), ClientError> {
        self.publish(&format!("{RESOURCE_UPDATED_PREFIX}{procedure}"), uri.to_owned()).await
    }

    /// Provides `procedure` as an MCP prompt named by [`tool_name`] of the procedure, with
    /// `description` (required), `title` and `arguments` (`[{"name", "description",
    /// "required"}]`).
    ///
    /// Each `prompts/get` is a request with the header `mcp-method: prompts/get` and the
    /// params `{"name", "arguments"}` as payload (the node has checked that the required
    /// arguments are there). Answer with text (one user message), or a whole
    /// `GetPromptResult` under `content-type: application/mcp-result+json`. Completions of
    /// its arguments arrive as `completion/complete` requests; answer with a JSON array of
    /// strings.
    ///
    /// # Errors
    /// As [`Client::register_resource`].
    pub async fn register_prompt(&self, procedure: &str, descriptor: &Value) -> Result<Registration, ClientError> {
        self.register_kind(procedure, Kind::Prompt, descriptor).await
    }

    /// Provides `procedure` with a descriptor of any kind, as its `kind` says (absent: a
    /// tool). What the typed `register_*` calls share, for bindings that pass descriptors
    /// through.
    ///
    /// # Errors
    /// As [`Client::register_resource`].
    pub async fn register_described(&self, procedure: &str, descriptor: &Value) -> Result<Registration, ClientError> {
        let raw = serde_json::to_vec(descriptor).unwrap_or_default();
        let parsed = Descriptor::parse(&raw)
            .map_err(|e| ClientError::InvalidTool { procedure: procedure.to_owned(), reason: e.to_string() })?;
        if parsed.kind() == Kind::Tool {
            self.require_version(VERSION_TOOLS, "tools")?;
        } else {
            self.require_version(VERSION_MCP_KINDS, "resources, resource templates and prompts")?;
        }
        self.register_with(procedure, parsed.encoded().clone()).await
    }

    async fn register_kind(
        &self,
        procedure: &str,
        kind: Kind,
        descriptor: &Value,
    ) -> Result<Registration, ClientError> {
        let mut descriptor = descriptor.clone();
        if let Value::Object(d) = &mut descriptor {
            match d.get("kind").and_then(Value::as_str) {
                Some(k) if k != kind.as_str() => {
                    let reason = format!("has \"kind\": {k:?}, but is registered as a {}", kind.as_str());
                    return Err(ClientError::InvalidTool { procedure: procedure.to_owned(), reason });
                }
                _ if kind != Kind::Tool => {
                    d.insert("kind".into(), kind.as_str().into());
                }
                _ => {}
            }
        }
        self.register_described(procedure, &descriptor).await
    }

    /// [`Client::call_with_headers`], passing the provider's progress and log notices to
    /// `notices` as they arrive (a full channel drops them: they are status, not results).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn call_with_notices(
        &self,
        procedure: &str,
        headers: &Headers,
        payload: impl Into<Bytes>,
        timeout: Duration,
        notices: mpsc::Sender<Notice>,
    ) -> Result<Response, ClientError> {
        self.call_inner(procedure, headers, payload.into(), timeout, Some(notices), 0).await
    }

    /// [`Client::call_with_notices`] for a caller that answers the provider's questions
    /// (protocol 8; an MCP front end with an agent behind it): they arrive in `notices` as
    /// [`Notice::Question`], and each is answered by sending a [`Notice::Reply`] with its
    /// `id` to `replies` while the call runs. A question `notices` has no room for is
    /// declined, as are the questions of a call whose payload is over `max_payload` (it
    /// is sent as a stream).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn call_answering(
        &self,
        procedure: &str,
        headers: &Headers,
        payload: impl Into<Bytes>,
        timeout: Duration,
        notices: mpsc::Sender<Notice>,
        mut replies: mpsc::Receiver<Notice>,
    ) -> Result<Response, ClientError> {
        let inner = self.inner();
        let call_id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&inner.answer_sinks).insert(call_id, notices.clone());
        /// Forgets the call's sink however the call ends.
        struct Forget<'a>(&'a crate::Inner, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                lock(&self.0.answer_sinks).remove(&self.1);
            }
        }
        let _forget = Forget(inner, call_id);
        let forward = async {
            while let Some(reply) = replies.recv().await {
                if !matches!(reply, Notice::Reply { .. }) {
                    continue;
                }
                let (kind, body) = reply.to_wire();
                let mut out = lock(&inner.out);
                if out.connected {
                    out.buf.push_frame(&Frame::Notice(fovea_core::frame::Notice { id: call_id, kind, body }));
                    drop(out);
                    inner.wake.notify_one();
                }
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            r = self.call_as(call_id, procedure, headers, payload.into(), timeout, Some(notices), 0) => r,
            () = forward => Err(ClientError::Cancelled),
        }
    }

    /// Every tool of the realm this client may call, in procedure order.
    ///
    /// # Errors
    /// [`ClientError::Disconnected`], [`ClientError::Timeout`], [`ClientError::Unsupported`]
    /// (a node older than tools), [`ClientError::ClientClosed`].
    pub async fn tools(&self) -> Result<Vec<CatalogEntry>, ClientError> {
        let mut all = self.catalog().await?;
        all.retain(|e| e.kind == Kind::Tool);
        Ok(all)
    }

    /// Every entry of the realm's catalog (tools, resources, resource templates, prompts)
    /// this client may call, in procedure order.
    ///
    /// # Errors
    /// As [`Client::tools`].
    pub async fn catalog(&self) -> Result<Vec<CatalogEntry>, ClientError> {
        self.require_version(VERSION_TOOLS, "tools")?;
        let mut all = Vec::new();
        let mut cursor = Bytes::new();
        for _ in 0..MAX_PAGES {
            let page = self.tools_page(cursor, 0).await?;
            let list: Vec<Value> = serde_json::from_slice(&page.tools)
                .map_err(|e| ClientError::Connection(format!("node sent a malformed tool list: {e}")))?;
            for entry in list {
                let (Some(procedure), Some(Value::Object(descriptor))) =
                    (entry.get("procedure").and_then(Value::as_str), entry.get("tool"))
                else {
                    continue;
                };
                // What this SDK cannot read (a newer kind) is left out.
                let Ok(parsed) = Descriptor::parse(&serde_json::to_vec(descriptor).unwrap_or_default()) else {
                    continue;
                };
                all.push(CatalogEntry {
                    name: tool_name(procedure),
                    procedure: procedure.to_owned(),
                    kind: parsed.kind(),
                    descriptor: descriptor.clone(),
                });
            }
            if page.next.is_empty() {
                return Ok(all);
            }
            cursor = page.next;
        }
        Ok(all)
    }

    /// A receiver whose value changes whenever the realm's tool catalog may have changed
    /// (a tool registered or withdrawn anywhere in the realm, or a reconnection): list
    /// again with [`Client::tools`] then.
    ///
    /// # Errors
    /// As [`Client::tools`].
    pub async fn watch_tools(&self) -> Result<watch::Receiver<u64>, ClientError> {
        self.require_version(VERSION_TOOLS, "tools")?;
        let inner = self.inner();
        let rx = inner.tools_changed.subscribe();
        if inner.tools_watch.load(Ordering::Relaxed) == 0 {
            let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
            if inner.tools_watch.compare_exchange(0, id, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                self.tools_page(Bytes::new(), id).await?;
            }
        }
        Ok(rx)
    }

    /// One `TOOLS` round trip; `watch_id` non-zero makes it the client's watch.
    async fn tools_page(&self, cursor: Bytes, watch_id: u64) -> Result<ToolList, ClientError> {
        let inner = self.inner();
        let id = if watch_id != 0 { watch_id } else { inner.next_id.fetch_add(1, Ordering::Relaxed) };
        let (tx, rx) = oneshot::channel();
        inner.queue_if_connected(|out| {
            lock(&inner.tool_queries).insert(id, tx);
            out.buf.push_frame(&Frame::Tools(ToolsQuery { id, cursor, watch: u64::from(watch_id != 0) }));
        })?;
        match tokio::time::timeout(PAGE_TIMEOUT, rx).await {
            Ok(Ok(page)) => Ok(page),
            Ok(Err(_)) => Err(ClientError::Disconnected),
            Err(_) => {
                lock(&inner.tool_queries).remove(&id);
                Err(ClientError::Timeout(PAGE_TIMEOUT))
            }
        }
    }

    fn require_version(&self, version: u64, what: &'static str) -> Result<(), ClientError> {
        match self.server_info() {
            Some(info) if info.version < version => {
                Err(ClientError::Unsupported { what, node_version: info.version, needed: version })
            }
            _ => Ok(()),
        }
    }
}
