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

mod driver;
mod join;
mod link;

use driver::Input;
use link::{Dialing, Link};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fovea_core::dht::{self, Contact, Dht, NodeId};
use fovea_core::frame::{FwdAt, Request};
use fovea_core::path::ByPath;
use quinn::VarInt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::MeshConfig;
use crate::error::NodeError;
use crate::handle::Handle;
use crate::sync::lock;

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
/// A link closed because its node answered no probe: a departure.
const REASON_DEAD: &[u8] = b"no answer to probes";
/// How long a link taken out of use (evicted, or the loser of the one-link-per-pair
/// tie-break) stays open after this node stopped putting new frames on it, so that frames
/// already queued or in flight on it (the peer may use it until it learns) are delivered
/// rather than cut off by the close.
const RETIRE_GRACE: Duration = Duration::from_secs(1);
/// How often a join address without a link is dialed again (and the longest backoff).
const REJOIN_EVERY: Duration = Duration::from_secs(10);
/// Label of the TLS exporter value the proof signs.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-fovea-mesh-v1";

/// A mesh whose endpoint is bound but that has no [`LinkHandler`] yet (two steps, so
/// that the handler, which owns the mesh, can be made around it).
pub(crate) struct Bound(Mesh);

impl Bound {
    /// The mesh, handing what other nodes send to `handler`.
    pub(crate) fn start(self, handler: std::sync::Weak<dyn LinkHandler>) -> Arc<Mesh> {
        let mut mesh = self.0;
        mesh.handler = Some(handler);
        Arc::new(mesh)
    }
}

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
    /// DHT messages from other nodes dropped at the DHT's full input queue.
    pub dht_dropped: AtomicU64,
    /// Frames for other nodes (DHT messages, forwarded messages, call frames) dropped at a
    /// full link queue or dial queue.
    pub frames_dropped: AtomicU64,
    /// Links closed for malformed frames.
    pub protocol_errors: AtomicU64,
    /// Linked nodes that stopped answering the failure detector's probes (their links
    /// closed; they left the DHT and every cache).
    pub peers_dead: AtomicU64,
    /// Calls sent to another node that had no provider for them any more, sent on to
    /// another provider.
    pub calls_redirected: AtomicU64,
    /// `NOTICE`s from other nodes not passed on (see `Stats::notices_dropped`).
    pub notices_dropped: AtomicU64,
    /// Answers from other nodes over the local caller's `max_payload`: the caller got
    /// `PAYLOAD_TOO_LARGE` instead.
    pub answers_too_large: AtomicU64,
    /// Streams' `DATA` chunks from other nodes passed on, and their bytes.
    pub stream_chunks: AtomicU64,
    pub stream_bytes: AtomicU64,
    /// `DATA` and `CREDIT` from other nodes for calls that had ended, ignored.
    pub late_stream_frames: AtomicU64,
    /// Calls ended because another node's `DATA` or `CREDIT` broke their stream's rules.
    pub streams_broken: AtomicU64,
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
    /// See [`MeshStats::dht_dropped`].
    pub dht_dropped: u64,
    /// See [`MeshStats::frames_dropped`].
    pub frames_dropped: u64,
}

/// What the mesh hands to the layer above (routing, which implements it): messages other
/// nodes forward here, calls they send here, and requests for this node's tools. The mesh
/// itself only moves frames, runs the DHT and keeps links; it calls these from each link's
/// reader task.
pub(crate) trait LinkHandler: Send + Sync + 'static {
    /// The delivery state of one link, made when the link opens and used for every
    /// message forwarded on it (a link keeps its own match caches, as a connection does).
    fn link_opened(&self) -> Box<dyn ForwardSink>;
    /// A call from another node for `procedure` in `realm`; `link` is its caller here.
    fn serve_call(&self, link: &Arc<Handle>, realm: &[u8], procedure: &[u8], request: Request);
    /// This node's own tools of `realm`, as the JSON `TOOL_LIST` carries (for `MESH_TOOLS`).
    fn local_tools(&self, realm: &[u8]) -> Bytes;
    /// Node `node` answered `NO_PROVIDER` to call `call_id` of `caller`, a call of
    /// `procedure` in `realm` sent there: it never ran. Find it another provider (the call
    /// is no longer in flight anywhere), and stop taking `node` for one of `procedure`.
    fn not_served(
        &self,
        node: NodeId,
        realm: &Bytes,
        caller: Arc<Handle>,
        call_id: u64,
        procedure: Bytes,
        request: crate::handle::Unserved,
    );
    /// The link to `node` closed before it answered idempotent call `retry` of
    /// `procedure` in `realm`: send it once more, to another provider (here or elsewhere),
    /// and stop taking `node` for one of `procedure`.
    fn retry(&self, node: NodeId, realm: &Bytes, procedure: Bytes, retry: crate::handle::Retry);
    /// A streamed message from another node (`FWD_STREAM`), for the subscribers here;
    /// `link` is its publisher here. `Err` when the link broke the stream rules (an id
    /// already open, or too many open).
    fn open_stream(&self, link: &Arc<Handle>, head: fovea_core::frame::FwdStream) -> Result<(), ()>;
}

/// Where the messages forwarded on one link go (see [`LinkHandler::link_opened`]).
pub(crate) trait ForwardSink: Send {
    /// A message forwarded on the link, read in place. Its delivery may wait, in order,
    /// until [`ForwardSink::flush`].
    fn deliver(&mut self, fwd: FwdAt<'_>);
    /// Delivers every message kept back. Called after each read of the link is handled
    /// and before any frame other than `FWD` is.
    fn flush(&mut self);
}

/// The mesh of one node. Cheap to share (`Arc`).
pub struct Mesh {
    local: Contact,
    name: String,
    /// The mesh secret's HMAC key; `None` in CA-only mode.
    secret: Option<ring::hmac::Key>,
    endpoint: crate::transport::quic::Endpoint,
    /// What the mesh endpoint's limits did (for the node's metrics).
    pub(crate) endpoint_stats: Arc<crate::transport::quic::EndpointStats>,
    /// The mesh socket, watched by idle workers ([`fovea_spin`]).
    _spin: fovea_spin::Watch,
    /// QUIC settings for links, by the peer's path (loopback peers: larger datagrams).
    servers: ByPath<Arc<quinn_proto::ServerConfig>>,
    clients: ByPath<quinn_proto::ClientConfig>,
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
    /// The layer above, which gets what other nodes send (weak: it owns the mesh). `None`
    /// only between [`Mesh::bind`] and [`Bound::start`].
    handler: Option<std::sync::Weak<dyn LinkHandler>>,
    /// `MESH_TOOLS` asked of other nodes, waiting for their `TOOL_LIST` (at most
    /// [`link::MAX_TOOL_QUERIES`]; each also ends after [`link::TOOL_QUERY_TIMEOUT`]).
    tool_queries: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<Bytes>>>,
    next_tool_query: AtomicU64,
    /// Link queue bound and call limits, from the node's limits.
    limits: crate::config::Limits,
    pub stats: MeshStats,
    /// Origin of the links' `used` clocks.
    epoch: Instant,
    /// [`Mesh::now_ms`].
    clock: AtomicU64,
}

impl Mesh {
    /// Loads the mesh identity from `data_dir` and binds the mesh endpoint. Must be called
    /// inside a tokio runtime; nothing runs until [`Bound::start`] and [`Mesh::run`].
    pub(crate) fn bind(
        config: MeshConfig,
        data_dir: &std::path::Path,
        name: String,
        limits: crate::config::Limits,
    ) -> Result<Bound, NodeError> {
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
        let server = quinn_proto::ServerConfig::with_crypto(server_crypto);
        let client = quinn_proto::ClientConfig::new(client_crypto);
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
        let endpoint_stats = Arc::new(crate::transport::quic::EndpointStats::default());
        let (endpoint, spin) =
            crate::transport::bind_endpoint(servers.network.clone(), config.listen, endpoint_stats.clone())?;
        let addr = endpoint.local_addr().unwrap_or(config.listen);
        let (inputs, rx) = mpsc::channel(DHT_QUEUE);
        Ok(Bound(Mesh {
            local: Contact { id: NodeId(id), addr },
            name,
            secret: config.secret.as_ref().map(|s| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.as_bytes())),
            endpoint,
            endpoint_stats,
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
            handler: None,
            tool_queries: Mutex::new(HashMap::new()),
            next_tool_query: AtomicU64::new(1),
            limits,
            stats: MeshStats::default(),
            epoch: Instant::now(),
            clock: AtomicU64::new(0),
        }))
    }

    /// The layer above, if it is still there.
    pub(super) fn handler(&self) -> Option<Arc<dyn LinkHandler>> {
        self.handler.as_ref().and_then(std::sync::Weak::upgrade)
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
        let fd = fovea_core::failure::Detector::new(self.config.failure.clone(), seed.rotate_left(17));
        tokio::spawn(self.clone().drive_dht(dht, fd, rx, shutdown.clone()));
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

    /// Milliseconds since the mesh started, to 100 ms: read per frame for the links' LRU
    /// order, so it is an atomic that a ticker advances, not a clock read per message.
    pub(super) fn now_ms(&self) -> u64 {
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

    /// Nodes that left (link closed, or unreachable).
    pub fn departures(&self) -> tokio::sync::broadcast::Receiver<NodeId> {
        self.departed.subscribe()
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
    // As on client connections: the peer acknowledges every 9th ack-eliciting packet, so
    // fewer ACK-only packets cross the link (BENCHMARKS.md, "QUIC settings", measures it).
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(fovea_core::ACK_ELICITING_THRESHOLD));
    t.ack_frequency_config(Some(ack));
    t
}
