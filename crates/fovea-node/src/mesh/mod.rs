//! The mesh: links to other nodes, and the DHT that runs over them.
//!
//! ```text
//!            ┌──────────── Mesh ────────────┐
//!  accept ──▶│ handshake: MESH_HELLO + proof│──▶ links: NodeId → Link (one per peer)
//!  dial   ──▶│                              │        │ reader: DHT frames ──┐
//!            └──────────────────────────────┘        │ writer ◀── queue      │
//!                                                     ▼                      ▼
//!                        DHT task: fovea_core::dht::Dht ◀── inputs (bounded channel)
//!                          poll_transmit ──▶ link queue (dial first if no link)
//! ```
//!
//! **Joining.** A link is a QUIC connection on the mesh endpoint (its own UDP port,
//! ALPN `fovea-mesh/1`) with one bidirectional stream. Both sides present their mesh
//! certificate (a persistent key in the data dir; node id = SHA-256 of the public key) and
//! first send `MESH_HELLO` with their id, mesh address and a proof: HMAC-SHA256 keyed with
//! the mesh secret over a TLS exporter value of *this* connection and the sender's id. A
//! proof cannot be replayed on another connection or by another key; a node without the
//! secret is closed with `AUTH_FAILED` and counted.
//!
//! **One link per pair.** When two nodes dial each other at once, both keep the link
//! dialed by the node with the smaller id and retire the other.
//!
//! **Retiring a link** (the loser of that tie-break, or one evicted to make room): it leaves
//! the links map at once, so nothing new goes on it, and closes after `RETIRE_GRACE`, so
//! frames already queued or in flight on it still arrive. Neither side takes that close for
//! a departure.
//!
//! **Bounds.** Links in use: `max_links` (past it, the least recently used is retired; its
//! node stays known and is dialed again when needed); retiring links live one grace period
//! more. Dials in progress: `max_links`, at least 8 (a frame for one more peer is dropped
//! and counted). Frames waiting for a dial, and per-link send queues: 1024 frames; at the
//! limit a frame is dropped and counted (the DHT treats a lost message as a lost request
//! and retries or moves on). DHT inputs: 4096; same policy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fovea_core::dht::{self, Contact, Dht, NodeId};
use fovea_core::frame::{DhtFrame, Forward, MeshHello};
use fovea_core::path::ByPath;
use fovea_core::{Deframer, ErrorCode, Frame};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::MeshConfig;
use crate::handle::outbound::Outbound;
use crate::handle::Handle;
use crate::handle::ProviderRef;
use crate::NodeError;

/// Mesh protocol version in `MESH_HELLO`.
const MESH_VERSION: u64 = 1;
/// Frames waiting per peer while its link is dialed.
const LINK_QUEUE: usize = 1024;
/// Dials in progress at once: `max_links`, but never fewer than this, so that a small link
/// pool does not make a frame for one peer wait on (and be dropped behind) a dial to another.
const MIN_DIALS: usize = 8;
/// DHT inputs queued before they are dropped.
const DHT_QUEUE: usize = 4096;
/// Time allowed for a link's QUIC and mesh handshakes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Close reasons of links closed to save resources, not because a node left: the peer
/// keeps the other node in its tables.
const REASON_IDLE: &[u8] = b"link idle";
const REASON_EVICTED: &[u8] = b"link evicted (least recently used)";
/// The other of two links between one pair was kept: the peer is alive.
const REASON_DUPLICATE: &[u8] = b"duplicate link";
/// How long a link taken out of use (evicted, or the loser of the one-link-per-pair
/// tie-break) stays open after this node stopped putting new frames on it, so that frames
/// already queued or in flight on it (the peer may use it until it learns) are delivered
/// rather than cut off by the close.
const RETIRE_GRACE: Duration = Duration::from_secs(1);
/// How often a join address without a link is dialed again (and the longest backoff).
const REJOIN_EVERY: Duration = Duration::from_secs(10);
/// Label of the TLS exporter value the proof signs.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-fovea-mesh-v1";

/// Counters of the mesh layer.
#[derive(Debug, Default)]
pub struct MeshStats {
    pub links_opened: AtomicU64,
    pub links_closed: AtomicU64,
    /// Handshakes refused: bad proof (no secret), wrong protocol, or over `max_links`.
    pub peers_refused: AtomicU64,
    pub dials_failed: AtomicU64,
    /// Links closed to make room or because they were idle (their nodes stay known).
    pub links_evicted: AtomicU64,
    /// DHT messages dropped at a full queue.
    pub dht_dropped: AtomicU64,
    /// Links closed for malformed frames.
    pub protocol_errors: AtomicU64,
    /// `NOTICE`s from other nodes not passed on (see `Stats::notices_dropped`).
    pub notices_dropped: AtomicU64,
    /// Answers from other nodes over the local caller's `max_payload`: the caller got
    /// `PAYLOAD_TOO_LARGE` instead.
    pub answers_too_large: AtomicU64,
}

/// A point-in-time view of the mesh, for the admin endpoint and tests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MeshSnapshot {
    pub node_id: String,
    pub mesh_addr: SocketAddr,
    /// Peers with an open link: (node id, mesh address).
    pub links: Vec<(String, SocketAddr)>,
    /// Contacts in the DHT routing table.
    pub dht_contacts: usize,
    /// Their ids.
    pub dht_table: Vec<String>,
    /// Records held for others.
    pub dht_records: usize,
    pub dht_lookups: u64,
    pub dht_requests_timed_out: u64,
    pub peers_refused: u64,
    pub dht_dropped: u64,
}

/// A dial in progress and the frames waiting for it.
struct Dialing {
    /// Tells this dial from a later one to the same peer.
    attempt: u64,
    frames: Vec<Frame>,
}

/// One link. Its [`Handle`] makes the link look like a client connection to the RPC
/// machinery: on the caller's node the link is a *provider* (calls go out as `REQUEST`s,
/// answers come back as `RESULT`s), on the provider's node it is a *caller*. Timeouts,
/// cancellation and "the other side went away" then work across nodes as they do within
/// one. Everything sent on the link goes through the peer's bounded queue.
pub(crate) struct Link {
    conn: Connection,
    pub handle: Arc<Handle>,
    addr: SocketAddr,
    /// Whether this node dialed it (for the one-link-per-pair rule).
    dialed: bool,
    /// Caller side: (realm, procedure) → the rid announced with `BIND`.
    bound: Mutex<HashMap<(Bytes, Bytes), u64>>,
    /// Provider side: rid → (realm, procedure), from the peer's `BIND`s.
    binds: Mutex<HashMap<u64, (Bytes, Bytes)>>,
    /// Milliseconds since the mesh started when the link last carried a frame either way
    /// (for LRU eviction and idle reaping).
    used: AtomicU64,
    /// Closed by this node to save a link, not because the peer is gone: its closing
    /// must not remove the peer from the DHT or the caches.
    reaped: std::sync::atomic::AtomicBool,
}

impl Link {
    fn touch(&self, now_ms: u64) {
        self.used.store(now_ms, Ordering::Relaxed);
    }
}

/// Bindings per link (distinct procedures called across it); past this, calls that need
/// a new binding fail with `BUSY`, and a peer sending more is closed.
const MAX_BINDINGS: usize = 4096;

/// Makes, per link, the function that delivers forwarded messages locally (each link
/// keeps its own match caches, as a client connection does).
pub(crate) type DeliverFactory = dyn Fn() -> Box<dyn FnMut(Forward) + Send> + Send + Sync;

/// Serves a call that arrived on a link: (link peer, realm, procedure, request).
pub(crate) type ServeFn = dyn Fn(&Arc<Handle>, &[u8], &[u8], fovea_core::frame::Request) + Send + Sync;

enum Input {
    Message {
        from: Contact,
        rpc: u64,
        msg: dht::Message,
    },
    /// A link came up (joined, or accepted).
    Up(Contact),
    /// A link closed or a dial failed.
    Down(NodeId),
    Command(Command),
}

enum Command {
    Snapshot(oneshot::Sender<(Vec<String>, usize, u64, u64)>),
    FindRecords(dht::Key, oneshot::Sender<Vec<dht::Record>>),
    Publish(dht::Key, Bytes, Duration),
    Withdraw(dht::Key),
    Retract(dht::Key, Duration),
    FindNode(NodeId, oneshot::Sender<Vec<Contact>>),
}

/// The mesh of one node. Cheap to share (`Arc`).
pub struct Mesh {
    local: Contact,
    name: String,
    /// The mesh secret's HMAC key; `None` in CA-only mode.
    secret: Option<ring::hmac::Key>,
    endpoint: quinn::Endpoint,
    /// The mesh socket, watched by idle workers ([`crate::spin`]).
    _spin: crate::spin::Watch,
    /// QUIC settings for links, by the peer's path (loopback peers: larger datagrams).
    servers: ByPath<Arc<quinn::ServerConfig>>,
    clients: ByPath<quinn::ClientConfig>,
    config: MeshConfig,
    links: Mutex<HashMap<NodeId, Arc<Link>>>,
    /// Dials in progress, so one peer is dialed once at a time; frames for it wait here
    /// (at most `LINK_QUEUE` per peer). Invariant: an entry lives only while its dial task
    /// runs: the task removes it when it ends, whatever the outcome (a link the peer
    /// opened, or a lost tie-break, must not leave it behind: later frames would wait for a
    /// dial that never comes, and at `max_links` entries no other peer could be dialed).
    dialing: Mutex<HashMap<NodeId, Dialing>>,
    next_dial: AtomicU64,
    inputs: mpsc::Sender<Input>,
    inputs_rx: Mutex<Option<mpsc::Receiver<Input>>>,
    /// Records pushed by the nodes storing keys this node looked up. Bounded (1024); a
    /// receiver that lags misses some and should look the key up again.
    notified: tokio::sync::broadcast::Sender<dht::Record>,
    /// Nodes whose link closed or could not be opened (bounded like `notified`).
    departed: tokio::sync::broadcast::Sender<NodeId>,
    /// Delivers a message forwarded by another node to this node's local subscribers.
    deliver: std::sync::OnceLock<Box<DeliverFactory>>,
    /// Serves calls that other nodes send here.
    serve: std::sync::OnceLock<Box<ServeFn>>,
    /// This node's own tools of a realm, as the JSON `TOOL_LIST` carries, for `MESH_TOOLS`.
    tools_source: std::sync::OnceLock<Box<ToolsSource>>,
    /// `MESH_TOOLS` asked of other nodes, waiting for their `TOOL_LIST` (at most
    /// [`MAX_TOOL_QUERIES`]; each also ends after [`TOOL_QUERY_TIMEOUT`]).
    tool_queries: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<Bytes>>>,
    next_tool_query: AtomicU64,
    /// Link queue bound and call limits, from the node's limits.
    limits: crate::Limits,
    pub stats: MeshStats,
    /// Origin of the links' `used` clocks.
    epoch: Instant,
    /// [`Mesh::now_ms`].
    clock: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Answers `MESH_TOOLS`: a realm's local tools as JSON.
type ToolsSource = dyn Fn(&[u8]) -> Bytes + Send + Sync;

/// Most tool lists asked of other nodes at once.
const MAX_TOOL_QUERIES: usize = 1024;

/// How long a node has to answer `MESH_TOOLS`.
const TOOL_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

impl Mesh {
    /// Loads the mesh identity from `data_dir` and binds the mesh endpoint. Must be called
    /// inside a tokio runtime; nothing runs until [`Mesh::run`].
    pub(crate) fn bind(
        config: MeshConfig,
        data_dir: &std::path::Path,
        name: String,
        limits: crate::Limits,
    ) -> Result<Arc<Mesh>, NodeError> {
        if config.secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(NodeError::Config(
                "the mesh secret is too short: use at least 16 characters (`fovea token new` makes a good one)".into(),
            ));
        }
        if config.secret.is_none() && config.ca.is_none() {
            return Err(NodeError::Config("a mesh needs a secret (--mesh-secret) or a CA (--mesh-ca)".into()));
        }
        if config.ca.is_some() && config.identity.is_none() {
            return Err(NodeError::Config(
                "--mesh-ca needs this node's certificate from that CA: --mesh-cert and --mesh-key \
                 (`fovea cert mesh-node` makes one)"
                    .into(),
            ));
        }
        let identity = crate::transport::tls::mesh_identity(data_dir, config.identity.as_ref())?;
        let id = crate::transport::tls::public_key_id(&identity.chain[0])
            .ok_or_else(|| NodeError::Tls("the mesh certificate does not parse".into()))?;
        let ca = config.ca.as_deref().map(crate::transport::tls::read_ca).transpose()?;
        let (server_crypto, client_crypto) = crate::transport::tls::mesh_crypto(&identity, ca)?;
        // Links between nodes on one host (a test, a bench, a dev box) get the loopback
        // datagram size, as client connections do (`fovea_core::path`).
        let server = quinn::ServerConfig::with_crypto(server_crypto);
        let client = quinn::ClientConfig::new(client_crypto);
        let (servers, clients) = ByPath {
            network: mesh_transport(),
            loopback: crate::transport::on_loopback(mesh_transport(), fovea_core::path::LOOPBACK_UDP_PAYLOAD),
        }
        .map(|transport| {
            let transport = Arc::new(transport);
            let (mut server, mut client) = (server.clone(), client.clone());
            server.transport_config(transport.clone());
            client.transport_config(transport);
            (Arc::new(server), client)
        })
        .unzip();
        let (endpoint, spin) = crate::transport::bind_endpoint((*servers.network).clone(), config.listen)?;
        let addr = endpoint.local_addr().unwrap_or(config.listen);
        let (inputs, rx) = mpsc::channel(DHT_QUEUE);
        Ok(Arc::new(Mesh {
            local: Contact { id: NodeId(id), addr },
            name,
            secret: config.secret.as_ref().map(|s| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.as_bytes())),
            endpoint,
            _spin: spin,
            servers,
            clients,
            config,
            links: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashMap::new()),
            next_dial: AtomicU64::new(1),
            inputs,
            inputs_rx: Mutex::new(Some(rx)),
            notified: tokio::sync::broadcast::channel(1024).0,
            departed: tokio::sync::broadcast::channel(1024).0,
            deliver: std::sync::OnceLock::new(),
            serve: std::sync::OnceLock::new(),
            tools_source: std::sync::OnceLock::new(),
            tool_queries: Mutex::new(HashMap::new()),
            next_tool_query: AtomicU64::new(1),
            limits,
            stats: MeshStats::default(),
            epoch: Instant::now(),
            clock: AtomicU64::new(0),
        }))
    }

    /// This node in the mesh.
    pub fn local(&self) -> Contact {
        self.local
    }

    /// Runs the mesh until `shutdown`: accepts links, joins, drives the DHT.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(rx) = lock(&self.inputs_rx).take() else { return };
        let seed = u64::from_be_bytes(self.local.id.0[..8].try_into().unwrap_or([7; 8]));
        let dht = Dht::new(self.local, self.config.dht.clone(), Instant::now(), seed);
        tokio::spawn(self.clone().drive_dht(dht, rx, shutdown.clone()));
        tokio::spawn(self.clone().reap_idle(shutdown.clone()));
        tokio::spawn(self.clone().tick(shutdown.clone()));
        for addr in self.config.join.clone() {
            tokio::spawn(self.clone().join(addr, shutdown.clone()));
        }
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                i = self.endpoint.accept() => match i { Some(i) => i, None => break },
            };
            let mesh = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, mesh.accept(incoming)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "mesh link refused"),
                    Err(_) => tracing::debug!(%remote, "mesh handshake timed out"),
                }
            });
        }
        self.endpoint.close(VarInt::from_u32(0), b"node shutting down");
    }

    /// Dials a join address until a link is up, with backoff (a member that is down now
    /// may be up later; this is how a restarted node rejoins without manual steps).
    ///
    /// An address that answers with fovea's client protocol instead of the mesh's is a
    /// member's client port: users have a member's URL at hand and give it. The mesh port
    /// is the client port + 1 unless the member chose another, so that is tried once,
    /// with a warning that says what to give instead; an address that still is not a mesh
    /// endpoint is given up with an error, since dialing it again cannot help.
    async fn join(self: Arc<Self>, mut addr: SocketAddr, shutdown: CancellationToken) {
        let mut delay = Duration::from_millis(200);
        let mut joined = false;
        let mut tried_next_port = false;
        loop {
            // Dialed again whenever no link to it stands: after a partition heals, the
            // join addresses are how the two sides find each other again.
            let linked = lock(&self.links).values().any(|l| l.addr == addr);
            if !linked {
                match self.clone().dial(addr, None).await {
                    Ok(peer) => {
                        if !joined {
                            tracing::info!(%addr, peer = %peer.id, "joined the mesh");
                        }
                        joined = true;
                        delay = REJOIN_EVERY;
                    }
                    Err(DialError::NotMesh) => {
                        self.stats.dials_failed.fetch_add(1, Ordering::Relaxed);
                        let next = addr.port().checked_add(1).map(|p| SocketAddr::new(addr.ip(), p));
                        match next.filter(|_| !tried_next_port) {
                            Some(next) => {
                                tracing::warn!(
                                    %addr,
                                    "{addr} is a client port (it speaks fovea's client protocol, not the mesh's); \
                                     trying {next}, the mesh port by default (client port + 1). \
                                     Give --join with the member's mesh address (its --mesh-listen) to skip this"
                                );
                                tried_next_port = true;
                                addr = next;
                                continue;
                            }
                            None => {
                                tracing::error!(
                                    %addr,
                                    "{addr} is not a mesh endpoint (it refused the mesh protocol): not joining \
                                     through it. Give --join the member's mesh address: its --mesh-listen, by \
                                     default its client port + 1"
                                );
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        self.stats.dials_failed.fetch_add(1, Ordering::Relaxed);
                        if !joined {
                            tracing::warn!(%addr, error = %e, "cannot reach mesh member; retrying in {delay:?}");
                        }
                        delay = (delay * 2).min(REJOIN_EVERY);
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Opens a link to `addr`. `expect`: the node id the DHT believes lives there.
    async fn dial(self: Arc<Self>, addr: SocketAddr, expect: Option<NodeId>) -> Result<Contact, DialError> {
        let connecting = self
            .endpoint
            .connect_with(self.clients.for_peer(addr).clone(), addr, "fovea-mesh")
            .map_err(|e| e.to_string())?;
        let attempt = async {
            let conn = connecting.await.map_err(|e| match e {
                quinn::ConnectionError::ConnectionClosed(c) if refused_alpn(c.error_code) => DialError::NotMesh,
                e => DialError::Failed(e.to_string()),
            })?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            self.send_hello(&conn, &mut send).await?;
            let (peer, deframer) = self.read_hello(&conn, &mut recv).await?;
            Ok::<_, DialError>((conn, send, recv, peer, deframer))
        };
        let (conn, send, recv, peer, deframer) =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await.map_err(|_| "handshake timed out".to_owned())??;
        if let Some(expect) = expect {
            if expect != peer.id {
                tracing::debug!(%addr, expected = %expect, got = %peer.id, "a different node answers at this address");
            }
        }
        self.clone().open_link(conn, send, recv, deframer, peer, true)?;
        Ok(peer)
    }
}

/// Whether a close is the TLS alert `no_application_protocol` (120) as QUIC carries it
/// (RFC 9001 §4.8): the dialed endpoint offers none of our ALPNs.
fn refused_alpn(code: quinn::TransportErrorCode) -> bool {
    code == quinn::TransportErrorCode::crypto(120)
}

/// Why a dial failed.
#[derive(Debug)]
enum DialError {
    /// The address answered but refused the mesh protocol (no common ALPN): most likely
    /// a node's client port.
    NotMesh,
    Failed(String),
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::NotMesh => f.write_str("not a mesh endpoint (it refused the mesh protocol)"),
            DialError::Failed(why) => f.write_str(why),
        }
    }
}

impl From<String> for DialError {
    fn from(why: String) -> Self {
        DialError::Failed(why)
    }
}

impl Mesh {
    async fn accept(self: Arc<Self>, incoming: quinn::Incoming) -> Result<(), String> {
        let server = self.servers.for_peer(incoming.remote_address()).clone();
        let conn = match incoming.accept_with(server) {
            Ok(connecting) => connecting.await,
            Err(e) => Err(e),
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                // A TLS failure here is a peer without an acceptable certificate (CA mode).
                self.stats.peers_refused.fetch_add(1, Ordering::Relaxed);
                return Err(e.to_string());
            }
        };
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let (peer, deframer) = self.read_hello(&conn, &mut recv).await?;
        self.send_hello(&conn, &mut send).await?;
        self.open_link(conn, send, recv, deframer, peer, false)
    }

    fn proof(&self, conn: &Connection, sender: &NodeId) -> Result<Bytes, String> {
        let Some(secret) = &self.secret else { return Ok(Bytes::new()) };
        let mut exported = [0u8; 32];
        conn.export_keying_material(&mut exported, EXPORTER_LABEL, &sender.0)
            .map_err(|_| "TLS exporter unavailable".to_owned())?;
        Ok(Bytes::copy_from_slice(ring::hmac::sign(secret, &exported).as_ref()))
    }

    async fn send_hello(&self, conn: &Connection, send: &mut SendStream) -> Result<(), String> {
        let hello = Frame::MeshHello(MeshHello {
            version: MESH_VERSION,
            node_id: Bytes::copy_from_slice(&self.local.id.0),
            mesh_addr: self.local.addr.to_string(),
            name: self.name.clone(),
            proof: self.proof(conn, &self.local.id)?,
        });
        send.write_all(&hello.to_bytes()).await.map_err(|e| e.to_string())
    }

    /// Reads and checks the peer's `MESH_HELLO`: its id must be its certificate's key, and
    /// its proof must verify under our secret. Refusals close the connection and count.
    async fn read_hello(&self, conn: &Connection, recv: &mut RecvStream) -> Result<(Contact, Deframer), String> {
        let refuse = |why: &str| {
            self.stats.peers_refused.fetch_add(1, Ordering::Relaxed);
            conn.close(
                VarInt::from_u64(ErrorCode::AuthFailed.to_u64()).unwrap_or(VarInt::from_u32(0)),
                b"not a member",
            );
            why.to_owned()
        };
        let mut deframer = Deframer::new(fovea_core::limits::MAX_FRAME);
        let frame = loop {
            match deframer.next_frame() {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => return Err(refuse(&format!("malformed MESH_HELLO: {e}"))),
            }
            match recv.read_chunk(64 * 1024, true).await {
                Ok(Some(c)) => deframer.push(c.bytes),
                Ok(None) => return Err(refuse("stream ended before MESH_HELLO")),
                Err(e) => return Err(e.to_string()),
            }
        };
        let Frame::MeshHello(hello) = frame else { return Err(refuse("the first frame must be MESH_HELLO")) };
        let Ok(id) = <[u8; 32]>::try_from(&hello.node_id[..]) else { return Err(refuse("bad node id")) };
        let id = NodeId(id);
        let cert_id = conn
            .peer_identity()
            .and_then(|i| i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
            .and_then(|chain| chain.first().and_then(crate::transport::tls::public_key_id));
        if cert_id != Some(id.0) {
            return Err(refuse("node id does not match the certificate"));
        }
        // With a secret, the proof must verify; with a CA, the TLS handshake already
        // checked the peer's certificate chain. With both, both must hold.
        if let Some(secret) = &self.secret {
            let mut exported = [0u8; 32];
            conn.export_keying_material(&mut exported, EXPORTER_LABEL, &id.0)
                .map_err(|_| "TLS exporter unavailable".to_owned())?;
            if ring::hmac::verify(secret, &exported, &hello.proof).is_err() {
                return Err(refuse("wrong mesh secret"));
            }
        }
        let addr: SocketAddr = hello.mesh_addr.parse().map_err(|_| refuse("bad mesh address"))?;
        // A node listening on a wildcard address is reached where its packets come from.
        let addr =
            if addr.ip().is_unspecified() { SocketAddr::new(conn.remote_address().ip(), addr.port()) } else { addr };
        if id == self.local.id {
            return Err(refuse("connected to itself"));
        }
        Ok((Contact { id, addr }, deframer))
    }

    fn open_link(
        self: Arc<Self>,
        conn: Connection,
        send: SendStream,
        recv: RecvStream,
        deframer: Deframer,
        peer: Contact,
        dialed: bool,
    ) -> Result<(), String> {
        let out = Outbound::new(self.limits.max_pending_bytes, self.limits.slow_consumer_timeout, false);
        let link = Arc::new(Link {
            conn: conn.clone(),
            handle: Arc::new(Handle::new(out, fovea_core::limits::MAX_PAYLOAD)),
            addr: peer.addr,
            dialed,
            bound: Mutex::new(HashMap::new()),
            binds: Mutex::new(HashMap::new()),
            used: AtomicU64::new(self.now_ms()),
            reaped: std::sync::atomic::AtomicBool::new(false),
        });
        let kept = {
            let mut links = lock(&self.links);
            let mut kept = true;
            if let Some(old) = links.get(&peer.id).cloned() {
                // One link per pair: of two dialed from opposite sides, both keep the one
                // the smaller id dialed; a redial from the same side replaces the old
                // link (which may be dead and not yet noticed), and so does any link to
                // replace one already closed (evicted by the peer, say: keeping the closed
                // one would leave the pair with none).
                kept = old.conn.close_reason().is_some() || old.dialed == dialed || dialed == (self.local.id < peer.id);
                if kept {
                    retire(&old, REASON_DUPLICATE);
                } else {
                    retire(&link, REASON_DUPLICATE);
                }
            } else if links.len() >= self.config.max_links {
                // Make room: the least recently used link goes (its node stays known).
                if let Some((&id, _)) = links.iter().min_by_key(|(_, l)| l.used.load(Ordering::Relaxed)) {
                    if let Some(lru) = links.remove(&id) {
                        retire(&lru, REASON_EVICTED);
                        self.stats.links_evicted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if kept {
                links.insert(peer.id, link.clone());
            }
            kept
        };
        if kept {
            // Frames that waited for a dial to this peer go first (the dial task, still
            // running, removes the entry when it ends).
            let waiting = lock(&self.dialing).get_mut(&peer.id).map(|d| std::mem::take(&mut d.frames));
            self.flush_waiting(&link, waiting.unwrap_or_default());
            self.stats.links_opened.fetch_add(1, Ordering::Relaxed);
            let _ = self.inputs.try_send(Input::Up(peer));
        }
        // A retired link is read and written too until it closes: what the peer sent on
        // it before it learned of the other link still arrives.
        tokio::spawn(write_link(send, link.clone()));
        tokio::spawn(self.read_link(link, recv, deframer, peer));
        Ok(())
    }

    async fn read_link(self: Arc<Self>, link: Arc<Link>, mut recv: RecvStream, mut deframer: Deframer, peer: Contact) {
        let mut deliver = self.deliver.get().map(|make| make());
        let why = loop {
            match deframer.next_frame() {
                Ok(Some(frame)) => {
                    link.touch(self.now_ms());
                    match self.on_link_frame(&link, peer, frame, &mut deliver) {
                        Ok(()) => continue,
                        Err(why) => break Some(why),
                    }
                }
                Ok(None) => {}
                Err(e) => break Some(e.to_string()),
            }
            tokio::select! {
                r = recv.read_chunk(256 * 1024, true) => match r {
                    Ok(Some(c)) => deframer.push(c.bytes),
                    Ok(None) | Err(_) => break None,
                },
                // Deadlines of calls this link makes here (it is their caller).
                () = link.handle.expire_next() => {}
            }
        };
        let conn = &link.conn;
        if let Some(why) = why {
            self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %peer.id, %why, "closing mesh link");
            conn.close(
                VarInt::from_u64(ErrorCode::ProtocolError.to_u64()).unwrap_or(VarInt::from_u32(0)),
                why.as_bytes(),
            );
        }
        // Calls across the link fail now (PROVIDER_DISCONNECTED to their callers), and
        // requests it made here are cancelled at their providers.
        link.handle.out.close();
        link.handle.abandon_all();
        // Remove it only if it is still this connection (a duplicate may have replaced it).
        let removed = {
            let mut links = lock(&self.links);
            match links.get(&peer.id) {
                Some(l) if l.conn.stable_id() == conn.stable_id() => links.remove(&peer.id).is_some(),
                _ => false,
            }
        };
        if removed {
            self.stats.links_closed.fetch_add(1, Ordering::Relaxed);
            // A link this node reaped leaves a live node behind; one closed by the peer (or
            // by silence) leaves a gone one.
            let saved = matches!(
                conn.close_reason(),
                Some(quinn::ConnectionError::ApplicationClosed(ref c)) if c.reason == REASON_IDLE || c.reason == REASON_EVICTED || c.reason == REASON_DUPLICATE
            );
            let peer_closed = !link.reaped.load(Ordering::Relaxed) && !saved;
            if peer_closed {
                let _ = self.inputs.try_send(Input::Down(peer.id));
            }
            tracing::debug!(peer = %peer.id, peer_closed, "mesh link closed");
        }
    }

    /// One frame from a link. `Err`: the link breaks the protocol and is closed.
    fn on_link_frame(
        &self,
        link: &Arc<Link>,
        peer: Contact,
        frame: Frame,
        deliver: &mut Option<Box<dyn FnMut(Forward) + Send>>,
    ) -> Result<(), String> {
        match frame {
            Frame::Dht(DhtFrame { rpc, body }) => {
                let msg = dht::wire::decode(body).map_err(|e| format!("malformed DHT message: {e}"))?;
                if self.inputs.try_send(Input::Message { from: peer, rpc, msg }).is_err() {
                    self.stats.dht_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Frame::Fwd(fwd) => {
                if let Some(deliver) = deliver.as_mut() {
                    deliver(fwd);
                }
            }
            // Provider side: the peer announces what a rid means, then calls through it.
            Frame::Bind(b) => {
                let mut binds = lock(&link.binds);
                if binds.len() >= MAX_BINDINGS && !binds.contains_key(&b.rid) {
                    return Err(format!("more than {MAX_BINDINGS} bindings"));
                }
                binds.insert(b.rid, (b.realm, b.procedure));
            }
            Frame::Request(q) => {
                let bound = lock(&link.binds).get(&q.rid).cloned();
                let Some((realm, procedure)) = bound else {
                    return Err(format!("REQUEST for unbound rid {}", q.rid));
                };
                if let Some(serve) = self.serve.get() {
                    serve(&link.handle, &realm, &procedure, q);
                }
            }
            // Provider side: the caller's node gave up on a call.
            Frame::Cancel(call_id) => link.handle.cancel_call(call_id),
            Frame::MeshTools(q) => {
                let tools = self.tools_source.get().map(|f| f(&q.realm)).unwrap_or_else(|| Bytes::from_static(b"[]"));
                let list = fovea_core::frame::ToolList { id: q.id, next: Bytes::new(), tools };
                link.handle.out.send(&Frame::ToolList(list));
            }
            Frame::ToolList(l) => {
                if let Some(tx) = lock(&self.tool_queries).remove(&l.id) {
                    let _ = tx.send(l.tools);
                }
            }
            // Caller side: progress or a log line from the provider's node, for our caller.
            Frame::Notice(n) => {
                if !link.handle.forward_notice(n.id, n.kind, n.body) {
                    self.stats.notices_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Caller side: an answer from the provider's node.
            Frame::Result(r) => {
                let answer =
                    link.handle.finish_request(r.call_id, r.code, r.headers, r.payload, std::time::Instant::now());
                if let crate::handle::Answer::TooLarge(..) = answer {
                    self.stats.answers_too_large.fetch_add(1, Ordering::Relaxed);
                }
            }
            other => return Err(format!("unexpected frame 0x{:x} on a mesh link", other.kind())),
        }
        Ok(())
    }

    /// Requests in flight to `to` over its link (0 without a link): the load that
    /// balancing across nodes compares.
    pub(crate) fn link_load(&self, to: &NodeId) -> u64 {
        lock(&self.links).get(to).map_or(0, |l| l.handle.requests_in_flight() as u64)
    }

    /// Sets how calls from other nodes are served (once, at start).
    pub(crate) fn set_serve(
        &self,
        serve: impl Fn(&Arc<Handle>, &[u8], &[u8], fovea_core::frame::Request) + Send + Sync + 'static,
    ) {
        let _ = self.serve.set(Box::new(serve));
    }

    /// Sets how `MESH_TOOLS` from other nodes is answered (once, at start).
    pub(crate) fn set_tools_source(&self, source: impl Fn(&[u8]) -> Bytes + Send + Sync + 'static) {
        let _ = self.tools_source.set(Box::new(source));
    }

    /// The tools of `realm` whose providers are connected to node `to` (the JSON of
    /// `TOOL_LIST`), or `None` if it cannot be reached or does not answer in time.
    pub(crate) async fn fetch_tools(self: &Arc<Self>, to: Contact, realm: &Bytes) -> Option<Bytes> {
        let id = self.next_tool_query.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut q = lock(&self.tool_queries);
            if q.len() >= MAX_TOOL_QUERIES {
                return None;
            }
            q.insert(id, tx);
        }
        let frame = Frame::MeshTools(fovea_core::frame::MeshTools { id, realm: realm.clone() });
        let answer = if self.send(to, frame) { tokio::time::timeout(TOOL_QUERY_TIMEOUT, rx).await.ok() } else { None };
        lock(&self.tool_queries).remove(&id);
        answer.and_then(Result::ok)
    }

    /// A provider handle for `procedure` in `realm` on node `to`, for the RPC machinery:
    /// opens the link if needed and announces the binding the first time.
    pub(crate) async fn provider_ref(
        self: &Arc<Self>,
        to: Contact,
        realm: &Bytes,
        procedure: &Bytes,
    ) -> Option<ProviderRef> {
        let mut link = lock(&self.links).get(&to.id).cloned();
        if link.is_none() {
            if let Err(e) = self.clone().dial(to.addr, Some(to.id)).await {
                tracing::debug!(peer = %to.id, error = %e, "cannot reach provider node");
                return None;
            }
            link = lock(&self.links).get(&to.id).cloned();
        }
        let link = link?;
        link.touch(self.now_ms());
        let rid = {
            let mut bound = lock(&link.bound);
            let key = (realm.clone(), procedure.clone());
            match bound.get(&key) {
                Some(rid) => *rid,
                None => {
                    if bound.len() >= MAX_BINDINGS {
                        return None;
                    }
                    let rid = bound.len() as u64 + 1;
                    bound.insert(key, rid);
                    // Queued before any REQUEST that uses it: the link keeps order.
                    link.handle.out.send(&Frame::Bind(fovea_core::frame::Bind {
                        rid,
                        realm: realm.clone(),
                        procedure: procedure.clone(),
                    }));
                    rid
                }
            }
        };
        Some(ProviderRef { handle: link.handle.clone(), rid })
    }

    /// Milliseconds since the mesh started, to 100 ms: read per frame for the links' LRU
    /// order, so it is an atomic that a ticker advances, not a clock read per message.
    fn now_ms(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    async fn tick(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.clock.store(now, Ordering::Relaxed);
        }
    }

    /// Closes links unused for `link_idle` (checked every tenth of it), telling the peer
    /// why so that neither side takes it for a departure.
    async fn reap_idle(self: Arc<Self>, stop: CancellationToken) {
        let idle = self.config.link_idle.max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(idle / 10) => {}
            }
            let now = self.now_ms();
            let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
            let stale: Vec<Arc<Link>> = lock(&self.links)
                .values()
                .filter(|l| now.saturating_sub(l.used.load(Ordering::Relaxed)) >= idle_ms)
                .cloned()
                .collect();
            for l in stale {
                l.reaped.store(true, Ordering::Relaxed);
                l.conn.close(VarInt::from_u32(0), REASON_IDLE);
                self.stats.links_evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sets what happens to messages other nodes forward here (once, at start).
    pub(crate) fn set_delivery(&self, factory: impl Fn() -> Box<dyn FnMut(Forward) + Send> + Send + Sync + 'static) {
        let _ = self.deliver.set(Box::new(factory));
    }

    /// Queues a forwarded message for `to` (dialing it first if needed). `false` when it
    /// was dropped at a full queue.
    pub(crate) fn forward(self: &Arc<Self>, to: Contact, frame: Frame) -> bool {
        self.send(to, frame)
    }

    /// Nodes that left (link closed, or unreachable).
    pub fn departures(&self) -> tokio::sync::broadcast::Receiver<NodeId> {
        self.departed.subscribe()
    }

    /// Queues `frame` for `to`, dialing it first when there is no link. `false` when it
    /// was dropped at a full queue.
    fn send(self: &Arc<Self>, to: Contact, frame: Frame) -> bool {
        if let Some(link) = lock(&self.links).get(&to.id).cloned() {
            link.touch(self.now_ms());
            if !link.handle.out.send_bounded(&frame) {
                self.stats.dht_dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            return true;
        }
        let mut dialing = lock(&self.dialing);
        if let Some(waiting) = dialing.get_mut(&to.id) {
            if waiting.frames.len() < LINK_QUEUE {
                waiting.frames.push(frame);
                return true;
            }
            self.stats.dht_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if dialing.len() >= self.config.max_links.max(MIN_DIALS) {
            self.stats.dht_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let attempt = self.next_dial.fetch_add(1, Ordering::Relaxed);
        dialing.insert(to.id, Dialing { attempt, frames: vec![frame] });
        drop(dialing);
        let mesh = self.clone();
        tokio::spawn(async move {
            let result = mesh.clone().dial(to.addr, Some(to.id)).await;
            // The dial is over: its entry goes, and frames still waiting go to the link that
            // stands (ours, or the one the peer opened and won the tie-break with).
            let waiting = {
                let mut dialing = lock(&mesh.dialing);
                match dialing.get(&to.id) {
                    Some(d) if d.attempt == attempt => dialing.remove(&to.id).map(|d| d.frames),
                    _ => None,
                }
            };
            let link = lock(&mesh.links).get(&to.id).cloned();
            match &link {
                Some(link) => mesh.flush_waiting(link, waiting.unwrap_or_default()),
                None => {
                    let lost = waiting.map_or(0, |w| w.len());
                    mesh.stats.dht_dropped.fetch_add(lost as u64, Ordering::Relaxed);
                }
            }
            if let Err(e) = result {
                mesh.stats.dials_failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %to.id, addr = %to.addr, error = %e, "cannot reach mesh node");
                // A dial that lost a race with the peer's own dial fails, but the link the
                // peer opened stands: only a node with no link at all is down.
                if link.is_none() {
                    let _ = mesh.inputs.try_send(Input::Down(to.id));
                }
            }
        });
        true
    }

    /// Sends frames that waited for a dial on `link`, in order; those past its bound are
    /// dropped and counted.
    fn flush_waiting(&self, link: &Link, frames: Vec<Frame>) {
        for f in frames {
            if !link.handle.out.send_bounded(&f) {
                self.stats.dht_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn drive_dht(self: Arc<Self>, mut dht: Dht, mut rx: mpsc::Receiver<Input>, shutdown: CancellationToken) {
        let mut waiting_records: HashMap<dht::LookupId, oneshot::Sender<Vec<dht::Record>>> = HashMap::new();
        let mut waiting_nodes: HashMap<dht::LookupId, oneshot::Sender<Vec<Contact>>> = HashMap::new();
        let mut last_bootstrap: Option<Instant> = None;
        loop {
            let deadline = dht.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    let now = Instant::now();
                    match input {
                        Input::Message { from, rpc, msg } => dht.handle(now, from, rpc, msg),
                        Input::Up(peer) => {
                            let new = !dht.table().contains(&peer.id);
                            dht.add_contact(peer, now);
                            // A node not known before may know a part of the mesh this node
                            // does not (first join, a healed partition): look ourselves up
                            // through it, at most every few seconds.
                            if new && last_bootstrap.is_none_or(|t: Instant| now.duration_since(t) >= Duration::from_secs(5)) {
                                dht.bootstrap(now);
                                last_bootstrap = Some(now);
                            }
                        }
                        Input::Down(id) => {
                            dht.remove_contact(&id, now);
                            let _ = self.departed.send(id);
                        }
                        Input::Command(c) => match c {
                            Command::Snapshot(tx) => {
                                let s = dht.stats();
                                let contacts = dht.table().contacts().map(|c| hex(&c.id)).collect();
                                let _ = tx.send((contacts, dht.store().len(), s.lookups_started, s.requests_timed_out));
                            }
                            Command::FindRecords(key, tx) => match dht.find_records(now, key) {
                                Some(id) => { waiting_records.insert(id, tx); }
                                None => { let _ = tx.send(Vec::new()); }
                            },
                            Command::FindNode(target, tx) => match dht.find_node(now, target) {
                                Some(id) => { waiting_nodes.insert(id, tx); }
                                None => { let _ = tx.send(Vec::new()); }
                            },
                            Command::Publish(key, value, ttl) => { dht.publish(now, key, value, ttl); }
                            Command::Withdraw(key) => { dht.withdraw(&key); }
                            Command::Retract(key, ttl) => { dht.retract(now, key, ttl); }
                        },
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => dht.handle_timeout(Instant::now()),
            }
            while let Some(t) = dht.poll_transmit() {
                let mut body = BytesMut::new();
                dht::wire::encode(&t.msg, &mut body);
                let _ = self.send(t.to, Frame::Dht(DhtFrame { rpc: t.rpc, body: body.freeze() }));
            }
            while let Some(e) = dht.poll_event() {
                match e {
                    dht::Event::RecordsFound { id, records, .. } => {
                        if let Some(tx) = waiting_records.remove(&id) {
                            let _ = tx.send(records);
                        }
                    }
                    dht::Event::NodesFound { id, closest, .. } => {
                        if let Some(tx) = waiting_nodes.remove(&id) {
                            let _ = tx.send(closest);
                        }
                    }
                    dht::Event::Published { key, stored_at, .. } => {
                        tracing::debug!(key = %key, stored_at, "record published");
                    }
                    dht::Event::Notified { record } => {
                        // No receiver yet is fine: nobody watches that key any more.
                        let _ = self.notified.send(record);
                    }
                }
            }
        }
    }

    async fn command<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.inputs.send(Input::Command(make(tx))).await.ok()?;
        rx.await.ok()
    }

    /// The mesh as it stands.
    pub async fn snapshot(&self) -> MeshSnapshot {
        let (mut table, records, lookups, timed_out) = self.command(Command::Snapshot).await.unwrap_or_default();
        table.sort();
        let mut links: Vec<(String, SocketAddr)> = lock(&self.links).iter().map(|(id, l)| (hex(id), l.addr)).collect();
        links.sort();
        MeshSnapshot {
            node_id: hex(&self.local.id),
            mesh_addr: self.local.addr,
            links,
            dht_contacts: table.len(),
            dht_table: table,
            dht_records: records,
            dht_lookups: lookups,
            dht_requests_timed_out: timed_out,
            peers_refused: self.stats.peers_refused.load(Ordering::Relaxed),
            dht_dropped: self.stats.dht_dropped.load(Ordering::Relaxed),
        }
    }

    /// Publishes this node's record under `key` (republished until withdrawn).
    pub async fn publish(&self, key: dht::Key, value: Bytes, ttl: Duration) {
        let _ = self.inputs.send(Input::Command(Command::Publish(key, value, ttl))).await;
    }

    /// Changes pushed for keys this node looked up with [`Mesh::find_records`] in the last
    /// `watch_ttl` (an empty value is a retraction).
    pub fn notifications(&self) -> tokio::sync::broadcast::Receiver<dht::Record> {
        self.notified.subscribe()
    }

    /// Replaces this node's record under `key` with a retraction, pushed to watchers.
    pub async fn retract(&self, key: dht::Key, ttl: Duration) {
        let _ = self.inputs.send(Input::Command(Command::Retract(key, ttl))).await;
    }

    /// Stops republishing the record under `key`.
    pub async fn withdraw(&self, key: dht::Key) {
        let _ = self.inputs.send(Input::Command(Command::Withdraw(key))).await;
    }

    /// Every live record under `key`, from a DHT lookup.
    pub async fn find_records(&self, key: dht::Key) -> Vec<dht::Record> {
        self.command(|tx| Command::FindRecords(key, tx)).await.unwrap_or_default()
    }

    /// The nodes closest to `target`, from a DHT lookup.
    pub async fn find_node(&self, target: NodeId) -> Vec<Contact> {
        self.command(|tx| Command::FindNode(target, tx)).await.unwrap_or_default()
    }
}

/// Writes a link's queued frames, many per write.
/// Takes a link out of use: the caller has taken it out of (or never put it in) the links
/// map, so nothing new is sent on it; it closes with `reason` after [`RETIRE_GRACE`], and
/// answers to calls that came in on it still go out on it until then. Its close is not a
/// departure, on either side.
fn retire(link: &Arc<Link>, reason: &'static [u8]) {
    link.reaped.store(true, Ordering::Relaxed);
    let conn = link.conn.clone();
    tokio::spawn(async move {
        tokio::time::sleep(RETIRE_GRACE).await;
        conn.close(VarInt::from_u32(0), reason);
    });
}

async fn write_link(mut send: SendStream, link: Arc<Link>) {
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        if link.handle.out.take_into(&mut chunks).is_err() {
            // The peer has not read for slow_consumer_timeout: the link is stuck.
            link.conn.close(
                VarInt::from_u64(ErrorCode::SlowConsumer.to_u64()).unwrap_or(VarInt::from_u32(0)),
                b"link stalled",
            );
            return;
        }
        if chunks.is_empty() {
            if link.handle.out.is_closed() {
                return;
            }
            link.handle.out.wait().await;
            continue;
        }
        if send.write_all_chunks(&mut chunks).await.is_err() {
            return;
        }
        chunks.clear();
    }
}

/// The full id in hex.
pub fn hex(id: &NodeId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// Links carry DHT traffic (later, forwarded messages and calls) on one stream.
fn mesh_transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(4));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    // A peer silent for 4 s is gone: its link closes, calls over it fail, and it leaves
    // the DHT and every cache. Keep-alives every second cost a few packets per link and
    // second, which a mesh of hundreds of links per node affords; a node that was only
    // stalled rejoins by itself.
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(Duration::from_secs(4)).ok());
    // As on client connections: the peer acknowledges every 9th ack-eliciting packet.
    // `fovea bench mesh --callers 64`, 7 runs each way in one build: pub/sub +5.5%, RPC
    // +5%, RPC p99 -6% on average (each within the spread; BENCHMARKS.md, "QUIC settings").
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(fovea_core::ACK_ELICITING_THRESHOLD));
    t.ack_frequency_config(Some(ack));
    t
}
