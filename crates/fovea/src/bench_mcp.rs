//! `fovea bench mcp`: MCP `tools/call`, `resources/read` and `prompts/get` over HTTP
//! against a node's endpoint, each served through the mesh's RPC by a provider connected to
//! the node.
//!
//! The HTTP client is a few lines of HTTP/1.1 with keep-alive on a plain socket, one
//! connection per caller, so what is measured is the node, not a client library.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fovea_client::{Client, ConnectOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection to an MCP endpoint.
pub(crate) struct Http {
    addr: String,
    stream: BufReader<TcpStream>,
    /// The 2025-11-25 session, when one was opened.
    session: Option<String>,
}

/// An HTTP answer: status, session header, body (de-chunked).
pub(crate) struct Answer {
    pub status: u16,
    pub session: Option<String>,
    pub body: String,
}

impl Http {
    pub(crate) async fn connect(endpoint: &str) -> anyhow::Result<Http> {
        let addr = endpoint.trim_start_matches("http://").trim_end_matches("/mcp").to_owned();
        let tcp = TcpStream::connect(&addr).await.with_context(|| format!("connecting to {endpoint}"))?;
        tcp.set_nodelay(true)?;
        Ok(Http { addr, stream: BufReader::new(tcp), session: None })
    }

    /// Opens a 2025-11-25 session on this connection.
    pub(crate) async fn initialize(&mut self) -> anyhow::Result<()> {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "fovea-bench", "version": "1"}}});
        let a = self.post(&init, "initialize", "", "2025-11-25").await?;
        anyhow::ensure!(a.status == 200, "initialize answered HTTP {}: {}", a.status, a.body);
        self.session = a.session;
        let done =
            self.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}), "", "", "2025-11-25").await?;
        anyhow::ensure!(done.status == 202, "initialized answered HTTP {}", done.status);
        Ok(())
    }

    pub(crate) async fn post(
        &mut self,
        body: &Value,
        method: &str,
        name: &str,
        version: &str,
    ) -> anyhow::Result<Answer> {
        let body = body.to_string();
        let mut req = format!(
            "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: {version}\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if !method.is_empty() && version.starts_with("2026") {
            req.push_str(&format!("Mcp-Method: {method}\r\n"));
            if !name.is_empty() {
                req.push_str(&format!("Mcp-Name: {name}\r\n"));
            }
        }
        if let Some(s) = &self.session {
            req.push_str(&format!("Mcp-Session-Id: {s}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        self.stream.get_mut().write_all(req.as_bytes()).await?;
        self.read_answer().await
    }

    async fn read_answer(&mut self) -> anyhow::Result<Answer> {
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 =
            line.split(' ').nth(1).and_then(|s| s.parse().ok()).context("a malformed HTTP status line")?;
        let (mut length, mut chunked, mut session) = (None, false, None);
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("the connection closed mid-answer");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let Some((k, v)) = l.split_once(':') else { continue };
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "mcp-session-id" => session = Some(v.trim().to_owned()),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line).await?;
                let n = usize::from_str_radix(line.trim(), 16).context("a malformed chunk size")?;
                let mut chunk = vec![0; n + 2];
                self.stream.read_exact(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.stream.read_exact(&mut body).await?;
        }
        Ok(Answer { status, session, body: String::from_utf8_lossy(&body).into_owned() })
    }
}

/// The JSON-RPC answer in an HTTP body (SSE `data:` lines or plain JSON).
pub(crate) fn response(body: &str) -> Option<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("id").is_some())
        .or_else(|| serde_json::from_str(body.trim()).ok())
}

/// What `bench mcp` measured.
pub(crate) struct McpRun {
    pub calls: usize,
    pub errors: u64,
    pub rate: f64,
    pub lat: Vec<u32>,
}

/// What a closed loop asks, back to back.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ask {
    /// `tools/call` of this tool.
    Tool(&'static str),
    /// `resources/read` of the provider's resource.
    Read,
    /// `prompts/get` of the provider's prompt.
    Prompt,
}

impl Ask {
    /// The method, its params and the `Mcp-Name` header of request `n` of `caller`.
    fn request(self, caller: usize, n: u64) -> (&'static str, Value, &'static str) {
        match self {
            Ask::Tool(tool) => ("tools/call", json!({"name": tool, "arguments": {"caller": caller, "n": n}}), tool),
            Ask::Read => ("resources/read", json!({"uri": BENCH_URI}), BENCH_URI),
            Ask::Prompt => {
                ("prompts/get", json!({"name": "bench__prompt", "arguments": {"topic": "mesh"}}), "bench__prompt")
            }
        }
    }
}

/// The URI of the provider's resource.
const BENCH_URI: &str = "bench://doc";

/// Closed loop: `callers` connections, each asking `ask` back to back for `duration`.
pub(crate) async fn closed_loop(
    endpoint: &str,
    ask: Ask,
    callers: usize,
    duration: Duration,
    legacy: bool,
    done: Arc<AtomicU64>,
) -> anyhow::Result<McpRun> {
    let version = if legacy { "2025-11-25" } else { "2026-07-28" };
    let mut tasks = Vec::new();
    let t0 = Instant::now();
    for i in 0..callers {
        let endpoint = endpoint.to_owned();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut http = Http::connect(&endpoint).await?;
            if legacy {
                http.initialize().await?;
            }
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            let mut id = 1u64;
            while t0.elapsed() < duration {
                let (method, mut params, name) = ask.request(i, id);
                if !legacy {
                    params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                             "io.modelcontextprotocol/clientCapabilities": {}});
                }
                let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
                let t = Instant::now();
                let a = http.post(&req, method, name, version).await?;
                // An upstream may leave `isError` out; only an explicit `true` is a failure.
                let ok = a.status == 200
                    && response(&a.body).is_some_and(|r| r.get("result").is_some() && r["result"]["isError"] != true);
                if ok {
                    lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                } else {
                    errors += 1;
                }
                done.fetch_add(1, Ordering::Relaxed);
                id += 1;
            }
            Ok::<_, anyhow::Error>((lat, errors))
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.context("caller task failed")??;
        lat.extend(l);
        errors += e;
    }
    let elapsed = t0.elapsed().as_secs_f64().max(1e-9);
    lat.sort_unstable();
    Ok(McpRun { calls: lat.len(), errors, rate: lat.len() as f64 / elapsed, lat })
}

/// A provider on the node at `url` of `bench.echo` (a tool echoing its arguments),
/// `bench.doc` (a resource of 64 bytes of text) and `bench.prompt` (a prompt).
pub(crate) async fn provider(url: &str, opts: ConnectOptions) -> anyhow::Result<Client> {
    let client = Client::connect(url, opts.name("bench-mcp-provider")).await?;
    let echo = client
        .register_tool(
            "bench.echo",
            &json!({"description": "Echoes its arguments (benchmark).", "inputSchema": {"type": "object"}}),
        )
        .await?;
    let doc = client.register_resource("bench.doc", &json!({"uri": BENCH_URI, "mimeType": "text/plain"})).await?;
    let prompt = client
        .register_prompt(
            "bench.prompt",
            &json!({"description": "Asks about a topic (benchmark).", "arguments": [{"name": "topic", "required": true}]}),
        )
        .await?;
    for mut reg in [echo, doc, prompt] {
        tokio::spawn(async move {
            while let Some(req) = reg.next().await {
                match req.mcp_method() {
                    None => {
                        let payload = req.payload.clone();
                        req.respond(payload);
                    }
                    Some(fovea_client::McpMethod::ReadResource) => {
                        req.respond("a resource of the benchmark, 64 bytes of text, served from the mesh")
                    }
                    Some(_) => req.respond("Tell me about the mesh."),
                }
            }
        });
    }
    Ok(client)
}

/// Opens `n` 2025-11-25 sessions and leaves them idle (they live on at the node until
/// reaped or deleted); returns their ids.
pub(crate) async fn open_sessions(endpoint: &str, n: usize, done: Arc<AtomicU64>) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    let mut http = Http::connect(endpoint).await?;
    for _ in 0..n {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "fovea-bench", "version": "1"}}});
        http.session = None;
        let a = http.post(&init, "initialize", "", "2025-11-25").await?;
        anyhow::ensure!(a.status == 200 && a.session.is_some(), "initialize answered HTTP {}: {}", a.status, a.body);
        http.session = a.session;
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        http.post(&note, "", "", "2025-11-25").await?;
        ids.extend(http.session.take());
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(ids)
}

/// The latency (µs, sorted) of one `ping` on each of `sessions` in turn: what an agent
/// waits for its first request after idling (a hibernated session is restored first).
pub(crate) async fn first_requests(endpoint: &str, sessions: &[String]) -> anyhow::Result<Vec<u32>> {
    let mut http = Http::connect(endpoint).await?;
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let mut lat = Vec::with_capacity(sessions.len());
    for id in sessions {
        http.session = Some(id.clone());
        let t = Instant::now();
        let a = http.post(&ping, "ping", "", "2025-11-25").await?;
        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        anyhow::ensure!(a.status == 200, "ping on an idle session answered HTTP {}: {}", a.status, a.body);
    }
    lat.sort_unstable();
    Ok(lat)
}

/// What an open-loop run measured.
pub(crate) struct OpenRun {
    pub offered: u64,
    /// Latencies of admitted calls, from their scheduled start (so a late send counts).
    pub admitted: Vec<u32>,
    /// Latencies of calls answered "busy".
    pub busy: Vec<u32>,
    /// The same two, from when the request was sent (the node's view; the difference is
    /// the generator's own backlog).
    pub admitted_sent: Vec<u32>,
    pub busy_sent: Vec<u32>,
    pub errors: u64,
    pub elapsed: f64,
}

/// Open loop: call `i` is due at `i / rate`; `conns` connections take calls in turn. Each
/// latency counts from when the call was due, so a generator that falls behind shows as
/// latency rather than hiding it (no coordinated omission).
pub(crate) async fn open_loop(
    endpoint: &str,
    rate: u64,
    duration: Duration,
    conns: usize,
    done: Arc<AtomicU64>,
) -> anyhow::Result<OpenRun> {
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let t0 = tokio::time::Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (endpoint, next, done) = (endpoint.to_owned(), next.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut http = Http::connect(&endpoint).await?;
            let (mut admitted, mut busy, mut errors) = (Vec::new(), Vec::new(), 0u64);
            let (mut admitted_sent, mut busy_sent) = (Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(due).await;
                let params = json!({"name": "bench__echo", "arguments": {"n": i},
                    "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                              "io.modelcontextprotocol/clientCapabilities": {}}});
                let req = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": params});
                let sent = tokio::time::Instant::now();
                let a = http.post(&req, "tools/call", "bench__echo", "2026-07-28").await?;
                let us = u32::try_from(due.elapsed().as_micros()).unwrap_or(u32::MAX);
                let us_sent = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                match response(&a.body) {
                    Some(r) if r["result"]["isError"] == false => {
                        admitted.push(us);
                        admitted_sent.push(us_sent);
                    }
                    Some(r) if r["result"]["content"][0]["text"].as_str().is_some_and(|t| t.starts_with("busy")) => {
                        busy.push(us);
                        busy_sent.push(us_sent);
                    }
                    _ => errors += 1,
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>((admitted, busy, admitted_sent, busy_sent, errors))
        }));
    }
    let mut run = OpenRun {
        offered: total,
        admitted: Vec::new(),
        busy: Vec::new(),
        admitted_sent: Vec::new(),
        busy_sent: Vec::new(),
        errors: 0,
        elapsed: 0.0,
    };
    for t in tasks {
        let (a, b, a_sent, b_sent, e) = t.await.context("caller task failed")??;
        run.admitted.extend(a);
        run.busy.extend(b);
        run.admitted_sent.extend(a_sent);
        run.busy_sent.extend(b_sent);
        run.errors += e;
    }
    run.elapsed = t0.elapsed().as_secs_f64().max(1e-9);
    for v in [&mut run.admitted, &mut run.busy, &mut run.admitted_sent, &mut run.busy_sent] {
        v.sort_unstable();
    }
    Ok(run)
}

/// A bare rmcp server with one tool, `echo`, on loopback HTTP: the upstream of
/// `bench mcp --upstream`. Returns its endpoint.
pub(crate) async fn bare_upstream() -> anyhow::Result<String> {
    use rmcp::model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult, PaginatedRequestParams,
        ServerCapabilities, ServerConfig, Tool,
    };
    use rmcp::service::RequestContext;
    use rmcp::transport::streamable_http_server::{
        session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
    };

    #[derive(Clone)]
    struct Echo;

    impl rmcp::ServerHandler for Echo {
        fn get_info(&self) -> ServerConfig {
            ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
        }

        async fn list_tools(
            &self,
            _: Option<PaginatedRequestParams>,
            _: RequestContext<rmcp::RoleServer>,
        ) -> Result<ListToolsResult, rmcp::ErrorData> {
            let tool: Tool = serde_json::from_value(json!({"name": "echo", "description": "Echoes its arguments.",
                "inputSchema": {"type": "object"}}))
            .map_err(|e| rmcp::ErrorData::internal_error(e.to_string(), None))?;
            Ok(ListToolsResult::with_all_items(vec![tool]))
        }

        async fn call_tool(
            &self,
            request: CallToolRequestParams,
            _: RequestContext<rmcp::RoleServer>,
        ) -> Result<CallToolResponse, rmcp::ErrorData> {
            let text = serde_json::to_string(&request.arguments.unwrap_or_default()).unwrap_or_default();
            Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
        }
    }

    let config = StreamableHttpServerConfig::default().with_json_response(true);
    let service: StreamableHttpService<Echo, LocalSessionManager> =
        StreamableHttpService::new(|| Ok(Echo), Arc::new(LocalSessionManager::default()), config);
    let app = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // As any good MCP server: without TCP_NODELAY, SSE answers wait for delayed ACKs.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/mcp"))
}
