//! One connection's outbound queue, shared between the tasks that deliver to it and the
//! connection's writer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fovea_core::frame::Dropped;
use fovea_core::{Frame, Headers, OutBuf};
use tokio::sync::Notify;

/// What became of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Queued for the writer.
    Queued,
    /// The queue was full: dropped and counted (slow consumer).
    Dropped,
    /// The connection is closing; not a loss worth counting.
    Closed,
}

/// The bounded queue of frames for one client.
///
/// Invariant: queued bytes stay at or under `max_pending` for messages; control frames
/// (`SUBACK`, `PONG`, `ERROR`, …) are always queued, since they are tiny, answer the
/// client's own requests and so are bounded by what the client sends.
///
/// **At the limit the newest message is dropped** (the one being delivered), counted per
/// subscription, and announced to the client with a `DROPPED` frame after the messages
/// already queued. Newest rather than oldest: what is queued is already encoded in one
/// buffer, in order, and cutting into it would cost a re-encode per drop, while the gap a
/// dropped newest message leaves is exactly what `DROPPED` reports. A connection that
/// keeps dropping, without one successful delivery, for `slow_after` is closed with
/// `SLOW_CONSUMER`.
pub(crate) struct Outbound {
    queue: Mutex<Queue>,
    wake: Notify,
    /// Signalled once when the connection turns slow; the writer may be stuck in a write
    /// that flow control holds, so it listens for this too.
    slow_signal: Notify,
    max_pending: usize,
    slow_after: Duration,
    /// Whether the client understands `DROPPED` (protocol version 3).
    announce_drops: bool,
    closed: AtomicBool,
    /// Messages dropped because the queue was full.
    pub dropped: AtomicU64,
}

#[derive(Default)]
struct Queue {
    buf: OutBuf,
    /// Drops per subscription since the last `DROPPED` notices. At most one entry per
    /// subscription of the connection, so bounded by its subscription limit.
    dropped: HashMap<u64, u64>,
    /// When the current run of drops began (reset by a successful delivery).
    full_since: Option<Instant>,
    /// The run of drops has lasted `slow_after`: the writer closes the connection.
    slow: bool,
}

/// The writer found the connection too slow for too long.
pub(crate) struct TooSlow;

impl Outbound {
    pub fn new(max_pending: usize, slow_after: Duration, announce_drops: bool) -> Self {
        Outbound {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            slow_signal: Notify::new(),
            max_pending,
            slow_after,
            announce_drops,
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a message for subscription `sid`.
    pub fn deliver(&self, sid: u64, topic: &[u8], headers: &Headers, payload: &Bytes) -> Delivered {
        if self.closed.load(Ordering::Relaxed) {
            return Delivered::Closed;
        }
        let mut q = self.lock();
        if q.buf.len() + payload.len() > self.max_pending {
            *q.dropped.entry(sid).or_default() += 1;
            let now = Instant::now();
            let since = *q.full_since.get_or_insert(now);
            let wake = !q.slow && now.duration_since(since) >= self.slow_after;
            q.slow |= wake;
            drop(q);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if wake {
                self.slow_signal.notify_one();
            }
            return Delivered::Dropped;
        }
        q.full_since = None;
        let was_empty = q.buf.is_empty();
        q.buf.push_msg(sid, topic, headers, payload);
        drop(q);
        if was_empty {
            self.wake.notify_one();
        }
        Delivered::Queued
    }

    /// Queues a control frame.
    pub fn send(&self, frame: &Frame) {
        let mut q = self.lock();
        let was_empty = q.buf.is_empty();
        q.buf.push_frame(frame);
        drop(q);
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// Queues a frame within the queue's bound (a mesh link's messages): `false`, and
    /// nothing queued, when the queue is full.
    pub fn send_bounded(&self, frame: &Frame) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        let mut q = self.lock();
        if q.buf.len() > self.max_pending {
            return false;
        }
        let was_empty = q.buf.is_empty();
        q.buf.push_frame(frame);
        drop(q);
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    /// Whether the connection is closing (no more deliveries).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Bytes queued now (a load measure for balancing queue groups).
    pub fn pending(&self) -> usize {
        self.lock().buf.len()
    }

    /// Moves everything queued into `into`, followed by `DROPPED` notices for the
    /// subscriptions that lost messages since the last call.
    ///
    /// # Errors
    /// [`TooSlow`] once the connection has dropped messages for `slow_after` without a
    /// break: the caller closes it with `SLOW_CONSUMER`.
    pub fn take_into(&self, into: &mut Vec<Bytes>) -> Result<(), TooSlow> {
        let mut q = self.lock();
        if q.slow {
            return Err(TooSlow);
        }
        q.buf.take_into(into);
        if !q.dropped.is_empty() {
            let mut notices = BytesMut::new();
            for (sid, count) in q.dropped.drain() {
                if self.announce_drops {
                    Frame::Dropped(Dropped { sid, count }).encode(&mut notices);
                }
            }
            if !notices.is_empty() {
                into.push(notices.freeze());
            }
        }
        Ok(())
    }

    /// Waits until the connection has been dropping messages for `slow_after`.
    ///
    /// # Cancel safety
    /// Cancel safe: the signal is kept for the next call.
    pub async fn turned_slow(&self) {
        self.slow_signal.notified().await;
    }

    /// How long a run of drops lasts before the connection is closed.
    pub fn slow_after(&self) -> Duration {
        self.slow_after
    }

    /// Waits until something may have been queued since the last `take_into`.
    ///
    /// # Cancel safety
    /// Cancel safe: a wake-up that arrives while no one waits is kept for the next call.
    pub async fn wait(&self) {
        self.wake.notified().await;
    }

    /// Stops further deliveries and frees what is queued: other connections' match caches
    /// may hold this queue until their next lookup, and must not keep its bytes alive.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        *self.lock() = Queue::default();
        self.wake.notify_one();
    }
}
