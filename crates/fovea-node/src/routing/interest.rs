//! Pub/sub and providers across the mesh: the IO around core's discovery state machine
//! ([`fovea_core::discovery`], where the records, lookups and hold queues are described).
//!
//! This shell owns the clock and the mesh: it feeds [`Discovery`] what happens (local
//! subscriptions and registrations from the realms, a publisher's cache miss, lookup
//! results, the DHT's pushes and departures, time) and carries out what it asks: lookups
//! on spawned tasks, forwards on the links, stale realms bumped, records stored in order
//! by [`Interest::run`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use fovea_core::dht::Contact;
use fovea_core::discovery::{self, Action, Discovery, Providers, Publication};
use fovea_core::frame::Forward;
use fovea_core::{Frame, Pattern, Topic};

pub(crate) use fovea_core::discovery::{GroupId, RemoteGroups, RemoteTargets};

use crate::mesh::Mesh;
use crate::sync::lock;

/// Counters of cross-node pub/sub kept here; discovery's own are in [`Interest::discovery_stats`].
#[derive(Debug, Default)]
pub struct InterestStats {
    /// Messages sent to other nodes.
    pub forwarded: AtomicU64,
    /// Messages received from other nodes and delivered locally.
    pub received: AtomicU64,
    /// Messages for other nodes dropped because a link's queue was full.
    pub dropped: AtomicU64,
}

/// Local and remote interest of one node.
pub struct Interest {
    mesh: Arc<Mesh>,
    /// One lock: every input is short (no IO under it), and the order of a segment's held
    /// messages against later publishes depends on forwarding them under it.
    discovery: Mutex<Discovery>,
    /// The routing state whose realms' match caches a change of remote interest makes
    /// stale (weak: the router owns this).
    router: Weak<super::Router>,
    /// Wakes [`Interest::run`]: its next deadline may have moved earlier.
    wake: tokio::sync::Notify,
    pub stats: InterestStats,
}

impl Interest {
    pub(crate) fn new(mesh: Arc<Mesh>, max_held: usize, router: Weak<super::Router>) -> Arc<Interest> {
        let config = discovery::Config { max_held_bytes: max_held, ..discovery::Config::default() };
        let discovery = Discovery::new(mesh.local(), config, Instant::now());
        Arc::new(Interest {
            mesh,
            discovery: Mutex::new(discovery),
            router,
            wake: tokio::sync::Notify::new(),
            stats: InterestStats::default(),
        })
    }

    /// Discovery's counters, the bytes of messages held for lookups, and the segments
    /// tracked.
    pub(crate) fn discovery_stats(&self) -> (discovery::Stats, usize, usize) {
        let d = lock(&self.discovery);
        (d.stats().clone(), d.held_bytes(), d.prefixes())
    }

    /// Runs `f` on the state machine, then what it asks for, still under the lock (see
    /// [`Interest::discovery`]).
    fn with<R>(self: &Arc<Self>, f: impl FnOnce(&mut Discovery, Instant) -> R) -> R {
        let mut d = lock(&self.discovery);
        let out = f(&mut d, Instant::now());
        while let Some(action) = d.poll_action() {
            self.act(action);
        }
        out
    }

    fn act(self: &Arc<Self>, action: Action) {
        match action {
            Action::LookUp(key) => {
                let me = Arc::downgrade(self);
                let mesh = self.mesh.clone();
                tokio::spawn(async move {
                    let records = mesh.find_records(key).await;
                    if let Some(me) = me.upgrade() {
                        me.with(|d, now| d.lookup_done(now, key, &records));
                    }
                });
            }
            Action::Forward { to, message } => self.forward(to, message),
            Action::Changed(realm) => {
                if let Some(r) = self.router.upgrade().and_then(|r| r.realm(&realm)) {
                    r.bump();
                }
            }
        }
    }

    /// A local subscription to `pattern` in `realm` started.
    pub(crate) fn add_local(self: &Arc<Self>, realm: &str, pattern: &Pattern, group: Option<&bytes::Bytes>) {
        self.with(|d, now| d.add_local(now, realm, pattern, group));
        self.wake.notify_one();
    }

    /// A local subscription to `pattern` in `realm` ended.
    pub(crate) fn remove_local(self: &Arc<Self>, realm: &str, pattern: &Pattern, group: Option<&bytes::Bytes>) {
        self.with(|d, now| d.remove_local(now, realm, pattern, group));
        self.wake.notify_one();
    }

    /// A local registration of `procedure` in `realm` started.
    pub(crate) fn add_provider(self: &Arc<Self>, realm: &str, procedure: &str) {
        self.with(|d, now| d.add_provider(now, realm, procedure));
        self.wake.notify_one();
    }

    /// A local registration of `procedure` in `realm` ended.
    pub(crate) fn remove_provider(self: &Arc<Self>, realm: &str, procedure: &str) {
        self.with(|d, now| d.remove_provider(now, realm, procedure));
        self.wake.notify_one();
    }

    /// The nodes interested in `topic` in `realm`, starting the lookups this node has not
    /// made yet. Called on a connection's cache miss, never per message.
    pub(crate) fn remote_targets(self: &Arc<Self>, realm: &str, topic: &Topic) -> RemoteTargets {
        self.with(|d, now| d.remote_targets(now, realm, topic))
    }

    /// Holds a message for a topic whose discovery runs; sent when it ends. Returns
    /// `false` if it was not held (discovery ended meanwhile: the caller's cache is stale
    /// and the message should be routed again).
    pub(crate) fn hold(&self, realm: &str, topic: &Topic, fwd: Forward, served: Vec<GroupId>) -> bool {
        lock(&self.discovery).hold(realm, topic, fwd, served)
    }

    /// Sends a message to another node.
    pub(crate) fn forward(&self, to: Contact, fwd: Forward) {
        if self.mesh.forward(to, Frame::Fwd(fwd)) {
            self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends a run of messages to another node (each a `FWD` for `realm` naming no queue
    /// groups), counted once per run. Returns the link's handle if its queue is pressing:
    /// the publisher should hold back for it.
    pub(crate) fn forward_run(
        &self,
        to: Contact,
        realm: &bytes::Bytes,
        run: &crate::handle::outbound::Msgs,
    ) -> Option<Arc<crate::handle::Handle>> {
        let (queued, dropped, pressing) = self.mesh.forward_run(to, realm, run);
        if queued > 0 {
            self.stats.forwarded.fetch_add(queued, Ordering::Relaxed);
        }
        if dropped > 0 {
            self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        pressing
    }

    /// The other nodes providing `procedure` in `realm`: cached, looked up when stale,
    /// kept current by the DHT's pushes.
    pub(crate) async fn providers(self: &Arc<Self>, realm: &str, procedure: &str) -> Vec<Contact> {
        let key = match self.with(|d, now| d.providers(now, realm, procedure)) {
            Providers::Known(nodes) => return nodes,
            Providers::LookUp(key) => key,
        };
        let records = self.mesh.find_records(key).await;
        self.with(|d, now| {
            d.lookup_done(now, key, &records);
            d.provider_nodes(realm, procedure)
        })
    }

    /// `node` answered a call of `procedure` with "no provider here": not taken for one
    /// until a lookup or a push says otherwise.
    pub(crate) fn provider_gone(self: &Arc<Self>, realm: &str, procedure: &str, node: &fovea_core::dht::NodeId) {
        self.with(|d, _| d.provider_gone(realm, procedure, node));
    }

    /// Publishes local changes, applies pushes, renews what is in use; until `stop`.
    pub(crate) async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut pushes = self.mesh.notifications();
        let mut departures = self.mesh.departures();
        loop {
            let deadline = lock(&self.discovery).poll_timeout();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(deadline.into()) => {}
                () = self.wake.notified() => {}
                r = pushes.recv() => match r {
                    Ok(record) => self.with(|d, now| d.pushed(now, &record)),
                    // Missed pushes: look everything up again.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.with(|d, _| d.forget_all()),
                    Err(_) => return,
                },
                // A node left the mesh: it is no longer a target.
                d = departures.recv() => if let Ok(id) = d { self.with(|d, _| d.node_gone(&id)) },
            }
            let publications: Vec<Publication> = self.with(|d, now| {
                d.handle_timeout(now);
                std::iter::from_fn(|| d.poll_publication()).collect()
            });
            // In order, one at a time: a publish and a later retraction of one key must
            // reach the storers in that order.
            for p in publications {
                match p {
                    Publication::Publish { key, value, ttl } => self.mesh.publish(key, value, ttl).await,
                    Publication::Retract { key, ttl } => self.mesh.retract(key, ttl).await,
                }
            }
        }
    }
}
