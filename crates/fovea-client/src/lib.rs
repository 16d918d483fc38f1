//! # fovea-client
//!
//! The Rust SDK for fovea: connect to a node over QUIC, publish, subscribe.
//!
//! ```no_run
//! use fovea_client::{Client, ConnectOptions};
//!
//! # async fn demo() -> Result<(), fovea_client::ClientError> {
//! let client = Client::connect("quic://127.0.0.1:4433", ConnectOptions::new()).await?;
//! let mut sub = client.subscribe("sensors.>").await?;
//! client.publish("sensors.kitchen.temp", "21.5").await?;
//! if let Some(msg) = sub.next().await {
//!     println!("{} {}", msg.topic, String::from_utf8_lossy(&msg.payload));
//! }
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! A [`Client`] is a cheap-to-clone handle to one connection, kept up by a background task:
//! when the node goes away the task reconnects with backoff and restores every live
//! subscription, and [`Client::state`] reports each change. Dropping the last handle (and
//! the last [`Subscription`]) closes the connection.
//!
//! **Flow control, not silent loss.** A subscription holds a bounded queue of messages
//! ([`ConnectOptions::subscription_capacity`]). When the application does not keep up,
//! the SDK stops reading from the node rather than dropping messages; the node then
//! applies its own, counted, slow-consumer policy. Likewise [`Client::publish`] waits when
//! more than [`ConnectOptions::max_buffered`] bytes are queued for the node.
//!
//! Neighbours: built on `fovea-core` (codec, topics); talks to `fovea-node` over the wire
//! only, as any client in another language would (`docs/PROTOCOL.md`).

mod messages;
mod queue;
mod rpc;
mod session;
mod stream;
mod tls;
mod tools;
mod transport;
mod url;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fovea_core::frame::Subscribe;
use fovea_core::{Frame, OutBuf};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Idle spinning, opt-in: [`spin::install`] on your runtime's builder before connecting,
/// and idle workers watch the clients' sockets for a short, adaptive window before they
/// sleep. Waking a sleeping thread costs tens of µs per message on a VM; spinning trades
/// client CPU for that latency. Off unless installed.
pub use fovea_spin as spin;

/// A table keyed by ids this client or its node chose: subscriptions, registrations,
/// calls, requests. foldhash, seeded per table, not SipHash: a few of these look-ups
/// happen per call, and SipHash's cost showed in `scripts/profile.sh instructions rpc`.
pub(crate) type IdMap<T> = HashMap<u64, T, foldhash::fast::RandomState>;

pub use fovea_core::headers::HeaderError;
pub use fovea_core::{ErrorCode, Headers, Pattern, Procedure, Topic, TopicError};
pub use messages::{ChunkedSubscription, MessageBody, PublishStream, StreamedMessage};
pub use rpc::{Registration, Request, RequestBody, Response};
pub use stream::{CallSender, CallStream, MAX_CHUNK};
pub use tls::{default_data_dir, Trust};
pub use tools::{
    CatalogEntry, EntryKind, McpMethod, Notice, LOG_LEVELS, MCP_RESULT_TYPE, METHOD_HEADER, RESOURCE_UPDATED_PREFIX,
};
pub use url::{NodeUrl, Scheme, DEFAULT_PORT};

/// The default node URL.
pub const DEFAULT_URL: &str = "quic://127.0.0.1:4433";

/// Errors of the SDK. Each says what happened and, where there is one, what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL does not parse.
    #[error("invalid node URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The host name did not resolve.
    #[error("cannot resolve {url}: {reason}")]
    Resolve { url: String, reason: String },
    /// Nothing answered at the address in time.
    #[error("no node answered at {url} within {timeout:?}: is one running? start one with `fovea node`")]
    NoNode { url: String, timeout: Duration },
    /// TLS set-up failed on this side (CA file unreadable, no trust anchor, ...).
    #[error("TLS: {0}")]
    Tls(String),
    /// The node's certificate was not trusted.
    #[error("the node at {url} presented a certificate this client does not trust ({reason}): pass --ca with the node's node.crt or its CA, or --insecure for a test")]
    Untrusted { url: String, reason: String },
    /// The node refused the realm or credential.
    #[error("authentication failed: check the realm and token (--realm, --token)")]
    AuthFailed,
    /// The node closed the connection with a code.
    #[error("the node closed the connection: {code}{}", fmt_reason(reason))]
    Closed { code: ErrorCode, reason: String },
    /// The connection failed for another reason.
    #[error("connection to the node failed: {0}")]
    Connection(String),
    /// The operation needs a connection and there is none right now (it is reconnecting).
    #[error("not connected to the node (reconnecting)")]
    Disconnected,
    /// While disconnected, more than `max_buffered` bytes of publishes are waiting.
    #[error("disconnected and the publish buffer is full ({0} bytes)")]
    BufferFull(usize),
    /// The client was closed.
    #[error("the client is closed")]
    ClientClosed,
    /// A topic failed validation.
    #[error("invalid topic {topic:?}: it {source}")]
    InvalidTopic { topic: String, source: TopicError },
    /// A pattern failed validation.
    #[error("invalid pattern {pattern:?}: it {source}")]
    InvalidPattern { pattern: String, source: TopicError },
    /// Headers failed validation.
    #[error("invalid headers: {0}")]
    InvalidHeaders(#[from] HeaderError),
    /// The payload is over the node's limit.
    #[error("payload of {size} bytes exceeds the node's max_payload of {max}")]
    PayloadTooLarge { size: usize, max: usize },
    /// The node refused an operation.
    #[error("the node refused: {code}: {message}")]
    Refused { code: ErrorCode, message: String },
    /// A procedure name failed validation.
    #[error("invalid procedure {procedure:?}: it {source}")]
    InvalidProcedure { procedure: String, source: TopicError },
    /// No provider is registered for the procedure (answered at once by the node).
    #[error("no provider for {0}: start one (e.g. `fovea serve {0}`) or check the name and realm")]
    NoProvider(String),
    /// The call's deadline passed.
    #[error("the call timed out after {0:?}")]
    Timeout(Duration),
    /// The provider answered with an error.
    #[error("the provider failed the call: {message} (code 0x{code:x})")]
    Remote { code: u64, message: String },
    /// The provider disconnected while handling the call.
    #[error("the provider disconnected while handling the call")]
    ProviderDisconnected,
    /// The caller or the providers are at their in-flight limit; retry later.
    #[error("busy: {0}")]
    Busy(String),
    /// A descriptor (of a tool, resource or prompt) the node would refuse.
    #[error("invalid descriptor for {procedure:?}: it {reason}")]
    InvalidTool { procedure: String, reason: String },
    /// The call was abandoned while its stream was read or written: its caller cancelled
    /// it, its deadline passed, or the connection was lost.
    #[error("the call was abandoned (cancelled by its caller, past its deadline, or the connection was lost)")]
    Cancelled,
    /// A stream was written after its end, or the call does not stream that way.
    #[error("the stream has ended, or this call does not stream its request (open it with `open_call`)")]
    StreamEnded,
    /// The caller of the request did not answer its question: its agent declined, or it
    /// cannot ask one (a JSON-RPC code and message).
    #[error("the question was not answered: {message} ({code})")]
    NotAnswered { code: i64, message: String },
    /// A question's key is empty or longer than 64 bytes ([`Request::ask_keyed`]).
    #[error("invalid question key {0:?}: a key is 1 to 64 bytes")]
    InvalidQuestionKey(String),
    /// The node speaks an older protocol version without this feature.
    #[error("the node speaks protocol version {node_version}; {what} need version {needed}: upgrade the node")]
    Unsupported { what: &'static str, node_version: u64, needed: u64 },
}

impl ClientError {
    /// Whether this is a question deferred to the agent's retry of its request (an MCP
    /// 2026-07-28 agent, asked through an input-required result): the request should
    /// end now; it runs again with the answer ([`Request::ask_keyed`]).
    pub fn is_input_required(&self) -> bool {
        matches!(self, ClientError::NotAnswered { code, .. } if *code == fovea_core::tool::INPUT_REQUIRED)
    }
}

fn fmt_reason(r: &str) -> String {
    if r.is_empty() {
        String::new()
    } else {
        format!(": {r}")
    }
}

/// Where a client's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// A session with the node is open.
    Connected,
    /// The connection was lost; the client is trying to reconnect.
    Reconnecting,
    /// The client is closed (by [`Client::close`], by dropping it, or because reconnecting
    /// is off and the connection was lost).
    Closed,
}

/// Things the client reports besides messages.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A session opened (first connect or reconnect).
    Connected,
    /// The connection was lost, with the reason.
    Disconnected(String),
    /// The node is shutting down and asked clients to reconnect.
    GoAway(String),
    /// The node rejected an operation that had no one waiting for the answer (a publish).
    ServerError { code: ErrorCode, message: String },
    /// The node dropped `count` messages for the subscription to `pattern`: this client's
    /// queue at the node was full (it reads too slowly). Also counted in
    /// [`Subscription::dropped`]. When the node closes the connection as a slow consumer,
    /// what its notices had not told yet comes as one more `Dropped` per subscription.
    Dropped { pattern: String, count: u64 },
}

/// Options for [`Client::connect`]. `ConnectOptions::new()` gives the defaults.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    realm: String,
    token: Bytes,
    name: String,
    trust: Trust,
    client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    connect_timeout: Duration,
    reconnect: bool,
    max_reconnect_delay: Duration,
    max_buffered: usize,
    subscription_capacity: usize,
    max_message: usize,
    socket: Option<Socket>,
}

/// The default of [`ConnectOptions::max_message`]: 64 MiB, NATS's largest payload.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A UDP socket that several clients share.
///
/// Each [`Client`] opens its own socket unless given one with [`ConnectOptions::socket`];
/// a process holding thousands of connections (a gateway, a load generator) shares one
/// socket among many to stay within its file-descriptor limit. Closing a client closes only
/// its connection; the socket lives while any clone of it does.
///
/// A socket opened while idle spinning is on ([`spin::install`]) is watched by the
/// runtime's idle workers, at most [`spin::MAX_WATCHED`] per process.
#[derive(Debug, Clone)]
pub struct Socket(quinn::Endpoint, Option<Arc<spin::Watch>>);

/// The UDP receive and send buffer a client socket asks for. Linux's default (~208 KB)
/// holds under a millisecond of a fast subscription's datagrams: a reader late by that
/// much loses packets, and QUIC's congestion control then halves the sending rate.
/// 1 MiB ended those losses in `fovea bench pubsub` (BENCHMARKS.md, "Socket buffers").
pub const SOCKET_BUFFER: usize = 1 << 20;

impl Socket {
    /// Binds a socket to `addr`, e.g. `0.0.0.0:0` (IPv4, any port) or `[::]:0`.
    ///
    /// # Errors
    /// [`ClientError::Connection`] when the socket cannot be opened.
    pub fn bind(addr: std::net::SocketAddr) -> Result<Socket, ClientError> {
        use socket2::{Domain, Protocol, Type};
        let err = |e: std::io::Error| ClientError::Connection(format!("cannot open a UDP socket on {addr}: {e}"));
        let socket = socket2::Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
        if addr.is_ipv6() {
            // As quinn's `Endpoint::client` does: a `[::]` socket reaches IPv4 nodes too.
            let _ = socket.set_only_v6(false);
        }
        socket.bind(&addr.into()).map_err(err)?;
        // Best effort: the kernel caps the size at `net.core.rmem_max`/`wmem_max`.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
        let watch = spin::enabled().then(|| Arc::new(spin::Watch::new(std::os::fd::AsRawFd::as_raw_fd(&socket))));
        let runtime = Arc::new(quinn::TokioRuntime);
        // Accept datagrams as large as a node on loopback sends (`fovea_core::path`); a
        // limit announced to nodes, not a size this side sends on a network path.
        let mut config = quinn::EndpointConfig::default();
        // Cannot fail: the value is within QUIC's 1 200..=65 527.
        let _ = config.max_udp_payload_size(fovea_core::path::LOOPBACK_UDP_PAYLOAD);
        let endpoint = quinn::Endpoint::new(config, None, socket.into(), runtime);
        endpoint.map(|e| Socket(e, watch)).map_err(err)
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            realm: "default".into(),
            token: Bytes::new(),
            name: String::new(),
            trust: Trust::Auto,
            client_cert: None,
            connect_timeout: Duration::from_secs(5),
            reconnect: true,
            max_reconnect_delay: Duration::from_secs(2),
            max_buffered: 8 * 1024 * 1024,
            subscription_capacity: 8192,
            max_message: DEFAULT_MAX_MESSAGE,
            socket: None,
        }
    }
}

impl ConnectOptions {
    /// The defaults: realm `default`, no token, trust [`Trust::Auto`], reconnect on.
    pub fn new() -> Self {
        Self::default()
    }
    /// The realm to join.
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = realm.into();
        self
    }
    /// The credential.
    pub fn token(mut self, token: impl Into<Bytes>) -> Self {
        self.token = token.into();
        self
    }
    /// A name for this client, shown in the node's introspection.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// How to verify the node's certificate.
    pub fn trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }
    /// Presents this TLS client certificate (PEM chain and key files): nodes identify a user
    /// by its fingerprint (`cert_sha256`) when no token is given.
    pub fn client_cert(mut self, cert: impl Into<std::path::PathBuf>, key: impl Into<std::path::PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Shortcut for [`Trust::CaFiles`] with one file.
    pub fn ca_file(self, path: impl Into<std::path::PathBuf>) -> Self {
        self.trust(Trust::CaFiles(vec![path.into()]))
    }
    /// How long one connection attempt may take. Default 5 s.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }
    /// Whether to reconnect after the connection is lost. Default on.
    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }
    /// Longest wait between reconnect attempts (the backoff doubles up to it). Default 2 s.
    pub fn max_reconnect_delay(mut self, t: Duration) -> Self {
        self.max_reconnect_delay = t;
        self
    }
    /// Bytes of outgoing frames queued before [`Client::publish`] waits (connected) or
    /// fails with [`ClientError::BufferFull`] (reconnecting). Default 8 MiB.
    pub fn max_buffered(mut self, bytes: usize) -> Self {
        self.max_buffered = bytes.max(1);
        self
    }
    /// Largest streamed message a [`Subscription`] takes whole: a larger one is refused
    /// (the node sends no more of it) and counted as dropped. A [`ChunkedSubscription`]
    /// has no such bound. Default 64 MiB ([`DEFAULT_MAX_MESSAGE`]).
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// Messages a [`Subscription`] holds before the client stops reading from the node
    /// (flow control). Default 8192.
    pub fn subscription_capacity(mut self, n: usize) -> Self {
        self.subscription_capacity = n.max(1);
        self
    }
    /// Connect through a shared [`Socket`] instead of opening one for this client. The
    /// socket's address family must match the node's address.
    pub fn socket(mut self, socket: &Socket) -> Self {
        self.socket = Some(socket.clone());
        self
    }
}

/// A message received on a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published to.
    pub topic: Topic,
    /// Its headers (often empty).
    pub headers: Headers,
    /// Its payload.
    pub payload: Bytes,
}

/// What the node said about itself in `WELCOME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// The node's name.
    pub node: String,
    /// The protocol version in use.
    pub version: u64,
    /// The node's id for this connection.
    pub connection_id: u64,
    /// Largest payload the node accepts.
    pub max_payload: usize,
}

/// A handle to a connection. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

/// Owned by the `Client` clones and subscriptions; dropping the last one stops the driver.
struct Handle {
    inner: Arc<Inner>,
    driver: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.shutdown.cancel();
    }
}

/// State shared between the handles and the connection driver.
/// The answer to a provider's question: the MCP result, or a JSON-RPC code and message.
pub(crate) type Answer = Result<serde_json::Value, (i64, String)>;

pub(crate) struct Inner {
    pub url: NodeUrl,
    pub opts: ConnectOptions,
    /// The QUIC endpoint (`None` for a `tls://`, `ws://` or `wss://` URL).
    pub endpoint: Option<quinn::Endpoint>,
    /// The TLS settings of a `tls://` or `wss://` connection.
    pub tls: Arc<rustls::ClientConfig>,
    /// The last `GOAWAY` of this session: on a stream transport, the node's close.
    pub last_goaway: Mutex<Option<(ErrorCode, String)>>,
    /// Whether `endpoint` is this client's alone (closed with it) or a shared [`Socket`].
    pub own_endpoint: bool,
    /// The idle-spin watch of this client's own socket, if any (a shared one's lives in
    /// `opts.socket`).
    pub _spin: Option<Arc<spin::Watch>>,
    pub quic: fovea_core::path::ByPath<quinn::ClientConfig>,
    /// Calls of the current session waiting for a result. Lock order: before `out`.
    pub calls: Mutex<rpc::Calls>,
    /// Wakes the call watchdog (`rpc::expire_calls`) for a deadline earlier than its alarm.
    pub call_alarm: Notify,
    /// Lock order: `out` before `subs`.
    pub out: Mutex<Out>,
    pub subs: Mutex<IdMap<SubEntry>>,
    pub regs: Mutex<IdMap<rpc::RegEntry>>,
    /// Calls whose caller wants their notices (`call_with_notices`), by call id.
    pub notice_sinks: Mutex<IdMap<mpsc::Sender<tools::Notice>>>,
    /// Calls whose caller answers the provider's questions (`call_answering`), by call
    /// id: their questions go here rather than being declined.
    pub answer_sinks: Mutex<IdMap<mpsc::Sender<tools::Notice>>>,
    /// Questions this client's providers asked, by (request id, question id), waiting for
    /// their answer (`Request::ask`).
    pub questions: Mutex<HashMap<(u64, u64), oneshot::Sender<Answer>>>,
    /// Requests this client is handling, by request id, with their cancellation token once the
    /// handler asks for it: set when the node abandons one. At most the node's
    /// `max_requests_in_flight` per registration.
    pub serving: Mutex<IdMap<rpc::Serving>>,
    /// Streamed calls this client made, by call id, and streamed requests it serves, by
    /// request id (see [`stream`]): the reader hands them chunks and credit.
    pub call_streams: Mutex<IdMap<Arc<stream::Flow>>>,
    pub request_streams: Mutex<IdMap<Arc<stream::Flow>>>,
    /// Streamed messages this client publishes, by its id, and receives, by the node's
    /// (see [`messages`]).
    pub publish_streams: Mutex<IdMap<Arc<stream::Flow>>>,
    pub message_streams: Mutex<IdMap<messages::Incoming>>,
    /// `call_streams.len()`, read without its lock by every call's result.
    pub call_streams_open: AtomicUsize,
    /// The runtime the client was made in: a large answer given to the synchronous
    /// `Request::respond` is streamed from a task spawned there.
    pub runtime: tokio::runtime::Handle,
    /// Which session is current: bumped, under the `out` lock, as each session (the first
    /// too) starts reading. The node numbers requests per connection, so a request's id means
    /// something only in its session: an answer from an earlier one would reach another
    /// call with the same id. Answers and notices carry their session's number and are
    /// dropped when it is not the current one.
    pub session: AtomicU64,
    /// `TOOLS` queries waiting for their `TOOL_LIST`.
    pub tool_queries: Mutex<IdMap<oneshot::Sender<fovea_core::frame::ToolList>>>,
    /// Bumped on `TOOLS_CHANGED` and on reconnection (see `Client::watch_tools`).
    pub tools_changed: watch::Sender<u64>,
    /// The id of this client's catalog watch; 0 until `watch_tools` is first called.
    pub tools_watch: AtomicU64,
    pub pings: Mutex<IdMap<oneshot::Sender<()>>>,
    /// Wakes the writer.
    pub wake: Notify,
    /// Wakes publishers waiting for buffer space.
    pub drained: Notify,
    pub next_id: AtomicU64,
    pub state: watch::Sender<ConnectionState>,
    pub events: broadcast::Sender<Event>,
    pub info: Mutex<Option<ServerInfo>>,
    /// `info`'s `max_payload`, read by every publish without the lock.
    pub max_payload: AtomicUsize,
    pub shutdown: CancellationToken,
}

/// The outgoing queue and whether a session is open to drain it.
pub(crate) struct Out {
    pub buf: OutBuf,
    pub connected: bool,
    /// Ids whose `SUB` or `REG` frame sits in `buf`, not yet handed to a session: a
    /// reconnect must not send those twice.
    pub queued: Vec<u64>,
    /// Calls queued since the session's reader last looked (see [`rpc::Calls`]).
    pub new_calls: rpc::NewCalls,
}

pub(crate) struct SubEntry {
    pub pattern: Pattern,
    /// Messages the node reported dropped for this subscription.
    pub dropped: Arc<AtomicU64>,
    /// Queue group; empty for none.
    pub group: Bytes,
    pub tx: queue::Sender,
    /// A [`ChunkedSubscription`]'s channel: its messages go there instead of `tx`.
    pub chunked: Option<mpsc::Sender<StreamedMessage>>,
    /// The caller of `subscribe` waiting for `SUBACK`.
    pub ack: Option<oneshot::Sender<Result<(), ClientError>>>,
}

/// The node's answer to a `SUB` or `REG`: `SUBACK`/`REGACK`, or the `ERROR` refusing it.
pub(crate) type AckSender = oneshot::Sender<Result<(), ClientError>>;
type AckReceiver = oneshot::Receiver<Result<(), ClientError>>;

impl Inner {
    /// Records an entry the node must acknowledge (a subscription or registration) under
    /// `id`, and queues its `frame` if a session is open. Returns the acknowledgement to
    /// wait for, or `None` while reconnecting (the entry is sent when the session opens).
    pub(crate) fn open_acked<T>(
        &self,
        map: &Mutex<IdMap<T>>,
        id: u64,
        entry: impl FnOnce(Option<AckSender>) -> T,
        frame: &Frame,
    ) -> Result<Option<AckReceiver>, ClientError> {
        let (ack_tx, ack_rx) = oneshot::channel();
        let mut out = lock(&self.out);
        if self.shutdown.is_cancelled() {
            return Err(ClientError::ClientClosed);
        }
        let connected = out.connected;
        lock(map).insert(id, entry(connected.then_some(ack_tx)));
        if !connected {
            return Ok(None);
        }
        out.buf.push_frame(frame);
        out.queued.push(id);
        drop(out);
        self.wake.notify_one();
        Ok(Some(ack_rx))
    }
}

impl Inner {
    /// Runs `queue` under the `out` lock if a session is open (it registers what waits for
    /// an answer and queues the request), then wakes the writer. Registering and queueing
    /// under one lock means a session ending in between cannot strand the waiter.
    pub(crate) fn queue_if_connected(&self, queue: impl FnOnce(&mut Out)) -> Result<(), ClientError> {
        {
            let mut out = lock(&self.out);
            if self.shutdown.is_cancelled() {
                return Err(ClientError::ClientClosed);
            }
            if !out.connected {
                return Err(ClientError::Disconnected);
            }
            queue(&mut out);
        }
        self.wake.notify_one();
        Ok(())
    }
}

/// Waits for an acknowledgement from [`Inner::open_acked`].
pub(crate) async fn acknowledged(ack: Option<AckReceiver>) -> Result<(), ClientError> {
    match ack {
        None => Ok(()),
        Some(rx) => rx.await.unwrap_or(Err(ClientError::ClientClosed)),
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Client {
    /// Connects to the node at `url` (`quic://host:port`) and opens a session.
    ///
    /// The first attempt's failure is returned as is (so a wrong address, certificate or
    /// credential is reported at once); later disconnections are handled by reconnecting.
    ///
    /// # Errors
    /// [`ClientError`]: bad URL, no node, untrusted certificate, authentication failure.
    pub async fn connect(url: &str, opts: ConnectOptions) -> Result<Client, ClientError> {
        let url = NodeUrl::parse(url)?;
        let crypto = tls::client_crypto(&opts.trust, opts.client_cert.as_ref(), &url)?;
        let quic = session::quic_config(crypto.clone())?;
        let stream_tls = transport::stream_tls(crypto, url.scheme);
        let (endpoint, own_endpoint, _spin) = match (&opts.socket, url.scheme) {
            (_, Scheme::Tls | Scheme::Ws | Scheme::Wss) => (None, false, None),
            (Some(Socket(shared, _)), Scheme::Quic) => (Some(shared.clone()), false, None),
            (None, Scheme::Quic) => {
                let addr = session::resolve(&url).await?;
                let bind: std::net::SocketAddr = if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
                    .parse()
                    .map_err(|_| ClientError::Connection("bad bind address".into()))?;
                let Socket(own, watch) = Socket::bind(bind)?;
                (Some(own), true, watch)
            }
        };
        let (state, _) = watch::channel(ConnectionState::Reconnecting);
        let inner = Arc::new(Inner {
            url,
            opts,
            endpoint,
            tls: stream_tls,
            last_goaway: Mutex::new(None),
            own_endpoint,
            _spin,
            quic,
            calls: Mutex::new(rpc::Calls::default()),
            call_alarm: Notify::new(),
            out: Mutex::new(Out {
                buf: OutBuf::new(),
                connected: false,
                queued: Vec::new(),
                new_calls: rpc::NewCalls::default(),
            }),
            subs: Mutex::new(IdMap::default()),
            regs: Mutex::new(IdMap::default()),
            notice_sinks: Mutex::new(IdMap::default()),
            answer_sinks: Mutex::new(IdMap::default()),
            questions: Mutex::new(HashMap::new()),
            serving: Mutex::new(IdMap::default()),
            call_streams: Mutex::new(IdMap::default()),
            request_streams: Mutex::new(IdMap::default()),
            publish_streams: Mutex::new(IdMap::default()),
            message_streams: Mutex::new(IdMap::default()),
            call_streams_open: AtomicUsize::new(0),
            runtime: tokio::runtime::Handle::current(),
            session: AtomicU64::new(0),
            tool_queries: Mutex::new(IdMap::default()),
            tools_changed: watch::Sender::new(0),
            tools_watch: AtomicU64::new(0),
            pings: Mutex::new(IdMap::default()),
            wake: Notify::new(),
            drained: Notify::new(),
            next_id: AtomicU64::new(1),
            state,
            events: broadcast::channel(64).0,
            info: Mutex::new(None),
            max_payload: AtomicUsize::new(fovea_core::limits::MAX_PAYLOAD),
            shutdown: CancellationToken::new(),
        });
        let first = session::establish(&inner).await?;
        // Open for business before returning, so the caller's first subscribe and flush
        // see a session; the driver's restore finds nothing to restore yet.
        // Numbered now, so that what is sent before the driver starts reading (a streamed
        // call's chunks) belongs to this session; the driver numbers later sessions.
        {
            let mut out = lock(&inner.out);
            out.connected = true;
            inner.session.store(1, Ordering::Relaxed);
        }
        inner.state.send_replace(ConnectionState::Connected);
        let driver = tokio::spawn(session::drive(inner.clone(), first));
        Ok(Client { handle: Arc::new(Handle { inner, driver: Mutex::new(Some(driver)) }) })
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.handle.inner
    }

    /// Publishes `payload` to `topic`.
    ///
    /// Returns once the message is queued for the node, not when it is delivered; use
    /// [`Client::flush`] to wait until the node has routed everything published so far.
    ///
    /// # Errors
    /// Invalid topic, payload over the node's limit, [`ClientError::BufferFull`] while
    /// reconnecting, [`ClientError::ClientClosed`].
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before it completes, nothing was queued.
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        self.publish_with_headers(topic, &Headers::new(), payload).await
    }

    /// Publishes with headers (see [`Headers::from_pairs`]).
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn publish_with_headers(
        &self,
        topic: &str,
        headers: &Headers,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let payload = payload.into();
        // Validated in place: a publish allocates nothing but its queue space.
        Topic::check(topic).map_err(|source| ClientError::InvalidTopic { topic: topic.to_owned(), source })?;
        let max = self.max_payload();
        if payload.len() > max {
            let streams = self.server_info().is_some_and(|i| i.version >= fovea_core::frame::VERSION_MESSAGE_STREAMS);
            if !streams {
                return Err(ClientError::PayloadTooLarge { size: payload.len(), max });
            }
            return self.publish_large(topic, headers, payload).await;
        }
        let inner = self.inner();
        loop {
            let drained = inner.drained.notified();
            {
                let mut out = lock(&inner.out);
                if inner.shutdown.is_cancelled() {
                    return Err(ClientError::ClientClosed);
                }
                if out.buf.len() < inner.opts.max_buffered {
                    let was_empty = out.buf.is_empty();
                    out.buf.push_pub(topic.as_bytes(), headers, &payload);
                    drop(out);
                    if was_empty {
                        inner.wake.notify_one();
                    }
                    return Ok(());
                }
                if !out.connected {
                    return Err(ClientError::BufferFull(inner.opts.max_buffered));
                }
            }
            drained.await;
        }
    }

    /// Subscribes to `pattern` (`*` matches one segment, a final `>` one or more).
    ///
    /// When connected, returns once the node has confirmed the subscription, so any
    /// message published after that (by anyone) reaches it. While reconnecting, returns at
    /// once and the subscription starts with the next session. Dropping the
    /// [`Subscription`] unsubscribes.
    ///
    /// # Errors
    /// Invalid pattern; [`ClientError::Refused`] if the node refuses it (too many
    /// subscriptions, permission denied); [`ClientError::ClientClosed`].
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, ClientError> {
        self.subscribe_with(pattern, "", None).await
    }

    /// Subscribes as a member of queue group `group`: the subscriptions of all clients
    /// with the same pattern and group share its messages, each message going to one of
    /// them (chosen by power of two choices on their queued bytes), as NATS queue groups.
    ///
    /// # Errors
    /// As [`Client::subscribe`]; the group name follows the rules of a topic.
    pub async fn subscribe_group(&self, pattern: &str, group: &str) -> Result<Subscription, ClientError> {
        Topic::new(group)
            .map_err(|source| ClientError::InvalidPattern { pattern: format!("group {group}"), source })?;
        self.subscribe_with(pattern, group, None).await
    }

    pub(crate) async fn subscribe_with(
        &self,
        pattern: &str,
        group: &str,
        chunked: Option<mpsc::Sender<StreamedMessage>>,
    ) -> Result<Subscription, ClientError> {
        let group = Bytes::copy_from_slice(group.as_bytes());
        let parsed = Pattern::new(pattern)
            .map_err(|source| ClientError::InvalidPattern { pattern: pattern.to_owned(), source })?;
        let inner = self.inner();
        let sid = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = queue::queue(inner.opts.subscription_capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let frame = Frame::Sub(Subscribe { sid, pattern: parsed.to_bytes(), group: group.clone() });
        let entry = |ack| SubEntry { pattern: parsed.clone(), dropped: dropped.clone(), group, tx, chunked, ack };
        let ack = inner.open_acked(&inner.subs, sid, entry, &frame)?;
        // Built before waiting: if the node refuses, dropping it sends the UNSUB.
        let sub = Subscription {
            sid,
            pattern: parsed,
            rx,
            batch: std::collections::VecDeque::new(),
            dropped,
            client: self.clone(),
        };
        acknowledged(ack).await?;
        Ok(sub)
    }

    fn unsubscribe(&self, sid: u64) {
        let inner = self.inner();
        let mut out = lock(&inner.out);
        lock(&inner.subs).remove(&sid);
        // Always queued: if this sub's SUB is still in the buffer, the UNSUB must follow
        // it; if not, a node that does not know the sid ignores it.
        out.buf.push_frame(&Frame::Unsub(sid));
        drop(out);
        inner.wake.notify_one();
    }

    /// Waits until the node has processed everything this client sent before the call
    /// (so every earlier publish has been routed to its subscribers).
    ///
    /// # Errors
    /// [`ClientError::Disconnected`] if there is no session or it is lost meanwhile.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let inner = self.inner();
        let token = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut out = lock(&inner.out);
            if !out.connected {
                return Err(ClientError::Disconnected);
            }
            lock(&inner.pings).insert(token, tx);
            out.buf.push_frame(&Frame::Ping(token));
        }
        inner.wake.notify_one();
        rx.await.map_err(|_| ClientError::Disconnected)
    }

    /// Flushes (for at most the connect timeout), then closes the connection. Other clones
    /// of this client and its subscriptions see the client closed.
    pub async fn close(&self) {
        let _ = tokio::time::timeout(self.inner().opts.connect_timeout, self.flush()).await;
        self.inner().shutdown.cancel();
        let driver = lock(&self.handle.driver).take();
        if let Some(d) = driver {
            let _ = d.await;
        }
    }

    /// The connection state; `.changed().await` on the receiver to follow it.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner().state.subscribe()
    }

    /// Events besides messages: reconnects, `GOAWAY`, errors for publishes. A receiver that
    /// falls more than 64 events behind misses the oldest (see `broadcast::Receiver`).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner().events.subscribe()
    }

    /// What the node said in its last `WELCOME`.
    pub fn server_info(&self) -> Option<ServerInfo> {
        lock(&self.inner().info).clone()
    }

    /// The URL this client connects to.
    pub fn url(&self) -> &NodeUrl {
        &self.inner().url
    }

    pub(crate) fn max_payload(&self) -> usize {
        self.inner().max_payload.load(Ordering::Relaxed)
    }
}

/// Most messages a [`Subscription`] takes from its channel at once.
/// A stream of the messages that match one pattern. Ends when the client closes or the
/// node cancels the subscription. Dropping it unsubscribes.
pub struct Subscription {
    sid: u64,
    pattern: Pattern,
    rx: queue::Receiver,
    /// Messages taken from `rx` in one go, handed out one by one: one lock per batch
    /// rather than per message. At most [`queue::TAKE_MAX`] on top of the queue's
    /// capacity are held.
    batch: std::collections::VecDeque<Message>,
    dropped: Arc<AtomicU64>,
    client: Client,
}

impl Subscription {
    /// The next message, or `None` when the subscription has ended.
    ///
    /// # Cancel safety
    /// Cancel safe: no message is lost if the future is dropped.
    pub async fn next(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        if let Some(m) = self.batch.pop_front() {
            return Poll::Ready(Some(m));
        }
        match self.rx.poll_take(cx, &mut self.batch) {
            Poll::Ready(true) => Poll::Ready(self.batch.pop_front()),
            Poll::Ready(false) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The subscription's pattern.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// The subscription id on the wire.
    pub fn sid(&self) -> u64 {
        self.sid
    }

    /// Messages the node dropped for this subscription so far, because this client read
    /// too slowly (its queue at the node was full). The SDK itself never drops.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl futures_core::Stream for Subscription {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.poll_message(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.client.unsubscribe(self.sid);
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("sid", &self.sid).field("pattern", &self.pattern).finish()
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("url", &self.inner().url.to_string()).finish()
    }
}
