//! MCP resources, resource templates, prompts and completions, provided through the SDK by
//! a service on one node and used by agents on another: rmcp's client over HTTP (a
//! 2025-11-25 session) and over stdio (`fovea mcp`), and 2026-07-28 stateless requests.

mod common;

use bytes::Bytes;
use common::http::Agent;
use common::TestNode;
use fovea_client::{Client, ErrorCode, Headers, McpMethod, MCP_RESULT_TYPE};
use fovea_core::frame::{Register, ToolsQuery};
use fovea_core::Frame;
use rmcp::model::{
    ArgumentInfo, CompleteRequestParams, GetPromptRequestParams, ReadResourceRequestParams, Reference, ResourceContents,
};
use rmcp::service::NotificationContext;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// A service with a text resource, a binary one, a template and a prompt, on `client`.
async fn serve_docs(client: &Client) -> Vec<tokio::task::JoinHandle<()>> {
    let entries = [
        (
            "docs.readme",
            json!({"uri": "docs://readme", "name": "readme", "mimeType": "text/markdown",
                               "description": "The project's README."}),
        ),
        ("docs.logo", json!({"uri": "docs://logo", "name": "logo", "mimeType": "image/png"})),
        ("docs.page", json!({"uriTemplate": "docs://pages/{n}", "name": "page", "description": "Page n."})),
        (
            "docs.summary",
            json!({"description": "Summarise a page.", "arguments": [
            {"name": "page", "description": "Which page", "required": true},
            {"name": "style", "description": "terse or long"}]}),
        ),
    ];
    let mut tasks = Vec::new();
    for (name, descriptor) in entries {
        let mut reg = if name == "docs.summary" {
            client.register_prompt(name, &descriptor).await.unwrap()
        } else {
            client.register_resource(name, &descriptor).await.unwrap()
        };
        tasks.push(tokio::spawn(async move {
            while let Some(req) = reg.next().await {
                let params: Value = serde_json::from_slice(&req.payload).unwrap();
                match (req.mcp_method(), name) {
                    (Some(McpMethod::ReadResource), "docs.readme") => req.respond("# fovea"),
                    (Some(McpMethod::ReadResource), "docs.logo") => req.respond(vec![0x89, 0x50, 0xff, 0x00]),
                    (Some(McpMethod::ReadResource), _) => match params["variables"]["n"].as_str() {
                        Some("404") => req.fail_with_code(ErrorCode::NotFound.to_u64(), "no such page"),
                        Some(n) => req.respond(format!("page {n}")),
                        None => req.fail("no variables"),
                    },
                    (Some(McpMethod::GetPrompt), _) => {
                        let page = params["arguments"]["page"].as_str().unwrap_or_default();
                        let style = params["arguments"]["style"].as_str().unwrap_or("terse");
                        let h = Headers::from_pairs([("content-type", MCP_RESULT_TYPE)]).unwrap();
                        let result = json!({"messages": [
                            {"role": "user", "content": {"type": "text", "text": format!("Summarise page {page}, {style}.")}},
                            {"role": "user", "content": {"type": "resource", "resource": {
                                "uri": format!("docs://pages/{page}"), "text": format!("page {page}")}}}]});
                        req.respond_with_headers(h, result.to_string());
                    }
                    (Some(McpMethod::Complete), _) => {
                        assert_eq!(params["ref"]["type"], "ref/prompt", "{params}");
                        let typed = params["argument"]["value"].as_str().unwrap_or_default().to_owned();
                        let all = ["terse", "tender", "long"];
                        let values: Vec<&str> = all.into_iter().filter(|v| v.starts_with(&typed)).collect();
                        req.respond(serde_json::to_string(&values).unwrap());
                    }
                    _ => req.fail("unexpected"),
                }
            }
        }));
    }
    tasks
}

/// Passes on the URIs of `notifications/resources/updated`.
#[derive(Clone)]
struct Updated(mpsc::UnboundedSender<String>);

impl ClientHandler for Updated {
    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        let _ = self.0.send(params.uri);
    }
}

/// Subscribes `client` (a 2025-11-25 session: the era of `resources/subscribe`) to `uri`, then publishes updates of `other` and `uri` (through
/// `service`, maybe on another node) until one of `uri` arrives: a subscription reaches
/// other nodes asynchronously, and the update of `other` must never arrive.
#[allow(deprecated)]
async fn updates_arrive<H: ClientHandler>(
    client: &rmcp::service::RunningService<RoleClient, H>,
    updated: &mut mpsc::UnboundedReceiver<String>,
    service: &Client,
    (procedure, uri, other): (&str, &str, &str),
) {
    client.subscribe(rmcp::model::SubscribeRequestParams::new(uri)).await.expect("subscribed");
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        service.resource_updated(procedure, other).await.unwrap();
        service.resource_updated(procedure, uri).await.unwrap();
        match tokio::time::timeout(std::time::Duration::from_millis(200), updated.recv()).await {
            Ok(Some(got)) => {
                assert_eq!(got, uri, "only the URI subscribed to");
                break;
            }
            _ => assert!(tokio::time::Instant::now() < deadline, "no notifications/resources/updated for {uri}"),
        }
    }
    client.unsubscribe(rmcp::model::UnsubscribeRequestParams::new(uri)).await.expect("unsubscribed");
    let unknown = client.subscribe(rmcp::model::SubscribeRequestParams::new("docs://nothing")).await;
    assert!(unknown.is_err(), "a URI nobody serves cannot be watched");
}

fn read(uri: &str) -> ReadResourceRequestParams {
    ReadResourceRequestParams::new(uri)
}

/// What every front end must answer alike.
async fn exercise<H: ClientHandler>(client: &rmcp::service::RunningService<RoleClient, H>) {
    let resources = client.list_all_resources().await.unwrap();
    let mut uris: Vec<&str> = resources.iter().map(|r| r.uri.as_str()).collect();
    uris.sort();
    assert_eq!(uris, ["docs://logo", "docs://readme"]);
    let readme = resources.iter().find(|r| r.uri == "docs://readme").unwrap();
    assert_eq!((readme.name.as_str(), readme.mime_type.as_deref()), ("readme", Some("text/markdown")));
    let templates = client.list_all_resource_templates().await.unwrap();
    assert_eq!(templates.len(), 1);
    assert_eq!(templates[0].uri_template, "docs://pages/{n}");

    let text = client.read_resource(read("docs://readme")).await.unwrap();
    match &text.contents[..] {
        [ResourceContents::TextResourceContents { uri, text, mime_type, .. }] => {
            assert_eq!(
                (uri.as_str(), text.as_str(), mime_type.as_deref()),
                ("docs://readme", "# fovea", Some("text/markdown"))
            );
        }
        other => panic!("one text content: {other:?}"),
    }
    let blob = client.read_resource(read("docs://logo")).await.unwrap();
    match &blob.contents[..] {
        [ResourceContents::BlobResourceContents { blob, mime_type, .. }] => {
            assert_eq!((blob.as_str(), mime_type.as_deref()), ("iVD/AA==", Some("image/png")));
        }
        other => panic!("one blob: {other:?}"),
    }
    let page = client.read_resource(read("docs://pages/7")).await.unwrap();
    assert!(matches!(&page.contents[..], [ResourceContents::TextResourceContents { text, .. }] if text == "page 7"));
    for missing in ["docs://nothing", "docs://pages/404"] {
        let err = client.read_resource(read(missing)).await.unwrap_err();
        let rmcp::ServiceError::McpError(e) = err else { panic!("a JSON-RPC error for {missing}: {err:?}") };
        assert_eq!(e.code.0, -32602, "SEP-2164 for {missing}");
        assert_eq!(e.data, Some(json!({"uri": missing})));
    }

    let prompts = client.list_all_prompts().await.unwrap();
    assert_eq!(prompts.len(), 1);
    assert_eq!(prompts[0].name, "docs__summary");
    assert_eq!(prompts[0].arguments.as_ref().map(Vec::len), Some(2));
    let mut get = GetPromptRequestParams::new("docs__summary");
    get.arguments = Some(json!({"page": "3", "style": "long"}).as_object().unwrap().clone());
    let prompt = client.get_prompt(get).await.unwrap();
    let prompt = serde_json::to_value(&prompt).unwrap();
    assert_eq!(prompt["messages"][0]["content"]["text"], "Summarise page 3, long.");
    assert_eq!(prompt["messages"][1]["content"]["resource"]["uri"], "docs://pages/3");
    assert_eq!(prompt["description"], "Summarise a page.");
    let missing = client.get_prompt(GetPromptRequestParams::new("docs__summary")).await.unwrap_err();
    assert!(missing.to_string().contains("page"), "a missing argument is named: {missing}");
    assert!(client.get_prompt(GetPromptRequestParams::new("nope")).await.is_err());

    let complete = CompleteRequestParams::new(Reference::for_prompt("docs__summary"), ArgumentInfo::new("style", "te"));
    let values = client.complete(complete).await.unwrap().completion.values;
    assert_eq!(values, ["terse", "tender"]);
    let nothing = CompleteRequestParams::new(Reference::for_prompt("nope"), ArgumentInfo::new("x", ""));
    assert!(client.complete(nothing).await.unwrap().completion.values.is_empty());
}

#[tokio::test]
async fn rmcp_client_on_one_node_uses_the_resources_and_prompts_of_another() {
    let (a, b) = TestNode::start_two().await;
    let service = a.client().await;
    let _tasks = serve_docs(&service).await;
    let on_b = b.client().await;
    common::converges("B's catalog to hold A's entries", || {
        let on_b = on_b.clone();
        async move { on_b.catalog().await.unwrap().len() == 4 }
    })
    .await;
    assert!(on_b.tools().await.unwrap().is_empty(), "resources and prompts are not tools");

    let _ = rustls::crypto::ring::default_provider().install_default();
    let transport = StreamableHttpClientTransport::from_uri(format!("http://{}/mcp", b.mcp));
    let (tx, mut updated) = mpsc::unbounded_channel();
    let client = Updated(tx).serve(transport).await.expect("MCP handshake over HTTP");
    exercise(&client).await;
    // Updates published on A reach the agent on B, for the URI it watches only.
    updates_arrive(&client, &mut updated, &service, ("docs.page", "docs://pages/1", "docs://pages/2")).await;
    client.cancel().await.unwrap();

    // The 2026-07-28 era: stateless requests, reads not cacheable unless the provider says.
    let mut agent = Agent::new(b.mcp);
    agent.version = "2026-07-28";
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    let read = agent.request(1, "resources/read", json!({"uri": "docs://pages/9", "_meta": meta})).await;
    assert_eq!(read.result()["contents"][0]["text"], "page 9", "{}", read.body);
    assert_eq!(read.result()["ttlMs"], 0);
    let list = agent.request(2, "prompts/list", json!({"_meta": meta})).await;
    assert_eq!(list.result()["prompts"][0]["name"], "docs__summary");
    assert_eq!(list.result()["cacheScope"], "private");
    let get = agent
        .request(3, "prompts/get", json!({"name": "docs__summary", "arguments": {"page": "1"}, "_meta": meta}))
        .await;
    assert_eq!(get.result()["messages"][0]["content"]["text"], "Summarise page 1, terse.");
    // A listen stream with resource URIs gets their updates, published on A.
    let mut stream =
        agent.subscribe(json!({"notifications": {"resourceSubscriptions": ["docs://readme"]}, "_meta": meta})).await;
    let (tx, mut got) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            let m = stream.next().await;
            if m["method"] == "notifications/resources/updated" {
                let _ = tx.send(m["params"]["uri"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        service.resource_updated("docs.readme", "docs://readme").await.unwrap();
        if let Ok(Some(uri)) = tokio::time::timeout(std::time::Duration::from_millis(200), got.recv()).await {
            assert_eq!(uri, "docs://readme");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no update on the listen stream");
    }
    reader.abort();

    // The provider leaves: its entries leave B's catalog; a read finds nothing.
    service.close().await;
    common::converges("B to drop A's entries", || {
        let on_b = on_b.clone();
        async move { on_b.catalog().await.unwrap().is_empty() }
    })
    .await;
    let gone = agent.request(4, "resources/read", json!({"uri": "docs://readme", "_meta": meta})).await;
    assert_eq!(gone.response()["error"]["code"], -32602, "{}", gone.body);
    // Counted per method and outcome (a URI nobody serves is refused before any call).
    let m = |series: &'static str| common::http::metric(b.admin, series);
    assert!(m("fovea_mcp_method_calls_total{method=\"resources/read\",outcome=\"ok\"}").await >= 4.0);
    assert!(m("fovea_mcp_method_calls_total{method=\"resources/read\",outcome=\"error\"}").await >= 1.0);
    assert!(m("fovea_mcp_method_calls_total{method=\"completion/complete\",outcome=\"ok\"}").await >= 1.0);
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn rmcp_client_over_stdio_reads_resources_and_gets_prompts() {
    let node = TestNode::start().await;
    let service = node.client().await;
    let _tasks = serve_docs(&service).await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fovea"));
    cmd.args(["mcp", "--url", &node.url(), "--ca"]).arg(&node.cert).stderr(std::process::Stdio::null());
    let (tx, mut updated) = mpsc::unbounded_channel();
    let client = Updated(tx).serve(TokioChildProcess::new(cmd).unwrap()).await.expect("MCP handshake over stdio");
    exercise(&client).await;
    updates_arrive(&client, &mut updated, &service, ("docs.readme", "docs://readme", "docs://other")).await;
    client.cancel().await.unwrap();
    node.stop().await;
}

#[tokio::test]
async fn descriptors_are_checked_and_old_clients_see_only_tools() {
    let node = TestNode::start().await;
    let service = node.client().await;
    let bad = service.register_resource("docs.bad", &json!({"uri": "no scheme"})).await;
    assert!(matches!(bad, Err(fovea_client::ClientError::InvalidTool { .. })), "{bad:?}");
    let wrong = service.register_prompt("docs.p", &json!({"kind": "resource", "uri": "a:b"})).await;
    assert!(matches!(wrong, Err(fovea_client::ClientError::InvalidTool { .. })), "{wrong:?}");
    let _r = service.register_resource("docs.ok", &json!({"uri": "docs://ok"})).await.unwrap();
    let _t = service.register_tool("docs.tool", &json!({"description": "a tool"})).await.unwrap();
    let catalog = service.catalog().await.unwrap();
    assert_eq!(catalog.len(), 2);
    assert_eq!(service.tools().await.unwrap().len(), 1);

    // A version 6 client: a resource in REG is refused, TOOL_LIST shows only the tool.
    let mut raw = common::RawClient::handshake_at(&node, 6).await;
    let reg = Register {
        rid: 1,
        procedure: Bytes::from_static(b"docs.old"),
        tool: Bytes::from_static(br#"{"kind":"resource","uri":"a:b"}"#),
    };
    raw.send_frame(&Frame::Reg(reg)).await;
    match raw.next_frame().await {
        Some(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::InvalidProcedure, "{e:?}"),
        other => panic!("an ERROR: {other:?}"),
    }
    raw.send_frame(&Frame::Tools(ToolsQuery { id: 9, cursor: Bytes::new(), watch: 0 })).await;
    match raw.next_frame().await {
        Some(Frame::ToolList(list)) => {
            let entries: Value = serde_json::from_slice(&list.tools).unwrap();
            assert_eq!(entries.as_array().unwrap().len(), 1, "{entries}");
            assert_eq!(entries[0]["procedure"], "docs.tool");
        }
        other => panic!("a TOOL_LIST: {other:?}"),
    }
    node.stop().await;
}

#[tokio::test]
async fn each_list_change_is_announced_for_its_kind_only() {
    let node = TestNode::start().await;
    let service = node.client().await;
    let mut agent = Agent::new(node.mcp);
    agent.initialize().await;
    let mut stream = agent.listen().await;
    let _prompt = service.register_prompt("p.one", &json!({"description": "One."})).await.unwrap();
    assert_eq!(stream.next().await["method"], "notifications/prompts/list_changed");
    let _resource = service.register_resource("r.one", &json!({"uri": "r://one"})).await.unwrap();
    assert_eq!(stream.next().await["method"], "notifications/resources/list_changed");
    let _tool = service.register_tool("t.one", &json!({"description": "One."})).await.unwrap();
    assert_eq!(stream.next().await["method"], "notifications/tools/list_changed");
    node.stop().await;
}

/// An agent with elicitation and roots, for questions from providers.
#[derive(Clone)]
struct Answers;

impl ClientHandler for Answers {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        let mut caps = rmcp::model::ClientCapabilities::default();
        caps.elicitation = Some(Default::default());
        let mut info = rmcp::model::ClientConfig::default();
        info.capabilities = caps;
        info
    }

    async fn create_elicitation(
        &self,
        request: rmcp::model::ElicitRequestParams,
        _: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::ElicitResult, rmcp::ErrorData> {
        let asked = serde_json::to_value(&request).unwrap();
        assert_eq!(asked["message"], "Which city?", "{asked}");
        Ok(serde_json::from_value(json!({"action": "accept", "content": {"city": "Zürich"}})).unwrap())
    }
}

/// A provider on one node asks the agent on another (elicitation, in a 2025-11-25 session):
/// the question and its answer cross the mesh inside the call. Roots, which this agent did
/// not declare, are declined at once.
#[tokio::test]
async fn a_provider_asks_the_agent_through_its_call_across_the_mesh() {
    let (a, b) = TestNode::start_two().await;
    let service = a.client().await;
    let mut reg = service.register_tool("weather.ask", &json!({"description": "Asks where."})).await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = reg.next().await {
            let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
            let answer =
                req.ask("elicitation/create", json!({"message": "Which city?", "requestedSchema": schema})).await;
            let roots = req.ask("roots/list", json!({})).await;
            let declined = matches!(roots, Err(fovea_client::ClientError::NotAnswered { .. }));
            match answer {
                Ok(a) => req.respond(json!({"city": a["content"]["city"], "roots_declined": declined}).to_string()),
                Err(e) => req.fail(&e.to_string()),
            }
        }
    });
    let on_b = b.client().await;
    common::converges("B to list the tool", || {
        let on_b = on_b.clone();
        async move { on_b.tools().await.unwrap().len() == 1 }
    })
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let transport = StreamableHttpClientTransport::from_uri(format!("http://{}/mcp", b.mcp));
    let client = Answers.serve(transport).await.expect("MCP handshake over HTTP");
    let mut call = rmcp::model::CallToolRequestParams::new("weather__ask");
    call.arguments = Some(serde_json::Map::new());
    let result = client.call_tool(call).await.unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    assert_eq!(result.structured_content, Some(json!({"city": "Zürich", "roots_declined": true})));
    client.cancel().await.unwrap();
    let m = |series: &'static str| common::http::metric(b.admin, series);
    assert_eq!(m("fovea_mcp_questions_total{outcome=\"asked\"}").await, 1.0);
    assert_eq!(m("fovea_mcp_questions_total{outcome=\"declined\"}").await, 1.0);

    // A plain SDK caller has no agent: the question is declined at once, not left waiting.
    let plain = on_b.call("weather.ask", "{}", std::time::Duration::from_secs(10)).await;
    let err = plain.unwrap_err().to_string();
    assert!(err.contains("cannot answer questions"), "{err}");
    b.stop().await;
    a.stop().await;
}

/// A 2026-07-28 agent is asked through input-required results: rmcp's client gets the
/// provider's question (from node A) in a result, answers it and retries; the tool runs
/// again and its question is answered from the retry. A prompt asks the same way. A
/// tampered request state is refused.
#[tokio::test]
async fn a_2026_agent_answers_questions_through_input_required_results() {
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (a, b) = TestNode::start_two().await;
    let service = a.client().await;
    let mut tool = service.register_tool("trip.plan", &json!({"description": "Asks where."})).await.unwrap();
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    tokio::spawn(async move {
        while let Some(req) = tool.next().await {
            counted.fetch_add(1, Ordering::Relaxed);
            let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
            let city = req.ask_keyed(
                "city",
                "elicitation/create",
                json!({"message": "Which city?", "requestedSchema": schema}),
            );
            let city = match city.await {
                Ok(a) => a["content"]["city"].clone(),
                Err(e) => {
                    assert!(e.is_input_required(), "{e}");
                    req.fail(&e.to_string());
                    continue;
                }
            };
            // The agent has no roots: declined at once, not put in a result.
            let roots = req.ask("roots/list", json!({})).await;
            let declined = matches!(&roots, Err(e) if !e.is_input_required());
            req.respond(json!({"city": city, "roots_declined": declined}).to_string());
        }
    });
    let mut prompt = service.register_prompt("trip.brief", &json!({"description": "Briefs on a city."})).await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = prompt.next().await {
            let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
            match req
                .ask_keyed("city", "elicitation/create", json!({"message": "Which city?", "requestedSchema": schema}))
                .await
            {
                Ok(a) => req.respond(format!("Brief me on {}.", a["content"]["city"].as_str().unwrap_or_default())),
                Err(e) => req.fail(&e.to_string()),
            }
        }
    });
    let on_b = b.client().await;
    common::converges("B to list the tool and the prompt", || {
        let on_b = on_b.clone();
        async move { on_b.catalog().await.unwrap().len() == 2 }
    })
    .await;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let transport = StreamableHttpClientTransport::from_uri(format!("http://{}/mcp", b.mcp));
    let lifecycle =
        ClientLifecycleMode::Discover { preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28] };
    let client = Answers.serve_with_lifecycle(transport, lifecycle).await.expect("MCP discovery over HTTP");
    let mut call = rmcp::model::CallToolRequestParams::new("trip__plan");
    call.arguments = Some(serde_json::Map::new());
    let result = client.call_tool(call).await.unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    assert_eq!(result.structured_content, Some(json!({"city": "Zürich", "roots_declined": true})));
    assert_eq!(runs.load(Ordering::Relaxed), 2, "one run to ask, one with the answer");
    let brief = client.get_prompt(GetPromptRequestParams::new("trip__brief")).await.unwrap();
    let text = serde_json::to_value(&brief.messages[0].content).unwrap();
    assert_eq!(text["text"], "Brief me on Zürich.", "{text}");
    client.cancel().await.unwrap();

    // The request state is the node's, sealed: a changed one is refused.
    let mut agent = Agent::new(b.mcp);
    agent.version = "2026-07-28";
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
    });
    let first = agent.request(1, "tools/call", json!({"name": "trip__plan", "arguments": {}, "_meta": meta})).await;
    assert_eq!(first.result()["resultType"], "input_required", "{}", first.body);
    assert_eq!(first.result()["inputRequests"]["city"]["method"], "elicitation/create");
    let state = first.result()["requestState"].as_str().unwrap().to_owned();
    let answer = json!({"city": {"action": "accept", "content": {"city": "Bern"}}});
    let tampered = json!({"name": "trip__plan", "arguments": {}, "inputResponses": answer,
                          "requestState": format!("{state}x"), "_meta": meta});
    let refused = agent.request(2, "tools/call", tampered).await;
    assert_eq!(refused.response()["error"]["code"], -32602, "{}", refused.body);
    let retry =
        json!({"name": "trip__plan", "arguments": {}, "inputResponses": answer, "requestState": state, "_meta": meta});
    let done = agent.request(3, "tools/call", retry).await;
    assert_eq!(done.result()["structuredContent"]["city"], "Bern", "{}", done.body);

    let m = |series: &'static str| common::http::metric(b.admin, series);
    assert_eq!(m("fovea_mcp_questions_total{outcome=\"deferred\"}").await, 3.0);
    assert_eq!(m("fovea_mcp_questions_total{outcome=\"answered\"}").await, 3.0);
    assert_eq!(m("fovea_mcp_questions_total{outcome=\"declined\"}").await, 2.0);
    b.stop().await;
    a.stop().await;
}

/// The tasks extension across the mesh: a long call from a 2026-07-28 agent on node B to a
/// provider on node A becomes a task the agent polls; the provider's question parks it in
/// `input_required` until `tasks/update` answers; it completes with the tool's result. A
/// task can be cancelled; a tool that needs a task is refused to an agent without the
/// extension.
#[tokio::test]
async fn a_long_call_becomes_a_task_the_agent_polls_answers_and_cancels() {
    let (a, b) = TestNode::start_two().await;
    let service = a.client().await;
    let descriptor = json!({"description": "Packs a crate.", "execution": {"taskSupport": "required"}});
    let mut tool = service.register_tool("crate.pack", &descriptor).await.unwrap();
    // The provider works until the test lets it go on: no timing decides what the agent sees.
    let go = std::sync::Arc::new(tokio::sync::Notify::new());
    let proceed = go.clone();
    tokio::spawn(async move {
        while let Some(req) = tool.next().await {
            let proceed = proceed.clone();
            tokio::spawn(async move {
                proceed.notified().await;
                let form = json!({"message": "Which size?", "requestedSchema": {"type": "object",
                                  "properties": {"size": {"type": "string"}}}});
                match req.ask_keyed("size", "elicitation/create", form).await {
                    Ok(a) => req.respond(format!("packed, {}", a["content"]["size"].as_str().unwrap_or_default())),
                    Err(e) => req.fail(&e.to_string()),
                }
            });
        }
    });
    let on_b = b.client().await;
    common::converges("B to list the tool", || {
        let on_b = on_b.clone();
        async move { on_b.tools().await.unwrap().len() == 1 }
    })
    .await;

    let mut agent = Agent::new(b.mcp);
    agent.version = "2026-07-28";
    let tasks = json!({"io.modelcontextprotocol/tasks": {}});
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}, "extensions": tasks},
    });
    let with = |mut p: Value| {
        p["_meta"] = meta.clone();
        p
    };
    let created = agent.request(1, "tools/call", with(json!({"name": "crate__pack", "arguments": {}}))).await;
    let created = created.result().clone();
    assert_eq!(created["resultType"], "task", "{created}");
    let id = created["taskId"].as_str().unwrap().to_owned();
    assert!(created["ttlMs"].as_u64().unwrap() > 0);
    let get = |n: u64| agent.request(n, "tasks/get", with(json!({"taskId": id})));
    assert_eq!(get(2).await.result()["status"], "working");

    go.notify_one();
    let mut n = 3;
    let parked = loop {
        n += 1;
        let r = get(n).await;
        if r.result()["status"] == "input_required" {
            break r.result().clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(parked["inputRequests"]["size"]["method"], "elicitation/create", "{parked}");
    let answer = json!({"size": {"action": "accept", "content": {"size": "large"}}});
    let ack = agent.request(50, "tasks/update", with(json!({"taskId": id, "inputResponses": answer}))).await;
    assert_eq!(ack.result()["resultType"], "complete", "{}", ack.body);
    let done = loop {
        n += 1;
        let r = get(n).await;
        if r.result()["status"] == "completed" {
            break r.result().clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(done["result"]["content"][0]["text"], "packed, large", "{done}");

    // Cancelled while it works: it stays cancelled.
    let second = agent.request(100, "tools/call", with(json!({"name": "crate__pack", "arguments": {}}))).await;
    let second = second.result()["taskId"].as_str().unwrap().to_owned();
    let ack = agent.request(101, "tasks/cancel", with(json!({"taskId": second}))).await;
    assert_eq!(ack.result()["resultType"], "complete");
    let status = agent.request(102, "tasks/get", with(json!({"taskId": second}))).await;
    assert_eq!(status.result()["status"], "cancelled");
    let unknown = agent.request(103, "tasks/get", with(json!({"taskId": "no-such-task"}))).await;
    assert_eq!(unknown.response()["error"]["code"], -32602, "{}", unknown.body);

    // Without the extension, a tool that needs a task is refused (-32021).
    let plain = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                       "io.modelcontextprotocol/clientCapabilities": {}});
    let refused =
        agent.request(104, "tools/call", json!({"name": "crate__pack", "arguments": {}, "_meta": plain})).await;
    assert_eq!(refused.response()["error"]["code"], -32021, "{}", refused.body);
    let m = common::http::metric(b.admin, "fovea_mcp_tasks").await;
    assert_eq!(m, 2.0);
    b.stop().await;
    a.stop().await;
}

/// Through `fovea mcp` on stdio too: the SDK caller behind it passes the provider's
/// question to the agent and its answer back.
#[tokio::test]
async fn a_provider_asks_the_agent_behind_fovea_mcp_on_stdio() {
    let node = TestNode::start().await;
    let service = node.client().await;
    let mut reg = service.register_tool("weather.where", &json!({"description": "Asks where."})).await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = reg.next().await {
            let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
            match req.ask("elicitation/create", json!({"message": "Which city?", "requestedSchema": schema})).await {
                Ok(a) => req.respond(json!({"city": a["content"]["city"]}).to_string()),
                Err(e) => req.fail(&e.to_string()),
            }
        }
    });
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fovea"));
    cmd.args(["mcp", "--url", &node.url(), "--ca"]).arg(&node.cert).stderr(std::process::Stdio::null());
    let client = Answers.serve(TokioChildProcess::new(cmd).unwrap()).await.expect("MCP handshake over stdio");
    let mut call = rmcp::model::CallToolRequestParams::new("weather__where");
    call.arguments = Some(serde_json::Map::new());
    let result = client.call_tool(call).await.unwrap();
    assert_eq!(result.structured_content, Some(json!({"city": "Zürich"})), "{result:?}");
    client.cancel().await.unwrap();
    node.stop().await;
}

/// A caller below protocol 8 cannot see a question: its node declines for it at once.
#[tokio::test]
async fn a_question_to_a_caller_below_version_8_is_declined_by_the_node() {
    let node = TestNode::start().await;
    let service = node.client().await;
    let mut reg = service.register("q.ask").await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = reg.next().await {
            match req.ask("roots/list", json!({})).await {
                Err(e) => req.fail(&e.to_string()),
                Ok(_) => req.respond("answered?"),
            }
        }
    });
    let mut raw = common::RawClient::handshake_at(&node, 7).await;
    let call = fovea_core::frame::Call {
        call_id: 1,
        procedure: Bytes::from_static(b"q.ask"),
        timeout_ms: 30_000,
        headers: fovea_core::Headers::new(),
        payload: Bytes::new(),
        flags: 0,
    };
    raw.send_frame(&Frame::Call(call)).await;
    loop {
        match raw.next_frame().await {
            Some(Frame::Result(r)) => {
                let text = String::from_utf8_lossy(&r.payload).into_owned();
                assert!(text.contains("below 8"), "{text}");
                break;
            }
            Some(Frame::Notice(_)) => panic!("a version 7 caller is sent no question"),
            Some(_) => {}
            None => panic!("the connection ended"),
        }
    }
    node.stop().await;
}
