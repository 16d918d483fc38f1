//! One client session: handshake, then a reader and a writer in the connection's own
//! task. The reader decodes frames and routes each publish itself; the writer drains the
//! connection's [`Outbound`](crate::handle::outbound::Outbound) queue into its stream,
//! many frames per write.
//!
//! - [`handshake`]: `HELLO` → `WELCOME`, admission.
//! - [`read`]: reading the stream, routing publishes (runs, hold-backs, mesh forwarding).
//! - [`control`]: every other frame a client sends.
//! - [`writer`]: the connection's writer.

mod control;
mod handshake;
mod read;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fovea_core::balance::Rng;
use fovea_core::frame::{ErrorFrame, GoAway};
use fovea_core::{Deframer, ErrorCode, Frame, Pattern, Procedure};
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::auth::Permissions;
use crate::handle::{Handle, ProviderRef};
use crate::routing::{GroupKey, MatchCache, Realm, SubRef};
use crate::transport::stream::{Link, Reader, Writer};
use control::clip;

/// Why a connection ends, sent as its close code and reason.
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

/// Serves one accepted connection until it ends: a QUIC connection (`streams` is `None`:
/// the client opens its control stream), or a stream transport's (`streams` given).
pub(crate) async fn serve(
    link: Link,
    streams: Option<(Reader, Writer)>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let remote = link.remote_address();
    tracing::debug!(conn = id, %remote, transport = link.transport().name(), "connection accepted");
    let limits = &shared.config.limits;
    let handshake = tokio::time::timeout(limits.handshake_timeout, handshake::handshake(&link, streams, &shared, id));
    // The session is bound to its own local before it runs: a match on the handshake's
    // result around `run(…).await` would keep the whole result alive in this future, and
    // `run` taking `self` by value would store the session twice, both for every idle
    // connection's whole life.
    let (mut session, mut send) = match handshake.await {
        Ok(Ok(pair)) => pair,
        Ok(Err((close, send))) => return end(&link, send, &shared, id, remote, close).await,
        Err(_) => {
            let close = Close::new(ErrorCode::HandshakeTimeout, "no HELLO in time");
            return end(&link, None, &shared, id, remote, close).await;
        }
    };
    let result = session.run(&mut send, &shutdown).await;
    drop(session);
    let close = result.err().unwrap_or(Close { code: ErrorCode::NoError, reason: String::new() });
    end(&link, Some(send), &shared, id, remote, close).await;
}

/// Closes a connection with `close`'s code and reason, counted and logged.
async fn end(link: &Link, send: Option<Writer>, shared: &Shared, id: u64, remote: std::net::SocketAddr, close: Close) {
    if close.code != ErrorCode::NoError {
        shared.router.stats.count_close(close.code);
        tracing::debug!(conn = id, %remote, code = %close.code, reason = %close.reason, "connection closed by node");
    } else {
        tracing::debug!(conn = id, %remote, "connection closed");
    }
    link.close(send, close.code, &close.reason).await;
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
    recv: Reader,
    deframer: Deframer,
    /// Where a read puts the chunks it takes: one slot until the connection publishes,
    /// then [`read::READ_BATCH`] (an idle connection keeps no batch buffer).
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
    /// mostly repeats a few names, and comparing is cheaper than checking.
    last_procedure: Option<Bytes>,
    /// When the frames of the current read arrived: the clock, read once per read at its
    /// first call or answer (see [`Session::read_at`]).
    read_at: Option<Instant>,
    /// A subscriber's queue this connection's next read waits for, and until when at most
    /// (`producer_stall`).
    stall: Option<(Arc<Handle>, tokio::time::Instant)>,
    /// Chunks of the last read not yet paid to tokio's cooperative budget (see `read_some`).
    budget_owed: usize,
}

impl Session {
    async fn run(&mut self, send: &mut Writer, shutdown: &CancellationToken) -> Result<(), Close> {
        self.shared.router.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.shared.router.stats.transports[self.info.transport.index()].fetch_add(1, Ordering::Relaxed);
        crate::sync::lock(&self.shared.conns).insert(self.info.id, self.info.clone());
        let peer = self.handle.clone();
        let mut config = self.config.take().unwrap_or_else(|| self.shared.config_generation.subscribe());
        let shared = self.shared.clone();
        let writer = writer::write_loop(send, &peer, &shared.router.stats);
        tokio::pin!(writer);
        let mut going_away = false;
        // Subscribed only once the client watches the tool catalog: a change must not wake
        // every connection of the realm.
        let mut tools_rx: Option<tokio::sync::watch::Receiver<u64>> = None;
        // Frames that came with HELLO (a client may pipeline) are handled before the first
        // read: waiting for more bytes first would hold them until the client sent again.
        let pipelined = self.handle_chunks(0);
        let result = if let Err(close) = pipelined {
            Err(close)
        } else {
            loop {
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
                        self.shared.router.stats.count_rejection(ErrorCode::Timeout);
                    }
                    _ = shutdown.cancelled(), if !going_away => {
                        going_away = true;
                        let bye = GoAway { code: ErrorCode::GoingAway, message: "node shutting down".into() };
                        self.handle.out.send(&Frame::GoAway(bye));
                    }
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
        let abandoned = peer.abandon_all();
        for _ in 0..abandoned.failed {
            self.shared.router.stats.count_rejection(ErrorCode::ProviderDisconnected);
        }
        // Idempotent calls it had not answered go to another provider.
        for r in abandoned.retry {
            match regs.iter().find(|(_, rid, _)| *rid == r.request.rid) {
                Some((p, _, _)) => {
                    let procedure = Bytes::copy_from_slice(p.as_bytes());
                    crate::routing::calls::retry(&self.shared.router, &self.realm, r, procedure);
                }
                None => {
                    self.shared.router.stats.count_rejection(ErrorCode::ProviderDisconnected);
                    let message = "the provider disconnected while handling the call";
                    r.caller.answer_failure(r.call_id, ErrorCode::ProviderDisconnected, message);
                }
            }
        }
        self.shared.router.stats.connections.fetch_sub(1, Ordering::Relaxed);
        self.shared.router.stats.transports[self.info.transport.index()].fetch_sub(1, Ordering::Relaxed);
        crate::sync::lock(&self.shared.conns).remove(&self.info.id);
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

    /// When this read's frames arrived (read from the clock at the first ask per read).
    fn read_at(&mut self) -> Instant {
        *self.read_at.get_or_insert_with(Instant::now)
    }

    fn reject(&self, code: ErrorCode, reference: u64, message: impl Into<String>) {
        self.shared.router.stats.count_rejection(code);
        let message = clip(message.into(), fovea_core::limits::MAX_TEXT_LEN);
        self.handle.out.send(&Frame::Error(ErrorFrame { code, reference, message }));
    }
}

/// Resolves when the watched catalog changes; never without a watch.
async fn tools_changed(rx: &mut Option<tokio::sync::watch::Receiver<u64>>) -> Option<()> {
    match rx {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
    }
}
