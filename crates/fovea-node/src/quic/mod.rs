//! The client endpoint's QUIC IO shell: sockets, timers and wake-ups around
//! quinn-proto's state machines, in place of the `quinn` crate's.
//!
//! # Why not `quinn` here
//! An idle client connection is what a node holds 100 000 of, and `quinn` gives each one
//! an unbounded event channel (one 32-slot block of 208-byte events: 6.7 KB, allocated
//! when the connection starts), a driver task with a timer of its own, and a send buffer
//! that keeps the capacity of the largest datagram it ever built (1.2–2.4 KB over a
//! network, 6.5 KB on loopback) — ~9 KB of a connection's ~32 KB, before quinn-proto's
//! own state (`BENCHMARKS.md`, "Idle connections against the 30 KB goal";
//! `../shared/research/quinn-conn-memory.md`). None of it can be configured away.
//!
//! Here a connection is quinn-proto's `Connection` behind a mutex and nothing else that
//! lives as long:
//! - **no channel**: the endpoint's driver hands a datagram to its connection directly,
//!   under the connection's lock, after releasing the endpoint's;
//! - **no task, no timer per connection**: one heap of deadlines in the endpoint, popped by
//!   its driver ([`timers`]);
//! - **no send buffer per connection**: whoever drives a connection (the driver, or the
//!   task that just wrote to a stream) builds its datagrams in that thread's buffer and
//!   sends them at once. A datagram the socket refuses (`WouldBlock`) is the only one kept,
//!   boxed, until the driver sees the socket writable again.
//!
//! That also takes a task hop off both directions of every message: a stream write sends
//! its packets from the writing task, and a datagram wakes the reading task straight from
//! the driver.
//!
//! The mesh keeps `quinn`: its links are few and long-lived, and they connect out, which
//! this shell does not do (it only accepts).
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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::BytesMut;
use quinn_proto::{ConnectionHandle, DatagramEvent, EcnCodepoint, VarInt};
use tokio::io::Interest;
use tokio::sync::Notify;

pub(crate) use conn::{Connecting, Connection, ConnectionError, RecvStream, SendStream};
use conn::ConnShared;

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

/// Counters of the endpoint's bounded behaviours, for the node's metrics.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// New connections refused because [`INCOMING_QUEUE`] was full.
    pub incoming_refused: AtomicU64,
    /// Datagrams the socket refused for a moment (its send buffer full); each waited for
    /// the socket, none was lost.
    pub send_blocked: AtomicU64,
}

/// A server endpoint: one UDP socket and the connections it accepted.
///
/// Cloning gives another handle to the same endpoint. When the last handle is dropped,
/// the endpoint closes as if [`Endpoint::close`] had been called with code 0.
pub struct Endpoint {
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
    handles: AtomicUsize,
    segments: usize,
    pub(crate) stats: EndpointStats,
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

impl EpShared {
    fn lock(&self) -> MutexGuard<'_, EpState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    pub fn new(
        config: quinn_proto::EndpointConfig,
        server: Arc<quinn_proto::ServerConfig>,
        socket: std::net::UdpSocket,
    ) -> std::io::Result<Endpoint> {
        let udp = quinn_udp::UdpSocketState::new((&socket).into())?;
        socket.set_nonblocking(true)?;
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        let proto = quinn_proto::Endpoint::new(Arc::new(config), Some(server), !udp.may_fragment(), None);
        let segments = udp.max_gso_segments().clamp(1, MAX_SEGMENTS);
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
            handles: AtomicUsize::new(1),
            segments,
            stats: EndpointStats::default(),
        });
        tokio::spawn(drive(shared.clone()));
        Ok(Endpoint { shared })
    }

    /// The address the socket is bound to.
    ///
    /// # Errors
    /// As `getsockname`.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.socket.local_addr()
    }

    /// The next new connection, `None` once the endpoint is closed.
    ///
    /// # Cancel safety
    /// Cancel safe: a connection is taken from the queue only when returned.
    pub async fn accept(&self) -> Option<Incoming> {
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

    /// Closes every connection with `code` and `reason`, refuses new ones and ends
    /// [`accept`](Self::accept). Connections drain (QUIC's closing period) before the
    /// driver stops.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        close(&self.shared, code, reason);
    }

    /// Waits until every connection has drained.
    pub async fn wait_idle(&self) {
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

    /// Counters of the endpoint's limits.
    pub fn stats(&self) -> &EndpointStats {
        &self.shared.stats
    }

    /// Connections the endpoint holds (handshaking, open or draining).
    pub fn connections(&self) -> usize {
        self.shared.lock().live
    }
}

impl Clone for Endpoint {
    fn clone(&self) -> Endpoint {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        Endpoint { shared: self.shared.clone() }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            close(&self.shared, VarInt::from_u32(0), b"");
        }
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
pub struct Incoming {
    ep: Arc<EpShared>,
    inner: Option<quinn_proto::Incoming>,
}

impl Incoming {
    /// The client's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.as_ref().map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), quinn_proto::Incoming::remote_address)
    }

    /// Starts the handshake with `server`'s settings (which may differ per client: the
    /// node picks loopback or network transport settings by address).
    ///
    /// # Errors
    /// If quinn-proto refuses the connection (the endpoint closing, a bad packet).
    pub fn accept_with(mut self, server: Arc<quinn_proto::ServerConfig>) -> Result<Connecting, ConnectionError> {
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
                    let slot = handle.0;
                    if ep.conns.len() <= slot {
                        ep.conns.resize(slot + 1, None);
                    }
                    ep.conns[slot] = Some(conn.clone());
                    ep.live += 1;
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
                match ep.socket.try_io(Interest::READABLE, || ep.udp.recv((&ep.socket).into(), &mut iovs, &mut metas))
                {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                    // ICMP errors surface as ECONNRESET/ECONNREFUSED on some platforms;
                    // QUIC ignores them (they can be forged).
                    Err(_) => continue,
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
            let mut touched: Vec<Arc<ConnShared>> = Vec::new();
            for (c, event) in events.drain(..) {
                if c.handle_event(event) {
                    touched.push(c);
                }
            }
            for c in touched {
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
