//! The node assembled: binds the transport, builds realms and the mesh, wires routing to
//! the mesh, and runs the accept loop and the front ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fovea_core::path::{ByPath, LOOPBACK_UDP_PAYLOAD};
use fovea_core::ErrorCode;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::NodeConfig;
use crate::config::DEFAULT_REALM;
use crate::error::NodeError;
use crate::front::{admin, mcp, session};
use crate::front::{Reloader, Shared, StatsHandle};
use crate::routing::Router;
use crate::transport::stream::{Link, StreamServer, Transport};
use crate::transport::{self, close_code, quic, tls};
use crate::{auth, mesh};
use fovea_spin as spin;

/// A bound, not yet running node.
pub struct Node {
    endpoint: quic::Endpoint,
    /// Client connections' QUIC settings, by path: loopback peers get larger datagrams.
    servers: ByPath<Arc<quinn::ServerConfig>>,
    /// The endpoint's socket, watched by idle workers ([`spin`]) while the node runs.
    _spin: spin::Watch,
    admin: Option<std::net::TcpListener>,
    mcp: Option<std::net::TcpListener>,
    /// The stream transports' listeners (TLS over TCP, WebSocket), with their servers.
    streams: Vec<(std::net::TcpListener, StreamServer)>,
    shared: Arc<Shared>,
    fingerprint: String,
    self_signed: Option<PathBuf>,
}

impl Node {
    /// Loads (or creates) the TLS identity and binds the UDP socket.
    ///
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`NodeError`] if the data dir, certificate or key cannot be used, or the address
    /// cannot be bound.
    pub fn bind(config: NodeConfig) -> Result<Node, NodeError> {
        config.limits.validate().map_err(NodeError::Config)?;
        let realms = realms_of(&config)?;
        let identity = tls::load_identity(&config.data_dir, config.tls.as_ref())?;
        let fingerprint = tls::fingerprint(&identity.chain[0]);
        let mut server = quinn::ServerConfig::with_crypto(tls::server_crypto(&identity)?);
        // Address validation costs a round trip per connection and only helps against
        // spoofed floods on public addresses; issue-level hardening revisits it.
        server.migration(false);
        // Validated above: within 1 200..=LOOPBACK_UDP_PAYLOAD.
        let largest = u16::try_from(config.limits.max_loopback_datagram).unwrap_or(LOOPBACK_UDP_PAYLOAD);
        let transports = ByPath {
            network: transport::client_transport(&config.limits)?,
            loopback: transport::on_loopback(transport::client_transport(&config.limits)?, largest),
        };
        let servers = transports.map(|t| {
            let mut s = server.clone();
            s.transport_config(Arc::new(t));
            Arc::new(s)
        });
        let quic_stats = Arc::new(quic::EndpointStats::default());
        let (endpoint, spin_watch) =
            transport::bind_endpoint(servers.network.clone(), config.listen, quic_stats.clone())?;
        let listen = endpoint.local_addr().unwrap_or(config.listen);
        let admin = match config.admin {
            None => None,
            Some(addr) if !addr.ip().is_loopback() && config.admin_token.is_none() => {
                return Err(NodeError::Config(format!(
                    "the admin endpoint on {addr} would expose the node's connections to the network: \
                     set an admin token (--admin-token), or keep it on loopback"
                )));
            }
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr).map_err(|source| NodeError::AdminBind { addr, source })?;
                l.set_nonblocking(true).map_err(|source| NodeError::AdminBind { addr, source })?;
                Some(l)
            }
        };
        let mcp = match &config.mcp {
            None => None,
            Some(m) => {
                let addr = m.listen;
                let l = std::net::TcpListener::bind(addr).map_err(|source| NodeError::McpBind { addr, source })?;
                l.set_nonblocking(true).map_err(|source| NodeError::McpBind { addr, source })?;
                Some(l)
            }
        };
        let mut streams = Vec::new();
        let listen_tcp = |what: &'static str, flag: &'static str, addr: SocketAddr| {
            let bind = |source| NodeError::TransportBind { what, flag, addr, source };
            let l = std::net::TcpListener::bind(addr).map_err(bind)?;
            l.set_nonblocking(true).map_err(bind)?;
            Ok::<_, NodeError>(l)
        };
        if let Some(addr) = config.tcp {
            let server = StreamServer {
                transport: Transport::Tls,
                tls: Some(tls::stream_tls(&identity, fovea_core::frame::ALPN)?),
                origins: Arc::new(Vec::new()),
                max_frame: config.limits.max_frame,
            };
            streams.push((listen_tcp("TLS over TCP", "tcp", addr)?, server));
        }
        if let Some(ws) = &config.ws {
            let secure = ws.secure();
            let server = StreamServer {
                transport: if secure { Transport::Wss } else { Transport::Ws },
                tls: if secure { Some(tls::stream_tls(&identity, b"http/1.1")?) } else { None },
                origins: Arc::new(ws.origins()),
                max_frame: config.limits.max_frame,
            };
            streams.push((listen_tcp("WebSocket", "ws", ws.listen)?, server));
        }
        let mesh = match &config.mesh {
            Some(m) => Some(mesh::Mesh::bind(m.clone(), &config.data_dir, config.name.clone(), config.limits.clone())?),
            None => None,
        };
        let router = Router::new(config.limits.clone(), realms, mesh);
        let stream_urls = stream_urls(&streams);
        let shared = Arc::new(Shared {
            config,
            router,
            config_generation: tokio::sync::watch::Sender::new(0),
            next_conn_id: AtomicU64::new(1),
            auth_limiter: auth::AuthLimiter::new(),
            conns: std::sync::Mutex::new(HashMap::new()),
            draining: std::sync::atomic::AtomicBool::new(false),
            started: std::time::Instant::now(),
            listen,
            mcp: std::sync::OnceLock::new(),
            quic: quic_stats,
            stream_urls,
        });
        Ok(Node {
            endpoint,
            servers,
            _spin: spin_watch,
            admin,
            mcp,
            streams,
            shared,
            fingerprint,
            self_signed: identity.self_signed,
        })
    }

    /// The address the node listens on (with the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap_or(self.shared.config.listen)
    }

    /// The admin endpoint's address, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The MCP endpoint's address, when it is on (its URL is `http://{addr}/mcp`).
    pub fn mcp_addr(&self) -> Option<SocketAddr> {
        self.mcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The URLs of the stream transports clients can use (`tls://…`, `ws://…` or
    /// `wss://…`, with the real ports).
    pub fn stream_urls(&self) -> Vec<String> {
        self.shared.stream_urls.clone()
    }

    /// The SHA-256 fingerprint of the node's certificate, `AB:CD:…`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The self-signed certificate file, when the node uses one (clients trust this file).
    pub fn self_signed_cert(&self) -> Option<&Path> {
        self.self_signed.as_deref()
    }

    /// The node's mesh, when it takes part in one.
    pub fn mesh(&self) -> Option<Arc<mesh::Mesh>> {
        self.shared.router.mesh.as_ref().map(|m| m.mesh.clone())
    }

    /// A handle that reloads the node's realms and credentials while it runs.
    pub fn reloader(&self) -> Reloader {
        Reloader(self.shared.clone())
    }

    /// A handle to the node's counters, valid after `run` returns too.
    pub fn stats(&self) -> StatsHandle {
        StatsHandle(self.shared.clone())
    }

    /// Serves clients until `shutdown` is cancelled, then drains: every client gets
    /// `GOAWAY`, has `drain_timeout` to leave, and the rest are closed with `GOING_AWAY`.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for fatal endpoint errors.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), NodeError> {
        let limits = self.shared.config.limits.clone();
        let tracker = TaskTracker::new();
        let admin_stop = CancellationToken::new();
        if let Some(listener) = self.admin.take() {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| NodeError::Config(format!("admin endpoint: {e}")))?;
            tokio::spawn(admin::serve(listener, self.shared.clone(), admin_stop.clone()));
        }
        if let (Some(listener), Some(config)) = (self.mcp.take(), self.shared.config.mcp.clone()) {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| NodeError::Config(format!("MCP endpoint: {e}")))?;
            let (shared, stop) = (self.shared.clone(), admin_stop.clone());
            tokio::spawn(async move {
                if let Err(e) = mcp::serve(shared, config, listener, stop).await {
                    tracing::error!(error = %e, "the MCP endpoint failed");
                }
            });
        }
        let mesh_stop = shutdown.child_token();
        if let Some(m) = self.shared.router.mesh.as_ref() {
            tokio::spawn(m.mesh.clone().run(mesh_stop.clone()));
            tokio::spawn(m.interest.clone().run(mesh_stop.clone()));
            tokio::spawn(m.catalog.clone().run(mesh_stop.clone()));
        }
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        for (listener, server) in std::mem::take(&mut self.streams) {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| NodeError::Config(format!("{} transport: {e}", server.transport.name())))?;
            let (shared, permits, tracker) = (self.shared.clone(), permits.clone(), tracker.clone());
            tokio::spawn(accept_streams(listener, server, shared, permits, tracker, shutdown.clone()));
        }
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let permit = permits.clone().try_acquire_owned().ok();
            let (shared, token) = (self.shared.clone(), shutdown.child_token());
            let server = self.servers.for_peer(incoming.remote_address()).clone();
            // Boxed: a value the task captures keeps its room in the task for the
            // connection's whole life, even once moved out; quinn's `Incoming` is 384 bytes,
            // the box 8 (and freed by `accept`). Every idle connection pays for the task, so
            // the handshake's own state lives in `quic_handshake`'s future, gone once it is done,
            // and the permit is not moved into a second binding (`-Zprint-type-sizes`).
            let incoming = Box::new(incoming);
            tracker.spawn(async move {
                let Some(conn) = quic_handshake(incoming, server).await else { return };
                shared.router.stats.accepted.fetch_add(1, Ordering::Relaxed);
                if permit.is_none() {
                    let limit = shared.config.limits.max_connections;
                    shared.router.stats.count_close(ErrorCode::NodeFull);
                    tracing::warn!(remote = %conn.remote_address(), limit, "refused a connection: node full");
                    conn.close(close_code(ErrorCode::NodeFull), format!("node full: {limit} connections").as_bytes());
                    return;
                }
                session::serve(Link::Quic(conn), None, shared, token).await;
                drop(permit);
            });
        }
        self.shared.draining.store(true, Ordering::Relaxed);
        tracker.close();
        if tokio::time::timeout(limits.drain_timeout, tracker.wait()).await.is_err() {
            tracing::info!(remaining = tracker.len(), "drain timeout: closing remaining connections");
        }
        self.endpoint.close(close_code(ErrorCode::GoingAway), b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        admin_stop.cancel();
        Ok(())
    }
}

/// The URLs clients use for the stream transports bound in `streams`.
fn stream_urls(streams: &[(std::net::TcpListener, StreamServer)]) -> Vec<String> {
    streams.iter().filter_map(|(l, s)| l.local_addr().ok().map(|a| format!("{}://{a}", s.transport.name()))).collect()
}

/// NODE_FULL refusals under way at once per stream transport (docs/LIMITS.md).
const REFUSALS_AT_ONCE: usize = 256;

/// The accept loop of a stream transport, until `shutdown`: each connection gets its TLS
/// handshake and WebSocket upgrade (within the handshake timeout) on its own task, then a
/// session, or `NODE_FULL` past the connection limit (shared with QUIC).
async fn accept_streams(
    listener: tokio::net::TcpListener,
    server: StreamServer,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let server = Arc::new(server);
    // Past the connection limit a client is still told NODE_FULL, which takes a TLS
    // handshake; at most this many such refusals run at once, later ones are dropped.
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, transport = server.transport.name(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = permits.clone().try_acquire_owned().ok();
        let refusal = match permit {
            Some(_) => None,
            None => match refusals.clone().try_acquire_owned() {
                Ok(r) => Some(r),
                Err(_) => {
                    shared.router.stats.count_close(ErrorCode::NodeFull);
                    continue;
                }
            },
        };
        let (shared, server, token) = (shared.clone(), server.clone(), shutdown.child_token());
        tracker.spawn(async move {
            let _refusal = refusal;
            let accepted = tokio::time::timeout(shared.config.limits.handshake_timeout, server.accept(tcp)).await;
            let (link, reader, writer) = match accepted {
                Ok(Ok(parts)) => parts,
                Ok(Err(why)) => return tracing::debug!(%remote, reason = %why.0, "stream handshake failed"),
                Err(_) => return tracing::debug!(%remote, "stream handshake timed out"),
            };
            shared.router.stats.accepted.fetch_add(1, Ordering::Relaxed);
            if permit.is_none() {
                let limit = shared.config.limits.max_connections;
                shared.router.stats.count_close(ErrorCode::NodeFull);
                tracing::warn!(%remote, limit, "refused a connection: node full");
                link.close(Some(writer), ErrorCode::NodeFull, &format!("node full: {limit} connections")).await;
                return;
            }
            session::serve(link, Some((reader, writer)), shared, token).await;
            drop(permit);
        });
    }
}

/// Completes the QUIC handshake of `incoming`; `None` (logged) if it fails.
async fn quic_handshake(incoming: Box<quic::Incoming>, server: Arc<quinn::ServerConfig>) -> Option<quic::Connection> {
    let remote = incoming.remote_address();
    let conn = match accept(incoming, server) {
        Ok(connecting) => connecting.await,
        Err(e) => Err(e),
    };
    conn.map_err(|e| tracing::debug!(%remote, error = %e, "QUIC handshake failed")).ok()
}

/// Starts the QUIC handshake of `incoming`; the box is freed here, not when the
/// connection's task ends.
fn accept(
    incoming: Box<quic::Incoming>,
    server: Arc<quinn::ServerConfig>,
) -> Result<quic::Connecting, quic::ConnectionError> {
    incoming.accept_with(server)
}

/// The realms a node serves, with who they admit: as configured, or the one open
/// `default` realm.
fn realms_of(config: &NodeConfig) -> Result<Vec<(String, auth::Admission)>, NodeError> {
    let Some(realms) = &config.realms else {
        let exposed = [Some(config.listen), config.tcp, config.ws.as_ref().map(|w| w.listen)]
            .into_iter()
            .flatten()
            .find(|a| !a.ip().is_loopback());
        if let (Some(addr), false) = (exposed, config.allow_anonymous) {
            return Err(NodeError::Config(format!(
                "refusing to listen on {addr} with no realms configured: anyone who can reach it could use it. \
                 Declare realms and users in a config file (--config), or pass --allow-anonymous to run it open"
            )));
        }
        tracing::warn!(
            "no realms configured: realm `{DEFAULT_REALM}` is open to every client that can reach {}",
            config.listen
        );
        return Ok(vec![(DEFAULT_REALM.to_owned(), auth::Admission::Open)]);
    };
    Ok(realms.iter().map(|r| (r.name.clone(), auth::Admission::users(r))).collect())
}
