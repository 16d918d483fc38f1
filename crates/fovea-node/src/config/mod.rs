//! Node configuration: every setting of every layer, with its default and the reason for
//! it, the configuration file that sets them ([`mod@file`]) and the merge of the command
//! line over the file ([`overrides`]). Below every other module but
//! [`crate::auth`]: each layer reads its settings from here.

pub mod file;
pub mod overrides;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::RealmConfig;

/// The realm every client joins when the node has no realm configuration.
pub const DEFAULT_REALM: &str = "default";

/// Everything a node needs to start. `NodeConfig::new(data_dir)` gives the defaults.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// UDP address to listen on. Default `127.0.0.1:4433`: loopback until the operator
    /// chooses to expose the node.
    pub listen: SocketAddr,
    /// Where the node keeps its state (the self-signed certificate, later the identity key).
    pub data_dir: PathBuf,
    /// A PEM certificate chain and private key to use instead of the self-signed pair.
    pub tls: Option<TlsFiles>,
    /// The node's name, announced in `WELCOME`. Default: the host name.
    pub name: String,
    /// Realms and their users, from the configuration file. `None`: one open realm,
    /// `default`, that admits anyone (refused on a non-loopback address unless
    /// `allow_anonymous`).
    pub realms: Option<Vec<RealmConfig>>,
    /// Allow the open `default` realm on a non-loopback address.
    pub allow_anonymous: bool,
    /// Resource limits.
    pub limits: Limits,
    /// TCP address of the admin HTTP endpoint (`/metrics`, `/health`, …); `None`: off.
    /// Default `127.0.0.1:9600`.
    pub admin: Option<SocketAddr>,
    /// Bearer token the admin endpoint requires (all paths but `/health`). Required when
    /// the endpoint listens on a non-loopback address.
    pub admin_token: Option<String>,
    /// Take part in a mesh of nodes; `None`: a standalone node.
    pub mesh: Option<MeshConfig>,
    /// Serve MCP (AI agents) over HTTP; `None`: off.
    pub mcp: Option<McpConfig>,
    /// TCP address of the TLS-over-TCP client transport (for networks that block UDP);
    /// `None`: off.
    pub tcp: Option<SocketAddr>,
    /// The WebSocket client transport (browsers, programs without QUIC); `None`: off.
    pub ws: Option<WsConfig>,
}

/// Whether the WebSocket transport runs over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WsTls {
    /// Plain `ws://` on a loopback address (a browser accepts no self-signed certificate),
    /// `wss://` with the node's certificate anywhere else.
    #[default]
    Auto,
    /// Always `wss://`.
    On,
    /// Always plain `ws://`: for a node behind a proxy that terminates TLS. Anyone on the
    /// path can read and change the traffic, credentials included.
    Off,
}

impl std::str::FromStr for WsTls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(WsTls::Auto),
            "on" => Ok(WsTls::On),
            "off" => Ok(WsTls::Off),
            _ => Err(format!("{s:?} is not one of auto, on, off")),
        }
    }
}

impl WsTls {
    /// The setting's name in flags and the file.
    pub fn name(self) -> &'static str {
        match self {
            WsTls::Auto => "auto",
            WsTls::On => "on",
            WsTls::Off => "off",
        }
    }
}

/// Settings of the WebSocket transport.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// TCP address to listen on.
    pub listen: SocketAddr,
    /// TLS or not; see [`WsTls`].
    pub tls: WsTls,
    /// Origins whose pages may connect, besides the loopback ones (`http://localhost:*`,
    /// `http://127.0.0.1:*`, `http://[::1]:*` and their `https` forms). An entry ending in
    /// `:*` matches any port; `*` matches every origin. A request without an `Origin`
    /// header (not from a browser) is let in.
    pub allowed_origins: Vec<String>,
}

impl WsConfig {
    /// `listen` with TLS on `auto` and only loopback origins.
    pub fn new(listen: SocketAddr) -> Self {
        WsConfig { listen, tls: WsTls::Auto, allowed_origins: Vec::new() }
    }

    /// Whether this configuration serves `wss://`.
    pub fn secure(&self) -> bool {
        match self.tls {
            WsTls::Auto => !self.listen.ip().is_loopback(),
            WsTls::On => true,
            WsTls::Off => false,
        }
    }

    /// Every origin allowed: the loopback ones, then the configured ones.
    pub fn origins(&self) -> Vec<String> {
        let mut all: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .flat_map(|h| [format!("http://{h}:*"), format!("https://{h}:*")])
            .collect();
        all.extend(self.allowed_origins.iter().cloned());
        all
    }
}

/// Paths of a PEM certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// PKCS#8, PKCS#1 or SEC1 private key.
    pub key: PathBuf,
}

/// Per-node and per-connection bounds. Every one has a behaviour at the limit, stated here
/// and in `docs/LIMITS.md`. In a configuration file they form the `[limits]` table, with
/// the field names as keys and durations written as `"10s"`, `"500ms"`, `"5m"`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Open client connections. At the limit a new connection is closed right after its
    /// handshake with `NODE_FULL`. Default 100 000: the design target for idle clients.
    pub max_connections: usize,
    /// Active subscriptions per connection. At the limit `SUB` is answered with
    /// `TOO_MANY_SUBSCRIPTIONS`. Default 65 536.
    pub max_subscriptions: usize,
    /// Active registrations (procedures provided) per connection. At the limit `REG` is
    /// answered with `TOO_MANY_REGISTRATIONS`. Default 4096.
    pub max_registrations: usize,
    /// Calls one connection may have in flight. At the limit a `CALL` is answered at once
    /// with `BUSY`: push-back to that caller only. Default 1024.
    pub max_calls_in_flight: usize,
    /// Requests one provider connection may be handling. A provider at the limit is skipped;
    /// if every provider chosen is at it, the call gets `BUSY`. Default 1024.
    pub max_requests_in_flight: usize,
    /// Longest call timeout honoured; longer (or 0) timeouts are cut to it. Default 5 min.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub max_call_timeout: Duration,
    /// Largest payload accepted in `PUB` (announced in `WELCOME`). Larger: `PAYLOAD_TOO_LARGE`.
    /// Default 1 MiB, as NATS.
    pub max_payload: usize,
    /// Most bytes one stream may carry past its first frame: a streamed request, answer or
    /// message (protocol 5 and 6). Past it the stream ends with `PAYLOAD_TOO_LARGE`.
    /// Default 16 GiB: a bound, not a shape for common use.
    pub max_stream_bytes: u64,
    /// Bytes queued for one connection that its client has not yet read. A message that
    /// would exceed it is dropped for that connection and counted. Default 64 MiB, as NATS.
    pub max_pending_bytes: usize,
    /// A message queued for a connection whose queue is more than an eighth full holds back the
    /// publishing connection: its next read waits until that queue has been handed to the
    /// transport, at most this long (once per read). The publisher slows to what its
    /// subscribers take instead of losing messages for them, as NATS stalls a fast producer
    /// (2–5 ms). Zero turns it off: messages are then dropped at `max_pending_bytes`
    /// without slowing anyone. Default 5 ms.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub producer_stall: Duration,
    /// A connection that keeps losing messages (its queue full) for this long, without one
    /// delivery getting through, is closed with `SLOW_CONSUMER`. Default 10 s.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub slow_consumer_timeout: Duration,
    /// Topics remembered per publishing connection with their subscriber lists; at the
    /// limit the cache is cleared. Default 4096.
    pub match_cache_entries: usize,
    /// Time from the QUIC handshake to `HELLO`. Late: closed with `HANDSHAKE_TIMEOUT`.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub handshake_timeout: Duration,
    /// A connection with no traffic for this long is closed (QUIC idle timeout).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval, well under the idle timeout so idle clients stay up.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub keep_alive: Duration,
    /// On shutdown, how long clients get to leave after `GOAWAY` before the node closes.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub drain_timeout: Duration,
    /// Largest frame accepted, in bytes (at most the protocol's 1 MiB + 32 KiB). Larger:
    /// the connection is closed with `FRAME_TOO_LARGE`.
    pub max_frame: usize,
    /// Longest topic, pattern or procedure name, in bytes (at most 1024). Longer:
    /// `INVALID_TOPIC` / `INVALID_PATTERN` / `INVALID_PROCEDURE`.
    pub max_topic_len: usize,
    /// Most segments in a topic, pattern or procedure name (at most 32). More: as above.
    pub max_topic_depth: usize,
    /// Largest encoded header block of a message, in bytes (at most 16 KiB). Larger: the
    /// message is refused with `PAYLOAD_TOO_LARGE`.
    pub max_headers_len: usize,
    /// Largest UDP payload (QUIC datagram) the node sends to a client on loopback, in bytes
    /// (1 200–6 500). A loopback path starts at it, without MTU probes: larger datagrams
    /// carry more messages each (1 KiB pub/sub ~1.7×, 64 B ~1.35× at 6 500 against 1 452).
    /// An idle connection pays nothing for it: datagrams are built in a buffer per worker
    /// thread (the node's QUIC IO shell, `quic`), not per connection.
    /// Network paths use 1 452 at most whatever this says. Default 6 500 (`fovea_core::path`).
    pub max_loopback_datagram: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100_000,
            max_subscriptions: 65_536,
            max_registrations: 4096,
            max_calls_in_flight: 1024,
            max_requests_in_flight: 1024,
            max_call_timeout: Duration::from_secs(300),
            max_payload: fovea_core::limits::MAX_PAYLOAD,
            max_stream_bytes: 16 << 30,
            max_pending_bytes: 64 * 1024 * 1024,
            producer_stall: Duration::from_millis(5),
            slow_consumer_timeout: Duration::from_secs(10),
            match_cache_entries: 4096,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(2),
            max_frame: fovea_core::limits::MAX_FRAME,
            max_topic_len: fovea_core::limits::MAX_TOPIC_LEN,
            max_topic_depth: fovea_core::limits::MAX_TOPIC_DEPTH,
            max_headers_len: fovea_core::limits::MAX_HEADERS_LEN,
            max_loopback_datagram: usize::from(fovea_core::path::LOOPBACK_UDP_PAYLOAD),
        }
    }
}

impl Limits {
    /// Checks that the limits can be honoured.
    ///
    /// # Errors
    /// A message naming the limit and its allowed range.
    pub fn validate(&self) -> Result<(), String> {
        // Call deadlines live in a timer wheel that spans about two years; a day is far
        // beyond any sensible call and keeps the arithmetic away from the edge.
        let day = Duration::from_secs(86_400);
        if self.max_call_timeout.is_zero() || self.max_call_timeout > day {
            return Err(format!("max_call_timeout must be between 1 ms and 1 day, got {:?}", self.max_call_timeout));
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        use fovea_core::limits as proto;
        let within = |name: &str, v: usize, lo: usize, hi: usize| {
            if v < lo || v > hi {
                Err(format!("{name} must be between {lo} and {hi}, got {v}"))
            } else {
                Ok(())
            }
        };
        within("max_frame", self.max_frame, 1024, proto::MAX_FRAME)?;
        within("max_topic_len", self.max_topic_len, 1, proto::MAX_TOPIC_LEN)?;
        within("max_topic_depth", self.max_topic_depth, 1, proto::MAX_TOPIC_DEPTH)?;
        within("max_headers_len", self.max_headers_len, 1, proto::MAX_HEADERS_LEN)?;
        within("max_payload", self.max_payload, 1, self.max_frame.saturating_sub(1024))?;
        if self.max_stream_bytes < self.max_payload as u64 {
            return Err(format!(
                "max_stream_bytes must be at least max_payload ({}), got {}",
                self.max_payload, self.max_stream_bytes
            ));
        }
        // QUIC's smallest datagram, and the largest whose batches quinn can send.
        let largest = usize::from(fovea_core::path::LOOPBACK_UDP_PAYLOAD);
        within("max_loopback_datagram", self.max_loopback_datagram, 1200, largest)?;
        // A stall holds a publisher's whole connection: longer than a second is a stuck
        // publisher, not a slowed one.
        if self.producer_stall > Duration::from_secs(1) {
            return Err(format!("producer_stall must be at most 1s (0 turns it off), got {:?}", self.producer_stall));
        }
        if self.keep_alive >= self.idle_timeout {
            return Err(format!(
                "keep_alive ({:?}) must be shorter than idle_timeout ({:?}), or idle clients are dropped",
                self.keep_alive, self.idle_timeout
            ));
        }
        Ok(())
    }
}

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4433";

impl NodeConfig {
    /// Defaults, keeping state in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            data_dir: data_dir.into(),
            tls: None,
            name: default_name(),
            realms: None,
            allow_anonymous: false,
            limits: Limits::default(),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9600))),
            admin_token: None,
            mesh: None,
            mcp: None,
            tcp: None,
            ws: None,
        }
    }
}

fn default_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "fovea".to_owned())
}

pub use fovea_core::duration::{format_duration, parse_duration};

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let bad = Limits { keep_alive: Duration::from_secs(60), ..Limits::default() };
        assert!(bad.validate().unwrap_err().contains("keep_alive"));
        for size in [1199, 6501, 65_527] {
            let bad = Limits { max_loopback_datagram: size, ..Limits::default() };
            assert!(bad.validate().unwrap_err().contains("max_loopback_datagram must be between 1200 and 6500"));
        }
        for size in [1200, 1452, 6500] {
            assert_eq!(Limits { max_loopback_datagram: size, ..Limits::default() }.validate(), Ok(()));
        }
    }
}

/// How this node takes part in a mesh.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// UDP address of the mesh endpoint (node-to-node links).
    pub listen: SocketAddr,
    /// Mesh addresses of members to join through (any one that answers is enough).
    pub join: Vec<SocketAddr>,
    /// The shared secret every member holds; `None` when admission is by CA alone.
    pub secret: Option<String>,
    /// The mesh CA: members must present a certificate it issued (`--mesh-ca`).
    pub ca: Option<std::path::PathBuf>,
    /// This node's certificate from the mesh CA, and its key.
    pub identity: Option<TlsFiles>,
    /// Links to other nodes at once. At the limit the least recently used link is closed
    /// to make room (its node stays in the DHT; the link is dialed again when needed).
    pub max_links: usize,
    /// A link unused for this long is closed (reaped) the same way.
    pub link_idle: Duration,
    /// DHT parameters.
    pub dht: fovea_core::dht::Config,
    /// Failure detection on links (SWIM-style probes; docs/MESH.md, "Failure").
    pub failure: fovea_core::failure::Config,
}

impl MeshConfig {
    /// A mesh on `listen` with `secret`, joining nobody (the first node), default limits.
    pub fn new(listen: SocketAddr, secret: impl Into<String>) -> Self {
        MeshConfig {
            listen,
            join: Vec::new(),
            secret: Some(secret.into()),
            ca: None,
            identity: None,
            max_links: 1024,
            link_idle: Duration::from_secs(300),
            dht: fovea_core::dht::Config::default(),
            failure: fovea_core::failure::Config::default(),
        }
    }
}

/// `[mcp]`: the MCP endpoint. Off unless configured.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// TCP address of the HTTP endpoint (the path is `/mcp`). Loopback by default.
    pub listen: SocketAddr,
    /// `Host` values accepted besides loopback names (DNS-rebinding defence).
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted (`scheme://host[:port]`, `:*` for any port); requests
    /// with another `Origin` get 403. Loopback origins are always accepted.
    pub allowed_origins: Vec<String>,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most legacy (2025-11-25) sessions open on the node; more get 503.
    pub max_sessions: usize,
    /// Most legacy sessions per user; more get 429.
    pub max_sessions_per_user: usize,
    /// A legacy session without a request for this long is closed (and counted reaped).
    pub session_idle: Duration,
    /// A legacy session with no request open for this long is hibernated: its rmcp worker
    /// is closed and only its `initialize` is kept, replayed when its next request comes
    /// (the agent sees no difference). Sessions with resource subscriptions or a logging
    /// level never hibernate. `None`: sessions stay live until `session_idle`.
    pub hibernate_after: Option<Duration>,
    /// Deadline of a `tools/call`.
    pub call_timeout: Duration,
    /// Most `tools/call`s in flight at once through this endpoint; more are answered
    /// at once with a "busy" error result.
    pub max_calls_in_flight: usize,
}

impl McpConfig {
    /// Defaults for an endpoint on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        McpConfig {
            listen,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            max_sessions: 50_000,
            max_sessions_per_user: 20_000,
            session_idle: Duration::from_secs(300),
            hibernate_after: Some(Duration::from_secs(30)),
            call_timeout: Duration::from_secs(60),
            max_calls_in_flight: 256,
        }
    }
}
