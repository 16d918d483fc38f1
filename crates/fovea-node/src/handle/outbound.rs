//! One connection's outbound queue, shared between the tasks that deliver to it and the
//! connection's writer.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fovea_core::frame::{Dropped, PubAt};
use fovea_core::{Frame, Headers, OutBuf};
use tokio::sync::Notify;

/// A run's messages ([`Outbound::deliver_run`]), kept as positions in the buffers they
/// were read from: one reference per buffer instead of one per topic and one per payload
/// (each an atomic increment and decrement on the buffer's shared count, per message).
///
/// Invariant: every message's ranges lie within its buffer in `bufs`.
#[derive(Default)]
pub(crate) struct Msgs {
    bufs: Vec<Bytes>,
    msgs: Vec<At>,
}

/// One message of [`Msgs`]: ranges in `bufs[buf]`.
struct At {
    buf: usize,
    topic: Range<usize>,
    headers: Headers,
    payload: Range<usize>,
}

impl Msgs {
    /// Adds a message read in place. Its buffer is usually a later view of the one the
    /// message before came in (the rest of the same read): then no reference is taken.
    pub fn push(&mut self, p: PubAt<'_>) {
        let src = p.src();
        // Where `src` starts within the last buffer, if it lies inside it. Addresses only
        // compare: a buffer kept here stays allocated, so no other one can overlap it.
        let within = self.bufs.last().and_then(|last| {
            let (base, start) = (last.as_ptr() as usize, src.as_ptr() as usize);
            (start >= base && start + src.len() <= base + last.len()).then(|| (self.bufs.len() - 1, start - base))
        });
        let (buf, offset) = within.unwrap_or_else(|| {
            self.bufs.push(src.clone());
            (self.bufs.len() - 1, 0)
        });
        let (topic, payload) = p.ranges();
        let shift = |r: Range<usize>| r.start + offset..r.end + offset;
        // Moved, not cloned: a clone, even of no headers, is a call through `Bytes`' vtable
        // (half of this function's time when it was one).
        self.msgs.push(At { buf, topic: shift(topic), headers: p.headers, payload: shift(payload) });
    }

    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    pub fn clear(&mut self) {
        self.msgs.clear();
        self.bufs.clear();
    }

    /// Reserves room for `n` messages.
    pub fn reserve(&mut self, n: usize) {
        self.msgs.reserve_exact(n);
    }

    pub fn capacity(&self) -> usize {
        self.msgs.capacity()
    }

    /// Each message as a `FWD` for `realm` naming no queue groups (its fields referring
    /// to the buffers the messages lie in).
    pub fn forwards<'a>(&'a self, realm: &'a Bytes) -> impl Iterator<Item = fovea_core::frame::Forward> + 'a {
        self.iter().map(move |(topic, headers, buf, payload)| fovea_core::frame::Forward {
            realm: realm.clone(),
            topic: Bytes::copy_from_slice(topic),
            headers: headers.clone(),
            groups: Vec::new(),
            payload: buf.slice(payload),
        })
    }

    /// Each message as (topic, headers, its buffer, the payload's range in it).
    fn iter(&self) -> impl Iterator<Item = (&[u8], &Headers, &Bytes, Range<usize>)> {
        self.msgs.iter().filter_map(|m| {
            let buf = self.bufs.get(m.buf)?;
            Some((buf.get(m.topic.clone())?, &m.headers, buf, m.payload.clone()))
        })
    }
}

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

/// Publishers are held back for a queue holding more than `max_pending / PRESS_FRACTION`.
///
/// Low, so that the queue keeps most of its bound as headroom: a hold-back that runs out
/// (`producer_stall` without a take) lets publishers run free until the subscriber takes
/// again, and what they queue meanwhile must fit: on a loaded machine a live subscriber
/// misses a few milliseconds often and tens sometimes, and at loopback rates a queue half
/// full fills in that time (measured in BENCHMARKS.md, on publishers held back). A paced queue also holds an
/// eighth of the bound instead of half. The writer takes in `WRITE_STEP`s (256 KiB), far
/// below 64 MiB / 8, so pacing does not starve it.
pub(crate) const PRESS_FRACTION: usize = 8;

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
    /// More than `max_pending / PRESS_FRACTION` is queued: publishers delivering
    /// here are held back (`producer_stall`) until the writer takes the queue.
    pressing: AtomicBool,
    /// A hold-back for this queue ran out without a take: no one is held back for it until
    /// the writer takes again.
    stuck: AtomicBool,
    /// Signalled when the writer takes a queue that was pressing.
    relieved: Notify,
    /// Messages dropped because the queue was full.
    pub dropped: AtomicU64,
}

#[derive(Default)]
struct Queue {
    buf: OutBuf,
    /// Drops per subscription since the last `DROPPED` notices. At most one entry per
    /// subscription of the connection, so bounded by its subscription limit.
    dropped: HashMap<u64, u64>,
    /// Drops per subscription id already taken into notices, over the connection's life:
    /// with `dropped`, what a `SLOW_CONSUMER` close reports ([`Outbound::drops`]). At most
    /// [`MAX_ANNOUNCED`] ids (a client may churn through sids); later ones are left out of
    /// the close's report, never out of `DROPPED`.
    announced: HashMap<u64, u64>,
    /// When the current run of drops began (reset by a successful delivery).
    full_since: Option<Instant>,
    /// The run of drops has lasted `slow_after`: the writer closes the connection.
    slow: bool,
}

/// Most subscription ids whose announced drops a queue remembers for a `SLOW_CONSUMER`
/// close's report (the report lists 16 at most; the rest only bounds memory).
const MAX_ANNOUNCED: usize = 4096;

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
            pressing: AtomicBool::new(false),
            stuck: AtomicBool::new(false),
            relieved: Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queued bytes above which publishers are held back.
    fn press_level(&self) -> usize {
        self.max_pending / PRESS_FRACTION
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        crate::sync::lock(&self.queue)
    }

    /// Queues a message for subscription `sid`.
    pub fn deliver(&self, sid: u64, topic: &[u8], headers: &Headers, payload: &Bytes) -> Delivered {
        if self.closed.load(Ordering::Relaxed) {
            return Delivered::Closed;
        }
        let mut q = self.lock();
        let was_empty = q.buf.is_empty();
        let pushed = self.push_locked(&mut q, sid, topic, headers, payload, 0..payload.len());
        drop(q);
        match pushed {
            Ok(()) => {
                if was_empty {
                    self.wake.notify_one();
                }
                Delivered::Queued
            }
            Err(turned_slow) => {
                self.count_drops(1, turned_slow);
                Delivered::Dropped
            }
        }
    }

    /// Queues a run of messages for subscription `sid`, in order, under one lock: what
    /// [`Outbound::deliver`] does for each, at one lock per run instead of one per message
    /// (in a fan-out the lock's cache line is last written by this connection's writer on
    /// another core, so each take of it is a cache miss). Returns the messages queued and dropped;
    /// none of either once the connection is closing.
    pub fn deliver_run(&self, sid: u64, run: &Msgs) -> (u64, u64) {
        if self.closed.load(Ordering::Relaxed) {
            return (0, 0);
        }
        let (mut queued, mut dropped, mut turned_slow) = (0, 0, false);
        let mut q = self.lock();
        let was_empty = q.buf.is_empty();
        for (topic, headers, buf, payload) in run.iter() {
            match self.push_locked(&mut q, sid, topic, headers, buf, payload) {
                Ok(()) => queued += 1,
                Err(slow) => {
                    dropped += 1;
                    turned_slow |= slow;
                }
            }
        }
        drop(q);
        if dropped > 0 {
            self.count_drops(dropped, turned_slow);
        }
        if was_empty && queued > 0 {
            self.wake.notify_one();
        }
        (queued, dropped)
    }

    /// One message into the locked queue. `Err(turned_slow)` when the queue is full: the
    /// drop is noted for `DROPPED`, and `turned_slow` says this drop made the run of drops
    /// last `slow_after` (the caller signals the writer, after unlocking).
    fn push_locked(
        &self,
        q: &mut Queue,
        sid: u64,
        topic: &[u8],
        headers: &Headers,
        buf: &Bytes,
        payload: Range<usize>,
    ) -> Result<(), bool> {
        if q.buf.len() + payload.len() > self.max_pending {
            *q.dropped.entry(sid).or_default() += 1;
            let now = Instant::now();
            let since = *q.full_since.get_or_insert(now);
            let turned_slow = !q.slow && now.duration_since(since) >= self.slow_after;
            q.slow |= turned_slow;
            return Err(turned_slow);
        }
        q.full_since = None;
        q.buf.push_msg_from(sid, topic, headers, buf, payload);
        if q.buf.len() > self.press_level() && !self.pressing.load(Ordering::Relaxed) {
            self.pressing.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn count_drops(&self, n: u64, turned_slow: bool) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        if turned_slow {
            self.slow_signal.notify_one();
        }
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

    /// Queues a stream's `DATA` chunk (a large one by reference). Never dropped: the
    /// stream's credit bounds what a receiver is sent ([`fovea_core::frame::MAX_CREDIT`]).
    pub fn send_data(&self, id: u64, flags: u64, chunk: &Bytes) {
        let mut q = self.lock();
        let was_empty = q.buf.is_empty();
        q.buf.push_data(id, flags, chunk);
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

    /// Queues a run of messages as `FWD` frames for `realm` (a mesh link's), in order,
    /// under one lock, within the queue's bound as [`Outbound::send_bounded`]: returns the
    /// frames queued and those dropped at a full queue. A queue filled past its press
    /// level holds the publisher back, as a subscriber's does ([`Outbound::pressing`]).
    pub fn forward_run(&self, realm: &[u8], run: &Msgs) -> (u64, u64) {
        if self.closed.load(Ordering::Relaxed) {
            return (0, run.len() as u64);
        }
        let (mut queued, mut dropped) = (0, 0);
        let mut q = self.lock();
        let was_empty = q.buf.is_empty();
        for (topic, headers, buf, payload) in run.iter() {
            if q.buf.len() > self.max_pending {
                dropped += 1;
                continue;
            }
            q.buf.push_fwd_from(realm, topic, headers, buf, payload);
            queued += 1;
        }
        if q.buf.len() > self.press_level() && !self.pressing.load(Ordering::Relaxed) {
            self.pressing.store(true, Ordering::Relaxed);
        }
        drop(q);
        if was_empty && queued > 0 {
            self.wake.notify_one();
        }
        (queued, dropped)
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
        self.take_some_into(into, usize::MAX)
    }

    /// As [`Outbound::take_into`], but at most about `max` bytes of a long queue (whole
    /// encode buffers; see `OutBuf::take_some_into`): a client's writer hands a backlog to
    /// the transport in steps, so the queue shrinks while its reader takes it and a
    /// publisher held back for it ([`Outbound::relieved`]) resumes at the pace of each
    /// step. Once messages have been dropped it takes everything, and the `DROPPED`
    /// notices follow every message queued before the drops.
    ///
    /// # Errors
    /// As [`Outbound::take_into`].
    pub fn take_some_into(&self, into: &mut Vec<Bytes>, max: usize) -> Result<(), TooSlow> {
        let mut q = self.lock();
        if q.slow {
            return Err(TooSlow);
        }
        // While messages are being dropped, everything goes at once, as before steps: the
        // `DROPPED` notices follow the queue, and a reader that stays behind would
        // otherwise never see them.
        let max = if q.dropped.is_empty() { max } else { usize::MAX };
        let empty = q.buf.take_some_into(into, max);
        // The reader took something: it is alive, and publishers may be held back for it
        // again (`stuck` is set when a hold-back ran out without a take).
        self.stuck.store(false, Ordering::Relaxed);
        let still = q.buf.len() > self.press_level();
        if self.pressing.swap(still, Ordering::Relaxed) {
            self.relieved.notify_waiters();
        }
        if empty && !q.dropped.is_empty() {
            let mut notices = BytesMut::new();
            let q = &mut *q;
            for (sid, count) in q.dropped.drain() {
                if q.announced.len() < MAX_ANNOUNCED || q.announced.contains_key(&sid) {
                    *q.announced.entry(sid).or_default() += count;
                }
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

    /// Every message dropped for this connection, per subscription id, over its life
    /// (announced by `DROPPED` or not): what a `SLOW_CONSUMER` close reports
    /// ([`fovea_core::frame::slow_consumer_reason`]).
    pub fn drops(&self) -> Vec<(u64, u64)> {
        let q = self.lock();
        let mut all = q.announced.clone();
        for (sid, count) in &q.dropped {
            *all.entry(*sid).or_default() += count;
        }
        all.into_iter().collect()
    }

    /// Waits until the connection has been dropping messages for `slow_after`.
    ///
    /// # Cancel safety
    /// Cancel safe: the signal is kept for the next call.
    pub async fn turned_slow(&self) {
        self.slow_signal.notified().await;
    }

    /// Whether more than [`Outbound::press_level`] is queued and the queue's reader
    /// is alive: a publisher delivering here should hold back ([`Outbound::relieved`]).
    pub fn pressing(&self) -> bool {
        self.pressing.load(Ordering::Relaxed) && !self.stuck.load(Ordering::Relaxed)
    }

    /// A hold-back ran out before the writer took anything: the reader has stopped (not
    /// just slowed), and holding publishers back would only slow everyone else they feed.
    /// Until the next take, this queue holds no one back and fills to its bound, where it
    /// drops (`max_pending_bytes`).
    pub fn mark_stuck(&self) {
        self.stuck.store(true, Ordering::Relaxed);
    }

    /// Waits until the writer takes the queue, if it is [`pressing`](Outbound::pressing).
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits.
    pub async fn relieved(&self) {
        let relieved = self.relieved.notified();
        tokio::pin!(relieved);
        // Registered before the check, so a take between the two is not missed.
        relieved.as_mut().enable();
        if self.pressing() && !self.closed.load(Ordering::Relaxed) {
            relieved.await;
        }
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
        self.pressing.store(false, Ordering::Relaxed);
        self.relieved.notify_waiters();
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fovea_core::frame::Publish;
    use proptest::prelude::*;

    fn publish(topic: &'static str, len: usize, fill: u8) -> Publish {
        Publish {
            topic: Bytes::from_static(topic.as_bytes()),
            headers: Headers::new(),
            payload: vec![fill; len].into(),
        }
    }

    /// `run` as a node reads it: the frames before `split` in one buffer, the rest in
    /// another, each decoded in place.
    fn msgs_of(run: &[Publish], split: usize) -> Msgs {
        let mut msgs = Msgs::default();
        let (a, b) = run.split_at(split.min(run.len()));
        for part in [a, b] {
            let mut buf = bytes::BytesMut::new();
            for p in part {
                Frame::Pub(p.clone()).encode(&mut buf);
            }
            let mut src = buf.freeze();
            while !src.is_empty() {
                let mut on_pub = |p: PubAt<'_>| msgs.push(p);
                let used = match Frame::decode_diverting_pub(&src, usize::MAX, &mut on_pub) {
                    Ok(Some((None, used))) => used,
                    other => panic!("not a PUB: {other:?}"),
                };
                src = src.slice(used..);
            }
        }
        msgs
    }

    fn drain(out: &Outbound) -> Vec<u8> {
        let mut chunks = Vec::new();
        assert!(out.take_into(&mut chunks).is_ok());
        chunks.concat()
    }

    proptest! {
        /// A run is exactly its messages delivered one by one: the same bytes queued, in
        /// the same order, the same messages dropped at the bound, the same `DROPPED`.
        #[test]
        fn a_run_queues_and_drops_what_single_deliveries_would(
            sizes in proptest::collection::vec(0usize..3000, 0..80),
            max_pending in 0usize..20_000,
            split in 0usize..80,
        ) {
            let run: Vec<Publish> =
                sizes.iter().enumerate().map(|(i, len)| publish("a.b", *len, i as u8)).collect();
            let single = Outbound::new(max_pending, Duration::from_secs(60), true);
            let batched = Outbound::new(max_pending, Duration::from_secs(60), true);
            let mut counts = (0u64, 0u64);
            for p in &run {
                match single.deliver(7, &p.topic, &p.headers, &p.payload) {
                    Delivered::Queued => counts.0 += 1,
                    Delivered::Dropped => counts.1 += 1,
                    Delivered::Closed => unreachable!("not closed"),
                }
            }
            let msgs = msgs_of(&run, split);
            // One reference per buffer the run's messages lie in, not one per message.
            prop_assert!(msgs.bufs.len() <= 2);
            prop_assert_eq!(batched.deliver_run(7, &msgs), counts);
            prop_assert_eq!(batched.dropped.load(Ordering::Relaxed), counts.1);
            prop_assert_eq!(drain(&batched), drain(&single));
        }
    }

    /// A payload long enough to be queued by reference is sliced from the buffer it came
    /// in, between copied ones, and the bytes queued are those of one-by-one deliveries.
    #[test]
    fn a_run_queues_large_payloads_by_reference() {
        let run = [publish("a", 10, 1), publish("a.b", fovea_core::outbuf::BY_REF_MIN + 5, 2), publish("a", 0, 3)];
        let (single, batched) = (
            Outbound::new(1 << 20, Duration::from_secs(60), true),
            Outbound::new(1 << 20, Duration::from_secs(60), true),
        );
        for p in &run {
            assert_eq!(single.deliver(3, &p.topic, &p.headers, &p.payload), Delivered::Queued);
        }
        assert_eq!(batched.deliver_run(3, &msgs_of(&run, 2)), (3, 0));
        assert_eq!(drain(&batched), drain(&single));
    }

    /// A reader that stays behind still hears of its drops: once messages are dropped, a
    /// step takes the whole queue, with the `DROPPED` notice after it.
    #[test]
    fn drops_are_announced_to_a_reader_taking_in_steps() {
        let out = Outbound::new(4096, Duration::from_secs(60), true);
        let p = publish("a", 1000, 1);
        let mut dropped = 0;
        for _ in 0..10 {
            if out.deliver(5, &p.topic, &p.headers, &p.payload) == Delivered::Dropped {
                dropped += 1;
            }
        }
        assert!(dropped > 0);
        let mut chunks = Vec::new();
        assert!(out.take_some_into(&mut chunks, 1).is_ok());
        let mut d = fovea_core::Deframer::new(fovea_core::limits::MAX_FRAME);
        d.push(Bytes::from(chunks.concat()));
        let mut frames = Vec::new();
        while let Ok(Some(f)) = d.next_frame() {
            frames.push(f);
        }
        assert_eq!(frames.len(), 10 - dropped as usize + 1, "every queued message, then the notice");
        assert_eq!(frames.last(), Some(&Frame::Dropped(Dropped { sid: 5, count: dropped })));
    }

    /// Publishers are held back once an eighth of the bound is queued, so that most of
    /// it is left for a hold-back that runs out; a stuck queue holds no one back, a take
    /// below the level ends the pressing, and after a take it holds back again.
    #[test]
    fn a_queue_presses_above_an_eighth_of_its_bound_until_taken_below_it() {
        let max = 80_000;
        let out = Outbound::new(max, Duration::from_secs(60), true);
        let p = publish("a", 1000, 1);
        let level = out.press_level();
        assert_eq!(level, max / PRESS_FRACTION);
        while out.pending() + 1100 <= level {
            assert_eq!(out.deliver(1, &p.topic, &p.headers, &p.payload), Delivered::Queued);
            assert!(!out.pressing(), "{} bytes queued of {max}", out.pending());
        }
        while out.pending() <= level {
            assert_eq!(out.deliver(1, &p.topic, &p.headers, &p.payload), Delivered::Queued);
        }
        assert!(out.pressing(), "{} bytes queued of {max}", out.pending());
        assert!(out.pending() < max / 2, "held back well before half the bound");
        out.mark_stuck();
        assert!(!out.pressing(), "a stuck queue holds no one back");
        drain(&out);
        assert!(!out.pressing(), "taken below the level");
        // The take showed its reader alive: filled past the level again, it holds back.
        while out.pending() <= level {
            assert_eq!(out.deliver(1, &p.topic, &p.headers, &p.payload), Delivered::Queued);
        }
        assert!(out.pressing());
    }

    #[test]
    fn a_closed_queue_takes_no_run() {
        let out = Outbound::new(1 << 20, Duration::from_secs(60), true);
        out.close();
        assert_eq!(out.deliver_run(1, &msgs_of(&[publish("a", 10, 1)], 0)), (0, 0));
        assert!(drain(&out).is_empty());
        assert_eq!(out.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_run_that_keeps_dropping_past_slow_after_turns_the_queue_slow() {
        let out = Outbound::new(100, Duration::ZERO, true);
        let run = [publish("a", 50, 1), publish("a", 500, 2), publish("a", 10, 3)];
        assert_eq!(out.deliver_run(1, &msgs_of(&run, 1)), (2, 1));
        let mut chunks = Vec::new();
        assert!(out.take_into(&mut chunks).is_err(), "a drop with slow_after of zero is too slow");
    }
}
