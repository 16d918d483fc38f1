//! Calls in flight: who asked, who answers, and what happens when either side goes away or
//! the deadline passes.
//!
//! A call never passes through a central task. The caller's connection task picks a
//! provider and queues the `REQUEST` on the provider's connection; the provider's task
//! queues the `RESULT` on the caller's connection. Two tables, one per side, record the
//! call while it is open:
//!
//! ```text
//!  caller Handle.calls:   call_id → (provider Handle, req_id, deadline timer)
//!  provider Handle.serving: req_id → (caller Handle, call_id)
//! ```
//!
//! Rule: whoever removes the call from the *caller's* table answers the caller (with the
//! response, `TIMEOUT` or `PROVIDER_DISCONNECTED`); anyone who finds it gone stays silent
//! and counts a late response. Locks: only one of these tables is ever held at a time.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::fast::RandomState;
use fovea_core::deadline::{Deadlines, FAR_FUTURE};
use fovea_core::frame::{call_flags, data_flags, Call, CallResult, Credit, Notice, Request, MAX_CREDIT};
use fovea_core::{ErrorCode, Frame, Headers};
use tokio::time::Sleep;

pub(crate) mod fanout;
pub(crate) mod outbound;

use outbound::Outbound;

use crate::sync::lock;

/// The handle of one party that sends and receives through the node (a client connection,
/// a mesh link, the MCP front end's in-process caller): everything of it that other
/// parties' tasks touch, namely its outbound queue, the calls it made and the requests it
/// is serving.
pub(crate) struct Handle {
    pub out: Outbound,
    /// Where answers to its calls go when not to `out` (see [`Answers`]).
    direct: Option<Box<dyn Answers>>,
    calls: Mutex<Calls>,
    serving: Mutex<HashMap<u64, Serving, RandomState>>,
    /// `serving.len()`, readable without the lock (for balancing).
    serving_len: AtomicUsize,
    next_req: AtomicU64,
    /// Largest answer payload this connection may receive (the `max_payload` its
    /// `WELCOME` announced); a larger answer fails the call with `PAYLOAD_TOO_LARGE`.
    max_answer: usize,
    /// A link to another node, as a provider: requests sent to it are kept until answered,
    /// so that one the node did not serve (`NO_PROVIDER`: its provider went away) can go
    /// to another provider ([`Handle::take_unserved`]). Clients' handles keep nothing.
    keeps_requests: bool,
    /// The protocol version its peer speaks (every link: this node's): from 5 it may be
    /// sent `DATA`, `CREDIT` and `REQUEST`s with flags, from 6 streamed messages.
    version: u64,
    /// Streamed messages it publishes and receives ([`fanout`]).
    messages: Mutex<fanout::Messages>,
    /// A task watches its published streams for stalled receivers ([`fanout::watch_stalls`]).
    watching: AtomicBool,
    /// Most bytes of chunks one stream it sends may carry (the node's `max_stream_bytes`):
    /// past it the stream ends with `PAYLOAD_TOO_LARGE`.
    max_stream: u64,
}

/// A request sent to another node, kept so that it can be sent elsewhere if that node
/// did not serve it.
pub(crate) struct Unserved {
    /// The registration id it was sent under (the link's `BIND` says what it names).
    pub rid: u64,
    pub headers: Headers,
    pub payload: Bytes,
    /// The caller's deadline.
    pub deadline: Instant,
    /// The call's flags (`IDEMPOTENT` among them when it may be sent again after its
    /// provider is lost).
    pub flags: u64,
}

/// An idempotent call whose provider went away before answering, taken back from both
/// tables to be sent to another provider ([`Handle::abandon_all`]).
pub(crate) struct Retry {
    pub caller: Arc<Handle>,
    pub call_id: u64,
    pub request: Box<Unserved>,
}

/// What [`Handle::abandon_all`] left to do.
#[derive(Default)]
pub(crate) struct Abandoned {
    /// Calls of others answered `PROVIDER_DISCONNECTED`.
    pub failed: usize,
    /// Idempotent calls to send once more, to another provider; nobody was answered.
    pub retry: Vec<Retry>,
}

/// The caller side: calls made by this connection.
///
/// Keys are the caller's own call ids, so the map's hasher is seeded per map (foldhash,
/// as the trie's): a client choosing colliding ids needs the seed. SipHash, the standard
/// one, would be most of a call's map cost over its five look-ups.
#[derive(Default)]
struct Calls {
    map: HashMap<u64, InFlight, RandomState>,
    /// Every deadline of `map`, and ended calls' until their deadline passes or a rebuild
    /// drops them (bound: twice `map`'s bound plus
    /// [`fovea_core::deadline::REBUILD_SLACK`]).
    deadlines: Deadlines<Instant, u64>,
    /// Fires at `armed`; made by the connection task's first wait for a deadline (most
    /// connections, subscribers and providers, never make one) and kept. Boxed: a
    /// `Sleep` is ~100 bytes that an idle connection should not carry inline.
    timer: Option<Pin<Box<Sleep>>>,
    /// The deadline `timer` is set to while the task waits on it.
    armed: Option<Instant>,
    /// The waiting task, woken when a call brings a deadline earlier than `armed` (calls
    /// may start from other tasks: remote providers are found by a spawned look-up).
    waiter: Option<Waker>,
}

struct InFlight {
    provider: Arc<Handle>,
    req_id: u64,
    /// The call's [`call_flags`] as its provider got them.
    flags: u64,
    /// Request stream: bytes of chunks the caller may still send (granted by the
    /// provider's `CREDIT`s, less what it sent), and whether it sent its last.
    request_credit: u64,
    request_ended: bool,
    /// Bytes of request chunks passed on (bounded by `max_stream`).
    request_sent: u64,
    /// When the node received the call (for the latency histogram).
    started: Instant,
    /// `started` + the call's timeout; its filing in [`Calls::deadlines`] carries it too.
    deadline: Instant,
}

/// The provider side: a request this connection is handling.
struct Serving {
    caller: Arc<Handle>,
    call_id: u64,
    /// The call's [`call_flags`] as this provider got them.
    flags: u64,
    /// Answer stream: bytes of chunks the provider may still send, and those it sent.
    answer_credit: u64,
    answer_sent: u64,
    /// `NOTICE`s passed on for this request so far.
    notices: u32,
    /// The request itself, on a handle that keeps requests (a link) or for an idempotent
    /// call; boxed so that the other entries stay small.
    kept: Option<Box<Unserved>>,
    /// A chunk of the answer has been passed on: the call can no longer run again.
    answered_some: bool,
}

/// Most `NOTICE`s passed on for one call; later ones are dropped and counted. Progress
/// and logs are status for a person or an agent to follow, and a provider looping on
/// them must not turn one call into an unbounded stream.
pub(crate) const MAX_NOTICES_PER_CALL: u32 = 1024;

/// What became of a stream's `DATA` or `CREDIT` ([`Handle::request_data`] and its kin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Passed on.
    Passed,
    /// The call had ended (answered, cancelled, timed out) or never streamed that way:
    /// ignored, as a late answer is.
    Late,
    /// The frame broke the stream's rules: the call was ended with
    /// `FLOW_CONTROL_ERROR` (the caller got its `RESULT`, the provider a `CANCEL`).
    Broken,
    /// The stream went past the node's `max_stream_bytes`: ended with `PAYLOAD_TOO_LARGE`
    /// (for a call, as `Broken` says).
    TooLarge,
}

/// What became of a provider's answer ([`Handle::finish_request`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Relayed to the caller; the call took this long at the node.
    Relayed(Duration),
    /// The call had ended (timed out, cancelled, or never existed): discarded.
    Late,
    /// Over the caller's `max_payload` (the payload's length, the limit): the caller got
    /// `PAYLOAD_TOO_LARGE` instead.
    TooLarge(usize, usize),
}

/// Where the answers to a handle's calls go when they do not travel as frames through its
/// queue ([`Handle::with_answers`]). Called from other parties' tasks: both must return
/// promptly.
pub(crate) trait Answers: Send + Sync {
    /// The `RESULT` of one of the handle's calls (exactly one per call).
    fn result(&self, result: CallResult);
    /// A provider's `NOTICE` for one of the handle's calls, ahead of its result; `false`
    /// when it was dropped.
    fn notice(&self, notice: Notice) -> bool;
    /// A chunk of the streamed answer to one of the handle's calls, ahead of its result.
    /// It is taken at once (the node grants its credit back to the provider); `false`
    /// refuses it, ending the call with `PAYLOAD_TOO_LARGE`.
    fn data(&self, call_id: u64, chunk: &Bytes) -> bool;
}

/// One registration of a procedure: the handle that answers its calls, and the
/// registration's id there.
#[derive(Clone)]
pub(crate) struct ProviderRef {
    pub handle: Arc<Handle>,
    pub rid: u64,
}

impl PartialEq for ProviderRef {
    fn eq(&self, other: &Self) -> bool {
        self.rid == other.rid && Arc::ptr_eq(&self.handle, &other.handle)
    }
}

/// Why a call could not start.
pub(crate) enum Refusal {
    /// Answer with a `RESULT` carrying this code.
    Result(ErrorCode, String),
    /// The call id is in use: answer with `ERROR` (a `RESULT` would look like its answer).
    DuplicateId,
}

impl Handle {
    /// A connection's handle, queueing to `out`, that may receive answers of up to
    /// `max_answer` bytes.
    pub fn new(out: Outbound, max_answer: usize) -> Self {
        Handle {
            out,
            direct: None,
            calls: Mutex::new(Calls::default()),
            serving: Mutex::new(HashMap::default()),
            serving_len: AtomicUsize::new(0),
            next_req: AtomicU64::new(1),
            max_answer,
            keeps_requests: false,
            version: 0,
            messages: Mutex::new(fanout::Messages::default()),
            watching: AtomicBool::new(false),
            max_stream: u64::MAX,
        }
    }

    /// Streams this handle sends may carry at most `bytes` of chunks each.
    pub fn with_max_stream(self, bytes: u64) -> Self {
        Handle { max_stream: bytes, ..self }
    }

    /// This handle's peer speaks protocol `version`.
    pub fn with_version(self, version: u64) -> Self {
        Handle { version, ..self }
    }

    /// A link's handle: requests sent to it are kept until answered (see
    /// `keeps_requests`); links speak streams.
    pub fn for_link(out: Outbound, max_answer: usize) -> Self {
        Handle { keeps_requests: true, version: fovea_core::frame::VERSION, ..Handle::new(out, max_answer) }
    }

    /// Caller side, for a request `req_id` sent to this link that its node answered
    /// `NO_PROVIDER`: takes the request and its call back (nobody is answered), to be sent
    /// to another provider. `None` when the call is no longer waiting (its deadline passed,
    /// its caller cancelled) or the request was not kept.
    ///
    /// A request that was not kept stays where it is, to be answered as any other.
    pub fn take_unserved(&self, req_id: u64) -> Option<(Arc<Handle>, u64, Box<Unserved>)> {
        let Serving { caller, call_id, kept, .. } = {
            let mut serving = lock(&self.serving);
            if serving.get(&req_id).is_none_or(|s| s.kept.is_none()) {
                return None;
            }
            let s = serving.remove(&req_id)?;
            self.serving_len.store(serving.len(), Ordering::Relaxed);
            s
        };
        let kept = kept?;
        caller.take_call(call_id)?;
        Some((caller, call_id, kept))
    }

    /// A handle whose call answers go to `answers` rather than through `out` as frames:
    /// for a caller inside the node, which would otherwise encode each answer only to
    /// decode it again.
    pub fn with_answers(out: Outbound, max_answer: usize, answers: Box<dyn Answers>) -> Self {
        Handle { direct: Some(answers), ..Handle::new(out, max_answer) }
    }

    /// Answers one of this handle's calls: the one place a `RESULT` is made for a caller.
    pub fn answer(&self, result: CallResult) {
        match &self.direct {
            Some(d) => d.result(result),
            None => self.out.send(&Frame::Result(result)),
        }
    }

    /// Answers call `call_id` with the failure `code` and its message.
    pub fn answer_failure(&self, call_id: u64, code: ErrorCode, message: impl Into<String>) {
        let payload = Bytes::from(message.into().into_bytes());
        self.answer(CallResult { call_id, code, headers: Headers::new(), payload });
    }

    /// Passes a provider's notice on to this handle (as the caller of call `id`); `false`
    /// when it was dropped at a full queue (notices never push out messages).
    fn pass_notice(&self, notice: Notice) -> bool {
        match &self.direct {
            Some(d) => d.notice(notice),
            None => self.out.send_bounded(&Frame::Notice(notice)),
        }
    }

    /// Requests this connection is handling now.
    pub fn requests_in_flight(&self) -> usize {
        self.serving_len.load(Ordering::Relaxed)
    }

    /// Caller side: records a call to `provider` and queues its `REQUEST` there. `now` is
    /// when the call arrived: a connection reads the clock once per read for all the calls
    /// and answers in it, rather than once per call here and in `finish_request`.
    pub fn start_call(
        self: &Arc<Self>,
        provider: &ProviderRef,
        call: Call,
        timeout: Duration,
        max_in_flight: usize,
        now: Instant,
    ) -> Result<(), Refusal> {
        let Call { call_id, headers, payload, flags, .. } = call;
        let (rid, provider) = (provider.rid, &provider.handle);
        // A provider without streams answers in one `RESPOND`, whatever the caller accepts;
        // a streamed request it could not read at all.
        let asked = flags;
        let streams = provider.version >= fovea_core::frame::VERSION_STREAMS;
        let flags = if streams { flags & call_flags::KNOWN } else { 0 };
        if asked & call_flags::STREAM_REQUEST != 0 && flags & call_flags::STREAM_REQUEST == 0 {
            let msg = "the provider chosen speaks a protocol version without streams (below 5)".to_owned();
            return Err(Refusal::Result(ErrorCode::StreamsUnsupported, msg));
        }
        let req_id = provider.next_req.fetch_add(1, Ordering::Relaxed);
        {
            // The caller's entry goes in first, so that a provider disconnecting from here
            // on finds it and answers `PROVIDER_DISCONNECTED` itself.
            let mut guard = lock(&self.calls);
            let calls = &mut *guard;
            let in_flight = calls.map.len();
            let Entry::Vacant(slot) = calls.map.entry(call_id) else {
                return Err(Refusal::DuplicateId);
            };
            if in_flight >= max_in_flight {
                let msg = format!("this connection has {in_flight} calls in flight, the node's limit");
                return Err(Refusal::Result(ErrorCode::Busy, msg));
            }
            let started = now;
            // The sum fits (the node caps timeouts far below FAR_FUTURE); were the clock ever
            // at its end, the call would time out at once, an answer rather than a hang.
            let deadline = started.checked_add(timeout.min(FAR_FUTURE)).unwrap_or(started);
            // The request stream starts without credit: the provider grants it once it has
            // the request, so no chunk can reach a node before the call it belongs to has
            // found its provider (a provider on another node is found by a look-up that
            // may still run when the caller's next frames arrive).
            slot.insert(InFlight {
                provider: provider.clone(),
                req_id,
                flags,
                request_credit: 0,
                request_ended: false,
                request_sent: 0,
                started,
                deadline,
            });
            calls.deadlines.push(deadline, call_id);
            if calls.deadlines.needs_rebuild(calls.map.len()) {
                calls.deadlines.rebuild(calls.map.iter().map(|(id, c)| (c.deadline, *id)));
            }
            if calls.armed.is_none_or(|armed| deadline < armed) {
                if let Some(w) = calls.waiter.take() {
                    w.wake();
                }
            }
        }
        {
            // A streamed request cannot be sent again: its chunks went to this provider.
            let again = provider.keeps_requests || flags & call_flags::IDEMPOTENT != 0;
            let keep = again && flags & call_flags::STREAM_REQUEST == 0;
            let kept = keep.then(|| {
                let deadline = now.checked_add(timeout.min(FAR_FUTURE)).unwrap_or(now);
                Box::new(Unserved { rid, headers: headers.clone(), payload: payload.clone(), deadline, flags })
            });
            let mut serving = lock(&provider.serving);
            let answer_credit =
                if flags & call_flags::STREAM_ANSWER != 0 { fovea_core::frame::INITIAL_CREDIT } else { 0 };
            let entry = Serving {
                caller: self.clone(),
                call_id,
                flags,
                answer_credit,
                answer_sent: 0,
                notices: 0,
                kept,
                answered_some: false,
            };
            serving.insert(req_id, entry);
            provider.serving_len.store(serving.len(), Ordering::Relaxed);
        }
        // The provider may have closed after it was chosen. Its `out.close()` precedes its
        // draining of `serving`, so either the drain saw our entry (and answers), or we see
        // the flag here and take the entry back ourselves.
        if provider.out.is_closed() {
            if provider.take_serving(req_id).is_some() {
                self.take_call(call_id);
                let msg = "the provider disconnected as the call started".to_owned();
                return Err(Refusal::Result(ErrorCode::ProviderDisconnected, msg));
            }
            return Ok(());
        }
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        provider.out.send(&Frame::Request(Request { req_id, rid, timeout_ms, headers, payload, flags }));
        Ok(())
    }

    /// Caller side: a chunk of call `call_id`'s request stream (`flags` may hold
    /// [`data_flags::END`]), passed on to its provider within the credit it granted.
    pub fn request_data(&self, call_id: u64, flags: u64, chunk: &Bytes) -> Flow {
        let (provider, req_id) = {
            let mut calls = lock(&self.calls);
            let Some(c) = calls.map.get_mut(&call_id) else { return Flow::Late };
            let len = chunk.len() as u64;
            let broken = if c.flags & call_flags::STREAM_REQUEST == 0 {
                Some("a DATA frame for a call that does not stream its request")
            } else if c.request_ended {
                Some("a DATA frame after the request's last")
            } else if len > c.request_credit {
                Some("a request chunk beyond the credit the provider granted")
            } else if chunk.len() > c.provider.max_answer {
                Some("a request chunk larger than the node's max_payload")
            } else {
                None
            };
            if let Some(why) = broken {
                drop(calls);
                self.break_call(call_id, ErrorCode::FlowControlError, why);
                return Flow::Broken;
            }
            if c.request_sent.saturating_add(len) > self.max_stream {
                drop(calls);
                let why = format!("the request is over the node's max_stream_bytes of {}", self.max_stream);
                self.break_call(call_id, ErrorCode::PayloadTooLarge, &why);
                return Flow::TooLarge;
            }
            c.request_sent += len;
            c.request_credit -= len;
            c.request_ended = flags & data_flags::END != 0;
            (c.provider.clone(), c.req_id)
        };
        provider.out.send_data(req_id, flags & data_flags::END, chunk);
        Flow::Passed
    }

    /// Provider side: a chunk of request `req_id`'s answer stream, passed on to its caller
    /// within the credit the caller granted.
    pub fn answer_data(&self, req_id: u64, chunk: &Bytes) -> Flow {
        let (caller, call_id) = {
            let mut serving = lock(&self.serving);
            let Some(s) = serving.get_mut(&req_id) else { return Flow::Late };
            let len = chunk.len() as u64;
            let broken = if s.flags & call_flags::STREAM_ANSWER == 0 {
                Some("the provider sent a DATA frame for a call whose caller takes one answer")
            } else if len > s.answer_credit {
                Some("the provider sent an answer chunk beyond the credit the caller granted")
            } else if chunk.len() > s.caller.max_answer {
                Some("the provider sent an answer chunk larger than the caller's max_payload")
            } else {
                None
            };
            if let Some(why) = broken {
                let (caller, call_id) = (s.caller.clone(), s.call_id);
                drop(serving);
                caller.break_call(call_id, ErrorCode::FlowControlError, why);
                return Flow::Broken;
            }
            if s.answer_sent.saturating_add(len) > self.max_stream {
                let (caller, call_id) = (s.caller.clone(), s.call_id);
                drop(serving);
                let why = format!("the answer is over the node's max_stream_bytes of {}", self.max_stream);
                caller.break_call(call_id, ErrorCode::PayloadTooLarge, &why);
                return Flow::TooLarge;
            }
            s.answer_sent += len;
            s.answer_credit -= len;
            s.answered_some = true;
            (s.caller.clone(), s.call_id)
        };
        let Some(direct) = &caller.direct else {
            caller.out.send_data(call_id, data_flags::ANSWER, chunk);
            return Flow::Passed;
        };
        // A caller inside the node takes a chunk as it comes: its credit goes straight
        // back to the provider.
        if !direct.data(call_id, chunk) {
            if let Some(c) = caller.take_call(call_id) {
                if c.provider.take_serving(c.req_id).is_some() {
                    c.provider.out.send(&Frame::Cancel(c.req_id));
                }
                let message = "the answer is larger than this node's bound for a whole answer";
                caller.answer_failure(call_id, ErrorCode::PayloadTooLarge, message);
            }
            return Flow::Broken;
        }
        if let Some(s) = lock(&self.serving).get_mut(&req_id) {
            s.answer_credit += chunk.len() as u64;
        } else {
            return Flow::Passed;
        }
        let credit = Credit { id: req_id, flags: data_flags::ANSWER, bytes: chunk.len() as u64 };
        self.out.send(&Frame::Credit(credit));
        Flow::Passed
    }

    /// Provider side: more credit for request `req_id`'s request stream, passed on to its
    /// caller.
    pub fn request_credit(&self, req_id: u64, bytes: u64) -> Flow {
        let (caller, call_id) = match lock(&self.serving).get(&req_id) {
            Some(s) if s.flags & call_flags::STREAM_REQUEST != 0 => (s.caller.clone(), s.call_id),
            _ => return Flow::Late,
        };
        {
            let mut calls = lock(&caller.calls);
            let Some(c) = calls.map.get_mut(&call_id).filter(|c| c.req_id == req_id) else { return Flow::Late };
            // Credit that crossed the request's last chunk: nothing more will use it.
            if c.request_ended {
                return Flow::Passed;
            }
            match c.request_credit.checked_add(bytes).filter(|&n| n <= MAX_CREDIT) {
                Some(n) => c.request_credit = n,
                None => {
                    drop(calls);
                    let why = "the provider granted more request credit than the protocol allows";
                    caller.break_call(call_id, ErrorCode::FlowControlError, why);
                    return Flow::Broken;
                }
            }
        }
        caller.out.send(&Frame::Credit(Credit { id: call_id, flags: 0, bytes }));
        Flow::Passed
    }

    /// Caller side: more credit for call `call_id`'s answer stream, passed on to its
    /// provider.
    pub fn answer_credit(&self, call_id: u64, bytes: u64) -> Flow {
        let (provider, req_id) = match lock(&self.calls).map.get(&call_id) {
            Some(c) if c.flags & call_flags::STREAM_ANSWER != 0 => (c.provider.clone(), c.req_id),
            _ => return Flow::Late,
        };
        {
            let mut serving = lock(&provider.serving);
            let Some(s) = serving.get_mut(&req_id).filter(|s| s.call_id == call_id) else { return Flow::Late };
            match s.answer_credit.checked_add(bytes).filter(|&n| n <= MAX_CREDIT) {
                Some(n) => s.answer_credit = n,
                None => {
                    drop(serving);
                    let why = "the caller granted more answer credit than the protocol allows";
                    self.break_call(call_id, ErrorCode::FlowControlError, why);
                    return Flow::Broken;
                }
            }
        }
        provider.out.send(&Frame::Credit(Credit { id: req_id, flags: data_flags::ANSWER, bytes }));
        Flow::Passed
    }

    /// Caller side: ends call `call_id`, whose stream broke its rules or bounds: the
    /// caller gets `code` (`FLOW_CONTROL_ERROR`, `PAYLOAD_TOO_LARGE`), the provider a
    /// `CANCEL`.
    fn break_call(&self, call_id: u64, code: ErrorCode, why: &str) {
        let Some(c) = self.take_call(call_id) else { return };
        if c.provider.take_serving(c.req_id).is_some() {
            c.provider.out.send(&Frame::Cancel(c.req_id));
        }
        self.answer_failure(call_id, code, why);
    }

    /// Provider side: the answer to request `req_id`, read at `now`, relayed to its caller
    /// unless it came too late or is larger than the caller may receive.
    pub fn finish_request(
        &self,
        req_id: u64,
        code: ErrorCode,
        headers: Headers,
        payload: Bytes,
        now: Instant,
    ) -> Answer {
        let Some(Serving { caller, call_id, .. }) = self.take_serving(req_id) else { return Answer::Late };
        let Some(call) = caller.take_call(call_id) else { return Answer::Late };
        let (len, max) = (payload.len(), caller.max_answer);
        if len > max {
            let message = format!("the provider's answer of {len} bytes is over this node's max_payload of {max}");
            caller.answer_failure(call_id, ErrorCode::PayloadTooLarge, message);
            return Answer::TooLarge(len, max);
        }
        // Providers answer with success or their own codes; anything else would let them
        // impersonate the node (a fake NO_PROVIDER), so it becomes a generic failure.
        let code = if code == ErrorCode::NoError || code.is_application() { code } else { ErrorCode::ApplicationError };
        caller.answer(CallResult { call_id, code, headers, payload });
        Answer::Relayed(now.saturating_duration_since(call.started))
    }

    /// Provider side: a `NOTICE` for request `req_id`, passed on to its caller ahead of the
    /// answer (both go through the caller's one queue, so order holds). Returns `false`
    /// when it was dropped: no such request (late), over [`MAX_NOTICES_PER_CALL`], or the
    /// caller's queue is full (notices never push out messages).
    pub fn forward_notice(&self, req_id: u64, kind: u64, body: Bytes) -> bool {
        let target = {
            let mut serving = lock(&self.serving);
            match serving.get_mut(&req_id) {
                Some(s) if s.notices < MAX_NOTICES_PER_CALL => {
                    s.notices += 1;
                    Some((s.caller.clone(), s.call_id))
                }
                _ => None,
            }
        };
        let Some((caller, id)) = target else { return false };
        // A caller below version 8 would skip the question and leave the provider waiting
        // until the deadline: the node declines for it at once.
        if kind == fovea_core::frame::notice::QUESTION
            && caller.version < fovea_core::frame::VERSION_QUESTIONS
            && caller.direct.is_none()
        {
            let Some(fovea_core::tool::Notice::Question { id: question, .. }) =
                fovea_core::tool::Notice::from_wire(kind, &body)
            else {
                return false;
            };
            let why = "the caller speaks a protocol version without questions (below 8)".to_owned();
            let (kind, body) = fovea_core::tool::Notice::Reply { id: question, result: Err((-32601, why)) }.to_wire();
            return self.out.send_bounded(&Frame::Notice(Notice { id: req_id, kind, body }));
        }
        caller.pass_notice(Notice { id, kind, body })
    }

    /// Caller side: a `NOTICE` for the provider of call `call_id` (v8: the answer to a
    /// question it asked), passed on with the provider's request id. `false` when it was
    /// dropped: no such call (answered, or late), or the provider's queue is full.
    pub fn notify_provider(&self, call_id: u64, kind: u64, body: Bytes) -> bool {
        let target = lock(&self.calls).map.get(&call_id).map(|c| (c.provider.clone(), c.req_id));
        let Some((provider, req_id)) = target else { return false };
        provider.out.send_bounded(&Frame::Notice(Notice { id: req_id, kind, body }))
    }

    /// Caller side: the caller abandons `call_id`; the provider is told, nobody answers.
    pub fn cancel_call(&self, call_id: u64) {
        if let Some(c) = self.take_call(call_id) {
            if c.provider.take_serving(c.req_id).is_some() {
                c.provider.out.send(&Frame::Cancel(c.req_id));
            }
        }
    }

    /// Caller side: waits for the next call deadline and ends that call with `TIMEOUT`.
    ///
    /// # Cancel safety
    /// Cancel safe: a deadline is only consumed when the future completes.
    pub async fn expire_next(&self) {
        // The expired call leaves the table under the lock that found it due, so an answer
        // racing the deadline finds it either still there (and wins) or gone.
        let (call_id, expired) = poll_fn(|cx| {
            let mut guard = lock(&self.calls);
            let calls = &mut *guard;
            // A timer that fires finds at least one filing due, so this ends in two rounds;
            // the bound guards against a clock that disagrees with the timer's.
            for round in 0..4 {
                // The timer is set to the earliest filing, live or not: finding the live
                // one on every poll would reset the timer each time the oldest call is
                // answered. Once it has fired, it is re-armed to the earliest live one,
                // not to the next ended filing a moment later (`Deadlines::next_live`).
                let next = if round == 0 {
                    calls.deadlines.next()
                } else {
                    let map = &calls.map;
                    calls.deadlines.next_live(|id, at| map.get(&id).is_some_and(|c| c.deadline == at))
                };
                let Some(next) = next else {
                    calls.armed = None;
                    set_waker(&mut calls.waiter, cx.waker());
                    return Poll::Pending;
                };
                let timer = match &mut calls.timer {
                    Some(timer) => {
                        if calls.armed != Some(next) {
                            timer.as_mut().reset(next.into());
                        }
                        timer
                    }
                    None => calls.timer.insert(Box::pin(tokio::time::sleep_until(next.into()))),
                };
                calls.armed = Some(next);
                if timer.as_mut().poll(cx).is_pending() {
                    set_waker(&mut calls.waiter, cx.waker());
                    return Poll::Pending;
                }
                let now = Instant::now();
                let map = &calls.map;
                if let Some(id) =
                    calls.deadlines.pop_expired(now, |id, at| map.get(&id).is_some_and(|c| c.deadline == at))
                {
                    return Poll::Ready((id, calls.map.remove(&id)));
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
        let Some(c) = expired else { return };
        if c.provider.take_serving(c.req_id).is_some() {
            c.provider.out.send(&Frame::Cancel(c.req_id));
        }
        self.answer_failure(call_id, ErrorCode::Timeout, "the call's deadline passed before the provider answered");
    }

    /// This connection is going away: end everything it asked for and everything it was
    /// asked. Calls of others end with `PROVIDER_DISCONNECTED`, but for idempotent ones
    /// not yet answered in part, handed back to be sent to another provider.
    pub fn abandon_all(&self) -> Abandoned {
        self.abandon_messages();
        let mine: Vec<InFlight> = {
            let mut calls = lock(&self.calls);
            calls.deadlines.clear();
            calls.timer = None;
            calls.armed = None;
            calls.map.drain().map(|(_, c)| c).collect()
        };
        for c in mine {
            if c.provider.take_serving(c.req_id).is_some() {
                c.provider.out.send(&Frame::Cancel(c.req_id));
            }
        }
        let theirs: Vec<Serving> = {
            let mut serving = lock(&self.serving);
            self.serving_len.store(0, Ordering::Relaxed);
            serving.drain().map(|(_, s)| s).collect()
        };
        let mut done = Abandoned::default();
        for s in theirs {
            if s.caller.take_call(s.call_id).is_none() {
                continue;
            }
            match s.kept {
                Some(request) if request.flags & call_flags::IDEMPOTENT != 0 && !s.answered_some => {
                    done.retry.push(Retry { caller: s.caller, call_id: s.call_id, request });
                }
                _ => {
                    done.failed += 1;
                    let message = "the provider disconnected while handling the call";
                    s.caller.answer_failure(s.call_id, ErrorCode::ProviderDisconnected, message);
                }
            }
        }
        done
    }

    /// Whether this is a mesh link's handle (its calls come from another node).
    pub fn is_link(&self) -> bool {
        self.keeps_requests
    }

    fn take_serving(&self, req_id: u64) -> Option<Serving> {
        let mut serving = lock(&self.serving);
        let s = serving.remove(&req_id);
        self.serving_len.store(serving.len(), Ordering::Relaxed);
        s
    }

    fn take_call(&self, call_id: u64) -> Option<InFlight> {
        // Its deadline's filing stays: `expire_next` skips filings whose call has gone.
        lock(&self.calls).map.remove(&call_id)
    }
}

/// Keeps the waker of the task waiting on a deadline, cloning only when it changed.
fn set_waker(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Arc<Handle> {
        Arc::new(Handle::new(Outbound::new(1 << 20, Duration::from_millis(5), false), 1 << 20))
    }

    fn call(call_id: u64) -> Call {
        let procedure = Bytes::from_static(b"svc.x");
        Call { call_id, procedure, timeout_ms: 0, headers: Headers::new(), payload: Bytes::new(), flags: 0 }
    }

    fn in_flight(p: &Handle, call_id: u64) -> bool {
        lock(&p.calls).map.contains_key(&call_id)
    }

    /// A call started by another task than the one waiting on the deadlines (as a call to
    /// a provider on another node is) with an earlier deadline than the timer's must wake
    /// the waiter, or it would end only when the later deadline fires.
    #[tokio::test]
    async fn an_earlier_deadline_from_another_task_wakes_the_waiting_task() {
        let (caller, provider) = (peer(), ProviderRef { handle: peer(), rid: 1 });
        caller.start_call(&provider, call(1), Duration::from_secs(3600), 16, Instant::now()).ok().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let waiter = caller.clone();
        let task = tokio::spawn(async move {
            loop {
                waiter.expire_next().await;
                let _ = tx.send(());
            }
        });
        // Let the waiter arm its timer for the hour-long call.
        tokio::time::sleep(Duration::from_millis(50)).await;
        caller.start_call(&provider, call(2), Duration::from_millis(50), 16, Instant::now()).ok().unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await;
        assert!(woke.is_ok(), "the 50 ms call did not end: the waiter slept on the hour-long deadline");
        assert!(!in_flight(&caller, 2) && in_flight(&caller, 1), "only the short call ended");
        assert!(!lock(&provider.handle.serving).contains_key(&2), "the provider was told to forget it");
        task.abort();
    }

    /// A link keeps what it was sent, so a request its node did not serve can be sent
    /// elsewhere: taken back whole, its call no longer in flight. A client provider keeps
    /// nothing, and its request stays to be answered as any other.
    #[test]
    fn a_link_gives_back_an_unserved_request_and_a_client_provider_keeps_nothing() {
        let caller = peer();
        let link = Arc::new(Handle::for_link(Outbound::new(1 << 20, Duration::from_millis(5), false), 1 << 20));
        let to_link = ProviderRef { handle: link.clone(), rid: 9 };
        let payload = Bytes::from_static(b"args");
        let sent = Call { payload: payload.clone(), ..call(1) };
        caller.start_call(&to_link, sent, Duration::from_secs(5), 16, Instant::now()).ok().unwrap();
        let req_id = lock(&link.serving).keys().copied().next().unwrap();
        let (back, call_id, kept) = link.take_unserved(req_id).expect("kept");
        assert!(Arc::ptr_eq(&back, &caller));
        assert_eq!((call_id, kept.rid, kept.payload), (1, 9, payload));
        assert!(!in_flight(&caller, 1) && lock(&link.serving).is_empty());

        let client = ProviderRef { handle: peer(), rid: 1 };
        caller.start_call(&client, call(2), Duration::from_secs(5), 16, Instant::now()).ok().unwrap();
        let req_id = lock(&client.handle.serving).keys().copied().next().unwrap();
        assert!(client.handle.take_unserved(req_id).is_none());
        assert!(in_flight(&caller, 2) && lock(&client.handle.serving).contains_key(&req_id), "left as it was");
    }

    /// Calls answered before their deadline leave their filings behind; those never end a
    /// call, and the filings stay bounded however many calls go through.
    #[tokio::test]
    async fn answered_calls_never_time_out_and_their_deadlines_stay_bounded() {
        let (caller, provider) = (peer(), ProviderRef { handle: peer(), rid: 1 });
        for id in 1..=10_000u64 {
            caller.start_call(&provider, call(id), Duration::from_millis(1), 64, Instant::now()).ok().unwrap();
            let req_id = lock(&provider.handle.serving).keys().copied().next().unwrap();
            let answer = provider.handle.finish_request(
                req_id,
                ErrorCode::NoError,
                Headers::new(),
                Bytes::new(),
                Instant::now(),
            );
            assert!(matches!(answer, Answer::Relayed(_)));
            let filed = lock(&caller.calls).deadlines.len();
            assert!(filed <= 2 + fovea_core::deadline::REBUILD_SLACK, "{filed} deadlines filed for one call");
        }
        // Every deadline has passed; none may end a call, so the wait stays pending.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let waited = tokio::time::timeout(Duration::from_millis(100), caller.expire_next()).await;
        assert!(waited.is_err(), "an answered call timed out");
        assert!(lock(&caller.calls).deadlines.is_empty(), "due filings of ended calls are dropped");
    }
}
