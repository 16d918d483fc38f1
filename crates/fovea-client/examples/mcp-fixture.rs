//! The MCP conformance suite's fixture tools, resources and prompts, provided as mesh
//! procedures through the SDK.
//!
//! `scripts/mcp-conformance.sh` starts a node with `--mcp` and this service beside it, so
//! the suite exercises the real path: agent → HTTP → node → mesh RPC → this provider.
//! It also shows how a service answers with rich MCP content (images, audio, embedded
//! resources), sends progress and logs, changes the tool list at run time, serves resources
//! (fixed, binary, from a template) and prompts, and completes prompt arguments.
//!
//! ```text
//! cargo run -p fovea-client --example mcp-fixture -- quic://127.0.0.1:4433 ~/.local/share/fovea/node.crt
//! ```

use std::time::Duration;

use fovea_client::{
    Client, ConnectOptions, ErrorCode, Headers, McpMethod, Notice, Registration, Request, MCP_RESULT_TYPE,
};
use serde_json::{json, Value};

/// Content type of a whole MCP `CallToolResult` answer (docs/PROTOCOL.md).
const TOOL_RESULT: &str = "application/mcp-tool-result+json";

/// A 1×1 red PNG.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";

/// An empty 8 kHz mono WAV file.
const WAV: &str = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA=";

fn result(content: Value) -> (Headers, String) {
    let headers = Headers::from_pairs([("content-type", TOOL_RESULT)]).unwrap_or_default();
    (headers, json!({ "content": content }).to_string())
}

fn answer(req: Request, (headers, body): (Headers, String)) {
    req.respond_with_headers(headers, body);
}

fn log(req: &Request, level: &str, text: &str) {
    req.notify(&Notice::Log { level: level.into(), logger: Some("fixture".into()), data: json!(text) });
}

async fn handle(client: Client, name: &'static str, mut reg: Registration) {
    let mut dynamic: Option<Registration> = None;
    while let Some(req) = reg.next().await {
        if TASK_TOOLS.contains(&name) {
            // Long calls run side by side, as the tasks scenarios need.
            tokio::spawn(task_tool(name, req));
            continue;
        }
        let image = json!({"type": "image", "data": PNG, "mimeType": "image/png"});
        let resource = json!({"type": "resource", "resource": {
            "uri": "test://embedded-resource", "mimeType": "text/plain", "text": "This is an embedded resource content."}});
        match name {
            "test_simple_text" => req.respond("This is a simple text response for testing."),
            "test_image_content" => answer(req, result(json!([image]))),
            "test_audio_content" => {
                answer(req, result(json!([{"type": "audio", "data": WAV, "mimeType": "audio/wav"}])))
            }
            "test_embedded_resource" => answer(req, result(json!([resource]))),
            "test_multiple_content_types" => {
                answer(req, result(json!([{"type": "text", "text": "Multiple content types test:"}, image, resource])))
            }
            "test_tool_with_logging" | "test_logging_tool" => {
                log(&req, "info", "Tool execution started");
                tokio::time::sleep(Duration::from_millis(50)).await;
                log(&req, "info", "Tool processing data");
                tokio::time::sleep(Duration::from_millis(50)).await;
                log(&req, "info", "Tool execution completed");
                req.respond("Tool with logging executed successfully");
            }
            "test_tool_with_progress" => {
                for p in [0.0, 50.0, 100.0] {
                    req.notify(&Notice::Progress { progress: p, total: Some(100.0), message: None });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                req.respond("Progress completed");
            }
            "test_error_handling" => req.fail("This tool intentionally returns an error for testing"),
            // Questions to the agent, asked through the call (protocol 8).
            "test_elicitation" | "test_elicitation_sep1034_defaults" | "test_elicitation_sep1330_enums" => {
                let args: Value = serde_json::from_slice(&req.payload).unwrap_or_default();
                let params = elicitation(name, args["message"].as_str().unwrap_or("Please answer"));
                match req.ask("elicitation/create", params).await {
                    Ok(r) if name == "test_elicitation" => req.respond(format!("User response: {r}")),
                    Ok(r) => {
                        req.respond(format!("Elicitation completed: action={}, content={}", r["action"], r["content"]))
                    }
                    Err(e) => req.fail(&e.to_string()),
                }
            }
            "test_sampling" => {
                let args: Value = serde_json::from_slice(&req.payload).unwrap_or_default();
                let prompt = args["prompt"].as_str().unwrap_or_default();
                let params = json!({"messages": [{"role": "user", "content": {"type": "text", "text": prompt}}], "maxTokens": 100});
                match req.ask("sampling/createMessage", params).await {
                    Ok(r) => {
                        req.respond(format!("LLM response: {}", r["content"]["text"].as_str().unwrap_or_default()))
                    }
                    Err(e) => req.fail(&e.to_string()),
                }
            }
            "test_streaming_elicitation" => {
                req.notify(&Notice::Progress { progress: 1.0, total: Some(1.0), message: Some("working".into()) });
                req.respond("streamed");
            }
            "test_trigger_tool_change" => {
                // Toggles a tool, so agents get notifications/tools/list_changed.
                dynamic = match dynamic.take() {
                    Some(r) => {
                        drop(r);
                        None
                    }
                    None => {
                        client.register_tool("test_dynamic_tool", &json!({"description": "Comes and goes."})).await.ok()
                    }
                };
                req.respond("tool list changed");
            }
            "test_trigger_prompt_change" => {
                // Toggles a prompt, so agents get notifications/prompts/list_changed.
                dynamic = match dynamic.take() {
                    Some(r) => {
                        drop(r);
                        None
                    }
                    None => client
                        .register_prompt("test_dynamic_prompt", &json!({"description": "Comes and goes."}))
                        .await
                        .ok(),
                };
                req.respond("prompt list changed");
            }
            _ if name.starts_with("test_input_required_result") => input_required(name, req).await,
            _ => req.respond("ok"),
        }
    }
}

/// The tasks extension's fixture tools (SEP-2663). The node makes a call a task when the
/// agent declared the extension, the tool supports tasks (`execution.taskSupport`), and
/// the call is still running after half a second; so these take a second.
const TASK_TOOLS: [&str; 7] = [
    "greet",
    "slow_compute",
    "failing_job",
    "protocol_error_job",
    "confirm_delete",
    "multi_input",
    "test_tool_with_task",
];

async fn task_tool(name: &str, req: Request) {
    let args: Value = serde_json::from_slice(&req.payload).unwrap_or_default();
    let second = || tokio::time::sleep(Duration::from_secs(1));
    let outcome = match name {
        "greet" => Ok(format!("Hello, {}!", args["name"].as_str().unwrap_or("World"))),
        "slow_compute" => {
            let seconds = args["seconds"].as_f64().unwrap_or(0.0).clamp(0.0, 600.0);
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            Ok(format!("computed {} after {seconds} s", args["label"].as_str().unwrap_or("something")))
        }
        "failing_job" => {
            second().await;
            return req.fail("the job failed, as it always does");
        }
        "protocol_error_job" => {
            // A failure the node reports as a JSON-RPC error: the task fails.
            second().await;
            return req.fail_with_code(ErrorCode::InvalidArguments.to_u64(), "the job met a protocol error");
        }
        "confirm_delete" => {
            second().await;
            req.ask_keyed("confirm", "elicitation/create", form("Delete the file?", "confirm", "boolean"))
                .await
                .map(|a| if a["content"]["confirm"] == json!(true) { "deleted".to_owned() } else { "kept".to_owned() })
        }
        "multi_input" => {
            second().await;
            let (a, b) = tokio::join!(
                req.ask_keyed("first", "elicitation/create", form("First value?", "value", "string")),
                req.ask_keyed("second", "elicitation/create", form("Second value?", "value", "string")),
            );
            a.and_then(|a| Ok((a, b?)))
                .map(|(a, b)| format!("got {} and {}", a["content"]["value"], b["content"]["value"]))
        }
        // Asks first (an input-required round), then works long enough to become a task.
        _ => match req.ask_keyed("user_name", "elicitation/create", form("What is your name?", "name", "string")).await
        {
            Err(e) => Err(e),
            Ok(a) => {
                second().await;
                Ok(format!("Hello, {}!", a["content"]["name"].as_str().unwrap_or("stranger")))
            }
        },
    };
    match outcome {
        Ok(text) => req.respond(text),
        Err(e) => req.fail(&e.to_string()),
    }
}

/// An elicitation form with one required string (or boolean) field.
fn form(message: &str, field: &str, kind: &str) -> Value {
    json!({"message": message, "requestedSchema": {
        "type": "object", "properties": {field: {"type": kind}}, "required": [field]}})
}

fn sampling(text: &str, max_tokens: u32) -> Value {
    json!({"messages": [{"role": "user", "content": {"type": "text", "text": text}}], "maxTokens": max_tokens})
}

/// The suite's input-required (MRTR) tools. Each run asks its questions by key; for an MCP
/// 2026-07-28 agent the first run's questions fail as input required, the run ends, and the
/// node answers the agent with an input-required result; the agent's retry runs the tool
/// again and the same questions are answered at once. Other agents are asked live.
async fn input_required(name: &str, req: Request) {
    let said = |v: &Value, field: &str| v["content"][field].to_string();
    let outcome = match name {
        "test_input_required_result_elicitation" => req
            .ask_keyed("user_name", "elicitation/create", form("What is your name?", "name", "string"))
            .await
            .map(|a| format!("Hello, {}!", a["content"]["name"].as_str().unwrap_or("stranger"))),
        "test_input_required_result_sampling" => req
            .ask_keyed("capital_question", "sampling/createMessage", sampling("What is the capital of France?", 100))
            .await
            .map(|a| format!("The model said: {}", a["content"]["text"].as_str().unwrap_or_default())),
        "test_input_required_result_list_roots" => {
            req.ask_keyed("client_roots", "roots/list", json!({})).await.map(|a| format!("Roots: {}", a["roots"]))
        }
        "test_input_required_result_request_state" | "test_input_required_result_tampered_state" => req
            .ask_keyed("confirm", "elicitation/create", form("Please confirm", "ok", "boolean"))
            .await
            .map(|a| format!("state-ok: confirmed {}", said(&a, "ok"))),
        "test_input_required_result_multiple_inputs" => {
            // Asked together, so one input-required result carries all three.
            let (name, greeting, roots) = tokio::join!(
                req.ask_keyed("user_name", "elicitation/create", form("What is your name?", "name", "string")),
                req.ask_keyed("greeting", "sampling/createMessage", sampling("Generate a greeting", 50)),
                req.ask_keyed("client_roots", "roots/list", json!({})),
            );
            name.and_then(|n| Ok((n, greeting?, roots?))).map(|(n, g, r)| {
                format!(
                    "{} {}, roots {}",
                    g["content"]["text"].as_str().unwrap_or_default(),
                    said(&n, "name"),
                    r["roots"]
                )
            })
        }
        "test_input_required_result_multi_round" => {
            // One after the other: the second question is only asked once the first is
            // answered, so the agent sees two rounds.
            match req
                .ask_keyed("step1", "elicitation/create", form("Step 1: What is your name?", "name", "string"))
                .await
            {
                Err(e) => Err(e),
                Ok(n) => req
                    .ask_keyed(
                        "step2",
                        "elicitation/create",
                        form("Step 2: What is your favorite color?", "color", "string"),
                    )
                    .await
                    .map(|c| format!("{} likes {}", said(&n, "name"), said(&c, "color"))),
            }
        }
        "test_input_required_result_capabilities" => {
            // Asks what the agent can answer: a question it lacks the capability for is
            // declined at once (not input required), and the tool does without it.
            let (name, capital) = tokio::join!(
                req.ask_keyed("user_name", "elicitation/create", form("What is your name?", "name", "string")),
                req.ask_keyed(
                    "capital_question",
                    "sampling/createMessage",
                    sampling("What is the capital of France?", 100)
                ),
            );
            match (name, capital) {
                (Err(e), _) | (_, Err(e)) if e.is_input_required() => Err(e),
                (_, c) => Ok(format!("sampled: {}", c.map(|c| c["content"]["text"].to_string()).unwrap_or_default())),
            }
        }
        _ => Ok("ok".to_owned()),
    };
    match outcome {
        Ok(text) => req.respond(text),
        Err(e) => req.fail(&e.to_string()),
    }
}

/// The `elicitation/create` params of the suite's elicitation tools.
fn elicitation(tool: &str, message: &str) -> Value {
    let schema = match tool {
        "test_elicitation_sep1034_defaults" => json!({"type": "object", "properties": {
            "name": {"type": "string", "default": "John Doe"},
            "age": {"type": "integer", "default": 30},
            "score": {"type": "number", "default": 95.5},
            "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
            "verified": {"type": "boolean", "default": true}}}),
        "test_elicitation_sep1330_enums" => json!({"type": "object", "properties": {
            "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
            "titledSingle": {"type": "string", "oneOf": [
                {"const": "value1", "title": "First Option"}, {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"}]},
            "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                           "enumNames": ["Option One", "Option Two", "Option Three"]},
            "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
            "titledMulti": {"type": "array", "items": {"anyOf": [
                {"const": "value1", "title": "First Choice"}, {"const": "value2", "title": "Second Choice"},
                {"const": "value3", "title": "Third Choice"}]}}}}),
        _ => json!({"type": "object", "properties": {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"}},
            "required": ["username", "email"]}),
    };
    json!({"message": message, "requestedSchema": schema})
}

/// Serves one resource, template or prompt of the suite.
async fn serve_entry(name: &'static str, mut reg: Registration) {
    while let Some(req) = reg.next().await {
        let params: Value = serde_json::from_slice(&req.payload).unwrap_or_default();
        let text = |key: &str| params.pointer(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        match (req.mcp_method(), name) {
            (Some(McpMethod::ReadResource), "test_static_text") => {
                req.respond("This is the content of the static text resource.")
            }
            // Bytes that are not UTF-8 reach the agent as a blob of the declared type.
            (Some(McpMethod::ReadResource), "test_static_binary") => req.respond(vec![0x89, b'P', b'N', b'G', 0xff, 0]),
            (Some(McpMethod::ReadResource), "test_template") => {
                let id = text("/variables/id");
                if id == "missing" {
                    req.fail_with_code(ErrorCode::NotFound.to_u64(), "no such item");
                } else {
                    req.respond(format!("{{\"id\":\"{id}\",\"templateTest\":true,\"data\":\"Data for ID: {id}\"}}"));
                }
            }
            (Some(McpMethod::ReadResource), _) => req.respond("Watched resource content"),
            (Some(McpMethod::GetPrompt), "test_simple_prompt") => req.respond("This is a simple prompt for testing."),
            (Some(McpMethod::GetPrompt), "test_prompt_with_arguments") => req.respond(format!(
                "Prompt with arguments: arg1='{}', arg2='{}'",
                text("/arguments/arg1"),
                text("/arguments/arg2")
            )),
            (Some(McpMethod::GetPrompt), "test_input_required_result_prompt") => {
                let context = req
                    .ask_keyed(
                        "user_context",
                        "elicitation/create",
                        form("What context should the prompt use?", "context", "string"),
                    )
                    .await;
                match context {
                    Ok(c) => req.respond(format!("Use this context: {}", c["content"]["context"])),
                    Err(e) => req.fail(&e.to_string()),
                }
            }
            (Some(McpMethod::GetPrompt), "test_prompt_with_embedded_resource") => answer(
                req,
                whole(json!({"messages": [
                    {"role": "user", "content": {"type": "resource", "resource": {
                        "uri": text("/arguments/resourceUri"), "mimeType": "text/plain",
                        "text": "Embedded resource content for testing."}}},
                    {"role": "user", "content": {"type": "text", "text": "Please process the embedded resource above."}}]})),
            ),
            (Some(McpMethod::GetPrompt), _) => answer(
                req,
                whole(json!({"messages": [
                    {"role": "user", "content": {"type": "image", "data": PNG, "mimeType": "image/png"}},
                    {"role": "user", "content": {"type": "text", "text": "Please analyze the image above."}}]})),
            ),
            // Completions: the values that start with what the agent typed.
            (Some(McpMethod::Complete), _) => {
                let typed = text("/argument/value");
                let values: Vec<&str> =
                    ["paris", "park", "python", "test"].into_iter().filter(|v| v.starts_with(typed.as_str())).collect();
                req.respond(serde_json::to_string(&values).unwrap_or_default());
            }
            (None, _) => req.fail("this procedure serves MCP methods"),
        }
    }
}

/// A whole MCP result (`GetPromptResult`, `ReadResourceResult`, …).
fn whole(result: Value) -> (Headers, String) {
    let headers = Headers::from_pairs([("content-type", MCP_RESULT_TYPE)]).unwrap_or_default();
    (headers, result.to_string())
}

/// The suite's resources, templates and prompts.
fn entries() -> Vec<(&'static str, Value)> {
    let prompt = |d: &str, args: Value| json!({"description": d, "arguments": args});
    let arg = |n: &str, d: &str| json!({"name": n, "description": d, "required": true});
    vec![
        (
            "test_static_text",
            json!({"uri": "test://static-text", "name": "static-text", "mimeType": "text/plain",
            "description": "A static text resource for testing"}),
        ),
        (
            "test_static_binary",
            json!({"uri": "test://static-binary", "name": "static-binary", "mimeType": "image/png",
            "description": "A static binary resource (image) for testing"}),
        ),
        (
            "test_watched",
            json!({"uri": "test://watched-resource", "name": "watched-resource", "mimeType": "text/plain",
            "description": "A resource that can be subscribed to"}),
        ),
        (
            "test_template",
            json!({"uriTemplate": "test://template/{id}/data", "name": "template",
            "mimeType": "application/json", "description": "A resource template with parameter substitution"}),
        ),
        ("test_simple_prompt", prompt("A simple prompt without arguments", json!([]))),
        (
            "test_prompt_with_arguments",
            prompt(
                "A prompt with required arguments",
                json!([arg("arg1", "First test argument"), arg("arg2", "Second test argument")]),
            ),
        ),
        (
            "test_prompt_with_embedded_resource",
            prompt(
                "A prompt that includes an embedded resource",
                json!([arg("resourceUri", "URI of the resource to embed")]),
            ),
        ),
        ("test_prompt_with_image", prompt("A prompt that includes image content", json!([]))),
        ("test_input_required_result_prompt", prompt("Asks the user for context first (SEP-2322)", json!([]))),
    ]
}

fn tools() -> Vec<(&'static str, Value)> {
    let plain = |d: &str| json!({"description": d, "inputSchema": {"type": "object"}});
    let task = |d: &str, support: &str| json!({"description": d, "inputSchema": {"type": "object"}, "execution": {"taskSupport": support}});
    vec![
        ("test_simple_text", plain("Tests simple text content response")),
        ("test_image_content", plain("Tests image content response")),
        ("test_audio_content", plain("Tests audio content response")),
        ("test_embedded_resource", plain("Tests embedded resource content response")),
        ("test_multiple_content_types", plain("Tests response with multiple content types (text, image, resource)")),
        ("test_tool_with_logging", plain("Tests tool that emits log messages during execution")),
        ("test_logging_tool", plain("Emits log messages (2026 diagnostics)")),
        ("test_tool_with_progress", plain("Tests tool that reports progress notifications")),
        ("test_error_handling", plain("Tests error response handling")),
        ("test_streaming_elicitation", plain("Streams notices before its result (2026 diagnostics)")),
        ("test_trigger_tool_change", plain("Adds or removes a tool, changing the tool list")),
        ("test_trigger_prompt_change", plain("Adds or removes a prompt, changing the prompt list")),
        (
            "test_elicitation",
            json!({"description": "Asks the user through elicitation", "inputSchema": {
            "type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}}),
        ),
        ("test_elicitation_sep1034_defaults", plain("Elicitation with default values (SEP-1034)")),
        ("test_elicitation_sep1330_enums", plain("Elicitation with every enum form (SEP-1330)")),
        (
            "test_sampling",
            json!({"description": "Asks the agent's model through sampling", "inputSchema": {
            "type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]}}),
        ),
        (
            "greet",
            json!({"description": "Greets (never a task)", "inputSchema": {
            "type": "object", "properties": {"name": {"type": "string"}}}}),
        ),
        (
            "slow_compute",
            json!({"description": "Computes for `seconds` (a task when long)", "execution": {"taskSupport": "optional"},
            "inputSchema": {"type": "object", "properties": {"seconds": {"type": "number"}, "label": {"type": "string"}}}}),
        ),
        ("failing_job", task("Fails after a second", "required")),
        ("protocol_error_job", task("Meets a protocol error after a second", "optional")),
        ("confirm_delete", task("Asks for confirmation in its task", "optional")),
        ("multi_input", task("Asks two questions at once in its task", "optional")),
        ("test_tool_with_task", task("Asks a name, then works as a task", "required")),
        ("test_input_required_result_elicitation", plain("Asks the user's name (SEP-2322)")),
        ("test_input_required_result_sampling", plain("Asks the agent's model (SEP-2322)")),
        ("test_input_required_result_list_roots", plain("Asks the agent's roots (SEP-2322)")),
        ("test_input_required_result_request_state", plain("Asks a confirmation (SEP-2322)")),
        ("test_input_required_result_tampered_state", plain("Asks a confirmation (SEP-2322)")),
        ("test_input_required_result_multiple_inputs", plain("Asks three questions at once (SEP-2322)")),
        ("test_input_required_result_multi_round", plain("Asks two questions in turn (SEP-2322)")),
        ("test_input_required_result_capabilities", plain("Asks what the agent can answer (SEP-2322)")),
        (
            // SEP-2243: `region` also travels as the HTTP header `Mcp-Param-Region`.
            "test_header_param",
            json!({"description": "Takes a parameter mirrored in an HTTP header", "inputSchema": {
                "type": "object",
                "properties": {"region": {"type": "string", "x-mcp-header": "Region"}},
                "required": ["region"]}}),
        ),
        (
            "test_missing_capability",
            json!({"description": "Needs the client's sampling capability",
                   "inputSchema": {"type": "object"},
                   "_meta": {"io.fovea/requiredClientCapabilities": {"sampling": {}}}}),
        ),
        (
            "json_schema_2020_12_tool",
            json!({"description": "Tool with JSON Schema 2020-12 features", "inputSchema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "$defs": {"address": {"$anchor": "addressDef", "type": "object",
                          "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
                "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"},
                               "contactMethod": {"type": "string", "enum": ["phone", "email"]},
                               "phone": {"type": "string"}, "email": {"type": "string"}},
                "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
                "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
                "then": {"required": ["phone"]},
                "else": {"required": ["email"]},
                "additionalProperties": false}}),
        ),
    ]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "quic://127.0.0.1:4433".into());
    let mut opts = ConnectOptions::new().name("mcp-fixture");
    if let Some(ca) = args.next() {
        opts = opts.ca_file(ca);
    }
    let client = Client::connect(&url, opts).await?;
    let mut tasks = Vec::new();
    for (name, descriptor) in tools() {
        let reg = client.register_tool(name, &descriptor).await?;
        tasks.push(tokio::spawn(handle(client.clone(), name, reg)));
    }
    let tools = tasks.len();
    for (name, descriptor) in entries() {
        let reg = if name.starts_with("test_static") || name == "test_watched" || name == "test_template" {
            client.register_resource(name, &descriptor).await?
        } else {
            client.register_prompt(name, &descriptor).await?
        };
        tasks.push(tokio::spawn(serve_entry(name, reg)));
    }
    println!("mcp-fixture ready: {tools} tools, {} resources and prompts on {url}", tasks.len() - tools);
    for t in tasks {
        t.await?;
    }
    Ok(())
}
