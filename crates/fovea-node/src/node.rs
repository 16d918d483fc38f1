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
use crate::error::NodeError;
use crate::front::{admin, mcp, session};
use crate::handle;
use crate::routing::{self, Realm};
use crate::stats::{Stats, StatsSnapshot};
use crate::transport::{self, close_code, quic, tls};
use crate::{auth, mesh, spin, DEFAULT_REALM};

/// State shared by all connection tasks.
pub(crate) struct Shared {
    pub config: NodeConfig,
    /// Realms by name. Written only by a configuration reload, which adds realms and
    /// never removes one (a realm dropped from the file keeps its routing state and admits
    /// nobody).
    pub realms: std::sync::RwLock<HashMap<String, Arc<Realm>>>,
    /// Bumped by each configuration reload; sessions re-check their credential on change.
    pub config_generation: tokio::sync::watch::Sender<u64>,
    pub stats: Stats,
    pub next_conn_id: AtomicU64,
    /// Failed authentications per source address.
    pub auth_limiter: auth::AuthLimiter,
    /// Per-process randomness for the connections' balancing generators.
    pub seed: u64,
    /// Live sessions, for the admin endpoint. At most `max_connections` entries.
    pub conns: std::sync::Mutex<HashMap<u64, Arc<admin::ConnInfo>>>,
    /// Set when shutdown begins: `/ready` then says so.
    pub draining: std::sync::atomic::AtomicBool,
    /// When the node started.
    pub started: std::time::Instant,
    /// The address actually bound.
    pub listen: SocketAddr,
    /// The mesh, when the node takes part in one.
    pub mesh: Option<Arc<mesh::Mesh>>,
    /// Cross-node pub/sub over the mesh (set at bind when `mesh` is).
    pub interest: std::sync::OnceLock<Arc<routing::interest::Interest>>,
    /// The realm-wide tool catalogs (set at bind when `mesh` is).
    pub mesh_tools: std::sync::OnceLock<Arc<routing::remote_tools::MeshTools>>,
    /// The MCP front end, once serving.
    pub mcp: std::sync::OnceLock<Arc<mcp::McpState>>,
    /// Numbers tool registrations node-wide (a catalog key; 0 means "not a tool").
    pub next_tool_key: AtomicU64,
    /// The client endpoint's gauges and limit counters.
    pub quic: Arc<quic::EndpointStats>,
}

/// A bound, not yet running node.
pub struct Node {
    endpoint: quic::Endpoint,
    /// Client connections' QUIC settings, by path: loopback peers get larger datagrams.
    servers: ByPath<Arc<quinn::ServerConfig>>,
    /// The endpoint's socket, watched by idle workers ([`spin`]) while the node runs.
    _spin: spin::Watch,
    admin: Option<std::net::TcpListener>,
    mcp: Option<std::net::TcpListener>,
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
        let realms = build_realms(&config)?;
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
            transport::bind_client_endpoint(servers.network.clone(), config.listen, quic_stats.clone())?;
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
        let seed = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u64);
        let mesh = match &config.mesh {
            Some(m) => Some(mesh::Mesh::bind(m.clone(), &config.data_dir, config.name.clone(), config.limits.clone())?),
            None => None,
        };
        let shared = Arc::new(Shared {
            config,
            realms: std::sync::RwLock::new(realms),
            config_generation: tokio::sync::watch::Sender::new(0),
            stats: Stats::default(),
            next_conn_id: AtomicU64::new(1),
            auth_limiter: auth::AuthLimiter::new(),
            seed,
            conns: std::sync::Mutex::new(HashMap::new()),
            draining: std::sync::atomic::AtomicBool::new(false),
            started: std::time::Instant::now(),
            listen,
            mesh,
            interest: std::sync::OnceLock::new(),
            next_tool_key: AtomicU64::new(1),
            mcp: std::sync::OnceLock::new(),
            mesh_tools: std::sync::OnceLock::new(),
            quic: quic_stats,
        });
        if let Some(mesh) = shared.mesh.clone() {
            wire_mesh(&shared, mesh);
        }
        Ok(Node {
            endpoint,
            servers,
            _spin: spin_watch,
            admin,
            mcp,
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
        self.shared.mesh.clone()
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
        if let Some(mesh) = self.shared.mesh.clone() {
            tokio::spawn(mesh.run(mesh_stop.clone()));
        }
        if let Some(interest) = self.shared.interest.get().cloned() {
            tokio::spawn(interest.run(mesh_stop.clone()));
        }
        if let Some(tools) = self.shared.mesh_tools.get().cloned() {
            tokio::spawn(tools.run(mesh_stop.clone()));
        }
        let permits = Arc::new(Semaphore::new(limits.max_connections));
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
                shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                if permit.is_none() {
                    let limit = shared.config.limits.max_connections;
                    shared.stats.count_close(ErrorCode::NodeFull);
                    tracing::warn!(remote = %conn.remote_address(), limit, "refused a connection: node full");
                    conn.close(close_code(ErrorCode::NodeFull), format!("node full: {limit} connections").as_bytes());
                    return;
                }
                session::serve(conn, shared, token).await;
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

/// Connects routing and the mesh: realms report local interest and learn remote targets;
/// messages other nodes forward reach local subscribers.
fn wire_mesh(shared: &Arc<Shared>, mesh: Arc<mesh::Mesh>) {
    let weak = Arc::downgrade(shared);
    let bump = move |realm: &str| {
        if let Some(shared) = weak.upgrade() {
            if let Some(r) = shared.realms.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(realm) {
                r.bump();
            }
        }
    };
    let interest = routing::interest::Interest::new(mesh.clone(), shared.config.limits.max_pending_bytes, bump);
    for realm in shared.realms.read().unwrap_or_else(std::sync::PoisonError::into_inner).values() {
        let _ = realm.interest.set(interest.clone());
    }
    let _ = shared.interest.set(interest.clone());
    // Tools across the mesh: other nodes' lists go into each realm's catalog.
    let weak = Arc::downgrade(shared);
    let tools = routing::remote_tools::MeshTools::new(mesh.clone(), move |realm, node, entries| {
        let Some(shared) = weak.upgrade() else { return };
        let found = shared.realms.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(realm).cloned();
        if let Some(r) = found {
            r.set_remote_tools(node, entries);
        }
    });
    for realm in shared.realms.read().unwrap_or_else(std::sync::PoisonError::into_inner).values() {
        let _ = realm.mesh_tools.set(tools.clone());
        tools.watch(&realm.name);
    }
    let _ = shared.mesh_tools.set(tools);
    let weak = Arc::downgrade(shared);
    mesh.set_tools_source(move |realm| {
        let Some(shared) = weak.upgrade() else { return bytes::Bytes::from_static(b"[]") };
        let name = std::str::from_utf8(realm).unwrap_or_default();
        let found = shared.realms.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned();
        found.map_or_else(|| bytes::Bytes::from_static(b"[]"), |r| r.local_tools_json())
    });
    // Calls from other nodes: served by local providers only (one hop, no loops).
    let weak = Arc::downgrade(shared);
    mesh.set_serve(move |link, realm, procedure, q| {
        let Some(shared) = weak.upgrade() else { return };
        let limits = &shared.config.limits;
        let req_id = q.req_id;
        let answer = |code: ErrorCode, msg: String| {
            shared.stats.count_rejection(code);
            link.out.send(&fovea_core::Frame::Result(fovea_core::frame::CallResult {
                call_id: req_id,
                code,
                headers: fovea_core::Headers::new(),
                payload: bytes::Bytes::from(msg.into_bytes()),
            }));
        };
        let found = std::str::from_utf8(realm).ok().and_then(|name| {
            shared.realms.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned()
        });
        let Some(realm) = found else {
            return answer(ErrorCode::NoProvider, "no such realm on this node".into());
        };
        shared.stats.calls.fetch_add(1, Ordering::Relaxed);
        let mut rng = fovea_core::balance::Rng::new(shared.seed ^ req_id);
        let provider = match realm.choose_provider(procedure, &mut rng, limits.max_requests_in_flight) {
            Ok(p) => p,
            Err(true) => return answer(ErrorCode::Busy, "every provider here is at its limit".into()),
            Err(false) => return answer(ErrorCode::NoProvider, "no provider here any more".into()),
        };
        let timeout = match Duration::from_millis(q.timeout_ms) {
            t if t.is_zero() || t > limits.max_call_timeout => limits.max_call_timeout,
            t => t,
        };
        let call = fovea_core::frame::Call {
            call_id: req_id,
            procedure: bytes::Bytes::copy_from_slice(procedure),
            timeout_ms: q.timeout_ms,
            headers: q.headers,
            payload: q.payload,
        };
        // A link carries the calls of many clients: its in-flight bound is wider.
        let max = limits.max_calls_in_flight.saturating_mul(64);
        match link.start_call(&provider, call, timeout, max, std::time::Instant::now()) {
            Ok(()) => {}
            Err(handle::Refusal::Result(code, msg)) => answer(code, msg),
            Err(handle::Refusal::DuplicateId) => {
                answer(ErrorCode::ProtocolError, "duplicate request id on the link".into())
            }
        }
    });
    let weak = Arc::downgrade(shared);
    mesh.set_delivery(move || {
        // One per link: its realms' match caches and its balancing generator.
        let (weak, interest) = (weak.clone(), interest.clone());
        let mut caches: HashMap<bytes::Bytes, (Arc<Realm>, routing::MatchCache)> = HashMap::new();
        let mut rng = fovea_core::balance::Rng::new(std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            1u64,
        ));
        Box::new(move |fwd: fovea_core::frame::Forward| {
            let Some(shared) = weak.upgrade() else { return };
            if !caches.contains_key(&fwd.realm) {
                let Ok(name) = std::str::from_utf8(&fwd.realm) else { return };
                let realm = shared.realms.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned();
                let Some(realm) = realm else { return };
                let limits = &shared.config.limits;
                let cache = routing::MatchCache::new_local(
                    limits.match_cache_entries,
                    limits.max_topic_len,
                    limits.max_topic_depth,
                );
                // Bounded by the realms this node serves.
                caches.insert(fwd.realm.clone(), (realm, cache));
            }
            let Some((realm, cache)) = caches.get_mut(&fwd.realm) else { return };
            // The publisher's node checked its permission; here only local subscribers.
            let Ok((matches, _)) = cache.lookup(realm, &fwd.topic, &auth::Allow::All) else { return };
            interest.stats.received.fetch_add(1, Ordering::Relaxed);
            // Queue groups: only those this node was chosen for, one member each.
            matches.for_each_forwarded(&fwd.groups, &mut rng, |s| {
                match s.handle.out.deliver(s.sid, &fwd.topic, &fwd.headers, &fwd.payload) {
                    handle::outbound::Delivered::Queued => {
                        shared.stats.deliveries.fetch_add(1, Ordering::Relaxed);
                    }
                    handle::outbound::Delivered::Dropped => {
                        shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    handle::outbound::Delivered::Closed => {}
                }
            });
        })
    });
}

/// The realms a node serves: as configured, or the one open `default` realm.
fn build_realms(config: &NodeConfig) -> Result<HashMap<String, Arc<Realm>>, NodeError> {
    let Some(realms) = &config.realms else {
        if !config.listen.ip().is_loopback() && !config.allow_anonymous {
            return Err(NodeError::Config(format!(
                "refusing to listen on {} with no realms configured: anyone who can reach it could use it. \
                 Declare realms and users in a config file (--config), or pass --allow-anonymous to run it open",
                config.listen
            )));
        }
        tracing::warn!(
            "no realms configured: realm `{DEFAULT_REALM}` is open to every client that can reach {}",
            config.listen
        );
        let open = Realm::new(DEFAULT_REALM, auth::Admission::Open);
        return Ok(HashMap::from([(DEFAULT_REALM.to_owned(), Arc::new(open))]));
    };
    Ok(realms
        .iter()
        .map(|r| (r.name.clone(), Arc::new(Realm::new(r.name.clone(), auth::Admission::users(r)))))
        .collect())
}

/// Reloads realms, users and permissions without a restart (see [`Node::reloader`]).
#[derive(Clone)]
pub struct Reloader(Arc<Shared>);

impl Reloader {
    /// Replaces every realm's users with those in `realms`. New realms are added; a realm
    /// missing from `realms` admits nobody from now on. Every connection then checks its
    /// credential again: one that is no longer admitted, or whose subscriptions or
    /// registrations are no longer allowed, is closed with `CREDENTIALS_REVOKED`; the
    /// others carry on with their new permissions.
    ///
    /// # Errors
    /// [`NodeError::Config`] if the node runs without configured realms (open mode).
    pub fn reload(&self, realms: &[auth::RealmConfig]) -> Result<(), NodeError> {
        if self.0.config.realms.is_none() {
            return Err(NodeError::Config(
                "this node runs open (no --config): there are no credentials to reload".into(),
            ));
        }
        {
            let mut map = self.0.realms.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            for realm in map.values() {
                if !realms.iter().any(|r| r.name == realm.name) {
                    realm.set_admission(auth::Admission::Users(HashMap::new()));
                }
            }
            for r in realms {
                match map.get(&r.name) {
                    Some(realm) => realm.set_admission(auth::Admission::users(r)),
                    None => {
                        let realm = Arc::new(Realm::new(r.name.clone(), auth::Admission::users(r)));
                        if let Some(i) = self.0.interest.get() {
                            let _ = realm.interest.set(i.clone());
                        }
                        if let Some(t) = self.0.mesh_tools.get() {
                            let _ = realm.mesh_tools.set(t.clone());
                            t.watch(&realm.name);
                        }
                        map.insert(r.name.clone(), realm);
                    }
                }
            }
        }
        self.0.config_generation.send_modify(|g| *g += 1);
        tracing::info!(realms = realms.len(), "credentials reloaded");
        Ok(())
    }
}

/// Read access to a node's counters.
#[derive(Clone)]
pub struct StatsHandle(pub(crate) Arc<Shared>);

impl StatsHandle {
    /// A consistent-enough copy of every counter (each is read atomically on its own).
    pub fn snapshot(&self) -> StatsSnapshot {
        let realms = self.0.realms.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let subscriptions = realms.values().map(|r| r.subscription_count() as u64).sum();
        let registrations = realms.values().map(|r| r.registration_count() as u64).sum();
        drop(realms);
        self.0.stats.snapshot(subscriptions, registrations)
    }
}
