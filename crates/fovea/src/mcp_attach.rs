//! `fovea mcp attach`: an existing MCP server becomes a mesh service. Each upstream tool is
//! registered as the procedure `NAME.<tool>` with its descriptor, each prompt as
//! `NAME.<prompt>`, each resource and resource template as `NAME.resources.<hash>` and
//! `NAME.templates.<hash>` (agents see their URIs unchanged), so every service can call
//! them and every agent on every node sees them; two attachments of one NAME share calls
//! through ordinary RPC balancing. The upstream's list changes are followed, and its
//! resource updates published to the mesh (`$mcp.updated.<procedure>`). Its questions
//! during a tool call (elicitation, sampling, roots) are asked of the agent behind that
//! call, wherever it is (`Request::ask`), and the answer goes back upstream.
//!
//! Trust: a definition is prompt input for every agent of the realm, so each one (tool,
//! prompt, resource, template) is pinned when first seen (`pins/NAME.json` in the data dir:
//! a hash of what agents read). A changed definition is not exposed until an operator runs
//! `fovea mcp approve NAME`; the change is logged and counted. The upstream's credential
//! stays here; callers' credentials never reach it.
//!
//! Each attachment also registers `NAME.$status` (a procedure, not a tool: agents do not
//! see it; `$` cannot start an MCP tool name, so no upstream tool collides with it).
//! `fovea mcp status NAME` calls it: the upstream's state, restarts, the last error, the
//! tools attached, held back and refused, and call counts. The attachment keeps answering
//! it while the upstream is down, so it always says what happened.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use fovea_client::{Client, ErrorCode, Headers, McpMethod, Notice, Registration, Request, MCP_RESULT_TYPE};
use fovea_core::tool::{Catalog, Descriptor, Kind, TOOL_RESULT_TYPE};
#[allow(deprecated)]
use rmcp::model::LoggingMessageNotificationParam;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotificationParam, ClientRequest, ProgressNotificationParam,
    ServerResult, Tool,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

use crate::cli::{McpApproveArgs, McpAttachArgs, McpStatusArgs};
use crate::client_cmds::connect;

/// Largest upstream result passed on (bigger ones become an error result). One over the
/// node's `max_payload` is streamed to a caller that takes streamed answers (an agent on
/// a node's MCP endpoint, `fovea call`); the bound is the MCP endpoint's own for a whole
/// result.
const MAX_RESULT: usize = 64 * 1024 * 1024;

/// Largest arguments object taken for an upstream's tool (a caller may stream more than
/// `max_payload`); an MCP request carries it whole.
const MAX_ARGUMENTS: usize = 64 * 1024 * 1024;

/// Backoff between restarts of an upstream that exited or failed.
const FIRST_RESTART: Duration = Duration::from_millis(500);
const MAX_RESTART: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What an attachment says about itself (`NAME.$status`); shared by its tasks.
#[derive(Debug, Default, serde::Serialize)]
struct Status {
    name: String,
    /// Which replica answered (two attachments of a NAME share calls and status calls).
    replica: String,
    /// The upstream: its command line or URL (never its credential).
    upstream: String,
    /// `starting`, `connected` or `restarting`.
    state: &'static str,
    /// Seconds in this state (computed when asked).
    state_secs: u64,
    #[serde(skip)]
    state_since: Option<std::time::Instant>,
    /// Times the upstream was started again after it ended, failed or hung.
    restarts: u64,
    last_error: Option<String>,
    /// Tools exposed as procedures `NAME.<tool>`.
    tools: Vec<String>,
    /// Prompts exposed as procedures `NAME.<prompt>`.
    prompts: Vec<String>,
    /// Resources' URIs and templates exposed.
    resources: Vec<String>,
    /// Tools whose definition changed since pinned: hidden until `fovea mcp approve NAME`.
    held_back: Vec<String>,
    /// Definition changes held back since the attachment started (counted once per new hash).
    definition_changes: u64,
    /// Tools refused, with why (invisible characters, size, shape).
    refused: BTreeMap<String, String>,
    calls: u64,
    call_errors: u64,
}

type SharedStatus = Arc<Mutex<Status>>;

impl Status {
    fn set_state(&mut self, state: &'static str) {
        self.state = state;
        self.state_since = Some(std::time::Instant::now());
    }
}

/// Answers `NAME.$status` until the client closes.
async fn serve_status(mut reg: Registration, status: SharedStatus) {
    while let Some(req) = reg.next().await {
        let body = {
            let mut s = lock(&status);
            s.state_secs = s.state_since.map_or(0, |t| t.elapsed().as_secs());
            serde_json::to_vec(&*s).unwrap_or_default()
        };
        let headers = Headers::from_pairs([("content-type", "application/json")]).unwrap_or_default();
        req.respond_with_headers(headers, body);
    }
}

/// The procedure an attachment answers status calls on.
fn status_procedure(name: &str) -> String {
    format!("{name}.$status")
}

/// `fovea mcp status NAME`.
pub async fn status(args: McpStatusArgs) -> anyhow::Result<()> {
    fovea_client::Procedure::new(&args.name)
        .map_err(|e| anyhow::anyhow!("invalid attachment name {:?}: it {e}", args.name))?;
    let client = connect(&args.client, "fovea-mcp-status").await?;
    let result = client.call(&status_procedure(&args.name), Vec::new(), Duration::from_secs(5)).await;
    client.close().await;
    let response = match result {
        Err(fovea_client::ClientError::NoProvider(_)) => anyhow::bail!(
            "no attachment {:?} is running in realm {:?}: start one with `fovea mcp attach {} -- COMMAND`",
            args.name,
            args.client.realm,
            args.name
        ),
        r => r?,
    };
    if args.json {
        println!("{}", String::from_utf8_lossy(&response.payload));
        return Ok(());
    }
    let s: Value = serde_json::from_slice(&response.payload).context("the attachment's status is not JSON")?;
    let text = |k: &str| s[k].as_str().unwrap_or("?").to_owned();
    let list = |k: &str| {
        let items: Vec<&str> = s[k].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(", ")
        }
    };
    println!(
        "{} ({}): {} for {}s, upstream {}",
        text("name"),
        text("replica"),
        text("state"),
        s["state_secs"],
        text("upstream")
    );
    println!("  restarts: {}", s["restarts"]);
    if let Some(e) = s["last_error"].as_str() {
        println!("  last error: {e}");
    }
    println!("  tools: {}", list("tools"));
    println!("  prompts: {}", list("prompts"));
    println!("  resources: {}", list("resources"));
    println!("  held back (changed; `fovea mcp approve {}` exposes them): {}", text("name"), list("held_back"));
    println!("  definition changes held back since start: {}", s["definition_changes"]);
    for (tool, why) in s["refused"].as_object().into_iter().flatten() {
        println!("  refused {tool}: {}", why.as_str().unwrap_or("?"));
    }
    println!("  calls: {} ({} failed)", s["calls"], s["call_errors"]);
    Ok(())
}

/// The pins of one attachment: tool → hash of its definition, plus definitions waiting
/// for approval.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Pins {
    pinned: BTreeMap<String, String>,
    #[serde(default)]
    pending: BTreeMap<String, String>,
}

fn pins_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("mcp-pins").join(format!("{name}.json"))
}

fn load_pins(path: &Path) -> Pins {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

fn save_pins(path: &Path, pins: &Pins) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(pins)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The hash a definition is pinned by: SHA-256 over its name, description and schemas.
fn definition_hash(tool: &Tool) -> String {
    let text = json!([tool.name, tool.description, tool.input_schema, tool.output_schema]).to_string();
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The descriptor fovea registers for an upstream prompt, resource or template (`kind`),
/// from rmcp's object of it: the keys a descriptor of that kind holds, or why it is refused.
fn descriptor_of_entry(kind: Kind, object: &impl serde::Serialize) -> Result<Value, String> {
    let v = serde_json::to_value(object).map_err(|e| e.to_string())?;
    let Value::Object(all) = v else { return Err("not an object".into()) };
    let mut d: serde_json::Map<String, Value> =
        all.into_iter().filter(|(k, _)| kind.keys().contains(&k.as_str()) && k != "kind").collect();
    d.insert("kind".into(), kind.as_str().into());
    if kind == Kind::Prompt && !d.contains_key("description") {
        d.insert("description".into(), "(no description given upstream)".into());
    }
    let raw = serde_json::to_vec(&d).map_err(|e| e.to_string())?;
    Descriptor::parse(&raw).map(|d| Value::Object(d.json().clone())).map_err(|e| e.to_string())
}

/// The hash a prompt's, resource's or template's definition is pinned by: SHA-256 over its
/// descriptor (every text an agent reads).
fn entry_hash(descriptor: &Value) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, descriptor.to_string().as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// What an attached procedure stands for upstream.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Tool(String),
    Prompt(String),
    /// A resource or template: its reads name their URI themselves.
    Resource,
}

/// The descriptor fovea registers for an upstream tool, or why it is refused (size,
/// invisible characters, shape).
fn descriptor_of(tool: &Tool) -> Result<Value, String> {
    let mut v = serde_json::to_value(tool).map_err(|e| e.to_string())?;
    let Some(obj) = v.as_object_mut() else { return Err("not an object".into()) };
    obj.remove("name");
    if !obj.contains_key("description") {
        obj.insert("description".into(), format!("{} (no description given upstream)", tool.name).into());
    }
    let raw = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
    Descriptor::parse(&raw).map(|d| Value::Object(d.json().clone())).map_err(|e| e.to_string())
}

/// Routes the upstream's notifications to the calls in flight.
#[derive(Clone)]
struct Upstream {
    /// Progress token → the call's notice channel.
    calls: Arc<Mutex<HashMap<String, mpsc::Sender<Notice>>>>,
    /// Progress that arrived before its call registered its token (rmcp picks the token
    /// as it sends the request). On the single-threaded runtime `attach` uses, a call
    /// registers before any other task runs, so this stays empty; it is the defence should
    /// that change. At most [`EARLY_TOKENS`] tokens, oldest dropped.
    early: Arc<Mutex<std::collections::VecDeque<(String, Notice)>>>,
    list_changed: Arc<Notify>,
    /// URIs the upstream said were updated (`notifications/resources/updated`), to publish.
    updated: mpsc::Sender<String>,
    status: SharedStatus,
    /// The tool calls in flight that can ask their agent, by a number of their own, and
    /// by the upstream request id they wait on.
    askers: Arc<Mutex<Askers>>,
}

/// A question from the upstream for the agent behind a call: the MCP method, its params,
/// and where the answer goes.
type Question = (&'static str, Value, tokio::sync::oneshot::Sender<Result<Value, rmcp::ErrorData>>);

#[derive(Default)]
struct Askers {
    next: u64,
    calls: HashMap<u64, mpsc::Sender<Question>>,
    by_request: HashMap<String, u64>,
}

impl Upstream {
    /// Puts the upstream's question to the agent behind the call it belongs to. The call
    /// is the one whose response stream carried the question (streamable HTTP), else the
    /// only one in flight; with several and a transport that cannot tell (stdio), the
    /// question is declined rather than put to the wrong agent.
    async fn ask(
        &self,
        context: &rmcp::service::RequestContext<RoleClient>,
        method: &'static str,
        params: Value,
    ) -> Result<Value, rmcp::ErrorData> {
        let origin = match context.extensions.get::<rmcp::service::InboundStreamOrigin>() {
            Some(rmcp::service::InboundStreamOrigin::OutboundRequest(id)) => Some(id.to_string()),
            _ => None,
        };
        let asker = {
            let askers = lock(&self.askers);
            let by_origin = origin.and_then(|o| askers.by_request.get(&o)).and_then(|n| askers.calls.get(n));
            match by_origin {
                Some(tx) => Some(tx.clone()),
                None if askers.calls.len() == 1 => askers.calls.values().next().cloned(),
                None => None,
            }
        };
        let why = "no call of this attachment can be told to have asked (none in flight, or several over a \
                   transport that does not say which)";
        let asker = asker.ok_or_else(|| rmcp::ErrorData::new(rmcp::model::ErrorCode(-32601), why, None))?;
        let (back, answer) = tokio::sync::oneshot::channel();
        let gone = || rmcp::ErrorData::internal_error("the call ended before the agent answered", None);
        asker.send((method, params, back)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// What the agent answered, as rmcp's type `T`.
fn answered<T: serde::de::DeserializeOwned>(answer: Value) -> Result<T, rmcp::ErrorData> {
    serde_json::from_value(answer)
        .map_err(|e| rmcp::ErrorData::internal_error(format!("the agent's answer is not MCP: {e}"), None))
}

/// Most early progress notices kept.
const EARLY_TOKENS: usize = 256;

impl ClientHandler for Upstream {
    /// The attachment may ask what the agents behind its calls can answer: each question
    /// is passed to the agent of its call, which declines what it cannot.
    fn get_info(&self) -> rmcp::model::ClientConfig {
        let mut caps = rmcp::model::ClientCapabilities::default();
        caps.elicitation = Some(Default::default());
        #[allow(deprecated)]
        {
            caps.sampling = Some(Default::default());
            caps.roots = Some(Default::default());
        }
        let mut info = rmcp::model::ClientConfig::default();
        info.capabilities = caps;
        info
    }

    async fn create_elicitation(
        &self,
        request: rmcp::model::ElicitRequestParams,
        context: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::ElicitResult, rmcp::ErrorData> {
        let params = serde_json::to_value(&request).unwrap_or_default();
        answered(self.ask(&context, "elicitation/create", params).await?)
    }

    #[allow(deprecated)]
    async fn create_message(
        &self,
        request: rmcp::model::CreateMessageRequestParams,
        context: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::CreateMessageResult, rmcp::ErrorData> {
        let params = serde_json::to_value(&request).unwrap_or_default();
        answered(self.ask(&context, "sampling/createMessage", params).await?)
    }

    #[allow(deprecated)]
    async fn list_roots(
        &self,
        context: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::ListRootsResult, rmcp::ErrorData> {
        answered(self.ask(&context, "roots/list", json!({})).await?)
    }

    async fn on_progress(&self, p: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        let token = serde_json::to_value(&p.progress_token).ok().map(|t| t.to_string()).unwrap_or_default();
        let notice = Notice::Progress { progress: p.progress, total: p.total, message: p.message };
        let calls = lock(&self.calls);
        match calls.get(&token) {
            Some(tx) => {
                let _ = tx.try_send(notice);
            }
            None => {
                let mut early = lock(&self.early);
                if early.len() >= EARLY_TOKENS {
                    early.pop_front();
                }
                early.push_back((token, notice));
            }
        }
    }

    #[allow(deprecated)]
    async fn on_logging_message(&self, m: LoggingMessageNotificationParam, _: NotificationContext<RoleClient>) {
        // MCP logs belong to the session, not to a request: every call in flight gets them.
        let level = serde_json::to_value(m.level).ok().and_then(|l| l.as_str().map(str::to_owned));
        let Some(level) = level else { return };
        for tx in lock(&self.calls).values() {
            let _ = tx.try_send(Notice::Log { level: level.clone(), logger: m.logger.clone(), data: m.data.clone() });
        }
    }

    async fn on_tool_list_changed(&self, _: NotificationContext<RoleClient>) {
        self.list_changed.notify_one();
    }

    async fn on_prompt_list_changed(&self, _: NotificationContext<RoleClient>) {
        self.list_changed.notify_one();
    }

    async fn on_resource_list_changed(&self, _: NotificationContext<RoleClient>) {
        self.list_changed.notify_one();
    }

    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        // A full queue drops the update: agents are told at the next one.
        let _ = self.updated.try_send(params.uri);
    }
}

pub async fn approve(args: McpApproveArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(fovea_client::default_data_dir);
    let path = pins_path(&data_dir, &args.name);
    let mut pins = load_pins(&path);
    if pins.pending.is_empty() {
        println!("nothing to approve for {}: no definition changed", args.name);
        return Ok(());
    }
    for (key, hash) in std::mem::take(&mut pins.pending) {
        // Tools are pinned by name; prompts, resources and templates as `kind:name`.
        match key.split_once(':') {
            Some((kind, what)) => println!("approved the new definition of {} {kind} {what}", args.name),
            None => println!("approved the new definition of {}.{key}", args.name),
        }
        pins.pinned.insert(key, hash);
    }
    save_pins(&path, &pins)?;
    println!("the running attachment picks it up within a second");
    Ok(())
}

pub async fn attach(args: McpAttachArgs) -> anyhow::Result<()> {
    fovea_client::Procedure::new(&args.name)
        .map_err(|e| anyhow::anyhow!("invalid attachment name {:?}: it {e}", args.name))?;
    anyhow::ensure!(
        args.command.is_empty() != args.upstream_url.is_none(),
        "give the upstream server as `-- COMMAND [ARGS…]` (stdio) or `--upstream-url URL` (HTTP), one of the two"
    );
    let bearer = match &args.bearer_file {
        Some(f) => {
            Some(std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?.trim().to_owned())
        }
        None => None,
    };
    let data_dir = args.data_dir.clone().unwrap_or_else(fovea_client::default_data_dir);
    let pins_file = pins_path(&data_dir, &args.name);
    let client = connect(&args.client, &format!("fovea-mcp-attach-{}", args.name)).await?;
    eprintln!("attaching {} to {}", args.name, client.url());
    let status: SharedStatus = Arc::new(Mutex::new(Status {
        name: args.name.clone(),
        replica: format!("pid {} via {}", std::process::id(), client.url()),
        upstream: match &args.upstream_url {
            Some(url) => url.clone(),
            None => args.command.join(" "),
        },
        ..Status::default()
    }));
    lock(&status).set_state("starting");
    let procedure = status_procedure(&args.name);
    let reg = client.register(&procedure).await.with_context(|| format!("registering {procedure}"))?;
    tokio::spawn(serve_status(reg, status.clone()));
    let serving = serve_upstream(&args, bearer.as_deref(), &client, &pins_file, &status);
    if !args.exit_with_stdin {
        return serving.await;
    }
    tokio::select! {
        r = serving => r,
        () = stdin_closed() => {
            eprintln!("{}: the node that started this attachment is gone; stopping", args.name);
            // Dropping the upstream above starts killing its process: let that run.
            tokio::time::sleep(Duration::from_millis(200)).await;
            client.close().await;
            Ok(())
        }
    }
}

/// Returns when stdin reaches its end (or cannot be read): the writer, the node that
/// started this process, has gone.
async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Keeps the upstream running (restarting it with backoff) and its tools registered.
async fn serve_upstream(
    args: &McpAttachArgs,
    bearer: Option<&str>,
    client: &Client,
    pins_file: &Path,
    status: &SharedStatus,
) -> anyhow::Result<()> {
    let mut delay = FIRST_RESTART;
    loop {
        let started = std::time::Instant::now();
        let why = match run_once(args, bearer, client, pins_file, status).await {
            Ok(()) => "the upstream MCP server ended".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if started.elapsed() > Duration::from_secs(10) {
            delay = FIRST_RESTART;
        }
        eprintln!("{}: {why}; restarting in {delay:?}", args.name);
        {
            let mut s = lock(status);
            s.set_state("restarting");
            s.last_error = Some(why);
            s.tools.clear();
            s.prompts.clear();
            s.resources.clear();
            s.restarts += 1;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RESTART);
    }
}

/// One life of the upstream: connect, register its tools, serve calls until it ends.
async fn run_once(
    args: &McpAttachArgs,
    bearer: Option<&str>,
    client: &Client,
    pins_file: &Path,
    status: &SharedStatus,
) -> anyhow::Result<()> {
    let (updated, mut updates) = mpsc::channel(256);
    let handler = Upstream {
        calls: Arc::default(),
        early: Arc::default(),
        list_changed: Arc::default(),
        updated,
        status: status.clone(),
        askers: Arc::default(),
    };
    let upstream: RunningService<RoleClient, Upstream> = match &args.upstream_url {
        Some(url) => {
            let mut config =
                rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(url.as_str());
            if let Some(b) = bearer {
                config = config.auth_header(b.to_owned());
            }
            // One crypto provider in the process: ring, as for QUIC (a second install is a no-op).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let http = reqwest::Client::builder().build().context("setting up the HTTP client (TLS)")?;
            let transport = rmcp::transport::StreamableHttpClientTransport::with_client(http, config);
            handler.clone().serve(transport).await.context("connecting to the upstream MCP server")?
        }
        None => {
            let mut cmd = tokio::process::Command::new(&args.command[0]);
            cmd.args(&args.command[1..]).stderr(std::process::Stdio::inherit()).kill_on_drop(true);
            let transport = rmcp::transport::TokioChildProcess::new(cmd).context("starting the upstream MCP server")?;
            handler.clone().serve(transport).await.context("the upstream MCP server's handshake")?
        }
    };
    let upstream = Arc::new(upstream);
    lock(status).set_state("connected");
    let mut registered: HashMap<String, Registered> = HashMap::new();
    let mut pins_seen = std::fs::metadata(pins_file).and_then(|m| m.modified()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let ping_timeout = args.ping_interval / 2;
    let mut ping = tokio::time::interval(args.ping_interval.max(Duration::from_millis(100)));
    ping.reset();
    let mut refresh = true;
    let result = loop {
        if refresh {
            refresh = false;
            if let Err(e) = sync_entries(args, client, &upstream, &handler, pins_file, &mut registered).await {
                break Err(e);
            }
        }
        tokio::select! {
            () = handler.list_changed.notified() => refresh = true,
            Some(uri) = updates.recv() => {
                if let Some(procedure) = serving_procedure(&registered, &uri) {
                    if let Err(e) = client.resource_updated(&procedure, &uri).await {
                        eprintln!("{}: the update of {uri} could not be published: {e}", args.name);
                    }
                }
            }
            _ = ping.tick() => {
                let request = ClientRequest::PingRequest(rmcp::model::PingRequest {
                    method: Default::default(),
                    extensions: Default::default(),
                });
                let mut options = PeerRequestOptions::no_options();
                options.timeout = Some(ping_timeout);
                let answered = match upstream.peer().send_request_with_option(request, options).await {
                    Ok(handle) => handle.await_response().await.is_ok(),
                    Err(_) => false,
                };
                if !answered {
                    break Err(anyhow::anyhow!("the upstream MCP server did not answer a ping within {ping_timeout:?}: hung"));
                }
            }
            _ = tick.tick() => {
                if upstream.is_transport_closed() {
                    break Ok(());
                }
                // `fovea mcp approve` rewrote the pins.
                let now = std::fs::metadata(pins_file).and_then(|m| m.modified()).ok();
                if now != pins_seen {
                    pins_seen = now;
                    refresh = true;
                }
            }
        }
    };
    for (_, r) in registered.drain() {
        r.task.abort();
    }
    // Calls in flight end now, with an error, rather than at their deadlines.
    upstream.cancellation_token().cancel();
    result
}

/// One attached entry: the pin key it is registered under.
struct Registered {
    hash: String,
    procedure: String,
    descriptor: Value,
    task: tokio::task::JoinHandle<()>,
}

/// The procedure serving `uri`: its resource's, else the first template's that matches,
/// found as the node finds it (the core catalog's URI index and template matching).
fn serving_procedure(registered: &HashMap<String, Registered>, uri: &str) -> Option<String> {
    let mut catalog = Catalog::default();
    for r in registered.values() {
        if let Ok(d) = Descriptor::parse(&serde_json::to_vec(&r.descriptor).unwrap_or_default()) {
            catalog.insert(&r.procedure, 0, d);
        }
    }
    catalog
        .resource(uri, |_| true)
        .map(|(p, _)| p.to_owned())
        .or_else(|| catalog.template_for(uri, |_| true).map(|(p, ..)| p.to_owned()))
}

/// A short stable name for a URI in a procedure name (URIs are not procedure names).
fn uri_key(uri: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, uri.as_bytes());
    digest.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Most of the upstream's resources whose updates this attachment subscribes to.
const MAX_UPSTREAM_SUBSCRIPTIONS: usize = 256;

/// What the upstream lists, as (pin key, procedure, descriptor, hash, target), and what
/// it offers that is refused (pin key → why).
#[allow(clippy::type_complexity)]
async fn upstream_entries(
    args: &McpAttachArgs,
    upstream: &RunningService<RoleClient, Upstream>,
) -> anyhow::Result<(Vec<(String, String, Value, String, Target)>, BTreeMap<String, String>)> {
    let caps = upstream.peer_info().map(|i| i.capabilities.clone()).unwrap_or_default();
    let mut out = Vec::new();
    let mut refused = BTreeMap::new();
    let tools = upstream.list_all_tools().await.context("listing the upstream's tools")?;
    let tool_names: std::collections::HashSet<String> = tools.iter().map(|t| t.name.to_string()).collect();
    for tool in &tools {
        let name = tool.name.to_string();
        let procedure = format!("{}.{name}", args.name);
        let why = if name.chars().any(fovea_core::tool::is_hidden) {
            Some("its name holds invisible characters".to_owned())
        } else if name.starts_with('$') || fovea_client::Procedure::new(&procedure).is_err() {
            Some(
                "its name cannot be a procedure name (MCP tool names are letters, digits, `_`, `-` and `.`)".to_owned(),
            )
        } else {
            None
        };
        match why.map_or_else(|| descriptor_of(tool), Err) {
            Ok(d) => out.push((name.clone(), procedure, d, definition_hash(tool), Target::Tool(name))),
            Err(why) => {
                refused.insert(name, why);
            }
        }
    }
    // A prompt, resource or template: its descriptor, or why it is refused.
    let mut add = |key: String, procedure: String, described: Result<Value, String>, target: Target| match described {
        Ok(d) => {
            let hash = entry_hash(&d);
            out.push((key, procedure, d, hash, target));
        }
        Err(why) => {
            refused.insert(key, why);
        }
    };
    if caps.prompts.is_some() {
        for prompt in upstream.list_all_prompts().await.context("listing the upstream's prompts")? {
            let name = prompt.name.clone();
            let procedure = format!("{}.{name}", args.name);
            let described = if tool_names.contains(&name) {
                Err("a tool of the same name is attached: prompts and tools share the NAME.<name> procedures".into())
            } else if name.starts_with('$') || fovea_client::Procedure::new(&procedure).is_err() {
                Err("its name cannot be a procedure name".into())
            } else {
                descriptor_of_entry(Kind::Prompt, &prompt)
            };
            add(format!("prompt:{name}"), procedure, described, Target::Prompt(name));
        }
    }
    if caps.resources.is_some() {
        for r in upstream.list_all_resources().await.context("listing the upstream's resources")? {
            let procedure = format!("{}.resources.{}", args.name, uri_key(&r.uri));
            add(format!("resource:{}", r.uri), procedure, descriptor_of_entry(Kind::Resource, &r), Target::Resource);
        }
        for t in upstream.list_all_resource_templates().await.unwrap_or_default() {
            let procedure = format!("{}.templates.{}", args.name, uri_key(&t.uri_template));
            let described = descriptor_of_entry(Kind::ResourceTemplate, &t);
            add(format!("template:{}", t.uri_template), procedure, described, Target::Resource);
        }
    }
    Ok((out, refused))
}

/// Lists the upstream's tools, prompts, resources and templates and makes the
/// registrations match, holding back definitions that changed since they were pinned.
async fn sync_entries(
    args: &McpAttachArgs,
    client: &Client,
    upstream: &Arc<RunningService<RoleClient, Upstream>>,
    handler: &Upstream,
    pins_file: &Path,
    registered: &mut HashMap<String, Registered>,
) -> anyhow::Result<()> {
    let status = &handler.status;
    let (entries, refused) = upstream_entries(args, upstream).await?;
    for (key, why) in &refused {
        if !lock(status).refused.contains_key(key) {
            eprintln!("{}: upstream {key:?} refused: {why}", args.name);
        }
    }
    let mut pins = load_pins(pins_file);
    let mut dirty = false;
    let mut held_back = Vec::new();
    let mut wanted: HashMap<String, (String, String, Value, Target)> = HashMap::new();
    for (key, procedure, descriptor, hash, target) in entries {
        match pins.pinned.get(&key) {
            None if args.no_pin => {}
            None => {
                pins.pinned.insert(key.clone(), hash.clone());
                dirty = true;
            }
            Some(h) if *h == hash || args.no_pin => {
                if pins.pending.remove(&key).is_some() {
                    dirty = true;
                }
            }
            Some(_) => {
                if pins.pending.get(&key) != Some(&hash) {
                    eprintln!(
                        "{}: the definition of {key:?} changed upstream; it stays hidden until `fovea mcp approve {}`",
                        args.name, args.name
                    );
                    pins.pending.insert(key.clone(), hash.clone());
                    lock(status).definition_changes += 1;
                    dirty = true;
                }
                held_back.push(key);
                continue;
            }
        }
        wanted.insert(key, (hash, procedure, descriptor, target));
    }
    if dirty {
        save_pins(pins_file, &pins)?;
    }
    registered.retain(|key, r| {
        let keep = wanted.get(key).is_some_and(|(h, ..)| *h == r.hash);
        if !keep {
            r.task.abort();
        }
        keep
    });
    let can_subscribe =
        upstream.peer_info().and_then(|i| i.capabilities.resources.as_ref().and_then(|r| r.subscribe)).unwrap_or(false);
    let mut subscribed = 0;
    for (key, (hash, procedure, descriptor, target)) in wanted {
        if registered.contains_key(&key) {
            continue;
        }
        let reg = client
            .register_described(&procedure, &descriptor)
            .await
            .with_context(|| format!("registering {procedure}"))?;
        // Agents anywhere may watch a resource: ask the upstream for its updates.
        if let (true, Some(uri)) = (can_subscribe, descriptor.get("uri").and_then(Value::as_str)) {
            if subscribed < MAX_UPSTREAM_SUBSCRIPTIONS {
                subscribed += 1;
                #[allow(deprecated)]
                let _ = upstream.subscribe(rmcp::model::SubscribeRequestParams::new(uri)).await;
            } else if subscribed == MAX_UPSTREAM_SUBSCRIPTIONS {
                subscribed += 1;
                eprintln!(
                    "{}: over {MAX_UPSTREAM_SUBSCRIPTIONS} resources: the rest are attached without upstream updates",
                    args.name
                );
            }
        }
        let task = tokio::spawn(serve_entry(reg, target, upstream.clone(), handler.clone()));
        registered.insert(key, Registered { hash, procedure, descriptor, task });
    }
    let named = |kind: Option<&str>| {
        let mut v: Vec<String> = registered
            .iter()
            .filter(|(_, r)| r.descriptor.get("kind").and_then(Value::as_str) == kind)
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    };
    let (tools, prompts) = (named(None), named(Some("prompt")));
    let mut resources = named(Some("resource"));
    resources.extend(named(Some("resourceTemplate")));
    eprintln!(
        "{}: {} tools, {} prompts, {} resources and templates attached",
        args.name,
        tools.len(),
        prompts.len(),
        resources.len()
    );
    let strip = |v: Vec<String>| -> Vec<String> {
        v.into_iter().map(|k| k.split_once(':').map_or(k.clone(), |(_, rest)| rest.to_owned())).collect()
    };
    let mut s = lock(status);
    s.tools = tools;
    s.prompts = strip(prompts);
    s.resources = strip(resources);
    s.held_back = held_back;
    s.refused = refused;
    Ok(())
}

/// Serves the calls of one attached entry: tool calls, or the MCP methods of a prompt,
/// resource or template.
async fn serve_entry(
    mut reg: Registration,
    target: Target,
    upstream: Arc<RunningService<RoleClient, Upstream>>,
    handler: Upstream,
) {
    while let Some(req) = reg.next().await {
        match &target {
            Target::Tool(tool) => {
                tokio::spawn(call_upstream(req, tool.clone(), upstream.clone(), handler.clone()));
            }
            _ => {
                tokio::spawn(method_upstream(req, target.clone(), upstream.clone(), handler.clone()));
            }
        }
    }
}

/// A `resources/read`, `prompts/get` or `completion/complete` passed to the upstream; its
/// result goes back whole, its errors as the codes agents see again (`NOT_FOUND`,
/// `INVALID_ARGUMENTS` for the upstream's `-32602`).
async fn method_upstream(
    req: Request,
    target: Target,
    upstream: Arc<RunningService<RoleClient, Upstream>>,
    handler: Upstream,
) {
    lock(&handler.status).calls += 1;
    let params: Value = serde_json::from_slice(&req.payload).unwrap_or_default();
    let timeout = req.deadline().saturating_duration_since(tokio::time::Instant::now());
    let text = |k: &str| params.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let asked = async {
        match (req.mcp_method(), &target) {
            (Some(McpMethod::ReadResource), _) => {
                let r = upstream.read_resource(rmcp::model::ReadResourceRequestParams::new(text("uri"))).await?;
                Ok(serde_json::to_vec(&r).unwrap_or_default())
            }
            (Some(McpMethod::GetPrompt), Target::Prompt(name)) => {
                let mut p = rmcp::model::GetPromptRequestParams::new(name.clone());
                p.arguments = params.get("arguments").and_then(Value::as_object).cloned();
                let r = upstream.get_prompt(p).await?;
                Ok(serde_json::to_vec(&r).unwrap_or_default())
            }
            (Some(McpMethod::Complete), _) => {
                let mut p: rmcp::model::CompleteRequestParams = serde_json::from_value(params.clone())
                    .map_err(|e| rmcp::ServiceError::McpError(rmcp::ErrorData::invalid_params(e.to_string(), None)))?;
                // Agents name the prompt as the mesh does; upstream it has its own name.
                if let (rmcp::model::Reference::Prompt(r), Target::Prompt(name)) = (&mut p.r#ref, &target) {
                    r.name = name.clone();
                }
                let r = upstream.complete(p).await?;
                Ok(serde_json::to_vec(&r).unwrap_or_default())
            }
            _ => Err(rmcp::ServiceError::McpError(rmcp::ErrorData::invalid_request("not served here", None))),
        }
    };
    let outcome: Result<Result<Vec<u8>, rmcp::ServiceError>, _> = tokio::time::timeout(timeout, asked).await;
    let fail = |req: Request, code: ErrorCode, message: &str| {
        lock(&handler.status).call_errors += 1;
        req.fail_with_code(code.to_u64(), message);
    };
    match outcome {
        Ok(Ok(body)) if body.len() > MAX_RESULT => fail(
            req,
            ErrorCode::ApplicationError,
            &format!("the upstream's result is {} bytes; the limit is {MAX_RESULT}", body.len()),
        ),
        Ok(Ok(body)) => {
            let headers = Headers::from_pairs([("content-type", MCP_RESULT_TYPE)]).unwrap_or_default();
            req.respond_with_headers(headers, body);
        }
        Ok(Err(rmcp::ServiceError::McpError(e))) if e.code.0 == -32602 => {
            let code = if req.mcp_method() == Some(McpMethod::ReadResource) {
                ErrorCode::NotFound
            } else {
                ErrorCode::InvalidArguments
            };
            fail(req, code, &e.message)
        }
        Ok(Err(e)) => fail(req, ErrorCode::ApplicationError, &format!("the upstream MCP server failed: {e}")),
        Err(_) => fail(req, ErrorCode::ApplicationError, "the upstream MCP server did not answer before the deadline"),
    }
}

async fn call_upstream(
    mut req: Request,
    tool: String,
    upstream: Arc<RunningService<RoleClient, Upstream>>,
    handler: Upstream,
) {
    lock(&handler.status).calls += 1;
    let fail = |req: Request, message: &str| {
        lock(&handler.status).call_errors += 1;
        req.fail(message);
    };
    let body = match req.read_body(MAX_ARGUMENTS).await {
        Ok(b) => b,
        Err(e) => return fail(req, &format!("the arguments could not be read: {e}")),
    };
    let arguments = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(a)) => a,
        Ok(Value::Null) | Err(_) if body.is_empty() => Default::default(),
        _ => return fail(req, "the arguments must be a JSON object"),
    };
    let mut params = CallToolRequestParams::new(tool);
    params.arguments = Some(arguments);
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
    let timeout = req.deadline().saturating_duration_since(tokio::time::Instant::now());
    let mut options = PeerRequestOptions::no_options();
    options.timeout = Some(timeout);
    // The call can be asked from the moment the upstream has its request.
    let (questions, mut asked) = mpsc::channel::<Question>(fovea_node::mcp::MAX_QUESTIONS_PER_CALL);
    let asker = {
        let mut askers = lock(&handler.askers);
        askers.next += 1;
        let n = askers.next;
        askers.calls.insert(n, questions);
        n
    };
    let forget = || {
        let mut askers = lock(&handler.askers);
        askers.calls.remove(&asker);
        askers.by_request.retain(|_, n| *n != asker);
    };
    let handle = match upstream.peer().send_request_with_option(request, options).await {
        Ok(h) => h,
        Err(e) => {
            forget();
            return fail(req, &format!("the upstream MCP server is not available: {e}"));
        }
    };
    lock(&handler.askers).by_request.insert(handle.id.to_string(), asker);
    let token = serde_json::to_value(&handle.progress_token).ok().map(|t| t.to_string()).unwrap_or_default();
    let (tx, mut rx) = mpsc::channel(64);
    {
        // Under the `calls` lock, so no notice for this token can slip between the two.
        let mut calls = lock(&handler.calls);
        let mut early = lock(&handler.early);
        for (_, n) in early.iter().filter(|(t, _)| *t == token) {
            let _ = tx.try_send(n.clone());
        }
        early.retain(|(t, _)| *t != token);
        calls.insert(token.clone(), tx);
    }
    let id = handle.id.clone();
    let answer = handle.await_response();
    tokio::pin!(answer);
    // The upstream's questions, each asked of the call's agent through the mesh.
    let mut asking = futures_util::stream::FuturesUnordered::new();
    let outcome = loop {
        tokio::select! {
            // Notices first: those that came before the answer go before it.
            biased;
            Some(n) = rx.recv() => req.notify(&n),
            Some((method, params, back)) = asked.recv() => {
                let req = &req;
                asking.push(async move {
                    let answer = req.ask(method, params).await.map_err(|e| match e {
                        fovea_client::ClientError::NotAnswered { code, message } => {
                            rmcp::ErrorData::new(rmcp::model::ErrorCode(i32::try_from(code).unwrap_or(-32603)), message, None)
                        }
                        e => rmcp::ErrorData::internal_error(e.to_string(), None),
                    });
                    let _ = back.send(answer);
                });
            }
            Some(()) = futures_util::StreamExt::next(&mut asking), if !asking.is_empty() => {}
            r = &mut answer => break Some(r),
            () = req.cancelled() => break None,
        }
    };
    drop(asking);
    forget();
    // rmcp runs each notification handler in a task of its own; on this single-threaded
    // runtime (see main.rs) those spawned before the answer arrived have run by now, so
    // what they passed on is in `rx`.
    lock(&handler.calls).remove(&token);
    while let Ok(n) = rx.try_recv() {
        req.notify(&n);
    }
    match outcome {
        None => {
            let cancel = CancelledNotificationParam::new(Some(id), Some("the caller cancelled".into()));
            let _ = upstream.peer().notify_cancelled(cancel).await;
        }
        Some(Ok(ServerResult::CallToolResult(r))) => {
            let body = serde_json::to_vec(&r).unwrap_or_default();
            if body.len() > MAX_RESULT {
                return fail(req, &format!("the upstream's result is {} bytes; the limit is {MAX_RESULT}", body.len()));
            }
            let headers = Headers::from_pairs([("content-type", TOOL_RESULT_TYPE)]).unwrap_or_default();
            req.respond_with_headers(headers, body);
        }
        Some(Ok(_)) => fail(req, "the upstream MCP server answered tools/call with something else"),
        Some(Err(e)) => fail(req, &format!("the upstream MCP server failed the call: {e}")),
    }
}
