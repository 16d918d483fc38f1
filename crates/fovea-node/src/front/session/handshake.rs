//! The handshake: the control stream, `HELLO`, admission, `WELCOME`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use fovea_core::balance::Rng;
use fovea_core::frame::{Welcome, VERSION, VERSION_DROPPED};
use fovea_core::{Deframer, ErrorCode, Frame};

use super::{Close, Session, Shared};
use crate::handle::outbound::Outbound;
use crate::handle::Handle;
use crate::routing::MatchCache;
use crate::transport::stream::{Link, Reader, Writer};

/// Accepts the control stream (QUIC; a stream transport's is `streams`), reads `HELLO`
/// and answers `WELCOME`. A refusal comes with the writer, to say why on a stream
/// transport.
pub(super) async fn handshake(
    link: &Link,
    streams: Option<(Reader, Writer)>,
    shared: &Arc<Shared>,
    id: u64,
) -> Result<(Session, Writer), (Close, Option<Writer>)> {
    let (recv, send) = match (streams, link.quic()) {
        (Some(pair), _) => pair,
        (None, Some(conn)) => match conn.accept_bi().await {
            Ok((send, recv)) => (Reader::Quic(recv), Writer::Quic(send)),
            Err(e) => {
                let why = format!("closed before the control stream opened: {e}");
                return Err((Close::new(ErrorCode::NoError, why), None));
            }
        },
        (None, None) => {
            return Err((Close::new(ErrorCode::InternalError, "a stream transport without its stream"), None))
        }
    };
    match admit(link, recv, shared, id).await {
        Ok(session) => Ok((session, send)),
        Err(close) => Err((close, Some(send))),
    }
}

/// Reads `HELLO`, admits the client and queues `WELCOME`.
async fn admit(link: &Link, mut recv: Reader, shared: &Arc<Shared>, id: u64) -> Result<Session, Close> {
    let mut deframer = Deframer::new(shared.config.limits.max_frame);
    let hello = loop {
        if let Some(frame) = deframer.next_frame().map_err(|e| Close::new(e.code(), e.to_string()))? {
            break frame;
        }
        match recv.read_chunk().await {
            Ok(Some(chunk)) => deframer.push(chunk),
            Ok(None) => return Err(Close::new(ErrorCode::ProtocolError, "stream finished before HELLO")),
            Err(e) => return Err(Close::new(e.code, format!("read failed before HELLO: {e}"))),
        }
    };
    let Frame::Hello(hello) = hello else {
        return Err(Close::new(ErrorCode::ProtocolError, "the first frame must be HELLO"));
    };
    if hello.version == 0 {
        return Err(Close::new(ErrorCode::UnsupportedVersion, format!("this node speaks version {VERSION}")));
    }
    let ip = link.remote_address().ip();
    let now = std::time::Instant::now();
    if shared.auth_limiter.blocked(ip, now) {
        shared.router.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        shared.router.stats.auth_rate_limited.fetch_add(1, Ordering::Relaxed);
        return Err(Close::new(ErrorCode::AuthFailed, "authentication failed"));
    }
    // One answer for an unknown realm and a bad token: which part was wrong stays secret.
    // Watch for reloads from before the credential is checked, so none falls in between.
    let config_rx = shared.config_generation.subscribe();
    let client_cert = link.client_cert();
    let credential = crate::auth::credential_of(&hello.token, client_cert.as_deref());
    let realm = shared.router.realm(&hello.realm);
    let admitted = realm.and_then(|r| {
        let admitted = r.admission().admit(&credential)?;
        Some((r, admitted))
    });
    let Some((realm, (user, perms))) = admitted else {
        shared.router.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        shared.auth_limiter.failed(ip, now);
        tracing::debug!(conn = id, %ip, realm = %hello.realm, "authentication failed");
        return Err(Close::new(ErrorCode::AuthFailed, "authentication failed"));
    };
    let limits = &shared.config.limits;
    let version = hello.version.min(VERSION);
    let out = Outbound::new(limits.max_pending_bytes, limits.slow_consumer_timeout, version >= VERSION_DROPPED);
    let peer =
        Arc::new(Handle::new(out, limits.max_payload).with_version(version).with_max_stream(limits.max_stream_bytes));
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
        remote: link.remote_address(),
        transport: link.transport(),
        quic: link.quic().cloned(),
        started: std::time::Instant::now(),
        handle: peer.clone(),
        subscriptions: Default::default(),
        registrations: Default::default(),
    });
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
        rng: Rng::new(id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ shared.router.seed),
        last_procedure: None,
        read_at: None,
        stall: None,
        budget_owed: 0,
    };
    Ok(session)
}
