//! One client connection: handshake, then a reader and a writer in the connection's own
//! task. The reader decodes frames and routes each publish itself; the writer drains the
//! connection's [`Outbound`] queue into its stream, many frames per write.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::transport::quic::{Connection, RecvStream, SendStream};
use bytes::Bytes;
use fovea_core::balance::Rng;
use fovea_core::frame::{
    Call, CallResult, ErrorFrame, GoAway, PubAt, Publish, Register, Subscribe, ToolList, ToolsQuery, Welcome, VERSION,
    VERSION_DROPPED, VERSION_RPC, VERSION_TOOLS,
};
use fovea_core::tool::ToolDescriptor;
use fovea_core::{Deframer, ErrorCode, Frame, Headers, Pattern, Procedure};
use quinn::VarInt;
use tokio_util::sync::CancellationToken;

use crate::auth::Permissions;
use crate::handle::outbound::{Delivered, Outbound};
use crate::handle::{Answer, Handle, ProviderRef, Refusal};
use crate::routing::tools::{TOOL_PAGE_BYTES, TOOL_PAGE_ITEMS};
use crate::routing::{check_limits, GroupKey, MatchCache, Realm, SubRef};
use crate::Shared;

/// Why a connection ends, sent as its QUIC close code and reason.
#[derive(Debug)]
pub(crate) struct Close {
    pub code: ErrorCode,
    pub reason: String,
}

impl Close {
    fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        Close { code, reason: reason.into() }
    }
}

/// Largest chunk read from the stream at once (during the handshake).
const READ_CHUNK: usize = 256 * 1024;
/// Most chunks a publishing connection's read takes from its stream, under one lock of
/// the QUIC connection. A chunk is what one packet carried (~1.4 KB on a default path):
/// read one at a time, a busy publisher's messages were routed ~17 per read, and each read
/// paid the lock, a future and a delivery run of its own.
const READ_BATCH: usize = 16;

/// Serves one accepted QUIC connection until it ends.
pub(crate) async fn serve(conn: Connection, shared: Arc<Shared>, shutdown: CancellationToken) {
    let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let remote = conn.remote_address();
    tracing::debug!(conn = id, %remote, "connection accepted");
    let limits = &shared.config.limits;
    let handshake = tokio::time::timeout(limits.handshake_timeout, handshake(&conn, &shared, id));
    // The session is bound to its own local before it runs: a match on the handshake's
    // result around `run(…).await` kept the whole result (456 bytes) alive in this future,
    // and `run` taking `self` by value stored the session twice; every idle connection
    // paid ~900 bytes for the two (`-Zprint-type-sizes`).
    let (mut session, send) = match handshake.await {
        Ok(Ok(pair)) => pair,
        Ok(Err(close)) => return end(&conn, &shared, id, remote, close),
        Err(_) => return end(&conn, &shared, id, remote, Close::new(ErrorCode::HandshakeTimeout, "no HELLO in time")),
    };
    let result = session.run(send, &shutdown).await;
    drop(session);
    end(&conn, &shared, id, remote, result.err().unwrap_or(Close { code: ErrorCode::NoError, reason: String::new() }));
}

/// Closes a connection with `close`'s code and reason, counted and logged.
fn end(conn: &Connection, shared: &Shared, id: u64, remote: std::net::SocketAddr, close: Close) {
    if close.code != ErrorCode::NoError {
        shared.stats.count_close(close.code);
        tracing::debug!(conn = id, %remote, code = %close.code, reason = %close.reason, "connection closed by node");
    } else {
        tracing::debug!(conn = id, %remote, "connection closed");
    }
    conn.close(VarInt::from_u64(close.code.to_u64()).unwrap_or(VarInt::from_u32(0)), close.reason.as_bytes());
}

/// Accepts the control stream, reads `HELLO` and answers `WELCOME`.
async fn handshake(conn: &Connection, shared: &Arc<Shared>, id: u64) -> Result<(Session, SendStream), Close> {
    let (send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| Close::new(ErrorCode::NoError, format!("closed before the control stream opened: {e}")))?;
    let mut deframer = Deframer::new(shared.config.limits.max_frame);
    let hello = loop {
        if let Some(frame) = deframer.next_frame().map_err(|e| Close::new(e.code(), e.to_string()))? {
            break frame;
        }
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => deframer.push(chunk.bytes),
            Ok(None) => return Err(Close::new(ErrorCode::ProtocolError, "stream finished before HELLO")),
            Err(e) => return Err(Close::new(ErrorCode::NoError, format!("read failed before HELLO: {e}"))),
        }
    };
    let Frame::Hello(hello) = hello else {
        return Err(Close::new(ErrorCode::ProtocolError, "the first frame must be HELLO"));
    };
    if hello.version == 0 {
        return Err(Close::new(ErrorCode::UnsupportedVersion, format!("this node speaks version {VERSION}")));
    }
    let ip = conn.remote_address().ip();
    let now = std::time::Instant::now();
    if shared.auth_limiter.blocked(ip, now) {
        shared.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        shared.stats.auth_rate_limited.fetch_add(1, Ordering::Relaxed);
        return Err(Close::new(ErrorCode::AuthFailed, "authentication failed"));
    }
    // One answer for an unknown realm and a bad token: which part was wrong stays secret.
    // Watch for reloads from before the credential is checked, so none falls in between.
    let config_rx = shared.config_generation.subscribe();
    let client_cert = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().map(|c| c.to_vec()));
    let credential = crate::auth::credential_of(&hello.token, client_cert.as_deref());
    let realm = shared.realms.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&hello.realm).cloned();
    let admitted = realm.and_then(|r| {
        let admitted = r.admission().admit(&credential)?;
        Some((r, admitted))
    });
    let Some((realm, (user, perms))) = admitted else {
        shared.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        shared.auth_limiter.failed(ip, now);
        tracing::debug!(conn = id, %ip, realm = %hello.realm, "authentication failed");
        return Err(Close::new(ErrorCode::AuthFailed, "authentication failed"));
    };
    let limits = &shared.config.limits;
    let version = hello.version.min(VERSION);
    let out = Outbound::new(limits.max_pending_bytes, limits.slow_consumer_timeout, version >= VERSION_DROPPED);
    let peer = Arc::new(Handle::new(out, limits.max_payload));
    peer.out.send(&Frame::Welcome(Welcome {
        version,
        node: shared.config.name.clone(),
        connection_id: id,
        max_payload: limits.max_payload as u64,
    }));
    tracing::debug!(conn = id, realm = %realm.name, user = %user, client = %hello.name, "session open");
    let info = Arc::new(crate::front::admin::ConnInfo {
        id,
        realm: realm.name.clone(),
        user,
        client: hello.name.clone(),
        remote: conn.remote_address(),
        conn: conn.clone(),
        started: std::time::Instant::now(),
        handle: peer.clone(),
        subscriptions: Default::default(),
        registrations: Default::default(),
    });
    let deframer_buffered = deframer.buffered() > 0;
    let session = Session {
        info,
        shared: shared.clone(),
        realm,
        perms,
        credential,
        config: Some(config_rx),
        handle: peer,
        version,
        recv,
        deframer,
        chunks: vec![Bytes::new()],
        subs: HashMap::new(),
        regs: HashMap::new(),
        tools_watch: None,
        cache: MatchCache::new(limits.match_cache_entries, limits.max_topic_len, limits.max_topic_depth),
        rng: Rng::new(id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ shared.seed),
        last_procedure: None,
        read_at: None,
        stall: None,
        budget_owed: 0,
        pipelined: deframer_buffered,
    };
    Ok((session, send))
}

/// Consecutive publishes of one read that go to the same subscribers, all plain and on
/// this node (the same cached match set): delivered subscription by subscription, one
/// lock per subscriber per run instead of one per message. Each subscription still gets
/// its messages in publish order; two subscriptions of one connection that both match
/// see a run's messages one subscription after the other.
///
/// Bounded: at most [`Run::MAX`] messages, each kept as positions in the read buffer it
/// came in (one reference per buffer).
#[derive(Default)]
struct Run {
    subs: Option<Arc<crate::routing::Matches>>,
    msgs: crate::handle::outbound::Msgs,
    /// The first subscriber this read delivered to whose queue was more than an eighth full:
    /// the connection's next read waits for it (`producer_stall`).
    press: Option<Arc<Handle>>,
}

impl Run {
    /// Longest run: past it the run is delivered and a new one starts. Keeps the buffer
    /// small (6 KB) and the first message's wait short.
    const MAX: usize = 64;

    /// No mesh routing to do for these matches.
    fn local_only(subs: &crate::routing::Matches) -> bool {
        !subs.remote_pending && subs.remote.is_empty() && subs.remote_groups.is_empty()
    }

    /// Adds `p` for `subs` (plain, local); returns the deliveries of a run this ended.
    fn push(&mut self, subs: &Arc<crate::routing::Matches>, p: PubAt<'_>, stats: &crate::Stats) -> u64 {
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
    fn flush(&mut self, stats: &crate::Stats) -> u64 {
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

/// An open session: the connection's state after a successful handshake.
struct Session {
    /// What the admin endpoint shows of this connection.
    info: Arc<crate::front::admin::ConnInfo>,
    shared: Arc<Shared>,
    realm: Arc<Realm>,
    /// What this connection's credential may do.
    perms: Arc<Permissions>,
    /// The credential (as digests), to check it again after a configuration reload.
    credential: crate::auth::Credential,
    /// Changes when the configuration is reloaded. Taken by `run`, which waits on it.
    config: Option<tokio::sync::watch::Receiver<u64>>,
    handle: Arc<Handle>,
    /// The protocol version agreed in the handshake.
    version: u64,
    recv: RecvStream,
    deframer: Deframer,
    /// Where a read puts the chunks it takes: one slot until the connection publishes,
    /// then [`READ_BATCH`] (an idle connection keeps no batch buffer).
    chunks: Vec<Bytes>,
    /// This connection's subscriptions by sid.
    subs: HashMap<u64, (Pattern, Option<Arc<GroupKey>>)>,
    /// This connection's registrations by rid, with their tool keys (0: plain procedure).
    regs: HashMap<u64, (Procedure, u64)>,
    /// The id of this connection's `TOOLS` watch, if it asked for one.
    tools_watch: Option<u64>,
    cache: MatchCache,
    /// Balancing choices (queue groups, providers).
    rng: Rng,
    /// The last procedure name a `CALL` brought that passed validation and the node's
    /// limits (not the permission check, which can change with the credential): a caller
    /// mostly repeats a few names, and comparing is cheaper than checking (~130 of the
    /// node's ~7 000 instructions per call, `scripts/profile.sh instructions rpc`).
    last_procedure: Option<Bytes>,
    /// When the frames of the current read arrived: the clock, read once per read at its
    /// first call or answer (see [`Session::read_at`]).
    read_at: Option<Instant>,
    /// A subscriber's queue this connection's next read waits for, and until when at most
    /// (`producer_stall`).
    stall: Option<(Arc<Handle>, tokio::time::Instant)>,
    /// Chunks of the last read not yet paid to tokio's cooperative budget (see `read_some`).
    budget_owed: usize,
    /// The handshake's read brought bytes after `HELLO` (a pipelining client): they are
    /// handled before the next read.
    pipelined: bool,
}

impl Session {
    async fn run(&mut self, mut send: SendStream, shutdown: &CancellationToken) -> Result<(), Close> {
        self.shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.shared
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(self.info.id, self.info.clone());
        let peer = self.handle.clone();
        let mut config = self.config.take().unwrap_or_else(|| self.shared.config_generation.subscribe());
        let shared = self.shared.clone();
        let writer = write_loop(&mut send, &peer, &shared.stats);
        tokio::pin!(writer);
        let mut going_away = false;
        // Subscribed only once the client watches the tool catalog: a change must not wake
        // every connection of the realm.
        let mut tools_rx: Option<tokio::sync::watch::Receiver<u64>> = None;
        let result = loop {
            if self.tools_watch.is_some() != tools_rx.is_some() {
                tools_rx = self.tools_watch.map(|_| self.realm.watch_tools());
            }
            tokio::select! {
                Some(()) = tools_changed(&mut tools_rx) => {
                    if let Some(id) = self.tools_watch {
                        self.handle.out.send(&Frame::ToolsChanged(id));
                    }
                }
                r = self.read_some() => match r {
                    Ok(true) => {}
                    Ok(false) => break Ok(()),
                    Err(close) => break Err(close),
                },
                r = &mut writer => break r,
                Ok(()) = config.changed() => {
                    if let Err(close) = self.recheck() {
                        break Err(close);
                    }
                }
                () = peer.expire_next() => {
                    self.shared.stats.count_rejection(ErrorCode::Timeout);
                }
                _ = shutdown.cancelled(), if !going_away => {
                    going_away = true;
                    let bye = GoAway { code: ErrorCode::GoingAway, message: "node shutting down".into() };
                    self.handle.out.send(&Frame::GoAway(bye));
                }
            }
        };
        self.handle.out.close();
        let subs: Vec<(Pattern, SubRef)> =
            self.subs.drain().map(|(sid, (p, group))| (p, SubRef { handle: peer.clone(), sid, group })).collect();
        if !subs.is_empty() {
            self.realm.unsubscribe(subs.iter().map(|(p, s)| (p, s.clone())));
        }
        let regs: Vec<(Procedure, u64, u64)> = self.regs.drain().map(|(rid, (p, key))| (p, rid, key)).collect();
        if !regs.is_empty() {
            self.realm.unregister(
                regs.iter().map(|(p, rid, key)| (p, ProviderRef { handle: peer.clone(), rid: *rid }, *key)),
            );
        }
        let failed = peer.abandon_all();
        for _ in 0..failed {
            self.shared.stats.count_rejection(ErrorCode::ProviderDisconnected);
        }
        self.shared.stats.connections.fetch_sub(1, Ordering::Relaxed);
        self.shared.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.info.id);
        result
    }

    /// After a configuration reload: is this connection still admitted, and is everything
    /// it holds still allowed? If so it carries on with the new permissions.
    fn recheck(&mut self) -> Result<(), Close> {
        let revoked = |why: String| Err(Close::new(ErrorCode::CredentialsRevoked, why));
        let Some((_, perms)) = self.realm.admission().admit(&self.credential) else {
            return revoked("the node's configuration no longer admits this credential".into());
        };
        if let Some((pattern, _)) = self.subs.values().find(|(p, _)| !perms.subscribe.pattern(p)) {
            return revoked(format!("the permission to subscribe to {pattern} was revoked"));
        }
        if let Some((procedure, _)) = self.regs.values().find(|(p, _)| !perms.register.name(p.as_bytes())) {
            return revoked(format!("the permission to register {procedure} was revoked"));
        }
        if perms != self.perms {
            self.perms = perms;
            // Publish verdicts are cached with the topics: start afresh.
            let l = &self.shared.config.limits;
            self.cache = MatchCache::new(l.match_cache_entries, l.max_topic_len, l.max_topic_depth);
        }
        Ok(())
    }

    /// Reads one chunk and handles every frame it completes. `Ok(false)`: the client
    /// finished its stream.
    ///
    /// # Cancel safety
    /// Cancel safe: the awaits are the hold-back, whose deadline stays in `self` until it
    /// is over, and the read, and what the read took is handled completely.
    async fn read_some(&mut self) -> Result<bool, Close> {
        if let Some((peer, until)) = &self.stall {
            // The last read fed a subscriber whose queue is more than an eighth full: wait for
            // its writer to take it (bounded), so this publisher slows to what the
            // subscriber reads instead of outrunning it into drops. Kept in `self` until
            // done, so a cancelled wait resumes with the same deadline.
            if tokio::time::timeout_at(*until, peer.out.relieved()).await.is_err() {
                // Its writer took nothing in that time: the reader has stopped, not slowed.
                peer.out.mark_stuck();
                self.shared.stats.stall_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            self.stall = None;
        }
        // A read that finds data never returns `Pending` (quinn's streams are not tokio
        // resources and spend no budget), so a connection whose client keeps sending would
        // keep its worker for as long as it sends. What it wakes meanwhile — a subscriber's
        // writer — lands in that worker's LIFO slot, which no other worker may steal, and
        // waits, and a publisher held back for it runs free once `producer_stall` passes
        // (`bench pubsub --msgs 1000000 --size 1024`, 20 runs each: hold-backs ran out 16
        // times without this, 6 with it). Paying one unit per chunk makes such a task
        // yield about every eighth full read. Before the read, so cancelling here loses
        // nothing.
        while self.budget_owed > 0 {
            tokio::task::consume_budget().await;
            self.budget_owed -= 1;
        }
        // Frames that came with HELLO (a client may pipeline) are handled before the first
        // read: waiting for more bytes first would hold them until the client sent again.
        let n = match self.pipelined {
            true => {
                self.pipelined = false;
                0
            }
            false => match self.read_chunks().await? {
                Some(n) => n,
                None => return Ok(false),
            },
        };
        self.handle_chunks(n)
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
                self.shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                Err(Close::new(ErrorCode::ProtocolError, "the stream ended inside a frame"))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(Close::new(ErrorCode::NoError, format!("read: {e}"))),
        }
    }

    /// Handles every frame that the deframer holds and the first `n` of `self.chunks`
    /// complete.
    fn handle_chunks(&mut self, n: usize) -> Result<bool, Close> {
        let shared = self.shared.clone();
        let stats = &shared.stats;
        let (mut msgs, mut deliveries, mut bytes) = (0u64, 0u64, 0u64);
        let mut run = Run::default();
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
        let stats = &self.shared.stats;
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
            Ok((subs, true)) if subs.groups.is_empty() && Run::local_only(subs) => return run.push(subs, p, stats),
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
        let Some(interest) = self.realm.interest.get() else { return };
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

    fn control(&mut self, frame: Frame) -> Result<(), Close> {
        let needs = match &frame {
            // A tool descriptor is a version 4 field. Not ignored as trailing bytes: a client
            // that sends one wants a tool, and dropping it silently would hide its bug.
            Frame::Reg(r) if !r.tool.is_empty() => VERSION_TOOLS,
            Frame::Reg(_) | Frame::Unreg(_) | Frame::Call(_) | Frame::Respond(_) | Frame::Cancel(_) => VERSION_RPC,
            Frame::Notice(_) | Frame::Tools(_) => VERSION_TOOLS,
            _ => 0,
        };
        if self.version < needs {
            self.shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            let what = match &frame {
                Frame::Reg(r) if !r.tool.is_empty() => "a REG with a tool descriptor".to_owned(),
                f => format!("frame type 0x{:x}", f.kind()),
            };
            let msg = format!("{what} needs protocol version {needs}; this session speaks {}", self.version);
            return Err(Close::new(ErrorCode::ProtocolError, msg));
        }
        match frame {
            Frame::Sub(s) => self.subscribe(s),
            Frame::Unsub(sid) => {
                if let Some((p, group)) = self.subs.remove(&sid) {
                    self.realm.unsubscribe([(&p, SubRef { handle: self.handle.clone(), sid, group })]);
                    self.info.subscriptions.store(self.subs.len(), Ordering::Relaxed);
                }
            }
            Frame::Ping(token) => self.handle.out.send(&Frame::Pong(token)),
            Frame::Pong(_) => {}
            Frame::Reg(r) => self.register(r),
            Frame::Unreg(rid) => {
                if let Some((p, key)) = self.regs.remove(&rid) {
                    self.realm.unregister([(&p, ProviderRef { handle: self.handle.clone(), rid }, key)]);
                    self.info.registrations.store(self.regs.len(), Ordering::Relaxed);
                }
            }
            Frame::Call(c) => self.call(c),
            Frame::Respond(r) => {
                self.shared.stats.responses.fetch_add(1, Ordering::Relaxed);
                let now = self.read_at();
                match self.handle.finish_request(r.req_id, r.code, r.headers, r.payload, now) {
                    Answer::Relayed(took) => self.shared.stats.call_latency.record(took),
                    Answer::Late => {
                        self.shared.stats.late_responses.fetch_add(1, Ordering::Relaxed);
                    }
                    // Reference 0: a req_id is the node's number, and as a reference it
                    // could be taken for one of the client's own sids, rids or call ids.
                    Answer::TooLarge(len, max) => self.reject(
                        ErrorCode::PayloadTooLarge,
                        0,
                        format!(
                            "the answer to request {} is {len} bytes, over max_payload {max}; \
                             its caller got PAYLOAD_TOO_LARGE",
                            r.req_id
                        ),
                    ),
                }
            }
            Frame::Cancel(call_id) => self.handle.cancel_call(call_id),
            Frame::Notice(n) => {
                if !self.handle.forward_notice(n.id, n.kind, n.body) {
                    self.shared.stats.notices_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Frame::Tools(q) => self.list_tools(q),
            other => {
                self.shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                return Err(Close::new(
                    ErrorCode::ProtocolError,
                    format!("frame type 0x{:x} is not allowed from a client here", other.kind()),
                ));
            }
        }
        Ok(())
    }

    fn subscribe(&mut self, s: Subscribe) {
        let limits = &self.shared.config.limits;
        if s.sid == 0 {
            return self.reject(ErrorCode::InvalidPattern, 0, "subscription id 0 is reserved; use ids from 1");
        }
        if self.subs.contains_key(&s.sid) {
            return self.reject(ErrorCode::DuplicateId, s.sid, format!("subscription id {} is already active", s.sid));
        }
        if self.subs.len() >= limits.max_subscriptions {
            let msg = format!("this connection already has {} subscriptions, the node's limit", self.subs.len());
            return self.reject(ErrorCode::TooManySubscriptions, s.sid, msg);
        }
        let limits = &self.shared.config.limits;
        let pattern = match Pattern::from_bytes(Bytes::copy_from_slice(&s.pattern))
            .and_then(|p| check_limits(p.as_bytes(), limits.max_topic_len, limits.max_topic_depth).map(|()| p))
        {
            Ok(p) => p,
            Err(e) => {
                let text = shown(&s.pattern);
                return self.reject(ErrorCode::InvalidPattern, s.sid, format!("pattern {text:?} {e}"));
            }
        };
        if !self.perms.subscribe.pattern(&pattern) {
            return self.reject(ErrorCode::PermissionDenied, s.sid, format!("not allowed to subscribe to {pattern:?}"));
        }
        // Before version 2 the group field did not exist: a v1 peer's trailing bytes are
        // ignored, as the protocol's extension rule says.
        let group = if s.group.is_empty() || self.version < VERSION_RPC {
            None
        } else {
            match Procedure::from_bytes(Bytes::copy_from_slice(&s.group)) {
                Ok(_) => Some(Arc::new(GroupKey { pattern: pattern.clone(), name: Bytes::copy_from_slice(&s.group) })),
                Err(e) => {
                    let text = shown(&s.group);
                    return self.reject(ErrorCode::InvalidPattern, s.sid, format!("queue group {text:?} {e}"));
                }
            }
        };
        self.realm.subscribe(&pattern, SubRef { handle: self.handle.clone(), sid: s.sid, group: group.clone() });
        self.subs.insert(s.sid, (pattern, group));
        self.info.subscriptions.store(self.subs.len(), Ordering::Relaxed);
        self.handle.out.send(&Frame::SubAck(s.sid));
    }

    fn register(&mut self, r: Register) {
        let limits = &self.shared.config.limits;
        if r.rid == 0 {
            return self.reject(ErrorCode::InvalidProcedure, 0, "registration id 0 is reserved; use ids from 1");
        }
        if self.regs.contains_key(&r.rid) {
            return self.reject(ErrorCode::DuplicateId, r.rid, format!("registration id {} is already active", r.rid));
        }
        if self.regs.len() >= limits.max_registrations {
            let msg = format!("this connection already has {} registrations, the node's limit", self.regs.len());
            return self.reject(ErrorCode::TooManyRegistrations, r.rid, msg);
        }
        let procedure = match Procedure::from_bytes(Bytes::copy_from_slice(&r.procedure))
            .and_then(|p| check_limits(p.as_bytes(), limits.max_topic_len, limits.max_topic_depth).map(|()| p))
        {
            Ok(p) => p,
            Err(e) => {
                let text = shown(&r.procedure);
                return self.reject(ErrorCode::InvalidProcedure, r.rid, format!("procedure {text:?} {e}"));
            }
        };
        if !self.perms.register.name(procedure.as_bytes()) {
            return self.reject(ErrorCode::PermissionDenied, r.rid, format!("not allowed to register {procedure:?}"));
        }
        // A tool on a session below version 4 was refused in `control`.
        let tool = if r.tool.is_empty() {
            None
        } else {
            match ToolDescriptor::parse(&r.tool) {
                Ok(t) => Some((self.shared.next_tool_key.fetch_add(1, Ordering::Relaxed), t)),
                Err(e) => {
                    let msg = format!("the tool descriptor of {procedure:?} {e}");
                    return self.reject(ErrorCode::InvalidProcedure, r.rid, msg);
                }
            }
        };
        let key = tool.as_ref().map_or(0, |(k, _)| *k);
        self.realm.register(&procedure, ProviderRef { handle: self.handle.clone(), rid: r.rid }, tool);
        self.regs.insert(r.rid, (procedure, key));
        self.info.registrations.store(self.regs.len(), Ordering::Relaxed);
        self.handle.out.send(&Frame::RegAck(r.rid));
    }

    fn call(&mut self, c: Call) {
        let limits = &self.shared.config.limits;
        self.shared.stats.calls.fetch_add(1, Ordering::Relaxed);
        let call_id = c.call_id;
        let fail = |this: &Self, code: ErrorCode, message: String| {
            this.shared.stats.count_rejection(code);
            let payload = Bytes::from(message.into_bytes());
            this.handle.out.send(&Frame::Result(CallResult { call_id, code, headers: Headers::new(), payload }));
        };
        if c.call_id == 0 {
            return self.reject(ErrorCode::InvalidProcedure, 0, "call id 0 is reserved; use ids from 1");
        }
        if c.payload.len() > limits.max_payload {
            let msg = format!(
                "payload of {} bytes exceeds this node's max_payload of {}",
                c.payload.len(),
                limits.max_payload
            );
            return fail(self, ErrorCode::PayloadTooLarge, msg);
        }
        if self.last_procedure.as_ref() != Some(&c.procedure) {
            if let Err(e) = Procedure::from_bytes(c.procedure.clone())
                .and_then(|_| check_limits(&c.procedure, limits.max_topic_len, limits.max_topic_depth))
            {
                let text = shown(&c.procedure);
                return fail(self, ErrorCode::InvalidProcedure, format!("procedure {text:?} {e}"));
            }
            // A copy: a slice would keep the whole read buffer it came in alive.
            self.last_procedure = Some(Bytes::copy_from_slice(&c.procedure));
        }
        if !self.perms.call.name(&c.procedure) {
            let text = shown(&c.procedure);
            return fail(self, ErrorCode::PermissionDenied, format!("not allowed to call {text:?}"));
        }
        let now = self.read_at();
        route_call(&self.shared, &self.realm, &self.handle, &mut self.rng, c, now);
    }

    /// When this read's frames arrived (read from the clock at the first ask per read).
    fn read_at(&mut self) -> Instant {
        *self.read_at.get_or_insert_with(Instant::now)
    }

    /// `TOOLS`: one page of the realm's tools this connection may call, and (with `watch`)
    /// a `TOOLS_CHANGED` whenever the catalog changes.
    fn list_tools(&mut self, q: ToolsQuery) {
        self.tools_watch = match (q.watch, self.tools_watch) {
            (0, Some(id)) if id == q.id => None,
            (0, w) => w,
            _ => Some(q.id),
        };
        let cursor = String::from_utf8_lossy(&q.cursor);
        let perms = &self.perms;
        let (tools, next) = self.realm.with_tools(|c| {
            let (page, next) = c.page(&cursor, TOOL_PAGE_ITEMS, TOOL_PAGE_BYTES, |p| perms.call.name(p.as_bytes()));
            (crate::routing::tools::list_json(&page), next)
        });
        let next = next.map(|n| Bytes::from(n.into_bytes())).unwrap_or_default();
        self.handle.out.send(&Frame::ToolList(ToolList { id: q.id, next, tools }));
    }

    fn reject(&self, code: ErrorCode, reference: u64, message: impl Into<String>) {
        self.shared.stats.count_rejection(code);
        let message = clip(message.into(), fovea_core::limits::MAX_TEXT_LEN);
        self.handle.out.send(&Frame::Error(ErrorFrame { code, reference, message }));
    }
}

/// Longest part of a client's name (topic, pattern, procedure) quoted in an error message.
const SHOWN_NAME: usize = 100;

/// A name from the client, for an error message: lossy UTF-8, cut to [`SHOWN_NAME`]
/// characters (a name may be as long as a frame, and an `ERROR`'s message is bounded).
fn shown(name: &[u8]) -> String {
    let text = String::from_utf8_lossy(name);
    match text.char_indices().nth(SHOWN_NAME) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

/// `text` cut to at most `max` bytes at a character boundary: an `ERROR`'s message over
/// the protocol's text limit would be a frame the client cannot decode.
fn clip(mut text: String, max: usize) -> String {
    if text.len() > max {
        let cut = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(cut);
    }
    text
}

/// Sends a validated call to a provider: a local one with room, else (in a mesh) one on
/// another node. Every failure is answered to `peer` as a `RESULT` (or, for a duplicate
/// call id, an `ERROR`), so callers of any kind (client connections, the MCP front end)
/// read outcomes the same way.
pub(crate) fn route_call(
    shared: &Arc<Shared>,
    realm: &Arc<Realm>,
    peer: &Arc<Handle>,
    rng: &mut Rng,
    c: Call,
    now: Instant,
) {
    let limits = &shared.config.limits;
    let call_id = c.call_id;
    let fail = |code: ErrorCode, message: String| {
        shared.stats.count_rejection(code);
        let payload = Bytes::from(message.into_bytes());
        peer.out.send(&Frame::Result(CallResult { call_id, code, headers: Headers::new(), payload }));
    };
    let provider = match realm.choose_provider(&c.procedure, rng, limits.max_requests_in_flight) {
        Ok(p) => p,
        // No local provider, or every local one is at its limit: in a mesh, a
        // provider on another node (local ones are preferred while they have room).
        Err(busy) if realm.interest.get().is_some() => {
            return call_remote(shared, realm, peer, Rng::new(rng.next_u64()), c, busy)
        }
        Err(false) => {
            let text = shown(&c.procedure);
            return fail(ErrorCode::NoProvider, format!("no provider of {text:?} in realm {:?}", realm.name));
        }
        Err(true) => {
            let msg = format!(
                "every provider chosen has {} requests in flight, the node's limit",
                limits.max_requests_in_flight
            );
            return fail(ErrorCode::Busy, msg);
        }
    };
    let timeout = call_timeout(c.timeout_ms, limits.max_call_timeout);
    match peer.start_call(&provider, c, timeout, limits.max_calls_in_flight, now) {
        Ok(()) => {}
        Err(Refusal::DuplicateId) => duplicate_call(shared, peer, call_id),
        Err(Refusal::Result(code, msg)) => fail(code, msg),
    }
}

/// The deadline a call gets: the caller's, capped by the node's (0: the node's).
fn call_timeout(timeout_ms: u64, max: std::time::Duration) -> std::time::Duration {
    match std::time::Duration::from_millis(timeout_ms) {
        t if t.is_zero() || t > max => max,
        t => t,
    }
}

fn duplicate_call(shared: &Shared, peer: &Handle, call_id: u64) {
    shared.stats.count_rejection(ErrorCode::DuplicateId);
    peer.out.send(&Frame::Error(ErrorFrame {
        code: ErrorCode::DuplicateId,
        reference: call_id,
        message: format!("call id {call_id} is already in flight"),
    }));
}

/// Sends a call to a provider on another node, found through the DHT. Runs in its own
/// task: the first call of a procedure waits for a lookup, and the caller's other frames
/// must not.
fn call_remote(shared: &Arc<Shared>, realm: &Arc<Realm>, peer: &Arc<Handle>, mut rng: Rng, c: Call, local_busy: bool) {
    let limits = &shared.config.limits;
    let Some(interest) = realm.interest.get().cloned() else { return };
    let timeout = call_timeout(c.timeout_ms, limits.max_call_timeout);
    let max_calls = limits.max_calls_in_flight;
    let (peer, realm, shared) = (peer.clone(), realm.clone(), shared.clone());
    tokio::spawn(async move {
        let call_id = c.call_id;
        let fail = |code: ErrorCode, message: String| {
            shared.stats.count_rejection(code);
            let payload = Bytes::from(message.into_bytes());
            peer.out.send(&Frame::Result(CallResult { call_id, code, headers: Headers::new(), payload }));
        };
        let name = String::from_utf8_lossy(&c.procedure).into_owned();
        let mut nodes = interest.providers(&realm.name, &name).await;
        let mesh = interest.mesh().clone();
        // Power of two choices on calls in flight per link, then the rest in turn
        // should the chosen node be unreachable.
        if let Some(first) = fovea_core::balance::pick_two(nodes.len(), &mut rng, |i| mesh.link_load(&nodes[i].id)) {
            nodes.swap(0, first);
        }
        for node in nodes {
            let Some(provider) = mesh.provider_ref(node, &realm.wire_name, &c.procedure).await else { continue };
            // After a look-up: the deadline runs from now, as it did before the look-up.
            match peer.start_call(&provider, c, timeout, max_calls, Instant::now()) {
                Ok(()) => {}
                Err(Refusal::DuplicateId) => duplicate_call(&shared, &peer, call_id),
                Err(Refusal::Result(code, msg)) => fail(code, msg),
            }
            return;
        }
        if local_busy {
            fail(
                ErrorCode::Busy,
                format!("every provider of {name:?} here is at its limit, and none elsewhere answers"),
            );
        } else {
            fail(ErrorCode::NoProvider, format!("no provider of {name:?} in realm {:?} on any node", realm.name));
        }
    });
}

/// Resolves when the watched catalog changes; never without a watch.
async fn tools_changed(rx: &mut Option<tokio::sync::watch::Receiver<u64>>) -> Option<()> {
    match rx {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
    }
}

/// Most bytes a client's writer hands to the transport in one call when a backlog has
/// built up (a few encode buffers): small enough that the queue, and a publisher held back
/// for it, move every millisecond or so at loopback speeds; large enough that the call
/// count does not matter.
const WRITE_STEP: usize = 256 * 1024;

/// Most subscriptions a `SLOW_CONSUMER` close's reason lists: the reason phrase must fit
/// in one packet with the close (16 pairs of 20-digit numbers are under 700 bytes).
const SLOW_CLOSE_SIDS: usize = 16;

/// The writer: waits for queued frames and writes them all in one call (in steps of
/// [`WRITE_STEP`] when a backlog has built up).
///
/// # Cancel safety
/// Not cancel safe: frames taken from the queue and not yet written are lost if the
/// future is dropped; it is only dropped when the connection ends.
async fn write_loop(send: &mut SendStream, peer: &Handle, stats: &crate::Stats) -> Result<(), Close> {
    let out = &peer.out;
    // The reason carries the drops (docs/PROTOCOL.md §4): the `DROPPED` notices queued
    // behind the stalled stream never arrive once the connection closes.
    let too_slow = || {
        let why = format!(
            "messages were dropped for {:?} without a break: the client reads too slowly; dropped {}",
            out.slow_after(),
            out.drop_summary(SLOW_CLOSE_SIDS)
        );
        Close::new(ErrorCode::SlowConsumer, why)
    };
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        // A long queue goes in steps of WRITE_STEP, so it shrinks as the client reads.
        if out.take_some_into(&mut chunks, WRITE_STEP).is_err() {
            return Err(too_slow());
        }
        if chunks.is_empty() {
            out.wait().await;
            continue;
        }
        // Counted per batch, not per frame.
        let bytes: usize = chunks.iter().map(Bytes::len).sum();
        stats.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        // A stalled client holds this write through flow control, so the slow-consumer
        // verdict must be able to interrupt it.
        tokio::select! {
            r = send.write_all_chunks(&mut chunks) => {
                if let Err(e) = r {
                    return Err(Close::new(ErrorCode::NoError, format!("write: {e}")));
                }
            }
            () = out.turned_slow() => return Err(too_slow()),
        }
        chunks.clear();
    }
}
