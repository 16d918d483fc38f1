//! Calls behind the MCP methods that are not `tools/call`: `resources/read`, `prompts/get`
//! and `completion/complete` reach the procedure of the resource, template or prompt as an
//! ordinary call, with the method in the [`METHOD_HEADER`] header and the MCP request's
//! params as the JSON payload. This module maps the call's answer to the MCP result, or
//! to the JSON-RPC error an agent gets (docs/PROTOCOL.md §4.6).

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::{Descriptor, Kind, TOOL_RESULT_TYPE};
use crate::code::ErrorCode;
use crate::headers::Headers;

/// The header naming the MCP method a call serves (`resources/read`, `prompts/get`,
/// `completion/complete`). Tool calls carry none.
pub const METHOD_HEADER: &str = "mcp-method";

/// The content type under which a provider answers with a whole MCP result object
/// (`ReadResourceResult`, `GetPromptResult`, `CompleteResult`, or a `CallToolResult`).
pub const MCP_RESULT_TYPE: &str = "application/mcp-result+json";

/// The topic prefix of resource updates: a URI published to `$mcp.updated.<procedure>`
/// tells agents subscribed to it that the resource, served by `procedure`, changed.
pub const RESOURCE_UPDATED_PREFIX: &str = "$mcp.updated.";

/// Most completion values one answer carries (MCP's limit).
pub const MAX_COMPLETIONS: usize = 100;

/// JSON-RPC's invalid params: MCP's code for an unknown resource (SEP-2164), an unknown
/// prompt or missing arguments.
pub const INVALID_PARAMS: i64 = -32602;

/// JSON-RPC's internal error.
pub const INTERNAL_ERROR: i64 = -32603;

/// Which MCP method a call serves (as `usize`, 0..3: an index for per-method counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    ReadResource = 0,
    GetPrompt = 1,
    Complete = 2,
}

impl Method {
    /// The MCP method name, as [`METHOD_HEADER`] carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::ReadResource => "resources/read",
            Method::GetPrompt => "prompts/get",
            Method::Complete => "completion/complete",
        }
    }

    /// The method [`METHOD_HEADER`] names, if it is one of these.
    pub fn parse(s: &str) -> Option<Method> {
        [Method::ReadResource, Method::GetPrompt, Method::Complete].into_iter().find(|m| m.as_str() == s)
    }
}

/// An answer an agent gets as a JSON-RPC error.
#[derive(Debug, Clone, PartialEq)]
pub struct McpFailure {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl McpFailure {
    fn new(code: i64, message: String) -> McpFailure {
        McpFailure { code, message, data: None }
    }
}

/// The params a resource read sends its provider: the agent's params, and for a template
/// the values of its variables under `variables`.
pub fn read_params(uri: &str, variables: &[(String, String)], descriptor: &Descriptor) -> Value {
    let mut params = json!({ "uri": uri });
    if descriptor.kind() == Kind::ResourceTemplate {
        let vars: Map<String, Value> = variables.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        params["variables"] = Value::Object(vars);
    }
    params
}

fn is_mcp_result(headers: &Headers) -> bool {
    headers.get("content-type").is_some_and(|v| v == MCP_RESULT_TYPE || v == TOOL_RESULT_TYPE)
}

/// The failure an agent gets for a call that did not succeed. `not_found` is the error
/// for this method when nothing answers to the name (an unknown resource or prompt).
fn failed(code: ErrorCode, payload: &[u8], what: &str, not_found: impl FnOnce() -> McpFailure) -> McpFailure {
    let message = String::from_utf8_lossy(payload);
    match code {
        ErrorCode::NotFound | ErrorCode::NoProvider => not_found(),
        ErrorCode::InvalidArguments => McpFailure::new(INVALID_PARAMS, format!("{what}: {message}")),
        ErrorCode::Timeout => McpFailure::new(INTERNAL_ERROR, format!("{what} did not answer before the deadline")),
        ErrorCode::ProviderDisconnected => {
            McpFailure::new(INTERNAL_ERROR, format!("the provider of {what} disconnected while answering"))
        }
        ErrorCode::Busy => McpFailure::new(INTERNAL_ERROR, format!("busy, retry shortly: {message}")),
        code if code.is_application() => McpFailure::new(INTERNAL_ERROR, format!("{what}: {message}")),
        code => McpFailure::new(INTERNAL_ERROR, format!("{what}: {code}: {message}")),
    }
}

/// The error for a resource nobody serves (SEP-2164: invalid params, with the URI).
pub fn resource_not_found(uri: &str) -> McpFailure {
    McpFailure { code: INVALID_PARAMS, message: format!("resource not found: {uri}"), data: Some(json!({"uri": uri})) }
}

/// A `resources/read` answer as MCP's `ReadResourceResult`:
///
/// - success under [`MCP_RESULT_TYPE`]: the payload is the result (`contents`, not empty);
/// - other success: the payload is the resource's content: UTF-8 becomes one text content,
///   other bytes one blob, with the answer's `content-type` as its `mimeType`, else the
///   descriptor's, else `text/plain` or `application/octet-stream`;
/// - `NOT_FOUND` (or no provider left): [`resource_not_found`]; other failures an internal
///   error saying what happened.
pub fn read_result(
    code: ErrorCode,
    headers: &Headers,
    payload: &[u8],
    uri: &str,
    descriptor: &Descriptor,
) -> Result<Value, McpFailure> {
    if code != ErrorCode::NoError {
        return Err(failed(code, payload, uri, || resource_not_found(uri)));
    }
    if is_mcp_result(headers) {
        return match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(r)) if r.get("contents").and_then(Value::as_array).is_some_and(|c| !c.is_empty()) => {
                Ok(Value::Object(r))
            }
            Ok(_) => {
                Err(McpFailure::new(INTERNAL_ERROR, format!("the provider of {uri} sent a result without contents")))
            }
            Err(e) => {
                Err(McpFailure::new(INTERNAL_ERROR, format!("the provider of {uri} sent a malformed result: {e}")))
            }
        };
    }
    let declared = headers.get("content-type").or_else(|| descriptor.json().get("mimeType").and_then(Value::as_str));
    let content = match std::str::from_utf8(payload) {
        Ok(text) => json!({"uri": uri, "mimeType": declared.unwrap_or("text/plain"), "text": text}),
        Err(_) => json!({
            "uri": uri,
            "mimeType": declared.unwrap_or("application/octet-stream"),
            "blob": base64::engine::general_purpose::STANDARD.encode(payload),
        }),
    };
    Ok(json!({ "contents": [content] }))
}

/// A `prompts/get` answer as MCP's `GetPromptResult`: under [`MCP_RESULT_TYPE`] the result
/// itself (`messages`); other UTF-8 text one user message. The descriptor's description
/// is added when the result has none.
pub fn prompt_result(
    code: ErrorCode,
    headers: &Headers,
    payload: &[u8],
    name: &str,
    descriptor: &Descriptor,
) -> Result<Value, McpFailure> {
    let what = format!("prompt {name}");
    if code != ErrorCode::NoError {
        return Err(failed(code, payload, &what, || {
            McpFailure::new(INVALID_PARAMS, format!("unknown prompt {name:?}"))
        }));
    }
    let mut result = if is_mcp_result(headers) {
        match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(r)) if r.get("messages").is_some_and(Value::is_array) => r,
            Ok(_) => return Err(McpFailure::new(INTERNAL_ERROR, format!("the provider of {what} sent no messages"))),
            Err(e) => {
                return Err(McpFailure::new(
                    INTERNAL_ERROR,
                    format!("the provider of {what} sent a malformed result: {e}"),
                ))
            }
        }
    } else {
        let Ok(text) = std::str::from_utf8(payload) else {
            return Err(McpFailure::new(
                INTERNAL_ERROR,
                format!("the provider of {what} answered with bytes that are not text"),
            ));
        };
        let mut r = Map::new();
        r.insert("messages".into(), json!([{"role": "user", "content": {"type": "text", "text": text}}]));
        r
    };
    if !result.contains_key("description") && !descriptor.description().is_empty() {
        result.insert("description".into(), descriptor.description().into());
    }
    Ok(Value::Object(result))
}

/// A `completion/complete` answer as MCP's `CompleteResult`: under [`MCP_RESULT_TYPE`] the
/// result itself (`completion.values`); otherwise a JSON array of strings, or lines of
/// text, are the values (the first [`MAX_COMPLETIONS`], with `total` and `hasMore`).
/// A failure of the provider is an error; no provider, no values.
pub fn complete_result(code: ErrorCode, headers: &Headers, payload: &[u8], what: &str) -> Result<Value, McpFailure> {
    if code != ErrorCode::NoError {
        let none = || McpFailure::new(INVALID_PARAMS, format!("nothing completes {what}"));
        return Err(failed(code, payload, what, none));
    }
    if is_mcp_result(headers) {
        return match serde_json::from_slice::<Value>(payload) {
            Ok(r) if r.get("completion").and_then(|c| c.get("values")).is_some_and(Value::is_array) => Ok(r),
            Ok(_) => Err(McpFailure::new(INTERNAL_ERROR, format!("the completer of {what} sent no completion.values"))),
            Err(e) => {
                Err(McpFailure::new(INTERNAL_ERROR, format!("the completer of {what} sent a malformed result: {e}")))
            }
        };
    }
    let values: Vec<String> = match serde_json::from_slice::<Vec<String>>(payload) {
        Ok(values) => values,
        Err(_) => String::from_utf8_lossy(payload).lines().filter(|l| !l.is_empty()).map(str::to_owned).collect(),
    };
    Ok(completion(values))
}

/// A `CompleteResult` of `values` (the first [`MAX_COMPLETIONS`]).
pub fn completion(mut values: Vec<String>) -> Value {
    let total = values.len();
    values.truncate(MAX_COMPLETIONS);
    json!({"completion": {"values": values, "total": total, "hasMore": total > MAX_COMPLETIONS}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(mime: Option<&str>) -> Descriptor {
        let mut d = json!({"kind": "resource", "uri": "t://a"});
        if let Some(m) = mime {
            d["mimeType"] = m.into();
        }
        Descriptor::parse(d.to_string().as_bytes()).unwrap()
    }

    fn typed(t: &str) -> Headers {
        Headers::from_pairs([("content-type", t)]).unwrap()
    }

    #[test]
    fn reads() {
        let ok = |h: &Headers, p: &[u8], d: &Descriptor| read_result(ErrorCode::NoError, h, p, "t://a", d);
        let text = ok(&Headers::new(), b"hi", &resource(Some("text/markdown"))).unwrap();
        assert_eq!(text, json!({"contents": [{"uri": "t://a", "mimeType": "text/markdown", "text": "hi"}]}));
        let blob = ok(&typed("image/png"), b"\xff\x00", &resource(None)).unwrap();
        assert_eq!(blob["contents"][0]["blob"], "/wA=");
        assert_eq!(blob["contents"][0]["mimeType"], "image/png");
        let whole = ok(&typed(MCP_RESULT_TYPE), br#"{"contents":[{"uri":"t://a","text":"x"}]}"#, &resource(None));
        assert_eq!(whole.unwrap()["contents"][0]["text"], "x");
        assert_eq!(
            ok(&typed(MCP_RESULT_TYPE), br#"{"contents":[]}"#, &resource(None)).unwrap_err().code,
            INTERNAL_ERROR
        );
        let missing = read_result(ErrorCode::NotFound, &Headers::new(), b"", "t://b", &resource(None)).unwrap_err();
        assert_eq!((missing.code, missing.data), (INVALID_PARAMS, Some(json!({"uri": "t://b"}))));
        let boom = read_result(ErrorCode::ApplicationError, &Headers::new(), b"disk", "t://a", &resource(None));
        assert_eq!(boom.unwrap_err().code, INTERNAL_ERROR);
        let t = Descriptor::parse(br#"{"kind":"resourceTemplate","uriTemplate":"t://{x}"}"#).unwrap();
        let vars = [("x".to_owned(), "1".to_owned())];
        assert_eq!(read_params("t://1", &vars, &t), json!({"uri": "t://1", "variables": {"x": "1"}}));
        assert_eq!(read_params("t://a", &[], &resource(None)), json!({"uri": "t://a"}));
    }

    #[test]
    fn prompts_and_completions() {
        let d = Descriptor::parse(br#"{"kind":"prompt","description":"greets"}"#).unwrap();
        let plain = prompt_result(ErrorCode::NoError, &Headers::new(), b"hello", "p", &d).unwrap();
        assert_eq!(plain["messages"][0]["content"]["text"], "hello");
        assert_eq!(plain["description"], "greets");
        let bad = prompt_result(ErrorCode::InvalidArguments, &Headers::new(), b"arg1 is empty", "p", &d).unwrap_err();
        assert_eq!(bad.code, INVALID_PARAMS);
        let list = complete_result(ErrorCode::NoError, &Headers::new(), br#"["a","b"]"#, "p").unwrap();
        assert_eq!(list, json!({"completion": {"values": ["a", "b"], "total": 2, "hasMore": false}}));
        let lines = complete_result(ErrorCode::NoError, &Headers::new(), b"x\ny\n", "p").unwrap();
        assert_eq!(lines["completion"]["values"], json!(["x", "y"]));
        let many = completion((0..150).map(|i| i.to_string()).collect());
        assert_eq!(
            (many["completion"]["values"].as_array().unwrap().len(), &many["completion"]["hasMore"]),
            (100, &json!(true))
        );
        assert_eq!(Method::parse("prompts/get"), Some(Method::GetPrompt));
        assert_eq!(Method::parse("tools/call"), None);
    }
}
