//! One connection's outbound queue, shared between the tasks that deliver to it and the
//! connection's writer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
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
pub(crate) struct Outbound {
    queue: Mutex<OutBuf>,
    wake: Notify,
    max_pending: usize,
    closed: AtomicBool,
    /// Messages dropped because the queue was full.
    pub dropped: AtomicU64,
}

impl Outbound {
    pub fn new(max_pending: usize) -> Self {
        Outbound {
            queue: Mutex::new(OutBuf::new()),
            wake: Notify::new(),
            max_pending,
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutBuf> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a message for subscription `sid`.
    pub fn deliver(&self, sid: u64, topic: &[u8], headers: &Headers, payload: &Bytes) -> Delivered {
        if self.closed.load(Ordering::Relaxed) {
            return Delivered::Closed;
        }
        let mut q = self.lock();
        if q.len() + payload.len() > self.max_pending {
            drop(q);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Delivered::Dropped;
        }
        let was_empty = q.is_empty();
        q.push_msg(sid, topic, headers, payload);
        drop(q);
        if was_empty {
            self.wake.notify_one();
        }
        Delivered::Queued
    }

    /// Queues a control frame.
    pub fn send(&self, frame: &Frame) {
        let mut q = self.lock();
        let was_empty = q.is_empty();
        q.push_frame(frame);
        drop(q);
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// Whether the connection is closing (no more deliveries).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Bytes queued now (a load measure for balancing queue groups).
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    /// Moves everything queued into `into`.
    pub fn take_into(&self, into: &mut Vec<Bytes>) {
        self.lock().take_into(into);
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
        *self.lock() = OutBuf::new();
        self.wake.notify_one();
    }
}
