//! Routing a call to a provider: one path for every caller, whether a client connection,
//! the MCP front end, or another node through a mesh link.
//!
//! A call goes to a local provider with room, chosen by power of two choices; failing
//! that, from a caller on this node, to a provider on another node found through the DHT.
//! A call that came from another node stays here (one hop, no loops). Every failure is
//! answered to the caller as a `RESULT` ([`fail`]), so callers of every kind read outcomes
//! the same way; the one exception is a duplicate call id, where a `RESULT` would look like
//! the answer to the call already in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fovea_core::balance::Rng;
use fovea_core::frame::{call_flags, Call, ErrorFrame};
use fovea_core::{ErrorCode, Frame};

use super::{Realm, Router};
use crate::handle::{Handle, ProviderRef, Refusal, Retry};

/// Why no provider on this node can take a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoRoute {
    /// Nobody here provides the procedure.
    NoProvider,
    /// Providers exist, but the one chosen is at its limit of requests in flight.
    Busy,
}

/// Where a call comes from, which decides where it may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A caller on this node (a client connection, the MCP front end): local providers
    /// first, then, in a mesh, providers on other nodes.
    Here,
    /// Another node, through the link `caller` is: local providers only.
    Node,
}

/// Answers call `call_id` of `caller` with the failure `code`, counted.
pub(crate) fn fail(router: &Router, caller: &Handle, call_id: u64, code: ErrorCode, message: String) {
    router.stats.count_rejection(code);
    caller.answer_failure(call_id, code, message);
}

/// The deadline a call gets: the caller's, capped by the node's (0: the node's).
pub(crate) fn call_timeout(timeout_ms: u64, max: Duration) -> Duration {
    match Duration::from_millis(timeout_ms) {
        t if t.is_zero() || t > max => max,
        t => t,
    }
}

/// Sends a validated call of `caller` in `realm` to a provider, or answers why not.
pub(crate) fn route_call(
    router: &Arc<Router>,
    realm: &Arc<Realm>,
    caller: &Arc<Handle>,
    rng: &mut Rng,
    call: Call,
    now: Instant,
    origin: Origin,
) {
    let limits = &router.limits;
    let call_id = call.call_id;
    match realm.choose_provider(&call.procedure, rng, limits.max_requests_in_flight) {
        Ok(provider) => start(router, caller, &provider, call, now, origin),
        // No local provider, or every local one is at its limit: in a mesh, a provider on
        // another node (local ones are preferred while they have room).
        Err(why) if origin == Origin::Here && router.mesh.is_some() => {
            call_remote(router, realm, caller, Rng::new(rng.next_u64()), call, why)
        }
        Err(NoRoute::NoProvider) => {
            let name = String::from_utf8_lossy(&call.procedure);
            let message = match origin {
                Origin::Here => format!("no provider of {name:?} in realm {:?}", realm.name),
                Origin::Node => format!("no provider of {name:?} on this node any more"),
            };
            fail(router, caller, call_id, ErrorCode::NoProvider, message);
        }
        Err(NoRoute::Busy) => {
            let message = format!(
                "every provider chosen has {} requests in flight, the node's limit",
                limits.max_requests_in_flight
            );
            fail(router, caller, call_id, ErrorCode::Busy, message);
        }
    }
}

/// Starts the call at `provider`, answering the caller if it cannot start.
fn start(router: &Router, caller: &Arc<Handle>, provider: &ProviderRef, call: Call, now: Instant, origin: Origin) {
    let limits = &router.limits;
    let call_id = call.call_id;
    let timeout = call_timeout(call.timeout_ms, limits.max_call_timeout);
    // A link carries the calls of many clients of its node: its in-flight bound is wider.
    let max_in_flight = match origin {
        Origin::Here => limits.max_calls_in_flight,
        Origin::Node => limits.max_calls_in_flight.saturating_mul(64),
    };
    match caller.start_call(provider, call, timeout, max_in_flight, now) {
        Ok(()) => {}
        Err(Refusal::Result(code, message)) => fail(router, caller, call_id, code, message),
        Err(Refusal::DuplicateId) if origin == Origin::Node => {
            let message = "duplicate request id on the link".to_owned();
            fail(router, caller, call_id, ErrorCode::ProtocolError, message);
        }
        Err(Refusal::DuplicateId) => {
            router.stats.count_rejection(ErrorCode::DuplicateId);
            caller.out.send(&Frame::Error(ErrorFrame {
                code: ErrorCode::DuplicateId,
                reference: call_id,
                message: format!("call id {call_id} is already in flight"),
            }));
        }
    }
}

/// Sends an idempotent call `procedure` of `realm`, whose provider went away before
/// answering, once more, to another provider (within its deadline; it is not sent a third
/// time).
pub(crate) fn retry(router: &Arc<Router>, realm: &Arc<Realm>, r: Retry, procedure: Bytes) {
    let Retry { caller, call_id, request } = r;
    let left = request.deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        let message = "the provider disconnected, and the call's deadline passed before it could be sent again";
        return fail(router, &caller, call_id, ErrorCode::Timeout, message.into());
    }
    router.stats.calls_retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let timeout_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
    let flags = request.flags & !call_flags::IDEMPOTENT;
    let call = Call { call_id, procedure, timeout_ms, headers: request.headers, payload: request.payload, flags };
    // A call from another node stays on this node, as it did the first time.
    let origin = if caller.is_link() { Origin::Node } else { Origin::Here };
    let mut rng = Rng::new(router.seed ^ call_id.rotate_left(17));
    route_call(router, realm, &caller, &mut rng, call, Instant::now(), origin);
}

/// Sends a call to a provider on another node, found through the DHT. Runs in its own
/// task: the first call of a procedure waits for a lookup, and the caller's other frames
/// must not.
pub(crate) fn call_remote(
    router: &Arc<Router>,
    realm: &Arc<Realm>,
    caller: &Arc<Handle>,
    mut rng: Rng,
    call: Call,
    here: NoRoute,
) {
    let Some(mesh) = router.mesh.as_ref() else { return };
    let (interest, mesh) = (mesh.interest.clone(), mesh.mesh.clone());
    let (router, realm, caller) = (router.clone(), realm.clone(), caller.clone());
    tokio::spawn(async move {
        let call_id = call.call_id;
        let name = String::from_utf8_lossy(&call.procedure).into_owned();
        let mut nodes = interest.providers(&realm.name, &name).await;
        // Power of two choices on calls in flight per link, then the rest in turn should
        // the chosen node be unreachable.
        if let Some(first) = fovea_core::balance::pick_two(nodes.len(), &mut rng, |i| mesh.link_load(&nodes[i].id)) {
            nodes.swap(0, first);
        }
        for node in nodes {
            let Some(provider) = mesh.provider_ref(node, &realm.wire_name, &call.procedure).await else { continue };
            // After a look-up: the deadline runs from now, as it did before the look-up.
            return start(&router, &caller, &provider, call, Instant::now(), Origin::Here);
        }
        let (code, message) = match here {
            NoRoute::Busy => (
                ErrorCode::Busy,
                format!("every provider of {name:?} here is at its limit, and none elsewhere answers"),
            ),
            NoRoute::NoProvider => {
                (ErrorCode::NoProvider, format!("no provider of {name:?} in realm {:?} on any node", realm.name))
            }
        };
        fail(&router, &caller, call_id, code, message);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Admission;
    use crate::config::Limits;
    use crate::handle::outbound::Outbound;
    use bytes::Bytes;
    use fovea_core::{Deframer, Headers, Procedure};

    fn handle() -> Arc<Handle> {
        Arc::new(Handle::new(Outbound::new(1 << 20, Duration::from_secs(1), true), 1 << 20))
    }

    /// The frames queued for `h`.
    fn frames(h: &Handle) -> Vec<Frame> {
        let mut chunks = Vec::new();
        let _ = h.out.take_into(&mut chunks);
        let mut d = Deframer::new(fovea_core::limits::MAX_FRAME);
        chunks.into_iter().for_each(|c| d.push(c));
        std::iter::from_fn(|| d.next_frame().ok().flatten()).collect()
    }

    fn call(call_id: u64) -> Call {
        let procedure = Bytes::from_static(b"svc.x");
        Call { call_id, procedure, timeout_ms: 0, headers: Headers::new(), payload: Bytes::new(), flags: 0 }
    }

    fn setup(limits: Limits) -> (Arc<Router>, Arc<Realm>) {
        let router = Router::new(limits, vec![("r".to_owned(), Admission::Open)], None);
        let realm = router.realm("r").unwrap();
        (router, realm)
    }

    fn result(f: &Frame) -> (u64, ErrorCode) {
        match f {
            Frame::Result(r) => (r.call_id, r.code),
            other => panic!("expected RESULT, got {other:?}"),
        }
    }

    #[test]
    fn a_call_reaches_a_provider_or_is_answered_why_not() {
        let (router, realm) = setup(Limits::default());
        let (caller, provider) = (handle(), handle());
        let mut rng = Rng::new(1);
        let now = Instant::now();
        route_call(&router, &realm, &caller, &mut rng, call(1), now, Origin::Here);
        assert_eq!(frames(&caller).iter().map(result).collect::<Vec<_>>(), [(1, ErrorCode::NoProvider)]);
        let procedure = Procedure::from_bytes(Bytes::from_static(b"svc.x")).unwrap();
        realm.register(&procedure, ProviderRef { handle: provider.clone(), rid: 7 }, None);
        route_call(&router, &realm, &caller, &mut rng, call(2), now, Origin::Here);
        match frames(&provider).as_slice() {
            [Frame::Request(q)] => assert_eq!(q.rid, 7),
            other => panic!("expected one REQUEST, got {other:?}"),
        }
        assert!(frames(&caller).is_empty(), "no answer before the provider's");
        // The same id again while the first is in flight: an ERROR naming it, not a RESULT.
        route_call(&router, &realm, &caller, &mut rng, call(2), now, Origin::Here);
        match frames(&caller).as_slice() {
            [Frame::Error(e)] => assert_eq!((e.code, e.reference), (ErrorCode::DuplicateId, 2)),
            other => panic!("expected ERROR DUPLICATE_ID, got {other:?}"),
        }
    }

    #[test]
    fn a_provider_at_its_limit_is_busy_and_a_link_never_leaves_the_node() {
        let limits = Limits { max_requests_in_flight: 1, ..Limits::default() };
        let (router, realm) = setup(limits);
        let (caller, provider) = (handle(), handle());
        let procedure = Procedure::from_bytes(Bytes::from_static(b"svc.x")).unwrap();
        realm.register(&procedure, ProviderRef { handle: provider.clone(), rid: 1 }, None);
        let mut rng = Rng::new(2);
        let now = Instant::now();
        route_call(&router, &realm, &caller, &mut rng, call(1), now, Origin::Here);
        route_call(&router, &realm, &caller, &mut rng, call(2), now, Origin::Here);
        assert_eq!(frames(&caller).iter().map(result).collect::<Vec<_>>(), [(2, ErrorCode::Busy)]);
        // A call from another node is answered here too, and a duplicate request id on a
        // link is the link's protocol error, answered as a RESULT.
        let link = handle();
        let other = Procedure::from_bytes(Bytes::from_static(b"svc.none")).unwrap();
        let mut c = call(9);
        c.procedure = Bytes::copy_from_slice(other.as_bytes());
        route_call(&router, &realm, &link, &mut rng, c, now, Origin::Node);
        assert_eq!(frames(&link).iter().map(result).collect::<Vec<_>>(), [(9, ErrorCode::NoProvider)]);
        assert!(router.stats.snapshot(0, 0).rejections.iter().any(|(c, n)| *c == ErrorCode::Busy && *n == 1));
    }

    #[test]
    fn timeouts_are_the_callers_within_the_nodes_bound() {
        let max = Duration::from_secs(300);
        assert_eq!(call_timeout(0, max), max, "0 means the node's");
        assert_eq!(call_timeout(1500, max), Duration::from_millis(1500));
        assert_eq!(call_timeout(u64::MAX, max), max);
    }
}
