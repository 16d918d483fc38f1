//! Reading the control stream: frames are decoded as they arrive, publishes routed in
//! place (in runs to the same subscribers, held back for a subscriber that falls behind,
//! forwarded to other nodes), other frames handed to [`Session::control`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use fovea_core::frame::{PubAt, Publish};
use fovea_core::{Deframer, ErrorCode};

use super::control::shown;
use super::{Close, Session};
use crate::handle::outbound::Delivered;
use crate::handle::Handle;
use crate::routing::SubRef;

/// Most chunks a publishing connection's read takes from its stream, under one lock of
/// the QUIC connection. A chunk is what one packet carried (~1.4 KB on a default path):
/// read one at a time, a busy publisher's messages were routed ~17 per read, and each read
/// paid the lock, a future and a delivery run of its own.
pub(super) const READ_BATCH: usize = 16;

/// Consecutive publishes of one read that go to the same subscribers, all plain (the
/// same cached match set, no queue group here or elsewhere, no discovery running):
/// delivered subscription by subscription, and forwarded node by node, one lock per
/// subscriber or link per run instead of one per message. Each subscription and each
/// link still gets its messages in publish order; two subscriptions of one connection
/// that both match see a run's messages one subscription after the other.
///
/// Bounded: at most [`Run::MAX`] messages, each kept as positions in the read buffer it
/// came in (one reference per buffer).
#[derive(Default)]
struct Run {
    subs: Option<Arc<crate::routing::Matches>>,
    msgs: crate::handle::outbound::Msgs,
    /// The publisher's realm when it spans the mesh (runs with remote subscribers are
    /// forwarded to their nodes).
    realm: Option<Arc<crate::routing::Realm>>,
    /// The first subscriber this read delivered to whose queue was more than an eighth full:
    /// the connection's next read waits for it (`producer_stall`).
    press: Option<Arc<Handle>>,
}

impl Run {
    /// Longest run: past it the run is delivered and a new one starts. Keeps the buffer
    /// small (6 KB) and the first message's wait short.
    const MAX: usize = 64;

    /// A run for the publisher's connection to `realm`.
    fn new(realm: &Arc<crate::routing::Realm>) -> Run {
        Run { realm: realm.interest.is_some().then(|| realm.clone()), ..Run::default() }
    }

    /// No mesh routing to do for these matches.
    fn local_only(subs: &crate::routing::Matches) -> bool {
        !subs.remote_pending && subs.remote.is_empty() && subs.remote_groups.is_empty()
    }

    /// Messages for these matches can join a run: every target plain (here, or on another
    /// node) and known.
    fn batchable(subs: &crate::routing::Matches) -> bool {
        subs.groups.is_empty() && subs.remote_groups.is_empty() && !subs.remote_pending
    }

    /// Adds `p` for `subs` (plain, local); returns the deliveries of a run this ended.
    fn push(&mut self, subs: &Arc<crate::routing::Matches>, p: PubAt<'_>, stats: &crate::stats::Stats) -> u64 {
        let mut n = 0;
        match &self.subs {
            Some(current) if Arc::ptr_eq(current, subs) => {}
            _ => {
                n = self.flush(stats);
                self.subs = Some(subs.clone());
            }
        }
        if self.msgs.capacity() == 0 {
            // One allocation per read that has runs, not one per doubling up to MAX.
            self.msgs.reserve(Self::MAX);
        }
        self.msgs.push(p);
        if self.msgs.len() >= Self::MAX {
            n += self.flush(stats);
        }
        n
    }

    /// Delivers the run; returns the deliveries queued.
    fn flush(&mut self, stats: &crate::stats::Stats) -> u64 {
        let Some(subs) = self.subs.take() else { return 0 };
        let mut n = 0;
        for s in &subs.plain {
            let (queued, dropped) = s.handle.out.deliver_run(s.sid, &self.msgs);
            note_pressing(&mut self.press, &s.handle);
            n += queued;
            if dropped > 0 {
                stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            }
        }
        if let Some(realm) = self.realm.as_ref().filter(|_| !subs.remote.is_empty()) {
            if let Some(interest) = &realm.interest {
                for node in &subs.remote {
                    // A link whose queue fills holds the publisher back as a subscriber
                    // does: a publisher faster than the link slows to it instead of
                    // outrunning it into drops.
                    if let Some(link) = interest.forward_run(*node, &realm.wire_name, &self.msgs) {
                        self.press.get_or_insert(link);
                    }
                }
            }
        }
        self.msgs.clear();
        n
    }
}

/// Remembers `peer` as the one to hold this read's publisher back for, if its queue is
/// more than an eighth full and no other was found first.
fn note_pressing(press: &mut Option<Arc<Handle>>, peer: &Arc<Handle>) {
    if press.is_none() && peer.out.pressing() {
        *press = Some(peer.clone());
    }
}

impl Session {
    /// Reads one chunk and handles every frame it completes. `Ok(false)`: the client
    /// finished its stream.
    ///
    /// # Cancel safety
    /// Cancel safe: the awaits are the hold-back, whose deadline stays in `self` until it
    /// is over, and the read, and what the read took is handled completely.
    pub(super) async fn read_some(&mut self) -> Result<bool, Close> {
        if let Some((peer, until)) = &self.stall {
            // The last read fed a subscriber whose queue is more than an eighth full: wait for
            // its writer to take it (bounded), so this publisher slows to what the
            // subscriber reads instead of outrunning it into drops. Kept in `self` until
            // done, so a cancelled wait resumes with the same deadline.
            if tokio::time::timeout_at(*until, peer.out.relieved()).await.is_err() {
                // Its writer took nothing in that time: the reader has stopped, not slowed.
                peer.out.mark_stuck();
                self.shared.router.stats.stall_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            self.stall = None;
        }
        // A read that finds data never returns `Pending` (quinn's streams are not tokio
        // resources and spend no budget), so a connection whose client keeps sending would
        // keep its worker for as long as it sends. What it wakes meanwhile — a subscriber's
        // writer — lands in that worker's LIFO slot, which no other worker may steal, and
        // waits, and a publisher held back for it runs free once `producer_stall` passes
        // (BENCHMARKS.md counts how often). Paying one unit per chunk makes such a task
        // yield about every eighth full read. Before the read, so cancelling here loses
        // nothing.
        while self.budget_owed > 0 {
            tokio::task::consume_budget().await;
            self.budget_owed -= 1;
        }
        match self.read_chunks().await? {
            Some(n) => self.handle_chunks(n),
            None => Ok(false),
        }
    }

    /// Reads the next chunks into `self.chunks`; returns how many, or `None` when the
    /// client finished its stream between frames.
    async fn read_chunks(&mut self) -> Result<Option<usize>, Close> {
        match self.recv.read_chunks(&mut self.chunks).await {
            Ok(Some(n)) => {
                self.budget_owed = n;
                self.read_at = None;
                Ok(Some(n))
            }
            Ok(None) if self.deframer.buffered() > 0 => {
                self.shared.router.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                Err(Close::new(ErrorCode::ProtocolError, "the stream ended inside a frame"))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                if e.code != ErrorCode::NoError {
                    self.shared.router.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                }
                Err(Close::new(e.code, format!("read: {e}")))
            }
        }
    }

    /// Handles every frame that the deframer holds and the first `n` of `self.chunks`
    /// complete.
    pub(super) fn handle_chunks(&mut self, n: usize) -> Result<bool, Close> {
        let shared = self.shared.clone();
        let stats = &shared.router.stats;
        let (mut msgs, mut deliveries, mut bytes) = (0u64, 0u64, 0u64);
        let mut run = Run::new(&self.realm);
        // Out of `self` while the read is routed, so publishes can be routed as they are
        // decoded (`publish` needs `&mut self`) without each becoming a `Frame` first.
        // Put back below; nothing in between awaits or returns early.
        let mut deframer = std::mem::replace(&mut self.deframer, Deframer::new(0));
        let mut chunks = std::mem::take(&mut self.chunks);
        let mut result = Ok(true);
        // The deframer takes a chunk once the one before is drained (no reassembly copy);
        // it is drained first too, for frames left from the handshake's read.
        let mut next = chunks.iter_mut().take(n);
        'chunks: loop {
            loop {
                let next = deframer.next_frame_or_pubs(|p| {
                    msgs += 1;
                    deliveries += self.publish(p, &mut run);
                });
                match next {
                    Ok(Some(frame)) => {
                        deliveries += run.flush(stats);
                        if let Err(close) = self.control(frame) {
                            result = Err(close);
                            break 'chunks;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        result = Err(Close::new(e.code(), e.to_string()));
                        break 'chunks;
                    }
                }
            }
            let Some(chunk) = next.next() else { break };
            bytes += chunk.len() as u64;
            deframer.push(std::mem::take(chunk));
        }
        if msgs > 0 && chunks.len() < READ_BATCH {
            chunks.resize(READ_BATCH, Bytes::new());
        }
        self.deframer = deframer;
        self.chunks = chunks;
        // What was published before a malformed frame is delivered, as it would have been
        // had it come in an earlier read.
        deliveries += run.flush(stats);
        let limit = shared.config.limits.producer_stall;
        if let Some(peer) = run.press.take().filter(|_| !limit.is_zero()) {
            stats.stalls.fetch_add(1, Ordering::Relaxed);
            self.stall = Some((peer, tokio::time::Instant::now() + limit));
        }
        // Counters are added once per read, not per message: shared cache lines are the
        // one cost a per-connection design must still avoid.
        stats.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        stats.msgs_in.fetch_add(msgs, Ordering::Relaxed);
        stats.deliveries.fetch_add(deliveries, Ordering::Relaxed);
        result
    }

    /// Routes one publish; returns the number of deliveries queued (by this publish, or by
    /// the run it ended). A publish whose subscribers are all plain and on this node joins
    /// `run`, delivered when the run ends; any other is routed at once, after the run.
    fn publish(&mut self, p: PubAt<'_>, run: &mut Run) -> u64 {
        let stats = &self.shared.router.stats;
        let limits = &self.shared.config.limits;
        if p.payload().len() > limits.max_payload {
            let n = run.flush(stats);
            let why = format!(
                "payload of {} bytes exceeds this node's max_payload of {}",
                p.payload().len(),
                limits.max_payload
            );
            self.reject(ErrorCode::PayloadTooLarge, 0, why);
            return n;
        }
        if p.headers.encoded_len() > limits.max_headers_len {
            let n = run.flush(stats);
            let max = limits.max_headers_len;
            let why =
                format!("headers of {} bytes exceed this node's max_headers_len of {max}", p.headers.encoded_len());
            self.reject(ErrorCode::PayloadTooLarge, 0, why);
            return n;
        }
        let refused = match self.cache.lookup(&self.realm, p.topic(), &self.perms.publish) {
            Ok((subs, true)) if Run::batchable(subs) => return run.push(subs, p, stats),
            Ok((subs, true)) => Ok(subs.clone()),
            Ok((_, false)) => Err(None),
            Err(e) => Err(Some(e)),
        };
        let subs = match refused {
            Ok(subs) => subs,
            Err(invalid) => {
                let n = run.flush(stats);
                let topic = shown(p.topic());
                match invalid {
                    Some(e) => self.reject(ErrorCode::InvalidTopic, 0, format!("topic {topic:?} {e}")),
                    None => self.reject(ErrorCode::PermissionDenied, 0, format!("not allowed to publish to {topic:?}")),
                }
                return n;
            }
        };
        let mut n = run.flush(stats);
        // Kept past this read (mesh forwarding) or delivered one by one: the owned form.
        let p = p.to_publish();
        let press = &mut run.press;
        let mut deliver = |s: &SubRef| {
            match s.handle.out.deliver(s.sid, &p.topic, &p.headers, &p.payload) {
                Delivered::Queued => n += 1,
                Delivered::Dropped => {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Delivered::Closed => {}
            }
            note_pressing(press, &s.handle);
        };
        if Run::local_only(&subs) {
            subs.for_each_target(&mut self.rng, deliver);
            return n;
        }
        let (sends, served) = subs.for_each_target_mesh(&mut self.rng, &mut deliver);
        self.forward(&subs, sends, served, p);
        n
    }

    /// Sends a publish to the other nodes that want it (mesh), or holds it while their
    /// discovery runs.
    fn forward(
        &self,
        subs: &crate::routing::Matches,
        sends: Vec<(fovea_core::dht::Contact, Vec<crate::routing::interest::GroupId>)>,
        served: Vec<crate::routing::interest::GroupId>,
        p: Publish,
    ) {
        let Some(interest) = self.realm.interest.as_ref() else { return };
        let fwd = fovea_core::frame::Forward {
            realm: self.realm.wire_name.clone(),
            topic: p.topic,
            headers: p.headers,
            groups: Vec::new(),
            payload: p.payload,
        };
        if subs.remote_pending {
            // Copy the topic out of the read buffer it points into before it waits.
            let Ok(topic) = fovea_core::Topic::from_bytes(Bytes::copy_from_slice(&fwd.topic)) else { return };
            let fwd = fovea_core::frame::Forward { topic: topic.as_shared().clone(), ..fwd };
            if interest.hold(&self.realm.name, &topic, fwd.clone(), served) {
                return;
            }
            // Discovery ended since the cache entry was made: plain subscribers elsewhere
            // get it now (groups were decided here).
            for c in interest.remote_targets(&self.realm.name, &topic).nodes {
                interest.forward(c, fwd.clone());
            }
            return;
        }
        for (c, groups) in sends {
            interest.forward(c, fovea_core::frame::Forward { groups, ..fwd.clone() });
        }
    }
}
