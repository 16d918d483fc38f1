//! One client connection: handshake, then a reader and a writer in the connection's own
//! task. The reader decodes frames and routes each publish itself; the writer drains the
//! connection's [`Outbound`] queue into its stream, many frames per write.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use fovea_core::frame::{ErrorFrame, GoAway, Publish, Subscribe, Welcome, VERSION};
use fovea_core::{Deframer, ErrorCode, Frame, Pattern};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio_util::sync::CancellationToken;

use crate::outbound::{Delivered, Outbound};
use crate::router::{MatchCache, Realm, SubRef};
use crate::Shared;

/// Why a connection ends, sent as its QUIC close code and reason.
#[derive(Debug)]
pub(crate) struct Close {
    pub code: ErrorCode,
    pub reason: String,
}

impl Close {
    fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        Close { code, reason: reason.into() }
    }
}

/// Largest chunk read from the stream at once.
const READ_CHUNK: usize = 256 * 1024;

/// Serves one accepted QUIC connection until it ends.
pub(crate) async fn serve(conn: Connection, shared: Arc<Shared>, shutdown: CancellationToken) {
    let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let remote = conn.remote_address();
    tracing::debug!(conn = id, %remote, "connection accepted");
    let limits = &shared.config.limits;
    let handshake = tokio::time::timeout(limits.handshake_timeout, handshake(&conn, &shared, id));
    let result = match handshake.await {
        Err(_) => Err(Close::new(ErrorCode::HandshakeTimeout, "no HELLO in time")),
        Ok(Err(close)) => Err(close),
        Ok(Ok((session, send))) => session.run(send, &shutdown).await,
    };
    let close = result.err().unwrap_or(Close { code: ErrorCode::NoError, reason: String::new() });
    if close.code != ErrorCode::NoError {
        shared.stats.count_close(close.code);
        tracing::debug!(conn = id, %remote, code = %close.code, reason = %close.reason, "connection closed by node");
    } else {
        tracing::debug!(conn = id, %remote, "connection closed");
    }
    conn.close(VarInt::from_u64(close.code.to_u64()).unwrap_or(VarInt::from_u32(0)), close.reason.as_bytes());
}

/// Accepts the control stream, reads `HELLO` and answers `WELCOME`.
async fn handshake(conn: &Connection, shared: &Arc<Shared>, id: u64) -> Result<(Session, SendStream), Close> {
    let (send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| Close::new(ErrorCode::NoError, format!("closed before the control stream opened: {e}")))?;
    let mut deframer = Deframer::new(fovea_core::limits::MAX_FRAME);
    let hello = loop {
        if let Some(frame) = deframer.next_frame().map_err(|e| Close::new(e.code(), e.to_string()))? {
            break frame;
        }
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => deframer.push(chunk.bytes),
            Ok(None) => return Err(Close::new(ErrorCode::ProtocolError, "stream finished before HELLO")),
            Err(e) => return Err(Close::new(ErrorCode::NoError, format!("read failed before HELLO: {e}"))),
        }
    };
    let Frame::Hello(hello) = hello else {
        return Err(Close::new(ErrorCode::ProtocolError, "the first frame must be HELLO"));
    };
    if hello.version == 0 {
        return Err(Close::new(ErrorCode::UnsupportedVersion, format!("this node speaks version {VERSION}")));
    }
    let Some(realm) = shared.realms.get(&hello.realm).cloned() else {
        shared.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        return Err(Close::new(ErrorCode::AuthFailed, "authentication failed"));
    };
    let limits = &shared.config.limits;
    let out = Arc::new(Outbound::new(limits.max_pending_bytes));
    out.send(&Frame::Welcome(Welcome {
        version: hello.version.min(VERSION),
        node: shared.config.name.clone(),
        connection_id: id,
        max_payload: limits.max_payload as u64,
    }));
    tracing::debug!(conn = id, realm = %realm.name, client = %hello.name, "session open");
    let session = Session {
        shared: shared.clone(),
        realm,
        out,
        recv,
        deframer,
        subs: HashMap::new(),
        cache: MatchCache::new(limits.match_cache_entries),
    };
    Ok((session, send))
}

/// An open session: the connection's state after a successful handshake.
struct Session {
    shared: Arc<Shared>,
    realm: Arc<Realm>,
    out: Arc<Outbound>,
    recv: RecvStream,
    deframer: Deframer,
    /// This connection's subscriptions by sid.
    subs: HashMap<u64, Pattern>,
    cache: MatchCache,
}

impl Session {
    async fn run(mut self, mut send: SendStream, shutdown: &CancellationToken) -> Result<(), Close> {
        self.shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        let out = self.out.clone();
        let writer = write_loop(&mut send, &out);
        tokio::pin!(writer);
        let mut going_away = false;
        let result = loop {
            tokio::select! {
                r = self.read_some() => match r {
                    Ok(true) => {}
                    Ok(false) => break Ok(()),
                    Err(close) => break Err(close),
                },
                r = &mut writer => break r,
                _ = shutdown.cancelled(), if !going_away => {
                    going_away = true;
                    self.out.send(&Frame::GoAway(GoAway { code: ErrorCode::GoingAway, message: "node shutting down".into() }));
                }
            }
        };
        self.out.close();
        let subs: Vec<(Pattern, u64)> = self.subs.drain().map(|(sid, p)| (p, sid)).collect();
        if !subs.is_empty() {
            self.realm.unsubscribe(subs.iter().map(|(p, sid)| (p, SubRef { out: out.clone(), sid: *sid })));
        }
        self.shared.stats.connections.fetch_sub(1, Ordering::Relaxed);
        result
    }

    /// Reads one chunk and handles every frame it completes. `Ok(false)`: the client
    /// finished its stream.
    ///
    /// # Cancel safety
    /// Cancel safe: the only await is the read, and a chunk is handled completely once read.
    async fn read_some(&mut self) -> Result<bool, Close> {
        let chunk = match self.recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => return Ok(false),
            Err(e) => return Err(Close::new(ErrorCode::NoError, format!("read: {e}"))),
        };
        let shared = self.shared.clone();
        let stats = &shared.stats;
        stats.bytes_in.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        self.deframer.push(chunk);
        let (mut msgs, mut deliveries) = (0u64, 0u64);
        let result = loop {
            match self.deframer.next_frame() {
                Ok(Some(Frame::Pub(p))) => {
                    msgs += 1;
                    deliveries += self.publish(p);
                }
                Ok(Some(frame)) => {
                    if let Err(close) = self.control(frame) {
                        break Err(close);
                    }
                }
                Ok(None) => break Ok(true),
                Err(e) => {
                    stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    break Err(Close::new(e.code(), e.to_string()));
                }
            }
        };
        // Counters are added once per chunk, not per message: shared cache lines are the
        // one cost a per-connection design must still avoid.
        stats.msgs_in.fetch_add(msgs, Ordering::Relaxed);
        stats.deliveries.fetch_add(deliveries, Ordering::Relaxed);
        result
    }

    /// Routes one publish; returns the number of subscriptions it was queued for.
    fn publish(&mut self, p: Publish) -> u64 {
        if p.payload.len() > self.shared.config.limits.max_payload {
            self.reject(
                ErrorCode::PayloadTooLarge,
                0,
                format!(
                    "payload of {} bytes exceeds this node's max_payload of {}",
                    p.payload.len(),
                    self.shared.config.limits.max_payload
                ),
            );
            return 0;
        }
        let subs = match self.cache.lookup(&self.realm, &p.topic) {
            Ok(subs) => subs,
            Err(e) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                self.reject(ErrorCode::InvalidTopic, 0, format!("topic {topic:?} {e}"));
                return 0;
            }
        };
        let mut n = 0;
        for s in subs.iter() {
            match s.out.deliver(s.sid, &p.topic, &p.headers, &p.payload) {
                Delivered::Queued => n += 1,
                Delivered::Dropped => {
                    self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Delivered::Closed => {}
            }
        }
        n
    }

    fn control(&mut self, frame: Frame) -> Result<(), Close> {
        match frame {
            Frame::Sub(s) => self.subscribe(s),
            Frame::Unsub(sid) => {
                if let Some(p) = self.subs.remove(&sid) {
                    self.realm.unsubscribe([(&p, SubRef { out: self.out.clone(), sid })]);
                }
            }
            Frame::Ping(token) => self.out.send(&Frame::Pong(token)),
            Frame::Pong(_) => {}
            other => {
                self.shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                return Err(Close::new(
                    ErrorCode::ProtocolError,
                    format!("frame type 0x{:x} is not allowed from a client here", other.kind()),
                ));
            }
        }
        Ok(())
    }

    fn subscribe(&mut self, s: Subscribe) {
        let limits = &self.shared.config.limits;
        if s.sid == 0 {
            return self.reject(ErrorCode::InvalidPattern, 0, "subscription id 0 is reserved; use ids from 1");
        }
        if self.subs.contains_key(&s.sid) {
            return self.reject(ErrorCode::DuplicateId, s.sid, format!("subscription id {} is already active", s.sid));
        }
        if self.subs.len() >= limits.max_subscriptions {
            let msg = format!("this connection already has {} subscriptions, the node's limit", self.subs.len());
            return self.reject(ErrorCode::TooManySubscriptions, s.sid, msg);
        }
        let pattern = match Pattern::from_bytes(Bytes::copy_from_slice(&s.pattern)) {
            Ok(p) => p,
            Err(e) => {
                let text = String::from_utf8_lossy(&s.pattern).into_owned();
                return self.reject(ErrorCode::InvalidPattern, s.sid, format!("pattern {text:?} {e}"));
            }
        };
        self.realm.subscribe(&pattern, SubRef { out: self.out.clone(), sid: s.sid });
        self.subs.insert(s.sid, pattern);
        self.out.send(&Frame::SubAck(s.sid));
    }

    fn reject(&self, code: ErrorCode, reference: u64, message: impl Into<String>) {
        self.shared.stats.count_rejection(code);
        self.out.send(&Frame::Error(ErrorFrame { code, reference, message: message.into() }));
    }
}

/// The writer: waits for queued frames and writes them all in one call.
///
/// # Cancel safety
/// Not cancel safe: frames taken from the queue and not yet written are lost if the
/// future is dropped; it is only dropped when the connection ends.
async fn write_loop(send: &mut SendStream, out: &Outbound) -> Result<(), Close> {
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        out.take_into(&mut chunks);
        if chunks.is_empty() {
            out.wait().await;
            continue;
        }
        if let Err(e) = send.write_all_chunks(&mut chunks).await {
            return Err(Close::new(ErrorCode::NoError, format!("write: {e}")));
        }
        chunks.clear();
    }
}
