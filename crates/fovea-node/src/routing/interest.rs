//! Pub/sub across the mesh: which nodes want which topics, found through the DHT.
//!
//! **Records.** A node with local subscriptions in realm `R` publishes, per *prefix* (the
//! first segment of a pattern when it is literal, `""` when the pattern starts with a
//! wildcard), one DHT record under `SHA-256("fovea/interest/v1" R prefix)` holding its
//! mesh address and its patterns under that prefix. A change is published within
//! [`FLUSH_EVERY`]; the DHT republishes it while it stands; the last unsubscribe
//! retracts it (an empty record, pushed to watchers).
//!
//! **Publishers.** A publish to `a.b.c` needs the records under `a` and `""`: two
//! lookups the first time a node sees the prefix, then nothing per publish: the result is
//! cached per realm in a trie of remote patterns, kept fresh by the DHT's pushes
//! (watchers) and renewed every [`RENEW_AFTER`] while the prefix is in use. Messages
//! published while a prefix's first lookup runs wait here (at most `max_pending_bytes`
//! node-wide, the same bound as one client's queue; past that, dropped and counted) and
//! go out when it ends, in order.
//!
//! **Forwarding.** The publisher's node sends the message once to each interested node
//! (`FWD` frame on their link), which delivers it to its local subscribers only: one hop,
//! no loops. A queue group's one delivery is decided at the publisher's node, among its
//! local members and the nodes with members (weighted by member count, from the
//! records); the chosen node is told in the `FWD` which groups it serves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use fovea_core::dht::{Contact, Key, NodeId, Record};
use fovea_core::frame::Forward;
use fovea_core::{varint, Frame, Pattern, SubTrie, Topic};

use crate::mesh::Mesh;
use crate::sync::lock;

/// How often local interest changes are published (they are coalesced in between).
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// A prefix in use is looked up again after this (renewing the watch at its storers).
pub const RENEW_AFTER: Duration = Duration::from_secs(30);
/// Lifetime of an interest record at the storers (republished every minute by the DHT).
const RECORD_TTL: Duration = Duration::from_secs(150);
/// Most patterns listed in one record; more are summarised as the prefix's catch-all.
const MAX_PATTERNS: usize = 64;

/// The DHT key of realm `realm`'s interest records for `prefix`.
pub fn interest_key(realm: &str, prefix: &str) -> Key {
    super::dht_key(b"fovea/interest/v1", &[realm.as_bytes(), prefix.as_bytes()])
}

/// The DHT key of the provider records of `procedure` in `realm`.
pub fn provider_key(realm: &str, procedure: &str) -> Key {
    super::dht_key(b"fovea/provider/v1", &[realm.as_bytes(), procedure.as_bytes()])
}

/// A remote provider list is looked up again after this, while calls need it.
const PROVIDERS_FRESH: Duration = Duration::from_secs(10);
/// At most one provider lookup per procedure in this long (an absent procedure must not
/// turn every call into a DHT query).
const PROVIDERS_RETRY: Duration = Duration::from_secs(1);

/// What a key this node looked up stands for.
#[derive(Clone)]
enum KeyOf {
    Interest(String, String),
    Provider(String, String),
}

struct Providers {
    nodes: Vec<Contact>,
    fetched: Instant,
}

/// The prefix a pattern's interest record is filed under.
fn pattern_prefix(p: &Pattern) -> String {
    match p.as_str().split('.').next() {
        Some(first) if first != "*" && first != ">" => first.to_owned(),
        _ => String::new(),
    }
}

/// A topic's first segment: what a publisher's node tracks discovery by. Resolving it means
/// fetching the records of two prefixes, the segment and `""`.
fn topic_segment(t: &Topic) -> String {
    t.as_str().split('.').next().unwrap_or_default().to_owned()
}

/// What a publisher's node knows of one first segment.
enum PrefixState {
    /// The first lookup runs; messages wait, each with the queue groups already served
    /// by a member on this node.
    Pending(Vec<(Forward, Vec<GroupId>)>),
    /// Known; `used` since the last renewal.
    Ready { renewed: Instant, used: bool },
}

/// What this node knows of another node's interest under one prefix.
struct RemoteNode {
    contact: Contact,
    subs: Vec<RemoteSub>,
    learned: Instant,
}

/// A queue group mesh-wide: the pattern and the name its members share.
pub(crate) type GroupId = (Bytes, Bytes);

/// (pattern, queue group or empty) → local subscriptions to it.
type LocalEntries = BTreeMap<(String, Bytes), usize>;

/// Per queue group, the other nodes with members and their member counts.
pub(crate) type RemoteGroups = Vec<(GroupId, Vec<(Contact, u32)>)>;

/// One entry of another node's interest record.
#[derive(Debug, Clone, PartialEq)]
struct RemoteSub {
    pattern: Pattern,
    /// Set for a queue group, with the node's member count (its weight in the choice).
    group: Option<(Bytes, u32)>,
}

#[derive(Default)]
struct RemoteRealm {
    /// By first segment of the topics published.
    prefixes: HashMap<String, PrefixState>,
    /// (prefix, node) → the node's contact and subscriptions under the prefix.
    /// `learned`: when the entry was last set (by a lookup or a push).
    nodes: HashMap<(String, NodeId), RemoteNode>,
    /// Every remote pattern → its node; rebuilt when `nodes` changes.
    trie: SubTrie<(NodeId, Option<GroupId>, u32)>,
}

impl RemoteRealm {
    /// Where `topic` goes beyond this node: nodes with plain subscribers (each once), and
    /// per queue group the nodes with members and their member counts.
    fn targets(&self, topic: &Topic) -> (Vec<Contact>, RemoteGroups) {
        let mut plain: Vec<NodeId> = Vec::new();
        let mut groups: Vec<(GroupId, Vec<(NodeId, u32)>)> = Vec::new();
        self.trie.for_each_match(topic, |(id, group, weight)| match group {
            None => {
                if !plain.contains(id) {
                    plain.push(*id);
                }
            }
            Some(g) => match groups.iter_mut().find(|(k, _)| k == g) {
                Some((_, nodes)) => {
                    if !nodes.iter().any(|(n, _)| n == id) {
                        nodes.push((*id, *weight));
                    }
                }
                None => groups.push((g.clone(), vec![(*id, *weight)])),
            },
        });
        let contact = |id: &NodeId| self.nodes.iter().find(|((_, n), _)| n == id).map(|(_, node)| node.contact);
        let plain = plain.iter().filter_map(contact).collect();
        let groups = groups
            .into_iter()
            .map(|(g, nodes)| (g, nodes.iter().filter_map(|(id, w)| contact(id).map(|c| (c, *w))).collect()))
            .collect();
        (plain, groups)
    }

    fn rebuild(&mut self) {
        let mut trie = SubTrie::new();
        for ((_, id), node) in &self.nodes {
            for sub in &node.subs {
                let (group, weight) = match &sub.group {
                    Some((name, n)) => (Some((Bytes::copy_from_slice(sub.pattern.as_bytes()), name.clone())), *n),
                    None => (None, 1),
                };
                trie.insert(&sub.pattern, (*id, group, weight));
            }
        }
        self.trie = trie;
    }
}

/// Counters of cross-node pub/sub.
#[derive(Debug, Default)]
pub struct InterestStats {
    /// Messages sent to other nodes.
    pub forwarded: AtomicU64,
    /// Messages received from other nodes and delivered locally.
    pub received: AtomicU64,
    /// Messages dropped: a prefix's wait list full, or a link's queue full.
    pub dropped: AtomicU64,
    /// Interest lookups run.
    pub lookups: AtomicU64,
}

/// Where a topic's messages go beyond this node.
#[derive(Default)]
pub(crate) struct RemoteTargets {
    /// Nodes with plain subscribers.
    pub nodes: Vec<Contact>,
    /// Queue groups with members on other nodes: the nodes and their member counts.
    pub groups: RemoteGroups,
    /// Prefixes whose first lookup runs: messages go to [`Interest::hold`] meanwhile.
    pub pending: bool,
}

/// Local and remote interest of one node.
pub struct Interest {
    mesh: Arc<Mesh>,
    /// (realm, prefix) → (pattern, queue group or empty) → local subscriptions to it.
    local: Mutex<HashMap<(String, String), LocalEntries>>,
    dirty: Mutex<HashSet<(String, String)>>,
    remote: Mutex<HashMap<String, RemoteRealm>>,
    /// Keys looked up → what they stand for, for the DHT's pushes.
    keys: Mutex<HashMap<Key, KeyOf>>,
    /// (realm, procedure) → local registrations.
    local_providers: Mutex<HashMap<(String, String), usize>>,
    dirty_providers: Mutex<HashSet<(String, String)>>,
    /// (realm, procedure) → providers on other nodes, as last looked up or pushed.
    remote_providers: Mutex<HashMap<(String, String), Providers>>,
    /// The routing state whose realms' match caches a change of remote interest makes
    /// stale (weak: the router owns this).
    router: Weak<super::Router>,
    /// Bytes of messages waiting for discovery, all segments together, and their bound.
    held: std::sync::atomic::AtomicUsize,
    max_held: usize,
    /// Wakes the flush before its interval (a new prefix).
    flush_now: tokio::sync::Notify,
    pub stats: InterestStats,
}

impl Interest {
    pub(crate) fn new(mesh: Arc<Mesh>, max_held: usize, router: Weak<super::Router>) -> Arc<Interest> {
        Arc::new(Interest {
            mesh,
            local: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
            remote: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            local_providers: Mutex::new(HashMap::new()),
            dirty_providers: Mutex::new(HashSet::new()),
            remote_providers: Mutex::new(HashMap::new()),
            router,
            held: std::sync::atomic::AtomicUsize::new(0),
            max_held,
            flush_now: tokio::sync::Notify::new(),
            stats: InterestStats::default(),
        })
    }

    /// Connections' match caches for `realm` are stale: remote interest changed.
    fn bump(&self, realm: &str) {
        if let Some(r) = self.router.upgrade().and_then(|r| r.realm(realm)) {
            r.bump();
        }
    }

    /// A local subscription to `pattern` in `realm` started.
    pub(crate) fn add_local(&self, realm: &str, pattern: &Pattern, group: Option<&Bytes>) {
        let key = (realm.to_owned(), pattern_prefix(pattern));
        let mut local = lock(&self.local);
        let entry = (pattern.as_str().to_owned(), group.cloned().unwrap_or_default());
        let entries = local.entry(key.clone()).or_default();
        let new_prefix = entries.is_empty();
        let n = entries.entry(entry).or_insert(0);
        *n += 1;
        // A group's member count is its weight elsewhere: publish every change of it.
        if *n == 1 || group.is_some() {
            let first = new_prefix;
            lock(&self.dirty).insert(key);
            // A prefix's first subscription is published at once: until its record is
            // stored, publishers elsewhere cannot know of it.
            if first {
                self.flush_now.notify_one();
            }
        }
    }

    /// A local subscription to `pattern` in `realm` ended.
    pub(crate) fn remove_local(&self, realm: &str, pattern: &Pattern, group: Option<&Bytes>) {
        let key = (realm.to_owned(), pattern_prefix(pattern));
        let mut local = lock(&self.local);
        let Some(patterns) = local.get_mut(&key) else { return };
        let entry = (pattern.as_str().to_owned(), group.cloned().unwrap_or_default());
        let gone = match patterns.get_mut(&entry) {
            Some(n) if *n > 1 => {
                *n -= 1;
                group.is_some()
            }
            Some(_) => {
                patterns.remove(&entry);
                true
            }
            None => false,
        };
        if patterns.is_empty() {
            local.remove(&key);
        }
        if gone {
            lock(&self.dirty).insert(key);
        }
    }

    /// The nodes interested in `topic` in `realm`, starting the prefix lookups this node
    /// has not done yet. Called on a connection's cache miss, never per message.
    pub(crate) fn remote_targets(self: &Arc<Self>, realm: &str, topic: &Topic) -> RemoteTargets {
        let mut out = RemoteTargets::default();
        let segment = topic_segment(topic);
        let start = {
            let mut remote = lock(&self.remote);
            let r = remote.entry(realm.to_owned()).or_default();
            let start = match r.prefixes.get_mut(&segment) {
                Some(PrefixState::Pending(_)) => {
                    out.pending = true;
                    false
                }
                Some(PrefixState::Ready { used, .. }) => {
                    *used = true;
                    false
                }
                None => {
                    r.prefixes.insert(segment.clone(), PrefixState::Pending(Vec::new()));
                    out.pending = true;
                    true
                }
            };
            (out.nodes, out.groups) = r.targets(topic);
            start
        };
        if start {
            let me = self.clone();
            let realm = realm.to_owned();
            tokio::spawn(async move { me.look_up(realm, segment).await });
        }
        out
    }

    /// Holds a message for a topic whose discovery runs; sent when it ends. Returns
    /// `false` if it was not held (discovery ended meanwhile: the caller's cache is stale
    /// and the message should be routed again).
    pub(crate) fn hold(&self, realm: &str, topic: &Topic, fwd: Forward, served: Vec<GroupId>) -> bool {
        let mut remote = lock(&self.remote);
        let Some(r) = remote.get_mut(realm) else { return false };
        match r.prefixes.get_mut(&topic_segment(topic)) {
            Some(PrefixState::Pending(waiting)) => {
                let size = held_size(&fwd);
                if self.held.load(Ordering::Relaxed) + size > self.max_held {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.held.fetch_add(size, Ordering::Relaxed);
                    waiting.push((fwd, served));
                }
                true
            }
            _ => false,
        }
    }

    /// Sends a message to another node.
    pub(crate) fn forward(&self, to: Contact, fwd: Forward) {
        if self.mesh.forward(to, Frame::Fwd(fwd)) {
            self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Fetches the records of `segment` and `""` in `realm`, then sends what waited.
    async fn look_up(self: Arc<Self>, realm: String, segment: String) {
        let me = self.mesh.local().id;
        let started = Instant::now();
        let mut found = Vec::new();
        for prefix in [segment.clone(), String::new()] {
            let key = interest_key(&realm, &prefix);
            lock(&self.keys).insert(key, KeyOf::Interest(realm.clone(), prefix.clone()));
            self.stats.lookups.fetch_add(1, Ordering::Relaxed);
            let records = self.mesh.find_records(key).await;
            let nodes: Vec<(Contact, Vec<RemoteSub>)> =
                records.iter().filter(|r| r.publisher != me).filter_map(decode_record).collect();
            found.push((prefix, nodes));
        }
        let mut remote = lock(&self.remote);
        let r = remote.entry(realm.clone()).or_default();
        for (prefix, nodes) in found {
            // Entries the lookup did not find go, unless a push set them after it began
            // (the lookup may have asked before the record was stored).
            r.nodes.retain(|(p, id), node| {
                *p != prefix || node.learned >= started || nodes.iter().any(|(c, _)| c.id == *id)
            });
            for (contact, subs) in nodes {
                let learned = Instant::now();
                r.nodes.insert((prefix.clone(), contact.id), RemoteNode { contact, subs, learned });
            }
        }
        r.rebuild();
        let old = r.prefixes.insert(segment, PrefixState::Ready { renewed: Instant::now(), used: false });
        // What waited goes out now, under the lock, so it precedes anything published
        // after the generation bump below.
        if let Some(PrefixState::Pending(waiting)) = old {
            let mut rng =
                fovea_core::balance::Rng::new(u64::from_be_bytes([me.0[0], me.0[1], me.0[2], me.0[3], 1, 2, 3, 4]));
            // Held messages mostly share a few topics: resolve each topic once.
            let mut resolved: HashMap<Bytes, (Vec<Contact>, RemoteGroups)> = HashMap::new();
            for (fwd, served) in waiting {
                self.held.fetch_sub(held_size(&fwd), Ordering::Relaxed);
                if !resolved.contains_key(&fwd.topic) {
                    let Ok(topic) = Topic::from_bytes(fwd.topic.clone()) else { continue };
                    resolved.insert(fwd.topic.clone(), r.targets(&topic));
                }
                let Some((plain, groups)) = resolved.get(&fwd.topic).cloned() else { continue };
                let mut sends: Vec<(Contact, Vec<GroupId>)> = plain.into_iter().map(|c| (c, Vec::new())).collect();
                for (g, nodes) in groups.into_iter().filter(|(g, _)| !served.contains(g)) {
                    if let Some(c) = pick_weighted(&nodes, 0, &mut rng) {
                        match sends.iter_mut().find(|(n, _)| n.id == c.id) {
                            Some((_, gs)) => gs.push(g),
                            None => sends.push((c, vec![g])),
                        }
                    }
                }
                for (c, groups) in sends {
                    self.forward(c, Forward { groups, ..fwd.clone() });
                }
            }
        }
        self.bump(&realm);
    }

    /// A local registration of `procedure` in `realm` started.
    pub(crate) fn add_provider(&self, realm: &str, procedure: &str) {
        let key = (realm.to_owned(), procedure.to_owned());
        let mut local = lock(&self.local_providers);
        let n = local.entry(key.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            lock(&self.dirty_providers).insert(key);
        }
    }

    /// A local registration of `procedure` in `realm` ended.
    pub(crate) fn remove_provider(&self, realm: &str, procedure: &str) {
        let key = (realm.to_owned(), procedure.to_owned());
        let mut local = lock(&self.local_providers);
        let Some(n) = local.get_mut(&key) else { return };
        *n -= 1;
        if *n == 0 {
            local.remove(&key);
            lock(&self.dirty_providers).insert(key);
        }
    }

    /// The other nodes providing `procedure` in `realm`: cached, looked up when stale
    /// (at most once per [`PROVIDERS_RETRY`]), kept current by the DHT's pushes.
    pub(crate) async fn providers(&self, realm: &str, procedure: &str) -> Vec<Contact> {
        let key = (realm.to_owned(), procedure.to_owned());
        if let Some(p) = lock(&self.remote_providers).get(&key) {
            let age = p.fetched.elapsed();
            if age < PROVIDERS_FRESH && (!p.nodes.is_empty() || age < PROVIDERS_RETRY) {
                return p.nodes.clone();
            }
        }
        let dht_key = provider_key(realm, procedure);
        lock(&self.keys).insert(dht_key, KeyOf::Provider(realm.to_owned(), procedure.to_owned()));
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        let me = self.mesh.local().id;
        let nodes: Vec<Contact> = self
            .mesh
            .find_records(dht_key)
            .await
            .iter()
            .filter(|r| r.publisher != me)
            .filter_map(|r| {
                let addr = std::str::from_utf8(&r.value).ok()?.parse().ok()?;
                Some(Contact { id: r.publisher, addr })
            })
            .collect();
        lock(&self.remote_providers).insert(key, Providers { nodes: nodes.clone(), fetched: Instant::now() });
        nodes
    }

    /// A record pushed by a storer: one node's interest or providing changed.
    fn pushed(&self, record: &Record) {
        let Some(of) = lock(&self.keys).get(&record.key).cloned() else { return };
        if record.publisher == self.mesh.local().id {
            return;
        }
        let (realm, prefix) = match of {
            KeyOf::Interest(realm, prefix) => (realm, prefix),
            KeyOf::Provider(realm, procedure) => {
                let mut remote = lock(&self.remote_providers);
                let Some(p) = remote.get_mut(&(realm, procedure)) else { return };
                p.nodes.retain(|c| c.id != record.publisher);
                if let Some(addr) = std::str::from_utf8(&record.value).ok().and_then(|a| a.parse().ok()) {
                    p.nodes.push(Contact { id: record.publisher, addr });
                }
                return;
            }
        };
        {
            let mut remote = lock(&self.remote);
            let Some(r) = remote.get_mut(&realm) else { return };
            match decode_record(record) {
                Some((c, patterns)) => {
                    r.nodes.insert(
                        (prefix, record.publisher),
                        RemoteNode { contact: c, subs: patterns, learned: Instant::now() },
                    );
                }
                None => {
                    r.nodes.remove(&(prefix, record.publisher));
                }
            }
            r.rebuild();
        }
        self.bump(&realm);
    }

    /// A node left the mesh: it is no longer a target.
    pub(crate) fn node_gone(&self, id: &NodeId) {
        for p in lock(&self.remote_providers).values_mut() {
            p.nodes.retain(|c| c.id != *id);
        }
        let mut changed = Vec::new();
        {
            let mut remote = lock(&self.remote);
            for (realm, r) in remote.iter_mut() {
                let before = r.nodes.len();
                r.nodes.retain(|(_, n), _| n != id);
                if r.nodes.len() != before {
                    r.rebuild();
                    changed.push(realm.clone());
                }
            }
        }
        for realm in changed {
            self.bump(&realm);
        }
    }

    /// Publishes local changes, applies pushes, renews prefixes in use; until `stop`.
    pub(crate) async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut pushes = self.mesh.notifications();
        let mut departures = self.mesh.departures();
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut renew = tokio::time::interval(RENEW_AFTER / 3);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = flush.tick() => self.flush().await,
                () = self.flush_now.notified() => self.flush().await,
                _ = renew.tick() => self.renew(),
                r = pushes.recv() => match r {
                    Ok(record) => self.pushed(&record),
                    // Missed pushes: look everything up again.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.forget_all(),
                    Err(_) => return,
                },
                d = departures.recv() => if let Ok(id) = d { self.node_gone(&id) },
            }
        }
    }

    async fn flush(&self) {
        let dirty: Vec<(String, String)> = lock(&self.dirty_providers).drain().collect();
        for (realm, procedure) in dirty {
            let key = provider_key(&realm, &procedure);
            if lock(&self.local_providers).contains_key(&(realm, procedure)) {
                let addr = Bytes::from(self.mesh.local().addr.to_string());
                self.mesh.publish(key, addr, RECORD_TTL).await;
            } else {
                self.mesh.retract(key, RECORD_TTL).await;
            }
        }
        let dirty: Vec<(String, String)> = lock(&self.dirty).drain().collect();
        for (realm, prefix) in dirty {
            let patterns: Vec<((String, Bytes), usize)> = lock(&self.local)
                .get(&(realm.clone(), prefix.clone()))
                .map(|p| p.iter().map(|(k, n)| (k.clone(), *n)).collect())
                .unwrap_or_default();
            let key = interest_key(&realm, &prefix);
            if patterns.is_empty() {
                self.mesh.retract(key, RECORD_TTL).await;
            } else {
                let value = encode_record(self.mesh.local(), &prefix, &patterns);
                self.mesh.publish(key, value, RECORD_TTL).await;
            }
        }
    }

    /// Prefixes used since their last lookup are looked up again (renewing the watch);
    /// unused ones are forgotten.
    fn renew(self: &Arc<Self>) {
        let mut again = Vec::new();
        {
            let mut remote = lock(&self.remote);
            for (realm, r) in remote.iter_mut() {
                let mut forget = Vec::new();
                for (prefix, state) in r.prefixes.iter_mut() {
                    if let PrefixState::Ready { renewed, used } = state {
                        if renewed.elapsed() >= RENEW_AFTER {
                            if *used {
                                *renewed = Instant::now();
                                *used = false;
                                again.push((realm.clone(), prefix.clone()));
                            } else {
                                forget.push(prefix.clone());
                            }
                        }
                    }
                }
                for p in forget {
                    r.prefixes.remove(&p);
                    r.nodes.retain(|(q, _), _| *q != p);
                }
            }
        }
        for (realm, prefix) in again {
            let me = Arc::downgrade(self);
            tokio::spawn(async move {
                if let Some(me) = Weak::upgrade(&me) {
                    me.look_up(realm, prefix).await;
                }
            });
        }
    }

    fn forget_all(&self) {
        let realms: Vec<String> = {
            let mut remote = lock(&self.remote);
            let realms = remote.keys().cloned().collect();
            remote.retain(|_, r| {
                r.prefixes.retain(|_, s| matches!(s, PrefixState::Pending(_)));
                r.nodes.clear();
                r.rebuild();
                true
            });
            realms
        };
        for realm in realms {
            self.bump(&realm);
        }
    }
}

/// Record value: version (1), mesh address, then the entries: pattern, queue group
/// (empty: plain subscriptions), member count. Plain patterns past [`MAX_PATTERNS`] (or
/// 3 KB) are summarised as the prefix's catch-all; the receiving node filters anyway.
fn encode_record(me: Contact, prefix: &str, entries: &[((String, Bytes), usize)]) -> Bytes {
    let mut out = BytesMut::new();
    let addr = me.addr.to_string();
    let plain: Vec<&String> = entries.iter().filter(|((_, g), _)| g.is_empty()).map(|((p, _), _)| p).collect();
    let groups: Vec<&((String, Bytes), usize)> =
        entries.iter().filter(|((_, g), _)| !g.is_empty()).take(MAX_PATTERNS).collect();
    let catch_all: Vec<String> =
        if prefix.is_empty() { vec![">".into()] } else { vec![prefix.to_owned(), format!("{prefix}.>")] };
    let too_many = plain.len() > MAX_PATTERNS || plain.iter().map(|p| p.len()).sum::<usize>() > 3000;
    let plain: Vec<&String> = if too_many { catch_all.iter().collect() } else { plain };
    out.extend_from_slice(&[1]);
    put_field(&mut out, addr.as_bytes());
    varint::encode((plain.len() + groups.len()) as u64, &mut out);
    for p in plain {
        put_field(&mut out, p.as_bytes());
        put_field(&mut out, b"");
        varint::encode(1, &mut out);
    }
    for ((p, g), n) in groups {
        put_field(&mut out, p.as_bytes());
        put_field(&mut out, g);
        varint::encode((*n as u64).min(u64::from(u32::MAX)), &mut out);
    }
    out.freeze()
}

fn put_field(out: &mut BytesMut, b: &[u8]) {
    varint::encode(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// A record's contact and entries; `None` for a retraction or a malformed value.
fn decode_record(r: &Record) -> Option<(Contact, Vec<RemoteSub>)> {
    let mut v = r.value.clone();
    if v.first() != Some(&1) {
        return None;
    }
    v.advance(1);
    let field = |v: &mut Bytes| -> Option<Bytes> {
        let (len, n) = varint::decode(v)?;
        v.advance(n);
        let len = usize::try_from(len).ok().filter(|l| *l <= v.len())?;
        Some(v.split_to(len))
    };
    let number = |v: &mut Bytes| -> Option<u64> {
        let (x, n) = varint::decode(v)?;
        v.advance(n);
        Some(x)
    };
    let addr = std::str::from_utf8(&field(&mut v)?).ok()?.parse().ok()?;
    let count = number(&mut v)?;
    let mut subs = Vec::new();
    for _ in 0..count.min(2 * MAX_PATTERNS as u64 + 2) {
        let pattern = Pattern::from_bytes(field(&mut v)?).ok()?;
        let group = field(&mut v)?;
        let n = u32::try_from(number(&mut v)?).unwrap_or(u32::MAX).max(1);
        subs.push(RemoteSub { pattern, group: (!group.is_empty()).then_some((group, n)) });
    }
    Some((Contact { id: r.publisher, addr }, subs))
}

/// What a held message counts against the wait bound.
fn held_size(f: &Forward) -> usize {
    f.payload.len() + f.topic.len() + f.headers.encoded_len() + 64
}

/// Chooses among nodes weighted by member count, or `None` for the `local` members (also
/// weighted), so each member mesh-wide is equally likely to get a group's message.
pub(crate) fn pick_weighted(
    nodes: &[(Contact, u32)],
    local: u32,
    rng: &mut fovea_core::balance::Rng,
) -> Option<Contact> {
    let total: u64 = u64::from(local) + nodes.iter().map(|(_, w)| u64::from(*w)).sum::<u64>();
    if total == 0 {
        return None;
    }
    let mut r = ((u128::from(rng.next_u64()) * u128::from(total)) >> 64) as u64;
    if r < u64::from(local) {
        return None;
    }
    r -= u64::from(local);
    for (c, w) in nodes {
        if r < u64::from(*w) {
            return Some(*c);
        }
        r -= u64::from(*w);
    }
    nodes.last().map(|(c, _)| *c)
}
