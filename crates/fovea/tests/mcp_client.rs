//! The MCP front ends driven by a real MCP client (rmcp's), as agents drive them: over
//! HTTP against a node's endpoint, and over stdio against `fovea mcp`.

mod common;

use std::sync::{Arc, Mutex};

use common::{TestNode, WAIT};
use fovea_client::{Client, Headers, Notice};
use rmcp::model::{CallToolRequestParams, CancelledNotificationParam, ClientRequest, ProgressNotificationParam};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Value};
use tokio::sync::Notify;

/// Records what the server sends the client on its own.
#[derive(Clone, Default)]
struct Recorder {
    progress: Arc<Mutex<Vec<f64>>>,
    list_changed: Arc<Notify>,
}

impl ClientHandler for Recorder {
    async fn on_progress(&self, params: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        self.progress.lock().unwrap().push(params.progress);
    }

    async fn on_tool_list_changed(&self, _: NotificationContext<RoleClient>) {
        self.list_changed.notify_one();
    }
}

fn params(name: &str, arguments: Value) -> CallToolRequestParams {
    let Value::Object(arguments) = arguments else { panic!("arguments must be an object") };
    let mut p = CallToolRequestParams::new(name.to_owned());
    p.arguments = Some(arguments);
    p
}

/// A service with the tools the tests call: text, rich content, failure, progress, slow.
/// The returned pair fires when a call of `demo.slow` starts, and when it is cancelled at
/// the provider.
async fn serve_tools(client: &Client) -> (Vec<tokio::task::JoinHandle<()>>, Arc<(Notify, Notify)>) {
    let mut tasks = Vec::new();
    let tools = [
        ("demo.echo", json!({"description": "Echoes.", "inputSchema": {"type": "object"}})),
        ("demo.image", json!({"description": "A picture."})),
        ("demo.fail", json!({"description": "Fails."})),
        ("demo.steps", json!({"description": "Reports progress."})),
        ("demo.slow", json!({"description": "Never answers; watches for cancellation."})),
    ];
    let slow = Arc::new((Notify::new(), Notify::new()));
    for (name, d) in tools {
        let mut reg = client.register_tool(name, &d).await.unwrap();
        let slow = slow.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(req) = reg.next().await {
                match name {
                    "demo.echo" => {
                        let p = req.payload.clone();
                        req.respond(p)
                    }
                    "demo.image" => {
                        let h = Headers::from_pairs([("content-type", "application/mcp-tool-result+json")]).unwrap();
                        let r = json!({"content": [{"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"},
                                                   {"type": "text", "text": "a tiny picture"}]});
                        req.respond_with_headers(h, r.to_string());
                    }
                    "demo.fail" => req.fail("no luck"),
                    "demo.steps" => {
                        for i in 1..=3 {
                            req.notify(&Notice::Progress { progress: f64::from(i), total: Some(3.0), message: None });
                        }
                        req.respond("done");
                    }
                    _ => {
                        slow.0.notify_one();
                        req.cancelled().await;
                        slow.1.notify_one();
                    }
                }
            }
        }));
    }
    (tasks, slow)
}

async fn exercise(client: &RunningService<RoleClient, Recorder>, recorder: &Recorder, service: &Client) {
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(names, ["demo__echo", "demo__fail", "demo__image", "demo__slow", "demo__steps"]);

    let echo = client.call_tool(params("demo__echo", json!({"x": 1}))).await.unwrap();
    assert_eq!(echo.structured_content, Some(json!({"x": 1})));
    assert_ne!(echo.is_error, Some(true));

    let image = client.call_tool(params("demo__image", json!({}))).await.unwrap();
    let image = serde_json::to_value(&image).unwrap();
    assert_eq!(image["content"][0]["type"], "image");
    assert_eq!(image["content"][0]["mimeType"], "image/png");
    assert_eq!(image["content"][1]["text"], "a tiny picture");

    let failed = client.call_tool(params("demo__fail", json!({}))).await.unwrap();
    assert_eq!(failed.is_error, Some(true));
    assert_eq!(serde_json::to_value(&failed).unwrap()["content"][0]["text"], "no luck");

    let unknown = client.call_tool(params("nope", json!({}))).await;
    assert!(unknown.is_err(), "an unknown tool is a protocol error");

    // rmcp's client gives every request a progress token.
    client.call_tool(params("demo__steps", json!({}))).await.unwrap();
    common::eventually("progress notifications", || recorder.progress.lock().unwrap().len() >= 3).await;

    // A new tool anywhere in the realm: list_changed.
    let _extra = service.register_tool("demo.extra", &json!({"description": "Later."})).await.unwrap();
    tokio::time::timeout(WAIT, recorder.list_changed.notified()).await.expect("tools/list_changed");
}

#[tokio::test]
async fn rmcp_client_over_http() {
    let node = TestNode::start().await;
    let service = node.client().await;
    let (_tasks, slow) = serve_tools(&service).await;
    let recorder = Recorder::default();
    // reqwest is built without a crypto provider of its own (fovea uses ring everywhere).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let transport = StreamableHttpClientTransport::from_uri(format!("http://{}/mcp", node.mcp));
    let client = recorder.clone().serve(transport).await.expect("MCP handshake over HTTP");
    exercise(&client, &recorder, &service).await;

    // Cancelling a request reaches the provider's handler.
    let request = ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params("demo__slow", json!({}))));
    let handle = client.peer().send_request_with_option(request, PeerRequestOptions::no_options()).await.unwrap();
    tokio::time::timeout(WAIT, slow.0.notified()).await.expect("the call reaches the provider");
    let cancel = CancelledNotificationParam::new(Some(handle.id.clone()), Some("user".into()));
    client.peer().notify_cancelled(cancel).await.unwrap();
    tokio::time::timeout(WAIT, slow.1.notified()).await.expect("the provider sees the cancellation");
    drop(handle);
    client.cancel().await.unwrap();
    node.stop().await;
}

/// rmcp's client on a node that hibernates sessions as soon as they idle: the client keeps
/// its session's GET stream open, so its session is never idle and never hibernates, and
/// its notifications flow as on any node.
#[tokio::test]
async fn rmcp_client_listening_keeps_its_session_live() {
    let mut config = fovea_node::McpConfig::new("127.0.0.1:0".parse().unwrap());
    config.hibernate_after = Some(std::time::Duration::ZERO);
    let node = TestNode::start_with_mcp(config).await;
    let service = node.client().await;
    let (_tasks, _slow) = serve_tools(&service).await;
    let recorder = Recorder::default();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let transport = StreamableHttpClientTransport::from_uri(format!("http://{}/mcp", node.mcp));
    let client = recorder.clone().serve(transport).await.expect("MCP handshake over HTTP");
    // Idle across several of the node's sweeps (100 ms apart) between requests.
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(client.list_all_tools().await.unwrap().len(), 5);
    }
    exercise(&client, &recorder, &service).await;
    assert_eq!(common::http::metric(node.admin, "fovea_mcp_hibernations_total").await, 0.0);
    client.cancel().await.unwrap();
    node.stop().await;
}

#[tokio::test]
async fn rmcp_client_over_stdio_against_fovea_mcp() {
    let node = TestNode::start().await;
    let service = node.client().await;
    let (_tasks, _) = serve_tools(&service).await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fovea"));
    cmd.args(["mcp", "--url", &node.url(), "--ca"]).arg(&node.cert).stderr(std::process::Stdio::null());
    let transport = TokioChildProcess::new(cmd).unwrap();
    let recorder = Recorder::default();
    let client = recorder.clone().serve(transport).await.expect("MCP handshake over stdio");
    exercise(&client, &recorder, &service).await;
    client.cancel().await.unwrap();
    node.stop().await;
}
