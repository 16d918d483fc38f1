//! A minimal MCP-over-HTTP client for tests: plain HTTP/1.1 on a TCP socket, so tests see
//! exactly what an agent would (status, headers, SSE frames) with no client library in
//! between.

#![allow(dead_code)]

use std::net::SocketAddr;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::WAIT;

/// One HTTP answer: status, headers (lower-case names), and the JSON-RPC messages of its
/// body (SSE `data:` lines, or a JSON body).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub messages: Vec<Value>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The response (not a notification) among the messages.
    pub fn response(&self) -> &Value {
        self.messages.iter().find(|m| m.get("id").is_some() && m.get("method").is_none()).expect("a JSON-RPC response")
    }

    pub fn result(&self) -> &Value {
        let r = self.response();
        r.get("result").unwrap_or_else(|| panic!("expected a result, got {r}"))
    }

    pub fn notifications(&self, method: &str) -> Vec<&Value> {
        self.messages.iter().filter(|m| m["method"] == method).collect()
    }
}

/// An agent: an endpoint, maybe a token, and (legacy era) a session.
#[derive(Clone)]
pub struct Agent {
    pub addr: SocketAddr,
    pub token: Option<String>,
    pub session: Option<String>,
    pub version: &'static str,
}

impl Agent {
    pub fn new(addr: SocketAddr) -> Agent {
        Agent { addr, token: None, session: None, version: "2025-11-25" }
    }

    pub fn with_token(mut self, token: &str) -> Agent {
        self.token = Some(token.to_owned());
        self
    }

    fn head(&self, method: &str, extra: &[(&str, &str)]) -> String {
        let mut h = format!("{method} /mcp HTTP/1.1\r\nConnection: close\r\n");
        if !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            h.push_str(&format!("Host: 127.0.0.1:{}\r\n", self.addr.port()));
        }
        h.push_str("Accept: application/json, text/event-stream\r\n");
        h.push_str(&format!("MCP-Protocol-Version: {}\r\n", self.version));
        if let Some(t) = &self.token {
            h.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(s) = &self.session {
            h.push_str(&format!("Mcp-Session-Id: {s}\r\n"));
        }
        for (k, v) in extra {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h
    }

    /// POSTs `body` and reads the whole answer.
    pub async fn post(&self, body: &Value) -> Reply {
        self.post_with(body, &[]).await
    }

    pub async fn post_with(&self, body: &Value, extra: &[(&str, &str)]) -> Reply {
        let body = body.to_string();
        let mut req = self.head("POST", extra);
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
        exchange(self.addr, req).await
    }

    /// POSTs `body` as it is (not necessarily JSON) with a JSON content type.
    pub async fn post_raw(&self, body: &str) -> Reply {
        let mut req = self.head("POST", &[]);
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
        exchange(self.addr, req).await
    }

    pub async fn delete(&self) -> Reply {
        let mut req = self.head("DELETE", &[]);
        req.push_str("\r\n");
        exchange(self.addr, req).await
    }

    /// `initialize` + `notifications/initialized`; keeps the session id.
    pub async fn initialize(&mut self) -> Reply {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": self.version, "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}});
        let reply = self.post(&init).await;
        assert_eq!(reply.status, 200, "initialize: {}", reply.body);
        self.session = reply.header("mcp-session-id").map(str::to_owned);
        let done = self.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        assert_eq!(done.status, 202, "initialized: {}", done.body);
        reply
    }

    /// A request; in the 2026-07-28 era with the standard `Mcp-Method`/`Mcp-Name` headers.
    pub async fn request(&self, id: u64, method: &str, params: Value) -> Reply {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if !self.version.starts_with("2026") {
            return self.post(&body).await;
        }
        // Mcp-Name names what the request is about: a tool's or prompt's name, a URI, a task.
        let key = match method {
            "resources/read" => "uri",
            m if m.starts_with("tasks/") => "taskId",
            _ => "name",
        };
        let name = params.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
        let mut extra = vec![("Mcp-Method", method)];
        if matches!(
            method,
            "tools/call" | "prompts/get" | "resources/read" | "tasks/get" | "tasks/update" | "tasks/cancel"
        ) {
            extra.push(("Mcp-Name", &name));
        }
        self.post_with(&body, &extra).await
    }

    /// Opens the session's GET stream; returns a reader of its SSE messages.
    pub async fn listen(&self) -> SseStream {
        let mut req = self.head("GET", &[]);
        req.push_str("\r\n");
        self.stream(req).await
    }

    /// A 2026-07-28 `subscriptions/listen` with `params`; returns a reader of its stream.
    pub async fn subscribe(&self, params: Value) -> SseStream {
        let body = json!({"jsonrpc": "2.0", "id": 99, "method": "subscriptions/listen", "params": params}).to_string();
        let mut req = self.head("POST", &[("Mcp-Method", "subscriptions/listen")]);
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
        self.stream(req).await
    }

    async fn stream(&self, req: String) -> SseStream {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).await.unwrap();
        assert!(status.contains(" 200 "), "stream: {status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
        }
        SseStream { reader }
    }
}

pub struct SseStream {
    reader: BufReader<TcpStream>,
}

impl SseStream {
    /// The next JSON message on the stream (chunk framing lines are skipped).
    pub async fn next(&mut self) -> Value {
        tokio::time::timeout(WAIT, async {
            loop {
                let mut line = String::new();
                if self.reader.read_line(&mut line).await.unwrap() == 0 {
                    panic!("the stream ended");
                }
                if let Some(data) = line.trim_end().strip_prefix("data:") {
                    if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                        return v;
                    }
                }
            }
        })
        .await
        .expect("a message on the stream in time")
    }
}

async fn exchange(addr: SocketAddr, req: String) -> Reply {
    tokio::time::timeout(WAIT, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        parse(&raw)
    })
    .await
    .expect("an HTTP answer in time")
}

fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_owned() };
    let mut messages = Vec::new();
    for line in body.lines() {
        if let Some(data) = line.strip_prefix("data:") {
            if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                messages.push(v);
            }
        }
    }
    if messages.is_empty() {
        if let Ok(v) = serde_json::from_str::<Value>(body.trim()) {
            messages.push(v);
        }
    }
    Reply { status, headers, messages, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// The value of the Prometheus sample `series` (name with labels, exactly as exposed) on
/// the admin endpoint at `admin`, or 0 when absent.
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let mut s = TcpStream::connect(admin).await.unwrap();
    let req = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&raw);
    text.lines()
        .filter_map(|l| l.strip_prefix(series))
        .find_map(|rest| rest.strip_prefix(' ').and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// The JSON body of `GET path` on the admin endpoint at `admin`.
pub async fn get_json(admin: SocketAddr, path: &str) -> Value {
    let mut s = TcpStream::connect(admin).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}
