//! The MCP server itself, once for every front end: the node's HTTP endpoint serves it over
//! its own router, `fovea mcp` on stdio over a node reached through the SDK. What differs
//! between them (where the catalog is read from and calls go to) is a [`CatalogSource`];
//! what agents see (names, capability and argument checks, progress and logs in each era's
//! rules, cancellation, result conversion, resources, prompts and completions as calls of
//! their procedures) is this module's, so both answer alike.

use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fovea_core::tool::answers::{self, McpFailure, Method, METHOD_HEADER};
use fovea_core::tool::{self, Catalog, Descriptor, Kind, Notice};
use fovea_core::{ErrorCode, Headers};
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ClientCapabilities,
    CompleteRequestParams, CompleteResult, ContentBlock, Extensions, GetPromptRequestParams, GetPromptResponse,
    GetPromptResult, GetTaskParams, GetTaskResult, Implementation, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Reference, ResultType, ServerCapabilities, ServerConfig,
    SubscriptionFilter, Tool, UpdateTaskParams,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::rounds::{self, Round};
use super::tasks::{End, TaskCell, Tasks, TASK_AFTER};
use crate::sync::lock;

/// How a call ended: a `RESULT`'s code, headers and payload (the payload is the answer,
/// or for a failure its message).
#[derive(Debug, Clone)]
pub struct CallOutcome {
    pub code: ErrorCode,
    pub headers: Headers,
    pub payload: Bytes,
}

impl CallOutcome {
    /// A failure with `code` and a message saying what happened.
    pub fn failed(code: ErrorCode, message: impl Into<String>) -> CallOutcome {
        CallOutcome { code, headers: Headers::new(), payload: Bytes::from(message.into().into_bytes()) }
    }
}

/// One page of catalog entries as (procedure, descriptor) pairs, and the next page's cursor.
pub type EntryPage = (Vec<(String, Descriptor)>, Option<String>);

/// What an agent names: a tool or prompt by its MCP name, a resource by URI (a fixed
/// resource's, else the first template's that matches), a template by its `uriTemplate`.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    Named(Kind, &'a str),
    Uri(&'a str),
    Template(&'a str),
}

/// A catalog entry found by a [`Lookup`]: its procedure, descriptor and, for a URI that a
/// template matched, the values of the template's variables.
#[derive(Debug, Clone)]
pub struct Found {
    pub procedure: String,
    pub descriptor: Descriptor,
    pub variables: Vec<(String, String)>,
}

/// Looks `lookup` up in `catalog` among the procedures `visible` admits.
pub fn find_in(catalog: &Catalog, lookup: Lookup<'_>, mut visible: impl FnMut(&str) -> bool) -> Option<Found> {
    let found =
        |(p, d): (&str, &Descriptor)| Found { procedure: p.to_owned(), descriptor: d.clone(), variables: vec![] };
    match lookup {
        Lookup::Named(kind, name) => catalog.named(kind, name, visible).map(found),
        // No resource has a longer URI, and matching one against every template is work a
        // hostile agent should not get to multiply.
        Lookup::Uri(uri) if uri.len() > tool::MAX_URI_LEN => None,
        Lookup::Uri(uri) => catalog.resource(uri, &mut visible).map(found).or_else(|| {
            let (p, d, variables) = catalog.template_for(uri, visible)?;
            Some(Found { procedure: p.to_owned(), descriptor: d.clone(), variables })
        }),
        Lookup::Template(template) => catalog.template(template, visible).map(found),
    }
}

/// Where an [`McpServer`]'s catalog (tools, resources, templates, prompts) comes from and
/// where its calls go. `extensions` are the MCP request's (over HTTP they carry who is
/// asking).
pub trait CatalogSource: Send + Sync + 'static {
    /// One page of the entries of `kind` the requester may call, after `cursor` (empty:
    /// the first), and the next page's cursor.
    fn page(
        &self,
        extensions: &Extensions,
        kind: Kind,
        cursor: &str,
    ) -> impl Future<Output = Result<EntryPage, McpError>> + Send;

    /// The entry `lookup` names, if the requester may call its procedure.
    fn find(
        &self,
        extensions: &Extensions,
        lookup: Lookup<'_>,
    ) -> impl Future<Output = Result<Option<Found>, McpError>> + Send;

    /// Calls `procedure` with `headers` and `payload` (a tool's JSON arguments, or an MCP
    /// method's params). Notices the provider sends (questions too) go to `notices` before
    /// the outcome; the answers to its questions come from `replies` (each a
    /// [`Notice::Reply`]). Dropping the future cancels the call at the provider.
    fn call(
        &self,
        extensions: &Extensions,
        procedure: &str,
        headers: Headers,
        payload: Bytes,
        notices: mpsc::Sender<Notice>,
        replies: mpsc::Receiver<Notice>,
    ) -> impl Future<Output = CallOutcome> + Send;

    /// A watch whose value changes whenever the requester's catalog may have changed,
    /// or `None` when none can be had.
    fn watch(&self, extensions: &Extensions) -> impl Future<Output = Option<watch::Receiver<u64>>> + Send;

    /// The URIs published as updated under `procedure` (the resources it serves), while
    /// the receiver lives; `None` when updates cannot be had.
    fn updates(
        &self,
        extensions: &Extensions,
        procedure: &str,
    ) -> impl Future<Output = Option<mpsc::Receiver<String>>> + Send;

    /// The part of a request's `extensions` this source reads again later: a session's
    /// list watcher keeps it for the session's life, so it should hold who is asking, not
    /// the whole HTTP request (the default keeps everything).
    fn keep(&self, extensions: &Extensions) -> Extensions {
        extensions.clone()
    }

    /// Counts of the requester's catalog changes by kind ([`Kind::index`]), to announce
    /// only the lists that changed; `None` (the default): every list is announced.
    fn kind_versions(&self, _extensions: &Extensions) -> impl Future<Output = Option<[u64; 4]>> + Send {
        std::future::ready(None)
    }

    /// For a legacy session being restored after hibernation (rmcp's replayed
    /// `initialize`): the [`kind_versions`](Self::kind_versions) it was opened with, so
    /// the lists that changed since are announced. `None` (the default): not a restore.
    fn restored_versions(&self, _extensions: &Extensions) -> Option<[u64; 4]> {
        None
    }

    /// The requester's legacy session now holds state that only its live worker keeps
    /// (resource subscriptions, a logging level): it must not be hibernated. The default
    /// does nothing (no hibernation).
    fn hold(&self, _extensions: &Extensions) {}

    /// The realm calls are made in (for messages in results).
    fn realm(&self, extensions: &Extensions) -> String;

    /// Tool `name` as this node knows it, before any requester is known: the HTTP layer
    /// checks a `tools/call`'s SEP-2243 `Mcp-Param-*` headers against the tool's input
    /// schema before it reads who is asking. `None` (the default): no such check.
    fn lookup(&self, _name: &str) -> Option<Found> {
        None
    }

    /// A tool call (past the tool lookup and the argument check) ended, as an error result
    /// or not (for counters).
    fn counted(&self, _failed: bool) {}

    /// A call serving `method` (past the lookup) ended, in an error or not (for counters).
    fn counted_method(&self, _method: Method, _failed: bool) {}

    /// What became of a provider's question (for counters).
    fn counted_question(&self, _outcome: QuestionOutcome) {}
}

/// The MCP server of one session (2025-11-25) or one request (2026-07-28) over `S`.
pub struct McpServer<S> {
    source: Arc<S>,
    /// Legacy sessions: the level `logging/setLevel` chose (`None`: every level).
    #[allow(deprecated)]
    log_level: Arc<Mutex<Option<rmcp::model::LoggingLevel>>>,
    /// Ends the session's tools watch and resource subscriptions when the session (its
    /// last clone) ends.
    _session: Arc<DropGuard>,
    watching: CancellationToken,
    /// Legacy sessions: resources subscribed to (`resources/subscribe`), by URI.
    subscribed: Arc<Mutex<std::collections::HashMap<String, CancellationToken>>>,
    /// Tool calls kept as tasks, shared by every session and request of the endpoint.
    tasks: Arc<Tasks>,
}

/// Most resources one session (or one `subscriptions/listen`) watches.
pub const MAX_RESOURCE_SUBSCRIPTIONS: usize = 256;

impl<S> Clone for McpServer<S> {
    fn clone(&self) -> Self {
        McpServer {
            source: self.source.clone(),
            log_level: self.log_level.clone(),
            _session: self._session.clone(),
            watching: self.watching.clone(),
            subscribed: self.subscribed.clone(),
            tasks: self.tasks.clone(),
        }
    }
}

impl<S: CatalogSource> McpServer<S> {
    /// A server over `source`, with no logging level chosen yet.
    pub fn new(source: Arc<S>) -> McpServer<S> {
        let watching = CancellationToken::new();
        McpServer {
            source,
            log_level: Arc::default(),
            _session: Arc::new(watching.clone().drop_guard()),
            watching,
            subscribed: Arc::default(),
            tasks: Arc::default(),
        }
    }

    /// The server with `tasks` as its store of tasks (shared with other sessions and
    /// requests, so an agent finds its task whichever request it polls with).
    pub fn with_tasks(mut self, tasks: Arc<Tasks>) -> McpServer<S> {
        self.tasks = tasks;
        self
    }
}

/// What fovea's MCP servers declare: tools, resources and prompts with `listChanged`,
/// completions and logging.
pub fn server_config() -> ServerConfig {
    #[allow(deprecated)]
    let caps = ServerCapabilities::builder()
        .enable_tools()
        .enable_tool_list_changed()
        .enable_logging()
        .enable_completions()
        .enable_resources()
        .enable_resources_list_changed()
        .enable_resources_subscribe()
        .enable_prompts()
        .enable_prompts_list_changed()
        .enable_tasks()
        .build();
    ServerConfig::new(caps).with_server_info(Implementation::new("fovea", env!("CARGO_PKG_VERSION"))).with_instructions(
        "Tools, resources and prompts of this fovea realm: each is a procedure served by a service somewhere in the mesh.",
    )
}

/// The MCP object of an entry, as rmcp's type `T` (`Tool`, `Resource`, …).
fn to_mcp<T: serde::de::DeserializeOwned>(procedure: &str, descriptor: &Descriptor) -> Option<T> {
    serde_json::from_value(Value::Object(tool::mcp_json(procedure, descriptor))).ok()
}

/// An MCP result from its JSON, as 2026-07-28 wants it (`resultType` set; rmcp drops it
/// again for older peers).
fn to_result<T: serde::de::DeserializeOwned>(json: Value, what: &str) -> Result<T, McpError> {
    let mut json = json;
    if let Value::Object(obj) = &mut json {
        obj.entry("resultType").or_insert_with(|| serde_json::to_value(ResultType::COMPLETE).unwrap_or_default());
    }
    serde_json::from_value(json).map_err(|e| {
        McpError::internal_error(format!("the provider of {what} sent a result that is not MCP: {e}"), None)
    })
}

fn to_error(f: McpFailure) -> McpError {
    McpError::new(rmcp::model::ErrorCode(i32::try_from(f.code).unwrap_or(-32603)), f.message, f.data)
}

/// The MCP `Tool` of a procedure.
pub(crate) fn to_tool(procedure: &str, descriptor: &Descriptor) -> Option<Tool> {
    to_mcp(procedure, descriptor)
}

/// A call's outcome as the MCP result every front end returns, in either protocol era.
pub fn tool_result(outcome: &CallOutcome, procedure: &str, realm: &str) -> CallToolResult {
    let json = tool::result_json(outcome.code, &outcome.headers, &outcome.payload, procedure, realm);
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

/// Severity rank of a level (debug 0 … emergency 7).
#[allow(deprecated)]
fn rank(level: &rmcp::model::LoggingLevel) -> usize {
    let name = serde_json::to_value(level).ok();
    tool::LOG_LEVELS.iter().position(|l| name.as_ref().and_then(Value::as_str) == Some(l)).unwrap_or(0)
}

/// One page of a list method's result (`ListToolsResult`, `ListResourcesResult`, …): the
/// types share their shape but no trait.
macro_rules! paged {
    ($server:ident, $ty:ident, $kind:expr, $request:ident, $context:ident) => {{
        let (items, next, hint) = $server.list($kind, $request, &$context).await?;
        let mut result = $ty::with_all_items(items);
        if hint {
            result = result.with_ttl_ms(LIST_TTL_MS).with_cache_scope(CacheScope::Private);
        }
        result.next_cursor = next;
        Ok(result)
    }};
}

impl<S: CatalogSource> ServerHandler for McpServer<S> {
    fn get_info(&self) -> ServerConfig {
        server_config()
    }

    /// For rmcp's SEP-2243 check of `Mcp-Param-*` headers (x-mcp-header annotations).
    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.source.lookup(name).and_then(|f| to_tool(&f.procedure, &f.descriptor))
    }

    #[allow(deprecated)]
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        *lock(&self.log_level) = Some(request.level);
        self.source.hold(&context.extensions);
        Ok(())
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // A legacy session: tell it when its lists change, while it lasts.
        let Some(mut rx) = self.source.watch(&context.extensions).await else { return };
        let (peer, stop, source) = (context.peer.clone(), self.watching.clone(), self.source.clone());
        let extensions = self.source.keep(&context.extensions);
        // A restored session first announces what changed while it was hibernated.
        let restored = self.source.restored_versions(&context.extensions);
        tokio::spawn(async move {
            let mut seen = match restored {
                Some(opened) => Some(opened),
                None => source.kind_versions(&extensions).await,
            };
            let mut first = restored.is_some();
            loop {
                if !std::mem::take(&mut first) {
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { return },
                        () = stop.cancelled() => return,
                    }
                }
                let now = source.kind_versions(&extensions).await;
                let [tools, resources, prompts] = changed_lists(seen, now);
                seen = now;
                if (tools && peer.notify_tool_list_changed().await.is_err())
                    || (resources && peer.notify_resource_list_changed().await.is_err())
                    || (prompts && peer.notify_prompt_list_changed().await.is_err())
                {
                    return;
                }
            }
        });
    }

    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        Some(requested.supported_by(&self.get_info().capabilities))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let extensions = &context.request_context().extensions;
        let mut catalog = self.source.watch(extensions).await;
        let mut seen = self.source.kind_versions(extensions).await;
        // Resource URIs the listener asked about: one feed of their updates.
        let (tx, mut updated) = mpsc::channel::<String>(16);
        let stop = CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        let uris = context.accepted().resource_subscriptions.clone().unwrap_or_default();
        for uri in uris.iter().take(MAX_RESOURCE_SUBSCRIPTIONS) {
            let Some(feed) = self.feed(extensions, uri).await? else { continue };
            let (tx, stop, uri) = (tx.clone(), stop.child_token(), uri.clone());
            tokio::spawn(filter_updates(feed, uri, stop, move |u| {
                let tx = tx.clone();
                async move { tx.send(u).await.is_ok() }
            }));
        }
        drop(tx);
        loop {
            let changed = async {
                match catalog.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ok = changed => if !ok { return Ok(()) } else {
                    let now = self.source.kind_versions(extensions).await;
                    let [tools, resources, prompts] = changed_lists(seen, now);
                    seen = now;
                    let (accepted, sink) = (context.accepted(), context.sink());
                    let failed = (tools && accepted.tools_list_changed == Some(true) && sink.notify_tool_list_changed().await.is_err())
                        || (resources && accepted.resources_list_changed == Some(true) && sink.notify_resource_list_changed().await.is_err())
                        || (prompts && accepted.prompts_list_changed == Some(true) && sink.notify_prompt_list_changed().await.is_err());
                    if failed {
                        return Ok(());
                    }
                },
                Some(uri) = updated.recv() => if context.sink().notify_resource_updated(uri).await.is_err() {
                    return Ok(());
                },
                () = context.cancelled() => return Ok(()),
            }
        }
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: rmcp::model::SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let uri = request.uri;
        if lock(&self.subscribed).contains_key(&uri) {
            return Ok(());
        }
        if lock(&self.subscribed).len() >= MAX_RESOURCE_SUBSCRIPTIONS {
            let why =
                format!("a session watches at most {MAX_RESOURCE_SUBSCRIPTIONS} resources: unsubscribe some first");
            return Err(McpError::invalid_request(why, None));
        }
        let Some(feed) = self.feed(&context.extensions, &uri).await? else {
            return Err(to_error(answers::resource_not_found(&uri)));
        };
        let stop = self.watching.child_token();
        lock(&self.subscribed).insert(uri.clone(), stop.clone());
        self.source.hold(&context.extensions);
        let peer = context.peer.clone();
        tokio::spawn(filter_updates(feed, uri, stop, move |u| {
            let peer = peer.clone();
            async move { peer.notify_resource_updated(rmcp::model::ResourceUpdatedNotificationParam::new(u)).await.is_ok() }
        }));
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: rmcp::model::UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        if let Some(stop) = lock(&self.subscribed).remove(&request.uri) {
            stop.cancel();
        }
        Ok(())
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        paged!(self, ListToolsResult, Kind::Tool, request, context)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let unknown = || McpError::invalid_params(format!("unknown tool {:?}", request.name), None);
        let Found { procedure, descriptor, .. } = self
            .source
            .find(&context.extensions, Lookup::Named(Kind::Tool, &request.name))
            .await?
            .ok_or_else(unknown)?;
        let capabilities = context.client_capabilities().unwrap_or_default();
        let tasks_declared = capabilities.supports_tasks();
        let declared = serde_json::to_value(capabilities).unwrap_or_default();
        if let Some(missing) = tool::missing_capabilities(&descriptor, &declared) {
            let caps: ClientCapabilities = serde_json::from_value(Value::Object(missing)).unwrap_or_default();
            return Err(McpError::missing_required_client_capability(caps));
        }
        // The tasks extension: a tool that needs a task cannot be called without it.
        let task_support =
            descriptor.json().get("execution").and_then(|e| e.get("taskSupport")).and_then(Value::as_str);
        if task_support == Some("required") && !tasks_declared {
            return Err(McpError::missing_required_client_capability(
                ClientCapabilities::builder().enable_tasks().build(),
            ));
        }
        let arguments = Value::Object(request.arguments.clone().unwrap_or_default());
        if let Some(schema) = descriptor.json().get("inputSchema") {
            tool::check_arguments(schema, &arguments, "arguments").map_err(|e| McpError::invalid_params(e, None))?;
        }
        let (state, responses) = (request.request_state.as_deref(), request.input_responses.clone());
        let bind = || rounds::binding(&self.source.realm(&context.extensions), "tools/call", &request.name, &arguments);
        let mut round = self.round(&context, state, responses, bind)?;
        let payload = Bytes::from(serde_json::to_vec(&arguments).unwrap_or_default());
        if tasks_declared && matches!(task_support, Some("optional" | "required")) {
            if let Some(round) = round.take() {
                self.source.counted(false);
                return self.call_as_task(&procedure, payload, &context, round, bind()).await;
            }
        }
        let outcome = self.call(&procedure, Headers::new(), payload, &context, round.as_mut()).await;
        if let Some(input) = round.map(|r| r.finish(bind)).transpose()?.flatten() {
            self.source.counted(false);
            return Ok(input.into());
        }
        let result = match outcome {
            Some(outcome) => tool_result(&outcome, &procedure, &self.source.realm(&context.extensions)),
            None => error_result("cancelled".into()),
        };
        self.source.counted(result.is_error == Some(true));
        Ok(result.into())
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        paged!(self, ListResourcesResult, Kind::Resource, request, context)
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        paged!(self, ListResourceTemplatesResult, Kind::ResourceTemplate, request, context)
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        paged!(self, ListPromptsResult, Kind::Prompt, request, context)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri.as_str();
        let found = self.source.find(&context.extensions, Lookup::Uri(uri)).await?;
        let Some(Found { procedure, descriptor, variables }) = found else {
            return Err(to_error(answers::resource_not_found(uri)));
        };
        let params = answers::read_params(uri, &variables, &descriptor);
        let (state, responses) = (request.request_state.as_deref(), request.input_responses.clone());
        let bind = || rounds::binding(&self.source.realm(&context.extensions), "resources/read", uri, &Value::Null);
        let mut round = self.round(&context, state, responses, bind)?;
        let outcome = self.method_call(Method::ReadResource, &procedure, &params, &context, round.as_mut()).await?;
        if let Some(input) = round.map(|r| r.finish(bind)).transpose()?.flatten() {
            self.source.counted_method(Method::ReadResource, false);
            return Ok(input.into());
        }
        let json = answers::read_result(outcome.code, &outcome.headers, &outcome.payload, uri, &descriptor);
        self.source.counted_method(Method::ReadResource, json.is_err());
        let json = json.map_err(to_error)?;
        let mut result: ReadResourceResult = to_result(json, uri)?;
        // A read is as fresh as the provider says, else not cacheable (2026-07-28).
        if context.protocol_version().is_some_and(|v| !v.has_initialize()) && result.ttl_ms.is_none() {
            result.ttl_ms = Some(0);
            result.cache_scope = Some(CacheScope::Private);
        }
        Ok(result.into())
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let name = request.name.as_str();
        let unknown = || McpError::invalid_params(format!("unknown prompt {name:?}"), None);
        let Found { procedure, descriptor, .. } =
            self.source.find(&context.extensions, Lookup::Named(Kind::Prompt, name)).await?.ok_or_else(unknown)?;
        let arguments = request.arguments.clone().unwrap_or_default();
        if let Some(missing) = tool::required_arguments(&descriptor).find(|a| !arguments.contains_key(*a)) {
            return Err(McpError::invalid_params(format!("prompt {name:?} needs the argument {missing:?}"), None));
        }
        if let Some((k, _)) = arguments.iter().find(|(_, v)| !v.is_string()) {
            return Err(McpError::invalid_params(format!("the prompt argument {k:?} must be a string"), None));
        }
        let params = serde_json::json!({"name": name, "arguments": arguments});
        let (state, responses) = (request.request_state.as_deref(), request.input_responses.clone());
        let bind =
            || rounds::binding(&self.source.realm(&context.extensions), "prompts/get", name, &params["arguments"]);
        let mut round = self.round(&context, state, responses, bind)?;
        let outcome = self.method_call(Method::GetPrompt, &procedure, &params, &context, round.as_mut()).await?;
        if let Some(input) = round.map(|r| r.finish(bind)).transpose()?.flatten() {
            self.source.counted_method(Method::GetPrompt, false);
            return Ok(input.into());
        }
        let json = answers::prompt_result(outcome.code, &outcome.headers, &outcome.payload, name, &descriptor);
        self.source.counted_method(Method::GetPrompt, json.is_err());
        let json = json.map_err(to_error)?;
        let result: GetPromptResult = to_result(json, name)?;
        Ok(result.into())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let (lookup, what) = match &request.r#ref {
            Reference::Prompt(p) => (Lookup::Named(Kind::Prompt, &p.name), format!("prompt {:?}", p.name)),
            Reference::Resource(r) => (Lookup::Template(&r.uri), format!("resource template {:?}", r.uri)),
            _ => return Err(McpError::invalid_params("a completion refers to a prompt or a resource template", None)),
        };
        // Nothing to complete from (an unknown prompt or template): no values, as a
        // completion is a hint, not an operation that can fail the agent's work.
        let Some(found) = self.source.find(&context.extensions, lookup).await? else {
            return to_result(answers::completion(Vec::new()), &what);
        };
        let params = serde_json::to_value(&request).unwrap_or_default();
        let outcome = self.method_call(Method::Complete, &found.procedure, &params, &context, None).await?;
        let json = answers::complete_result(outcome.code, &outcome.headers, &outcome.payload, &what);
        self.source.counted_method(Method::Complete, json.is_err());
        let json = json.map_err(to_error)?;
        to_result(json, &what)
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        self.tasks.get(&self.source.realm(&context.extensions), &request.task_id)
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.tasks.update(&self.source.realm(&context.extensions), &request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.tasks.cancel(&self.source.realm(&context.extensions), &request.task_id)
    }
}

/// Drives a call that may become a task: questions go to its cell (answered from the
/// agent's rounds, deferred, or parked for `tasks/update`), progress messages become its
/// status message, and its end (or cancellation) is recorded there.
async fn run_task<S: CatalogSource>(
    source: Arc<S>,
    extensions: Extensions,
    procedure: String,
    payload: Bytes,
    cell: Arc<TaskCell>,
    declared: Value,
) {
    let (tx, mut rx) = mpsc::channel(64);
    let (reply, replies) = mpsc::channel(MAX_QUESTIONS_PER_CALL);
    cell.set_reply(reply.clone());
    let call = source.call(&extensions, &procedure, Headers::new(), payload, tx, replies);
    tokio::pin!(call);
    let outcome = loop {
        tokio::select! {
            outcome = &mut call => break Some(outcome),
            Some(notice) = rx.recv() => match notice {
                Notice::Question { id, key, method, params } => {
                    let outcome = match undeclared_in(&declared, &method) {
                        Some(why) => decline(&reply, id, why),
                        None => cell.question(id, key, &method, params),
                    };
                    source.counted_question(outcome);
                }
                Notice::Progress { message, .. } => cell.progress(message),
                _ => {}
            },
            () = cell.cancel.cancelled() => break None,
        }
    };
    match outcome {
        None => cell.end(End::Cancelled),
        Some(outcome) => {
            let end = task_end(&outcome, &procedure, &source.realm(&extensions));
            cell.finish(outcome, end);
        }
    }
}

/// How a finished call reads as a task: completed with the tool's result (an error
/// result when the provider failed it), or failed with a JSON-RPC error when the call
/// could not be made or finish (the node's codes; the provider's `NOT_FOUND` and
/// `INVALID_ARGUMENTS`).
fn task_end(outcome: &CallOutcome, procedure: &str, realm: &str) -> End {
    let code = outcome.code.to_u64();
    let rpc = match outcome.code {
        ErrorCode::NotFound | ErrorCode::InvalidArguments => Some(-32602),
        _ if code != 0 && code < ErrorCode::ApplicationError.to_u64() => Some(-32603),
        _ => None,
    };
    match rpc {
        Some(c) => {
            let message = format!("{}: {}", outcome.code.name(), String::from_utf8_lossy(&outcome.payload));
            let error = serde_json::json!({"code": c, "message": message});
            End::Failed(error.as_object().cloned().unwrap_or_default())
        }
        None => {
            let result = serde_json::to_value(tool_result(outcome, procedure, realm)).unwrap_or_default();
            End::Completed(result.as_object().cloned().unwrap_or_default())
        }
    }
}

/// How long a 2026-07-28 agent may keep a list: it depends on the caller's permissions
/// (private), and list_changed announces changes, so a second of freshness is safe.
const LIST_TTL_MS: u64 = 1000;

/// Which lists (tools, resources with their templates, prompts) changed between two counts
/// by kind; all of them when either is unknown.
fn changed_lists(before: Option<[u64; 4]>, now: Option<[u64; 4]>) -> [bool; 3] {
    let (Some(b), Some(n)) = (before, now) else { return [true; 3] };
    let moved = |k: Kind| b[k.index()] != n[k.index()];
    [moved(Kind::Tool), moved(Kind::Resource) || moved(Kind::ResourceTemplate), moved(Kind::Prompt)]
}

/// Passes on each update of `uri` from `feed` (which carries every URI updated under its
/// procedure) with `notify`, until `stop`, the feed's end, or `notify` failing.
async fn filter_updates<F, Fut>(mut feed: mpsc::Receiver<String>, uri: String, stop: CancellationToken, notify: F)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        tokio::select! {
            u = feed.recv() => match u {
                Some(u) if u == uri => if !notify(u).await { return },
                Some(_) => {}
                None => return,
            },
            () = stop.cancelled() => return,
        }
    }
}

impl<S: CatalogSource> McpServer<S> {
    /// The updates of the resource (or template) serving `uri`; `None` when nothing
    /// the requester may read serves it.
    async fn feed(&self, extensions: &Extensions, uri: &str) -> Result<Option<mpsc::Receiver<String>>, McpError> {
        let Some(found) = self.source.find(extensions, Lookup::Uri(uri)).await? else { return Ok(None) };
        Ok(self.source.updates(extensions, &found.procedure).await)
    }

    /// One page of the entries of `kind` as rmcp's type, the next cursor, and whether the
    /// result carries cache hints (they exist from 2026-07-28).
    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        request: Option<PaginatedRequestParams>,
        context: &RequestContext<RoleServer>,
    ) -> Result<(Vec<T>, Option<String>, bool), McpError> {
        let cursor = request.and_then(|r| r.cursor).unwrap_or_default();
        let (page, next) = self.source.page(&context.extensions, kind, &cursor).await?;
        let items = page.iter().filter_map(|(p, d)| to_mcp(p, d)).collect();
        Ok((items, next, context.protocol_version().is_some_and(|v| !v.has_initialize())))
    }

    /// The round of a 2026-07-28 request that may end input-required (retried with the
    /// agent's `state` and `responses`; `bind` names the request, [`rounds::binding`]);
    /// `None` for a 2025-11-25 session, whose agent is asked while the call runs.
    fn round(
        &self,
        context: &RequestContext<RoleServer>,
        state: Option<&str>,
        responses: Option<rmcp::model::InputResponses>,
        bind: impl FnOnce() -> Vec<u8>,
    ) -> Result<Option<Round>, McpError> {
        if context.protocol_version().is_none_or(|v| v.has_initialize()) {
            return Ok(None);
        }
        Round::open(state, responses, bind).map(Some)
    }

    /// A call that becomes a task if it is still running after [`TASK_AFTER`] (and has not
    /// asked the agent through an input-required result by then); else the request ends
    /// as a plain one, with its result or its input-required result.
    async fn call_as_task(
        &self,
        procedure: &str,
        payload: Bytes,
        context: &RequestContext<RoleServer>,
        round: Round,
        binding: Vec<u8>,
    ) -> Result<CallToolResponse, McpError> {
        let realm = self.source.realm(&context.extensions);
        let cell = TaskCell::new(realm.clone(), round);
        let declared = serde_json::to_value(context.client_capabilities().unwrap_or_default()).unwrap_or_default();
        let run = run_task(
            self.source.clone(),
            context.extensions.clone(),
            procedure.to_owned(),
            payload,
            cell.clone(),
            declared,
        );
        tokio::spawn(run);
        let later = tokio::time::sleep(TASK_AFTER);
        tokio::pin!(later);
        let mut waited = false;
        loop {
            let changed = cell.changed.notified();
            if let Some(outcome) = cell.take_outcome() {
                if let Some(input) = cell.take_round().finish(|| binding)? {
                    return Ok(input.into());
                }
                return Ok(tool_result(&outcome, procedure, &realm).into());
            }
            tokio::select! {
                () = changed => {}
                () = &mut later, if !waited => {
                    waited = true;
                    if !cell.deferred() {
                        if let Some(created) = self.tasks.promote(&cell) {
                            return Ok(CallToolResponse::Task(created));
                        }
                    }
                }
                () = context.ct.cancelled() => {
                    cell.cancel.cancel();
                    return Err(McpError::internal_error("cancelled by the client", None));
                }
            }
        }
    }

    /// A call serving an MCP `method` with its `params`; an error when the agent cancelled.
    async fn method_call(
        &self,
        method: Method,
        procedure: &str,
        params: &Value,
        context: &RequestContext<RoleServer>,
        round: Option<&mut Round>,
    ) -> Result<CallOutcome, McpError> {
        let headers = Headers::from_pairs([(METHOD_HEADER, method.as_str())]).unwrap_or_default();
        let payload = Bytes::from(serde_json::to_vec(params).unwrap_or_default());
        self.call(procedure, headers, payload, context, round)
            .await
            .ok_or_else(|| McpError::internal_error("cancelled by the client", None))
    }

    /// One call, passing its notices on and cancelling it with the MCP request (`None`).
    /// A 2026-07-28 request that may end input-required has its `round`: the provider's
    /// questions go there, else they are declined for such agents.
    async fn call(
        &self,
        procedure: &str,
        headers: Headers,
        payload: Bytes,
        context: &RequestContext<RoleServer>,
        mut round: Option<&mut Round>,
    ) -> Option<CallOutcome> {
        // Room for a burst of notices; a full channel drops notices, never the outcome.
        let (tx, mut rx) = mpsc::channel(64);
        let (reply, replies) = mpsc::channel(MAX_QUESTIONS_PER_CALL);
        let call = self.source.call(&context.extensions, procedure, headers, payload, tx, replies);
        tokio::pin!(call);
        let asking = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let progress_token = context.meta.get_progress_token();
        let modern = context.protocol_version().is_some_and(|v| !v.has_initialize());
        // MCP logging is deprecated by SEP-2577 but still part of both eras we serve.
        #[allow(deprecated)]
        let min_level = if modern { context.meta.log_level() } else { *lock(&self.log_level) };
        let outcome = loop {
            tokio::select! {
                outcome = &mut call => break outcome,
                Some(notice) = rx.recv() => match notice {
                    Notice::Question { id, key, method, params } => {
                        let outcome = match (undeclared(context, &method), round.as_deref_mut()) {
                            (Some(why), _) => decline(&reply, id, why),
                            (None, Some(round)) if modern => {
                                let (outcome, result) = round.question(key, &method, params);
                                let _ = reply.try_send(Notice::Reply { id, result });
                                outcome
                            }
                            (None, _) => ask_agent(context, modern, &asking, reply.clone(), id, method, params),
                        };
                        self.source.counted_question(outcome);
                    }
                    notice => pass_on(context, &progress_token, modern, min_level.as_ref(), notice).await,
                },
                // Dropping the call future cancels it at the node and the provider.
                () = context.ct.cancelled() => return None,
            }
        };
        // Notices that arrived with the outcome still go first.
        while let Ok(notice) = rx.try_recv() {
            pass_on(context, &progress_token, modern, min_level.as_ref(), notice).await;
        }
        Some(outcome)
    }
}

/// Most questions one call may have open with the agent at once (in a 2026-07-28 round:
/// may ask in one input-required result); more are declined.
pub const MAX_QUESTIONS_PER_CALL: usize = 16;

/// What became of a provider's question to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuestionOutcome {
    /// Put to the agent while the call runs (a 2025-11-25 server-to-client request).
    Asked,
    /// Put in an input-required result; the provider was told to end its run (2026-07-28).
    Deferred,
    /// Answered from the agent's retry of its request (2026-07-28).
    Answered,
    /// Refused at once: a capability the agent lacks, too many, or not MCP.
    Declined,
}

impl QuestionOutcome {
    /// Every outcome, in index order.
    pub const ALL: [QuestionOutcome; 4] =
        [QuestionOutcome::Asked, QuestionOutcome::Deferred, QuestionOutcome::Answered, QuestionOutcome::Declined];

    /// Its name in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            QuestionOutcome::Asked => "asked",
            QuestionOutcome::Deferred => "deferred",
            QuestionOutcome::Answered => "answered",
            QuestionOutcome::Declined => "declined",
        }
    }
}

/// Why the agent cannot be asked `method`: it did not declare the capability.
fn undeclared(context: &RequestContext<RoleServer>, method: &str) -> Option<String> {
    let declared = serde_json::to_value(context.client_capabilities().unwrap_or_default()).unwrap_or_default();
    undeclared_in(&declared, method)
}

/// Why an agent that `declared` these capabilities cannot be asked `method`.
fn undeclared_in(declared: &Value, method: &str) -> Option<String> {
    let capability = match method {
        "elicitation/create" => "elicitation",
        "sampling/createMessage" => "sampling",
        _ => "roots",
    };
    declared.get(capability).is_none().then(|| format!("the agent did not declare the {capability} capability"))
}

/// Declines question `id` at once with `why`.
fn decline(reply: &mpsc::Sender<Notice>, id: u64, why: String) -> QuestionOutcome {
    let _ = reply.try_send(Notice::Reply { id, result: Err((-32601, why)) });
    QuestionOutcome::Declined
}

/// Asks the agent a provider's question (in a task: the call's notices keep flowing) and
/// sends its answer, or why there is none, to `reply`. A 2025-11-25 session is asked with
/// a server-to-client request; a 2026-07-28 agent only through an input-required result,
/// which only `tools/call`, `prompts/get` and `resources/read` may end with (their round
/// takes the question before this), so elsewhere it is declined.
fn ask_agent(
    context: &RequestContext<RoleServer>,
    modern: bool,
    asking: &Arc<std::sync::atomic::AtomicUsize>,
    reply: mpsc::Sender<Notice>,
    id: u64,
    method: String,
    params: Value,
) -> QuestionOutcome {
    use std::sync::atomic::Ordering::Relaxed;
    if modern {
        let why = "an MCP 2026-07-28 agent is asked only during tools/call, prompts/get and resources/read";
        return decline(&reply, id, why.to_owned());
    }
    if asking.fetch_add(1, Relaxed) >= MAX_QUESTIONS_PER_CALL {
        asking.fetch_sub(1, Relaxed);
        return decline(&reply, id, format!("{MAX_QUESTIONS_PER_CALL} questions of this call are already open"));
    }
    let request =
        serde_json::from_value::<rmcp::model::ServerRequest>(serde_json::json!({"method": method, "params": params}));
    let (peer, asking, ct) = (context.peer.clone(), asking.clone(), context.ct.clone());
    tokio::spawn(async move {
        let result = match request {
            Err(e) => Err((-32602, format!("the provider's {method} params are not MCP: {e}"))),
            Ok(request) => tokio::select! {
                r = peer.send_request(request) => match r {
                    Ok(answer) => Ok(serde_json::to_value(answer).unwrap_or_default()),
                    Err(rmcp::ServiceError::McpError(e)) => Err((i64::from(e.code.0), e.message.into_owned())),
                    Err(e) => Err((-32603, format!("the agent did not answer: {e}"))),
                },
                // The call ended (the agent cancelled it): nobody waits for the answer.
                () = ct.cancelled() => Err((-32603, "the call was cancelled".to_owned())),
            },
        };
        asking.fetch_sub(1, Relaxed);
        let _ = reply.send(Notice::Reply { id, result }).await;
    });
    QuestionOutcome::Asked
}

/// Passes one provider notice on to the agent: progress when the request carried a
/// progress token; logs by the era's rules (2026-07-28: only when the request asked, from
/// its level; a legacy session: from the level it set, all until it sets one).
#[allow(deprecated)]
async fn pass_on(
    context: &RequestContext<RoleServer>,
    progress_token: &Option<rmcp::model::ProgressToken>,
    modern: bool,
    min_level: Option<&rmcp::model::LoggingLevel>,
    notice: Notice,
) {
    match notice {
        Notice::Progress { progress, total, message } => {
            let Some(token) = progress_token else { return };
            let mut p = ProgressNotificationParam::new(token.clone(), progress);
            p.total = total;
            p.message = message;
            let _ = context.peer.notify_progress(p).await;
        }
        Notice::Log { level, logger, data } => {
            let Ok(level) = serde_json::from_value::<rmcp::model::LoggingLevel>(Value::String(level)) else { return };
            let wanted = match (modern, min_level) {
                (true, None) => false,
                (_, Some(min)) => rank(&level) >= rank(min),
                (false, None) => true,
            };
            if wanted {
                let mut m = rmcp::model::LoggingMessageNotificationParam::new(level, data);
                m.logger = logger;
                let _ = context.peer.notify_logging_message(m).await;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fovea_core::tool::{META_PROCEDURE, META_REQUIRES, TOOL_RESULT_TYPE};

    #[test]
    fn results() {
        let r = |code, headers: Headers, payload: &'static [u8]| {
            tool_result(&CallOutcome { code, headers, payload: Bytes::from_static(payload) }, "p.x", "default")
        };
        let text = r(ErrorCode::NoError, Headers::new(), b"hello");
        assert_eq!(text.is_error, Some(false));
        assert!(text.structured_content.is_none());
        assert!(text.result_type.is_some(), "2026-07-28 results carry resultType");
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
        let d = Descriptor::parse(
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
