//! Calls in flight: who asked, who answers, and what happens when either side goes away or
//! the deadline passes.
//!
//! A call never passes through a central task. The caller's connection task picks a
//! provider and queues the `REQUEST` on the provider's connection; the provider's task
//! queues the `RESULT` on the caller's connection. Two tables, one per side, record the
//! call while it is open:
//!
//! ```text
//!  caller Peer.calls:   call_id → (provider Peer, req_id, deadline timer)
//!  provider Peer.serving: req_id → (caller Peer, call_id)
//! ```
//!
//! Rule: whoever removes the call from the *caller's* table answers the caller (with the
//! response, `TIMEOUT` or `PROVIDER_DISCONNECTED`); anyone who finds it gone stays silent
//! and counts a late response. Locks: only one of these tables is ever held at a time.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fovea_core::frame::{Call, CallResult, Notice, Request};
use fovea_core::{ErrorCode, Frame, Headers};
use tokio_util::time::{delay_queue, DelayQueue};

use crate::outbound::Outbound;
use crate::router::ProviderRef;

/// Everything of one connection that other connections' tasks touch.
pub(crate) struct Peer {
    pub out: Outbound,
    calls: Mutex<Calls>,
    serving: Mutex<HashMap<u64, Serving>>,
    /// `serving.len()`, readable without the lock (for balancing).
    serving_len: AtomicUsize,
    next_req: AtomicU64,
}

/// The caller side: calls made by this connection.
#[derive(Default)]
struct Calls {
    map: HashMap<u64, InFlight>,
    /// One deadline per entry of `map`, removed with it. Created by the connection's first
    /// call: an empty `DelayQueue` still holds its timing wheel (~6 KB), which most
    /// connections (subscribers, providers) would carry for nothing. Boxed: even `None`
    /// would otherwise take the queue's ~200 bytes inline in every connection.
    timers: Option<Box<DelayQueue<u64>>>,
}

struct InFlight {
    provider: Arc<Peer>,
    req_id: u64,
    timer: delay_queue::Key,
    /// When the node received the call (for the latency histogram).
    started: Instant,
}

/// The provider side: a request this connection is handling.
struct Serving {
    caller: Arc<Peer>,
    call_id: u64,
    /// `NOTICE`s passed on for this request so far.
    notices: u32,
}

/// Most `NOTICE`s passed on for one call; later ones are dropped and counted. Progress
/// and logs are status for a person or an agent to follow, and a provider looping on
/// them must not turn one call into an unbounded stream.
pub(crate) const MAX_NOTICES_PER_CALL: u32 = 1024;

/// Why a call could not start.
pub(crate) enum Refusal {
    /// Answer with a `RESULT` carrying this code.
    Result(ErrorCode, String),
    /// The call id is in use: answer with `ERROR` (a `RESULT` would look like its answer).
    DuplicateId,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Peer {
    pub fn new(out: Outbound) -> Self {
        Peer {
            out,
            calls: Mutex::new(Calls::default()),
            serving: Mutex::new(HashMap::new()),
            serving_len: AtomicUsize::new(0),
            next_req: AtomicU64::new(1),
        }
    }

    /// Requests this connection is handling now.
    pub fn requests_in_flight(&self) -> usize {
        self.serving_len.load(Ordering::Relaxed)
    }

    /// Caller side: records a call to `provider` and queues its `REQUEST` there.
    pub fn start_call(
        self: &Arc<Self>,
        provider: &ProviderRef,
        call: Call,
        timeout: Duration,
        max_in_flight: usize,
    ) -> Result<(), Refusal> {
        let Call { call_id, headers, payload, .. } = call;
        let (rid, provider) = (provider.rid, &provider.peer);
        let req_id = provider.next_req.fetch_add(1, Ordering::Relaxed);
        {
            // The caller's entry goes in first, so that a provider disconnecting from here
            // on finds it and answers `PROVIDER_DISCONNECTED` itself.
            let mut calls = lock(&self.calls);
            if calls.map.contains_key(&call_id) {
                return Err(Refusal::DuplicateId);
            }
            if calls.map.len() >= max_in_flight {
                let msg = format!("this connection has {} calls in flight, the node's limit", calls.map.len());
                return Err(Refusal::Result(ErrorCode::Busy, msg));
            }
            let timer = calls.timers.get_or_insert_with(Default::default).insert(call_id, timeout);
            calls.map.insert(call_id, InFlight { provider: provider.clone(), req_id, timer, started: Instant::now() });
        }
        {
            let mut serving = lock(&provider.serving);
            serving.insert(req_id, Serving { caller: self.clone(), call_id, notices: 0 });
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
        provider.out.send(&Frame::Request(Request { req_id, rid, timeout_ms, headers, payload }));
        Ok(())
    }

    /// Provider side: the answer to request `req_id`. Returns how long the call took at
    /// the node, or `None` if the answer came too late (the call had timed out, was
    /// cancelled, or never existed).
    pub fn finish_request(&self, req_id: u64, code: ErrorCode, headers: Headers, payload: Bytes) -> Option<Duration> {
        let Serving { caller, call_id, .. } = self.take_serving(req_id)?;
        let call = caller.take_call(call_id)?;
        // Providers answer with success or their own codes; anything else would let them
        // impersonate the node (a fake NO_PROVIDER), so it becomes a generic failure.
        let code = if code == ErrorCode::NoError || code.is_application() { code } else { ErrorCode::ApplicationError };
        caller.out.send(&Frame::Result(CallResult { call_id, code, headers, payload }));
        Some(call.started.elapsed())
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
        caller.out.send_bounded(&Frame::Notice(Notice { id, kind, body }))
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
        // Pop the timer and remove its call under one lock: the invariant that every call
        // has exactly one live timer key is what makes `take_call`'s removal safe.
        let (call_id, expired) = poll_fn(|cx| {
            let mut calls = lock(&self.calls);
            let expired = match calls.timers.as_mut() {
                Some(timers) => timers.poll_expired(cx),
                None => Poll::Pending,
            };
            match expired {
                Poll::Ready(Some(e)) => {
                    let id = e.into_inner();
                    Poll::Ready((id, calls.map.remove(&id)))
                }
                // Empty: only this connection's own task adds deadlines, and it polls
                // again after handling each frame, so no wake-up is needed here.
                _ => Poll::Pending,
            }
        })
        .await;
        let Some(c) = expired else { return };
        if c.provider.take_serving(c.req_id).is_some() {
            c.provider.out.send(&Frame::Cancel(c.req_id));
        }
        self.out.send(&Frame::Result(CallResult {
            call_id,
            code: ErrorCode::Timeout,
            headers: Headers::new(),
            payload: Bytes::from_static(b"the call's deadline passed before the provider answered"),
        }));
    }

    /// This connection is going away: end everything it asked for and everything it was
    /// asked. Returns how many calls of others ended with `PROVIDER_DISCONNECTED`.
    pub fn abandon_all(&self) -> usize {
        let mine: Vec<InFlight> = {
            let mut calls = lock(&self.calls);
            calls.timers = None;
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
        let mut failed = 0;
        for s in theirs {
            if s.caller.take_call(s.call_id).is_some() {
                failed += 1;
                s.caller.out.send(&Frame::Result(CallResult {
                    call_id: s.call_id,
                    code: ErrorCode::ProviderDisconnected,
                    headers: Headers::new(),
                    payload: Bytes::from_static(b"the provider disconnected while handling the call"),
                }));
            }
        }
        failed
    }

    fn take_serving(&self, req_id: u64) -> Option<Serving> {
        let mut serving = lock(&self.serving);
        let s = serving.remove(&req_id);
        self.serving_len.store(serving.len(), Ordering::Relaxed);
        s
    }

    fn take_call(&self, call_id: u64) -> Option<InFlight> {
        let mut calls = lock(&self.calls);
        let c = calls.map.remove(&call_id)?;
        if let Some(timers) = calls.timers.as_mut() {
            timers.remove(&c.timer);
        }
        Some(c)
    }
}
