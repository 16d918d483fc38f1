//! Streamed messages: one publisher, many receivers, paced by the slowest.
//!
//! A message larger than a frame (or one its publisher wants to stream) travels as a head
//! (`PUB_STREAM`, `MSG_STREAM`, `FWD_STREAM`) and `DATA` chunks. The node relays each chunk
//! to every receiver by reference and keeps nothing: a receiver (a subscriber, or a link
//! standing for another node's subscribers) allows bytes with `CREDIT`, and the
//! publisher is granted what the receiver that allowed least has allowed. So nothing
//! queues at the node beyond what every receiver let in, and a slow receiver slows the
//! publisher instead of filling memory.
//!
//! A receiver that holds the others back for the node's `slow_consumer_timeout` (twice
//! that for a link, whose own node cuts its slow subscribers first) is cut from the
//! message: it gets `DATA` with `CUT`, the others go on. Two tables, one per side, as for
//! calls:
//!
//! ```text
//!  publisher Handle.messages.sending:   its id → Fanout (receivers, bytes sent, credit granted)
//!  receiver  Handle.messages.receiving: id given there → (publisher Handle, its id, sid)
//! ```
//!
//! Locks: only one party's table is held at a time; frames are queued after it is released.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::fast::RandomState;
use fovea_core::frame::{
    data_flags, Credit, Delivery, Forward, FwdStream, MsgStream, Publish, INITIAL_CREDIT, MAX_CREDIT,
};
use fovea_core::Frame;

use super::{Flow, Handle};
use crate::sync::lock;

/// Most message streams a client connection may publish at once; more are refused
/// (`BUSY`).
pub(crate) const MAX_PUBLISHING: usize = 64;

/// Most message streams a link may bring at once: the other node's publishers' together
/// (each of them bounded by [`MAX_PUBLISHING`]). Past it the link breaks the protocol.
pub(crate) const MAX_PUBLISHING_LINK: usize = 65_536;

/// A party's message streams, both ways.
#[derive(Default)]
pub(crate) struct Messages {
    /// Streams this party publishes, by the id it chose.
    sending: HashMap<u64, Fanout, RandomState>,
    /// Streams the node sends to this party, by the id the node gave them here.
    receiving: HashMap<u64, Source, RandomState>,
    /// The next id for `receiving` (ids are never reused on a connection).
    next_id: u64,
}

/// Where a stream a party receives comes from.
struct Source {
    publisher: Arc<Handle>,
    /// The publisher's id for it.
    id: u64,
    /// The subscription it was sent for (0 on a link).
    sid: u64,
}

/// One published stream and its receivers.
struct Fanout {
    receivers: Vec<Receiver>,
    /// Bytes of chunks the publisher has sent.
    sent: u64,
    /// Credit granted to the publisher, in total. Invariants: `granted` ≤ every receiver's
    /// `allowed`, and `granted - sent` ≤ [`MAX_CREDIT`].
    granted: u64,
    /// The receivers are not known yet (their nodes are being found): no credit.
    pending: bool,
    /// Since when the publisher has used all its credit while receivers held it back.
    starved: Option<Instant>,
}

/// One receiver of a stream.
struct Receiver {
    handle: Arc<Handle>,
    /// The stream's id there.
    id: u64,
    /// Bytes of chunks it has allowed, in total (starting with [`INITIAL_CREDIT`]).
    allowed: u64,
}

/// Where a streamed message goes: a subscription here, or another node.
pub(crate) enum Via {
    /// A local subscription: `MSG_STREAM` with its sid.
    Sub(u64),
    /// A link: `FWD_STREAM` for the realm (wire name), naming the queue groups whose
    /// delivery falls to that node.
    Link { realm: Bytes, groups: Vec<(Bytes, Bytes)> },
}

/// Why a stream could not open.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The id is already open.
    DuplicateId,
    /// [`MAX_PUBLISHING`] are open ([`MAX_PUBLISHING_LINK`] on a link).
    TooMany,
}

impl Fanout {
    /// Raises the publisher's credit to what every receiver allowed (with no receiver left,
    /// a window of [`INITIAL_CREDIT`] past what was sent: the message goes nowhere, as a
    /// publish without subscribers does). Returns the bytes to grant.
    fn regrant(&mut self) -> u64 {
        if self.pending {
            return 0;
        }
        let allowed = match self.receivers.iter().map(|r| r.allowed).min() {
            Some(min) => min,
            None => self.sent + INITIAL_CREDIT,
        };
        let target = allowed.min(self.sent + MAX_CREDIT);
        if target <= self.granted {
            return 0;
        }
        let more = target - self.granted;
        self.granted = target;
        self.starved = None;
        more
    }

    /// Takes out the receivers whose window is empty (they hold the publisher back).
    fn take_stalled(&mut self, links_too: bool) -> Vec<Receiver> {
        let sent = self.sent;
        let (stalled, kept) = std::mem::take(&mut self.receivers)
            .into_iter()
            .partition(|r| r.allowed <= sent && (links_too || !r.handle.is_link()));
        self.receivers = kept;
        stalled
    }
}

/// Ends `receivers`' copies of a stream: each gets `DATA` with `CUT` and forgets it.
fn cut(receivers: Vec<Receiver>) {
    for r in receivers {
        lock(&r.handle.messages).receiving.remove(&r.id);
        r.handle.out.send_data(r.id, data_flags::MESSAGE | data_flags::CUT, &Bytes::new());
    }
}

impl Handle {
    /// Publisher side: opens stream `id` with no receivers yet and the credit the
    /// publisher starts with (a client's `PUB_STREAM`: none, the node grants it once the
    /// receivers are known; a link's `FWD_STREAM`: [`INITIAL_CREDIT`], as every receiver's
    /// first window). Kept until it ends.
    pub fn reserve_stream(&self, id: u64, initial: u64) -> Result<(), Refused> {
        let mut m = lock(&self.messages);
        if m.sending.contains_key(&id) {
            return Err(Refused::DuplicateId);
        }
        let max = if self.is_link() { MAX_PUBLISHING_LINK } else { MAX_PUBLISHING };
        if m.sending.len() >= max {
            return Err(Refused::TooMany);
        }
        let f = Fanout { receivers: Vec::new(), sent: 0, granted: initial, pending: true, starved: None };
        m.sending.insert(id, f);
        Ok(())
    }

    /// Publisher side: the receivers of stream `id` (reserved), each sent the message's
    /// head (`msg`, its first part); then the publisher's first credit. Receivers whose
    /// protocol has no message streams are left out; returns how many those were.
    pub fn attach_receivers(self: &Arc<Self>, id: u64, msg: &Publish, to: Vec<(Arc<Handle>, Via)>) -> usize {
        let mut skipped = 0;
        let mut receivers = Vec::with_capacity(to.len());
        let mut heads = Vec::with_capacity(to.len());
        for (handle, via) in to {
            if handle.version < fovea_core::frame::VERSION_MESSAGE_STREAMS || handle.out.is_closed() {
                skipped += 1;
                continue;
            }
            let sid = match via {
                Via::Sub(sid) => sid,
                Via::Link { .. } => 0,
            };
            let rid = {
                let mut m = lock(&handle.messages);
                m.next_id += 1;
                let rid = m.next_id;
                m.receiving.insert(rid, Source { publisher: self.clone(), id, sid });
                rid
            };
            heads.push((handle.clone(), rid, via));
            receivers.push(Receiver { handle, id: rid, allowed: INITIAL_CREDIT });
        }
        let grant = {
            let mut m = lock(&self.messages);
            let Some(f) = m.sending.get_mut(&id) else {
                // Ended meanwhile (the publisher went away): nothing is sent.
                drop(m);
                for r in receivers {
                    lock(&r.handle.messages).receiving.remove(&r.id);
                }
                return skipped;
            };
            f.receivers = receivers;
            f.pending = false;
            f.regrant()
        };
        for (handle, rid, via) in heads {
            let head = match via {
                Via::Sub(sid) => Frame::MsgStream(MsgStream {
                    id: rid,
                    msg: Delivery {
                        sid,
                        topic: msg.topic.clone(),
                        headers: msg.headers.clone(),
                        payload: msg.payload.clone(),
                    },
                }),
                Via::Link { realm, groups } => Frame::FwdStream(Box::new(FwdStream {
                    id: rid,
                    fwd: Forward {
                        realm,
                        topic: msg.topic.clone(),
                        headers: msg.headers.clone(),
                        groups,
                        payload: msg.payload.clone(),
                    },
                })),
            };
            handle.out.send(&head);
        }
        // A receiver that closed as it was added has dropped its table already (its
        // `out.close()` comes first): take it out here, or it would hold the stream back.
        let closed: Vec<Receiver> = {
            let mut m = lock(&self.messages);
            match m.sending.get_mut(&id) {
                Some(f) => {
                    let (closed, open) =
                        std::mem::take(&mut f.receivers).into_iter().partition(|r| r.handle.out.is_closed());
                    f.receivers = open;
                    closed
                }
                None => Vec::new(),
            }
        };
        let grant = grant + if closed.is_empty() { 0 } else { self.regrant_stream(id) };
        for r in closed {
            lock(&r.handle.messages).receiving.remove(&r.id);
        }
        if grant > 0 {
            self.out.send(&Frame::Credit(Credit { id, flags: data_flags::MESSAGE, bytes: grant }));
        }
        skipped
    }

    fn regrant_stream(&self, id: u64) -> u64 {
        lock(&self.messages).sending.get_mut(&id).map_or(0, Fanout::regrant)
    }

    /// Publisher side: a chunk of stream `id` (`flags` may hold `END` or `CUT`), relayed to
    /// every receiver within the credit granted. A chunk beyond it, or larger than
    /// `max_chunk`, breaks the stream (one past `max_stream_bytes` makes it too large):
    /// its receivers are cut.
    pub fn publish_data(&self, id: u64, flags: u64, chunk: &Bytes, max_chunk: usize) -> Flow {
        let ends = flags & (data_flags::END | data_flags::CUT) != 0;
        let (targets, grant) = {
            let mut m = lock(&self.messages);
            let Some(f) = m.sending.get_mut(&id) else { return Flow::Late };
            let len = chunk.len() as u64;
            let over = f.sent.saturating_add(len) > self.max_stream;
            if len > f.granted - f.sent || chunk.len() > max_chunk || over {
                let f = m.sending.remove(&id);
                drop(m);
                if let Some(f) = f {
                    cut(f.receivers);
                }
                return if over { Flow::TooLarge } else { Flow::Broken };
            }
            f.sent += len;
            let targets: Vec<(Arc<Handle>, u64)> = f.receivers.iter().map(|r| (r.handle.clone(), r.id)).collect();
            let mut grant = 0;
            if f.receivers.is_empty() {
                grant = f.regrant();
            } else if f.sent == f.granted && f.starved.is_none() {
                f.starved = Some(Instant::now());
            }
            if ends {
                m.sending.remove(&id);
            }
            (targets, grant)
        };
        let flags = data_flags::MESSAGE | (flags & (data_flags::END | data_flags::CUT));
        for (handle, rid) in targets {
            if ends {
                lock(&handle.messages).receiving.remove(&rid);
            }
            handle.out.send_data(rid, flags, chunk);
        }
        if grant > 0 && !ends {
            self.out.send(&Frame::Credit(Credit { id, flags: data_flags::MESSAGE, bytes: grant }));
        }
        Flow::Passed
    }

    /// Receiver side: `CREDIT` for stream `id` as this party knows it (with `CUT`: it wants
    /// no more of it), passed on to the publisher as what the slowest receiver allows.
    pub fn message_credit(&self, id: u64, flags: u64, bytes: u64) -> Flow {
        let stop = flags & data_flags::CUT != 0;
        let source = {
            let mut m = lock(&self.messages);
            let Some(s) = m.receiving.get(&id) else { return Flow::Late };
            let source = (s.publisher.clone(), s.id);
            if stop {
                m.receiving.remove(&id);
            }
            source
        };
        let (publisher, pub_id) = source;
        let (grant, flow) = {
            let mut m = lock(&publisher.messages);
            let Some(f) = m.sending.get_mut(&pub_id) else { return Flow::Late };
            let Some(i) = f.receivers.iter().position(|r| r.id == id && std::ptr::eq(Arc::as_ptr(&r.handle), self))
            else {
                return Flow::Late;
            };
            let flow = if stop {
                f.receivers.swap_remove(i);
                Flow::Passed
            } else {
                let r = &mut f.receivers[i];
                match r.allowed.checked_add(bytes).filter(|a| a.saturating_sub(f.sent) <= MAX_CREDIT) {
                    Some(a) => {
                        r.allowed = a;
                        Flow::Passed
                    }
                    None => {
                        let r = f.receivers.swap_remove(i);
                        drop(m);
                        cut(vec![r]);
                        let grant = publisher.regrant_stream(pub_id);
                        publisher.grant(pub_id, grant);
                        return Flow::Broken;
                    }
                }
            };
            (f.regrant(), flow)
        };
        publisher.grant(pub_id, grant);
        flow
    }

    fn grant(&self, id: u64, bytes: u64) {
        if bytes > 0 {
            self.out.send(&Frame::Credit(Credit { id, flags: data_flags::MESSAGE, bytes }));
        }
    }

    /// Receiver side: subscription `sid` ended; its streams are cut at their publishers
    /// (nothing more is sent for them).
    pub fn cut_receiving(&self, sid: u64) {
        let ids: Vec<u64> =
            lock(&self.messages).receiving.iter().filter(|(_, s)| s.sid == sid).map(|(id, _)| *id).collect();
        for id in ids {
            self.message_credit(id, data_flags::MESSAGE | data_flags::CUT, 0);
        }
    }

    /// Publisher side: cuts the receivers that have held stream publishing back for `after`
    /// (links: twice that), then grants what the others allow. Returns how many were cut.
    pub fn cut_stalled(&self, now: Instant, after: Duration) -> usize {
        let mut stalled = Vec::new();
        let mut grants = Vec::new();
        {
            let mut m = lock(&self.messages);
            for (id, f) in m.sending.iter_mut() {
                let Some(since) = f.starved else { continue };
                let waited = now.saturating_duration_since(since);
                if waited < after {
                    continue;
                }
                let mut taken = f.take_stalled(waited >= after * 2);
                if taken.is_empty() {
                    continue;
                }
                stalled.append(&mut taken);
                grants.push((*id, f.regrant()));
            }
        }
        let n = stalled.len();
        cut(stalled);
        for (id, bytes) in grants {
            self.grant(id, bytes);
        }
        n
    }

    /// Message streams this party publishes now.
    pub fn publishing(&self) -> usize {
        lock(&self.messages).sending.len()
    }

    /// This party is going away: its streams end for their receivers (`CUT`), and it leaves
    /// the streams it receives (their publishers go on with the others).
    pub(super) fn abandon_messages(&self) {
        let (sending, receiving) = {
            let mut m = lock(&self.messages);
            (std::mem::take(&mut m.sending), std::mem::take(&mut m.receiving))
        };
        for (_, f) in sending {
            cut(f.receivers);
        }
        for (id, s) in receiving {
            let grant = {
                let mut m = lock(&s.publisher.messages);
                let Some(f) = m.sending.get_mut(&s.id) else { continue };
                f.receivers.retain(|r| !(r.id == id && std::ptr::eq(Arc::as_ptr(&r.handle), self)));
                f.regrant()
            };
            s.publisher.grant(s.id, grant);
        }
    }
}

/// Watches a publisher's streams for receivers that stopped reading while it has any
/// open: started with its first stream, ends when it has none or is gone.
pub(crate) fn watch_stalls(publisher: &Arc<Handle>, after: Duration, cut_counter: Arc<std::sync::atomic::AtomicU64>) {
    if publisher.watching.swap(true, Ordering::AcqRel) || after.is_zero() {
        return;
    }
    let weak = Arc::downgrade(publisher);
    tokio::spawn(async move {
        let tick = (after / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(tick).await;
            let Some(h) = weak.upgrade() else { return };
            let cut = h.cut_stalled(Instant::now(), after);
            cut_counter.fetch_add(cut as u64, Ordering::Relaxed);
            if h.publishing() == 0 || h.out.is_closed() {
                h.watching.store(false, Ordering::Release);
                // A stream opened as the flag was cleared starts its own watch.
                if h.publishing() == 0 || h.watching.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        }
    });
}
