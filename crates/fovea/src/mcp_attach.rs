//! `fovea mcp attach`: an existing MCP server becomes a mesh service. Each upstream tool is
//! registered as the procedure `NAME.<tool>` with its descriptor, so every service can
//! call it and every agent on every node sees it; two attachments of one NAME share calls
//! through ordinary RPC balancing.
//!
//! Trust: a tool's description is prompt input for every agent of the realm, so each
//! definition is pinned when first seen (`pins/NAME.json` in the data dir: a hash of name,
//! description and schemas). A changed definition is not exposed until an operator runs
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
use fovea_client::{Client, Headers, Notice, Registration, Request};
use fovea_core::tool::{Descriptor, TOOL_RESULT_TYPE};
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
    status: SharedStatus,
}

/// Most early progress notices kept.
const EARLY_TOKENS: usize = 256;

impl ClientHandler for Upstream {
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
}

pub async fn approve(args: McpApproveArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.unwrap_or_else(fovea_client::default_data_dir);
    let path = pins_path(&data_dir, &args.name);
    let mut pins = load_pins(&path);
    if pins.pending.is_empty() {
        println!("nothing to approve for {}: no tool definition changed", args.name);
        return Ok(());
    }
    for (tool, hash) in std::mem::take(&mut pins.pending) {
        println!("approved the new definition of {}.{tool}", args.name);
        pins.pinned.insert(tool, hash);
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
    let handler =
        Upstream { calls: Arc::default(), early: Arc::default(), list_changed: Arc::default(), status: status.clone() };
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
    let mut registered: HashMap<String, (String, tokio::task::JoinHandle<()>)> = HashMap::new();
    let mut pins_seen = std::fs::metadata(pins_file).and_then(|m| m.modified()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let ping_timeout = args.ping_interval / 2;
    let mut ping = tokio::time::interval(args.ping_interval.max(Duration::from_millis(100)));
    ping.reset();
    let mut refresh = true;
    let result = loop {
        if refresh {
            refresh = false;
            if let Err(e) = sync_tools(args, client, &upstream, &handler, pins_file, &mut registered).await {
                break Err(e);
            }
        }
        tokio::select! {
            () = handler.list_changed.notified() => refresh = true,
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
    for (_, (_, task)) in registered.drain() {
        task.abort();
    }
    // Calls in flight end now, with an error, rather than at their deadlines.
    upstream.cancellation_token().cancel();
    result
}

/// Lists the upstream's tools and makes the registrations match, holding back definitions
/// that changed since they were pinned.
async fn sync_tools(
    args: &McpAttachArgs,
    client: &Client,
    upstream: &Arc<RunningService<RoleClient, Upstream>>,
    handler: &Upstream,
    pins_file: &Path,
    registered: &mut HashMap<String, (String, tokio::task::JoinHandle<()>)>,
) -> anyhow::Result<()> {
    let status = &handler.status;
    let tools = upstream.list_all_tools().await.context("listing the upstream's tools")?;
    let mut pins = load_pins(pins_file);
    let mut dirty = false;
    let mut refused = BTreeMap::new();
    let mut held_back = Vec::new();
    let mut wanted: HashMap<String, (String, Value)> = HashMap::new();
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
        let descriptor = match why.map_or_else(|| descriptor_of(tool), Err) {
            Ok(d) => d,
            Err(why) => {
                if !lock(status).refused.contains_key(&name) {
                    eprintln!("{}: upstream tool {name:?} refused: {why}", args.name);
                }
                refused.insert(name, why);
                continue;
            }
        };
        let hash = definition_hash(tool);
        match pins.pinned.get(&name) {
            None if args.no_pin => {}
            None => {
                pins.pinned.insert(name.clone(), hash.clone());
                dirty = true;
            }
            Some(h) if *h == hash || args.no_pin => {
                if pins.pending.remove(&name).is_some() {
                    dirty = true;
                }
            }
            Some(_) => {
                if pins.pending.get(&name) != Some(&hash) {
                    eprintln!(
                        "{}: the definition of tool {name:?} changed upstream; it stays hidden until `fovea mcp approve {}`",
                        args.name, args.name
                    );
                    pins.pending.insert(name.clone(), hash.clone());
                    lock(status).definition_changes += 1;
                    dirty = true;
                }
                held_back.push(name);
                continue;
            }
        }
        wanted.insert(name, (hash, descriptor));
    }
    if dirty {
        save_pins(pins_file, &pins)?;
    }
    registered.retain(|name, (hash, task)| {
        let keep = wanted.get(name).is_some_and(|(h, _)| h == hash);
        if !keep {
            task.abort();
        }
        keep
    });
    for (name, (hash, descriptor)) in wanted {
        if registered.contains_key(&name) {
            continue;
        }
        let procedure = format!("{}.{name}", args.name);
        let reg =
            client.register_tool(&procedure, &descriptor).await.with_context(|| format!("registering {procedure}"))?;
        let task = tokio::spawn(serve_tool(reg, name.clone(), upstream.clone(), handler.clone()));
        registered.insert(name, (hash, task));
    }
    eprintln!("{}: {} tools attached", args.name, registered.len());
    let mut s = lock(status);
    s.tools = registered.keys().cloned().collect();
    s.tools.sort();
    s.held_back = held_back;
    s.refused = refused;
    Ok(())
}

/// Serves the calls of one upstream tool.
async fn serve_tool(
    mut reg: Registration,
    tool: String,
    upstream: Arc<RunningService<RoleClient, Upstream>>,
    handler: Upstream,
) {
    while let Some(req) = reg.next().await {
        tokio::spawn(call_upstream(req, tool.clone(), upstream.clone(), handler.clone()));
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
    let handle = match upstream.peer().send_request_with_option(request, options).await {
        Ok(h) => h,
        Err(e) => return fail(req, &format!("the upstream MCP server is not available: {e}")),
    };
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
    let outcome = loop {
        tokio::select! {
            // Notices first: those that came before the answer go before it.
            biased;
            Some(n) = rx.recv() => req.notify(&n),
            r = &mut answer => break Some(r),
            () = req.cancelled() => break None,
        }
    };
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
