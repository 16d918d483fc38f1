//! Discovery, sans-IO: which nodes of the mesh want which topics and provide which
//! procedures, learned through the DHT.
//!
//! The node owns the DHT's IO, the links and the clock; [`Discovery`] decides what to look
//! up, what to publish and where held messages go. The node calls its inputs (local
//! subscriptions and registrations, a publisher's cache miss, lookup results, records the
//! DHT pushed, departed nodes, the time) and carries out what comes out:
//! [`Discovery::poll_action`] (lookups to run, messages to forward, realms whose routes are
//! stale) and [`Discovery::poll_publication`] (records to store or retract, in order).
//! That is quinn-proto's split again, as in [`crate::dht`], so a whole mesh's discovery can
//! run in one process on simulated time.
//!
//! ```text
//!  node                                 Discovery (this module)
//!  ────                                 ───────────────────────
//!  subscribe/register ── add_local ───▶ local interest, marked for the next flush
//!  publisher cache miss ─ remote_targets▶ targets, or lookups started (pending)
//!  FIND_VALUE result ─── lookup_done ──▶ remote interest; held messages released
//!  DHT push / departure ─ pushed, node_gone ▶ remote interest changed
//!  timer ─────────────── handle_timeout ▶ flush local changes, renew prefixes in use
//!  run / send ◀───────── poll_action     LookUp, Forward, Changed
//!  store ◀────────────── poll_publication Publish, Retract
//! ```
//!
//! **Records.** A node with local subscriptions in realm `R` publishes, per *prefix* (the
//! first segment of a pattern when it is literal, `""` when the pattern starts with a
//! wildcard), one DHT record under [`interest_key`]`(R, prefix)` holding its mesh address
//! and its patterns under that prefix. A change is published within
//! [`Config::flush_every`] (a prefix's first subscription at once: until its record is
//! stored, publishers elsewhere cannot know of it); the DHT republishes it while it
//! stands; the last unsubscribe retracts it (an empty record, pushed to watchers).
//! Providers publish their address under [`provider_key`]`(R, procedure)` the same way.
//!
//! **Publishers.** A publish to `a.b.c` needs the records under `a` and `""`: two lookups
//! the first time a node sees the segment `a`, then nothing per publish: the result is
//! kept per realm in a trie of remote patterns, kept fresh by the DHT's pushes (a
//! `FIND_VALUE` makes the looker a watcher at the storers) and renewed every
//! [`Config::renew_after`] while the segment is in use. Messages published while a
//! segment's first lookups run wait here (at most [`Config::max_held_bytes`]; past that,
//! dropped and counted) and go out, in order, when they end.
//!
//! **Forwarding.** The publisher's node sends a message once to each interested node
//! (`FWD` on their link), which delivers it to its local subscribers only: one hop, no
//! loops. A queue group's one delivery is decided at the publisher's node, among its local
//! members and the nodes with members (weighted by member count, from the records); the
//! chosen node is told in the `FWD` which groups it serves.
//!
//! **Bounds.** Segments tracked ([`Config::max_prefixes`]) and remote procedures cached
//! ([`Config::max_procedures`]) are capped; at a cap the least recently renewed entry is
//! forgotten (counted in [`Stats::evicted`]) and is looked up again if it is needed.

mod record;
mod remote;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use record::{interest_key, provider_key, MAX_PATTERNS};
use remote::{PrefixState, RemoteNode, RemoteRealm};

use crate::balance::{pick_weighted, Rng};
use crate::dht::{Contact, Key, NodeId, Record};
use crate::frame::Forward;
use crate::hashing::{Map as HashMap, Set as HashSet};
use crate::{Pattern, Topic};

/// A queue group mesh-wide: the pattern and the name its members share.
pub type GroupId = (Bytes, Bytes);

/// Per queue group, the other nodes with members and their member counts.
pub type RemoteGroups = Vec<(GroupId, Vec<(Contact, u32)>)>;

/// Tunables; the defaults suit a LAN or datacenter mesh.
#[derive(Debug, Clone)]
pub struct Config {
    /// Local changes are coalesced for at most this long before they are published.
    pub flush_every: Duration,
    /// A segment in use is looked up again after this (renewing the watch at its
    /// storers); one unused for this long is forgotten.
    pub renew_after: Duration,
    /// Lifetime of the records this node publishes (the DHT republishes them meanwhile).
    pub record_ttl: Duration,
    /// A remote provider list is looked up again after this, while calls need it.
    pub providers_fresh: Duration,
    /// At most one provider lookup per procedure in this long while none is found (an
    /// absent procedure must not turn every call into a DHT query).
    pub providers_retry: Duration,
    /// Bytes of messages held while their segment's first lookups run, all together.
    pub max_held_bytes: usize,
    /// Segments tracked for publishers, all realms together.
    pub max_prefixes: usize,
    /// Remote procedures whose providers are cached.
    pub max_procedures: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            flush_every: Duration::from_millis(20),
            renew_after: Duration::from_secs(30),
            record_ttl: Duration::from_secs(150),
            providers_fresh: Duration::from_secs(10),
            providers_retry: Duration::from_secs(1),
            max_held_bytes: 64 << 20,
            max_prefixes: 16_384,
            max_procedures: 16_384,
        }
    }
}

/// Where a topic's messages go beyond this node.
#[derive(Debug, Default)]
pub struct RemoteTargets {
    /// Nodes with plain subscribers.
    pub nodes: Vec<Contact>,
    /// Queue groups with members on other nodes: the nodes and their member counts.
    pub groups: RemoteGroups,
    /// The segment's first lookups run: messages go to [`Discovery::hold`] meanwhile.
    pub pending: bool,
}

/// What the node must do for discovery, from [`Discovery::poll_action`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Find `key`'s records (a DHT `FIND_VALUE`) and pass them to
    /// [`Discovery::lookup_done`], also when the lookup fails (with none).
    LookUp(Key),
    /// Send `message` to the node `to` (a held message, released). Carry these out in
    /// order and before a later publish of the same realm is routed: they precede it.
    Forward { to: Contact, message: Forward },
    /// Interest elsewhere in this realm changed: cached routes for it are stale.
    Changed(String),
}

/// A record to store or retract, from [`Discovery::poll_publication`]. Apply them in
/// order: a publish and a later retraction of one key must land in that order.
#[derive(Debug, Clone, PartialEq)]
pub enum Publication {
    Publish { key: Key, value: Bytes, ttl: Duration },
    Retract { key: Key, ttl: Duration },
}

/// The answer to [`Discovery::providers`].
#[derive(Debug, Clone, PartialEq)]
pub enum Providers {
    /// The cached providers on other nodes (perhaps none).
    Known(Vec<Contact>),
    /// Look `key` up, pass the records to [`Discovery::lookup_done`], then read
    /// [`Discovery::provider_nodes`].
    LookUp(Key),
}

/// Counters, for metrics.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// DHT lookups asked for (interest and providers).
    pub lookups: u64,
    /// Messages not held because the wait bound was reached.
    pub held_dropped: u64,
    /// Segments or procedures forgotten at their cap.
    pub evicted: u64,
}

/// What a key this node looks up stands for.
#[derive(Debug, Clone)]
enum KeyOf {
    Interest { realm: String, prefix: String },
    Provider { realm: String, procedure: String },
}

struct ProviderCache {
    nodes: Vec<Contact>,
    fetched: Instant,
}

/// (pattern, queue group or empty) → local subscriptions to it.
type LocalEntries = BTreeMap<(String, Bytes), usize>;

/// One node's discovery state. Invariants: every segment in a `Pending` state has a lookup
/// in flight for each key it waits on; `held` is the sum of the held messages' sizes;
/// `prefixes` counts the segments tracked in `remote`.
pub struct Discovery {
    me: Contact,
    config: Config,
    /// (realm, prefix) → local subscriptions under it.
    local: HashMap<(String, String), LocalEntries>,
    dirty: HashSet<(String, String)>,
    /// (realm, procedure) → local registrations.
    local_providers: HashMap<(String, String), usize>,
    dirty_providers: HashSet<(String, String)>,
    /// When the dirty entries are published.
    flush_at: Option<Instant>,
    renew_at: Instant,
    remote: HashMap<String, RemoteRealm>,
    prefixes: usize,
    /// Keys looked up → what they stand for, to read their results and pushes.
    keys: HashMap<Key, KeyOf>,
    /// Lookups running → when they started.
    in_flight: HashMap<Key, Instant>,
    /// Key → the (realm, segment)s whose first lookups wait for it.
    waiters: HashMap<Key, Vec<(String, String)>>,
    remote_providers: HashMap<(String, String), ProviderCache>,
    held: usize,
    rng: Rng,
    actions: VecDeque<Action>,
    publications: VecDeque<Publication>,
    stats: Stats,
}

impl Discovery {
    /// The discovery of the node `me` (its id and mesh address, as its records give them).
    pub fn new(me: Contact, config: Config, now: Instant) -> Self {
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&me.id.0[..8]);
        Discovery {
            me,
            renew_at: now + config.renew_after / 3,
            config,
            local: HashMap::default(),
            dirty: HashSet::default(),
            local_providers: HashMap::default(),
            dirty_providers: HashSet::default(),
            flush_at: None,
            remote: HashMap::default(),
            prefixes: 0,
            keys: HashMap::default(),
            in_flight: HashMap::default(),
            waiters: HashMap::default(),
            remote_providers: HashMap::default(),
            held: 0,
            rng: Rng::new(u64::from_be_bytes(seed)),
            actions: VecDeque::new(),
            publications: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Bytes of messages held for running lookups.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Segments tracked for publishers (all realms).
    pub fn prefixes(&self) -> usize {
        self.prefixes
    }

    /// A local subscription to `pattern` in `realm` (in queue group `group`) started.
    pub fn add_local(&mut self, now: Instant, realm: &str, pattern: &Pattern, group: Option<&Bytes>) {
        let key = (realm.to_owned(), pattern_prefix(pattern));
        let entries = self.local.entry(key.clone()).or_default();
        let first = entries.is_empty();
        let n = entries.entry((pattern.as_str().to_owned(), group.cloned().unwrap_or_default())).or_insert(0);
        *n += 1;
        // A group's member count is its weight elsewhere: every change of it is published.
        if *n == 1 || group.is_some() {
            self.dirty.insert(key);
            self.flush_by(if first { now } else { now + self.config.flush_every });
        }
    }

    /// A local subscription to `pattern` in `realm` ended.
    pub fn remove_local(&mut self, now: Instant, realm: &str, pattern: &Pattern, group: Option<&Bytes>) {
        let key = (realm.to_owned(), pattern_prefix(pattern));
        let Some(entries) = self.local.get_mut(&key) else { return };
        let entry = (pattern.as_str().to_owned(), group.cloned().unwrap_or_default());
        let changed = match entries.get_mut(&entry) {
            Some(n) if *n > 1 => {
                *n -= 1;
                group.is_some()
            }
            Some(_) => {
                entries.remove(&entry);
                true
            }
            None => false,
        };
        if entries.is_empty() {
            self.local.remove(&key);
        }
        if changed {
            self.dirty.insert(key);
            self.flush_by(now + self.config.flush_every);
        }
    }

    /// A local registration of `procedure` in `realm` started.
    pub fn add_provider(&mut self, now: Instant, realm: &str, procedure: &str) {
        let key = (realm.to_owned(), procedure.to_owned());
        let n = self.local_providers.entry(key.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            // At once, as a segment's first subscription: until the record is stored,
            // callers elsewhere cannot know of the provider (and a tool it provides may be
            // listed by the realm's catalog before it can be called).
            self.dirty_providers.insert(key);
            self.flush_by(now);
        }
    }

    /// A local registration of `procedure` in `realm` ended.
    pub fn remove_provider(&mut self, now: Instant, realm: &str, procedure: &str) {
        let key = (realm.to_owned(), procedure.to_owned());
        let Some(n) = self.local_providers.get_mut(&key) else { return };
        *n -= 1;
        if *n == 0 {
            self.local_providers.remove(&key);
            self.dirty_providers.insert(key);
            self.flush_by(now + self.config.flush_every);
        }
    }

    fn flush_by(&mut self, at: Instant) {
        self.flush_at = Some(self.flush_at.map_or(at, |t| t.min(at)));
    }

    /// The nodes interested in `topic` in `realm`, starting the lookups of its segment if
    /// this node has not made them. Meant for a publisher's cache miss, not every message.
    pub fn remote_targets(&mut self, now: Instant, realm: &str, topic: &Topic) -> RemoteTargets {
        let segment = topic_segment(topic);
        let known = self.remote.get(realm).is_some_and(|r| r.prefixes.contains_key(segment));
        if !known {
            if self.prefixes >= self.config.max_prefixes {
                self.evict_prefix();
            }
            if self.prefixes < self.config.max_prefixes {
                self.start_prefix(now, realm, segment);
            }
        }
        let mut out = RemoteTargets::default();
        let Some(r) = self.remote.get_mut(realm) else { return out };
        match r.prefixes.get_mut(segment) {
            Some(PrefixState::Pending { .. }) => out.pending = true,
            Some(PrefixState::Ready { used, .. }) => *used = true,
            None => {}
        }
        (out.nodes, out.groups) = r.targets(topic);
        out
    }

    /// Tracks `segment` of `realm`, pending until its records and `""`'s are found.
    fn start_prefix(&mut self, now: Instant, realm: &str, segment: &str) {
        let mut keys = vec![interest_key(realm, segment)];
        if !segment.is_empty() {
            keys.push(interest_key(realm, ""));
        }
        let r = self.remote.entry(realm.to_owned()).or_default();
        r.prefixes.insert(segment.to_owned(), PrefixState::Pending { waiting: Vec::new(), keys_left: keys.clone() });
        self.prefixes += 1;
        for (key, prefix) in keys.into_iter().zip([segment, ""]) {
            self.waiters.entry(key).or_default().push((realm.to_owned(), segment.to_owned()));
            self.look_up(now, key, KeyOf::Interest { realm: realm.to_owned(), prefix: prefix.to_owned() });
        }
    }

    /// Asks for a lookup of `key`, unless one runs (its result will serve).
    fn look_up(&mut self, now: Instant, key: Key, of: KeyOf) {
        self.keys.insert(key, of);
        if self.in_flight.contains_key(&key) {
            return;
        }
        self.in_flight.insert(key, now);
        self.stats.lookups += 1;
        self.actions.push_back(Action::LookUp(key));
    }

    /// Holds `message` for `topic`, whose segment's lookups run, until they end;
    /// `served`: the queue groups a member on this node already got it for. Returns
    /// `false` if the segment is not pending (the lookups ended: route it again). A held
    /// message past [`Config::max_held_bytes`] is dropped, and counted.
    pub fn hold(&mut self, realm: &str, topic: &Topic, message: Forward, served: Vec<GroupId>) -> bool {
        let Some(r) = self.remote.get_mut(realm) else { return false };
        let Some(PrefixState::Pending { waiting, .. }) = r.prefixes.get_mut(topic_segment(topic)) else {
            return false;
        };
        let size = held_size(&message);
        if self.held + size > self.config.max_held_bytes {
            self.stats.held_dropped += 1;
        } else {
            self.held += size;
            waiting.push((message, served));
        }
        true
    }

    /// A lookup of `key` ended with `records` (none if it failed).
    pub fn lookup_done(&mut self, now: Instant, key: Key, records: &[Record]) {
        let started = self.in_flight.remove(&key).unwrap_or(now);
        let waiters = self.waiters.remove(&key).unwrap_or_default();
        let Some(of) = self.keys.get(&key).cloned() else { return };
        let me = self.me.id;
        match of {
            KeyOf::Provider { realm, procedure } => {
                let nodes = records.iter().filter(|r| r.publisher != me).filter_map(record::decode_provider).collect();
                let id = (realm, procedure);
                if !self.remote_providers.contains_key(&id) && self.remote_providers.len() >= self.config.max_procedures
                {
                    self.evict_procedure();
                }
                self.remote_providers.insert(id, ProviderCache { nodes, fetched: now });
            }
            KeyOf::Interest { realm, prefix } => {
                let found: Vec<_> =
                    records.iter().filter(|r| r.publisher != me).filter_map(record::decode_interest).collect();
                let Some(r) = self.remote.get_mut(&realm) else { return };
                // Entries the lookup did not find go, unless a push set them after it
                // began (the lookup may have asked before the record was stored).
                r.nodes.retain(|(p, id), node| {
                    *p != prefix || node.learned >= started || found.iter().any(|(c, _)| c.id == *id)
                });
                for (contact, subs) in found {
                    r.nodes.insert((prefix.clone(), contact.id), RemoteNode { contact, subs, learned: now });
                }
                r.rebuild();
                for (realm, segment) in waiters {
                    self.one_lookup_less(now, &realm, &segment, key);
                }
                self.actions.push_back(Action::Changed(realm));
            }
        }
    }

    /// `key`, one of the keys `segment`'s first lookups wait on, is done; when it was the
    /// last, the segment is known and what waited goes out.
    fn one_lookup_less(&mut self, now: Instant, realm: &str, segment: &str, key: Key) {
        let Some(r) = self.remote.get_mut(realm) else { return };
        let Some(PrefixState::Pending { keys_left, .. }) = r.prefixes.get_mut(segment) else { return };
        keys_left.retain(|k| *k != key);
        if !keys_left.is_empty() {
            return;
        }
        let ready = PrefixState::Ready { renewed: now, used: false };
        let Some(PrefixState::Pending { waiting, .. }) = r.prefixes.insert(segment.to_owned(), ready) else { return };
        // Held messages mostly share a few topics: each topic is resolved once.
        let mut resolved: HashMap<Bytes, (Vec<Contact>, RemoteGroups)> = HashMap::default();
        for (message, served) in waiting {
            self.held -= held_size(&message);
            if !resolved.contains_key(&message.topic) {
                let Ok(topic) = Topic::from_bytes(message.topic.clone()) else { continue };
                resolved.insert(message.topic.clone(), r.targets(&topic));
            }
            let Some((plain, groups)) = resolved.get(&message.topic) else { continue };
            let mut sends: Vec<(Contact, Vec<GroupId>)> = plain.iter().map(|c| (*c, Vec::new())).collect();
            for (g, nodes) in groups.iter().filter(|(g, _)| !served.contains(g)) {
                let Some(c) = pick_weighted(nodes, 0, &mut self.rng) else { continue };
                match sends.iter_mut().find(|(n, _)| n.id == c.id) {
                    Some((_, gs)) => gs.push(g.clone()),
                    None => sends.push((c, vec![g.clone()])),
                }
            }
            for (to, groups) in sends {
                self.actions.push_back(Action::Forward { to, message: Forward { groups, ..message.clone() } });
            }
        }
    }

    /// The providers of `procedure` in `realm` on other nodes: cached, or a lookup to make
    /// (at most one per [`Config::providers_retry`] while none is found); kept current by
    /// the DHT's pushes.
    pub fn providers(&mut self, now: Instant, realm: &str, procedure: &str) -> Providers {
        if let Some(p) = self.remote_providers.get(&(realm.to_owned(), procedure.to_owned())) {
            let age = now.saturating_duration_since(p.fetched);
            if age < self.config.providers_fresh && (!p.nodes.is_empty() || age < self.config.providers_retry) {
                return Providers::Known(p.nodes.clone());
            }
        }
        let key = provider_key(realm, procedure);
        self.keys.insert(key, KeyOf::Provider { realm: realm.to_owned(), procedure: procedure.to_owned() });
        self.stats.lookups += 1;
        Providers::LookUp(key)
    }

    /// The providers of `procedure` in `realm` on other nodes, as last found.
    pub fn provider_nodes(&self, realm: &str, procedure: &str) -> Vec<Contact> {
        self.remote_providers
            .get(&(realm.to_owned(), procedure.to_owned()))
            .map(|p| p.nodes.clone())
            .unwrap_or_default()
    }

    /// A record a storer pushed: a node's interest or providing changed under a key this
    /// node looked up. Others' keys, and this node's own records, are ignored.
    pub fn pushed(&mut self, now: Instant, record: &Record) {
        let Some(of) = self.keys.get(&record.key) else { return };
        if record.publisher == self.me.id {
            return;
        }
        match of.clone() {
            KeyOf::Provider { realm, procedure } => {
                let Some(p) = self.remote_providers.get_mut(&(realm, procedure)) else { return };
                p.nodes.retain(|c| c.id != record.publisher);
                p.nodes.extend(record::decode_provider(record));
            }
            KeyOf::Interest { realm, prefix } => {
                let Some(r) = self.remote.get_mut(&realm) else { return };
                match record::decode_interest(record) {
                    Some((contact, subs)) => {
                        r.nodes.insert((prefix, record.publisher), RemoteNode { contact, subs, learned: now });
                    }
                    None => {
                        r.nodes.remove(&(prefix, record.publisher));
                    }
                }
                r.rebuild();
                self.actions.push_back(Action::Changed(realm));
            }
        }
    }

    /// Node `id` answered a call of `procedure` with "no provider here" (it restarted, or
    /// its provider left before its record said so): it is not taken for a provider of it
    /// until a lookup or a push says otherwise.
    pub fn provider_gone(&mut self, realm: &str, procedure: &str, id: &NodeId) {
        if let Some(p) = self.remote_providers.get_mut(&(realm.to_owned(), procedure.to_owned())) {
            p.nodes.retain(|c| c.id != *id);
        }
    }

    /// The other nodes this one currently routes to: those with subscriptions it knows of
    /// and the providers it has cached (what a failure detector watches). A node may
    /// appear more than once.
    pub fn peers(&self) -> impl Iterator<Item = Contact> + '_ {
        let interest = self.remote.values().flat_map(|r| r.nodes.values().map(|n| n.contact));
        interest.chain(self.remote_providers.values().flat_map(|p| p.nodes.iter().copied()))
    }

    /// A node left the mesh (or was found dead): it is no longer a target.
    pub fn node_gone(&mut self, id: &NodeId) {
        for p in self.remote_providers.values_mut() {
            p.nodes.retain(|c| c.id != *id);
        }
        for (realm, r) in self.remote.iter_mut() {
            let before = r.nodes.len();
            r.nodes.retain(|(_, n), _| n != id);
            if r.nodes.len() != before {
                r.rebuild();
                self.actions.push_back(Action::Changed(realm.clone()));
            }
        }
    }

    /// Pushes were missed: everything known of other nodes is forgotten and looked up
    /// again when next needed. Held messages keep waiting for their lookups.
    pub fn forget_all(&mut self) {
        for (realm, r) in self.remote.iter_mut() {
            let before = r.prefixes.len();
            r.prefixes.retain(|_, s| matches!(s, PrefixState::Pending { .. }));
            self.prefixes -= before - r.prefixes.len();
            r.nodes.clear();
            r.rebuild();
            self.actions.push_back(Action::Changed(realm.clone()));
        }
        self.remote_providers.clear();
    }

    /// When [`Discovery::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Instant {
        self.flush_at.map_or(self.renew_at, |t| t.min(self.renew_at))
    }

    /// Publishes local changes and renews segments in use, when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.flush_at.is_some_and(|t| t <= now) {
            self.flush_at = None;
            self.flush();
        }
        if self.renew_at <= now {
            self.renew_at = now + self.config.renew_after / 3;
            self.renew(now);
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next record to store or retract, if any.
    pub fn poll_publication(&mut self) -> Option<Publication> {
        self.publications.pop_front()
    }

    fn flush(&mut self) {
        let ttl = self.config.record_ttl;
        let mut dirty: Vec<_> = self.dirty_providers.drain().collect();
        dirty.sort();
        for id in dirty {
            let key = provider_key(&id.0, &id.1);
            self.publications.push_back(if self.local_providers.contains_key(&id) {
                Publication::Publish { key, value: record::encode_provider(self.me), ttl }
            } else {
                Publication::Retract { key, ttl }
            });
        }
        let mut dirty: Vec<_> = self.dirty.drain().collect();
        dirty.sort();
        for id in dirty {
            let key = interest_key(&id.0, &id.1);
            self.publications.push_back(match self.local.get(&id) {
                Some(entries) if !entries.is_empty() => {
                    let entries: Vec<_> = entries.iter().map(|(k, n)| (k.clone(), *n)).collect();
                    Publication::Publish { key, value: record::encode_interest(self.me, &id.1, &entries), ttl }
                }
                _ => Publication::Retract { key, ttl },
            });
        }
    }

    /// Segments used since their last lookup are looked up again (renewing the watch);
    /// unused ones are forgotten, as are provider lists no call asked for meanwhile.
    fn renew(&mut self, now: Instant) {
        let mut again = Vec::new();
        let mut forget = Vec::new();
        for (realm, r) in self.remote.iter_mut() {
            for (segment, state) in r.prefixes.iter_mut() {
                let PrefixState::Ready { renewed, used } = state else { continue };
                if now.saturating_duration_since(*renewed) < self.config.renew_after {
                    continue;
                }
                if *used {
                    (*renewed, *used) = (now, false);
                    again.push((realm.clone(), segment.clone()));
                } else {
                    forget.push((realm.clone(), segment.clone()));
                }
            }
        }
        for (realm, segment) in forget {
            self.forget_prefix(&realm, &segment);
        }
        for (realm, segment) in again {
            self.look_up(
                now,
                interest_key(&realm, &segment),
                KeyOf::Interest { realm: realm.clone(), prefix: segment },
            );
            self.look_up(now, interest_key(&realm, ""), KeyOf::Interest { realm, prefix: String::new() });
        }
        let stale = self.config.renew_after;
        let keys = &mut self.keys;
        self.remote_providers.retain(|(realm, procedure), p| {
            let keep = now.saturating_duration_since(p.fetched) < stale;
            if !keep {
                keys.remove(&provider_key(realm, procedure));
            }
            keep
        });
    }

    /// Stops tracking `segment` of `realm` (not pending), and the realm when it was its last.
    fn forget_prefix(&mut self, realm: &str, segment: &str) {
        let Some(r) = self.remote.get_mut(realm) else { return };
        if r.prefixes.remove(segment).is_none() {
            return;
        }
        self.prefixes -= 1;
        r.nodes.retain(|(p, _), _| p != segment);
        r.rebuild();
        if !segment.is_empty() {
            self.keys.remove(&interest_key(realm, segment));
        }
        if r.prefixes.is_empty() {
            self.remote.remove(realm);
            self.keys.remove(&interest_key(realm, ""));
        }
    }

    /// Makes room for a segment: forgets the least recently renewed one not in use, or
    /// else not pending.
    fn evict_prefix(&mut self) {
        let victim = self
            .remote
            .iter()
            .flat_map(|(realm, r)| {
                r.prefixes.iter().filter_map(move |(segment, s)| match s {
                    PrefixState::Ready { renewed, used } => Some(((*used, *renewed), realm, segment)),
                    PrefixState::Pending { .. } => None,
                })
            })
            .min_by_key(|(rank, _, _)| *rank)
            .map(|(_, realm, segment)| (realm.clone(), segment.clone()));
        if let Some((realm, segment)) = victim {
            self.forget_prefix(&realm, &segment);
            self.stats.evicted += 1;
            self.actions.push_back(Action::Changed(realm));
        }
    }

    /// Makes room for a procedure: forgets the provider list fetched longest ago.
    fn evict_procedure(&mut self) {
        let oldest = self.remote_providers.iter().min_by_key(|(_, p)| p.fetched).map(|(id, _)| id.clone());
        if let Some(id) = oldest {
            self.remote_providers.remove(&id);
            self.keys.remove(&provider_key(&id.0, &id.1));
            self.stats.evicted += 1;
        }
    }
}

/// The prefix a pattern's interest record is filed under.
fn pattern_prefix(p: &Pattern) -> String {
    match p.as_str().split('.').next() {
        Some(first) if first != "*" && first != ">" => first.to_owned(),
        _ => String::new(),
    }
}

/// A topic's first segment: what a publisher's node tracks discovery by.
fn topic_segment(t: &Topic) -> &str {
    t.as_str().split('.').next().unwrap_or_default()
}

/// What a held message counts against [`Config::max_held_bytes`].
fn held_size(f: &Forward) -> usize {
    f.payload.len() + f.topic.len() + f.headers.encoded_len() + 64
}
