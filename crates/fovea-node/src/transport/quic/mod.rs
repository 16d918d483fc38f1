//! The client endpoint's QUIC IO shell: sockets, timers and wake-ups around
//! quinn-proto's state machines, in place of the `quinn` crate's.
//!
//! # Why not `quinn` here
//! An idle client connection is what a node holds 100 000 of, and `quinn` gives each one
//! an unbounded event channel (one 32-slot block of 208-byte events: 6.7 KB, allocated
//! when the connection starts), a driver task with a timer of its own, and a send buffer
//! that keeps the capacity of the largest datagram it ever built (1.2–2.4 KB over a
//! network, 6.5 KB on loopback) — ~9 KB of a connection's ~32 KB, before quinn-proto's
//! own state (`BENCHMARKS.md`, "Idle connections against the 30 KB goal"). None of it
//! can be configured away.
//!
//! Here a connection is quinn-proto's `Connection` behind a mutex and nothing else that
//! lives as long:
//! - **no channel**: the endpoint's driver hands a datagram to its connection directly,
//!   under the connection's lock, after releasing the endpoint's;
//! - **no task, no timer per connection**: one heap of deadlines in the endpoint, popped by
//!   its driver (the `timers` module);
//! - **no send buffer per connection**: whoever drives a connection (the driver, or the
//!   task that just wrote to a stream) builds its datagrams in that thread's buffer and
//!   sends them at once. A datagram the socket refuses (`WouldBlock`) is the only one kept,
//!   boxed, until the driver sees the socket writable again.
//!
//! That also takes a task hop off both directions of every message: a stream write sends
//! its packets from the writing task, and a datagram wakes the reading task straight from
//! the driver.
//!
//! The mesh's links run on it too: few and long-lived, but each carries the messages of
//! many clients, and a task hop per direction on them cost a node as much as serving a
//! client's messages does (BENCHMARKS.md, "Across a mesh link"). Links also connect out
//! (`Endpoint::connect`) and open their stream (`Connection::open_bi`).
//!
//! # Locks
//! Two kinds, always taken in this order: a connection's, then the endpoint's. Code that
//! holds the endpoint's lock collects what it needs and releases it before touching a
//! connection. Neither is held across an `.await`.

mod conn;
mod timers;

use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::BytesMut;
use quinn_proto::{DatagramEvent, EcnCodepoint, VarInt};
use tokio::io::Interest;
use tokio::sync::Notify;

use conn::ConnShared;
pub(crate) use conn::{Connecting, Connection, ConnectionError, RecvStream, SendStream};

/// New connections waiting for the node's accept loop. Past this, a new client's first
/// packet is refused (it sees `CONNECTION_REFUSED` and may retry) and counted: a burst the
/// accept loop cannot keep up with must not grow without bound.
pub const INCOMING_QUEUE: usize = 4096;

/// Datagrams (GRO batches) taken from the socket per system call.
const RECV_BATCH: usize = if quinn_udp::BATCH_SIZE < 16 { quinn_udp::BATCH_SIZE } else { 16 };
/// Room for one GRO batch: the kernel coalesces at most 64 KB.
const RECV_SLOT: usize = 64 * 1024;
/// System calls of received datagrams the driver handles before it lets other tasks run.
const RECV_ROUNDS: usize = 32;
/// Datagrams per GSO send at most (a GSO send must fit one UDP datagram: with loopback's
/// 6 500-byte datagrams, ten are 65 000 bytes).
const MAX_SEGMENTS: usize = 10;

/// What the endpoint holds and what its limits did, for the node's metrics. The gauges
/// are refreshed by the driver each time round its loop.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// New connections refused because [`INCOMING_QUEUE`] was full (or the endpoint closing).
    pub incoming_refused: AtomicU64,
    /// Datagrams the socket refused for a moment (its send buffer full); each waited for
    /// the socket, none was lost.
    pub send_blocked: AtomicU64,
    /// Connections held: handshaking, open or draining (gauge).
    pub connections: AtomicU64,
    /// New connections waiting for the accept loop (gauge, at most [`INCOMING_QUEUE`]).
    pub incoming_queued: AtomicU64,
    /// Entries in the timer heap, stale ones included (gauge; see `timers`).
    pub timer_entries: AtomicU64,
}

/// An endpoint: one UDP socket, the connections it accepted and those it opened.
///
/// Dropped, the endpoint closes as if [`Endpoint::close`] had been called with code 0
/// (the driver task ends once its connections have drained).
pub(crate) struct Endpoint {
    shared: Arc<EpShared>,
}

pub(crate) struct EpShared {
    socket: tokio::net::UdpSocket,
    udp: quinn_udp::UdpSocketState,
    state: Mutex<EpState>,
    /// Wakes the driver: a new earliest deadline, a blocked send, the endpoint closing.
    wake: Notify,
    /// Wakes `accept`.
    incoming_ready: Notify,
    /// Wakes `wait_idle`.
    idle: Notify,
    stats: Arc<EndpointStats>,
}

struct EpState {
    proto: quinn_proto::Endpoint,
    /// By `ConnectionHandle` (quinn-proto's dense slab keys, reused once drained).
    conns: Vec<Option<Arc<ConnShared>>>,
    live: usize,
    incoming: VecDeque<quinn_proto::Incoming>,
    timers: timers::Timers,
    /// Connections with a datagram waiting for the socket to take it.
    blocked: Vec<Arc<ConnShared>>,
    /// Set by `close`: no new connections, and the driver stops once all are drained.
    closed: Option<(VarInt, bytes::Bytes)>,
}

impl EpState {
    /// Keeps `conn` under its handle's slot.
    fn insert(&mut self, handle: quinn_proto::ConnectionHandle, conn: &Arc<ConnShared>) {
        let slot = handle.0;
        if self.conns.len() <= slot {
            self.conns.resize(slot + 1, None);
        }
        self.conns[slot] = Some(conn.clone());
        self.live += 1;
    }
}

impl EpShared {
    fn lock(&self) -> MutexGuard<'_, EpState> {
        crate::sync::lock(&self.state)
    }

    /// Sends one datagram (or GSO batch). `WouldBlock` is returned to the caller, which
    /// keeps the datagram; other errors (e.g. an unreachable destination) lose it, as a
    /// network would, and QUIC's loss recovery resends what mattered.
    fn send(&self, t: &quinn_proto::Transmit, contents: &[u8]) -> std::io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination: t.destination,
            ecn: t.ecn.map(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)).unwrap_or(None),
            contents: &contents[..t.size.min(contents.len())],
            segment_size: t.segment_size,
            src_ip: t.src_ip,
        };
        match self.socket.try_io(Interest::WRITABLE, || self.udp.send((&self.socket).into(), &transmit)) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(e),
            Err(e) => {
                tracing::debug!(to = %t.destination, error = %e, "a datagram could not be sent");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Datagrams one send may carry (GSO). Read each time: quinn-udp lowers it to 1 if
    /// the kernel turns out to refuse GSO.
    fn segments(&self) -> usize {
        self.udp.max_gso_segments().clamp(1, MAX_SEGMENTS)
    }

    /// An endpoint-made answer (refusal, version negotiation, stateless reset): sent if
    /// the socket has room, dropped if not; the peer retries.
    fn respond(&self, t: &quinn_proto::Transmit, contents: &[u8]) {
        let _ = self.send(t, contents);
    }
}

impl Endpoint {
    /// Serves `server` on `socket` (already bound and sized), starting the driver task.
    ///
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// If the socket cannot be registered with tokio or configured for QUIC (GSO, ECN).
    pub(crate) fn new(
        config: quinn_proto::EndpointConfig,
        server: Arc<quinn_proto::ServerConfig>,
        socket: std::net::UdpSocket,
        stats: Arc<EndpointStats>,
    ) -> std::io::Result<Endpoint> {
        let udp = quinn_udp::UdpSocketState::new((&socket).into())?;
        socket.set_nonblocking(true)?;
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        let proto = quinn_proto::Endpoint::new(Arc::new(config), Some(server), !udp.may_fragment(), None);
        let shared = Arc::new(EpShared {
            socket,
            udp,
            state: Mutex::new(EpState {
                proto,
                conns: Vec::new(),
                live: 0,
                incoming: VecDeque::new(),
                timers: timers::Timers::default(),
                blocked: Vec::new(),
                closed: None,
            }),
            wake: Notify::new(),
            incoming_ready: Notify::new(),
            idle: Notify::new(),
            stats,
        });
        tokio::spawn(drive(shared.clone()));
        Ok(Endpoint { shared })
    }

    /// The address the socket is bound to.
    ///
    /// # Errors
    /// As `getsockname`.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.socket.local_addr()
    }

    /// The next new connection, `None` once the endpoint is closed.
    ///
    /// # Cancel safety
    /// Cancel safe: a connection is taken from the queue only when returned.
    pub(crate) async fn accept(&self) -> Option<Incoming> {
        loop {
            let notified = self.shared.incoming_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut ep = self.shared.lock();
                if ep.closed.is_some() {
                    return None;
                }
                if let Some(i) = ep.incoming.pop_front() {
                    return Some(Incoming { ep: self.shared.clone(), inner: Some(i) });
                }
            }
            notified.await;
        }
    }

    /// Opens a connection to `addr` with `config`, expecting a certificate for
    /// `server_name`; the returned future resolves once the handshake completes.
    ///
    /// # Errors
    /// If quinn-proto refuses to start it (the endpoint closing, a bad address or name).
    pub(crate) fn connect(
        &self,
        config: quinn_proto::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Connecting, quinn_proto::ConnectError> {
        let now = Instant::now();
        let conn = {
            let mut ep = self.shared.lock();
            if ep.closed.is_some() {
                return Err(quinn_proto::ConnectError::EndpointStopping);
            }
            let (handle, proto) = ep.proto.connect(now, config, addr, server_name)?;
            let conn = ConnShared::new(self.shared.clone(), handle, proto);
            ep.insert(handle, &conn);
            conn
        };
        conn.drive(now);
        Ok(Connecting::new(conn))
    }

    /// Closes every connection with `code` and `reason`, refuses new ones and ends
    /// [`accept`](Self::accept). Connections drain (QUIC's closing period) before the
    /// driver stops.
    pub(crate) fn close(&self, code: VarInt, reason: &[u8]) {
        close(&self.shared, code, reason);
    }

    /// Waits until every connection has drained.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.shared.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.lock().live == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Connections the endpoint holds (handshaking, open or draining).
    #[cfg(test)]
    pub(crate) fn connections(&self) -> usize {
        self.shared.lock().live
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        close(&self.shared, VarInt::from_u32(0), b"");
    }
}

fn close(ep: &Arc<EpShared>, code: VarInt, reason: &[u8]) {
    let reason = bytes::Bytes::copy_from_slice(reason);
    let (conns, incoming) = {
        let mut s = ep.lock();
        if s.closed.is_none() {
            s.closed = Some((code, reason.clone()));
        }
        let conns: Vec<Arc<ConnShared>> = s.conns.iter().flatten().cloned().collect();
        (conns, std::mem::take(&mut s.incoming))
    };
    let mut buf = Vec::new();
    for i in incoming {
        let t = ep.lock().proto.refuse(i, &mut buf);
        ep.respond(&t, &buf);
    }
    for c in conns {
        c.close(code, reason.clone());
    }
    ep.incoming_ready.notify_waiters();
    ep.wake.notify_one();
}

/// A client's first packet, not yet answered. Dropped without [`accept_with`](Self::accept_with),
/// the connection is refused.
pub(crate) struct Incoming {
    ep: Arc<EpShared>,
    inner: Option<quinn_proto::Incoming>,
}

impl Incoming {
    /// The client's address.
    pub(crate) fn remote_address(&self) -> SocketAddr {
        self.inner.as_ref().map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), quinn_proto::Incoming::remote_address)
    }

    /// Starts the handshake with `server`'s settings (which may differ per client: the
    /// node picks loopback or network transport settings by address).
    ///
    /// # Errors
    /// If quinn-proto refuses the connection (the endpoint closing, a bad packet).
    pub(crate) fn accept_with(mut self, server: Arc<quinn_proto::ServerConfig>) -> Result<Connecting, ConnectionError> {
        let Some(incoming) = self.inner.take() else {
            return Err(ConnectionError::LocallyClosed);
        };
        let mut buf = Vec::new();
        let now = Instant::now();
        let conn = {
            let mut ep = self.ep.lock();
            if ep.closed.is_some() {
                let t = ep.proto.refuse(incoming, &mut buf);
                drop(ep);
                self.ep.respond(&t, &buf);
                return Err(ConnectionError::LocallyClosed);
            }
            match ep.proto.accept(incoming, now, &mut buf, Some(server)) {
                Ok((handle, proto)) => {
                    let conn = ConnShared::new(self.ep.clone(), handle, proto);
                    ep.insert(handle, &conn);
                    conn
                }
                Err(e) => {
                    drop(ep);
                    if let Some(t) = e.response {
                        self.ep.respond(&t, &buf);
                    }
                    return Err(e.cause);
                }
            }
        };
        conn.drive(now);
        Ok(Connecting::new(conn))
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Some(i) = self.inner.take() {
            let mut buf = Vec::new();
            let t = self.ep.lock().proto.refuse(i, &mut buf);
            self.ep.respond(&t, &buf);
        }
    }
}

/// The endpoint's driver: receives datagrams and hands them to their connections, fires
/// connections' timers, and resends what the socket refused. Ends once the endpoint is
/// closed and every connection has drained.
async fn drive(ep: Arc<EpShared>) {
    let mut recv_buf = vec![0u8; RECV_BATCH * RECV_SLOT];
    let mut metas = [quinn_udp::RecvMeta::default(); RECV_BATCH];
    let mut events: Vec<(Arc<ConnShared>, quinn_proto::ConnectionEvent)> = Vec::new();
    let mut touched: Vec<Arc<ConnShared>> = Vec::new();
    let mut due: Vec<(Arc<ConnShared>, Instant)> = Vec::new();
    let mut response = Vec::new();
    loop {
        let mut busy = false;
        for _ in 0..RECV_ROUNDS {
            let n = {
                let mut iovs: [IoSliceMut<'_>; RECV_BATCH] = {
                    let mut slots = recv_buf.chunks_mut(RECV_SLOT);
                    std::array::from_fn(|_| IoSliceMut::new(slots.next().unwrap_or_default()))
                };
                match ep.socket.try_io(Interest::READABLE, || ep.udp.recv((&ep.socket).into(), &mut iovs, &mut metas)) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                    // ICMP errors surface as ECONNRESET/ECONNREFUSED on some platforms;
                    // QUIC ignores them (they can be forged).
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused
                        ) =>
                    {
                        continue
                    }
                    // Anything else would come back on every try: say so and stop, as quinn's
                    // endpoint does, rather than spin on it.
                    Err(e) => {
                        tracing::error!(error = %e, "receiving on the client socket failed; the endpoint stops receiving");
                        return;
                    }
                }
            };
            if n == 0 {
                break;
            }
            let now = Instant::now();
            {
                let mut s = ep.lock();
                for (meta, slot) in metas.iter().zip(recv_buf.chunks(RECV_SLOT)).take(n) {
                    let len = meta.len.min(slot.len());
                    let mut data = BytesMut::from(&slot[..len]);
                    let stride = meta.stride.max(1);
                    while !data.is_empty() {
                        let datagram = data.split_to(stride.min(data.len()));
                        let ecn = meta.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8));
                        match s.proto.handle(now, meta.addr, meta.dst_ip, ecn, datagram, &mut response) {
                            Some(DatagramEvent::ConnectionEvent(h, event)) => {
                                if let Some(Some(c)) = s.conns.get(h.0) {
                                    events.push((c.clone(), event));
                                }
                            }
                            Some(DatagramEvent::NewConnection(incoming)) => {
                                if s.closed.is_some() || s.incoming.len() >= INCOMING_QUEUE {
                                    ep.stats.incoming_refused.fetch_add(1, Ordering::Relaxed);
                                    let t = s.proto.refuse(incoming, &mut response);
                                    ep.respond(&t, &response);
                                } else {
                                    s.incoming.push_back(incoming);
                                    ep.incoming_ready.notify_one();
                                }
                            }
                            Some(DatagramEvent::Response(t)) => ep.respond(&t, &response),
                            None => {}
                        }
                        response.clear();
                    }
                }
            }
            // Every datagram first, then one drive per connection: a burst for one
            // connection is acknowledged and answered once.
            for (c, event) in events.drain(..) {
                if c.handle_event(event) {
                    touched.push(c);
                }
            }
            touched.sort_unstable_by_key(|c| Arc::as_ptr(c) as usize);
            touched.dedup_by(|a, b| Arc::ptr_eq(a, b));
            for c in touched.drain(..) {
                c.drive(now);
            }
            busy = true;
        }
        let now = Instant::now();
        ep.lock().timers.pop_due(now, &mut due);
        for (c, at) in due.drain(..) {
            c.on_timer(at, now);
        }
        let blocked = std::mem::take(&mut ep.lock().blocked);
        for c in blocked {
            c.retry_blocked();
        }
        let (next, blocked, done) = {
            let s = ep.lock();
            ep.stats.connections.store(s.live as u64, Ordering::Relaxed);
            ep.stats.incoming_queued.store(s.incoming.len() as u64, Ordering::Relaxed);
            ep.stats.timer_entries.store(s.timers.len() as u64, Ordering::Relaxed);
            (s.timers.next(), !s.blocked.is_empty(), s.closed.is_some() && s.live == 0)
        };
        if done {
            return;
        }
        if busy {
            // Received up to the round limit or until the socket ran dry: let the tasks the
            // datagrams woke run before reading more.
            tokio::task::yield_now().await;
            continue;
        }
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = ep.socket.readable() => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "the client socket failed; the endpoint stops receiving");
                    return;
                }
            }
            () = sleep => {}
            () = ep.wake.notified() => {}
            _ = ep.socket.writable(), if blocked => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    /// An endpoint on 127.0.0.1 with the node's TLS and one bidirectional stream per
    /// connection, and a quinn client endpoint that trusts it.
    fn pair(idle: Duration) -> (Endpoint, Arc<quinn::ServerConfig>, quinn::Endpoint, SocketAddr) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let id = crate::transport::tls::Identity {
            chain: vec![made.cert.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::try_from(made.signing_key.serialize_der()).unwrap(),
            self_signed: None,
        };
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(VarInt::from_u32(1));
        transport.max_concurrent_uni_streams(VarInt::from_u32(0));
        transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(idle).unwrap()));
        let mut server = quinn::ServerConfig::with_crypto(crate::transport::tls::server_crypto(&id).unwrap());
        server.transport_config(Arc::new(transport));
        let server = Arc::new(server);
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let stats = Arc::new(EndpointStats::default());
        let ep = Endpoint::new(crate::transport::endpoint_config(), server.clone(), socket, stats).unwrap();
        let addr = ep.local_addr().unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(made.cert.der().clone()).unwrap();
        let mut tls = rustls::ClientConfig::builder_with_provider(crate::transport::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![fovea_core::frame::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        (ep, server, client, addr)
    }

    async fn accept(ep: &Endpoint, server: &Arc<quinn::ServerConfig>) -> Connection {
        let incoming = ep.accept().await.unwrap();
        incoming.accept_with(server.clone()).unwrap().await.unwrap()
    }

    #[tokio::test]
    async fn a_stream_echoes_both_ways_and_the_client_s_close_reaches_the_server() {
        let (ep, server, client, addr) = pair(Duration::from_secs(10));
        const SIZE: usize = 3 * 1024 * 1024;
        let dial = tokio::spawn(async move {
            let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            // Larger than the windows' first grant: flow control has to move both ways.
            let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
            let writer = async {
                send.write_all(&data).await.unwrap();
                send.finish().unwrap();
            };
            let mut back = vec![0u8; SIZE];
            let (_, read) = tokio::join!(writer, recv.read_exact(&mut back));
            read.unwrap();
            assert!(back == data, "the echo differs from what was sent");
            conn.close(VarInt::from_u32(42), b"bye");
            client
        });
        let conn = accept(&ep, &server).await;
        assert_eq!(conn.remote_address().ip(), std::net::Ipv4Addr::LOCALHOST);
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let mut got = 0usize;
        let mut bufs = vec![Bytes::new(); 8];
        while let Some(n) = recv.read_chunks(&mut bufs).await.unwrap() {
            got += bufs[..n].iter().map(Bytes::len).sum::<usize>();
            send.write_all_chunks(&mut bufs[..n]).await.unwrap();
            assert!(bufs[..n].iter().all(Bytes::is_empty), "written chunks are consumed");
        }
        assert_eq!(got, SIZE);
        let _client = dial.await.unwrap();
        match conn.accept_bi().await {
            Err(ConnectionError::ApplicationClosed(c)) => assert_eq!(c.error_code, VarInt::from_u32(42)),
            Err(other) => panic!("expected the client's close, got {other}"),
            Ok(_) => panic!("expected the client's close, got a stream"),
        }
    }

    #[tokio::test]
    async fn closing_the_endpoint_closes_its_connections_and_drains() {
        let (ep, server, client, addr) = pair(Duration::from_secs(10));
        let dial = tokio::spawn(async move {
            let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
            let reason = conn.closed().await;
            (reason, client)
        });
        let conn = accept(&ep, &server).await;
        assert_eq!(ep.connections(), 1);
        ep.close(VarInt::from_u32(7), b"going away");
        let (reason, _client) = dial.await.unwrap();
        match reason {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.error_code, VarInt::from_u32(7));
                assert_eq!(&c.reason[..], b"going away");
            }
            other => panic!("expected the endpoint's close, got {other}"),
        }
        assert!(matches!(conn.accept_bi().await, Err(ConnectionError::LocallyClosed)));
        tokio::time::timeout(Duration::from_secs(10), ep.wait_idle()).await.unwrap();
        assert_eq!(ep.connections(), 0);
        assert!(ep.accept().await.is_none());
    }

    #[tokio::test]
    async fn a_client_that_goes_silent_times_out_and_is_forgotten() {
        let (ep, server, client, addr) = pair(Duration::from_millis(300));
        // The client lives in a runtime of its own, dropped after its first write: its
        // tasks and socket vanish without a close, as a host that lost power would.
        let dial = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
                let (mut send, _recv) = conn.open_bi().await.unwrap();
                send.write_all(b"hi").await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::mem::forget((send, _recv, conn, client));
            });
        });
        let conn = accept(&ep, &server).await;
        let (_send, mut recv) = conn.accept_bi().await.unwrap();
        let mut bufs = vec![Bytes::new(); 4];
        assert_eq!(recv.read_chunks(&mut bufs).await.unwrap(), Some(1));
        assert_eq!(&bufs[0][..], b"hi");
        dial.join().unwrap();
        match recv.read_chunks(&mut bufs).await {
            Err(conn::ReadError::ConnectionLost(ConnectionError::TimedOut)) => {}
            other => panic!("expected the idle timeout, got {other:?}"),
        }
        drop((_send, recv, conn));
        tokio::time::timeout(Duration::from_secs(10), ep.wait_idle()).await.unwrap();
        assert_eq!(ep.connections(), 0);
    }

    #[tokio::test]
    async fn a_dropped_incoming_is_refused() {
        let (ep, _, client, addr) = pair(Duration::from_secs(10));
        let dial = tokio::spawn(async move { client.connect(addr, "localhost").unwrap().await.err() });
        drop(ep.accept().await.unwrap());
        let err = dial.await.unwrap();
        assert!(matches!(err, Some(quinn::ConnectionError::ConnectionClosed(_))), "{err:?}");
        assert_eq!(ep.connections(), 0);
    }

    #[test]
    fn the_timer_heap_keeps_one_entry_per_connection_when_it_compacts() {
        // Weak handles with nothing behind them stand for connections since dropped; the
        // heap must shed them and keep each live connection's earliest deadline.
        let now = Instant::now();
        let mut t = timers::Timers::default();
        for i in 0..3000u64 {
            t.push(now + Duration::from_millis(i), std::sync::Weak::new(), 1);
        }
        assert!(t.len() <= 4 + 1024, "stale entries are bounded: {}", t.len());
        let mut due = Vec::new();
        t.pop_due(now + Duration::from_secs(10), &mut due);
        assert!(due.is_empty(), "dropped connections fire nothing");
        assert_eq!(t.next(), None);
    }
}
