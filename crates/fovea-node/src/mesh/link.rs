//! Links: one QUIC connection per peer node, its reader and writer, and what travels on
//! it besides the DHT (forwarded messages, calls across nodes, tool lists).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fovea_core::dht::{self, Contact, NodeId};
use fovea_core::failure;
use fovea_core::frame::DhtFrame;
use fovea_core::{Deframer, ErrorCode, Frame};
use quinn_proto::VarInt;

use crate::transport::quic::{Connection, RecvStream, SendStream};

use super::driver::Input;
use super::{
    lock, Mesh, LINK_QUEUE, MIN_DIALS, REASON_DEAD, REASON_DUPLICATE, REASON_EVICTED, REASON_IDLE, RETIRE_GRACE,
};
use crate::handle::outbound::{Msgs, Outbound};
use crate::handle::Handle;
use crate::handle::ProviderRef;

/// A dial in progress and the frames waiting for it.
pub(super) struct Dialing {
    /// Tells this dial from a later one to the same peer.
    pub(super) attempt: u64,
    pub(super) frames: Vec<Frame>,
}

/// One link. Its [`Handle`] makes the link look like a client connection to the RPC
/// machinery: on the caller's node the link is a *provider* (calls go out as `REQUEST`s,
/// answers come back as `RESULT`s), on the provider's node it is a *caller*. Timeouts,
/// cancellation and "the other side went away" then work across nodes as they do within
/// one. Everything sent on the link goes through the peer's bounded queue.
pub(crate) struct Link {
    pub(super) conn: Connection,
    pub handle: Arc<Handle>,
    pub(super) addr: SocketAddr,
    /// Whether this node dialed it (for the one-link-per-pair rule).
    pub(super) dialed: bool,
    /// Caller side: (realm, procedure) → the rid announced with `BIND`.
    pub(super) bound: Mutex<HashMap<(Bytes, Bytes), u64>>,
    /// Provider side: rid → (realm, procedure), from the peer's `BIND`s.
    pub(super) binds: Mutex<HashMap<u64, (Bytes, Bytes)>>,
    /// Milliseconds since the mesh started when the link last carried a frame either way
    /// (for LRU eviction and idle reaping).
    pub(super) used: AtomicU64,
    /// Closed by this node to save a link, not because the peer is gone: its closing
    /// must not remove the peer from the DHT or the caches.
    pub(super) reaped: std::sync::atomic::AtomicBool,
}

impl Link {
    pub(super) fn touch(&self, now_ms: u64) {
        self.used.store(now_ms, Ordering::Relaxed);
    }
}

/// How often, at most, a link tells the failure detector its peer is alive (any frame from
/// it counts; at a quarter of the probe interval, a busy link is never probed).
const HEARD_EVERY_MS: u64 = 125;

/// Most chunks (each what one packet carried) a link's reader takes per read of its
/// stream, as a client connection's reader does.
const LINK_READ_BATCH: usize = 16;

/// Bindings per link (distinct procedures called across it); past this, calls that need
/// a new binding fail with `BUSY`, and a peer sending more is closed.
const MAX_BINDINGS: usize = 4096;

/// Most tool lists asked of other nodes at once.
pub(super) const MAX_TOOL_QUERIES: usize = 1024;

/// How long a node has to answer `MESH_TOOLS`.
pub(super) const TOOL_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

impl Mesh {
    pub(super) fn open_link(
        self: Arc<Self>,
        conn: Connection,
        send: SendStream,
        recv: RecvStream,
        deframer: Deframer,
        peer: Contact,
        dialed: bool,
    ) -> Result<(), String> {
        let out = Outbound::new(self.limits.max_pending_bytes, self.limits.slow_consumer_timeout, false);
        let link = Arc::new(Link {
            conn: conn.clone(),
            handle: Arc::new(
                Handle::for_link(out, fovea_core::limits::MAX_PAYLOAD).with_max_stream(self.limits.max_stream_bytes),
            ),
            addr: peer.addr,
            dialed,
            bound: Mutex::new(HashMap::new()),
            binds: Mutex::new(HashMap::new()),
            used: AtomicU64::new(self.now_ms()),
            reaped: std::sync::atomic::AtomicBool::new(false),
        });
        let kept = {
            let mut links = lock(&self.links);
            let mut kept = true;
            if let Some(old) = links.get(&peer.id).cloned() {
                // One link per pair: of two dialed from opposite sides, both keep the one
                // the smaller id dialed; a redial from the same side replaces the old
                // link (which may be dead and not yet noticed), and so does any link to
                // replace one already closed (evicted by the peer, say: keeping the closed
                // one would leave the pair with none).
                kept = old.conn.close_reason().is_some() || old.dialed == dialed || dialed == (self.local.id < peer.id);
                if kept {
                    retire(&old, REASON_DUPLICATE);
                } else {
                    retire(&link, REASON_DUPLICATE);
                }
            } else if links.len() >= self.config.max_links {
                // Make room: the least recently used link goes (its node stays known).
                if let Some((&id, _)) = links.iter().min_by_key(|(_, l)| l.used.load(Ordering::Relaxed)) {
                    if let Some(lru) = links.remove(&id) {
                        retire(&lru, REASON_EVICTED);
                        self.stats.links_evicted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if kept {
                links.insert(peer.id, link.clone());
            }
            kept
        };
        if kept {
            // Frames that waited for a dial to this peer go first (the dial task, still
            // running, removes the entry when it ends).
            let waiting = lock(&self.dialing).get_mut(&peer.id).map(|d| std::mem::take(&mut d.frames));
            self.flush_waiting(&link, waiting.unwrap_or_default());
            self.stats.links_opened.fetch_add(1, Ordering::Relaxed);
            let _ = self.inputs.try_send(Input::Up(peer));
        }
        // A retired link is read and written too until it closes: what the peer sent on
        // it before it learned of the other link still arrives.
        tokio::spawn(write_link(send, link.clone()));
        tokio::spawn(self.read_link(link, recv, deframer, peer));
        Ok(())
    }

    async fn read_link(self: Arc<Self>, link: Arc<Link>, mut recv: RecvStream, mut deframer: Deframer, peer: Contact) {
        let mut deliver = self.handler().map(|h| h.link_opened());
        // When the failure detector was last told this peer is alive (ms since start).
        let mut reported = 0u64;
        let mut heard = |frame: Option<&Frame>| {
            let now_ms = self.now_ms();
            // Probes keep no link in use: a link only they cross is reaped when idle.
            if !matches!(frame, Some(Frame::Probe(_))) {
                link.touch(now_ms);
            }
            if now_ms.saturating_sub(reported) >= HEARD_EVERY_MS {
                reported = now_ms;
                let _ = self.inputs.try_send(Input::Heard(peer.id));
            }
        };
        // Chunks of the last read, `taken..read` of them not yet deframed.
        let mut chunks = vec![Bytes::new(); LINK_READ_BATCH];
        let (mut taken, mut read) = (0, 0);
        let why = loop {
            // Forwarded messages are read in place and may wait in the sink's run until
            // the read is handled or another frame comes (which they go before).
            let mut forwards = 0u64;
            let next = deframer.next_frame_or_fwds(|fwd| {
                forwards += 1;
                if let Some(deliver) = deliver.as_mut() {
                    deliver.deliver(fwd);
                }
            });
            if let Some(deliver) = deliver.as_mut() {
                deliver.flush();
            }
            if forwards > 0 {
                heard(None);
            }
            match next {
                Ok(Some(frame)) => {
                    heard(Some(&frame));
                    match self.on_link_frame(&link, peer, frame) {
                        Ok(()) => continue,
                        Err(why) => break Some(why),
                    }
                }
                Ok(None) => {}
                Err(e) => break Some(e.to_string()),
            }
            // The deframer takes a chunk once the one before is drained (no reassembly
            // copy): the rest of the last read first.
            if let Some(chunk) = chunks.get_mut(taken..read).and_then(|rest| rest.first_mut()) {
                deframer.push(std::mem::take(chunk));
                taken += 1;
                continue;
            }
            tokio::select! {
                r = recv.read_chunks(&mut chunks) => match r {
                    Ok(Some(n)) => (taken, read) = (0, n),
                    Ok(None) | Err(_) => break None,
                },
                // Deadlines of calls this link makes here (it is their caller).
                () = link.handle.expire_next() => {}
            }
        };
        let conn = &link.conn;
        if let Some(why) = why {
            self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %peer.id, %why, "closing mesh link");
            conn.close(
                VarInt::from_u64(ErrorCode::ProtocolError.to_u64()).unwrap_or(VarInt::from_u32(0)),
                why.as_bytes(),
            );
        }
        // Calls across the link fail now (PROVIDER_DISCONNECTED to their callers), and
        // requests it made here are cancelled at their providers.
        link.handle.out.close();
        let abandoned = link.handle.abandon_all();
        for r in abandoned.retry {
            let named = lock(&link.bound).iter().find(|(_, rid)| **rid == r.request.rid).map(|(k, _)| k.clone());
            match (named, self.handler()) {
                (Some((realm, procedure)), Some(h)) => h.retry(peer.id, &realm, procedure, r),
                _ => r.caller.answer_failure(
                    r.call_id,
                    ErrorCode::ProviderDisconnected,
                    "the provider's node went away while handling the call",
                ),
            }
        }
        // Remove it only if it is still this connection (a duplicate may have replaced it).
        let removed = {
            let mut links = lock(&self.links);
            match links.get(&peer.id) {
                Some(l) if l.conn.stable_id() == conn.stable_id() => links.remove(&peer.id).is_some(),
                _ => false,
            }
        };
        if removed {
            self.stats.links_closed.fetch_add(1, Ordering::Relaxed);
            // A link this node reaped leaves a live node behind; one closed by the peer (or
            // by silence) leaves a gone one.
            let saved = matches!(
                conn.close_reason(),
                Some(quinn_proto::ConnectionError::ApplicationClosed(ref c)) if c.reason == REASON_IDLE || c.reason == REASON_EVICTED || c.reason == REASON_DUPLICATE
            );
            let peer_closed = !link.reaped.load(Ordering::Relaxed) && !saved;
            // A departure, or a live node no longer linked: either way nothing is left to
            // probe (a link that comes back is watched again).
            let _ = self.inputs.try_send(if peer_closed { Input::Down(peer.id) } else { Input::Unlinked(peer.id) });
            tracing::debug!(peer = %peer.id, peer_closed, "mesh link closed");
        }
    }

    /// One frame from a link. `Err`: the link breaks the protocol and is closed.
    fn on_link_frame(&self, link: &Arc<Link>, peer: Contact, frame: Frame) -> Result<(), String> {
        match frame {
            Frame::Dht(DhtFrame { rpc, body }) => {
                let msg = dht::wire::decode(body).map_err(|e| format!("malformed DHT message: {e}"))?;
                if self.inputs.try_send(Input::Message { from: peer, rpc, msg }).is_err() {
                    self.stats.dht_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Frame::Probe(body) => {
                let msg = failure::wire::decode(body).map_err(|e| format!("malformed PROBE: {e}"))?;
                if self.inputs.try_send(Input::Probe { from: peer, msg }).is_err() {
                    self.stats.dht_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Provider side: the peer announces what a rid means, then calls through it.
            Frame::Bind(b) => {
                let mut binds = lock(&link.binds);
                if binds.len() >= MAX_BINDINGS && !binds.contains_key(&b.rid) {
                    return Err(format!("more than {MAX_BINDINGS} bindings"));
                }
                binds.insert(b.rid, (b.realm, b.procedure));
            }
            Frame::Request(q) => {
                let bound = lock(&link.binds).get(&q.rid).cloned();
                let Some((realm, procedure)) = bound else {
                    return Err(format!("REQUEST for unbound rid {}", q.rid));
                };
                if let Some(h) = self.handler() {
                    h.serve_call(&link.handle, &realm, &procedure, q);
                }
            }
            // Provider side: the caller's node gave up on a call.
            Frame::Cancel(call_id) => link.handle.cancel_call(call_id),
            Frame::MeshTools(q) => {
                let tools = self.handler().map_or_else(|| Bytes::from_static(b"[]"), |h| h.local_tools(&q.realm));
                let list = fovea_core::frame::ToolList { id: q.id, next: Bytes::new(), tools };
                link.handle.out.send(&Frame::ToolList(list));
            }
            Frame::ToolList(l) => {
                if let Some(tx) = lock(&self.tool_queries).remove(&l.id) {
                    let _ = tx.send(l.tools);
                }
            }
            // Streams: as from a client (`front::session::control`), the link standing for
            // the caller or the provider of the call the frame names.
            // A streamed message from the peer's publisher, for subscribers here.
            Frame::FwdStream(f) => {
                if let Some(h) = self.handler() {
                    if h.open_stream(&link.handle, *f).is_err() {
                        return Err("a FWD_STREAM id already open, or too many open".into());
                    }
                }
            }
            Frame::Data(d) => {
                self.stats.stream_chunks.fetch_add(1, Ordering::Relaxed);
                self.stats.stream_bytes.fetch_add(d.chunk.len() as u64, Ordering::Relaxed);
                let flow = if d.flags & fovea_core::frame::data_flags::MESSAGE != 0 {
                    link.handle.publish_data(d.id, d.flags, &d.chunk, self.limits.max_payload)
                } else if d.flags & fovea_core::frame::data_flags::ANSWER != 0 {
                    link.handle.answer_data(d.id, &d.chunk)
                } else {
                    link.handle.request_data(d.id, d.flags, &d.chunk)
                };
                self.count_flow(flow);
            }
            Frame::Credit(c) => {
                let flow = if c.flags & fovea_core::frame::data_flags::MESSAGE != 0 {
                    link.handle.message_credit(c.id, c.flags, c.bytes)
                } else if c.flags & fovea_core::frame::data_flags::ANSWER != 0 {
                    link.handle.answer_credit(c.id, c.bytes)
                } else {
                    link.handle.request_credit(c.id, c.bytes)
                };
                self.count_flow(flow);
            }
            // Provider side: the answer to a question our provider asked, from the caller's
            // node (on the link's call id).
            Frame::Notice(n) if n.kind == fovea_core::frame::notice::REPLY => {
                if !link.handle.notify_provider(n.id, n.kind, n.body) {
                    self.stats.notices_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Caller side: progress, a log line or a question from the provider's node, for
            // our caller.
            Frame::Notice(n) => {
                if !link.handle.forward_notice(n.id, n.kind, n.body) {
                    self.stats.notices_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Caller side: the provider's node had no provider for the request any more
            // (it restarted, or its provider left, before this node learned): the request
            // never ran, so it goes to another provider, and this node stops counting that
            // one as a provider of the procedure.
            Frame::Result(r) if r.code == ErrorCode::NoProvider => match link.handle.take_unserved(r.call_id) {
                Some((caller, call_id, kept)) => {
                    let named = lock(&link.bound).iter().find(|(_, rid)| **rid == kept.rid).map(|(k, _)| k.clone());
                    match (named, self.handler()) {
                        (Some((realm, procedure)), Some(h)) => {
                            self.stats.calls_redirected.fetch_add(1, Ordering::Relaxed);
                            h.not_served(peer.id, &realm, caller, call_id, procedure, *kept);
                        }
                        // Nowhere else to send it (the node is shutting down): the caller
                        // still gets its answer.
                        _ => caller.answer_failure(
                            call_id,
                            ErrorCode::NoProvider,
                            "no provider of the procedure any more",
                        ),
                    }
                }
                // Not kept, or its call already ended: answered (or not) as any result.
                None => {
                    let now = std::time::Instant::now();
                    link.handle.finish_request(r.call_id, r.code, r.headers, r.payload, now);
                }
            },
            // Caller side: an answer from the provider's node.
            Frame::Result(r) => {
                let answer =
                    link.handle.finish_request(r.call_id, r.code, r.headers, r.payload, std::time::Instant::now());
                if let crate::handle::Answer::TooLarge(..) = answer {
                    self.stats.answers_too_large.fetch_add(1, Ordering::Relaxed);
                }
            }
            other => return Err(format!("unexpected frame 0x{:x} on a mesh link", other.kind())),
        }
        Ok(())
    }

    fn count_flow(&self, flow: crate::handle::Flow) {
        use crate::handle::Flow;
        let counter = match flow {
            Flow::Passed => return,
            Flow::Late => &self.stats.late_stream_frames,
            Flow::Broken | Flow::TooLarge => &self.stats.streams_broken,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests in flight to `to` over its link (0 without a link): the load that
    /// balancing across nodes compares.
    pub(crate) fn link_load(&self, to: &NodeId) -> u64 {
        lock(&self.links).get(to).map_or(0, |l| l.handle.requests_in_flight() as u64)
    }

    /// The tools of `realm` whose providers are connected to node `to` (the JSON of
    /// `TOOL_LIST`), or `None` if it cannot be reached or does not answer in time.
    pub(crate) async fn fetch_tools(self: &Arc<Self>, to: Contact, realm: &Bytes) -> Option<Bytes> {
        let id = self.next_tool_query.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut q = lock(&self.tool_queries);
            if q.len() >= MAX_TOOL_QUERIES {
                return None;
            }
            q.insert(id, tx);
        }
        let frame = Frame::MeshTools(fovea_core::frame::MeshTools { id, realm: realm.clone() });
        let answer = if self.send(to, frame) { tokio::time::timeout(TOOL_QUERY_TIMEOUT, rx).await.ok() } else { None };
        lock(&self.tool_queries).remove(&id);
        answer.and_then(Result::ok)
    }

    /// A provider handle for `procedure` in `realm` on node `to`, for the RPC machinery:
    /// opens the link if needed and announces the binding the first time.
    pub(crate) async fn provider_ref(
        self: &Arc<Self>,
        to: Contact,
        realm: &Bytes,
        procedure: &Bytes,
    ) -> Option<ProviderRef> {
        let mut link = lock(&self.links).get(&to.id).cloned();
        if link.is_none() {
            if let Err(e) = self.clone().dial(to.addr, Some(to.id)).await {
                tracing::debug!(peer = %to.id, error = %e, "cannot reach provider node");
                return None;
            }
            link = lock(&self.links).get(&to.id).cloned();
        }
        let link = link?;
        link.touch(self.now_ms());
        let rid = {
            let mut bound = lock(&link.bound);
            let key = (realm.clone(), procedure.clone());
            match bound.get(&key) {
                Some(rid) => *rid,
                None => {
                    if bound.len() >= MAX_BINDINGS {
                        return None;
                    }
                    let rid = bound.len() as u64 + 1;
                    bound.insert(key, rid);
                    // Queued before any REQUEST that uses it: the link keeps order.
                    link.handle.out.send(&Frame::Bind(fovea_core::frame::Bind {
                        rid,
                        realm: realm.clone(),
                        procedure: procedure.clone(),
                    }));
                    rid
                }
            }
        };
        Some(ProviderRef { handle: link.handle.clone(), rid })
    }

    /// The handle of the open link to `node`, if there is one.
    pub(crate) fn linked(&self, node: &NodeId) -> Option<Arc<Handle>> {
        let link = lock(&self.links).get(node).cloned()?;
        link.touch(self.now_ms());
        Some(link.handle.clone())
    }

    /// The handle of the link to `to`, opening it if needed; `None` when it cannot be
    /// reached.
    pub(crate) async fn link_to(self: &Arc<Self>, to: Contact) -> Option<Arc<Handle>> {
        if let Some(h) = self.linked(&to.id) {
            return Some(h);
        }
        if let Err(e) = self.clone().dial(to.addr, Some(to.id)).await {
            tracing::debug!(peer = %to.id, error = %e, "cannot reach a node with subscribers");
            return None;
        }
        self.linked(&to.id)
    }

    /// Queues a forwarded message for `to` (dialing it first if needed). `false` when it
    /// was dropped at a full queue.
    pub(crate) fn forward(self: &Arc<Self>, to: Contact, frame: Frame) -> bool {
        self.send(to, frame)
    }

    /// Queues a run of messages for `to` as `FWD`s for `realm`, in order: under one lock
    /// of the link's queue when there is a link, else one by one as [`Mesh::forward`]
    /// does (dialing). Returns the messages queued, those dropped at a full queue, and
    /// the link's handle if its queue is pressing (the publisher should hold back).
    pub(crate) fn forward_run(
        self: &Arc<Self>,
        to: Contact,
        realm: &Bytes,
        run: &Msgs,
    ) -> (u64, u64, Option<Arc<Handle>>) {
        if let Some(link) = lock(&self.links).get(&to.id).cloned() {
            link.touch(self.now_ms());
            let (queued, dropped) = link.handle.out.forward_run(realm, run);
            if dropped > 0 {
                self.stats.frames_dropped.fetch_add(dropped, Ordering::Relaxed);
            }
            let pressing = link.handle.out.pressing().then(|| link.handle.clone());
            return (queued, dropped, pressing);
        }
        let (mut queued, mut dropped) = (0, 0);
        for fwd in run.forwards(realm) {
            if self.send(to, Frame::Fwd(fwd)) {
                queued += 1;
            } else {
                dropped += 1;
            }
        }
        (queued, dropped, None)
    }

    /// Sends `frame` on the link to `to` if there is one, without counting it as use of
    /// the link (the failure detector's probes: they must neither keep a link from being
    /// reaped nor open one). False if there is no link or its queue is full.
    pub(super) fn send_on_link(&self, to: &NodeId, frame: &Frame) -> bool {
        let Some(link) = lock(&self.links).get(to).cloned() else { return false };
        let sent = link.handle.out.send_bounded(frame);
        if !sent {
            self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Queues `frame` for `to`, dialing it first when there is no link. `false` when it
    /// was dropped at a full queue.
    pub(super) fn send(self: &Arc<Self>, to: Contact, frame: Frame) -> bool {
        if let Some(link) = lock(&self.links).get(&to.id).cloned() {
            link.touch(self.now_ms());
            if !link.handle.out.send_bounded(&frame) {
                self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            return true;
        }
        let mut dialing = lock(&self.dialing);
        if let Some(waiting) = dialing.get_mut(&to.id) {
            if waiting.frames.len() < LINK_QUEUE {
                waiting.frames.push(frame);
                return true;
            }
            self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if dialing.len() >= self.config.max_links.max(MIN_DIALS) {
            self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let attempt = self.next_dial.fetch_add(1, Ordering::Relaxed);
        dialing.insert(to.id, Dialing { attempt, frames: vec![frame] });
        drop(dialing);
        let mesh = self.clone();
        tokio::spawn(async move {
            let result = mesh.clone().dial(to.addr, Some(to.id)).await;
            // The dial is over: its entry goes, and frames still waiting go to the link that
            // stands (ours, or the one the peer opened and won the tie-break with).
            let waiting = {
                let mut dialing = lock(&mesh.dialing);
                match dialing.get(&to.id) {
                    Some(d) if d.attempt == attempt => dialing.remove(&to.id).map(|d| d.frames),
                    _ => None,
                }
            };
            let link = lock(&mesh.links).get(&to.id).cloned();
            match &link {
                Some(link) => mesh.flush_waiting(link, waiting.unwrap_or_default()),
                None => {
                    let lost = waiting.map_or(0, |w| w.len());
                    mesh.stats.frames_dropped.fetch_add(lost as u64, Ordering::Relaxed);
                }
            }
            if let Err(e) = result {
                mesh.stats.dials_failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %to.id, addr = %to.addr, error = %e, "cannot reach mesh node");
                // A dial that lost a race with the peer's own dial fails, but the link the
                // peer opened stands: only a node with no link at all is down.
                if link.is_none() {
                    let _ = mesh.inputs.try_send(Input::Down(to.id));
                }
            }
        });
        true
    }

    /// Sends frames that waited for a dial on `link`, in order; those past its bound are
    /// dropped and counted.
    fn flush_waiting(&self, link: &Link, frames: Vec<Frame>) {
        for f in frames {
            if !link.handle.out.send_bounded(&f) {
                self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Mesh {
    /// Closes the link to a node the failure detector found dead. The caller has already
    /// dropped the node from the DHT and told the layers above, so the link's own close
    /// must not do it again.
    pub(super) fn close_dead_link(&self, id: &NodeId) {
        let link = lock(&self.links).get(id).cloned();
        if let Some(link) = link {
            link.reaped.store(true, Ordering::Relaxed);
            link.conn.close(VarInt::from_u32(0), REASON_DEAD);
        }
    }
}

/// Takes a link out of use: the caller has taken it out of (or never put it in) the links
/// map, so nothing new is sent on it; it closes with `reason` after [`RETIRE_GRACE`], and
/// answers to calls that came in on it still go out on it until then. Its close is not a
/// departure, on either side.
fn retire(link: &Arc<Link>, reason: &'static [u8]) {
    link.reaped.store(true, Ordering::Relaxed);
    let conn = link.conn.clone();
    tokio::spawn(async move {
        tokio::time::sleep(RETIRE_GRACE).await;
        conn.close(VarInt::from_u32(0), reason);
    });
}

/// Writes a link's queued frames, many per write.
async fn write_link(mut send: SendStream, link: Arc<Link>) {
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        if link.handle.out.take_into(&mut chunks).is_err() {
            // The peer has not read for slow_consumer_timeout: the link is stuck.
            link.conn.close(
                VarInt::from_u64(ErrorCode::SlowConsumer.to_u64()).unwrap_or(VarInt::from_u32(0)),
                b"link stalled",
            );
            return;
        }
        if chunks.is_empty() {
            if link.handle.out.is_closed() {
                return;
            }
            link.handle.out.wait().await;
            continue;
        }
        if send.write_all_chunks(&mut chunks).await.is_err() {
            return;
        }
        chunks.clear();
    }
}
