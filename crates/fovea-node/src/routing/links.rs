//! What arrives from other nodes, routed here: the router's side of
//! [`crate::mesh::LinkHandler`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use fovea_core::balance::Rng;
use fovea_core::dht::NodeId;
use fovea_core::frame::{Call, Forward, Request};
use fovea_core::ErrorCode;

use super::calls::{call_remote, fail, route_call, NoRoute, Origin};
use super::{MatchCache, Realm, Router};
use crate::auth::Allow;
use crate::handle::outbound::Delivered;
use crate::handle::{Handle, Unserved};
use crate::mesh::{ForwardSink, LinkHandler};

impl LinkHandler for Router {
    fn link_opened(&self) -> Box<dyn ForwardSink> {
        let seed = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 1u64);
        Box::new(LinkDelivery { router: self.weak(), caches: HashMap::new(), rng: Rng::new(seed) })
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
        let call = Call { call_id, procedure, timeout_ms, headers: request.headers, payload: request.payload };
        call_remote(&router, &realm, &caller, Rng::new(router.seed ^ call_id), call, NoRoute::NoProvider);
    }
}

/// One link's delivery of forwarded messages: its realms' match caches (local
/// subscribers only) and its balancing generator for queue groups.
struct LinkDelivery {
    router: Weak<Router>,
    /// Bounded by the realms this node serves.
    caches: HashMap<Bytes, (Arc<Realm>, MatchCache)>,
    rng: Rng,
}

impl ForwardSink for LinkDelivery {
    fn deliver(&mut self, fwd: Forward) {
        let Some(router) = self.router.upgrade() else { return };
        if !self.caches.contains_key(&fwd.realm) {
            let Some(realm) = std::str::from_utf8(&fwd.realm).ok().and_then(|name| router.realm(name)) else { return };
            let l = &router.limits;
            let cache = MatchCache::new_local(l.match_cache_entries, l.max_topic_len, l.max_topic_depth);
            self.caches.insert(fwd.realm.clone(), (realm, cache));
        }
        let Some((realm, cache)) = self.caches.get_mut(&fwd.realm) else { return };
        // The publisher's node checked its permission; here only local subscribers.
        let Ok((matches, _)) = cache.lookup(realm, &fwd.topic, &Allow::All) else { return };
        if let Some(m) = router.mesh.as_ref() {
            m.interest.stats.received.fetch_add(1, Ordering::Relaxed);
        }
        let stats = &router.stats;
        // Queue groups: only those this node was chosen for, one member each.
        matches.for_each_forwarded(&fwd.groups, &mut self.rng, |s| {
            match s.handle.out.deliver(s.sid, &fwd.topic, &fwd.headers, &fwd.payload) {
                Delivered::Queued => {
                    stats.deliveries.fetch_add(1, Ordering::Relaxed);
                }
                Delivered::Dropped => {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Delivered::Closed => {}
            }
        });
    }
}
