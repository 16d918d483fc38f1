//! Node configuration and its limits, each with a default and the reason for it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    pub realms: Option<Vec<crate::auth::RealmConfig>>,
    /// Allow the open `default` realm on a non-loopback address.
    pub allow_anonymous: bool,
    /// Resource limits.
    pub limits: Limits,
}

/// Paths of a PEM certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// PKCS#8, PKCS#1 or SEC1 private key.
    pub key: PathBuf,
}

/// Per-node and per-connection bounds. Every one has a behaviour at the limit, stated here.
#[derive(Debug, Clone)]
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
    pub max_call_timeout: Duration,
    /// Largest payload accepted in `PUB` (announced in `WELCOME`). Larger: `PAYLOAD_TOO_LARGE`.
    /// Default 1 MiB, as NATS.
    pub max_payload: usize,
    /// Bytes queued for one connection that its client has not yet read. A message that
    /// would exceed it is dropped for that connection and counted. Default 64 MiB, as NATS.
    pub max_pending_bytes: usize,
    /// A connection that keeps losing messages (its queue full) for this long, without one
    /// delivery getting through, is closed with `SLOW_CONSUMER`. Default 10 s.
    pub slow_consumer_timeout: Duration,
    /// Topics remembered per publishing connection with their subscriber lists; at the
    /// limit the cache is cleared. Default 4096.
    pub match_cache_entries: usize,
    /// Time from the QUIC handshake to `HELLO`. Late: closed with `HANDSHAKE_TIMEOUT`.
    pub handshake_timeout: Duration,
    /// A connection with no traffic for this long is closed (QUIC idle timeout).
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval, well under the idle timeout so idle clients stay up.
    pub keep_alive: Duration,
    /// On shutdown, how long clients get to leave after `GOAWAY` before the node closes.
    pub drain_timeout: Duration,
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
            max_pending_bytes: 64 * 1024 * 1024,
            slow_consumer_timeout: Duration::from_secs(10),
            match_cache_entries: 4096,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(2),
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
