//! Kademlia, sans-IO: the routing table, iterative lookups and the record store of the
//! mesh, with no sockets, timers or tasks of its own.
//!
//! The node crate owns the transport (pooled QUIC links between nodes) and the clock. It
//! feeds this engine what arrives ([`Dht::handle`]), the time ([`Dht::handle_timeout`]
//! when [`Dht::poll_timeout`] says), and sends what [`Dht::poll_transmit`] yields; it reads
//! results from [`Dht::poll_event`]. That is quinn-proto's split, and it is what lets a
//! test run hundreds of nodes in one process with a simulated network
//! (`tests/dht_sim.rs`).
//!
//! Parameters follow the paper (Maymounkov & Mazières): 256-bit ids, k = 20, α = 3.
//! Records carry a TTL and are republished by their owner; a node stores records only for
//! their publisher (a `STORE` must come from the node it names), and its store is bounded.
//!
//! ```text
//!  node crate                       Dht (this module)
//!  ─────────                        ─────────────────
//!  datagram/frame in ── handle() ──▶ table.seen, answer requests, advance lookups
//!  timer fired ──── handle_timeout()▶ fail late requests, expire, refresh, republish
//!  send  ◀────────── poll_transmit() (to, rpc id, message)
//!  act   ◀────────── poll_event()    nodes found, records found, published
//! ```

mod id;
mod lookup;
mod store;
mod table;
pub mod wire;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use id::{Distance, Key, NodeId};
pub use lookup::Lookup;
pub use store::{Record, RecordStore, StoreError};
pub use table::{Contact, Insert, RoutingTable};

use crate::balance::Rng;
use crate::hashing::State;

/// Tunables. Defaults: the paper's k and α, and timings for a LAN/datacenter mesh.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bucket size and replication factor.
    pub k: usize,
    /// Queries in flight per lookup.
    pub alpha: usize,
    /// A request unanswered for this long has failed: the longest wait, used until round
    /// trips have been measured. After that the wait is the measured round trip plus four
    /// deviations (RFC 6298's estimator over every answer), at least
    /// `min_request_timeout`: a lost message then costs a lookup a few round trips, not
    /// this.
    pub request_timeout: Duration,
    /// The shortest wait for an answer, however fast answers have come.
    pub min_request_timeout: Duration,
    /// A bucket no lookup went through for this long is refreshed.
    pub refresh_interval: Duration,
    /// Owned records are stored again this often (well under their TTL).
    pub republish_interval: Duration,
    /// Records held for others, in all.
    pub max_records: usize,
    /// Records held per key (one per publisher).
    pub max_per_key: usize,
    /// Unanswered requests in a row before a contact is dropped.
    pub max_failures: u8,
    /// Lookups running at once; more are refused (`None`) until one finishes.
    pub max_lookups: usize,
    /// Requests awaiting an answer; at the limit new queries wait.
    pub max_pending: usize,
    /// Longest TTL accepted for a record; longer ones are cut to this (a peer cannot pin
    /// a record, or overflow the clock, with a huge TTL).
    pub max_ttl: Duration,
    /// How long a `FIND_VALUE` makes its sender a watcher of the key at the node that
    /// answered: changes to the key's records are pushed to it (`NOTIFY`) for this long.
    pub watch_ttl: Duration,
    /// Watchers remembered per key; the oldest goes at the limit.
    pub max_watchers_per_key: usize,
    /// Keys with watchers; a new key past the limit is not watched (its lookers learn of
    /// changes at their next lookup).
    pub max_watched_keys: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            k: 20,
            alpha: 3,
            request_timeout: Duration::from_secs(2),
            min_request_timeout: Duration::from_millis(100),
            refresh_interval: Duration::from_secs(600),
            republish_interval: Duration::from_secs(60),
            max_records: 100_000,
            max_per_key: 64,
            max_failures: 2,
            max_lookups: 256,
            max_pending: 4096,
            max_ttl: Duration::from_secs(3600),
            watch_ttl: Duration::from_secs(60),
            max_watchers_per_key: 64,
            max_watched_keys: 10_000,
        }
    }
}

/// A record as it travels: the TTL is relative, so clocks need not agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRecord {
    pub key: Key,
    pub publisher: NodeId,
    pub value: Bytes,
    pub ttl: Duration,
}

/// DHT messages. Requests: `Ping`, `FindNode`, `FindValue`, `Store`; each is answered by
/// the response on its line, carrying the request's rpc id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Ping,
    Pong,
    FindNode {
        target: NodeId,
    },
    Nodes {
        contacts: Vec<Contact>,
    },
    FindValue {
        key: Key,
    },
    Value {
        records: Vec<WireRecord>,
        contacts: Vec<Contact>,
    },
    Store {
        record: WireRecord,
    },
    Stored {
        ok: bool,
    },
    /// One-way, storer → watcher: a record under a key the watcher looked up recently was
    /// stored or replaced. How a new subscriber's interest reaches publishers in one hop
    /// instead of at their next cache refresh.
    Notify {
        record: WireRecord,
    },
}

impl Message {
    fn is_request(&self) -> bool {
        matches!(self, Message::Ping | Message::FindNode { .. } | Message::FindValue { .. } | Message::Store { .. })
    }
}

/// Something to send: `msg` to `to`, under `rpc` (echoed by the answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: Contact,
    pub rpc: u64,
    pub msg: Message,
}

/// Identifies a lookup started by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LookupId(pub u64);

/// Results for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A [`Dht::find_node`] (or the bootstrap) finished: the closest nodes that answered.
    NodesFound { id: LookupId, target: NodeId, closest: Vec<Contact>, cost: LookupCost },
    /// A [`Dht::find_records`] finished: every live record found under `key`, one per
    /// publisher (the freshest seen).
    RecordsFound { id: LookupId, key: Key, records: Vec<Record>, cost: LookupCost },
    /// A [`Dht::publish`] (or a republish) reached the closest nodes: `stored_at` of them
    /// were sent the record.
    Published { id: LookupId, key: Key, stored_at: usize },
    /// A node storing `record.key` pushed a new or changed record (this node looked the
    /// key up within `watch_ttl`). An empty value is a retraction ([`Dht::retract`]).
    Notified { record: Record },
}

/// What a finished lookup took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookupCost {
    /// Hops to the closest node that answered ([`Lookup::hops`]); `None` if none did.
    pub hops: Option<u8>,
    /// Queries sent ([`Lookup::asked`]).
    pub queries: usize,
}

/// Counters for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub lookups_started: u64,
    pub lookups_refused: u64,
    pub requests_sent: u64,
    pub requests_timed_out: u64,
    pub requests_answered: u64,
    /// Answers that matched no request (late, or from a node not asked).
    pub answers_unexpected: u64,
    pub stores_accepted: u64,
    /// `STORE`s refused: full store, or a record naming another publisher.
    pub stores_refused: u64,
    pub records_expired: u64,
    /// `NOTIFY`s sent to watchers.
    pub notifies_sent: u64,
    /// `NOTIFY`s received for keys this node was not watching (ignored).
    pub notifies_unwanted: u64,
    /// Finished lookups by hops to their closest answering node ([`Lookup::hops`]); the
    /// last slot counts 15 and more. Lookups nobody answered are not counted.
    pub hops: [u64; 16],
}

#[derive(Debug)]
enum Purpose {
    FindNode,
    FindValue,
    /// Store `record` at the closest nodes found. `urgent` for a new or changed record
    /// (not a republish): see [`Running::stored`].
    Publish(WireRecord, bool),
    /// Keep a bucket fresh; no event.
    Refresh,
}

#[derive(Debug)]
struct Running {
    lookup: Lookup,
    purpose: Purpose,
    /// Records found so far (FindValue), one per publisher.
    records: HashMap<NodeId, Record, State>,
    /// Nodes sent the record already (an urgent Publish): each node queried gets the
    /// record with the query (every node queried is among the k closest known then), so a
    /// change reaches the watchers at the storers as soon as the lookup reaches them, not
    /// after it ends (with α = 3 and k = 20, the last answers come ~7 round trips in); the
    /// end of the lookup sends it to the final k closest not sent yet. That is one `STORE`
    /// per query, ~2k per lookup instead of k: only for new or changed records, not for
    /// the minute's republishes, which store at the end.
    stored: Vec<NodeId>,
}

#[derive(Debug, Clone, Copy)]
enum Waiting {
    Lookup(LookupId),
    /// Liveness check of a bucket's least recently seen contact.
    Check,
    Store,
}

#[derive(Debug)]
struct Pending {
    to: NodeId,
    sent: Instant,
    deadline: Instant,
    why: Waiting,
}

/// Smoothed round trip and its deviation (RFC 6298), over every answered request.
#[derive(Debug, Clone, Copy)]
struct RttEstimate {
    srtt: Duration,
    rttvar: Duration,
}

impl RttEstimate {
    fn update(estimate: Option<RttEstimate>, sample: Duration) -> RttEstimate {
        match estimate {
            None => RttEstimate { srtt: sample, rttvar: sample / 2 },
            Some(e) => {
                let dev = e.srtt.abs_diff(sample);
                RttEstimate { rttvar: (e.rttvar * 3 + dev) / 4, srtt: (e.srtt * 7 + sample) / 8 }
            }
        }
    }
}

#[derive(Debug)]
struct Owned {
    value: Bytes,
    ttl: Duration,
    next: Instant,
}

/// The DHT engine of one node. See the module docs for how it is driven.
///
/// Bounded: the table (256 × k contacts), the store (`max_records`), lookups
/// (`max_lookups`), requests awaiting answers (`max_pending`), and the outgoing queue
/// (requests are bounded by the above; answers by the requests received, which the
/// node layer rate-limits per link).
#[derive(Debug)]
pub struct Dht {
    local: Contact,
    config: Config,
    table: RoutingTable,
    store: RecordStore,
    lookups: HashMap<LookupId, Running, State>,
    pending: HashMap<u64, Pending, State>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Round trips measured so far; `None` until the first answer.
    rtt: Option<RttEstimate>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    owned: HashMap<Key, Owned, State>,
    /// Storer side: who looked each key up recently, and until when they watch it.
    watchers: HashMap<Key, Vec<(Contact, Instant)>, State>,
    /// Watcher side: keys this node looked up, and until when it accepts `NOTIFY`s.
    watching: HashMap<Key, Instant, State>,
    next_rpc: u64,
    next_lookup: u64,
    next_refresh: Instant,
    rng: Rng,
    stats: Stats,
}

impl Dht {
    /// An engine for the node `local`, knowing no one yet. `seed` drives refresh targets.
    pub fn new(local: Contact, config: Config, now: Instant, seed: u64) -> Self {
        let table = RoutingTable::new(local.id, config.k, config.max_failures, now);
        let store = RecordStore::new(config.max_records, config.max_per_key);
        let next_refresh = now + config.refresh_interval / 8;
        Dht {
            local,
            config,
            table,
            store,
            lookups: HashMap::default(),
            pending: HashMap::default(),
            deadlines: BinaryHeap::new(),
            rtt: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            owned: HashMap::default(),
            watchers: HashMap::default(),
            watching: HashMap::default(),
            next_rpc: 1,
            next_lookup: 1,
            next_refresh,
            rng: Rng::new(seed),
            stats: Stats::default(),
        }
    }

    /// This node.
    pub fn local(&self) -> Contact {
        self.local
    }

    /// The routing table.
    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// Records held for others.
    pub fn store(&self) -> &RecordStore {
        &self.store
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Lookups running.
    pub fn lookups(&self) -> usize {
        self.lookups.len()
    }

    /// A node learned out of band (a `--join` address after its handshake, a link that
    /// opened). Returns what the table did.
    pub fn add_contact(&mut self, contact: Contact, now: Instant) -> Insert {
        self.seen(contact, now)
    }

    /// The node layer knows `id` is gone (its link failed): drop it, and fail at once the
    /// requests waiting on it so lookups move on.
    pub fn remove_contact(&mut self, id: &NodeId, now: Instant) {
        self.table.remove(id);
        let waiting: Vec<u64> = self.pending.iter().filter(|(_, p)| p.to == *id).map(|(rpc, _)| *rpc).collect();
        for rpc in waiting {
            if let Some(p) = self.pending.remove(&rpc) {
                self.request_failed(p, now, false);
            }
        }
    }

    /// Looks up this node's own id: fills the table with its neighbourhood. Run after the
    /// first contact was added.
    pub fn bootstrap(&mut self, now: Instant) -> Option<LookupId> {
        self.start(now, self.local.id, Purpose::FindNode)
    }

    /// Finds the k nodes closest to `target`. Answered by [`Event::NodesFound`].
    pub fn find_node(&mut self, now: Instant, target: NodeId) -> Option<LookupId> {
        self.start(now, target, Purpose::FindNode)
    }

    /// Finds the records stored under `key`. Answered by [`Event::RecordsFound`].
    ///
    /// For `watch_ttl` after, the nodes that answered push changes under `key` to this
    /// node ([`Event::Notified`]).
    pub fn find_records(&mut self, now: Instant, key: Key) -> Option<LookupId> {
        if self.watching.len() < self.config.max_watched_keys || self.watching.contains_key(&key) {
            self.watching.insert(key, now + self.config.watch_ttl);
        }
        self.start(now, key, Purpose::FindValue)
    }

    /// Publishes `value` under `key` as this node's record, and keeps republishing it every
    /// `republish_interval` until [`Dht::withdraw`]. Answered by [`Event::Published`].
    pub fn publish(&mut self, now: Instant, key: Key, value: Bytes, ttl: Duration) -> Option<LookupId> {
        let next = now + self.config.republish_interval;
        self.owned.insert(key, Owned { value: value.clone(), ttl, next });
        let record = WireRecord { key, publisher: self.local.id, value, ttl };
        self.start(now, key, Purpose::Publish(record, true))
    }

    /// Replaces this node's record under `key` with an empty one (a retraction) that lives
    /// `ttl`, so watchers learn at once, and stops republishing it.
    pub fn retract(&mut self, now: Instant, key: Key, ttl: Duration) -> Option<LookupId> {
        self.owned.remove(&key);
        self.store.remove(&key, &self.local.id);
        let record = WireRecord { key, publisher: self.local.id, value: Bytes::new(), ttl };
        self.start(now, key, Purpose::Publish(record, true))
    }

    /// Stops republishing the record under `key` (others drop it when its TTL runs out).
    pub fn withdraw(&mut self, key: &Key) -> bool {
        self.store.remove(key, &self.local.id);
        self.owned.remove(key).is_some()
    }

    fn start(&mut self, now: Instant, target: NodeId, purpose: Purpose) -> Option<LookupId> {
        if self.lookups.len() >= self.config.max_lookups {
            self.stats.lookups_refused += 1;
            return None;
        }
        let id = LookupId(self.next_lookup);
        self.next_lookup += 1;
        self.stats.lookups_started += 1;
        self.table.touch(&target, now);
        let seeds = self.table.closest(&target, self.config.k);
        // A new or changed record is what a waiting subscriber or caller depends on: its
        // lookup asks twice as many nodes at once, so one slow or lost answer delays it
        // less (the tail of "reach" in fovea-sim). Republishes and reads keep `alpha`.
        let alpha = match &purpose {
            Purpose::Publish(_, true) => self.config.alpha * 2,
            _ => self.config.alpha,
        };
        let lookup = Lookup::new(target, self.config.k, alpha, seeds);
        let mut running = Running { lookup, purpose, records: HashMap::default(), stored: Vec::new() };
        if let Purpose::FindValue = running.purpose {
            // What this node holds itself counts.
            for r in self.store.get(&target, now) {
                running.records.insert(r.publisher, r);
            }
        }
        self.lookups.insert(id, running);
        self.advance(id, now);
        Some(id)
    }

    /// Sends the lookup's next queries, or finishes it.
    fn advance(&mut self, id: LookupId, now: Instant) {
        loop {
            if self.pending.len() >= self.config.max_pending {
                // Resumed when an answer or a timeout frees a slot.
                break;
            }
            let Some(running) = self.lookups.get_mut(&id) else { return };
            let Some(to) = running.lookup.next_query() else { break };
            let target = running.lookup.target();
            let msg = match running.purpose {
                Purpose::FindValue => Message::FindValue { key: target },
                _ => Message::FindNode { target },
            };
            let store = match &running.purpose {
                Purpose::Publish(record, true) if !running.stored.contains(&to.id) => {
                    running.stored.push(to.id);
                    Some(Message::Store { record: record.clone() })
                }
                _ => None,
            };
            self.request(now, to, msg, Waiting::Lookup(id));
            if let Some(store) = store {
                self.request(now, to, store, Waiting::Store);
            }
        }
        let finished = self.lookups.get(&id).is_some_and(|r| r.lookup.is_finished());
        if !finished {
            return;
        }
        let Some(running) = self.lookups.remove(&id) else { return };
        if let Some(h) = running.lookup.hops() {
            self.stats.hops[usize::from(h).min(15)] += 1;
        }
        let target = running.lookup.target();
        let closest = running.lookup.closest();
        let cost = LookupCost { hops: running.lookup.hops(), queries: running.lookup.asked() };
        match running.purpose {
            Purpose::FindNode => self.events.push_back(Event::NodesFound { id, target, closest, cost }),
            Purpose::Refresh => {}
            Purpose::FindValue => {
                let mut records: Vec<Record> = running.records.into_values().filter(|r| r.expires > now).collect();
                records.sort_by_key(|r| r.publisher);
                self.events.push_back(Event::RecordsFound { id, key: target, records, cost });
            }
            Purpose::Publish(record, _) => {
                // This node keeps a copy when it is among the closest (small meshes).
                let me = self.local.id.distance(&target);
                let among =
                    closest.len() < self.config.k || closest.last().is_some_and(|c| me < c.id.distance(&target));
                // Those who looked the key up here hear of a change as from any storer.
                if among && self.store.put(to_record(&record, now, self.config.max_ttl), now) == Ok(true) {
                    self.notify_watchers(&record, now);
                }
                for c in closest.iter().filter(|c| !running.stored.contains(&c.id)) {
                    self.request(now, *c, Message::Store { record: record.clone() }, Waiting::Store);
                }
                self.events.push_back(Event::Published { id, key: target, stored_at: closest.len() });
            }
        }
    }

    fn request(&mut self, now: Instant, to: Contact, msg: Message, why: Waiting) {
        let rpc = self.next_rpc;
        self.next_rpc += 1;
        let deadline = now + self.request_timeout();
        self.pending.insert(rpc, Pending { to: to.id, sent: now, deadline, why });
        self.deadlines.push(Reverse((deadline, rpc)));
        self.stats.requests_sent += 1;
        self.transmits.push_back(Transmit { to, rpc, msg });
    }

    fn seen(&mut self, contact: Contact, now: Instant) -> Insert {
        let r = self.table.seen(contact);
        if let Insert::Full { check } = r {
            let checking = self.pending.values().any(|p| p.to == check.id && matches!(p.why, Waiting::Check));
            if !checking && self.pending.len() < self.config.max_pending {
                self.request(now, check, Message::Ping, Waiting::Check);
            }
        }
        r
    }

    /// A message from `from` (whose id the transport authenticated), under `rpc`.
    pub fn handle(&mut self, now: Instant, from: Contact, rpc: u64, msg: Message) {
        if from.id == self.local.id {
            return;
        }
        if let Message::Notify { record } = msg {
            self.seen(from, now);
            let wanted = self.watching.get(&record.key).is_some_and(|until| *until > now);
            if wanted {
                let record = to_record(&record, now, self.config.max_ttl);
                self.events.push_back(Event::Notified { record });
            } else {
                self.stats.notifies_unwanted += 1;
            }
            return;
        }
        if msg.is_request() {
            self.seen(from, now);
            let answer = self.answer(now, &from, msg);
            self.transmits.push_back(Transmit { to: from, rpc, msg: answer });
            return;
        }
        // An answer counts only from the node asked, under the id it was asked with.
        match self.pending.get(&rpc) {
            Some(p) if p.to == from.id => {}
            _ => {
                self.stats.answers_unexpected += 1;
                return;
            }
        }
        let Some(p) = self.pending.remove(&rpc) else { return };
        self.stats.requests_answered += 1;
        self.rtt = Some(RttEstimate::update(self.rtt, now.saturating_duration_since(p.sent)));
        self.seen(from, now);
        let Waiting::Lookup(id) = p.why else { return };
        let k = self.config.k;
        let max_per_key = self.config.max_per_key;
        let max_ttl = self.config.max_ttl;
        let Some(running) = self.lookups.get_mut(&id) else { return };
        let target = running.lookup.target();
        match msg {
            Message::Nodes { contacts } => {
                running.lookup.on_answer(&from.id, contacts.into_iter().take(k).filter(|c| c.id != self.local.id))
            }
            Message::Value { records, contacts } => {
                for w in records.into_iter().take(max_per_key).filter(|w| w.key == target) {
                    let r = to_record(&w, now, max_ttl);
                    match running.records.get(&r.publisher) {
                        Some(old) if old.expires >= r.expires => {}
                        _ if running.records.len() >= max_per_key && !running.records.contains_key(&r.publisher) => {}
                        _ => {
                            running.records.insert(r.publisher, r);
                        }
                    }
                }
                running.lookup.on_answer(&from.id, contacts.into_iter().take(k).filter(|c| c.id != self.local.id));
            }
            // A wrong kind of answer is a failed query.
            _ => running.lookup.on_failure(&from.id),
        }
        self.advance(id, now);
        self.resume_stalled(now);
    }

    fn answer(&mut self, now: Instant, from: &Contact, msg: Message) -> Message {
        let k = self.config.k;
        let others = |table: &RoutingTable, target: &NodeId| {
            let mut c = table.closest(target, k + 1);
            c.retain(|c| c.id != from.id);
            c.truncate(k);
            c
        };
        match msg {
            Message::Ping => Message::Pong,
            Message::FindNode { target } => Message::Nodes { contacts: others(&self.table, &target) },
            Message::FindValue { key } => {
                self.add_watcher(key, *from, now);
                let records = self
                    .store
                    .get(&key, now)
                    .into_iter()
                    .map(|r| WireRecord {
                        key: r.key,
                        publisher: r.publisher,
                        ttl: r.expires.saturating_duration_since(now),
                        value: r.value,
                    })
                    .collect();
                Message::Value { records, contacts: others(&self.table, &key) }
            }
            Message::Store { record } => {
                // Bound to its publisher: a node stores only its own records elsewhere.
                let stored = (record.publisher == from.id)
                    .then(|| self.store.put(to_record(&record, now, self.config.max_ttl), now));
                let ok = matches!(stored, Some(Ok(_)));
                if stored == Some(Ok(true)) {
                    self.notify_watchers(&record, now);
                    // This node may watch the key itself (a small mesh stores everything
                    // everywhere).
                    if self.watching.get(&record.key).is_some_and(|until| *until > now) {
                        let record = to_record(&record, now, self.config.max_ttl);
                        self.events.push_back(Event::Notified { record });
                    }
                }
                if ok {
                    self.stats.stores_accepted += 1;
                } else {
                    self.stats.stores_refused += 1;
                }
                Message::Stored { ok }
            }
            // Not a request (callers check); answer with nothing useful.
            other => other,
        }
    }

    /// `timed_out`: no answer in time (worth one retry in a lookup); otherwise the node
    /// is known gone.
    fn add_watcher(&mut self, key: Key, who: Contact, now: Instant) {
        if !self.watchers.contains_key(&key) && self.watchers.len() >= self.config.max_watched_keys {
            // Make room from expired watches before refusing.
            self.watchers.retain(|_, v| {
                v.retain(|(_, until)| *until > now);
                !v.is_empty()
            });
            if self.watchers.len() >= self.config.max_watched_keys {
                return;
            }
        }
        let until = now + self.config.watch_ttl;
        let list = self.watchers.entry(key).or_default();
        list.retain(|(c, until)| c.id != who.id && *until > now);
        if list.len() >= self.config.max_watchers_per_key {
            list.remove(0);
        }
        list.push((who, until));
    }

    /// Pushes a new or changed record to the key's live watchers (not to its publisher).
    fn notify_watchers(&mut self, record: &WireRecord, now: Instant) {
        let Some(list) = self.watchers.get_mut(&record.key) else { return };
        list.retain(|(_, until)| *until > now);
        let targets: Vec<Contact> = list.iter().map(|(c, _)| *c).filter(|c| c.id != record.publisher).collect();
        if list.is_empty() {
            self.watchers.remove(&record.key);
        }
        for to in targets {
            self.stats.notifies_sent += 1;
            self.transmits.push_back(Transmit { to, rpc: 0, msg: Message::Notify { record: record.clone() } });
        }
    }

    fn request_failed(&mut self, p: Pending, now: Instant, timed_out: bool) {
        self.stats.requests_timed_out += 1;
        match p.why {
            Waiting::Check => {
                // The least recently seen contact is gone: its bucket's newcomer moves in.
                self.table.remove(&p.to);
            }
            Waiting::Store => {
                self.table.failed(&p.to);
            }
            Waiting::Lookup(id) => {
                self.table.failed(&p.to);
                if let Some(running) = self.lookups.get_mut(&id) {
                    if timed_out && self.table.contains(&p.to) {
                        running.lookup.on_timeout(&p.to);
                    } else {
                        running.lookup.on_failure(&p.to);
                    }
                    self.advance(id, now);
                }
            }
        }
    }

    /// Lookups that could not send for lack of pending slots get another go.
    fn resume_stalled(&mut self, now: Instant) {
        if self.pending.len() >= self.config.max_pending {
            return;
        }
        let stalled: Vec<LookupId> =
            self.lookups.iter().filter(|(_, r)| r.lookup.in_flight() == 0).map(|(id, _)| *id).collect();
        for id in stalled {
            self.advance(id, now);
        }
    }

    /// Runs what is due at `now`: late requests fail, records expire, buckets refresh,
    /// owned records are republished.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, rpc))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            // Answered requests left their heap entry behind; skip those.
            if self.pending.get(&rpc).is_some_and(|p| p.deadline == at) {
                if let Some(p) = self.pending.remove(&rpc) {
                    self.request_failed(p, now, true);
                }
            }
        }
        self.resume_stalled(now);
        self.stats.records_expired += self.store.expire(now) as u64;
        self.watching.retain(|_, until| *until > now);
        let due: Vec<Key> = self.owned.iter().filter(|(_, o)| o.next <= now).map(|(k, _)| *k).collect();
        for key in due {
            let Some(o) = self.owned.get_mut(&key) else { continue };
            o.next = now + self.config.republish_interval;
            let record = WireRecord { key, publisher: self.local.id, value: o.value.clone(), ttl: o.ttl };
            self.start(now, key, Purpose::Publish(record, false));
        }
        if now >= self.next_refresh {
            self.next_refresh = now + self.config.refresh_interval / 8;
            if !self.table.is_empty() {
                for bucket in self.table.stale_buckets(now, self.config.refresh_interval) {
                    let target = self.local.id.random_in_bucket(bucket, &mut self.rng);
                    self.start(now, target, Purpose::Refresh);
                }
            }
        }
    }

    /// How long a request sent now may wait for its answer (see [`Config::request_timeout`]).
    pub fn request_timeout(&self) -> Duration {
        match self.rtt {
            None => self.config.request_timeout,
            Some(e) => (e.srtt + e.rttvar * 4).clamp(self.config.min_request_timeout, self.config.request_timeout),
        }
    }

    /// When [`Dht::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadlines = self.deadlines.peek().map(|Reverse((at, _))| *at);
        let owned = self.owned.values().map(|o| o.next).min();
        [deadlines, owned, self.store.next_expiry(), Some(self.next_refresh)].into_iter().flatten().min()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next result.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

fn to_record(w: &WireRecord, now: Instant, max_ttl: Duration) -> Record {
    let expires = now.checked_add(w.ttl.min(max_ttl)).unwrap_or(now);
    Record { key: w.key, publisher: w.publisher, value: w.value.clone(), expires }
}
