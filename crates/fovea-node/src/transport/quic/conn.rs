//! One connection: quinn-proto's state machine behind a mutex, driven by whoever touched
//! it last (the endpoint's driver for datagrams and timers, an application task for its
//! reads and writes), and the application's handles to it.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use quinn_proto::{ConnectionHandle, Dir, StreamEvent, StreamId, VarInt};

use super::EpShared;

pub(crate) use quinn_proto::ConnectionError;

/// Rounds of "handle what is due, then look again" one drive makes at most: a timer
/// handled at `now` is not due again at `now`, so two suffice; the bound only guards
/// against a state machine that keeps asking.
const DRIVE_ROUNDS: usize = 16;

thread_local! {
    /// Where this thread builds the datagrams of the connection it drives: one buffer per
    /// thread instead of one per connection (up to ten datagrams: 65 KB on loopback).
    static SEND_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub(crate) struct ConnShared {
    ep: Arc<EpShared>,
    state: Mutex<ConnState>,
    /// Live `Connection`, `Connecting` and stream handles; at zero the connection closes.
    handles: AtomicUsize,
}

struct ConnState {
    proto: quinn_proto::Connection,
    handle: ConnectionHandle,
    /// Why the connection ended, once it has (for the application: reads and writes fail
    /// with it).
    error: Option<ConnectionError>,
    connected: bool,
    /// Drained: quinn-proto is done with it and the endpoint has forgotten it.
    drained: bool,
    /// The earliest deadline this connection has in the endpoint's timer heap.
    queued: Option<Instant>,
    /// A datagram the socket refused, waiting for it to be writable. While it waits,
    /// nothing else is sent (the socket is full anyway).
    blocked: Option<Box<Blocked>>,
    /// Waiting tasks. One each: the node has one task that accepts (or opens) the
    /// connection's stream, one that reads it and one that writes it.
    on_connected: Option<Waker>,
    on_stream: Option<Waker>,
    on_read: Option<Waker>,
    on_write: Option<Waker>,
}

struct Blocked {
    transmit: quinn_proto::Transmit,
    data: Vec<u8>,
}

/// Wakers taken under the lock, woken after it is released.
#[derive(Default)]
pub(super) struct Wakes([Option<Waker>; 4]);

impl Wakes {
    fn add(&mut self, w: Option<Waker>) {
        if let Some(w) = w {
            if let Some(slot) = self.0.iter_mut().find(|s| s.is_none()) {
                *slot = Some(w);
            } else {
                w.wake();
            }
        }
    }

    fn wake(self) {
        for w in self.0.into_iter().flatten() {
            w.wake();
        }
    }
}

impl ConnShared {
    pub(super) fn new(ep: Arc<EpShared>, handle: ConnectionHandle, proto: quinn_proto::Connection) -> Arc<ConnShared> {
        Arc::new(ConnShared {
            ep,
            state: Mutex::new(ConnState {
                proto,
                handle,
                error: None,
                connected: false,
                drained: false,
                queued: None,
                blocked: None,
                on_connected: None,
                on_stream: None,
                on_read: None,
                on_write: None,
            }),
            handles: AtomicUsize::new(0),
        })
    }

    /// Drives the connection: sends what it has to send, hands its events to the endpoint
    /// and to waiting tasks, handles due timers and queues the next one.
    pub(super) fn drive(self: &Arc<Self>, now: Instant) {
        let mut s = self.lock();
        let wakes = self.drive_locked(&mut s, now);
        drop(s);
        wakes.wake();
    }

    fn lock(&self) -> MutexGuard<'_, ConnState> {
        crate::sync::lock(&self.state)
    }

    /// Hands a datagram to the state machine; `false` if the connection is gone.
    pub(super) fn handle_event(&self, event: quinn_proto::ConnectionEvent) -> bool {
        let mut s = self.lock();
        if s.drained {
            return false;
        }
        s.proto.handle_event(event);
        true
    }

    /// Its deadline `at` came (the heap entry's time, to tell it from a later one).
    pub(super) fn on_timer(self: &Arc<Self>, at: Instant, now: Instant) {
        let mut s = self.lock();
        if s.queued == Some(at) {
            s.queued = None;
        }
        let wakes = self.drive_locked(&mut s, now);
        drop(s);
        wakes.wake();
    }

    /// The socket may take the datagram it refused. Called by the endpoint's driver only:
    /// refused again, the connection goes back on its list, and the driver waits for the
    /// socket to be writable (waking it here would make it retry at once, and spin).
    pub(super) fn retry_blocked(self: &Arc<Self>) {
        let mut s = self.lock();
        if let Some(b) = s.blocked.take() {
            if self.ep.send(&b.transmit, &b.data).is_err() {
                s.blocked = Some(b);
                drop(s);
                self.ep.lock().blocked.push(self.clone());
                return;
            }
        }
        let wakes = self.drive_locked(&mut s, Instant::now());
        drop(s);
        wakes.wake();
    }

    pub(super) fn close(self: &Arc<Self>, code: VarInt, reason: Bytes) {
        let now = Instant::now();
        let mut s = self.lock();
        let mut wakes = Wakes::default();
        if s.error.is_none() {
            s.proto.close(now, code, reason);
            s.error = Some(ConnectionError::LocallyClosed);
            s.wake_all(&mut wakes);
        }
        let more = self.drive_locked(&mut s, now);
        drop(s);
        wakes.wake();
        more.wake();
    }

    fn drive_locked(self: &Arc<Self>, s: &mut ConnState, now: Instant) -> Wakes {
        let mut wakes = Wakes::default();
        for _ in 0..DRIVE_ROUNDS {
            self.transmit(s, now);
            let mut again = false;
            while let Some(event) = s.proto.poll_endpoint_events() {
                let drained = event.is_drained();
                let back = {
                    let mut ep = self.ep.lock();
                    let back = ep.proto.handle_event(s.handle, event);
                    if drained {
                        let slot = s.handle.0;
                        if matches!(ep.conns.get(slot), Some(Some(c)) if std::ptr::eq(&**c, &**self)) {
                            ep.conns[slot] = None;
                            ep.live -= 1;
                            if ep.live == 0 {
                                self.ep.idle.notify_waiters();
                                self.ep.wake.notify_one();
                            }
                        }
                    }
                    back
                };
                if drained {
                    s.drained = true;
                }
                if let Some(back) = back {
                    s.proto.handle_event(back);
                    again = true;
                }
            }
            while let Some(event) = s.proto.poll() {
                s.on_event(event, &mut wakes);
            }
            if s.drained {
                break;
            }
            match s.proto.poll_timeout() {
                Some(t) if t <= now => {
                    s.proto.handle_timeout(now);
                    again = true;
                }
                Some(t) if s.queued.is_none_or(|q| t < q) => {
                    s.queued = Some(t);
                    let first = {
                        let mut ep = self.ep.lock();
                        let live = ep.live;
                        ep.timers.push(t, Arc::downgrade(self), live)
                    };
                    if first {
                        self.ep.wake.notify_one();
                    }
                }
                _ => {}
            }
            if !again {
                break;
            }
        }
        wakes
    }

    /// Sends everything the state machine has ready, from this thread's buffer.
    fn transmit(self: &Arc<Self>, s: &mut ConnState, now: Instant) {
        if s.blocked.is_some() {
            return;
        }
        SEND_BUF.with(|buf| {
            let Ok(mut buf) = buf.try_borrow_mut() else { return };
            loop {
                buf.clear();
                let Some(t) = s.proto.poll_transmit(now, self.ep.segments(), &mut buf) else { break };
                if self.ep.send(&t, &buf).is_err() {
                    self.ep.stats.send_blocked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let data = buf[..t.size.min(buf.len())].to_vec();
                    s.blocked = Some(Box::new(Blocked { transmit: t, data }));
                    self.ep.lock().blocked.push(self.clone());
                    self.ep.wake.notify_one();
                    break;
                }
            }
            // A burst on a large path may have grown it to ten datagrams; keep this thread's
            // buffer at that, not more.
            if buf.capacity() > 128 * 1024 {
                *buf = Vec::new();
            }
        });
    }
}

impl ConnState {
    fn on_event(&mut self, event: quinn_proto::Event, wakes: &mut Wakes) {
        use quinn_proto::Event;
        match event {
            Event::Connected => {
                self.connected = true;
                wakes.add(self.on_connected.take());
            }
            Event::ConnectionLost { reason } => {
                if self.error.is_none() {
                    self.error = Some(reason);
                }
                self.wake_all(wakes);
            }
            // A stream the peer opened, or room to open one (`open_bi`).
            Event::Stream(StreamEvent::Opened { .. } | StreamEvent::Available { .. }) => {
                wakes.add(self.on_stream.take());
            }
            Event::Stream(StreamEvent::Readable { .. }) => wakes.add(self.on_read.take()),
            Event::Stream(StreamEvent::Writable { .. } | StreamEvent::Stopped { .. }) => {
                wakes.add(self.on_write.take());
            }
            // Nothing waits for these: the node sends no datagrams and does not wait for
            // its stream's end to be acknowledged.
            Event::Stream(StreamEvent::Finished { .. })
            | Event::HandshakeDataReady
            | Event::DatagramReceived
            | Event::DatagramsUnblocked => {}
        }
    }

    fn wake_all(&mut self, wakes: &mut Wakes) {
        wakes.add(self.on_connected.take());
        wakes.add(self.on_stream.take());
        wakes.add(self.on_read.take());
        wakes.add(self.on_write.take());
    }
}

/// Stores `cx`'s waker in `slot`, waking the one it replaces if it belongs to another task
/// (so that no wake-up is lost; see [`ConnState`] on why there is one of each).
fn park(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => {
            if let Some(old) = slot.replace(cx.waker().clone()) {
                old.wake();
            }
        }
    }
}

/// A counted handle: the connection closes (code 0) when the last one is dropped.
struct ConnRef(Arc<ConnShared>);

impl ConnRef {
    fn new(conn: Arc<ConnShared>) -> ConnRef {
        conn.handles.fetch_add(1, Ordering::Relaxed);
        ConnRef(conn)
    }

    /// Runs `f` on the state, then drives the connection if `f` says that what it did has
    /// something to send (stream data, flow-control credit, a new stream limit) — as quinn
    /// wakes its driver only then. A read or write that found nothing to do (and parked)
    /// leaves the connection as it was.
    fn with<T>(&self, f: impl FnOnce(&mut ConnState) -> (T, bool)) -> T {
        let mut s = self.0.lock();
        let (out, changed) = f(&mut s);
        if changed {
            let wakes = self.0.drive_locked(&mut s, Instant::now());
            drop(s);
            wakes.wake();
        }
        out
    }
}

impl Clone for ConnRef {
    fn clone(&self) -> ConnRef {
        ConnRef::new(self.0.clone())
    }
}

impl Drop for ConnRef {
    fn drop(&mut self) {
        if self.0.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.close(VarInt::from_u32(0), Bytes::new());
        }
    }
}

/// A connection whose handshake is under way; resolves once it completes.
pub(crate) struct Connecting(Option<ConnRef>);

impl Connecting {
    pub(super) fn new(conn: Arc<ConnShared>) -> Connecting {
        Connecting(Some(ConnRef::new(conn)))
    }
}

impl Future for Connecting {
    type Output = Result<Connection, ConnectionError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(conn) = self.0.as_ref() else { return Poll::Ready(Err(ConnectionError::LocallyClosed)) };
        let mut s = conn.0.lock();
        if let Some(e) = &s.error {
            return Poll::Ready(Err(e.clone()));
        }
        if !s.connected {
            park(&mut s.on_connected, cx);
            return Poll::Pending;
        }
        drop(s);
        Poll::Ready(self.0.take().map(Connection).ok_or(ConnectionError::LocallyClosed))
    }
}

/// An established connection. Cloning gives another handle; the connection closes with
/// code 0 when the last handle (streams included) is dropped, if not closed before.
#[derive(Clone)]
pub(crate) struct Connection(ConnRef);

impl Connection {
    /// The peer's address.
    pub(crate) fn remote_address(&self) -> std::net::SocketAddr {
        self.0 .0.lock().proto.remote_address()
    }

    /// Why the connection ended, once it has ([`ConnectionError::LocallyClosed`] when this
    /// side closed it first).
    pub(crate) fn close_reason(&self) -> Option<ConnectionError> {
        self.0 .0.lock().error.clone()
    }

    /// Tells this connection from any other alive at the same time (not across time: an
    /// id may be reused once its connection is gone).
    pub(crate) fn stable_id(&self) -> usize {
        Arc::as_ptr(&self.0 .0) as usize
    }

    /// Keying material exported from the TLS session (RFC 5705 as TLS 1.3 defines it),
    /// the same on both ends of this connection only.
    ///
    /// # Errors
    /// If the session cannot export (its handshake not complete, `output` too long).
    pub(crate) fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), quinn_proto::crypto::ExportKeyingMaterialError> {
        self.0 .0.lock().proto.crypto_session().export_keying_material(output, label, context)
    }

    /// The peer's certificate chain, if it presented one (as
    /// `Vec<rustls::pki_types::CertificateDer>` inside the box).
    pub(crate) fn peer_identity(&self) -> Option<Box<dyn std::any::Any>> {
        self.0 .0.lock().proto.crypto_session().peer_identity()
    }

    /// Path and packet counters.
    pub(crate) fn stats(&self) -> quinn_proto::ConnectionStats {
        self.0 .0.lock().proto.stats()
    }

    /// Closes the connection now with `code` and `reason`; data not yet delivered is
    /// abandoned (the node closes after its last frame only when that does not matter).
    pub(crate) fn close(&self, code: VarInt, reason: &[u8]) {
        self.0 .0.close(code, Bytes::copy_from_slice(reason));
    }

    /// Opens a bidirectional stream, waiting for the peer to allow one more. The peer
    /// learns of it with the stream's first bytes.
    pub(crate) async fn open_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        self.bi_stream(true).await
    }

    /// The next bidirectional stream the peer opens.
    pub(crate) async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        self.bi_stream(false).await
    }

    /// A stream this side opens (`open`) or the peer opened, once there is one.
    async fn bi_stream(&self, open: bool) -> Result<(SendStream, RecvStream), ConnectionError> {
        let id = poll_fn(|cx| {
            self.0.with(|s| {
                if let Some(e) = &s.error {
                    return (Poll::Ready(Err(e.clone())), false);
                }
                let mut streams = s.proto.streams();
                match if open { streams.open(Dir::Bi) } else { streams.accept(Dir::Bi) } {
                    // Accepting may raise the peer's stream limit (MAX_STREAMS): a drive
                    // sends it. Opening sends nothing until the stream is written.
                    Some(id) => (Poll::Ready(Ok(id)), !open),
                    None => {
                        park(&mut s.on_stream, cx);
                        (Poll::Pending, false)
                    }
                }
            })
        })
        .await?;
        Ok((SendStream { conn: self.0.clone(), id }, RecvStream::new(self.0.clone(), id)))
    }
}

/// Why a read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("reset by peer: code {0}")]
    Reset(VarInt),
    #[error("connection lost: {0}")]
    ConnectionLost(ConnectionError),
    #[error("closed stream")]
    ClosedStream,
    #[error("ordered read after unordered read")]
    IllegalOrderedRead,
}

/// Why a write failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum WriteError {
    #[error("stopped by peer: code {0}")]
    Stopped(VarInt),
    #[error("connection lost: {0}")]
    ConnectionLost(ConnectionError),
    #[error("closed stream")]
    ClosedStream,
}

/// The receiving half of a stream.
pub(crate) struct RecvStream {
    conn: ConnRef,
    id: StreamId,
    /// How the stream ended, once a read saw it: quinn-proto forgets a stream whose end
    /// has been read, so later reads are answered from here.
    end: Option<End>,
}

#[derive(Clone, Copy)]
enum End {
    Finished,
    Reset(VarInt),
}

impl RecvStream {
    fn new(conn: ConnRef, id: StreamId) -> RecvStream {
        RecvStream { conn, id, end: None }
    }

    /// Fills `bufs` with the chunks that have arrived, in order: `Some(n)` for `n` of them
    /// (waits until at least one), `None` once the stream is finished.
    pub(crate) async fn read_chunks(&mut self, bufs: &mut [Bytes]) -> Result<Option<usize>, ReadError> {
        if bufs.is_empty() {
            return Ok(Some(0));
        }
        let n = poll_fn(|cx| {
            self.read(cx, true, |chunks| {
                let mut n = 0;
                while n < bufs.len() {
                    match chunks.next(usize::MAX) {
                        Ok(Some(c)) => {
                            bufs[n] = c.bytes;
                            n += 1;
                        }
                        Ok(None) => return Step::ReadThenEnd(n, End::Finished),
                        Err(quinn_proto::ReadError::Reset(code)) => return Step::ReadThenEnd(n, End::Reset(code)),
                        Err(quinn_proto::ReadError::Blocked) => break,
                    }
                }
                if n > 0 {
                    Step::Read(n)
                } else {
                    Step::Wait
                }
            })
        })
        .await?;
        Ok((n > 0).then_some(n))
    }

    /// One read attempt: `f` takes what it wants from the stream's chunks. Resolves to the
    /// number of chunks read, 0 once the stream has finished.
    fn read(
        &mut self,
        cx: &Context<'_>,
        ordered: bool,
        f: impl FnOnce(&mut quinn_proto::Chunks<'_>) -> Step,
    ) -> Poll<Result<usize, ReadError>> {
        if let Some(end) = self.end {
            return Poll::Ready(end.result());
        }
        let id = self.id;
        let step = self.conn.with(|s| {
            if let Some(e) = &s.error {
                return (Err(ReadError::ConnectionLost(e.clone())), false);
            }
            let mut stream = s.proto.recv_stream(id);
            let mut chunks = match stream.read(ordered) {
                Ok(c) => c,
                Err(quinn_proto::ReadableError::ClosedStream) => return (Err(ReadError::ClosedStream), false),
                Err(quinn_proto::ReadableError::IllegalOrderedRead) => {
                    return (Err(ReadError::IllegalOrderedRead), false)
                }
            };
            let step = f(&mut chunks);
            // Flow-control credit, if the read freed enough of the window, goes out with
            // the drive `with` runs when this says so.
            let credit = chunks.finalize().should_transmit();
            if matches!(step, Step::Wait) {
                park(&mut s.on_read, cx);
            }
            (Ok(step), credit)
        });
        match step {
            Err(e) => Poll::Ready(Err(e)),
            Ok(Step::Wait) => Poll::Pending,
            Ok(Step::Read(n)) => Poll::Ready(Ok(n)),
            Ok(Step::ReadThenEnd(n, end)) => {
                self.end = Some(end);
                if n > 0 {
                    Poll::Ready(Ok(n))
                } else {
                    Poll::Ready(end.result())
                }
            }
        }
    }
}

/// What one read attempt found.
enum Step {
    /// Nothing yet.
    Wait,
    /// This many chunks.
    Read(usize),
    /// This many chunks, then the end (reported by the next read).
    ReadThenEnd(usize, End),
}

impl End {
    fn result(self) -> Result<usize, ReadError> {
        match self {
            End::Finished => Ok(0),
            End::Reset(code) => Err(ReadError::Reset(code)),
        }
    }
}

/// The sending half of a stream.
pub(crate) struct SendStream {
    conn: ConnRef,
    id: StreamId,
}

impl SendStream {
    /// Writes `data` (see [`SendStream::write_all_chunks`]).
    pub(crate) async fn write_all(&mut self, data: Bytes) -> Result<(), WriteError> {
        self.write_all_chunks(&mut [data]).await
    }

    /// Writes every chunk (the slice's `Bytes` are consumed: empty once written), sending
    /// packets from this task as flow and congestion control allow.
    pub(crate) async fn write_all_chunks(&mut self, bufs: &mut [Bytes]) -> Result<(), WriteError> {
        let mut done = 0;
        poll_fn(|cx| {
            let id = self.id;
            self.conn.with(|s| {
                // Whether this poll handed the stream anything: then there is data to send.
                let mut wrote = false;
                loop {
                    while done < bufs.len() && bufs[done].is_empty() {
                        done += 1;
                    }
                    if done == bufs.len() {
                        return (Poll::Ready(Ok(())), wrote);
                    }
                    if let Some(e) = &s.error {
                        return (Poll::Ready(Err(WriteError::ConnectionLost(e.clone()))), wrote);
                    }
                    match s.proto.send_stream(id).write_chunks(&mut bufs[done..]) {
                        Ok(w) => {
                            done += w.chunks;
                            wrote |= w.bytes > 0;
                        }
                        Err(quinn_proto::WriteError::Blocked) => {
                            park(&mut s.on_write, cx);
                            return (Poll::Pending, wrote);
                        }
                        Err(quinn_proto::WriteError::Stopped(code)) => {
                            return (Poll::Ready(Err(WriteError::Stopped(code))), wrote)
                        }
                        Err(quinn_proto::WriteError::ClosedStream) => {
                            return (Poll::Ready(Err(WriteError::ClosedStream)), wrote)
                        }
                    }
                }
            })
        })
        .await
    }
}
