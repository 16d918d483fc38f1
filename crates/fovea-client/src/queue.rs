//! The bounded queue between the session task and one [`crate::Subscription`].
//!
//! Why not `tokio::sync::mpsc`: the session decodes many `MSG` frames per read, and a
//! channel pays per message (a semaphore permit, a slot, a waker check: ~10% of a
//! subscriber's CPU at 1.5M messages/s). Here the session pushes every message of a read
//! for one subscription under one lock and wakes the subscriber once; the subscriber takes
//! up to a batch under one lock.
//!
//! Invariants: at most `cap` messages wait in the queue (the subscriber holds at most one
//! more batch of [`TAKE_MAX`]); order is kept; a message pushed after the subscriber went
//! away is dropped (the subscription has ended, the node is told by `UNSUB`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::Message;

/// Most messages the subscriber takes under one lock.
pub(crate) const TAKE_MAX: usize = 256;

struct State {
    items: VecDeque<Message>,
    cap: usize,
    /// The subscriber's task, when it waits for a message.
    waker: Option<Waker>,
    /// The session side is gone: once `items` is empty, the subscription has ended.
    sender_gone: bool,
    /// The subscriber is gone: pushes drop their messages.
    receiver_gone: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when the subscriber takes from a full queue, or goes away.
    space: tokio::sync::Notify,
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A queue of at most `cap` messages (at least 1).
pub(crate) fn queue(cap: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            cap: cap.max(1),
            waker: None,
            sender_gone: false,
            receiver_gone: false,
        }),
        space: tokio::sync::Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// The session's end. Dropping it ends the subscription once the queue is drained.
pub(crate) struct Sender(Arc<Shared>);

/// What [`Sender::push_run`] did with the run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Every message of the run was queued (or dropped: the subscriber is gone).
    All,
    /// The queue is full; the rest of the run is still in `pending`.
    Full,
}

impl Sender {
    /// Queues the messages at the front of `pending` whose sid is `sid`, in order, until
    /// the run ends or the queue is full; wakes the subscriber once.
    pub(crate) fn push_run(&self, sid: u64, pending: &mut VecDeque<(u64, Message)>) -> Pushed {
        let mut st = lock(&self.0);
        let mut result = Pushed::All;
        while pending.front().is_some_and(|(s, _)| *s == sid) {
            if st.receiver_gone {
                pending.pop_front();
                continue;
            }
            if st.items.len() >= st.cap {
                result = Pushed::Full;
                break;
            }
            if let Some((_, m)) = pending.pop_front() {
                st.items.push_back(m);
            }
        }
        let waker = if st.items.is_empty() { None } else { st.waker.take() };
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        result
    }

    /// Waits until the subscriber takes from the queue or goes away (after
    /// [`Pushed::Full`]). A signal sent since the last wait is not lost.
    pub(crate) fn space(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let shared = self.0.clone();
        async move { shared.space.notified().await }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let waker = {
            let mut st = lock(&self.0);
            st.sender_gone = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The subscriber's end.
pub(crate) struct Receiver(Arc<Shared>);

impl Receiver {
    /// Moves up to [`TAKE_MAX`] queued messages into `out`: `Ready(true)` when some were
    /// moved, `Ready(false)` when the subscription has ended and nothing is left,
    /// `Pending` (the task is woken on the next push) otherwise.
    pub(crate) fn poll_take(&mut self, cx: &mut Context<'_>, out: &mut VecDeque<Message>) -> Poll<bool> {
        let mut st = lock(&self.0);
        if !st.items.is_empty() {
            let was_full = st.items.len() >= st.cap;
            let n = st.items.len().min(TAKE_MAX);
            out.extend(st.items.drain(..n));
            drop(st);
            if was_full {
                self.0.space.notify_one();
            }
            return Poll::Ready(true);
        }
        if st.sender_gone {
            return Poll::Ready(false);
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        {
            let mut st = lock(&self.0);
            st.receiver_gone = true;
            st.items.clear();
        }
        // A session waiting for space must not wait for a subscriber that is gone.
        self.0.space.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use fovea_core::{Headers, Topic};

    fn msg(i: u64) -> Message {
        Message { topic: Topic::new("t").unwrap(), headers: Headers::new(), payload: Bytes::from(i.to_string()) }
    }

    /// Takes until nothing is left; the state the last poll saw.
    fn take_all(rx: &mut Receiver) -> (Vec<Message>, Poll<bool>) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = VecDeque::new();
        loop {
            match rx.poll_take(&mut cx, &mut out) {
                Poll::Ready(true) => continue,
                state => return (out.into_iter().collect(), state),
            }
        }
    }

    #[test]
    fn runs_keep_order_stop_at_the_bound_and_leave_other_sids() {
        let (tx, mut rx) = queue(3);
        let mut pending: VecDeque<(u64, Message)> = (0..5).map(|i| (7, msg(i))).collect();
        pending.push_back((8, msg(99)));
        assert_eq!(tx.push_run(7, &mut pending), Pushed::Full);
        assert_eq!(pending.len(), 3, "two of sid 7 and the one of sid 8 wait");
        let (got, state) = take_all(&mut rx);
        assert_eq!(got.iter().map(|m| m.payload.clone()).collect::<Vec<_>>(), ["0", "1", "2"]);
        assert_eq!(state, Poll::Pending);
        assert_eq!(tx.push_run(7, &mut pending), Pushed::All);
        assert_eq!(pending.front().map(|(s, _)| *s), Some(8));
        drop(tx);
        let (got, state) = take_all(&mut rx);
        assert_eq!(got.iter().map(|m| m.payload.clone()).collect::<Vec<_>>(), ["3", "4"]);
        assert_eq!(state, Poll::Ready(false), "the sender is gone and the queue drained");
    }

    #[test]
    fn pushes_after_the_subscriber_left_are_dropped() {
        let (tx, rx) = queue(2);
        drop(rx);
        let mut pending: VecDeque<(u64, Message)> = (0..10).map(|i| (1, msg(i))).collect();
        assert_eq!(tx.push_run(1, &mut pending), Pushed::All);
        assert!(pending.is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_waits_for_the_subscriber() {
        let (tx, mut rx) = queue(1);
        let mut pending: VecDeque<(u64, Message)> = (0..2).map(|i| (1, msg(i))).collect();
        assert_eq!(tx.push_run(1, &mut pending), Pushed::Full);
        let space = tx.space();
        let reader = tokio::spawn(async move {
            let mut out = VecDeque::new();
            std::future::poll_fn(|cx| rx.poll_take(cx, &mut out)).await;
            (rx, out)
        });
        space.await;
        assert_eq!(tx.push_run(1, &mut pending), Pushed::All);
        let (_rx, out) = reader.await.unwrap();
        assert_eq!(out.len(), 1);
    }
}
