//! What arrives from other nodes, routed here: the router's side of
//! [`crate::mesh::LinkHandler`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use fovea_core::balance::Rng;
use fovea_core::dht::NodeId;
use fovea_core::frame::{Call, FwdAt, Request};
use fovea_core::ErrorCode;

use super::calls::{call_remote, fail, retry, route_call, NoRoute, Origin};
use super::{MatchCache, Realm, Router};
use crate::auth::Allow;
use crate::handle::outbound::{Delivered, Msgs};
use crate::handle::{Handle, Unserved};
use crate::mesh::{ForwardSink, LinkHandler};

impl LinkHandler for Router {
    fn link_opened(&self) -> Box<dyn ForwardSink> {
        let seed = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 1u64);
        Box::new(LinkDelivery::new(self.weak(), seed))
    }

    /// Served by local providers only: one hop, no loops.
    fn serve_call(&self, link: &Arc<Handle>, realm: &[u8], procedure: &[u8], q: Request) {
        let Some(router) = self.weak().upgrade() else { return };
        let req_id = q.req_id;
        let Some(realm) = std::str::from_utf8(realm).ok().and_then(|name| router.realm(name)) else {
            return fail(&router, link, req_id, ErrorCode::NoProvider, "no such realm on this node".into());
        };
        router.stats.calls.fetch_add(1, Ordering::Relaxed);
        let mut rng = Rng::new(router.seed ^ req_id);
        let call = Call {
            call_id: req_id,
            procedure: Bytes::copy_from_slice(procedure),
            timeout_ms: q.timeout_ms,
            headers: q.headers,
            payload: q.payload,
            flags: q.flags,
        };
        route_call(&router, &realm, link, &mut rng, call, std::time::Instant::now(), Origin::Node);
    }

    fn local_tools(&self, realm: &[u8]) -> Bytes {
        let name = std::str::from_utf8(realm).unwrap_or_default();
        self.realm(name).map_or_else(|| Bytes::from_static(b"[]"), |r| r.local_tools_json())
    }

    /// Sent on to another provider node, with the one that had none left out from now on.
    fn not_served(
        &self,
        node: NodeId,
        realm: &Bytes,
        caller: Arc<Handle>,
        call_id: u64,
        procedure: Bytes,
        request: Unserved,
    ) {
        let Some(router) = self.weak().upgrade() else { return };
        let name = String::from_utf8_lossy(&procedure).into_owned();
        let Some(realm) = std::str::from_utf8(realm).ok().and_then(|r| router.realm(r)) else {
            let message = format!("no provider of {name:?} on any node");
            return fail(&router, &caller, call_id, ErrorCode::NoProvider, message);
        };
        if let Some(mesh) = router.mesh.as_ref() {
            mesh.interest.provider_gone(&realm.name, &name, &node);
        }
        let left = request.deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            let message = format!("the call to {name:?} timed out while its provider was being found again");
            return fail(&router, &caller, call_id, ErrorCode::Timeout, message);
        }
        let timeout_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
        // Only requests that do not stream are kept to be sent again (`Handle::start_call`).
        let flags = request.flags;
        let call = Call { call_id, procedure, timeout_ms, headers: request.headers, payload: request.payload, flags };
        call_remote(&router, &realm, &caller, Rng::new(router.seed ^ call_id), call, NoRoute::NoProvider);
    }

    fn retry(&self, node: NodeId, realm: &Bytes, procedure: Bytes, r: crate::handle::Retry) {
        let Some(router) = self.weak().upgrade() else { return };
        let Some(realm) = std::str::from_utf8(realm).ok().and_then(|r| router.realm(r)) else {
            let message = "the provider's node went away while handling the call".to_owned();
            return fail(&router, &r.caller, r.call_id, ErrorCode::ProviderDisconnected, message);
        };
        if let Some(mesh) = router.mesh.as_ref() {
            mesh.interest.provider_gone(&realm.name, &String::from_utf8_lossy(&procedure), &node);
        }
        retry(&router, &realm, r, procedure);
    }

    fn open_stream(&self, link: &Arc<Handle>, head: fovea_core::frame::FwdStream) -> Result<(), ()> {
        let Some(router) = self.weak().upgrade() else { return Ok(()) };
        let fovea_core::frame::FwdStream { id, fwd } = head;
        let mut rng = Rng::new(router.seed ^ id);
        let msg = fovea_core::frame::Publish { topic: fwd.topic, headers: fwd.headers, payload: fwd.payload };
        super::messages::open_forwarded(&router, link, id, &fwd.realm, &fwd.groups, msg, &mut rng).map_err(|_| ())
    }
}

/// A link's match caches by realm (wire name). Looked up per message: a fast hash.
type RealmCaches = HashMap<Bytes, (Arc<Realm>, MatchCache), foldhash::fast::RandomState>;

/// One link's delivery of forwarded messages: its realms' match caches (local
/// subscribers only), its balancing generator for queue groups, and the run of messages
/// not yet delivered.
///
/// Consecutive forwards to the same plain subscribers form a run, delivered as a
/// publisher's connection delivers its runs (one lock per subscriber per run), and the
/// counters are added once per read: a busy link carries messages at the rate of a
/// publisher. Bounded: at most [`LinkDelivery::MAX_RUN`] messages wait.
struct LinkDelivery {
    router: Weak<Router>,
    /// Bounded by the realms this node serves.
    caches: RealmCaches,
    rng: Rng,
    run: Option<Arc<super::Matches>>,
    msgs: Msgs,
    /// Counted since the last flush: messages received, deliveries queued, dropped.
    received: u64,
    deliveries: u64,
    dropped: u64,
}

impl LinkDelivery {
    /// Longest run, as a publisher's (`front::session`).
    const MAX_RUN: usize = 64;

    fn new(router: Weak<Router>, seed: u64) -> LinkDelivery {
        LinkDelivery {
            router,
            caches: RealmCaches::default(),
            rng: Rng::new(seed),
            run: None,
            msgs: Msgs::default(),
            received: 0,
            deliveries: 0,
            dropped: 0,
        }
    }

    /// The subscriptions here that `topic` of realm `realm` (wire name) reaches, or `None`
    /// for a realm this node does not serve or a topic no node should have sent.
    fn matches<'c>(
        caches: &'c mut RealmCaches,
        router: &Weak<Router>,
        realm: &[u8],
        topic: &[u8],
    ) -> Option<&'c Arc<super::Matches>> {
        if !caches.contains_key(realm) {
            let router = router.upgrade()?;
            let served = std::str::from_utf8(realm).ok().and_then(|name| router.realm(name))?;
            let l = &router.limits;
            let cache = MatchCache::new_local(l.match_cache_entries, l.max_topic_len, l.max_topic_depth);
            caches.insert(Bytes::copy_from_slice(realm), (served, cache));
        }
        let (realm, cache) = caches.get_mut(realm)?;
        // The publisher's node checked its permission; here only local subscribers.
        cache.lookup(realm, topic, &Allow::All).ok().map(|(matches, _)| matches)
    }

    /// Delivers the run.
    fn deliver_run(&mut self) {
        let Some(subs) = self.run.take() else { return };
        for s in &subs.plain {
            let (queued, dropped) = s.handle.out.deliver_run(s.sid, &self.msgs);
            self.deliveries += queued;
            self.dropped += dropped;
        }
        self.msgs.clear();
    }
}

impl ForwardSink for LinkDelivery {
    fn deliver(&mut self, fwd: FwdAt<'_>) {
        let Some(found) = Self::matches(&mut self.caches, &self.router, fwd.realm(), fwd.msg.topic()) else {
            return;
        };
        self.received += 1;
        if fwd.groups.is_empty() {
            // Plain subscribers only (no group's delivery fell to this node): a run.
            if !self.run.as_ref().is_some_and(|run| Arc::ptr_eq(run, found)) {
                let matches = found.clone();
                self.deliver_run();
                self.run = Some(matches);
            }
            if self.msgs.capacity() == 0 {
                self.msgs.reserve(Self::MAX_RUN);
            }
            self.msgs.push(fwd.msg);
            if self.msgs.len() >= Self::MAX_RUN {
                self.deliver_run();
            }
            return;
        }
        let matches = found.clone();
        self.deliver_run();
        // Queue groups: only those this node was chosen for, one member each.
        let p = fwd.msg.to_publish();
        let (mut deliveries, mut dropped) = (0, 0);
        matches.for_each_forwarded(&fwd.groups, &mut self.rng, |s| {
            match s.handle.out.deliver(s.sid, &p.topic, &p.headers, &p.payload) {
                Delivered::Queued => deliveries += 1,
                Delivered::Dropped => dropped += 1,
                Delivered::Closed => {}
            }
        });
        self.deliveries += deliveries;
        self.dropped += dropped;
    }

    fn flush(&mut self) {
        self.deliver_run();
        if self.received == 0 && self.deliveries == 0 && self.dropped == 0 {
            return;
        }
        let Some(router) = self.router.upgrade() else { return };
        if let Some(m) = router.mesh.as_ref() {
            m.interest.stats.received.fetch_add(std::mem::take(&mut self.received), Ordering::Relaxed);
        }
        router.stats.deliveries.fetch_add(std::mem::take(&mut self.deliveries), Ordering::Relaxed);
        router.stats.dropped.fetch_add(std::mem::take(&mut self.dropped), Ordering::Relaxed);
    }
}
