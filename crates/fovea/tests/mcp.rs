//! The MCP front end, driven over HTTP as an agent drives it, with tools provided through
//! the SDK by services connected to real nodes on loopback.

mod common;

use common::http::Agent;
use common::{TestNode, WAIT};
use fovea_client::{Client, Notice, Registration, Request};
use serde_json::{json, Value};

async fn next_request(reg: &mut Registration) -> Request {
    tokio::time::timeout(WAIT, reg.next()).await.expect("request in time").expect("registration open")
}

fn adder() -> Value {
    json!({
        "description": "Adds two numbers.",
        "inputSchema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                        "required": ["a", "b"]},
    })
}

/// A provider of `math.add` that answers every call with `{"sum": a + b}`.
async fn serve_adder(client: &Client) -> tokio::task::JoinHandle<()> {
    let mut reg = client.register_tool("math.add", &adder()).await.expect("tool registered");
    tokio::spawn(async move {
        while let Some(req) = reg.next().await {
            let args: Value = serde_json::from_slice(&req.payload).unwrap();
            let sum = args["a"].as_f64().unwrap() + args["b"].as_f64().unwrap();
            req.respond(json!({ "sum": sum }).to_string());
        }
    })
}

#[tokio::test]
async fn agents_list_and_call_tools_that_services_provide() {
    let node = TestNode::start().await;
    let service = node.client().await;
    let _adder = serve_adder(&service).await;
    // A plain procedure is internal: not a tool.
    let _plain = service.register("internal.thing").await.unwrap();
    let mut agent = Agent::new(node.mcp);
    let init = agent.initialize().await;
    assert!(agent.session.is_some(), "a legacy session: {}", init.body);
    assert_eq!(init.result()["capabilities"]["tools"]["listChanged"], true);
    assert_eq!(init.result()["serverInfo"]["name"], "fovea");

    let list = agent.request(1, "tools/list", json!({})).await;
    let tools = list.result()["tools"].as_array().unwrap().clone();
    assert_eq!(tools.len(), 1, "only the tool: {tools:?}");
    assert_eq!(tools[0]["name"], "math__add");
    assert_eq!(tools[0]["description"], "Adds two numbers.");
    assert_eq!(tools[0]["_meta"]["io.fovea/procedure"], "math.add");
    assert_eq!(tools[0]["inputSchema"]["required"], json!(["a", "b"]));

    let call = agent.request(2, "tools/call", json!({"name": "math__add", "arguments": {"a": 2, "b": 40}})).await;
    let result = call.result();
    assert_eq!(result["isError"], false);
    assert_eq!(result["structuredContent"], json!({"sum": 42.0}));
    assert_eq!(result["content"][0]["type"], "text");

    // The SDK sees the same catalog.
    let listed = service.tools().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].procedure.as_str(), listed[0].name.as_str()), ("math.add", "math__add"));

    // Resources and prompts are declared, and empty.
    assert_eq!(agent.request(3, "resources/list", json!({})).await.result()["resources"], json!([]));
    assert_eq!(agent.request(4, "prompts/list", json!({})).await.result()["prompts"], json!([]));

    // DELETE ends the session; it is then unknown.
    assert!(agent.delete().await.status < 300);
    assert_eq!(agent.request(5, "tools/list", json!({})).await.status, 404);
    node.stop().await;
}

#[tokio::test]
async fn protocol_errors_and_execution_errors_are_told_apart() {
    let node = TestNode::start().await;
    let service = node.client().await;
    let mut reg = service
        .register_tool("svc.fails", &json!({"description": "Fails or hangs.", "inputSchema": {"type": "object"}}))
        .await
        .unwrap();
    let mut agent = Agent::new(node.mcp);
    agent.initialize().await;

    // Unknown tool and invalid arguments: JSON-RPC errors.
    let unknown = agent.request(1, "tools/call", json!({"name": "nope", "arguments": {}})).await;
    assert_eq!(unknown.response()["error"]["code"], -32602);
    let _adder = serve_adder(&service).await;
    let bad = agent.request(2, "tools/call", json!({"name": "math__add", "arguments": {"a": "x", "b": 1}})).await;
    assert_eq!(bad.response()["error"]["code"], -32602);
    assert!(bad.response()["error"]["message"].as_str().unwrap().contains("arguments.a"));

    // The provider fails: an error result carrying its message.
    let agent2 = agent.clone();
    let call =
        tokio::spawn(
            async move { agent2.request(3, "tools/call", json!({"name": "svc__fails", "arguments": {}})).await },
        );
    next_request(&mut reg).await.fail("the disk is full");
    let failed = call.await.unwrap();
    assert_eq!(failed.result()["isError"], true);
    assert_eq!(failed.result()["content"][0]["text"], "the disk is full");

    // The provider never answers: the deadline (3 s on test nodes) ends the call.
    let agent2 = agent.clone();
    let call =
        tokio::spawn(
            async move { agent2.request(4, "tools/call", json!({"name": "svc__fails", "arguments": {}})).await },
        );
    let hung = next_request(&mut reg).await;
    let timed_out = call.await.unwrap();
    assert_eq!(timed_out.result()["isError"], true);
    assert!(timed_out.result()["content"][0]["text"].as_str().unwrap().contains("deadline"));
    drop(hung);
    node.stop().await;
}

#[tokio::test]
async fn progress_and_logs_reach_the_agent_before_the_result() {
    let node = TestNode::start().await;
    let service = node.client().await;
    let mut reg = service.register_tool("job.run", &json!({"description": "A long job."})).await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = reg.next().await {
            for i in 1..=3 {
                req.notify(&Notice::Progress {
                    progress: f64::from(i),
                    total: Some(3.0),
                    message: Some(format!("step {i}")),
                });
            }
            req.notify(&Notice::Log { level: "info".into(), logger: Some("job".into()), data: json!("halfway") });
            req.respond("done");
        }
    });
    let mut agent = Agent::new(node.mcp);
    agent.initialize().await;
    // Legacy sessions get log lines on the session's GET stream (rmcp routes only progress
    // to the request's own stream); the 2026 era gets both on the request stream.
    let mut stream = agent.listen().await;
    let reply = agent
        .request(1, "tools/call", json!({"name": "job__run", "arguments": {}, "_meta": {"progressToken": "tok"}}))
        .await;
    let progress = reply.notifications("notifications/progress");
    assert_eq!(progress.len(), 3, "{}", reply.body);
    assert_eq!(progress[2]["params"]["progress"], 3.0);
    assert_eq!(progress[2]["params"]["total"], 3.0);
    assert_eq!(progress[0]["params"]["progressToken"], "tok");
    assert_eq!(progress[0]["params"]["message"], "step 1");
    let log = loop {
        let m = stream.next().await;
        if m["method"] == "notifications/message" {
            break m;
        }
    };
    assert_eq!(log["params"]["data"], "halfway");
    assert_eq!(log["params"]["level"], "info");
    // Order: every notice before the result.
    let last = reply.messages.last().unwrap();
    assert_eq!(last["result"]["content"][0]["text"], "done");

    // 2026-07-28: logs only when the request asks for them, at its level.
    let mut modern = Agent::new(node.mcp);
    modern.version = "2026-07-28";
    let meta = |level: Option<&str>| {
        let mut m = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                           "io.modelcontextprotocol/clientCapabilities": {}, "progressToken": 5});
        if let Some(l) = level {
            m["io.modelcontextprotocol/logLevel"] = l.into();
        }
        m
    };
    let silent =
        modern.request(2, "tools/call", json!({"name": "job__run", "arguments": {}, "_meta": meta(None)})).await;
    assert!(silent.notifications("notifications/message").is_empty(), "{}", silent.body);
    assert_eq!(silent.notifications("notifications/progress").len(), 3, "{}", silent.body);
    let loud = modern
        .request(3, "tools/call", json!({"name": "job__run", "arguments": {}, "_meta": meta(Some("debug"))}))
        .await;
    assert_eq!(loud.notifications("notifications/message").len(), 1, "{}", loud.body);

    // A session that raised its level sees no info lines; no progress without a token.
    agent.request(2, "logging/setLevel", json!({"level": "warning"})).await;
    let quiet = agent.request(3, "tools/call", json!({"name": "job__run", "arguments": {}})).await;
    assert!(quiet.notifications("notifications/message").is_empty(), "{}", quiet.body);
    assert!(quiet.notifications("notifications/progress").is_empty(), "{}", quiet.body);
    node.stop().await;
}

#[tokio::test]
async fn cancelling_the_mcp_request_cancels_the_call_at_the_provider() {
    let node = TestNode::start().await;
    let service = node.client().await;
    let mut reg = service.register_tool("slow.op", &json!({"description": "Slow."})).await.unwrap();
    let mut agent = Agent::new(node.mcp);
    agent.initialize().await;
    let agent2 = agent.clone();
    let call =
        tokio::spawn(
            async move { agent2.request(7, "tools/call", json!({"name": "slow__op", "arguments": {}})).await },
        );
    let req = next_request(&mut reg).await;
    assert!(!req.is_cancelled());
    let cancel =
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7, "reason": "user"}});
    assert_eq!(agent.post(&cancel).await.status, 202);
    tokio::time::timeout(WAIT, req.cancelled()).await.expect("the provider sees the cancellation");
    call.abort();
    node.stop().await;
}

#[tokio::test]
async fn tool_changes_reach_open_streams() {
    let node = TestNode::start().await;
    let service = node.client().await;
    let mut agent = Agent::new(node.mcp);
    agent.initialize().await;
    let mut stream = agent.listen().await;
    let mut watch = service.watch_tools().await.unwrap();
    let before = *watch.borrow_and_update();
    let reg = service.register_tool("new.tool", &json!({"description": "New."})).await.unwrap();
    loop {
        let m = stream.next().await;
        if m["method"] == "notifications/tools/list_changed" {
            break;
        }
    }
    tokio::time::timeout(WAIT, watch.changed()).await.unwrap().unwrap();
    assert!(*watch.borrow() > before);
    assert_eq!(service.tools().await.unwrap().len(), 1);
    // Withdrawing it is a change too.
    drop(reg);
    loop {
        let m = stream.next().await;
        if m["method"] == "notifications/tools/list_changed" {
            break;
        }
    }
    assert!(service.tools().await.unwrap().is_empty());
    node.stop().await;
}

#[tokio::test]
async fn stateless_requests_of_the_2026_era() {
    let node = TestNode::start().await;
    let service = node.client().await;
    let _adder = serve_adder(&service).await;
    let mut agent = Agent::new(node.mcp);
    agent.version = "2026-07-28";
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    let discover = agent.request(1, "server/discover", json!({"_meta": meta})).await;
    assert!(discover.result()["supportedVersions"].as_array().unwrap().contains(&json!("2026-07-28")));
    let list = agent.request(2, "tools/list", json!({"_meta": meta})).await;
    assert!(list.header("mcp-session-id").is_none());
    assert_eq!(list.result()["tools"][0]["name"], "math__add");
    assert_eq!(list.result()["cacheScope"], "private");
    let call = agent
        .request(3, "tools/call", json!({"name": "math__add", "arguments": {"a": 1, "b": 2}, "_meta": meta}))
        .await;
    assert_eq!(call.result()["structuredContent"]["sum"], 3.0);
    node.stop().await;
}

const REALMS: &str = r#"
[[realm]]
name = "acme"
[[realm.user]]
name = "agent"
token_sha256 = "a665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3"
call = ["math.>"]
register = ["math.>"]
[[realm.user]]
name = "svc"
token_sha256 = "840f135a0cd6a2ca7c9865624d5434f90a072d562d58ec4503fc480d1b65a25d"
call = [">"]
register = [">"]
"#;

#[tokio::test]
async fn credentials_choose_the_realm_and_bind_sessions() {
    // Tokens: "123" (agent) and "svc-token" (svc).
    let node = TestNode::start_with_realms(REALMS).await;
    let opts = |token: &str| node.options().realm("acme").token(token.to_owned());
    let service = Client::connect(&node.url(), opts("svc-token")).await.unwrap();
    let _adder = serve_adder(&service).await;
    let _secret = service.register_tool("admin.reset", &json!({"description": "Resets."})).await.unwrap();

    // No token, or a wrong one: 401 with a challenge.
    let anonymous = Agent::new(node.mcp).request(1, "tools/list", json!({})).await;
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.header("www-authenticate").unwrap().starts_with("Bearer"));
    assert_eq!(Agent::new(node.mcp).with_token("wrong").request(1, "tools/list", json!({})).await.status, 401);

    // The agent sees only what it may call.
    let mut agent = Agent::new(node.mcp).with_token("123");
    agent.initialize().await;
    let tools = agent.request(2, "tools/list", json!({})).await;
    let names: Vec<&str> =
        tools.result()["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["math__add"]);
    let denied = agent.request(3, "tools/call", json!({"name": "admin__reset", "arguments": {}})).await;
    assert_eq!(denied.response()["error"]["code"], -32602, "not callable is unknown: {}", denied.body);

    // Another user cannot use the agent's session.
    let mut thief = agent.clone();
    thief.token = Some("svc-token".into());
    assert_eq!(thief.request(4, "tools/list", json!({})).await.status, 404);
    node.stop().await;
}

#[tokio::test]
async fn hostile_http_is_refused() {
    let node = TestNode::start().await;
    let agent = Agent::new(node.mcp);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
    let foreign = agent.post_with(&body, &[("Origin", "http://evil.example")]).await;
    assert_eq!(foreign.status, 403);
    // DNS rebinding: a name that resolves to loopback but is not an allowed Host.
    let rebinding = agent.post_with(&body, &[("Host", "evil.example")]).await;
    assert_eq!(rebinding.status, 403, "{}", rebinding.body);
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x".repeat(5 * 1024 * 1024)}});
    assert_eq!(agent.post(&big).await.status, 413);
    // Garbage is a parse error, not a crash; the node still serves.
    let mut raw = agent.clone();
    raw.session = None;
    let garbage = raw.post_with(&json!("not json-rpc"), &[]).await;
    assert!(garbage.status >= 400, "{}", garbage.body);
    let mut fine = Agent::new(node.mcp);
    fine.initialize().await;
    node.stop().await;
}

/// Malformed messages get what JSON-RPC and MCP's transport say: 400 with an error object
/// an agent can parse (-32700 parse error, -32600 invalid request), in both eras.
#[tokio::test]
async fn malformed_requests_get_a_json_rpc_error() {
    let node = TestNode::start().await;
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let cases: Vec<(&str, String, i64)> = vec![
        ("invalid JSON", "{\"jsonrpc\": \"2.0\", \"id\": 1,".to_owned(), -32700),
        ("nesting past the recursion limit", deep, -32700),
        ("a batch", json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}]).to_string(), -32600),
        ("a null id", json!({"jsonrpc": "2.0", "id": null, "method": "ping"}).to_string(), -32600),
        ("not an object", json!("ping").to_string(), -32600),
        ("no jsonrpc member", json!({"id": 1, "method": "ping"}).to_string(), -32600),
        ("a method that is not a string", json!({"jsonrpc": "2.0", "id": 1, "method": 7}).to_string(), -32600),
    ];
    for version in ["2025-11-25", "2026-07-28"] {
        let mut agent = Agent::new(node.mcp);
        agent.version = version;
        for (what, body, code) in &cases {
            let reply = agent.post_raw(body).await;
            assert_eq!(reply.status, 400, "{version} {what}: {}", reply.body);
            assert!(reply.header("content-type").is_some_and(|t| t.starts_with("application/json")), "{what}");
            let error: Value =
                serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{what}: {e}: {}", reply.body));
            assert_eq!(error["jsonrpc"], "2.0", "{what}");
            assert_eq!(error["error"]["code"], *code, "{version} {what}: {error}");
            assert!(error["error"]["message"].is_string(), "{what}");
        }
    }
    // The id of a request that had a valid one is echoed.
    let reply = Agent::new(node.mcp).post_raw(&json!({"jsonrpc": "1.0", "id": 42, "method": "ping"}).to_string()).await;
    let error: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!((reply.status, error["id"].clone()), (400, json!(42)));
    // And the endpoint still serves.
    let mut fine = Agent::new(node.mcp);
    fine.initialize().await;
    node.stop().await;
}

#[tokio::test]
async fn agents_on_any_node_see_and_call_the_tools_of_the_whole_mesh() {
    let (a, b) = TestNode::start_two().await;
    let mut agent = Agent::new(b.mcp);
    agent.initialize().await;
    let mut stream = agent.listen().await;
    // The provider is connected to A; the agent to B.
    let service = a.client().await;
    let adder = serve_adder(&service).await;
    let names = |reply: common::http::Reply| -> Vec<String> {
        reply.result()["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_owned()).collect()
    };
    common::converges("B to list A's tool", || {
        let agent = agent.clone();
        async move { names(agent.request(1, "tools/list", json!({})).await) == ["math__add"] }
    })
    .await;
    loop {
        if stream.next().await["method"] == "notifications/tools/list_changed" {
            break;
        }
    }
    let call = agent.request(2, "tools/call", json!({"name": "math__add", "arguments": {"a": 20, "b": 22}})).await;
    assert_eq!(call.result()["structuredContent"]["sum"], 42.0, "{}", call.body);
    // B's own clients see it in the catalog too.
    assert_eq!(b.client().await.tools().await.unwrap().len(), 1);

    // The provider leaves: the tool leaves B's listing, with a notification.
    adder.abort();
    service.close().await;
    loop {
        if stream.next().await["method"] == "notifications/tools/list_changed" {
            break;
        }
    }
    common::converges("B to drop A's tool", || {
        let agent = agent.clone();
        async move { names(agent.request(3, "tools/list", json!({})).await).is_empty() }
    })
    .await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn sessions_are_capped_per_user_and_idle_ones_reaped() {
    // Live sessions end by rmcp's idle timer, hibernated ones by the endpoint's sweep.
    for hibernate_after in [None, Some(std::time::Duration::ZERO)] {
        sessions_capped_and_reaped(hibernate_after).await;
    }
}

async fn sessions_capped_and_reaped(hibernate_after: Option<std::time::Duration>) {
    let mut config = fovea_node::McpConfig::new("127.0.0.1:0".parse().unwrap());
    config.max_sessions_per_user = 2;
    config.session_idle = std::time::Duration::from_millis(300);
    config.hibernate_after = hibernate_after;
    let node = TestNode::start_with_mcp(config).await;
    let mut first = Agent::new(node.mcp);
    first.initialize().await;
    Agent::new(node.mcp).initialize().await;
    // A third session of the same (anonymous loopback) user is refused.
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let third = Agent::new(node.mcp).post(&init).await;
    assert_eq!(third.status, 429, "{}", third.body);
    assert!(third.header("retry-after").is_some());
    // Idle sessions are reaped (and counted); then there is room again.
    common::converges("idle sessions reaped", || async {
        common::http::metric(node.admin, "fovea_mcp_sessions_total{event=\"reaped\"}").await >= 2.0
    })
    .await;
    assert_eq!(first.request(1, "tools/list", json!({})).await.status, 404, "a reaped session is gone");
    Agent::new(node.mcp).initialize().await;
    assert_eq!(common::http::metric(node.admin, "fovea_mcp_sessions_total{event=\"refused\"}").await, 1.0);
    node.stop().await;
}

/// An idle session hibernates (its worker closed) and its next request restores it: the
/// agent sees one session throughout. Sessions with state only a worker holds stay live.
#[tokio::test]
async fn idle_sessions_hibernate_and_wake_as_the_same_session() {
    let mut config = fovea_node::McpConfig::new("127.0.0.1:0".parse().unwrap());
    config.hibernate_after = Some(std::time::Duration::ZERO);
    let node = TestNode::start_with_mcp(config).await;
    let service = node.client().await;
    let _adder = serve_adder(&service).await;
    let metric = |name: &'static str| common::http::metric(node.admin, name);
    let mut agent = Agent::new(node.mcp);
    agent.initialize().await;
    // A session that chose a logging level keeps it only in its worker: it stays live.
    let mut held = Agent::new(node.mcp);
    held.initialize().await;
    assert_eq!(held.request(1, "logging/setLevel", json!({"level": "warning"})).await.status, 200);
    common::converges("the idle session to hibernate", || async {
        metric("fovea_mcp_sessions_hibernated").await == 1.0
    })
    .await;
    assert_eq!(metric("fovea_mcp_sessions").await, 2.0, "a hibernated session is still a session");

    // The held session answers from its live worker (nothing is woken).
    assert_eq!(held.request(2, "ping", json!({})).await.status, 200);
    assert_eq!(metric("fovea_mcp_wakes_total").await, 0.0);

    // A tool appears while the agent's session sleeps; its next request wakes it.
    let _later =
        service.register_tool("math.later", &json!({"description": "Registered while asleep."})).await.unwrap();
    let list = agent.request(2, "tools/list", json!({})).await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(metric("fovea_mcp_wakes_total").await, 1.0);
    let mut names: Vec<&str> =
        list.result()["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["math__add", "math__later"]);
    let call = agent.request(3, "tools/call", json!({"name": "math__add", "arguments": {"a": 1, "b": 2}})).await;
    assert_eq!(call.result()["structuredContent"]["sum"], 3.0, "{}", call.body);

    // Asleep again, then the agent opens its stream: the restored session announces the
    // list that changed since the session was opened, as a live one would have kept it.
    common::converges("the session to hibernate again", || async {
        metric("fovea_mcp_hibernations_total").await >= 2.0
    })
    .await;
    let mut stream = agent.listen().await;
    assert_eq!(stream.next().await["method"], "notifications/tools/list_changed");

    // Its owner can delete it, asleep as awake.
    drop(stream);
    common::converges("the session to hibernate once more", || async {
        metric("fovea_mcp_hibernations_total").await >= 3.0
    })
    .await;
    assert!(agent.delete().await.status < 300);
    assert_eq!(agent.request(4, "ping", json!({})).await.status, 404, "a deleted session is gone");
    assert_eq!(metric("fovea_mcp_sessions").await, 1.0);
    node.stop().await;
}

#[tokio::test]
async fn tool_lists_page_in_procedure_order() {
    let node = TestNode::start().await;
    let service = node.client().await;
    let mut regs = Vec::new();
    for i in 0..150 {
        regs.push(service.register_tool(&format!("t.n{i:03}"), &json!({"description": "one of many"})).await.unwrap());
    }
    let mut agent = Agent::new(node.mcp);
    agent.initialize().await;
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        assert!(page < 10, "too many pages");
        let params = cursor.as_ref().map_or(json!({}), |c| json!({"cursor": c}));
        let reply = agent.request(page + 1, "tools/list", params).await;
        let result = reply.result();
        names.extend(result["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_owned()));
        match result.get("nextCursor").and_then(Value::as_str) {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(names.len(), 150);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(service.tools().await.unwrap().len(), 150, "the SDK follows TOOL_LIST pages too");
    node.stop().await;
}

#[tokio::test]
async fn a_2026_request_that_disconnects_cancels_its_call() {
    let node = TestNode::start().await;
    let service = node.client().await;
    let mut reg = service.register_tool("slow.op", &json!({"description": "Slow."})).await.unwrap();
    let mut agent = Agent::new(node.mcp);
    agent.version = "2026-07-28";
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let call = tokio::spawn(async move {
        agent.request(1, "tools/call", json!({"name": "slow__op", "arguments": {}, "_meta": meta})).await
    });
    let req = next_request(&mut reg).await;
    // The agent goes away: closing the request's stream cancels the call.
    call.abort();
    tokio::time::timeout(WAIT, req.cancelled()).await.expect("the provider sees the cancellation");
    node.stop().await;
}

/// A tool that streams its answer: each chunk reaches the agent as progress (with the
/// chunk's text) before the result, which holds the whole answer; and an answer several
/// times the frame limit arrives whole.
#[tokio::test]
async fn streamed_and_large_answers_reach_the_agent_whole() {
    let node = TestNode::start().await;
    let service = node.client().await;
    let mut reg =
        service.register_tool("llm.say", &json!({"description": "Says something, token by token."})).await.unwrap();
    let mut big = service.register_tool("file.big", &json!({"description": "A large text file."})).await.unwrap();
    tokio::spawn(async move {
        while let Some(mut req) = reg.next().await {
            assert!(req.answer_streams(), "the MCP endpoint takes streamed answers");
            for token in ["Hello", ", ", "agent"] {
                req.send(token).await.unwrap();
            }
            req.respond("!");
        }
    });
    let text: String = (0..3_000_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let expected = text.clone();
    tokio::spawn(async move {
        while let Some(req) = big.next().await {
            req.respond(text.clone());
        }
    });
    let mut agent = Agent::new(node.mcp);
    agent.initialize().await;
    let reply = agent
        .request(1, "tools/call", json!({"name": "llm__say", "arguments": {}, "_meta": {"progressToken": "t"}}))
        .await;
    let progress = reply.notifications("notifications/progress");
    let messages: Vec<&str> = progress.iter().map(|p| p["params"]["message"].as_str().unwrap()).collect();
    assert_eq!(messages, ["Hello", ", ", "agent"], "{}", reply.body);
    assert_eq!(reply.result()["content"][0]["text"], "Hello, agent!");
    let reply = agent.request(2, "tools/call", json!({"name": "file__big", "arguments": {}})).await;
    assert_ne!(reply.result()["isError"], true, "{}", &reply.body[..reply.body.len().min(500)]);
    assert!(reply.result()["content"][0]["text"] == expected.as_str(), "the large answer came back changed");
    node.stop().await;
}

/// SEP-2243: a tool parameter annotated `x-mcp-header` also travels as an `Mcp-Param-*`
/// header (2026-07-28), which the endpoint checks against the body before the call: a
/// mismatch, a bad Base64 form or a missing header is refused with `-32020`; a match
/// (literal or `=?base64?…?=`) goes through to the provider.
#[tokio::test]
async fn mcp_param_headers_are_checked_against_the_arguments() {
    let node = TestNode::start().await;
    let service = node.client().await;
    let descriptor = json!({"description": "Weather by region.", "inputSchema": {"type": "object",
        "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}, "required": ["region"]}});
    let mut reg = service.register_tool("weather.get", &descriptor).await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = reg.next().await {
            req.respond("sunny");
        }
    });
    let mut agent = Agent::new(node.mcp);
    agent.version = "2026-07-28";
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}});
    let body = |id: u64, region: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": "weather__get", "arguments": {"region": region}, "_meta": meta}})
    };
    let base = [("Mcp-Method", "tools/call"), ("Mcp-Name", "weather__get")];
    let with = |value: &'static str| {
        let mut h = base.to_vec();
        h.push(("Mcp-Param-Region", value));
        h
    };
    let ok = agent.post_with(&body(1, "north"), &with("north")).await;
    assert_eq!(ok.response()["result"]["content"][0]["text"], "sunny", "{}", ok.body);
    // "north" in Base64.
    let ok = agent.post_with(&body(2, "north"), &with("=?base64?bm9ydGg=?=")).await;
    assert_eq!(ok.response()["result"]["content"][0]["text"], "sunny", "{}", ok.body);
    for (id, headers) in [(3, with("south")), (4, with("=?base64?bm9ydGg?=")), (5, base.to_vec())] {
        let refused = agent.post_with(&body(id, "north"), &headers).await;
        assert_eq!(refused.response()["error"]["code"], -32020, "{headers:?}: {}", refused.body);
    }
    node.stop().await;
}
