//! Streamed messages: who receives one ([`crate::handle::fanout`] relays it).
//!
//! The receivers are chosen once, at the message's head, as a plain publish's are: every
//! plain subscription, one member of each queue group, and each other node with
//! subscribers (one `FWD_STREAM` per node, naming the groups whose delivery falls to it).
//! The publisher gets no credit before that, so nothing of the message can arrive before
//! its receivers are known, even while the topic's remote subscribers are still being
//! found or a link is being opened.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fovea_core::balance::Rng;
use fovea_core::dht::Contact;
use fovea_core::frame::Publish;
use fovea_core::Topic;

use super::interest::GroupId;
use super::{Matches, Realm, Router};
use crate::handle::fanout::{watch_stalls, Via};
use crate::handle::Handle;

/// Longest wait for a topic's remote subscribers to be found before a streamed message
/// goes to the receivers known then (discovery's own lookups end well before).
const DISCOVERY_WAIT: Duration = Duration::from_secs(5);

/// How often a waiting message looks again.
const DISCOVERY_POLL: Duration = Duration::from_millis(20);

/// Receivers of one message, with the nodes still to link to.
type Targets = (Vec<(Arc<Handle>, Via)>, Vec<(Contact, Vec<GroupId>)>);

/// Opens stream `id` of `publisher` (a client's `PUB_STREAM`, reserved by the caller) for
/// `msg` in `realm`, whose subscribers are `subs`: at once when every receiver is known
/// and linked, else from a task that waits for discovery and links (the publisher has no
/// credit meanwhile).
pub(crate) fn open(
    router: &Arc<Router>,
    realm: &Arc<Realm>,
    publisher: &Arc<Handle>,
    id: u64,
    msg: Publish,
    subs: &Arc<Matches>,
    rng: &mut Rng,
) {
    router.stats.message_streams.fetch_add(1, Ordering::Relaxed);
    watch_stalls(publisher, router.limits.slow_consumer_timeout, router.stats.messages_cut.clone());
    if !subs.remote_pending {
        let (mut to, nodes) = targets(subs, rng);
        if let Some(linked) = linked(router, realm, &nodes) {
            to.extend(linked);
            return attach(router, publisher, id, &msg, to);
        }
    }
    let (router, realm, publisher) = (router.clone(), realm.clone(), publisher.clone());
    let mut rng = Rng::new(router.seed ^ id);
    tokio::spawn(async move {
        // The topic was validated at the head.
        let Ok(topic) = Topic::from_bytes(bytes::Bytes::copy_from_slice(&msg.topic)) else { return };
        let waited = tokio::time::Instant::now() + DISCOVERY_WAIT;
        let mut subs = realm.lookup(&topic);
        while subs.remote_pending && tokio::time::Instant::now() < waited {
            tokio::time::sleep(DISCOVERY_POLL).await;
            subs = realm.lookup(&topic);
        }
        let (mut to, nodes) = targets(&subs, &mut rng);
        if let Some(m) = router.mesh.as_ref() {
            for (node, groups) in nodes {
                if let Some(link) = m.mesh.link_to(node).await {
                    to.push((link, Via::Link { realm: realm.wire_name.clone(), groups }));
                }
            }
        }
        attach(&router, &publisher, id, &msg, to);
    });
}

/// Opens stream `id` of a link (another node's `FWD_STREAM`) to this node's subscribers:
/// plain ones and, for each of `groups`, one member.
pub(crate) fn open_forwarded(
    router: &Arc<Router>,
    link: &Arc<Handle>,
    id: u64,
    realm: &[u8],
    groups: &[(bytes::Bytes, bytes::Bytes)],
    msg: Publish,
    rng: &mut Rng,
) -> Result<(), crate::handle::fanout::Refused> {
    // The link's sender counts the first window as granted (as every receiver does).
    link.reserve_stream(id, fovea_core::frame::INITIAL_CREDIT)?;
    router.stats.message_streams.fetch_add(1, Ordering::Relaxed);
    watch_stalls(link, router.limits.slow_consumer_timeout, router.stats.messages_cut.clone());
    let served = std::str::from_utf8(realm).ok().and_then(|name| router.realm(name));
    let topic = Topic::from_bytes(bytes::Bytes::copy_from_slice(&msg.topic)).ok();
    let mut to = Vec::new();
    if let (Some(realm), Some(topic)) = (served, topic) {
        realm.lookup_local(&topic).for_each_forwarded(groups, rng, |s| to.push((s.handle.clone(), Via::Sub(s.sid))));
    }
    attach(router, link, id, &msg, to);
    Ok(())
}

fn attach(router: &Router, publisher: &Arc<Handle>, id: u64, msg: &Publish, to: Vec<(Arc<Handle>, Via)>) {
    let skipped = publisher.attach_receivers(id, msg, to);
    if skipped > 0 {
        router.stats.dropped.fetch_add(skipped as u64, Ordering::Relaxed);
    }
}

/// The local receivers of a message for `subs`, and the other nodes it goes to.
fn targets(subs: &Matches, rng: &mut Rng) -> Targets {
    let mut to = Vec::new();
    let (nodes, _) = subs.for_each_target_mesh(rng, |s| to.push((s.handle.clone(), Via::Sub(s.sid))));
    (to, nodes)
}

/// The links to `nodes` as receivers, when every one is open.
fn linked(router: &Router, realm: &Realm, nodes: &[(Contact, Vec<GroupId>)]) -> Option<Vec<(Arc<Handle>, Via)>> {
    if nodes.is_empty() {
        return Some(Vec::new());
    }
    let m = router.mesh.as_ref()?;
    nodes
        .iter()
        .map(|(node, groups)| {
            let link = m.mesh.linked(&node.id)?;
            Some((link, Via::Link { realm: realm.wire_name.clone(), groups: groups.clone() }))
        })
        .collect()
}
