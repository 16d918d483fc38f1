//! Tools: procedures with a descriptor, which AI agents see through MCP.
//!
//! A provider that registers a procedure with a [`Descriptor`] makes it a tool of its
//! realm. Three things live here, all pure:
//!
//! - [`Descriptor::parse`]: the checks every descriptor passes before a node accepts
//!   it (size, shape, no invisible or control characters in what a model reads);
//! - [`tool_name`]: the one deterministic mapping from procedure names (with dots) to the
//!   names MCP clients accept (`^[a-zA-Z0-9_-]{1,64}$`);
//! - [`Catalog`]: a realm's tools, ordered by procedure name, paged by cursor.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::code::ErrorCode;
use crate::headers::Headers;

use crate::frame::{notice, MAX_TOOL_LEN};

/// Longest `description` or `title`, in bytes. Descriptions are prompt input for every
/// agent that lists the realm's tools; 8 KiB is pages of text.
pub const MAX_DESCRIPTION_LEN: usize = 8 * 1024;

/// Longest tool name MCP clients accept.
pub const MAX_TOOL_NAME_LEN: usize = 64;

/// What a catalog entry is to an agent. The descriptor's `kind` says it; a descriptor without
/// one is a tool (so descriptors written before the other kinds existed keep their meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// MCP's `Tool`: called with arguments (`tools/call`).
    Tool,
    /// MCP's `Resource`: one fixed URI, read with `resources/read`.
    Resource,
    /// MCP's `ResourceTemplate`: every URI its RFC 6570 `uriTemplate` matches.
    ResourceTemplate,
    /// MCP's `Prompt`: messages made from arguments (`prompts/get`).
    Prompt,
}

impl Kind {
    /// The `kind` value of the descriptor.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Resource => "resource",
            Kind::ResourceTemplate => "resourceTemplate",
            Kind::Prompt => "prompt",
        }
    }

    /// 0 to 3, in declaration order: an index for per-kind tables.
    pub fn index(self) -> usize {
        self as usize
    }

    fn parse(s: &str) -> Option<Kind> {
        [Kind::Tool, Kind::Resource, Kind::ResourceTemplate, Kind::Prompt].into_iter().find(|k| k.as_str() == s)
    }

    /// Keys a descriptor of this kind may carry: MCP's object of that kind without `name`
    /// where [`tool_name`] derives it (tools, prompts), plus `kind`.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Kind::Tool => &[
                "kind",
                "description",
                "inputSchema",
                "outputSchema",
                "title",
                "annotations",
                "icons",
                "execution",
                "_meta",
            ],
            Kind::Resource => {
                &["kind", "uri", "name", "title", "description", "mimeType", "size", "annotations", "icons", "_meta"]
            }
            Kind::ResourceTemplate => {
                &["kind", "uriTemplate", "name", "title", "description", "mimeType", "annotations", "icons", "_meta"]
            }
            Kind::Prompt => &["kind", "title", "description", "arguments", "icons", "_meta"],
        }
    }
}

/// Longest `uri` or `uriTemplate` of a resource, in bytes.
pub const MAX_URI_LEN: usize = 2048;

/// Most arguments a prompt declares.
pub const MAX_PROMPT_ARGUMENTS: usize = 64;

/// Why a descriptor was refused. The text says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DescriptorError {
    #[error("is {len} bytes; the limit is {MAX_TOOL_LEN}")]
    TooLarge { len: usize },
    #[error("is not a JSON object: {0}")]
    NotJson(String),
    #[error("needs a \"description\" string telling an agent what it does")]
    NoDescription,
    #[error("has the unknown kind {0:?}; kinds: tool (the default), resource, resourceTemplate, prompt")]
    UnknownKind(String),
    #[error("has the unknown key {key:?}; a {kind} allows: {allowed}", allowed = kind.keys().join(", "), kind = kind.as_str())]
    UnknownKey { key: String, kind: Kind },
    #[error("needs {0:?}")]
    Missing(&'static str),
    #[error("has {key:?} of the wrong type: it must be {want}")]
    WrongType { key: &'static str, want: &'static str },
    #[error("has {key:?} of {len} bytes; the limit is {limit}")]
    TextTooLong { key: &'static str, len: usize, limit: usize },
    #[error("has the character U+{ch:04X} in {key:?}: invisible, control and bidi characters are refused, since a model would read what a person reviewing the tool cannot see")]
    HiddenChar { key: &'static str, ch: u32 },
    #[error("declares {0} prompt arguments; the limit is {MAX_PROMPT_ARGUMENTS}")]
    TooManyArguments(usize),
    #[error("has {key:?} that is not {want}")]
    BadUri { key: &'static str, want: &'static str },
}

/// A validated descriptor of a catalog entry: a JSON object with the fields of MCP's object
/// of its [`Kind`] (`Tool`, `Resource`, `ResourceTemplate`, `Prompt`) except a derived
/// `name`, and `kind` unless it is a tool.
///
/// Invariants, by kind: a tool has a `description` string, an `inputSchema` object with
/// `"type": "object"` (added when absent) and `outputSchema` absent or such an object; a
/// resource has a `uri` with a scheme, a template a `uriTemplate` ([`uri_template`]), both
/// at most [`MAX_URI_LEN`] bytes; a prompt has a `description` and `arguments` absent or a
/// list of at most [`MAX_PROMPT_ARGUMENTS`] objects with a `name`. Every text an agent
/// reads holds no hidden characters ([`is_hidden`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Descriptor {
    kind: Kind,
    json: Arc<Map<String, Value>>,
    encoded: Bytes,
}

impl Descriptor {
    /// Parses and checks a descriptor as it arrives in `REG`.
    ///
    /// # Errors
    /// [`DescriptorError`] naming the first problem found.
    pub fn parse(raw: &[u8]) -> Result<Descriptor, DescriptorError> {
        use DescriptorError as E;
        if raw.len() > MAX_TOOL_LEN {
            return Err(E::TooLarge { len: raw.len() });
        }
        let value: Value = serde_json::from_slice(raw).map_err(|e| E::NotJson(e.to_string()))?;
        let Value::Object(mut json) = value else { return Err(E::NotJson("not an object".into())) };
        let kind = match json.get("kind") {
            None => Kind::Tool,
            Some(Value::String(k)) => Kind::parse(k).ok_or_else(|| E::UnknownKind(k.clone()))?,
            Some(_) => return Err(E::WrongType { key: "kind", want: "a string" }),
        };
        if kind == Kind::Tool {
            // One spelling per descriptor, so equal tools encode equally.
            json.remove("kind");
        }
        if let Some(key) = json.keys().find(|k| !kind.keys().contains(&k.as_str())) {
            return Err(E::UnknownKey { key: key.clone(), kind });
        }
        for key in ["title", "name", "mimeType"] {
            optional_text(&json, key)?;
        }
        match (json.get("description"), kind) {
            (Some(Value::String(d)), _) => check_text("description", d)?,
            (Some(_), _) => return Err(E::WrongType { key: "description", want: "a string" }),
            (None, Kind::Tool | Kind::Prompt) => return Err(E::NoDescription),
            (None, _) => {}
        }
        match kind {
            Kind::Tool => {
                let input = json.entry("inputSchema").or_insert_with(|| serde_json::json!({"type": "object"}));
                check_schema("inputSchema", input)?;
                if let Some(output) = json.get("outputSchema") {
                    check_schema("outputSchema", output)?;
                }
            }
            Kind::Resource => {
                let uri = required_text(&json, "uri")?;
                if !has_scheme(uri) || uri.len() > MAX_URI_LEN || uri.chars().any(|c| c.is_whitespace() || is_hidden(c))
                {
                    return Err(E::BadUri { key: "uri", want: "an absolute URI (scheme:…) of at most 2048 bytes" });
                }
                if json.get("size").is_some_and(|v| v.as_u64().is_none()) {
                    return Err(E::WrongType { key: "size", want: "a whole number of bytes" });
                }
            }
            Kind::ResourceTemplate => {
                let template = required_text(&json, "uriTemplate")?;
                if !has_scheme(template)
                    || template.len() > MAX_URI_LEN
                    || uri_template::Template::parse(template).is_none()
                {
                    return Err(E::BadUri {
                        key: "uriTemplate",
                        want: "an RFC 6570 template of an absolute URI (scheme:…{var}…), at most 2048 bytes",
                    });
                }
            }
            Kind::Prompt => check_prompt_arguments(json.get("arguments"))?,
        }
        for key in ["annotations", "execution", "_meta"] {
            if json.get(key).is_some_and(|v| !v.is_object()) {
                return Err(E::WrongType { key: static_key(key), want: "an object" });
            }
        }
        if json.get("icons").is_some_and(|v| !v.is_array()) {
            return Err(E::WrongType { key: "icons", want: "an array" });
        }
        let encoded = Bytes::from(serde_json::to_vec(&json).unwrap_or_default());
        if encoded.len() > MAX_TOOL_LEN {
            return Err(E::TooLarge { len: encoded.len() });
        }
        Ok(Descriptor { kind, json: Arc::new(json), encoded })
    }

    /// What the entry is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The descriptor as a JSON object.
    pub fn json(&self) -> &Map<String, Value> {
        &self.json
    }

    /// The descriptor, re-encoded compactly (what `TOOL_LIST` carries).
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }

    /// The description text (empty when a resource has none).
    pub fn description(&self) -> &str {
        self.json.get("description").and_then(Value::as_str).unwrap_or_default()
    }

    /// A resource's `uri`.
    pub fn uri(&self) -> Option<&str> {
        (self.kind == Kind::Resource).then(|| self.json.get("uri").and_then(Value::as_str)).flatten()
    }

    /// A resource template's `uriTemplate`.
    pub fn uri_template(&self) -> Option<&str> {
        (self.kind == Kind::ResourceTemplate).then(|| self.json.get("uriTemplate").and_then(Value::as_str)).flatten()
    }
}

/// Whether `uri` starts with a scheme (`ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"`).
fn has_scheme(uri: &str) -> bool {
    let Some((scheme, _)) = uri.split_once(':') else { return false };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn optional_text(json: &Map<String, Value>, key: &'static str) -> Result<(), DescriptorError> {
    match json.get(key) {
        None => Ok(()),
        Some(Value::String(t)) => check_text(key, t),
        Some(_) => Err(DescriptorError::WrongType { key, want: "a string" }),
    }
}

fn required_text<'a>(json: &'a Map<String, Value>, key: &'static str) -> Result<&'a str, DescriptorError> {
    match json.get(key) {
        None => Err(DescriptorError::Missing(key)),
        Some(Value::String(t)) => Ok(t),
        Some(_) => Err(DescriptorError::WrongType { key, want: "a string" }),
    }
}

/// A prompt's `arguments`: `[{"name", "title"?, "description"?, "required"?}]`.
fn check_prompt_arguments(arguments: Option<&Value>) -> Result<(), DescriptorError> {
    let want = "a list of {\"name\", \"description\", \"required\"} objects";
    let Some(arguments) = arguments else { return Ok(()) };
    let Value::Array(list) = arguments else { return Err(DescriptorError::WrongType { key: "arguments", want }) };
    if list.len() > MAX_PROMPT_ARGUMENTS {
        return Err(DescriptorError::TooManyArguments(list.len()));
    }
    for argument in list {
        let Value::Object(a) = argument else { return Err(DescriptorError::WrongType { key: "arguments", want }) };
        match a.get("name") {
            Some(Value::String(n)) if !n.is_empty() => check_text("arguments", n)?,
            _ => return Err(DescriptorError::WrongType { key: "arguments", want }),
        }
        for key in ["title", "description"] {
            match a.get(key) {
                None => {}
                Some(Value::String(t)) => check_text("arguments", t)?,
                Some(_) => return Err(DescriptorError::WrongType { key: "arguments", want }),
            }
        }
        if a.get("required").is_some_and(|r| !r.is_boolean()) {
            return Err(DescriptorError::WrongType { key: "arguments", want });
        }
    }
    Ok(())
}

/// The names of a prompt's required arguments.
pub fn required_arguments(descriptor: &Descriptor) -> impl Iterator<Item = &str> {
    descriptor
        .json()
        .get("arguments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|a| a.get("required") == Some(&Value::Bool(true)))
        .filter_map(|a| a.get("name").and_then(Value::as_str))
}

fn static_key(key: &str) -> &'static str {
    ["annotations", "execution", "_meta"].into_iter().find(|k| *k == key).unwrap_or("?")
}

fn check_text(key: &'static str, text: &str) -> Result<(), DescriptorError> {
    if text.len() > MAX_DESCRIPTION_LEN {
        return Err(DescriptorError::TextTooLong { key, len: text.len(), limit: MAX_DESCRIPTION_LEN });
    }
    match text.chars().find(|c| is_hidden(*c)) {
        Some(ch) => Err(DescriptorError::HiddenChar { key, ch: ch as u32 }),
        None => Ok(()),
    }
}

fn check_schema(key: &'static str, schema: &Value) -> Result<(), DescriptorError> {
    let want = "a JSON Schema object with \"type\": \"object\"";
    match schema.as_object().and_then(|o| o.get("type")) {
        Some(Value::String(t)) if t == "object" => Ok(()),
        _ => Err(DescriptorError::WrongType { key, want }),
    }
}

/// Characters a person reviewing a tool would not see but a model would read: controls
/// other than tab and newline, zero-width and joiner characters, bidi overrides and
/// isolates, the byte-order mark, and Unicode tag characters (which can spell hidden
/// ASCII text).
pub fn is_hidden(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x08 | 0x0b..=0x1f | 0x7f..=0x9f
        | 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f
        | 0xfeff | 0xfff9..=0xfffb | 0xe0000..=0xe007f)
}

/// The MCP tool name of a procedure.
///
/// Each `.` becomes `__`; every other character outside `[A-Za-z0-9_-]` becomes `_`.
/// When that is not reversible (a character was replaced, or the procedure itself contains
/// `__`) or the result is over 64 characters, the name is cut to 55 characters and
/// `_` plus 8 hex digits of a hash of the procedure name is appended. So the mapping
/// depends on the procedure name alone (every node and every release agrees), and two
/// procedures share a tool name only if they share the 32-bit hash as well.
pub fn tool_name(procedure: &str) -> String {
    let mut name = String::with_capacity(procedure.len() + 8);
    let mut lossy = procedure.contains("__");
    for c in procedure.chars() {
        match c {
            '.' => name.push_str("__"),
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => name.push(c),
            _ => {
                lossy = true;
                name.push('_');
            }
        }
    }
    if !lossy && name.len() <= MAX_TOOL_NAME_LEN {
        return name;
    }
    name.truncate(MAX_TOOL_NAME_LEN - 9);
    name.push_str(&format!("_{:08x}", fnv1a32(procedure.as_bytes())));
    name
}

/// FNV-1a, 32 bits: stable across platforms and releases, which the name mapping needs
/// (a std hasher may change).
fn fnv1a32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// The content type under which a provider answers with a whole MCP `CallToolResult`.
pub const TOOL_RESULT_TYPE: &str = "application/mcp-tool-result+json";

/// `_meta` key of a listed tool that names its procedure (tool names are a mapping of it).
pub const META_PROCEDURE: &str = "io.fovea/procedure";

/// `_meta` key of a descriptor listing client capabilities a call needs, e.g.
/// `{"sampling": {}}`: a client that did not declare them gets `-32021`. Not shown to
/// agents.
pub const META_REQUIRES: &str = "io.fovea/requiredClientCapabilities";

/// The MCP object (`Tool`, `Resource`, `ResourceTemplate`, `Prompt`) of a procedure: its
/// descriptor without `kind`, with `name` ([`tool_name`]; a resource's own `name` when it
/// has one) and `_meta["io.fovea/procedure"]`.
pub fn mcp_json(procedure: &str, descriptor: &Descriptor) -> Map<String, Value> {
    let mut json = descriptor.json().clone();
    json.remove("kind");
    if !matches!(descriptor.kind(), Kind::Resource | Kind::ResourceTemplate) || !json.contains_key("name") {
        json.insert("name".into(), tool_name(procedure).into());
    }
    let meta = json.entry("_meta").or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        meta.insert(META_PROCEDURE.into(), procedure.into());
        meta.remove(META_REQUIRES);
    }
    json
}

/// The client capabilities a call of this tool needs (descriptor `_meta`, [`META_REQUIRES`])
/// that `declared` (the client's capabilities object) lacks; `None` when it has them all.
pub fn missing_capabilities(descriptor: &Descriptor, declared: &Value) -> Option<Map<String, Value>> {
    let required = descriptor.json().get("_meta")?.get(META_REQUIRES)?.as_object()?;
    let missing: Map<String, Value> = required
        .iter()
        .filter(|(k, _)| declared.get(k.as_str()).is_none())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!missing.is_empty()).then_some(missing)
}

/// Checks the arguments against the common core of JSON Schema: `type`, `required`,
/// `properties` (recursively), `enum`, `additionalProperties: false`, `items`. Keywords
/// outside that core are left to the provider.
pub fn check_arguments(schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    let Some(schema) = schema.as_object() else { return Ok(()) };
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let is = |ty: &str| match ty {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "number" => value.is_number(),
            "integer" => value.as_f64().is_some_and(|f| f.fract() == 0.0),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => true,
        };
        if !types.is_empty() && !types.iter().any(|t| is(t)) {
            return Err(format!("{path} must be of type {}", types.join(" or ")));
        }
    }
    if let Some(Value::Array(options)) = schema.get("enum") {
        if !options.contains(value) {
            return Err(format!("{path} must be one of {}", Value::Array(options.clone())));
        }
    }
    if let Value::Object(obj) = value {
        if let Some(Value::Array(required)) = schema.get("required") {
            if let Some(missing) = required.iter().filter_map(Value::as_str).find(|k| !obj.contains_key(*k)) {
                return Err(format!("{path} is missing the required property {missing:?}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(sub) => check_arguments(sub, v, &format!("{path}.{k}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{path} has the property {k:?}, which the schema does not allow"));
                }
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(sub)) = (value, schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            check_arguments(sub, v, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

/// A call's answer as an MCP `CallToolResult` (JSON), the mapping docs/PROTOCOL.md defines:
///
/// - success with `content-type: application/mcp-tool-result+json`: the payload is the
///   result itself (content blocks of any kind, `structuredContent`, `isError`);
/// - other success: UTF-8 text becomes a text block, and a JSON object also
///   `structuredContent`; other bytes an embedded binary resource;
/// - failure: `isError: true` with a text saying what happened (the provider's message for
///   its own errors; what to do for the node's: no provider, deadline, busy, …).
pub fn result_json(code: ErrorCode, headers: &Headers, payload: &[u8], procedure: &str, realm: &str) -> Value {
    use base64::Engine as _;
    let error = |text: String| json!({"content": [{"type": "text", "text": text}], "isError": true});
    let message = || String::from_utf8_lossy(payload).into_owned();
    match code {
        ErrorCode::NoError => {
            if headers.get("content-type").is_some_and(|v| v == TOOL_RESULT_TYPE || v == answers::MCP_RESULT_TYPE) {
                return match serde_json::from_slice::<Value>(payload) {
                    Ok(Value::Object(r)) if r.get("content").is_some_and(Value::is_array) => Value::Object(r),
                    Ok(_) => error(format!("the provider of {procedure} sent a tool result without a content array")),
                    Err(e) => error(format!("the provider of {procedure} sent a malformed tool result: {e}")),
                };
            }
            match std::str::from_utf8(payload) {
                Ok(text) => {
                    let mut r = json!({"content": [{"type": "text", "text": text}], "isError": false});
                    if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) {
                        r["structuredContent"] = Value::Object(obj);
                    }
                    r
                }
                Err(_) => json!({"content": [{"type": "resource", "resource": {
                    "uri": format!("fovea:///{procedure}/result"),
                    "mimeType": "application/octet-stream",
                    "blob": base64::engine::general_purpose::STANDARD.encode(payload),
                }}], "isError": false}),
            }
        }
        ErrorCode::NoProvider => error(format!(
            "no provider of {procedure} is running in realm {realm:?}: start one (fovea serve {procedure} …)"
        )),
        ErrorCode::Timeout => error(format!("{procedure} did not answer before the deadline")),
        ErrorCode::ProviderDisconnected => {
            error(format!("the provider of {procedure} disconnected while handling the call"))
        }
        ErrorCode::Busy => error(format!("busy, retry shortly: {}", message())),
        code if code.is_application() => error(message()),
        code => error(format!("{code}: {}", message())),
    }
}

pub mod answers;
mod catalog;
pub mod uri_template;
pub use catalog::Catalog;

/// The MCP log levels, least severe first.
pub const LOG_LEVELS: [&str; 8] = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];

/// Progress or a log line a provider sends while it handles a call.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Notice {
    /// How far the work has come: `progress` increases; `total` when known.
    Progress { progress: f64, total: Option<f64>, message: Option<String> },
    /// A log line: one of [`LOG_LEVELS`], an optional logger name, and any JSON data.
    Log { level: String, logger: Option<String>, data: Value },
    /// A question for the caller's agent (v8), from the provider: MCP's
    /// `elicitation/create`, `sampling/createMessage` or `roots/list` with its params.
    /// `id` is the provider's, unique among its open questions on the call. `key`, when
    /// given (1 to [`MAX_QUESTION_KEY_LEN`] bytes), names the question the same way each
    /// time the call runs, so an answer given on a retry finds it (MCP 2026-07-28's
    /// input-required results); without one, the n-th question of a run is `q<n>`.
    Question { id: u64, key: Option<String>, method: String, params: Value },
    /// The answer to question `id` (v8), from the caller: the MCP result, or the error
    /// (JSON-RPC code and message) its agent gave or the caller's front end met.
    Reply { id: u64, result: Result<Value, (i64, String)> },
}

/// The MCP methods a provider may ask the caller's agent ([`Notice::Question`]).
pub const QUESTION_METHODS: [&str; 3] = ["elicitation/create", "sampling/createMessage", "roots/list"];

/// The longest key a question may have ([`Notice::Question`]), in bytes.
pub const MAX_QUESTION_KEY_LEN: usize = 64;

/// The error code of a [`Notice::Reply`] that defers a question: the agent is asked
/// through an input-required result and answers on its retry of the request, which runs
/// the call again; the provider should end this run (fail the call).
pub const INPUT_REQUIRED: i64 = -32090;

impl Notice {
    /// Parses a `NOTICE` body. `None` for an unknown kind or a malformed body: notices are
    /// advisory, so a bad one is skipped rather than failing the call.
    pub fn from_wire(kind: u64, body: &[u8]) -> Option<Notice> {
        let v: Map<String, Value> = serde_json::from_slice(body).ok()?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        match kind {
            notice::PROGRESS => Some(Notice::Progress {
                progress: v.get("progress")?.as_f64()?,
                total: v.get("total").and_then(Value::as_f64),
                message: text("message"),
            }),
            notice::LOG => {
                let level = text("level").filter(|l| LOG_LEVELS.contains(&l.as_str()))?;
                Some(Notice::Log { level, logger: text("logger"), data: v.get("data").cloned().unwrap_or(Value::Null) })
            }
            notice::QUESTION => Some(Notice::Question {
                id: v.get("id")?.as_u64()?,
                key: match v.get("key") {
                    None => None,
                    Some(k) => Some(k.as_str().filter(|k| (1..=MAX_QUESTION_KEY_LEN).contains(&k.len()))?.to_owned()),
                },
                method: text("method").filter(|m| QUESTION_METHODS.contains(&m.as_str()))?,
                params: v.get("params").cloned().unwrap_or_else(|| Value::Object(Map::new())),
            }),
            notice::REPLY => {
                let id = v.get("id")?.as_u64()?;
                let result = match (v.get("result"), v.get("error")) {
                    (Some(r), None) => Ok(r.clone()),
                    (None, Some(e)) => Err((
                        e.get("code").and_then(Value::as_i64).unwrap_or(-32603),
                        e.get("message").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    )),
                    _ => return None,
                };
                Some(Notice::Reply { id, result })
            }
            _ => None,
        }
    }

    /// The kind and body of its `NOTICE` frame.
    pub fn to_wire(&self) -> (u64, Bytes) {
        let (kind, mut v) = match self {
            Notice::Progress { progress, total, message } => {
                let mut v = Map::new();
                v.insert("progress".into(), (*progress).into());
                if let Some(t) = total {
                    v.insert("total".into(), (*t).into());
                }
                if let Some(m) = message {
                    v.insert("message".into(), m.clone().into());
                }
                (notice::PROGRESS, v)
            }
            Notice::Log { level, logger, data } => {
                let mut v = Map::new();
                v.insert("level".into(), level.clone().into());
                if let Some(l) = logger {
                    v.insert("logger".into(), l.clone().into());
                }
                v.insert("data".into(), data.clone());
                (notice::LOG, v)
            }
            Notice::Question { id, key, method, params } => {
                let mut v = Map::new();
                v.insert("id".into(), (*id).into());
                if let Some(k) = key {
                    v.insert("key".into(), k.clone().into());
                }
                v.insert("method".into(), method.clone().into());
                v.insert("params".into(), params.clone());
                (notice::QUESTION, v)
            }
            Notice::Reply { id, result } => {
                let mut v = Map::new();
                v.insert("id".into(), (*id).into());
                match result {
                    Ok(r) => v.insert("result".into(), r.clone()),
                    Err((code, message)) => v.insert("error".into(), json!({"code": code, "message": message})),
                };
                (notice::REPLY, v)
            }
        };
        let mut body = serde_json::to_vec(&v).unwrap_or_default();
        if body.len() > crate::frame::MAX_NOTICE_LEN && matches!(self, Notice::Reply { .. }) {
            // An answer cut short would mean something else: it fails instead. (A question
            // over the limit is refused before it is sent: `Request::ask`.)
            let id = v.get("id").cloned().unwrap_or(Value::Null);
            let error = json!({"code": -32603, "message": "the answer is over the 16 KiB a NOTICE carries"});
            let mut v = Map::new();
            v.insert("id".into(), id);
            v.insert("error".into(), error);
            return (notice::REPLY, Bytes::from(serde_json::to_vec(&v).unwrap_or_default()));
        }
        if body.len() > crate::frame::MAX_NOTICE_LEN {
            // Too long for the wire: keep what a reader needs to know.
            v.retain(|k, _| k == "progress" || k == "total" || k == "level");
            v.insert("message".into(), "(notice truncated: over 16 KiB)".into());
            body = serde_json::to_vec(&v).unwrap_or_default();
        }
        (kind, Bytes::from(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn desc(d: &str) -> Descriptor {
        Descriptor::parse(serde_json::json!({ "description": d }).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn descriptor_checks() {
        let ok = Descriptor::parse(br#"{"description":"adds","inputSchema":{"type":"object"}}"#).unwrap();
        assert_eq!(ok.description(), "adds");
        // inputSchema defaults to an object schema.
        assert_eq!(desc("x").json()["inputSchema"], serde_json::json!({"type": "object"}));
        let bad = |raw: &str| Descriptor::parse(raw.as_bytes()).unwrap_err();
        assert_eq!(bad("{}"), DescriptorError::NoDescription);
        assert!(matches!(bad("[1]"), DescriptorError::NotJson(_)));
        assert!(matches!(bad("{"), DescriptorError::NotJson(_)));
        assert_eq!(
            bad(r#"{"description":"x","name":"y"}"#),
            DescriptorError::UnknownKey { key: "name".into(), kind: Kind::Tool }
        );
        assert!(matches!(
            bad(r#"{"description":"x","inputSchema":{"type":"string"}}"#),
            DescriptorError::WrongType { .. }
        ));
        assert!(matches!(bad(r#"{"description":"x","outputSchema":[]}"#), DescriptorError::WrongType { .. }));
        assert!(matches!(bad(r#"{"description":1}"#), DescriptorError::WrongType { .. }));
        assert_eq!(
            bad("{\"description\":\"a\u{200b}b\"}"),
            DescriptorError::HiddenChar { key: "description", ch: 0x200b }
        );
        assert_eq!(
            bad("{\"description\":\"x\",\"title\":\"\u{e0041}\"}"),
            DescriptorError::HiddenChar { key: "title", ch: 0xe0041 }
        );
        assert!(matches!(bad(r#"{"description":"a\u0007"}"#), DescriptorError::HiddenChar { ch: 7, .. }));
        // Newlines and tabs are text.
        Descriptor::parse(br#"{"description":"line\n\tmore"}"#).unwrap();
        let long = format!(r#"{{"description":"{}"}}"#, "a".repeat(MAX_DESCRIPTION_LEN + 1));
        assert!(matches!(bad(&long), DescriptorError::TextTooLong { .. }));
    }

    #[test]
    fn descriptors_of_each_kind() {
        let parse = |v: Value| Descriptor::parse(v.to_string().as_bytes());
        let r = parse(json!({"kind": "resource", "uri": "test://a", "name": "a", "mimeType": "text/plain", "size": 3}))
            .unwrap();
        assert_eq!((r.kind(), r.uri(), r.uri_template()), (Kind::Resource, Some("test://a"), None));
        let t = parse(json!({"kind": "resourceTemplate", "uriTemplate": "test://t/{id}"})).unwrap();
        assert_eq!((t.kind(), t.uri_template()), (Kind::ResourceTemplate, Some("test://t/{id}")));
        let p = parse(json!({"kind": "prompt", "description": "d", "arguments": [
            {"name": "a", "required": true}, {"name": "b", "description": "optional"}]}))
        .unwrap();
        assert_eq!(required_arguments(&p).collect::<Vec<_>>(), ["a"]);
        // "kind": "tool" is the default, and not kept.
        assert_eq!(parse(json!({"kind": "tool", "description": "x"})).unwrap(), desc("x"));
        let bad = |v: Value| parse(v).unwrap_err();
        assert_eq!(bad(json!({"kind": "widget"})), DescriptorError::UnknownKind("widget".into()));
        assert_eq!(bad(json!({"kind": "resource"})), DescriptorError::Missing("uri"));
        assert!(matches!(bad(json!({"kind": "resource", "uri": "no-scheme"})), DescriptorError::BadUri { .. }));
        assert!(matches!(bad(json!({"kind": "resource", "uri": "a:b c"})), DescriptorError::BadUri { .. }));
        assert!(matches!(
            bad(json!({"kind": "resource", "uri": "a:b", "size": -1})),
            DescriptorError::WrongType { .. }
        ));
        assert!(matches!(
            bad(json!({"kind": "resource", "uri": "a:b", "inputSchema": {}})),
            DescriptorError::UnknownKey { kind: Kind::Resource, .. }
        ));
        assert!(matches!(
            bad(json!({"kind": "resourceTemplate", "uriTemplate": "a:{"})),
            DescriptorError::BadUri { .. }
        ));
        assert_eq!(bad(json!({"kind": "prompt"})), DescriptorError::NoDescription);
        assert!(matches!(
            bad(json!({"kind": "prompt", "description": "d", "arguments": [{"required": true}]})),
            DescriptorError::WrongType { key: "arguments", .. }
        ));
        assert!(matches!(
            bad(json!({"kind": "prompt", "description": "d", "arguments": [{"name": "a\u{200b}"}]})),
            DescriptorError::HiddenChar { .. }
        ));
        assert!(matches!(
            bad(json!({"kind": "resource", "uri": "a:b", "name": "x\u{202e}"})),
            DescriptorError::HiddenChar { key: "name", .. }
        ));
    }

    #[test]
    fn questions_and_replies_round_trip() {
        let q = Notice::Question { id: 1, key: None, method: "roots/list".into(), params: json!({}) };
        let (kind, body) = q.to_wire();
        assert_eq!((kind, &body[..]), (notice::QUESTION, &br#"{"id":1,"method":"roots/list","params":{}}"#[..]));
        assert_eq!(Notice::from_wire(kind, &body), Some(q));
        let keyed =
            Notice::Question { id: 2, key: Some("user".into()), method: "roots/list".into(), params: json!({}) };
        let (kind, body) = keyed.to_wire();
        assert_eq!(&body[..], br#"{"id":2,"key":"user","method":"roots/list","params":{}}"#);
        assert_eq!(Notice::from_wire(kind, &body), Some(keyed));
        for bad_key in [json!(""), json!(7), json!("k".repeat(MAX_QUESTION_KEY_LEN + 1))] {
            let body = serde_json::to_vec(&json!({"id": 3, "key": bad_key, "method": "roots/list"})).unwrap();
            assert_eq!(Notice::from_wire(notice::QUESTION, &body), None, "a bad key makes a malformed notice");
        }
        let bad = br#"{"id":1,"method":"tools/call","params":{}}"#;
        assert_eq!(Notice::from_wire(notice::QUESTION, bad), None, "only the three methods are questions");
        for r in [Ok(json!({"roots": []})), Err((-32601, "no".to_owned()))] {
            let reply = Notice::Reply { id: 7, result: r };
            let (kind, body) = reply.to_wire();
            assert_eq!(Notice::from_wire(kind, &body), Some(reply));
        }
        // An answer too long for a NOTICE becomes an error saying so, never a cut answer.
        let long = Notice::Reply { id: 2, result: Ok(json!({"text": "x".repeat(20_000)})) };
        let (kind, body) = long.to_wire();
        assert!(body.len() <= crate::frame::MAX_NOTICE_LEN);
        assert!(matches!(Notice::from_wire(kind, &body), Some(Notice::Reply { id: 2, result: Err((-32603, _)) })));
    }

    #[test]
    fn names() {
        assert_eq!(tool_name("math.add"), "math__add");
        assert_eq!(tool_name("test_simple_text"), "test_simple_text");
        assert_eq!(tool_name("a-b.C9"), "a-b__C9");
        // Not reversible: hashed.
        let h = tool_name("a__b");
        assert!(h.starts_with("a__b_") && h.len() == 13, "{h}");
        assert_ne!(tool_name("a__b"), tool_name("a.b"));
        let u = tool_name("wetter.zürich");
        assert!(u.starts_with("wetter__z_rich_"), "{u}");
        let long = tool_name(&"x".repeat(100));
        assert_eq!(long.len(), 64);
        // docs/PROTOCOL.md §4.2's worked example: FNV-1a-32 over the UTF-8 bytes, lowercase.
        assert_eq!(tool_name("météo.temp"), "m_t_o__temp_7b83ee1f");
    }

    proptest! {
        #[test]
        fn tool_names_are_valid(p in "\\PC{1,120}") {
            let n = tool_name(&p);
            prop_assert!(!n.is_empty() && n.len() <= MAX_TOOL_NAME_LEN);
            prop_assert!(n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        }

        #[test]
        fn parse_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Descriptor::parse(&raw);
        }
    }

    #[test]
    fn argument_checks() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"a": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}},
                           "mode": {"enum": ["x", "y"]}},
            "required": ["a"],
            "additionalProperties": false,
        });
        let ok = |v: Value| check_arguments(&schema, &v, "arguments");
        assert!(ok(serde_json::json!({"a": 1, "tags": ["t"], "mode": "x"})).is_ok());
        assert!(ok(serde_json::json!({})).unwrap_err().contains("required property \"a\""));
        assert!(ok(serde_json::json!({"a": 1.5})).unwrap_err().contains("arguments.a must be of type integer"));
        assert!(ok(serde_json::json!({"a": 1, "tags": [1]})).unwrap_err().contains("arguments.tags[0]"));
        assert!(ok(serde_json::json!({"a": 1, "mode": "z"})).is_err());
        assert!(ok(serde_json::json!({"a": 1, "b": 2})).unwrap_err().contains("\"b\""));
    }
}
