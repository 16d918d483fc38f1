//! The MCP conformance suite's fixture tools, provided as mesh procedures through the SDK.
//!
//! `scripts/mcp-conformance.sh` starts a node with `--mcp` and this service beside it, so
//! the suite exercises the real path: agent → HTTP → node → mesh RPC → this provider.
//! It also shows how a service answers with rich MCP content (images, audio, embedded
//! resources), sends progress and logs, and changes the tool list at run time.
//!
//! ```text
//! cargo run -p fovea-client --example mcp-fixture -- quic://127.0.0.1:4433 ~/.local/share/fovea/node.crt
//! ```

use std::time::Duration;

use fovea_client::{Client, ConnectOptions, Headers, Notice, Registration, Request};
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
            _ => req.respond("ok"),
        }
    }
}

fn tools() -> Vec<(&'static str, Value)> {
    let plain = |d: &str| json!({"description": d, "inputSchema": {"type": "object"}});
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
    println!("mcp-fixture ready: {} tools on {url}", tasks.len());
    for t in tasks {
        t.await?;
    }
    Ok(())
}
