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

/// Most messages the subscriber takes under one lock; a queue at most this long is taken
/// whole by trading buffers. 1024 measured slower than 256 (`bench pubsub --msgs 3000000`,
/// 4 alternating rounds: 2.91M against 3.03M delivered/s).
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

/// Messages decoded from one read and not yet handed to their subscriptions, in order, as
/// runs of one subscription each: a run moves into its queue in bulk (a swap of buffers,
/// or a copy of whole slices), not message by message. Four moves of each message between
/// queues were ~5% of a subscriber's CPU.
///
/// Invariant: the run lengths add up to `msgs.len()`, and none is zero.
#[derive(Default)]
pub(crate) struct Pending {
    msgs: VecDeque<Message>,
    runs: VecDeque<(u64, usize)>,
}

impl Pending {
    /// Adds a message for subscription `sid` after the others.
    pub(crate) fn push(&mut self, sid: u64, m: Message) {
        match self.runs.back_mut() {
            Some((s, n)) if *s == sid => *n += 1,
            _ => self.runs.push_back((sid, 1)),
        }
        self.msgs.push_back(m);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// The subscription the first message is for.
    pub(crate) fn front_sid(&self) -> Option<u64> {
        self.runs.front().map(|(sid, _)| *sid)
    }

    /// Takes the first message, with its subscription.
    pub(crate) fn pop_front(&mut self) -> Option<(u64, Message)> {
        let (sid, n) = self.runs.front_mut()?;
        let sid = *sid;
        *n -= 1;
        if *n == 0 {
            self.runs.pop_front();
        }
        self.msgs.pop_front().map(|m| (sid, m))
    }

    /// Drops the first run (its subscription has ended).
    pub(crate) fn drop_front_run(&mut self) {
        if let Some((_, n)) = self.runs.pop_front() {
            self.msgs.drain(..n);
        }
    }

    /// Messages waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.msgs.len()
    }
}

impl Sender {
    /// Queues the first run of `pending` (which must be this subscription's), in order,
    /// until it ends or the queue is full; wakes the subscriber once.
    pub(crate) fn push_run(&self, pending: &mut Pending) -> Pushed {
        let Some((_, len)) = pending.runs.front_mut() else { return Pushed::All };
        let mut st = lock(&self.0);
        let n = if st.receiver_gone {
            pending.msgs.drain(..*len);
            *len
        } else {
            let n = (*len).min(st.cap.saturating_sub(st.items.len()));
            // The run is all that is pending and it fits: move buffers, not messages.
            if n == pending.msgs.len() && st.items.is_empty() {
                std::mem::swap(&mut st.items, &mut pending.msgs);
            } else if n == pending.msgs.len() {
                st.items.append(&mut pending.msgs);
            } else {
                st.items.extend(pending.msgs.drain(..n));
            }
            n
        };
        *len -= n;
        let result = if *len == 0 {
            pending.runs.pop_front();
            Pushed::All
        } else {
            Pushed::Full
        };
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
            if out.is_empty() && st.items.len() <= TAKE_MAX {
                // All of it: trade buffers rather than move each message.
                std::mem::swap(&mut st.items, out);
            } else {
                let n = st.items.len().min(TAKE_MAX);
                out.extend(st.items.drain(..n));
            }
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

    fn pending_of(sid: u64, range: std::ops::Range<u64>) -> Pending {
        let mut p = Pending::default();
        for i in range {
            p.push(sid, msg(i));
        }
        p
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
        let mut pending = pending_of(7, 0..5);
        pending.push(8, msg(99));
        assert_eq!(tx.push_run(&mut pending), Pushed::Full);
        assert_eq!(pending.len(), 3, "two of sid 7 and the one of sid 8 wait");
        let (got, state) = take_all(&mut rx);
        assert_eq!(got.iter().map(|m| m.payload.clone()).collect::<Vec<_>>(), ["0", "1", "2"]);
        assert_eq!(state, Poll::Pending);
        assert_eq!(tx.push_run(&mut pending), Pushed::All);
        assert_eq!(pending.front_sid(), Some(8));
        drop(tx);
        let (got, state) = take_all(&mut rx);
        assert_eq!(got.iter().map(|m| m.payload.clone()).collect::<Vec<_>>(), ["3", "4"]);
        assert_eq!(state, Poll::Ready(false), "the sender is gone and the queue drained");
    }

    #[test]
    fn pushes_after_the_subscriber_left_are_dropped() {
        let (tx, rx) = queue(2);
        drop(rx);
        let mut pending = pending_of(1, 0..10);
        assert_eq!(tx.push_run(&mut pending), Pushed::All);
        assert!(pending.is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_waits_for_the_subscriber() {
        let (tx, mut rx) = queue(1);
        let mut pending = pending_of(1, 0..2);
        assert_eq!(tx.push_run(&mut pending), Pushed::Full);
        let space = tx.space();
        let reader = tokio::spawn(async move {
            let mut out = VecDeque::new();
            std::future::poll_fn(|cx| rx.poll_take(cx, &mut out)).await;
            (rx, out)
        });
        space.await;
        assert_eq!(tx.push_run(&mut pending), Pushed::All);
        let (_rx, out) = reader.await.unwrap();
        assert_eq!(out.len(), 1);
    }

    proptest::proptest! {
        /// However messages for several subscriptions interleave, and however small the
        /// queues, every subscription receives exactly its own messages, in order, through
        /// bulk moves, swaps and partial runs alike.
        #[test]
        fn runs_reach_their_subscriptions_in_order(
            sids in proptest::collection::vec(0u64..3, 0..200),
            caps in proptest::collection::vec(1usize..40, 3),
        ) {
            let mut queues: Vec<(Sender, Receiver)> = caps.iter().map(|&c| queue(c)).collect();
            let mut pending = Pending::default();
            for (i, &sid) in sids.iter().enumerate() {
                pending.push(sid, msg(i as u64));
            }
            let mut got: Vec<Vec<Message>> = vec![Vec::new(); 3];
            // As `deliver` does, with the subscribers taking whenever a queue is full.
            while let Some(sid) = pending.front_sid() {
                let (tx, rx) = &mut queues[sid as usize];
                if tx.push_run(&mut pending) == Pushed::Full {
                    got[sid as usize].extend(take_all(rx).0);
                }
            }
            for (sid, (_, rx)) in queues.iter_mut().enumerate() {
                got[sid].extend(take_all(rx).0);
                let want: Vec<Bytes> = sids
                    .iter()
                    .enumerate()
                    .filter(|(_, &s)| s == sid as u64)
                    .map(|(i, _)| Bytes::from(i.to_string()))
                    .collect();
                let have: Vec<Bytes> = got[sid].iter().map(|m| m.payload.clone()).collect();
                proptest::prop_assert_eq!(have, want);
            }
        }
    }
}
