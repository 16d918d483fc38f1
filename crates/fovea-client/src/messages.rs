//! Streamed messages (protocol version 6): a message larger than a frame, or one its
//! publisher writes as it goes, travels as a head and chunks, paced end to end by the
//! credit of its slowest receiver (docs/PROTOCOL.md §4.5).
//!
//! - Publishing: [`Client::publish_stream`] opens a [`PublishStream`]; [`Client::publish`]
//!   of a payload larger than the node's `max_payload` streams it by itself.
//! - Receiving: a [`crate::Subscription`] gets a streamed message whole, assembled here
//!   (up to [`ConnectOptions::max_message`](crate::ConnectOptions::max_message) bytes;
//!   a larger one is refused and counted as dropped). A [`ChunkedSubscription`]
//!   ([`Client::subscribe_chunked`]) hands every message over as its head and a
//!   [`MessageBody`] to read chunk by chunk, holding at most a window of it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fovea_core::frame::{data_flags, Credit, Data, MsgStream, PubStream, Publish, VERSION_MESSAGE_STREAMS};
use fovea_core::{Frame, Headers, Pattern, Topic};
use tokio::sync::mpsc;

use crate::stream::{push, send_chunks, CreditWait, Flow, Piece, Reader};
use crate::{lock, Client, ClientError, Event, Inner, Message};

/// A streamed message this client is receiving, by the id the node gave it.
pub(crate) enum Incoming {
    /// For a plain subscription: assembled, delivered whole at its end.
    Whole { sid: u64, topic: Topic, headers: Headers, parts: BytesMut, max: usize },
    /// For a chunked subscription: handed to the application's [`MessageBody`].
    Chunked(Arc<Flow>),
}

/// A message as a [`ChunkedSubscription`] hands it over: its head, and its payload to read.
#[derive(Debug)]
pub struct StreamedMessage {
    /// The topic it was published to.
    pub topic: Topic,
    /// Its headers.
    pub headers: Headers,
    /// Its payload, chunk by chunk.
    pub body: MessageBody,
}

/// The payload of a [`StreamedMessage`]. The node sends more only as it is read (a
/// window of 4 MiB): a reader that stops holds back the publisher, which cuts it from
/// the message after the node's `slow_consumer_timeout`. Dropping it unread tells the
/// node to send no more.
pub struct MessageBody {
    /// The message's first part, not yet read.
    first: Option<Bytes>,
    /// The chunks that follow; `None` for a message that came whole.
    stream: Option<BodyStream>,
    done: bool,
}

struct BodyStream {
    inner: Arc<Inner>,
    id: u64,
    session: u64,
    pieces: mpsc::UnboundedReceiver<Piece>,
    reader: Reader,
}

impl std::fmt::Debug for MessageBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageBody").field("streamed", &self.stream.is_some()).field("done", &self.done).finish()
    }
}

impl MessageBody {
    fn whole(payload: Bytes) -> Self {
        MessageBody { first: Some(payload), stream: None, done: false }
    }

    /// The next chunk; `None` at the end.
    ///
    /// # Errors
    /// [`ClientError::StreamEnded`] when the message was cut before its end (its
    /// publisher went away, or this client read too slowly); [`ClientError::Disconnected`]
    /// when the session ended.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ClientError>> {
        if let Some(first) = self.first.take().filter(|b| !b.is_empty()) {
            return Some(Ok(first));
        }
        if self.done {
            return None;
        }
        let Some(s) = self.stream.as_mut() else {
            self.done = true;
            return None;
        };
        let piece = s.pieces.recv().await;
        match piece {
            Some(Piece::Chunk(chunk)) => {
                let grant = s.reader.grant(chunk.len());
                if grant > 0 {
                    send_credit(&s.inner, s.session, s.id, 0, grant);
                }
                Some(Ok(chunk))
            }
            Some(Piece::End) => {
                self.done = true;
                None
            }
            Some(Piece::Lost(e)) => {
                self.done = true;
                Some(Err(e))
            }
            None => {
                self.done = true;
                Some(Err(ClientError::Disconnected))
            }
        }
    }

    /// Reads the rest of the payload into one buffer, refusing more than `max` bytes.
    ///
    /// # Errors
    /// As [`MessageBody::next_chunk`]; [`ClientError::PayloadTooLarge`] past `max` (the
    /// message is then dropped).
    pub async fn read_all(mut self, max: usize) -> Result<Bytes, ClientError> {
        let mut all = BytesMut::new();
        while let Some(chunk) = self.next_chunk().await {
            let chunk = chunk?;
            if all.len() + chunk.len() > max {
                return Err(ClientError::PayloadTooLarge { size: all.len() + chunk.len(), max });
            }
            all.extend_from_slice(&chunk);
        }
        Ok(all.freeze())
    }
}

impl Drop for MessageBody {
    fn drop(&mut self) {
        let Some(s) = self.stream.as_ref().filter(|_| !self.done) else { return };
        let inner = &s.inner;
        if lock(&inner.message_streams).remove(&s.id).is_some() {
            send_credit(inner, s.session, s.id, data_flags::CUT, 0);
        }
    }
}

/// A subscription that hands each message over as a [`StreamedMessage`]: large ones as
/// their chunks arrive, never whole. Made by [`Client::subscribe_chunked`]; dropping it
/// unsubscribes.
pub struct ChunkedSubscription {
    /// Owns the subscription (its queue stays empty: messages come through `rx`).
    sub: crate::Subscription,
    rx: mpsc::Receiver<StreamedMessage>,
}

impl ChunkedSubscription {
    /// The next message, or `None` when the subscription has ended.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn next(&mut self) -> Option<StreamedMessage> {
        self.rx.recv().await
    }

    /// The subscription's pattern.
    pub fn pattern(&self) -> &Pattern {
        self.sub.pattern()
    }

    /// Messages dropped for this subscription so far (see [`crate::Subscription::dropped`]).
    pub fn dropped(&self) -> u64 {
        self.sub.dropped()
    }
}

impl std::fmt::Debug for ChunkedSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkedSubscription")
            .field("sid", &self.sub.sid())
            .field("pattern", self.sub.pattern())
            .finish()
    }
}

/// A message being published in parts ([`Client::publish_stream`]). The node lets it send
/// as fast as its slowest receiver reads. Dropping it before [`PublishStream::finish`]
/// cuts the message: receivers learn it ended incomplete.
pub struct PublishStream {
    client: Client,
    id: u64,
    session: u64,
    flow: Arc<Flow>,
    pieces: mpsc::UnboundedReceiver<Piece>,
    done: bool,
}

impl std::fmt::Debug for PublishStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishStream").field("id", &self.id).finish()
    }
}

impl PublishStream {
    /// Sends the next part, waiting for credit as needed (split into chunks of at most
    /// [`crate::MAX_CHUNK`] bytes).
    ///
    /// # Errors
    /// [`ClientError::Refused`] when the node refused the message (its topic, permissions,
    /// too many streams open); [`ClientError::StreamEnded`] after the node stopped it;
    /// [`ClientError::Disconnected`] when the session ended.
    pub async fn send(&mut self, part: impl Into<Bytes>) -> Result<(), ClientError> {
        let inner = self.client.inner();
        let sent = send_chunks(
            inner,
            self.session,
            &self.flow,
            self.id,
            data_flags::MESSAGE,
            part.into(),
            CreditWait(ClientError::StreamEnded),
        )
        .await;
        sent.map_err(|e| self.reason().unwrap_or(e))
    }

    /// Ends the message: its receivers have all of it.
    ///
    /// # Errors
    /// As [`PublishStream::send`].
    pub async fn finish(mut self) -> Result<(), ClientError> {
        self.end(data_flags::END)?;
        Ok(())
    }

    fn end(&mut self, flag: u64) -> Result<(), ClientError> {
        self.done = true;
        lock(&self.client.inner().publish_streams).remove(&self.id);
        if let Some(e) = self.reason() {
            return Err(e);
        }
        let inner = self.client.inner();
        let data = Data { id: self.id, flags: data_flags::MESSAGE | flag, chunk: Bytes::new() };
        push(inner, self.session, |b| b.push_frame(&Frame::Data(data)))
    }

    /// Why the node stopped the stream, if it did.
    fn reason(&mut self) -> Option<ClientError> {
        match self.pieces.try_recv() {
            Ok(Piece::Lost(e)) => Some(e),
            _ => None,
        }
    }
}

impl Drop for PublishStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.end(data_flags::CUT);
        }
    }
}

impl Client {
    /// Opens a message to `topic` whose payload follows in parts: `first` now (may be
    /// empty, at most the node's `max_payload`), the rest with [`PublishStream::send`],
    /// then [`PublishStream::finish`]. Subscribers get it whole, or as it comes
    /// ([`Client::subscribe_chunked`]).
    ///
    /// # Errors
    /// [`ClientError::Unsupported`] for a node below protocol version 6;
    /// [`ClientError::InvalidTopic`], [`ClientError::PayloadTooLarge`] (for `first`),
    /// [`ClientError::Disconnected`].
    pub async fn publish_stream(
        &self,
        topic: &str,
        headers: &Headers,
        first: impl Into<Bytes>,
    ) -> Result<PublishStream, ClientError> {
        let first = first.into();
        Topic::check(topic).map_err(|source| ClientError::InvalidTopic { topic: topic.to_owned(), source })?;
        match self.server_info() {
            Some(info) if info.version < VERSION_MESSAGE_STREAMS => {
                return Err(ClientError::Unsupported {
                    what: "streamed messages",
                    node_version: info.version,
                    needed: VERSION_MESSAGE_STREAMS,
                })
            }
            None => return Err(ClientError::Disconnected),
            _ => {}
        }
        let max = self.max_payload();
        if first.len() > max {
            return Err(ClientError::PayloadTooLarge { size: first.len(), max });
        }
        let inner = self.inner();
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        // The node grants credit once it knows the message's receivers.
        let (flow, pieces) = Flow::new(0);
        let session = inner.session.load(Ordering::Relaxed);
        lock(&inner.publish_streams).insert(id, flow.clone());
        let msg = Publish { topic: Bytes::copy_from_slice(topic.as_bytes()), headers: headers.clone(), payload: first };
        if let Err(e) = push(inner, session, |b| b.push_frame(&Frame::PubStream(PubStream { id, msg }))) {
            lock(&inner.publish_streams).remove(&id);
            return Err(e);
        }
        Ok(PublishStream { client: self.clone(), id, session, flow, pieces, done: false })
    }

    /// Publishes `payload`, larger than the node's `max_payload`, as a streamed message.
    pub(crate) async fn publish_large(
        &self,
        topic: &str,
        headers: &Headers,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        let mut stream = self.publish_stream(topic, headers, Bytes::new()).await?;
        stream.send(payload).await?;
        stream.finish().await
    }

    /// Subscribes to `pattern`, taking each message as its head and a body read chunk by
    /// chunk: the way to receive messages too large to hold whole.
    ///
    /// # Errors
    /// As [`Client::subscribe`].
    pub async fn subscribe_chunked(&self, pattern: &str) -> Result<ChunkedSubscription, ClientError> {
        self.subscribe_chunked_group(pattern, "").await
    }

    /// As [`Client::subscribe_chunked`], as a member of queue group `group` (see
    /// [`Client::subscribe_group`]; empty: none).
    ///
    /// # Errors
    /// As [`Client::subscribe_group`].
    pub async fn subscribe_chunked_group(
        &self,
        pattern: &str,
        group: &str,
    ) -> Result<ChunkedSubscription, ClientError> {
        if !group.is_empty() {
            Topic::new(group)
                .map_err(|source| ClientError::InvalidPattern { pattern: format!("group {group}"), source })?;
        }
        let (tx, rx) = mpsc::channel(self.inner().opts.subscription_capacity.min(1024));
        let sub = self.subscribe_with(pattern, group, Some(tx)).await?;
        Ok(ChunkedSubscription { sub, rx })
    }
}

/// Hands a plain message to a chunked subscription.
pub(crate) fn whole(m: Message) -> StreamedMessage {
    StreamedMessage { topic: m.topic, headers: m.headers, body: MessageBody::whole(m.payload) }
}

/// What the session's reader does with a `MSG_STREAM`: for a chunked subscription, a
/// message to hand over now (with where to send it); for a plain one, an assembly begun.
pub(crate) fn open(
    inner: &Arc<Inner>,
    m: MsgStream,
) -> Result<Option<(mpsc::Sender<StreamedMessage>, StreamedMessage)>, String> {
    let MsgStream { id, msg } = m;
    let topic = Topic::from_bytes(msg.topic).map_err(|e| format!("node sent an invalid topic: {e}"))?;
    let chunked = lock(&inner.subs).get(&msg.sid).map(|e| e.chunked.clone());
    let session = inner.session.load(Ordering::Relaxed);
    match chunked {
        // Not (or no longer) subscribed: the node is told to send no more.
        None => {
            send_credit(inner, session, id, data_flags::CUT, 0);
            Ok(None)
        }
        Some(None) => {
            let max = inner.opts.max_message;
            let mut parts = BytesMut::new();
            parts.extend_from_slice(&msg.payload);
            let entry = Incoming::Whole { sid: msg.sid, topic, headers: msg.headers, parts, max };
            lock(&inner.message_streams).insert(id, entry);
            // Taken as it comes (each chunk's credit goes straight back): a window as
            // wide as a chunked reader's keeps a path of several hops busy.
            let grant = crate::stream::WINDOW.saturating_sub(fovea_core::frame::INITIAL_CREDIT);
            send_credit(inner, session, id, 0, grant);
            Ok(None)
        }
        Some(Some(tx)) => {
            let (flow, pieces) = Flow::new(0);
            lock(&inner.message_streams).insert(id, Incoming::Chunked(flow));
            let mut reader = Reader::new(fovea_core::frame::INITIAL_CREDIT);
            // The node started with a window of INITIAL_CREDIT; open it to the full one.
            let grant = reader.grant(0);
            send_credit(inner, session, id, 0, grant);
            let stream = BodyStream { inner: inner.clone(), id, session, pieces, reader };
            let body = MessageBody { first: Some(msg.payload), stream: Some(stream), done: false };
            Ok(Some((tx, StreamedMessage { topic, headers: msg.headers, body })))
        }
    }
}

/// A `DATA` of a message stream from the node. Returns a message assembled whole, for
/// its subscription.
pub(crate) fn data(inner: &Inner, d: Data) -> Option<(u64, Message)> {
    let ends = d.flags & data_flags::END != 0;
    let cut = d.flags & data_flags::CUT != 0;
    let session = inner.session.load(Ordering::Relaxed);
    let mut streams = lock(&inner.message_streams);
    match streams.get_mut(&d.id)? {
        Incoming::Chunked(flow) => {
            if !d.chunk.is_empty() {
                flow.piece(Piece::Chunk(d.chunk));
            }
            if cut {
                flow.lose(ClientError::StreamEnded);
            } else if ends {
                flow.piece(Piece::End);
            }
            if cut || ends {
                streams.remove(&d.id);
            }
            None
        }
        Incoming::Whole { parts, max, sid, .. } => {
            let (len, sid) = (d.chunk.len(), *sid);
            let over = parts.len() + len > *max;
            if !over {
                parts.extend_from_slice(&d.chunk);
            }
            if cut || over {
                streams.remove(&d.id);
                drop(streams);
                if over {
                    send_credit(inner, session, d.id, data_flags::CUT, 0);
                }
                lost(inner, sid);
                return None;
            }
            if ends {
                let Some(Incoming::Whole { sid, topic, headers, parts, .. }) = streams.remove(&d.id) else {
                    return None;
                };
                return Some((sid, Message { topic, headers, payload: parts.freeze() }));
            }
            drop(streams);
            // Assembled as it comes: the credit goes straight back.
            if len > 0 {
                send_credit(inner, session, d.id, 0, len as u64);
            }
            None
        }
    }
}

/// Queues `CREDIT` for message stream `id` of session `session` (`flags`: 0, or `CUT`
/// to want no more of it). A session that has ended needs none.
fn send_credit(inner: &Inner, session: u64, id: u64, flags: u64, bytes: u64) {
    let credit = Credit { id, flags: data_flags::MESSAGE | flags, bytes };
    let _ = push(inner, session, |b| b.push_frame(&Frame::Credit(credit)));
}

/// A message for subscription `sid` was lost: counted and told as the node's drops are.
fn lost(inner: &Inner, sid: u64) {
    let pattern = lock(&inner.subs).get(&sid).map(|e| {
        e.dropped.fetch_add(1, Ordering::Relaxed);
        e.pattern.to_string()
    });
    if let Some(pattern) = pattern {
        let _ = inner.events.send(Event::Dropped { pattern, count: 1 });
    }
}

/// `CREDIT` for one of this client's published streams (with `CUT`: the node stopped it).
pub(crate) fn credit(inner: &Inner, c: Credit) {
    let streams = lock(&inner.publish_streams);
    let Some(flow) = streams.get(&c.id) else { return };
    if c.flags & data_flags::CUT != 0 {
        flow.lose(ClientError::StreamEnded);
    } else {
        flow.grant(c.bytes);
    }
}

/// An `ERROR` naming one of this client's published streams: it was refused or broken.
pub(crate) fn refused(inner: &Inner, reference: u64, error: &ClientError) -> bool {
    match lock(&inner.publish_streams).get(&reference) {
        Some(flow) => {
            flow.lose(error.clone());
            true
        }
        None => false,
    }
}

/// The session ended: every message stream of it is over.
pub(crate) fn end_session(inner: &Inner) {
    for (_, flow) in lock(&inner.publish_streams).drain() {
        flow.lose(ClientError::Disconnected);
    }
    for (_, m) in lock(&inner.message_streams).drain() {
        if let Incoming::Chunked(flow) = m {
            flow.lose(ClientError::Disconnected);
        }
    }
}
