//! RPC in the SDK: providing procedures ([`Client::register`]) and calling them
//! ([`Client::call`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fovea_core::deadline::{Deadlines, FAR_FUTURE};
use fovea_core::frame::{call_flags, data_flags, Credit, Register, Respond, INITIAL_CREDIT};
use fovea_core::{ErrorCode, Frame, Headers, Procedure};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::stream::{Flow, Piece, Reader};
use crate::{lock, Client, ClientError, Inner, Out};

/// How long the SDK waits past a call's timeout for the node's own `TIMEOUT` answer before
/// giving up locally (the node's answer also cancels the request at the provider).
pub(crate) const TIMEOUT_GRACE: Duration = Duration::from_millis(100);

/// The headers of a call made without any.
static NO_HEADERS: Headers = Headers::new();

/// Longest deadline a `REQUEST` may carry as far as the SDK is concerned (one day).
const MAX_DEADLINE_MS: u64 = 86_400_000;

pub(crate) struct RegEntry {
    pub procedure: Procedure,
    /// The tool descriptor (empty: a plain procedure), sent again on reconnection.
    pub tool: Bytes,
    pub tx: mpsc::Sender<Request>,
    pub ack: Option<crate::AckSender>,
}

/// A successful call's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Headers the provider set.
    pub headers: Headers,
    /// The provider's answer.
    pub payload: Bytes,
}

/// One call to a procedure this client provides. Answer it with [`Request::respond`] or
/// [`Request::fail`]; dropping it unanswered fails the call ("dropped without an answer").
pub struct Request {
    /// The procedure called.
    pub procedure: Procedure,
    /// The caller's headers.
    pub headers: Headers,
    /// The caller's payload.
    pub payload: Bytes,
    deadline: Instant,
    req_id: u64,
    /// The session it came in on (see `Inner::session`).
    session: u64,
    /// Set when the node abandons the request (the caller cancelled or its deadline
    /// passed) or the connection is lost; made on first ask ([`Request::signal`]).
    signal: OnceLock<CancellationToken>,
    /// The connection's state (not a `Client`: an unanswered request must not keep the
    /// connection open).
    inner: Arc<Inner>,
    answered: bool,
    /// The call's `call_flags` (v5): which directions stream.
    flags: u64,
    /// The streamed side of the call, when one direction streams.
    stream: Option<Box<RequestStream>>,
}

/// A provider's side of a streamed call.
struct RequestStream {
    flow: Arc<Flow>,
    /// The request's chunks, until the handler takes them ([`Request::take_body`]).
    body: Option<RequestBody>,
}

/// The rest of a streamed request, after [`Request::payload`]: its chunks, in order
/// ([`RequestBody::next_chunk`], or as a [`futures_core::Stream`]). Taken from its
/// [`Request`] with [`Request::take_body`] to read it while the request is answered
/// (a bidirectional call).
pub struct RequestBody {
    pieces: mpsc::UnboundedReceiver<Piece>,
    reader: Reader,
    /// The request's last chunk was read (or it was lost).
    ended: bool,
    inner: Arc<Inner>,
    session: u64,
    req_id: u64,
}

impl RequestBody {
    /// The next chunk, `None` at the request's end. The caller sends no faster than this
    /// reads.
    ///
    /// # Errors
    /// [`ClientError::Cancelled`] when the call was abandoned mid-stream.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ClientError>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    fn grant(&self, bytes: u64) {
        if bytes > 0 {
            let credit = Frame::Credit(Credit { id: self.req_id, flags: 0, bytes });
            let _ = crate::stream::push(&self.inner, self.session, |b| b.push_frame(&credit));
        }
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ClientError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // The request stream starts without credit: the first read opens the window.
        if !self.reader.opened() {
            let grant = self.reader.grant(0);
            self.grant(grant);
        }
        match self.pieces.poll_recv(cx) {
            Poll::Ready(Some(Piece::Chunk(c))) => {
                let grant = self.reader.grant(c.len());
                self.grant(grant);
                Poll::Ready(Some(Ok(c)))
            }
            Poll::Ready(Some(Piece::Lost(e))) => {
                self.ended = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Piece::End) | None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl futures_core::Stream for RequestBody {
    type Item = Result<Bytes, ClientError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_chunk(cx)
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody").field("req_id", &self.req_id).field("ended", &self.ended).finish()
    }
}

impl Request {
    /// The MCP method this request serves, for a procedure registered as a resource,
    /// template or prompt (`resources/read`, `prompts/get`, `completion/complete`);
    /// `None` for a tool call or a plain call. The payload is then the method's params.
    pub fn mcp_method(&self) -> Option<crate::McpMethod> {
        self.headers.get(crate::METHOD_HEADER).and_then(crate::McpMethod::parse)
    }

    /// When the caller stops waiting. Work past it is wasted: the node discards a late
    /// answer (and counts it).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the call was abandoned: the caller cancelled it, its deadline passed, or the
    /// connection to the node was lost. An answer now is discarded.
    pub fn is_cancelled(&self) -> bool {
        self.signal().is_cancelled()
    }

    /// Resolves when the call is abandoned (see [`Request::is_cancelled`]); select on it
    /// to stop work nobody waits for.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn cancelled(&self) {
        self.signal().cancelled().await
    }

    /// [`Request::cancelled`] as a future that owns what it needs, for handlers (or other
    /// languages' bindings) that hand the request on and wait apart from it. Resolves when the
    /// call is abandoned; never if it is answered first.
    pub fn cancellation(&self) -> impl Future<Output = ()> + Send + 'static {
        self.signal().clone().cancelled_owned()
    }

    /// The request's cancellation token, made and filed in `Inner::serving` on first ask; set at
    /// once if the request was abandoned before (its entry gone, or its session over).
    fn signal(&self) -> &CancellationToken {
        self.signal.get_or_init(|| {
            let signal = CancellationToken::new();
            let mut serving = lock(&self.inner.serving);
            // The session is read under the `serving` lock: a later session's reader files
            // its requests (whose ids may repeat this one's) only after it is bumped, so
            // an entry found here is this request's.
            let filed = self.inner.session.load(Ordering::Relaxed) == self.session
                && serving.get_mut(&self.req_id).map(|slot| *slot = Some(signal.clone())).is_some();
            drop(serving);
            if !filed {
                signal.cancel();
            }
            signal
        })
    }

    /// Whether the caller streams its request: read the rest of it, after
    /// [`Request::payload`], with [`Request::next_chunk`] (or all of it with
    /// [`Request::read_body`]).
    pub fn request_streams(&self) -> bool {
        self.flags & call_flags::STREAM_REQUEST != 0
    }

    /// Whether the caller takes its answer as a stream: [`Request::send`] chunks before the
    /// final [`Request::respond`], and `respond` may be given more than the node's
    /// `max_payload`.
    pub fn answer_streams(&self) -> bool {
        self.flags & call_flags::STREAM_ANSWER != 0
    }

    /// The next chunk of a streamed request (after [`Request::payload`]), `None` at its
    /// end (at once when the request does not stream). The caller sends no faster than
    /// this reads.
    ///
    /// # Errors
    /// [`ClientError::Cancelled`] when the call was abandoned mid-stream.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ClientError>> {
        self.stream.as_mut()?.body.as_mut()?.next_chunk().await
    }

    /// Takes the rest of a streamed request (the chunks after [`Request::payload`]) to be
    /// read apart from the request, while it is answered with [`Request::send`]. `None`
    /// when the request does not stream, or was taken before.
    pub fn take_body(&mut self) -> Option<RequestBody> {
        self.stream.as_mut()?.body.take()
    }

    /// The whole request: [`Request::payload`] and, when the request streams, every chunk
    /// after it, refusing one over `max` bytes.
    ///
    /// # Errors
    /// [`ClientError::PayloadTooLarge`] past `max`; [`ClientError::Cancelled`].
    pub async fn read_body(&mut self, max: usize) -> Result<Bytes, ClientError> {
        if self.payload.len() > max {
            return Err(ClientError::PayloadTooLarge { size: self.payload.len(), max });
        }
        if !self.request_streams() {
            return Ok(self.payload.clone());
        }
        let mut body = bytes::BytesMut::from(&self.payload[..]);
        while let Some(chunk) = self.next_chunk().await {
            let chunk = chunk?;
            if body.len() + chunk.len() > max {
                return Err(ClientError::PayloadTooLarge { size: body.len() + chunk.len(), max });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// Sends `data` as the next part of a streamed answer (split into chunks, each sent
    /// once the caller has room for it: a caller that reads slowly slows this down). End
    /// the answer with [`Request::respond`] (its payload is the last part; may be empty).
    ///
    /// # Errors
    /// [`ClientError::StreamEnded`] when the caller takes one answer
    /// ([`Request::answer_streams`] is false); [`ClientError::Cancelled`] when the call was
    /// abandoned; [`ClientError::Disconnected`].
    ///
    /// # Cancel safety
    /// Not cancel safe: part of `data` may have been sent.
    pub async fn send(&mut self, data: impl Into<Bytes>) -> Result<(), ClientError> {
        let Some(s) = self.stream.as_ref().filter(|_| self.answer_streams()) else {
            return Err(ClientError::StreamEnded);
        };
        let (inner, session, req_id) = (&self.inner, self.session, self.req_id);
        let wait = crate::stream::CreditWait(ClientError::Cancelled);
        crate::stream::send_chunks(inner, session, &s.flow, req_id, data_flags::ANSWER, data.into(), wait).await
    }

    /// Sends progress or a log line to the caller, ahead of the answer. Bounded: the node
    /// passes on at most 1024 per call and drops them when the caller reads too slowly.
    pub fn notify(&self, notice: &crate::Notice) {
        if self.answered || self.is_cancelled() {
            return;
        }
        let (kind, body) = notice.to_wire();
        let mut out = lock(&self.inner.out);
        if out.connected && self.inner.session.load(Ordering::Relaxed) == self.session {
            out.buf.push_frame(&Frame::Notice(fovea_core::frame::Notice { id: self.req_id, kind, body }));
            drop(out);
            self.inner.wake.notify_one();
        }
    }

    /// Asks the caller's agent a question while handling this request (protocol 8): MCP's
    /// `elicitation/create` (a form for the user), `sampling/createMessage` (a completion
    /// from the agent's model) or `roots/list`, with its `params`. An MCP agent on any node
    /// answers (the node that serves it asks it in the agent's protocol era); the answer
    /// is the MCP result. Waits until then, or the request's deadline.
    ///
    /// # Errors
    /// [`ClientError::NotAnswered`] when the caller declined or cannot ask (a plain SDK
    /// caller, an agent without that capability), [`ClientError::Cancelled`] when the
    /// request ends first, [`ClientError::PayloadTooLarge`] for a question over the 16 KiB
    /// a `NOTICE` carries, [`ClientError::Unsupported`] below protocol 8.
    pub async fn ask(&self, method: &str, params: serde_json::Value) -> Result<serde_json::Value, ClientError> {
        self.ask_question(None, method, params).await
    }

    /// [`Request::ask`] with a `key` that names the question the same way each time the
    /// call runs (1 to 64 bytes, unique among the questions of one run).
    ///
    /// An MCP 2026-07-28 agent is asked through an input-required result: the node ends
    /// the agent's request with the question, the agent retries it with the answer, and the
    /// call runs again; the answer then comes back at once to the question of the same key.
    /// Until then the question fails with [`ClientError::NotAnswered`] whose
    /// [`ClientError::is_input_required`] holds: end the run (fail the request). Unkeyed
    /// questions are named by their order in the run, which holds for handlers that ask
    /// the same questions in the same order each time.
    ///
    /// # Errors
    /// As [`Request::ask`], and [`ClientError::InvalidQuestionKey`] for a key out of bounds.
    pub async fn ask_keyed(
        &self,
        key: &str,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        if !(1..=fovea_core::tool::MAX_QUESTION_KEY_LEN).contains(&key.len()) {
            return Err(ClientError::InvalidQuestionKey(key.to_owned()));
        }
        self.ask_question(Some(key.to_owned()), method, params).await
    }

    async fn ask_question(
        &self,
        key: Option<String>,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let node = lock(&self.inner.info).as_ref().map_or(u64::MAX, |i| i.version);
        if node < fovea_core::frame::VERSION_QUESTIONS {
            let needed = fovea_core::frame::VERSION_QUESTIONS;
            return Err(ClientError::Unsupported { what: "questions to the agent", node_version: node, needed });
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (kind, body) = crate::Notice::Question { id, key, method: method.to_owned(), params }.to_wire();
        if body.len() > fovea_core::frame::MAX_NOTICE_LEN {
            return Err(ClientError::PayloadTooLarge { size: body.len(), max: fovea_core::frame::MAX_NOTICE_LEN });
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.questions).insert((self.req_id, id), tx);
        /// Forgets the question however the wait ends.
        struct Forget<'a>(&'a Inner, u64, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                lock(&self.0.questions).remove(&(self.1, self.2));
            }
        }
        let _forget = Forget(&self.inner, self.req_id, id);
        {
            let mut out = lock(&self.inner.out);
            if !out.connected || self.inner.session.load(Ordering::Relaxed) != self.session {
                return Err(ClientError::Cancelled);
            }
            out.buf.push_frame(&Frame::Notice(fovea_core::frame::Notice { id: self.req_id, kind, body }));
        }
        self.inner.wake.notify_one();
        tokio::select! {
            answer = rx => match answer {
                Ok(Ok(result)) => Ok(result),
                Ok(Err((code, message))) => Err(ClientError::NotAnswered { code, message }),
                Err(_) => Err(ClientError::Cancelled),
            },
            () = tokio::time::sleep_until(self.deadline) => Err(ClientError::Cancelled),
            () = self.cancelled() => Err(ClientError::Cancelled),
        }
    }

    /// Answers with `payload`.
    pub fn respond(self, payload: impl Into<Bytes>) {
        self.respond_with_headers(Headers::new(), payload)
    }

    /// Answers with headers and `payload`.
    ///
    /// A `payload` over the node's `max_payload` is streamed to a caller that takes a
    /// streamed answer ([`Request::answer_streams`]), from a task of the client's runtime;
    /// a caller that takes one answer gets an error saying so instead.
    pub fn respond_with_headers(mut self, headers: Headers, payload: impl Into<Bytes>) {
        let payload = payload.into();
        let max = self.inner.max_payload.load(Ordering::Relaxed);
        if payload.len() <= max {
            return self.answer(ErrorCode::NoError, headers, payload);
        }
        if !self.answer_streams() {
            let message = format!(
                "the answer is {} bytes, over the node's max_payload of {max}, and the caller takes one answer: \
                 call with a streamed answer (call_stream) to receive it",
                payload.len()
            );
            return self.answer(ErrorCode::ApplicationError, Headers::new(), Bytes::from(message.into_bytes()));
        }
        let runtime = self.inner.runtime.clone();
        runtime.spawn(async move {
            if self.send(payload).await.is_ok() {
                self.answer(ErrorCode::NoError, headers, Bytes::new());
            } else {
                // Abandoned or disconnected: nobody is waiting for an answer.
                self.abandon();
            }
        });
    }

    /// Fails the call with `message` (code `APPLICATION_ERROR`, 0x1000).
    pub fn fail(self, message: &str) {
        self.fail_with_code(ErrorCode::ApplicationError.to_u64(), message)
    }

    /// Fails the call with an application code of your own, from `0x1000` up (smaller codes
    /// are the node's and become 0x1000), and `message`.
    pub fn fail_with_code(mut self, code: u64, message: &str) {
        let code = ErrorCode::from_u64(code.max(ErrorCode::ApplicationError.to_u64()));
        self.answer(code, Headers::new(), Bytes::copy_from_slice(message.as_bytes()));
    }

    /// Gives up without answering, for work that passed [`Request::deadline`]: the node
    /// has answered (or is about to answer) the caller with `TIMEOUT`, and an answer now
    /// would only be discarded. Before the deadline, prefer [`Request::fail`]: the caller
    /// would otherwise wait for its timeout.
    pub fn abandon(mut self) {
        self.answered = true;
    }

    fn answer(&mut self, code: ErrorCode, headers: Headers, payload: Bytes) {
        self.answered = true;
        send_respond(&self.inner, self.session, self.req_id, code, headers, payload);
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if !self.answered {
            let msg = Bytes::from_static(b"the provider dropped the request without an answer");
            self.answer(ErrorCode::ApplicationError, Headers::new(), msg);
        }
        // A later session's table may hold another request under the same id (read under
        // the lock, as in `signal`).
        let mut serving = lock(&self.inner.serving);
        if self.inner.session.load(Ordering::Relaxed) == self.session {
            serving.remove(&self.req_id);
            drop(serving);
            if self.stream.is_some() {
                lock(&self.inner.request_streams).remove(&self.req_id);
            }
        }
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("procedure", &self.procedure).field("payload_len", &self.payload.len()).finish()
    }
}

/// A request being served, as `Inner::serving` files it: its cancellation token, made only
/// when the handler asks ([`Request::cancelled`], [`Request::is_cancelled`]). Most requests
/// are answered without asking, and a token made for every one (an allocation, a clone,
/// two drops under its lock) was ~400 instructions of a provider's work per call
/// (`scripts/profile.sh instructions rpc`).
pub(crate) type Serving = Option<CancellationToken>;

/// A stream of the calls to one procedure this client provides. Dropping it unregisters.
pub struct Registration {
    rid: u64,
    procedure: Procedure,
    rx: mpsc::Receiver<Request>,
    client: Client,
}

impl Registration {
    /// The next call, or `None` when the registration has ended.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn next(&mut self) -> Option<Request> {
        self.rx.recv().await
    }

    /// The procedure provided.
    pub fn procedure(&self) -> &Procedure {
        &self.procedure
    }
}

impl futures_core::Stream for Registration {
    type Item = Request;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Request>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let inner = self.client.inner();
        let mut out = lock(&inner.out);
        lock(&inner.regs).remove(&self.rid);
        out.buf.push_frame(&Frame::Unreg(self.rid));
        drop(out);
        inner.wake.notify_one();
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration").field("procedure", &self.procedure).finish()
    }
}

/// Forgets a call's notice channel when the call ends, however it ends.
struct RemoveSink<'a> {
    inner: &'a Inner,
    call_id: u64,
}

impl Drop for RemoveSink<'_> {
    fn drop(&mut self) {
        lock(&self.inner.notice_sinks).remove(&self.call_id);
    }
}

/// Sends `CANCEL` for a call whose future is dropped before its result arrives, while the
/// session that carried the call lasts (a later session's node never saw it). A result
/// that raced the cancel is dropped with the call's channel; the node ignores a `CANCEL`
/// for a call it has finished.
struct CancelOnDrop<'a> {
    inner: &'a Inner,
    call_id: u64,
    /// The session the call went out on.
    session: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut out = lock(&self.inner.out);
        if out.connected && self.inner.session.load(Ordering::Relaxed) == self.session {
            out.buf.push_frame(&Frame::Cancel(self.call_id));
            drop(out);
            self.inner.wake.notify_one();
        }
    }
}

/// Where a call's result goes.
type ResultSender = oneshot::Sender<fovea_core::frame::CallResult>;

/// Fewest entries at which the call tables sweep out calls whose caller has gone.
const SWEEP_MIN: usize = 1024;

/// A call waiting for its result: who waits, and until when at most (its local deadline).
type Waiting = (u64, ResultSender, Instant);

/// Calls queued but not yet seen by the session's reader: the caller adds its own under the
/// `out` lock that it takes anyway to queue the `CALL`, and the reader takes the whole
/// list when a result names a call it does not know.
///
/// Bounded: a caller that finds the list at its sweep mark first drops the entries whose
/// caller has given up (timed out, dropped), and the mark doubles from what is left: at
/// most about twice the calls in flight, and [`SWEEP_MIN`].
#[derive(Default)]
pub(crate) struct NewCalls {
    calls: Vec<Waiting>,
    sweep_at: usize,
    /// When the call watchdog ([`expire_calls`]) wakes next at the latest: no call, queued
    /// here or in [`Calls`], has an earlier deadline. `None`: it waits to be told.
    alarm: Option<Instant>,
}

impl NewCalls {
    /// Queues a call; returns whether its deadline comes before the watchdog's alarm, so
    /// that the caller must wake the watchdog (`Inner::call_alarm`) once it has let go of
    /// the `out` lock. With equal timeouts, only the first call in flight does.
    #[must_use]
    pub(crate) fn push(&mut self, call_id: u64, tx: ResultSender, deadline: Instant) -> bool {
        if self.calls.len() >= self.sweep_at.max(SWEEP_MIN) {
            self.calls.retain(|(_, tx, _)| !tx.is_closed());
            self.sweep_at = self.calls.len() * 2;
        }
        self.calls.push((call_id, tx, deadline));
        let earlier = self.alarm.is_none_or(|at| deadline < at);
        if earlier {
            self.alarm = Some(deadline);
        }
        earlier
    }

    /// Forgets every call: their callers see the session end (`Disconnected`).
    pub(crate) fn clear(&mut self) {
        self.calls.clear();
    }
}

/// The table of calls sent in the current session and waiting for a result
/// (`Inner::calls`): the session's reader completes them, the call watchdog
/// ([`expire_calls`]) ends those whose deadline passes, and the session's end ends the rest
/// (`Disconnected`).
///
/// Why callers do not insert here: with 64 callers on a two-worker runtime, the callers'
/// inserts (nested in the `out` lock) and the reader's removals contended on one map, and
/// every contended lock that sleeps is a context switch, taken while the caller held
/// `out`, so every other caller and the writer waited too (`fovea bench rpc --callers 64`:
/// 145K → 174K calls/s, p99 1.05 → 0.65 ms; BENCHMARKS.md, "Changes measured in the ninth
/// session"). Callers queue in [`NewCalls`] under the `out` lock they take anyway; this
/// table takes them (one lock of `out`) when a result names a call it does not know yet.
/// Its own lock is the reader's, but for the watchdog's rare turns. Lock order: `calls`
/// before `out`.
///
/// Why a watchdog and not a timer per call: `tokio::time::timeout` filed and unfiled each
/// call in the runtime's timer wheel, ~700 of the ~10 600 instructions a call cost the
/// load generator (`scripts/profile.sh instructions rpc --callers 64`). Here a deadline
/// is one push on a heap ([`Deadlines`]), never taken back.
///
/// Bounded as [`NewCalls`]: at its sweep mark the table drops the calls whose caller has
/// given up; the heap as [`Deadlines`] says (about twice the table, rebuilt past that).
#[derive(Default)]
pub(crate) struct Calls {
    map: crate::IdMap<(ResultSender, Instant)>,
    deadlines: Deadlines<Instant, u64>,
    /// Taken from `out` in exchange for this one, so neither side reallocates.
    spare: Vec<Waiting>,
    sweep_at: usize,
}

impl Calls {
    /// Hands `r` to its caller, if the call is still waiting.
    pub(crate) fn complete(&mut self, inner: &Inner, r: fovea_core::frame::CallResult) {
        let tx = match self.map.remove(&r.call_id) {
            Some((tx, _)) => tx,
            None => {
                self.adopt(&mut lock(&inner.out));
                match self.map.remove(&r.call_id) {
                    Some((tx, _)) => tx,
                    // Given up by its caller (a late answer), expired, or from another
                    // session.
                    None => return,
                }
            }
        };
        crate::stream::call_ended(inner, r.call_id);
        let _ = tx.send(r);
    }

    /// Moves the calls queued since the last look into the table.
    fn adopt(&mut self, out: &mut Out) {
        std::mem::swap(&mut out.new_calls.calls, &mut self.spare);
        for (id, tx, deadline) in self.spare.drain(..) {
            self.map.insert(id, (tx, deadline));
            self.deadlines.push(deadline, id);
        }
        if self.map.len() >= self.sweep_at.max(SWEEP_MIN) {
            self.map.retain(|_, (tx, _)| !tx.is_closed());
            self.sweep_at = self.map.len() * 2;
        }
        if self.deadlines.needs_rebuild(self.map.len()) {
            self.deadlines.rebuild(self.map.iter().map(|(id, (_, at))| (*at, *id)));
        }
    }

    /// The watchdog's turn: takes the queued calls, moves the calls due by `now` into
    /// `expired` (their callers wake as those senders drop), and sets the alarm to the
    /// earliest deadline left, which it returns.
    fn expire(&mut self, out: &mut Out, now: Instant, expired: &mut Vec<ResultSender>) -> Option<Instant> {
        self.adopt(out);
        loop {
            let map = &self.map;
            let due = self.deadlines.pop_expired(now, |id, at| map.get(&id).is_some_and(|(_, d)| *d == at));
            let Some(id) = due else { break };
            if let Some((tx, _)) = self.map.remove(&id) {
                expired.push(tx);
            }
        }
        let map = &self.map;
        let next = self.deadlines.next_live(|id, at| map.get(&id).is_some_and(|(_, d)| *d == at));
        out.new_calls.alarm = next;
        next
    }

    /// Ends every call (the session is over): their callers see `Disconnected`.
    pub(crate) fn take_all(&mut self) -> Vec<ResultSender> {
        self.deadlines.clear();
        self.map.drain().map(|(_, (tx, _))| tx).collect()
    }
}

/// The client's call watchdog: ends the calls whose deadline (timeout plus
/// [`TIMEOUT_GRACE`]) passes without an answer, as when the node cannot answer or this
/// client's reader is held up by a subscription the application does not read. Runs for
/// the life of the connection driver, which aborts it.
///
/// Sleeps until the alarm it sets in [`NewCalls`]; a caller with an earlier deadline wakes
/// it through `Inner::call_alarm` (a stored permit, so a wake between the two is kept).
/// Under steady load it wakes about once per timeout: the alarm is the oldest call's.
pub(crate) async fn expire_calls(inner: Arc<Inner>) {
    let mut expired = Vec::new();
    loop {
        let next = {
            let mut calls = lock(&inner.calls);
            calls.expire(&mut lock(&inner.out), Instant::now(), &mut expired)
        };
        // Dropped outside the locks: each wakes a caller that takes `out` to cancel.
        expired.clear();
        let alarm = inner.call_alarm.notified();
        match next {
            Some(at) => {
                tokio::select! {
                    () = alarm => {}
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            None => alarm.await,
        }
    }
}

impl Client {
    /// Provides `procedure`: calls to it arrive on the returned [`Registration`].
    ///
    /// Several clients may register the same procedure; the node balances calls across
    /// them by power of two choices on their requests in flight. When connected, returns
    /// once the node has confirmed the registration; while reconnecting, at once.
    ///
    /// # Errors
    /// Invalid name; [`ClientError::Refused`] (too many registrations, permission denied);
    /// [`ClientError::ClientClosed`].
    pub async fn register(&self, procedure: &str) -> Result<Registration, ClientError> {
        self.register_with(procedure, Bytes::new()).await
    }

    pub(crate) async fn register_with(&self, procedure: &str, tool: Bytes) -> Result<Registration, ClientError> {
        let parsed = parse_procedure(procedure)?;
        let inner = self.inner();
        let rid = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(inner.opts.subscription_capacity);
        let frame = Frame::Reg(Register { rid, procedure: parsed.to_bytes(), tool: tool.clone() });
        let entry = |ack| RegEntry { procedure: parsed.clone(), tool, tx, ack };
        let ack = inner.open_acked(&inner.regs, rid, entry, &frame)?;
        // Built before waiting: if the node refuses, dropping it sends the UNREG.
        let registration = Registration { rid, procedure: parsed, rx, client: self.clone() };
        crate::acknowledged(ack).await?;
        Ok(registration)
    }

    /// Calls `procedure` with `payload` and waits at most `timeout` for the answer.
    ///
    /// The timeout travels with the call: the provider sees it as
    /// [`Request::deadline`], and the node answers `TIMEOUT` when it passes.
    ///
    /// # Errors
    /// [`ClientError::NoProvider`] at once when nobody provides it;
    /// [`ClientError::Timeout`]; [`ClientError::Remote`] with the provider's code and
    /// message; [`ClientError::ProviderDisconnected`]; [`ClientError::Busy`];
    /// [`ClientError::Disconnected`] if the connection is lost (the call may or may not
    /// have run); invalid name or payload.
    ///
    /// # Cancel safety
    /// Dropping the future cancels the call: the node is told, and the provider gets a
    /// `CANCEL` for the request.
    //
    // Not `async fn`: these hand back `call_inner`'s future itself, rather than a future
    // holding it (each layer was a copy of its state per call and a poll through it).
    pub fn call<'a>(
        &'a self,
        procedure: &'a str,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response, ClientError>> + Send + 'a {
        self.call_inner(procedure, &NO_HEADERS, payload.into(), timeout, None, 0)
    }

    /// [`Client::call`] with headers.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn call_with_headers<'a>(
        &'a self,
        procedure: &'a str,
        headers: &'a Headers,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response, ClientError>> + Send + 'a {
        self.call_inner(procedure, headers, payload.into(), timeout, None, 0)
    }

    /// [`Client::call_with_headers`] for a call that may run twice: if its provider
    /// disconnects before answering, the node sends it once more, to another provider,
    /// within the same timeout (instead of failing it with
    /// [`ClientError::ProviderDisconnected`]). Only for calls whose effect is the same
    /// when they run twice (a read, a put of a whole value); a request larger than
    /// `max_payload` is not retried.
    ///
    /// # Errors
    /// As [`Client::call`]; [`ClientError::Unsupported`] when the node is older than
    /// protocol version 5.
    pub async fn call_idempotent(
        &self,
        procedure: &str,
        headers: &Headers,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        if let Some(info) = self.server_info().filter(|i| i.version < fovea_core::frame::VERSION_STREAMS) {
            return Err(ClientError::Unsupported {
                what: "idempotent calls",
                node_version: info.version,
                needed: fovea_core::frame::VERSION_STREAMS,
            });
        }
        self.call_inner(procedure, headers, payload.into(), timeout, None, call_flags::IDEMPOTENT).await
    }

    pub(crate) async fn call_inner(
        &self,
        procedure: &str,
        headers: &Headers,
        payload: Bytes,
        timeout: Duration,
        notices: Option<mpsc::Sender<crate::Notice>>,
        flags: u64,
    ) -> Result<Response, ClientError> {
        let call_id = self.inner().next_id.fetch_add(1, Ordering::Relaxed);
        self.call_as(call_id, procedure, headers, payload, timeout, notices, flags).await
    }

    /// [`Client::call_inner`] with the call id chosen by the caller (fresh from `next_id`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn call_as(
        &self,
        call_id: u64,
        procedure: &str,
        headers: &Headers,
        payload: Bytes,
        timeout: Duration,
        notices: Option<mpsc::Sender<crate::Notice>>,
        flags: u64,
    ) -> Result<Response, ClientError> {
        // Validated in place and encoded from the caller's string: no copy of the name.
        Procedure::check(procedure)
            .map_err(|source| ClientError::InvalidProcedure { procedure: procedure.to_owned(), source })?;
        let max = self.max_payload();
        if payload.len() > max {
            // Boxed: the rare large call must not grow every call's future.
            return Box::pin(self.call_large(procedure, headers, payload, timeout)).await;
        }
        let inner = self.inner();
        let (tx, rx) = oneshot::channel();
        let wants_notices = notices.is_some();
        let mut session = 0;
        // The node's TIMEOUT normally ends the call; this deadline is the fallback, kept by
        // the client's call watchdog (`expire_calls`) rather than a timer per call.
        let now = Instant::now();
        let wait = timeout.saturating_add(TIMEOUT_GRACE);
        // Capped as the node caps its own: the sum fits any monotonic clock in practice;
        // were it ever to overflow, the call would time out at once (an answer, not a hang).
        let deadline = now.checked_add(wait.min(FAR_FUTURE)).unwrap_or(now);
        let mut alarm = false;
        inner.queue_if_connected(|out| {
            alarm = out.new_calls.push(call_id, tx, deadline);
            session = inner.session.load(Ordering::Relaxed);
            if let Some(n) = notices {
                lock(&inner.notice_sinks).insert(call_id, n);
            }
            let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1);
            if flags == 0 {
                out.buf.push_call(call_id, procedure.as_bytes(), timeout_ms, headers, &payload);
            } else {
                let procedure = Bytes::copy_from_slice(procedure.as_bytes());
                let headers = headers.clone();
                let payload = payload.clone();
                let call = fovea_core::frame::Call { call_id, procedure, timeout_ms, headers, payload, flags };
                out.buf.push_frame(&Frame::Call(call));
            }
        })?;
        if alarm {
            inner.call_alarm.notify_one();
        }
        // Only calls that asked for notices have a sink to forget: plain calls take no lock.
        let _sink = wants_notices.then_some(RemoveSink { inner, call_id });
        let mut guard = CancelOnDrop { inner, call_id, session, armed: true };
        let result = match rx.await {
            Ok(r) => r,
            // The call's sender was dropped: by the watchdog at the deadline (the guard
            // cancels the call at the node as it drops), or with the session.
            Err(_) if inner.shutdown.is_cancelled() => {
                guard.armed = false;
                return Err(ClientError::ClientClosed);
            }
            Err(_) if Instant::now() >= deadline => return Err(ClientError::Timeout(timeout)),
            Err(_) => {
                guard.armed = false;
                return Err(ClientError::Disconnected);
            }
        };
        guard.armed = false;
        let message = || String::from_utf8_lossy(&result.payload).into_owned();
        match result.code {
            ErrorCode::NoError => Ok(Response { headers: result.headers, payload: result.payload }),
            ErrorCode::NoProvider => Err(ClientError::NoProvider(procedure.to_owned())),
            ErrorCode::Timeout => Err(ClientError::Timeout(timeout)),
            ErrorCode::ProviderDisconnected => Err(ClientError::ProviderDisconnected),
            ErrorCode::Busy => Err(ClientError::Busy(message())),
            code if code.is_application() => Err(ClientError::Remote { code: code.to_u64(), message: message() }),
            code => Err(ClientError::Refused { code, message: message() }),
        }
    }
}

pub(crate) fn parse_procedure(name: &str) -> Result<Procedure, ClientError> {
    Procedure::new(name).map_err(|source| ClientError::InvalidProcedure { procedure: name.to_owned(), source })
}

/// Hands a `REQUEST` to its registration; waits (flow control) when the application is
/// behind.
pub(crate) async fn dispatch_request(inner: &Arc<Inner>, q: fovea_core::frame::Request) {
    if let Some((tx, r)) = try_dispatch_request(inner, q, Instant::now()) {
        // Flow control: stop reading until the application takes a request. If the
        // registration ends meanwhile, the request comes back and its drop fails it.
        let _ = tx.send(r).await;
    }
}

/// [`dispatch_request`] without the wait: returns the request and its registration's
/// queue when that queue is full, for the caller to wait on. Synchronous so that the
/// reader's common path builds no future for it. `now` is when the request was read (the
/// reader reads the clock once for all the requests of one read: `clock_gettime` was 2.7%
/// of all samples in BENCHMARKS.md's fifteenth-session profile of RPC).
pub(crate) fn try_dispatch_request(
    inner: &Arc<Inner>,
    q: fovea_core::frame::Request,
    now: Instant,
) -> Option<(mpsc::Sender<Request>, Request)> {
    enum Next {
        Done,
        Wait(mpsc::Sender<Request>, Request),
        Fail,
    }
    let req_id = q.req_id;
    // Read on the session's own reader, so this is the session the request came in on.
    let session = inner.session.load(Ordering::Relaxed);
    // Failing a request takes the `out` lock, which comes before `regs` in the lock order:
    // so it happens after this block.
    let next = {
        let regs = lock(&inner.regs);
        match regs.get(&q.rid) {
            // Unregistered meanwhile: fail it rather than let the caller wait.
            None => Next::Fail,
            Some(entry) => {
                // No token yet: most handlers answer without asking for one.
                lock(&inner.serving).insert(req_id, None);
                // A streamed call's side, filed before the reader reads on (its chunks and
                // credit come next).
                let stream = (q.flags != 0).then(|| {
                    let credit = if q.flags & call_flags::STREAM_ANSWER != 0 { INITIAL_CREDIT } else { 0 };
                    let (flow, pieces) = Flow::new(credit);
                    lock(&inner.request_streams).insert(req_id, flow.clone());
                    let body = (q.flags & call_flags::STREAM_REQUEST != 0).then(|| RequestBody {
                        pieces,
                        reader: Reader::new(0),
                        ended: false,
                        inner: inner.clone(),
                        session,
                        req_id,
                    });
                    Box::new(RequestStream { flow, body })
                });
                let request = Request {
                    procedure: entry.procedure.clone(),
                    headers: q.headers,
                    payload: q.payload,
                    // The node's value, clamped: a hostile or buggy peer must not be able
                    // to overflow the clock arithmetic.
                    deadline: now + Duration::from_millis(q.timeout_ms.min(MAX_DEADLINE_MS)),
                    req_id,
                    session,
                    signal: OnceLock::new(),
                    inner: inner.clone(),
                    answered: false,
                    flags: q.flags,
                    stream,
                };
                match entry.tx.try_send(request) {
                    Ok(()) => Next::Done,
                    Err(TrySendError::Full(r)) => Next::Wait(entry.tx.clone(), r),
                    Err(TrySendError::Closed(mut r)) => {
                        r.answered = true;
                        Next::Fail
                    }
                }
            }
        }
    };
    match next {
        Next::Done => None,
        Next::Wait(tx, r) => Some((tx, r)),
        Next::Fail => {
            send_respond(
                inner,
                session,
                req_id,
                ErrorCode::ApplicationError,
                Headers::new(),
                Bytes::from_static(b"the provider unregistered the procedure"),
            );
            None
        }
    }
}

/// Queues a `RESPOND` for request `req_id` of `session`; dropped if that session has ended
/// (the node has already failed the call with `PROVIDER_DISCONNECTED`, and the id may now
/// name another call).
fn send_respond(inner: &Inner, session: u64, req_id: u64, code: ErrorCode, headers: Headers, payload: Bytes) {
    let mut out = lock(&inner.out);
    if !out.connected || inner.session.load(Ordering::Relaxed) != session {
        return;
    }
    out.buf.push_frame(&Frame::Respond(Respond { req_id, code, headers, payload }));
    drop(out);
    inner.wake.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls whose callers gave up (receiver dropped) do not pile up in the list a
    /// session's reader has not looked at yet, however many are made.
    #[test]
    fn new_calls_drop_abandoned_entries_at_the_sweep_mark() {
        let mut new = NewCalls::default();
        let mut live = Vec::new();
        for id in 0..20_000u64 {
            let (tx, rx) = oneshot::channel();
            let _ = new.push(id, tx, Instant::now() + Duration::from_secs(10));
            // One caller in a hundred still waits; the rest have timed out.
            if id % 100 == 0 {
                live.push(rx);
            }
        }
        assert!(new.calls.len() <= SWEEP_MIN + 2 * live.len(), "{} entries kept", new.calls.len());
        // The waiting callers' entries survive every sweep.
        for (i, _) in live.iter().enumerate() {
            let id = i as u64 * 100;
            assert!(new.calls.iter().any(|(c, _, _)| *c == id), "call {id} lost");
        }
        new.clear();
        assert!(new.calls.is_empty());
    }

    /// The watchdog is woken only for a deadline earlier than its alarm, ends exactly the
    /// calls past their deadline, and re-arms to the earliest call still waiting (not to a
    /// call answered meanwhile).
    #[test]
    fn the_watchdog_alarm_follows_the_earliest_waiting_call() {
        let mut out =
            Out { buf: fovea_core::OutBuf::new(), connected: true, queued: Vec::new(), new_calls: NewCalls::default() };
        let mut calls = Calls::default();
        let t = Instant::now();
        let s = Duration::from_secs;
        let rx = std::cell::RefCell::new(Vec::new());
        let call = |out: &mut Out, id: u64, secs: u64| {
            let (tx, r) = oneshot::channel();
            rx.borrow_mut().push(r);
            out.new_calls.push(id, tx, t + s(secs))
        };
        assert!(call(&mut out, 1, 10), "the first call sets the alarm");
        assert!(call(&mut out, 2, 5), "an earlier deadline wakes the watchdog");
        assert!(!call(&mut out, 3, 20), "a later one does not");
        let mut expired = Vec::new();
        assert_eq!(calls.expire(&mut out, t, &mut expired), Some(t + s(5)));
        assert!(expired.is_empty());
        // Call 2 is answered.
        assert!(calls.map.remove(&2).is_some());
        assert_eq!(calls.expire(&mut out, t + s(6), &mut expired), Some(t + s(10)));
        assert!(expired.is_empty(), "an answered call never expires");
        assert_eq!(calls.expire(&mut out, t + s(11), &mut expired), Some(t + s(20)));
        assert_eq!(expired.len(), 1);
        expired.clear();
        let mut waiting = rx.borrow_mut();
        let closed = Err(oneshot::error::TryRecvError::Closed);
        assert_eq!(waiting[0].try_recv().map(|_| ()), closed, "call 1 ended (its sender dropped)");
        assert!(waiting[2].is_empty() && !waiting[2].is_terminated(), "call 3 still waits");
        drop(waiting);
        assert!(!call(&mut out, 4, 30), "the alarm is call 3's");
        assert_eq!(calls.expire(&mut out, t + s(40), &mut expired), None);
        assert_eq!(expired.len(), 2);
        assert!(calls.map.is_empty());
        assert!(call(&mut out, 5, 50), "nothing armed: the next call wakes the watchdog");
    }
}
