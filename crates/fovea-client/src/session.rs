//! The connection driver: opens sessions, restores subscriptions, moves frames both ways,
//! and reconnects with backoff when a session ends.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fovea_core::frame::{Hello, Register, Subscribe, ToolsQuery, VERSION};
use fovea_core::{Deframer, ErrorCode, Frame, Topic};
use quinn::{ConnectionError, VarInt};

use fovea_core::frame::ErrorFrame;
use fovea_core::path::{ByPath, LOOPBACK_UDP_PAYLOAD};

use crate::queue::Pending;
use crate::transport::{self, Reader, Writer};
use crate::{lock, AckSender, ClientError, ConnectionState, Event, Inner, Message, NodeUrl, ServerInfo};

/// Most chunks taken from the stream per read. A chunk is what one QUIC packet carried
/// (~1.4 KB on a network path, up to ~6.4 KB on loopback), so a read hands on at most
/// ~45 KB (~200 KB) of frames.
const READ_BATCH: usize = 32;
/// First wait before reconnecting; doubles up to `max_reconnect_delay`.
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(50);

/// The client's QUIC settings, by path: a node on loopback gets datagrams of up to
/// [`LOOPBACK_UDP_PAYLOAD`] bytes (see `fovea_core::path`), any other node quinn's defaults.
pub(crate) fn quic_config(crypto: rustls::ClientConfig) -> Result<ByPath<quinn::ClientConfig>, ClientError> {
    let crypto: Arc<quinn::crypto::rustls::QuicClientConfig> = Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| ClientError::Tls(e.to_string()))?,
    );
    let config = |loopback: bool| {
        let mut t = quinn::TransportConfig::default();
        // The node never opens streams towards a client.
        t.max_concurrent_bidi_streams(VarInt::from_u32(0));
        t.max_concurrent_uni_streams(VarInt::from_u32(0));
        t.keep_alive_interval(Some(Duration::from_secs(10)));
        t.datagram_receive_buffer_size(None);
        // As the node does: the node acknowledges every 9th packet (BENCHMARKS.md, "QUIC settings").
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(VarInt::from_u32(fovea_core::ACK_ELICITING_THRESHOLD));
        t.ack_frequency_config(Some(ack));
        if loopback {
            // Full-size datagrams from the start, no probes; discovery only climbs back
            // after a black hole, in two steps (`fovea_core::path::loopback_mtu_step`).
            t.initial_mtu(LOOPBACK_UDP_PAYLOAD);
            let mut mtu = quinn::MtuDiscoveryConfig::default();
            mtu.upper_bound(LOOPBACK_UDP_PAYLOAD);
            mtu.minimum_change(fovea_core::path::loopback_mtu_step(LOOPBACK_UDP_PAYLOAD));
            t.mtu_discovery_config(Some(mtu));
        }
        let mut cfg = quinn::ClientConfig::new(crypto.clone());
        cfg.transport_config(Arc::new(t));
        cfg
    };
    Ok(ByPath { network: config(false), loopback: config(true) })
}

pub(crate) async fn resolve(url: &NodeUrl) -> Result<SocketAddr, ClientError> {
    let err = |reason: String| ClientError::Resolve { url: url.to_string(), reason };
    let mut addrs = tokio::net::lookup_host((url.host.as_str(), url.port)).await.map_err(|e| err(e.to_string()))?;
    addrs.next().ok_or_else(|| err("no addresses".into()))
}

/// An open session, after `WELCOME`.
pub(crate) struct Session {
    /// The QUIC connection (`None` on a stream transport).
    conn: Option<quinn::Connection>,
    send: Writer,
    recv: Reader,
    deframer: Deframer,
}

/// Connects and performs the handshake.
pub(crate) async fn establish(inner: &Inner) -> Result<Session, ClientError> {
    let timeout = inner.opts.connect_timeout;
    let url = inner.url.to_string();
    let attempt = async {
        let (conn, mut recv, mut send) = transport::open(inner).await?;
        let hello = Frame::Hello(Hello {
            version: VERSION,
            realm: inner.opts.realm.clone(),
            token: inner.opts.token.clone(),
            name: inner.opts.name.clone(),
        });
        send.write_all(&hello.to_bytes()).await.map_err(ClientError::Connection)?;
        let mut deframer = Deframer::new(fovea_core::limits::MAX_FRAME);
        let mut chunk = [Bytes::new()];
        let first = loop {
            match deframer.next_frame() {
                // A stream transport's refusal: a last GOAWAY with the close code.
                Ok(Some(Frame::GoAway(g))) if conn.is_none() => {
                    if g.code == ErrorCode::AuthFailed {
                        return Err(ClientError::AuthFailed);
                    }
                    return Err(ClientError::Closed { code: g.code, reason: g.message });
                }
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => return Err(ClientError::Connection(format!("node sent a malformed frame: {e}"))),
            }
            match recv.read_chunks(&mut chunk).await {
                Ok(Some(_)) => deframer.push(std::mem::take(&mut chunk[0])),
                Ok(None) => return Err(ClientError::Connection("node ended the stream during the handshake".into())),
                Err(e) => {
                    let closed = conn.as_ref().and_then(|c| c.close_reason());
                    return Err(match closed {
                        Some(reason) => transport::map_quic_error(&url, reason),
                        None => ClientError::Connection(e),
                    });
                }
            }
        };
        let Frame::Welcome(w) = first else {
            return Err(ClientError::Connection(format!("expected WELCOME, got frame type 0x{:x}", first.kind())));
        };
        let max_payload = usize::try_from(w.max_payload).unwrap_or(usize::MAX);
        inner.max_payload.store(max_payload, std::sync::atomic::Ordering::Relaxed);
        *lock(&inner.info) =
            Some(ServerInfo { node: w.node, version: w.version, connection_id: w.connection_id, max_payload });
        Ok(Session { conn, send, recv, deframer })
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::NoNode { url, timeout }),
    }
}

/// Why a session ended.
enum End {
    /// The client is closing.
    Shutdown,
    /// The connection was lost or closed by the node.
    Lost(String),
}

/// Runs sessions until the client is closed.
pub(crate) async fn drive(inner: Arc<Inner>, first: Session) {
    // Aborted when the driver ends, however it ends (the client's last handle gone, or no
    // reconnection): no call is left to watch then.
    let watchdog = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(crate::rpc::expire_calls(inner.clone())));
    let mut session = Some(first);
    let mut delay = FIRST_RECONNECT_DELAY;
    let jitter = RandomState::new();
    let mut attempt = 0u64;
    loop {
        if let Some(s) = session.take() {
            delay = FIRST_RECONNECT_DELAY;
            match run(&inner, s).await {
                End::Shutdown => break,
                End::Lost(reason) => {
                    tracing::debug!(url = %inner.url, %reason, "connection lost");
                    let _ = inner.events.send(Event::Disconnected(reason));
                    if !inner.opts.reconnect {
                        break;
                    }
                    inner.state.send_replace(ConnectionState::Reconnecting);
                }
            }
        }
        // Backoff with ±25% jitter, so clients of a restarted node do not return in step.
        attempt += 1;
        let spread = delay.as_millis() as u64 / 2 + 1;
        let wait = delay - delay / 4 + Duration::from_millis(jitter.hash_one(attempt) % spread);
        tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        match establish(&inner).await {
            Ok(s) => session = Some(s),
            Err(e) => {
                tracing::debug!(url = %inner.url, error = %e, "reconnect failed");
                delay = (delay * 2).min(inner.opts.max_reconnect_delay);
            }
        }
    }
    drop(watchdog);
    inner.state.send_replace(ConnectionState::Closed);
    // Wake everyone who waits on the connection: they will see it closed.
    {
        let mut out = lock(&inner.out);
        out.connected = false;
        out.new_calls.clear();
    }
    inner.drained.notify_waiters();
    lock(&inner.subs).clear();
    lock(&inner.regs).clear();
    lock(&inner.pings).clear();
    if let (true, Some(endpoint)) = (inner.own_endpoint, inner.endpoint.as_ref()) {
        endpoint.close(VarInt::from_u32(0), b"client closed");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
}

/// One session: restore subscriptions, then read and write until it ends.
async fn run(inner: &Arc<Inner>, s: Session) -> End {
    let Session { conn, mut send, mut recv, mut deframer } = s;
    *lock(&inner.last_goaway) = None;
    // Restore: SUB for every live subscription whose SUB is not still queued, sent
    // before anything already queued. Done under the `out` lock so no subscribe() falls
    // between the snapshot and `connected = true`.
    let mut restore = BytesMut::new();
    {
        let mut out = lock(&inner.out);
        let subs = lock(&inner.subs);
        for (sid, e) in subs.iter() {
            if !out.queued.contains(sid) {
                let pattern = e.pattern.to_bytes();
                Frame::Sub(Subscribe { sid: *sid, pattern, group: e.group.clone() }).encode(&mut restore);
            }
        }
        drop(subs);
        for (rid, e) in lock(&inner.regs).iter() {
            if !out.queued.contains(rid) {
                let procedure = e.procedure.to_bytes();
                Frame::Reg(Register { rid: *rid, procedure, tool: e.tool.clone() }).encode(&mut restore);
            }
        }
        // A catalog watch is renewed, and watchers told to list again: it may have changed
        // while we were away. Its TOOL_LIST answer finds no query waiting and is dropped.
        let watch = inner.tools_watch.load(std::sync::atomic::Ordering::Relaxed);
        if watch != 0 {
            Frame::Tools(ToolsQuery { id: watch, cursor: Bytes::new(), watch: 1 }).encode(&mut restore);
            inner.tools_changed.send_modify(|v| *v += 1);
        }
        // The first session was opened (and numbered) by `Client::connect`; later ones are
        // numbered here, as they open.
        if !out.connected {
            out.connected = true;
            inner.session.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    inner.state.send_replace(ConnectionState::Connected);
    let _ = inner.events.send(Event::Connected);
    let end = async {
        if !restore.is_empty() {
            send.write_all(&restore).await?;
        }
        tokio::select! {
            r = read_loop(inner, &mut recv, &mut deframer) => r,
            r = write_loop(inner, &mut send) => r,
            // The reader may be parked on a full subscription (flow control) and the writer
            // idle: the close must still be noticed.
            e = quic_closed(conn.as_ref()) => Err(describe_close(e)),
        }
    };
    let end = tokio::select! {
        r = end => End::Lost(r.err().unwrap_or_else(|| "node ended the stream".into())),
        _ = inner.shutdown.cancelled() => End::Shutdown,
    };
    if let Some(ConnectionError::ApplicationClosed(c)) = conn.as_ref().and_then(quinn::Connection::close_reason) {
        if ErrorCode::from_u64(c.error_code.into_inner()) == ErrorCode::SlowConsumer {
            lost_on_close(inner, &String::from_utf8_lossy(&c.reason));
        }
    }
    // On a stream transport the node's close is its last GOAWAY.
    let closed = lock(&inner.last_goaway).take();
    if let (None, Some((ErrorCode::SlowConsumer, reason))) = (&conn, &closed) {
        lost_on_close(inner, reason);
    }
    // Calls in flight end with `Disconnected`: whether they ran is unknown (at most once).
    // Their senders drop once both locks are let go (each wakes a caller).
    let ended = {
        let mut calls = lock(&inner.calls);
        let mut out = lock(&inner.out);
        out.connected = false;
        out.new_calls.clear();
        calls.take_all()
    };
    drop(ended);
    inner.drained.notify_waiters();
    lock(&inner.pings).clear();
    lock(&inner.notice_sinks).clear();
    lock(&inner.answer_sinks).clear();
    lock(&inner.tool_queries).clear();
    crate::stream::end_session(inner);
    crate::messages::end_session(inner);
    // Requests being handled can no longer be answered: tell their handlers.
    for (_, signal) in lock(&inner.serving).drain() {
        if let Some(signal) = signal {
            signal.cancel();
        }
    }
    match &end {
        End::Shutdown => {
            // Best effort: hand what is queued to the stream, then close.
            let mut chunks = Vec::new();
            lock(&inner.out).buf.take_into(&mut chunks);
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = send.write_all_chunks(&mut chunks).await;
                send.finish().await;
            })
            .await;
            transport::close_quic(conn.as_ref(), b"client closed");
        }
        End::Lost(_) => transport::close_quic(conn.as_ref(), b""),
    }
    end
}

fn describe_close(e: ConnectionError) -> String {
    match e {
        ConnectionError::ApplicationClosed(c) => {
            let code = ErrorCode::from_u64(c.error_code.into_inner());
            transport::describe_close(code, &String::from_utf8_lossy(&c.reason))
        }
        other => other.to_string(),
    }
}

/// Resolves when a QUIC connection closes; never on a stream transport (its reader sees
/// the end).
async fn quic_closed(conn: Option<&quinn::Connection>) -> ConnectionError {
    match conn {
        Some(c) => c.closed().await,
        None => std::future::pending().await,
    }
}

async fn write_loop(inner: &Inner, send: &mut Writer) -> Result<(), String> {
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        {
            let mut out = lock(&inner.out);
            out.buf.take_into(&mut chunks);
            out.queued.clear();
        }
        inner.drained.notify_waiters();
        if chunks.is_empty() {
            inner.wake.notified().await;
            continue;
        }
        send.write_all_chunks(&mut chunks).await.map_err(|e| format!("write: {e}"))?;
        chunks.clear();
    }
}

async fn read_loop(inner: &Arc<Inner>, recv: &mut Reader, deframer: &mut Deframer) -> Result<(), String> {
    // Messages decoded from one read, delivered together: one lock and one wake per
    // subscription per read instead of per message. Flushed before any other frame, so
    // the order between a subscription's messages and everything else is kept.
    let mut pending = Pending::default();
    // The last topic a message came with (see `queue_msg`).
    let mut last_topic: Option<Topic> = None;
    // One read takes every chunk the stream has (up to READ_BATCH) under one lock of the
    // connection: a chunk is one packet's worth, so reading them one by one paid a lock,
    // a future and a delivery (one wake of each subscriber) per ~1.4 KB.
    let mut chunks = vec![Bytes::new(); READ_BATCH];
    decode(inner, deframer, &mut pending, &mut last_topic).await?;
    loop {
        deliver(inner, &mut pending).await;
        let n = match recv.read_chunks(&mut chunks).await? {
            Some(n) => n,
            None => {
                return Err(match lock(&inner.last_goaway).as_ref() {
                    Some((code, reason)) => transport::describe_close(*code, reason),
                    None => "node ended the stream".into(),
                })
            }
        };
        // The deframer takes a chunk once the one before is drained (no reassembly copy).
        for chunk in chunks.iter_mut().take(n) {
            deframer.push(std::mem::take(chunk));
            decode(inner, deframer, &mut pending, &mut last_topic).await?;
        }
    }
}

/// A `SLOW_CONSUMER` close says what each subscription lost over the connection's life
/// (docs/PROTOCOL.md §4); what its `DROPPED` notices had not told yet is counted and
/// reported now, as a `DROPPED` would have been.
fn lost_on_close(inner: &Inner, reason: &str) {
    for (sid, total) in fovea_core::frame::slow_consumer_drops(reason) {
        let lost = lock(&inner.subs).get(&sid).and_then(|e| {
            let told = e.dropped.load(std::sync::atomic::Ordering::Relaxed);
            let more = total.checked_sub(told).filter(|n| *n > 0)?;
            e.dropped.fetch_add(more, std::sync::atomic::Ordering::Relaxed);
            Some((e.pattern.to_string(), more))
        });
        if let Some((pattern, count)) = lost {
            let _ = inner.events.send(Event::Dropped { pattern, count });
        }
    }
}

/// Decodes every whole frame the deframer holds: messages join `pending`, other frames
/// are handled (after what is pending is delivered).
async fn decode(
    inner: &Arc<Inner>,
    deframer: &mut Deframer,
    pending: &mut Pending,
    last_topic: &mut Option<Topic>,
) -> Result<(), String> {
    // When this read's requests arrived: read from the clock at the first one.
    let mut read_at = None;
    loop {
        // Messages, nearly every frame under load, are queued as they are decoded,
        // without becoming a `Frame` or passing through `handle`'s future: each of those
        // moves a large value per message.
        let mut bad = None;
        let next = deframer.next_frame_or_msgs(|m| {
            if bad.is_none() {
                bad = queue_msg(m, pending, last_topic).err();
            }
        });
        if let Some(e) = bad {
            return Err(e);
        }
        match next.map_err(|e| format!("node sent a malformed frame: {e}"))? {
            // The two frames of every call, when no message waits to be delivered first
            // (what `handle` does before anything else): handled here, without building
            // `handle`'s future, a copy of a few hundred bytes per frame.
            Some(Frame::Result(r)) if pending.is_empty() => lock(&inner.calls).complete(inner, r),
            Some(Frame::Request(q)) if pending.is_empty() => {
                let now = *read_at.get_or_insert_with(tokio::time::Instant::now);
                if let Some((tx, r)) = crate::rpc::try_dispatch_request(inner, q, now) {
                    let _ = tx.send(r).await;
                }
            }
            Some(frame) => handle(inner, frame, pending).await?,
            None => return Ok(()),
        }
    }
}

/// Hands `pending` to their subscriptions, in order. A message for a subscription that has
/// ended is dropped. Flow control: at a full queue, reading stops until the application
/// takes a message (the node then queues, and past its bound drops and counts).
async fn deliver(inner: &Arc<Inner>, pending: &mut Pending) {
    while !pending.is_empty() {
        let full = {
            let subs = lock(&inner.subs);
            loop {
                let Some(sid) = pending.front_sid() else { break None };
                match subs.get(&sid) {
                    None => pending.drop_front_run(),
                    // A chunked subscription takes messages one by one, as `StreamedMessage`s.
                    Some(crate::SubEntry { chunked: Some(tx), .. }) => match tx.try_reserve() {
                        Ok(permit) => {
                            if let Some((_, m)) = pending.pop_front() {
                                permit.send(crate::messages::whole(m));
                            }
                        }
                        Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => pending.drop_front_run(),
                        Err(tokio::sync::mpsc::error::TrySendError::Full(())) => {
                            let tx = tx.clone();
                            break Some(Space::Chunked(tx));
                        }
                    },
                    Some(entry) => {
                        if entry.tx.push_run(pending) == crate::queue::Pushed::Full {
                            break Some(Space::Queue(entry.tx.space()));
                        }
                    }
                }
            }
        };
        match full {
            Some(Space::Queue(space)) => space.await,
            Some(Space::Chunked(tx)) => drop(tx.reserve().await),
            None => return,
        }
    }
}

/// What [`deliver`] waits for: room in a subscription's queue or channel.
enum Space<Q> {
    Queue(Q),
    Chunked(tokio::sync::mpsc::Sender<crate::StreamedMessage>),
}

/// A message joins `pending`, delivered after the read (or before the next other frame).
/// `last` is the previous message's topic: one equal to it is not checked again.
fn queue_msg(m: fovea_core::frame::Delivery, pending: &mut Pending, last: &mut Option<Topic>) -> Result<(), String> {
    let topic = Topic::from_bytes_like(m.topic, last).map_err(|e| format!("node sent an invalid topic: {e}"))?;
    pending.push(m.sid, Message { topic, headers: m.headers, payload: m.payload });
    Ok(())
}

/// One frame from the node other than a message (`read_loop` queues those as they are
/// decoded, with [`queue_msg`]). What is pending is delivered first, so order is kept.
async fn handle(inner: &Arc<Inner>, frame: Frame, pending: &mut Pending) -> Result<(), String> {
    deliver(inner, pending).await;
    match frame {
        Frame::Msg(m) => queue_msg(m, pending, &mut None)?,
        Frame::Request(q) => crate::rpc::dispatch_request(inner, q).await,
        Frame::RegAck(rid) => {
            if let Some(ack) = lock(&inner.regs).get_mut(&rid).and_then(|e| e.ack.take()) {
                let _ = ack.send(Ok(()));
            }
        }
        Frame::Result(r) => lock(&inner.calls).complete(inner, r),
        // The node abandoned a request (caller cancelled, deadline, caller gone): the
        // handler sees it through `Request::cancelled`; an answer now would be dropped.
        Frame::Cancel(req_id) => {
            if let Some(Some(signal)) = lock(&inner.serving).remove(&req_id) {
                signal.cancel();
            }
            crate::stream::request_cancelled(inner, req_id);
        }
        // Message streams: chunks of messages to us, credit for ours.
        Frame::Data(d) if d.flags & fovea_core::frame::data_flags::MESSAGE != 0 => {
            if let Some((sid, m)) = crate::messages::data(inner, d) {
                pending.push(sid, m);
            }
        }
        Frame::Credit(c) if c.flags & fovea_core::frame::data_flags::MESSAGE != 0 => crate::messages::credit(inner, c),
        Frame::MsgStream(m) => {
            if let Some((tx, m)) = crate::messages::open(inner, m)? {
                // Waits while the application is a full channel behind, as a full queue does.
                let _ = tx.send(m).await;
            }
        }
        frame @ (Frame::Data(_) | Frame::Credit(_)) => crate::stream::on_frame(inner, frame),
        Frame::Notice(n) => match crate::Notice::from_wire(n.kind, &n.body) {
            // The answer to a question one of our providers asked (on its request id).
            Some(crate::Notice::Reply { id, result }) => {
                if let Some(tx) = lock(&inner.questions).remove(&(n.id, id)) {
                    let _ = tx.send(result);
                }
            }
            // A question from the provider of one of our calls: its caller answers it
            // (`call_answering`), else this SDK has no agent to ask and declines at once
            // rather than leave the provider waiting.
            Some(question @ crate::Notice::Question { .. }) => {
                let sink = lock(&inner.answer_sinks).get(&n.id).cloned();
                let unanswered = match sink {
                    Some(s) => s.try_send(question).err().map(tokio::sync::mpsc::error::TrySendError::into_inner),
                    None => Some(question),
                };
                if let Some(crate::Notice::Question { id, .. }) = unanswered {
                    let result =
                        Err((-32601, "this caller cannot answer questions (it has no agent to ask)".to_owned()));
                    let (kind, body) = crate::Notice::Reply { id, result }.to_wire();
                    let mut out = lock(&inner.out);
                    if out.connected {
                        out.buf.push_frame(&Frame::Notice(fovea_core::frame::Notice { id: n.id, kind, body }));
                        drop(out);
                        inner.wake.notify_one();
                    }
                }
            }
            Some(notice) => {
                let sink = lock(&inner.notice_sinks).get(&n.id).cloned();
                if let Some(sink) = sink {
                    let _ = sink.try_send(notice);
                }
            }
            None => {}
        },
        Frame::ToolList(page) => {
            if let Some(tx) = lock(&inner.tool_queries).remove(&page.id) {
                let _ = tx.send(page);
            }
        }
        Frame::ToolsChanged(_) => {
            inner.tools_changed.send_modify(|v| *v += 1);
        }
        Frame::Dropped(d) => {
            let pattern = lock(&inner.subs).get(&d.sid).map(|e| {
                e.dropped.fetch_add(d.count, std::sync::atomic::Ordering::Relaxed);
                e.pattern.to_string()
            });
            if let Some(pattern) = pattern {
                tracing::debug!(%pattern, count = d.count, "the node dropped messages: this client reads too slowly");
                let _ = inner.events.send(Event::Dropped { pattern, count: d.count });
            }
        }
        Frame::SubAck(sid) => {
            if let Some(ack) = lock(&inner.subs).get_mut(&sid).and_then(|e| e.ack.take()) {
                let _ = ack.send(Ok(()));
            }
        }
        Frame::Pong(token) => {
            if let Some(tx) = lock(&inner.pings).remove(&token) {
                let _ = tx.send(());
            }
        }
        Frame::Ping(token) => {
            let mut out = lock(&inner.out);
            out.buf.push_frame(&Frame::Pong(token));
            drop(out);
            inner.wake.notify_one();
        }
        Frame::Error(e)
            if e.reference != 0
                && crate::messages::refused(
                    inner,
                    e.reference,
                    &ClientError::Refused { code: e.code, message: e.message.clone() },
                ) => {}
        Frame::Error(e) => {
            // Ids come from one counter, so the reference names at most one subscription
            // or registration (or published message stream, above). An ERROR for a SUB or REG means it did not take effect, so
            // it ends, except DUPLICATE_ID against a live one: the node still has that.
            let ended = match end_refused(&inner.subs, &e) {
                Some(ack) => Some(ack),
                None => end_refused(&inner.regs, &e),
            };
            match ended {
                Some(Some(ack)) => {
                    let _ = ack.send(Err(ClientError::Refused { code: e.code, message: e.message }));
                }
                Some(None) => {
                    tracing::warn!(code = %e.code, message = %e.message, "the node ended a subscription or registration")
                }
                None => {
                    tracing::warn!(code = %e.code, message = %e.message, "the node refused an operation");
                    let _ = inner.events.send(Event::ServerError { code: e.code, message: e.message });
                }
            }
        }
        Frame::GoAway(g) => {
            *lock(&inner.last_goaway) = Some((g.code, g.message.clone()));
            let _ = inner.events.send(Event::GoAway(g.message.clone()));
            return Err(format!("node going away: {}", g.message));
        }
        other => return Err(format!("unexpected frame type 0x{:x} from the node", other.kind())),
    }
    Ok(())
}

/// An entry waiting for the node's acknowledgement (`SUBACK`, `REGACK`).
pub(crate) trait Acked {
    fn ack(&mut self) -> &mut Option<AckSender>;
}

impl Acked for crate::SubEntry {
    fn ack(&mut self) -> &mut Option<AckSender> {
        &mut self.ack
    }
}

impl Acked for crate::rpc::RegEntry {
    fn ack(&mut self) -> &mut Option<AckSender> {
        &mut self.ack
    }
}

/// Removes the entry an `ERROR` refers to, if any, returning its pending acknowledgement.
fn end_refused<T: Acked>(map: &std::sync::Mutex<crate::IdMap<T>>, e: &ErrorFrame) -> Option<Option<AckSender>> {
    let mut map = lock(map);
    let entry = map.get_mut(&e.reference)?;
    if e.code == ErrorCode::DuplicateId && entry.ack().is_none() {
        return None;
    }
    map.remove(&e.reference).map(|mut entry| entry.ack().take())
}
