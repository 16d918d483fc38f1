//! Streamed calls (protocol version 5): a call's request, its answer or both travel as
//! chunks (`DATA`), flow-controlled end to end by credit (`CREDIT`), so that neither this
//! client nor any node ever holds more of a stream than its receiver let in
//! (docs/PROTOCOL.md §4.4).
//!
//! Each side of a streamed call shares one [`Flow`] between the application's object (a
//! [`CallStream`] for the caller, a [`crate::Request`] for the provider) and the session's
//! reader: the reader hands it the chunks that arrive and the credit the other side grants;
//! the object sends within that credit and grants more as the application reads.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fovea_core::frame::{call_flags, data_flags, Call, CallResult, Credit, INITIAL_CREDIT, VERSION_STREAMS};
use fovea_core::{ErrorCode, Frame, Headers, OutBuf, Procedure};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::{lock, Client, ClientError, Inner, Response};

/// Bytes of chunks this client lets a stream's sender have in flight: its receive window.
/// Large enough that a loopback or LAN path is never waiting on credit (a round trip
/// through a node moves a window), small enough that a reader that stops holds little at
/// each hop.
pub(crate) const WINDOW: u64 = 4 * 1024 * 1024;

/// Credit is granted back in steps of this many bytes read, not per chunk.
const STEP: u64 = WINDOW / 4;

/// Largest chunk this client sends (less when the node's `max_payload` is smaller).
pub const MAX_CHUNK: usize = 256 * 1024;

/// What the session's reader hands a stream's receiving side.
pub(crate) enum Piece {
    Chunk(Bytes),
    /// The request's last chunk has arrived (request streams only; an answer ends with
    /// its `RESULT`).
    End,
    /// The stream can go no further: the call was cancelled or the session ended.
    Lost(ClientError),
}

/// One side of a streamed call, shared with the session's reader.
pub(crate) struct Flow {
    send: Mutex<SendState>,
    /// Wakes the one task waiting for credit (a stored permit: no wake is lost).
    credit: Notify,
    pieces: mpsc::UnboundedSender<Piece>,
}

struct SendState {
    credit: u64,
    open: bool,
}

impl Flow {
    /// A side that may send `credit` bytes before its peer grants more. The receiver of
    /// pieces is unbounded on purpose: what arrives is bounded by the credit this side
    /// granted ([`WINDOW`]).
    pub(crate) fn new(credit: u64) -> (Arc<Flow>, mpsc::UnboundedReceiver<Piece>) {
        let (pieces, rx) = mpsc::unbounded_channel();
        (Arc::new(Flow { send: Mutex::new(SendState { credit, open: true }), credit: Notify::new(), pieces }), rx)
    }

    /// The peer granted `bytes` more.
    pub(crate) fn grant(&self, bytes: u64) {
        let mut s = lock(&self.send);
        s.credit = s.credit.saturating_add(bytes);
        drop(s);
        self.credit.notify_one();
    }

    /// Ends the stream for both directions with `why`.
    pub(crate) fn lose(&self, why: ClientError) {
        self.close();
        let _ = self.pieces.send(Piece::Lost(why));
    }

    /// Ends the sending direction: the call has ended (its result arrived).
    pub(crate) fn close(&self) {
        lock(&self.send).open = false;
        self.credit.notify_one();
    }

    pub(crate) fn piece(&self, piece: Piece) {
        let _ = self.pieces.send(piece);
    }

    /// Takes up to `want` bytes of credit: `Ok(0)` when there is none yet.
    fn take(&self, want: usize) -> Result<usize, ()> {
        let mut s = lock(&self.send);
        if !s.open {
            return Err(());
        }
        let n = want.min(usize::try_from(s.credit).unwrap_or(usize::MAX));
        s.credit -= n as u64;
        Ok(n)
    }
}

/// A chunk or credit from the node, handed to its stream (the session's reader).
pub(crate) fn on_frame(inner: &Inner, frame: Frame) {
    match frame {
        // An answer's chunk is for one of our calls; a request's for a request we serve.
        Frame::Data(d) if d.flags & data_flags::ANSWER != 0 => {
            if let Some(flow) = lock(&inner.call_streams).get(&d.id) {
                flow.piece(Piece::Chunk(d.chunk));
            }
        }
        Frame::Data(d) => {
            if let Some(flow) = lock(&inner.request_streams).get(&d.id) {
                if !d.chunk.is_empty() {
                    flow.piece(Piece::Chunk(d.chunk));
                }
                if d.flags & data_flags::END != 0 {
                    flow.piece(Piece::End);
                }
            }
        }
        // Credit for our answer comes from a caller; for our request, from its provider.
        Frame::Credit(c) if c.flags & data_flags::ANSWER != 0 => {
            if let Some(flow) = lock(&inner.request_streams).get(&c.id) {
                flow.grant(c.bytes);
            }
        }
        Frame::Credit(c) => {
            if let Some(flow) = lock(&inner.call_streams).get(&c.id) {
                flow.grant(c.bytes);
            }
        }
        _ => {}
    }
}

/// A call's result arrived: a stream of it can send no more.
pub(crate) fn call_ended(inner: &Inner, call_id: u64) {
    if inner.call_streams_open.load(Ordering::Relaxed) > 0 {
        if let Some(flow) = lock(&inner.call_streams).get(&call_id) {
            flow.close();
        }
    }
}

/// The session has ended: every stream of it is lost.
pub(crate) fn end_session(inner: &Inner) {
    inner.call_streams_open.store(0, Ordering::Relaxed);
    for (_, flow) in lock(&inner.call_streams).drain() {
        flow.lose(ClientError::Disconnected);
    }
    for (_, flow) in lock(&inner.request_streams).drain() {
        flow.lose(ClientError::Cancelled);
    }
}

/// The node abandoned request `req_id` (cancelled, timed out, caller gone).
pub(crate) fn request_cancelled(inner: &Inner, req_id: u64) {
    if let Some(flow) = lock(&inner.request_streams).remove(&req_id) {
        flow.lose(ClientError::Cancelled);
    }
}

/// Queues a frame of session `session`; `Disconnected` if that session is over.
pub(crate) fn push(inner: &Inner, session: u64, f: impl FnOnce(&mut OutBuf)) -> Result<(), ClientError> {
    let mut out = lock(&inner.out);
    if !out.connected || inner.session.load(Ordering::Relaxed) != session {
        return Err(ClientError::Disconnected);
    }
    f(&mut out.buf);
    drop(out);
    inner.wake.notify_one();
    Ok(())
}

/// The largest chunk to send to this node.
fn max_chunk(inner: &Inner) -> usize {
    MAX_CHUNK.min(inner.max_payload.load(Ordering::Relaxed)).max(1)
}

/// The receiving side's accounting: grants credit back as the application reads.
pub(crate) struct Reader {
    /// Read since credit was last granted.
    unacked: u64,
    /// Whether the window was opened past the sender's initial credit.
    opened: bool,
    /// The credit the sender started with.
    initial: u64,
}

impl Reader {
    pub(crate) fn new(initial: u64) -> Self {
        Reader { unacked: 0, opened: false, initial }
    }

    pub(crate) fn opened(&self) -> bool {
        self.opened
    }

    /// Credit to grant now (0: none), before reading (`read` 0) or after reading `read`
    /// bytes: the whole window at first, then steps as the application reads.
    pub(crate) fn grant(&mut self, read: usize) -> u64 {
        self.unacked += read as u64;
        if !self.opened {
            self.opened = true;
            let grant = WINDOW.saturating_sub(self.initial) + self.unacked;
            self.unacked = 0;
            return grant;
        }
        if self.unacked >= STEP {
            return std::mem::take(&mut self.unacked);
        }
        0
    }
}

/// Sends `data` on a stream within its credit, as chunks of at most [`max_chunk`]; waits
/// for credit with `wait`, which returns an error to give up.
pub(crate) async fn send_chunks<W>(
    inner: &Inner,
    session: u64,
    flow: &Flow,
    id: u64,
    flags: u64,
    mut data: Bytes,
    mut wait: W,
) -> Result<(), ClientError>
where
    W: AsyncWait,
{
    let max = max_chunk(inner);
    while !data.is_empty() {
        let n = loop {
            match flow.take(data.len().min(max)) {
                Ok(0) => wait.wait(&flow.credit).await?,
                Ok(n) => break n,
                Err(()) => return Err(wait.closed()),
            }
        };
        let chunk = data.split_to(n);
        push(inner, session, |b| b.push_data(id, flags, &chunk))?;
    }
    Ok(())
}

/// How a sender waits for credit, and what it reports when its stream has closed.
pub(crate) trait AsyncWait {
    fn wait<'a>(&'a mut self, credit: &'a Notify) -> WaitFuture<'a>;
    fn closed(&mut self) -> ClientError;
}

pub(crate) type WaitFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ClientError>> + Send + 'a>>;

/// A sender that waits only for credit; when its flow closes it fails with the error it
/// holds (`Cancelled` for a provider's answer, `StreamEnded` for a taken `CallSender`).
pub(crate) struct CreditWait(pub(crate) ClientError);

impl AsyncWait for CreditWait {
    fn wait<'a>(&'a mut self, credit: &'a Notify) -> WaitFuture<'a> {
        Box::pin(async move {
            credit.notified().await;
            Ok(())
        })
    }

    fn closed(&mut self) -> ClientError {
        self.0.clone()
    }
}

/// The caller's side of a streamed call ([`Client::call_stream`], [`Client::open_call`]):
/// chunks of the request go out with [`CallStream::send`], chunks of the answer come in
/// with [`CallStream::next`] (it is also a [`futures_core::Stream`]).
///
/// Dropping it before the answer has ended cancels the call.
pub struct CallStream {
    client: Client,
    procedure: String,
    call_id: u64,
    session: u64,
    timeout: Duration,
    /// The local deadline (timeout plus grace) after which the call watchdog gives up.
    deadline: Instant,
    /// The request's sending half, until taken ([`CallStream::take_sender`]); `None` too
    /// when the request does not stream.
    sender: Option<CallSender>,
    flow: Arc<Flow>,
    pieces: mpsc::UnboundedReceiver<Piece>,
    /// The `RESULT`, until it arrives.
    result: Option<oneshot::Receiver<CallResult>>,
    /// The call's end, once it arrived, kept until the chunks before it are read.
    outcome: Option<Result<CallResult, ClientError>>,
    reader: Reader,
    /// The answer's end was handed to the application.
    done: bool,
    headers: Headers,
}

impl std::fmt::Debug for CallStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStream").field("procedure", &self.procedure).field("call_id", &self.call_id).finish()
    }
}

/// Waits for credit while watching for the call's end.
struct CallWait<'s> {
    result: &'s mut Option<oneshot::Receiver<CallResult>>,
    outcome: &'s mut Option<Result<CallResult, ClientError>>,
    timeout: Duration,
    deadline: Instant,
    inner: &'s Inner,
}

impl AsyncWait for CallWait<'_> {
    fn wait<'a>(&'a mut self, credit: &'a Notify) -> WaitFuture<'a> {
        Box::pin(async move {
            let Some(rx) = self.result.as_mut() else { return Err(self.closed()) };
            tokio::select! {
                () = credit.notified() => Ok(()),
                r = rx => {
                    *self.result = None;
                    *self.outcome = Some(received(self.inner, r, self.timeout, self.deadline));
                    Err(self.closed())
                }
            }
        })
    }

    fn closed(&mut self) -> ClientError {
        match &*self.outcome {
            // The provider answered before taking the whole request.
            Some(Ok(r)) if r.code != ErrorCode::NoError => result_error(r, "", self.timeout),
            Some(Err(e)) => e.clone(),
            _ => ClientError::StreamEnded,
        }
    }
}

/// What a call's result channel gave: the result, or why it closed without one.
fn received(
    inner: &Inner,
    r: Result<CallResult, oneshot::error::RecvError>,
    timeout: Duration,
    deadline: Instant,
) -> Result<CallResult, ClientError> {
    r.map_err(|_| {
        if inner.shutdown.is_cancelled() {
            ClientError::ClientClosed
        } else if Instant::now() >= deadline {
            ClientError::Timeout(timeout)
        } else {
            ClientError::Disconnected
        }
    })
}

/// The error a failed `RESULT` stands for.
pub(crate) fn result_error(r: &CallResult, procedure: &str, timeout: Duration) -> ClientError {
    let message = || String::from_utf8_lossy(&r.payload).into_owned();
    match r.code {
        ErrorCode::NoProvider => ClientError::NoProvider(procedure.to_owned()),
        ErrorCode::Timeout => ClientError::Timeout(timeout),
        ErrorCode::ProviderDisconnected => ClientError::ProviderDisconnected,
        ErrorCode::Busy => ClientError::Busy(message()),
        code if code.is_application() => ClientError::Remote { code: code.to_u64(), message: message() },
        code => ClientError::Refused { code, message: message() },
    }
}

impl CallStream {
    /// Sends `data` as the next part of the request (split into chunks, each sent once the
    /// provider has granted room for it: a provider that reads slowly slows this down).
    ///
    /// # Errors
    /// [`ClientError::StreamEnded`] if the call does not stream its request
    /// ([`Client::call_stream`] with a small payload) or [`CallStream::finish`] was called;
    /// the call's own error if it ended meanwhile (the provider answered or failed early,
    /// the deadline passed); [`ClientError::Disconnected`].
    ///
    /// # Cancel safety
    /// Not cancel safe: part of `data` may have been sent.
    pub async fn send(&mut self, data: impl Into<Bytes>) -> Result<(), ClientError> {
        let Some(sender) = self.sender.as_mut().filter(|s| !s.finished) else {
            return Err(ClientError::StreamEnded);
        };
        let inner = self.client.inner();
        let wait = CallWait {
            result: &mut self.result,
            outcome: &mut self.outcome,
            timeout: self.timeout,
            deadline: self.deadline,
            inner,
        };
        send_chunks(inner, sender.session, &sender.flow, sender.call_id, 0, data.into(), wait).await
    }

    /// Ends the request: the provider's read of it ends after what was sent.
    ///
    /// # Errors
    /// As [`CallStream::send`].
    pub fn finish(&mut self) -> Result<(), ClientError> {
        match self.sender.as_mut() {
            Some(sender) => sender.end(),
            None => Err(ClientError::StreamEnded),
        }
    }

    /// Takes the request's sending half, to send from another task while this one reads
    /// the answer (a provider that answers as it reads needs its caller to do both at
    /// once). `None` when the request does not stream or the half was taken before.
    pub fn take_sender(&mut self) -> Option<CallSender> {
        self.sender.take()
    }

    /// The next chunk of the answer: the provider's chunks in order, then the payload of
    /// its final answer (when not empty), then `None`. A failed call yields its error once,
    /// then `None`.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn next(&mut self) -> Option<Result<Bytes, ClientError>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// The headers of the provider's final answer, once [`CallStream::next`] has returned
    /// `None` after a success (empty before).
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Reads the whole answer into one buffer, refusing one over `max` bytes.
    ///
    /// # Errors
    /// The call's error; [`ClientError::PayloadTooLarge`] past `max` (the call is
    /// cancelled).
    pub async fn collect(mut self, max: usize) -> Result<Response, ClientError> {
        let mut all = BytesMut::new();
        let mut first: Option<Bytes> = None;
        while let Some(chunk) = self.next().await {
            let chunk = chunk?;
            let size = all.len() + first.as_ref().map_or(0, Bytes::len) + chunk.len();
            if size > max {
                return Err(ClientError::PayloadTooLarge { size, max });
            }
            // A single chunk is handed on as it is: no copy.
            match first.take() {
                None if all.is_empty() => first = Some(chunk),
                None => all.extend_from_slice(&chunk),
                Some(f) => {
                    all.extend_from_slice(&f);
                    all.extend_from_slice(&chunk);
                }
            }
        }
        let payload = first.unwrap_or_else(|| all.freeze());
        Ok(Response { headers: std::mem::take(&mut self.headers), payload })
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ClientError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            // Chunks come before the call's end: the reader hands them over first.
            match self.pieces.poll_recv(cx) {
                Poll::Ready(Some(Piece::Chunk(c))) => {
                    let grant = self.reader.grant(c.len());
                    if grant > 0 {
                        let (id, inner) = (self.call_id, self.client.inner());
                        let credit = Frame::Credit(Credit { id, flags: data_flags::ANSWER, bytes: grant });
                        let _ = push(inner, self.session, |b| b.push_frame(&credit));
                    }
                    return Poll::Ready(Some(Ok(c)));
                }
                // Lost streams end with the call's result (the session's end drops it).
                Poll::Ready(Some(_)) => continue,
                Poll::Ready(None) | Poll::Pending => {}
            }
            if let Some(outcome) = self.outcome.take() {
                return Poll::Ready(self.end(outcome));
            }
            let Some(rx) = self.result.as_mut() else {
                self.done = true;
                return Poll::Ready(None);
            };
            match Pin::new(rx).poll(cx) {
                Poll::Ready(r) => {
                    self.result = None;
                    self.outcome = Some(received(self.client.inner(), r, self.timeout, self.deadline));
                    // Chunks that arrived before the result may be waiting: look again.
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The call has ended with `outcome`: the last item of the answer.
    fn end(&mut self, outcome: Result<CallResult, ClientError>) -> Option<Result<Bytes, ClientError>> {
        self.done = true;
        self.forget();
        match outcome {
            Ok(r) if r.code == ErrorCode::NoError => {
                self.headers = r.headers;
                if r.payload.is_empty() {
                    None
                } else {
                    Some(Ok(r.payload))
                }
            }
            Ok(r) => Some(Err(result_error(&r, &self.procedure, self.timeout))),
            Err(e) => Some(Err(e)),
        }
    }

    /// Forgets the stream: the reader hands it nothing more, and a sender taken from it
    /// stops.
    fn forget(&mut self) {
        let inner = self.client.inner();
        if lock(&inner.call_streams).remove(&self.call_id).is_some() {
            inner.call_streams_open.fetch_sub(1, Ordering::Relaxed);
        }
        self.flow.close();
    }
}

/// The sending half of a streamed request ([`CallStream::take_sender`]). Dropping it
/// ends the request as [`CallSender::finish`] does.
pub struct CallSender {
    client: Client,
    call_id: u64,
    session: u64,
    flow: Arc<Flow>,
    finished: bool,
}

impl std::fmt::Debug for CallSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallSender").field("call_id", &self.call_id).field("finished", &self.finished).finish()
    }
}

impl CallSender {
    /// As [`CallStream::send`]; when the call has ended meanwhile, fails with
    /// [`ClientError::StreamEnded`] (its [`CallStream`] says how it ended).
    ///
    /// # Errors
    /// [`ClientError::StreamEnded`]; [`ClientError::Disconnected`].
    ///
    /// # Cancel safety
    /// Not cancel safe: part of `data` may have been sent.
    pub async fn send(&mut self, data: impl Into<Bytes>) -> Result<(), ClientError> {
        if self.finished {
            return Err(ClientError::StreamEnded);
        }
        let inner = self.client.inner();
        let wait = CreditWait(ClientError::StreamEnded);
        send_chunks(inner, self.session, &self.flow, self.call_id, 0, data.into(), wait).await
    }

    /// Ends the request.
    ///
    /// # Errors
    /// [`ClientError::Disconnected`] if the session that carried the call has ended.
    pub fn finish(mut self) -> Result<(), ClientError> {
        self.end()
    }

    fn end(&mut self) -> Result<(), ClientError> {
        if self.finished {
            return Err(ClientError::StreamEnded);
        }
        self.finished = true;
        let (id, empty) = (self.call_id, Bytes::new());
        push(self.client.inner(), self.session, |b| b.push_data(id, data_flags::END, &empty))
    }
}

impl Drop for CallSender {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.end();
        }
    }
}

impl futures_core::Stream for CallStream {
    type Item = Result<Bytes, ClientError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_chunk(cx)
    }
}

impl Drop for CallStream {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.forget();
        if self.outcome.is_none() {
            let id = self.call_id;
            let _ = push(self.client.inner(), self.session, |b| b.push_frame(&Frame::Cancel(id)));
        }
    }
}

impl Client {
    /// Calls `procedure` and receives its answer as a stream of chunks: the provider sends
    /// them as it produces them (a model's tokens, a file's blocks), and this client reads
    /// them at its pace (a slow reader slows the provider; nothing piles up).
    ///
    /// `payload` may be larger than the node's `max_payload`: it is then sent as a
    /// streamed request before this returns.
    ///
    /// # Errors
    /// [`ClientError::Unsupported`] when the node is older than protocol version 5;
    /// invalid name; [`ClientError::Disconnected`]; the call's errors come from
    /// [`CallStream::next`].
    pub async fn call_stream(
        &self,
        procedure: &str,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<CallStream, ClientError> {
        self.call_stream_with_headers(procedure, &Headers::new(), payload, timeout).await
    }

    /// [`Client::call_stream`] with headers.
    ///
    /// # Errors
    /// As [`Client::call_stream`].
    pub async fn call_stream_with_headers(
        &self,
        procedure: &str,
        headers: &Headers,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<CallStream, ClientError> {
        let payload = payload.into();
        if payload.len() <= self.max_payload() {
            return self.start_stream(procedure, headers, payload, call_flags::STREAM_ANSWER, timeout);
        }
        let flags = call_flags::STREAM_ANSWER | call_flags::STREAM_REQUEST;
        let mut call = self.start_stream(procedure, headers, Bytes::new(), flags, timeout)?;
        call.send(payload).await?;
        call.finish()?;
        Ok(call)
    }

    /// Opens a call whose request and answer both stream: send the request with
    /// [`CallStream::send`] and end it with [`CallStream::finish`]; read the answer with
    /// [`CallStream::next`], at the same time if the provider answers as it reads
    /// (bidirectional), or after.
    ///
    /// # Errors
    /// As [`Client::call_stream`].
    pub fn open_call(&self, procedure: &str, headers: &Headers, timeout: Duration) -> Result<CallStream, ClientError> {
        let flags = call_flags::STREAM_ANSWER | call_flags::STREAM_REQUEST;
        self.start_stream(procedure, headers, Bytes::new(), flags, timeout)
    }

    /// A call whose request is larger than `max_payload`, its answer taken in one piece
    /// (as [`Client::call`] answers).
    pub(crate) async fn call_large(
        &self,
        procedure: &str,
        headers: &Headers,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let mut call = self.start_stream(procedure, headers, Bytes::new(), call_flags::STREAM_REQUEST, timeout)?;
        call.send(payload).await?;
        call.finish()?;
        let max = self.max_payload();
        call.collect(max).await
    }

    fn start_stream(
        &self,
        procedure: &str,
        headers: &Headers,
        payload: Bytes,
        flags: u64,
        timeout: Duration,
    ) -> Result<CallStream, ClientError> {
        self.require_streams()?;
        Procedure::check(procedure)
            .map_err(|source| ClientError::InvalidProcedure { procedure: procedure.to_owned(), source })?;
        let inner = self.inner();
        let call_id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        // The request stream starts without credit (its provider grants it); the answer
        // stream with the protocol's initial credit.
        let (flow, pieces) = Flow::new(0);
        let now = Instant::now();
        let wait = timeout.saturating_add(crate::rpc::TIMEOUT_GRACE);
        let deadline = now.checked_add(wait.min(fovea_core::deadline::FAR_FUTURE)).unwrap_or(now);
        let mut session = 0;
        let mut alarm = false;
        inner.queue_if_connected(|out| {
            alarm = out.new_calls.push(call_id, tx, deadline);
            session = inner.session.load(Ordering::Relaxed);
            lock(&inner.call_streams).insert(call_id, flow.clone());
            inner.call_streams_open.fetch_add(1, Ordering::Relaxed);
            let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1);
            let call = Call {
                call_id,
                procedure: Bytes::copy_from_slice(procedure.as_bytes()),
                timeout_ms,
                headers: headers.clone(),
                payload,
                flags,
            };
            out.buf.push_frame(&Frame::Call(call));
        })?;
        if alarm {
            inner.call_alarm.notify_one();
        }
        Ok(CallStream {
            client: self.clone(),
            procedure: procedure.to_owned(),
            call_id,
            session,
            timeout,
            deadline,
            sender: (flags & call_flags::STREAM_REQUEST != 0).then(|| CallSender {
                client: self.clone(),
                call_id,
                session,
                flow: flow.clone(),
                finished: false,
            }),
            flow,
            pieces,
            result: Some(rx),
            outcome: None,
            reader: Reader::new(INITIAL_CREDIT),
            done: false,
            headers: Headers::new(),
        })
    }

    fn require_streams(&self) -> Result<(), ClientError> {
        match self.server_info() {
            Some(info) if info.version < VERSION_STREAMS => Err(ClientError::Unsupported {
                what: "streamed calls",
                node_version: info.version,
                needed: VERSION_STREAMS,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reader opens the window at once, then grants in steps as the application
    /// reads, never more than the window outstanding.
    #[test]
    fn credit_is_granted_as_the_application_reads() {
        let mut r = Reader::new(INITIAL_CREDIT);
        assert_eq!(r.grant(1000), WINDOW - INITIAL_CREDIT + 1000, "the first read opens the window");
        let mut granted = 0;
        for _ in 0..100 {
            granted += r.grant(64 * 1024);
        }
        let read = 100 * 64 * 1024;
        assert!(granted <= read && read - granted < STEP, "granted {granted} for {read} read");
        let mut r = Reader::new(0);
        assert_eq!(r.grant(0), WINDOW, "a request stream starts without credit: the reader opens it");
    }
}
