//! Hundreds of DHT engines in one process, over a simulated network with latency, loss and
//! dead nodes: what the sans-IO split is for. Time is simulated, so the test runs in
//! well under a second per scenario and is deterministic for a seed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fovea_core::balance::Rng;
use fovea_core::dht::{Config, Contact, Dht, Event, Key, Message, NodeId};

struct Sim {
    nodes: Vec<Dht>,
    index: HashMap<NodeId, usize>,
    dead: HashSet<usize>,
    /// (delivery time, sequence) → message in flight.
    wire: BinaryHeap<Reverse<(Instant, u64)>>,
    in_flight: HashMap<u64, (Contact, usize, u64, Message)>,
    seq: u64,
    now: Instant,
    rng: Rng,
    /// Per mille of messages lost.
    loss: u64,
    /// While set, messages between this group and the rest are lost (a partition).
    partition: Option<HashSet<usize>>,
    events: Vec<(usize, Event)>,
    delivered: u64,
    /// (when, node) for every node's next timeout; stale entries are skipped.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Sim {
    fn new(n: usize, seed: u64, loss: u64) -> Sim {
        let now = Instant::now();
        let mut rng = Rng::new(seed);
        let config = Config { k: 20, alpha: 3, ..Config::default() };
        let mut nodes = Vec::with_capacity(n);
        let mut index = HashMap::new();
        for i in 0..n {
            let id = NodeId::from_rng(&mut rng);
            let addr = SocketAddr::from((Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8), 4500));
            index.insert(id, i);
            nodes.push(Dht::new(Contact { id, addr }, config.clone(), now, rng.next_u64()));
        }
        Sim {
            nodes,
            index,
            dead: HashSet::new(),
            wire: BinaryHeap::new(),
            in_flight: HashMap::new(),
            seq: 0,
            now,
            rng,
            loss,
            partition: None,
            events: Vec::new(),
            delivered: 0,
            timers: BinaryHeap::new(),
        }
    }

    fn contact(&self, i: usize) -> Contact {
        self.nodes[i].local()
    }

    /// Moves every queued transmit onto the wire (1–20 ms latency), losing some.
    fn collect(&mut self) {
        for i in 0..self.nodes.len() {
            self.collect_one(i);
        }
    }

    fn collect_one(&mut self, i: usize) {
        {
            while let Some(t) = self.nodes[i].poll_transmit() {
                if self.dead.contains(&i) || self.rng.below(1000) < self.loss as usize {
                    continue;
                }
                let Some(&to) = self.index.get(&t.to.id) else { continue };
                if self.partition.as_ref().is_some_and(|side| side.contains(&i) != side.contains(&to)) {
                    continue;
                }
                let at = self.now + Duration::from_millis(1 + self.rng.below(20) as u64);
                self.seq += 1;
                self.wire.push(Reverse((at, self.seq)));
                self.in_flight.insert(self.seq, (self.contact(i), to, t.rpc, t.msg));
            }
            while let Some(e) = self.nodes[i].poll_event() {
                self.events.push((i, e));
            }
            if let Some(t) = self.nodes[i].poll_timeout() {
                self.timers.push(Reverse((t, i)));
            }
        }
    }

    /// Runs simulated time forward by `span`, jumping from one delivery or timeout to the
    /// next.
    fn run(&mut self, span: Duration) {
        let end = self.now + span;
        self.run_until(end, |_| false);
    }

    /// Runs until `done` holds (checked after each step) or `end`.
    fn run_until(&mut self, end: Instant, done: impl Fn(&Sim) -> bool) {
        loop {
            let wire = self.wire.peek().map(|Reverse((at, _))| *at);
            let timer = self.timers.peek().map(|Reverse((at, _))| *at);
            let Some(next) = [wire, timer].into_iter().flatten().min().filter(|t| *t <= end) else {
                self.now = self.now.max(end);
                return;
            };
            self.now = self.now.max(next);
            if wire == Some(next) {
                let Some(Reverse((_, seq))) = self.wire.pop() else { continue };
                let Some((from, to, rpc, msg)) = self.in_flight.remove(&seq) else { continue };
                if self.dead.contains(&to) {
                    continue;
                }
                self.delivered += 1;
                self.nodes[to].handle(self.now, from, rpc, msg);
                self.collect_one(to);
            } else {
                let Some(Reverse((at, i))) = self.timers.pop() else { continue };
                // Stale unless it is still the node's next timeout.
                if self.dead.contains(&i) || self.nodes[i].poll_timeout() != Some(at) {
                    continue;
                }
                self.nodes[i].handle_timeout(self.now);
                self.collect_one(i);
            }
            if done(self) {
                return;
            }
        }
    }

    /// Every node joins through node 0, a few milliseconds apart, and looks itself up.
    fn join_all(&mut self) {
        for i in 1..self.nodes.len() {
            let seed = self.contact(0);
            let now = self.now;
            self.nodes[i].add_contact(seed, now);
            self.nodes[i].bootstrap(now);
            self.collect_one(i);
            self.run(Duration::from_millis(5));
        }
        self.run(Duration::from_secs(5));
    }

    /// The true k closest live nodes to `target`.
    fn truth(&self, target: &NodeId, k: usize) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> =
            (0..self.nodes.len()).filter(|i| !self.dead.contains(i)).map(|i| self.contact(i).id).collect();
        ids.sort_by_key(|id| id.distance(target));
        ids.truncate(k);
        ids
    }

    fn take_event(&mut self, node: usize, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let pos = self.events.iter().position(|(i, e)| *i == node && pred(e))?;
        Some(self.events.remove(pos).1)
    }
}

/// Lookups from random nodes for random targets; returns the mean share of the true k
/// closest found, and how many lookups found the single closest node.
fn lookup_quality(sim: &mut Sim, lookups: usize) -> (f64, usize) {
    let (mut overlap, mut exact_first) = (0.0, 0);
    for _ in 0..lookups {
        let from = loop {
            let i = sim.rng.below(sim.nodes.len());
            if !sim.dead.contains(&i) {
                break i;
            }
        };
        let target = NodeId::from_rng(&mut sim.rng);
        let now = sim.now;
        let id = sim.nodes[from].find_node(now, target).expect("lookup starts");
        sim.collect_one(from);
        let end = sim.now + Duration::from_secs(120);
        sim.run_until(end, |s| {
            s.events.iter().any(|(i, e)| *i == from && matches!(e, Event::NodesFound { id: got, .. } if *got == id))
        });
        let Some(Event::NodesFound { closest, .. }) =
            sim.take_event(from, |e| matches!(e, Event::NodesFound { id: got, .. } if *got == id))
        else {
            panic!("lookup {id:?} did not finish");
        };
        let truth = sim.truth(&target, 20);
        // The node itself is not in its own answer; count it as found when it belongs.
        let me = sim.contact(from).id;
        let found: HashSet<NodeId> = closest.iter().map(|c| c.id).chain(std::iter::once(me)).collect();
        overlap += truth.iter().filter(|t| found.contains(t)).count() as f64 / truth.len() as f64;
        if found.contains(&truth[0]) {
            exact_first += 1;
        }
    }
    let delivered = sim.delivered;
    eprintln!(
        "{lookups} lookups: mean overlap {:.3}, closest found {exact_first}; {delivered} messages delivered so far",
        overlap / lookups as f64
    );
    (overlap / lookups as f64, exact_first)
}

#[test]
fn lookups_in_a_250_node_mesh_find_the_closest_nodes() {
    let mut sim = Sim::new(250, 42, 0);
    sim.join_all();
    // Every node learned a neighbourhood, far more than the seed alone.
    let sizes: Vec<usize> = sim.nodes.iter().map(|n| n.table().len()).collect();
    assert!(sizes.iter().all(|&s| s >= 20), "table sizes: {sizes:?}");
    let (overlap, exact) = lookup_quality(&mut sim, 40);
    assert!(overlap >= 0.95, "mean overlap with the true 20 closest: {overlap}");
    assert_eq!(exact, 40, "every lookup finds the closest node");
}

#[test]
fn lookups_survive_loss_and_dead_nodes() {
    let mut sim = Sim::new(220, 7, 20); // 2% of messages lost
    sim.join_all();
    // A tenth of the mesh dies without a word.
    for i in (1..220).step_by(10) {
        sim.dead.insert(i);
    }
    let (overlap, exact) = lookup_quality(&mut sim, 30);
    assert!(overlap >= 0.85, "mean overlap with the true 20 closest live nodes: {overlap}");
    assert!(exact >= 27, "lookups that found the closest live node: {exact} of 30");
    // Failed requests were counted and timed out, not left hanging.
    let timed_out: u64 = sim.nodes.iter().map(|n| n.stats().requests_timed_out).sum();
    assert!(timed_out > 0);
    let waiting: usize = sim.nodes.iter().map(|n| n.lookups()).sum();
    assert_eq!(waiting, 0, "every lookup ended");
}

#[test]
fn published_records_are_found_from_anywhere_and_expire_when_not_republished() {
    let mut sim = Sim::new(200, 99, 0);
    sim.join_all();
    let key: Key = NodeId::from_rng(&mut sim.rng);
    let providers = [3usize, 77, 150];
    for &p in &providers {
        let now = sim.now;
        sim.nodes[p].publish(now, key, Bytes::from(format!("provider {p}")), Duration::from_secs(120));
    }
    sim.collect();
    sim.run(Duration::from_secs(5));
    for &p in &providers {
        assert!(sim.take_event(p, |e| matches!(e, Event::Published { stored_at, .. } if *stored_at >= 20)).is_some());
    }
    // Found from several nodes, each record once.
    for from in [0usize, 42, 199] {
        let records = find_records(&mut sim, from, key);
        let publishers: HashSet<NodeId> = records.iter().map(|r| r.publisher).collect();
        let expected: HashSet<NodeId> = providers.iter().map(|&p| sim.contact(p).id).collect();
        assert_eq!(publishers, expected);
    }
    // Republished while owned: still there after twice the TTL.
    sim.run(Duration::from_secs(240));
    let records = find_records(&mut sim, 0, key);
    assert_eq!(records.len(), 3);
    // Withdrawn by one provider: gone once its TTL has run out.
    sim.nodes[77].withdraw(&key);
    sim.run(Duration::from_secs(130));
    let records = find_records(&mut sim, 0, key);
    let publishers: HashSet<NodeId> = records.iter().map(|r| r.publisher).collect();
    assert_eq!(publishers.len(), 2);
    assert!(!publishers.contains(&sim.contact(77).id));
}

/// Runs a `find_records` from node `from` to its end and returns what it found.
fn find_records(sim: &mut Sim, from: usize, key: Key) -> Vec<fovea_core::dht::Record> {
    let now = sim.now;
    let id = sim.nodes[from].find_records(now, key).expect("lookup starts");
    sim.collect();
    sim.run(Duration::from_secs(5));
    match sim.take_event(from, |e| matches!(e, Event::RecordsFound { id: got, .. } if *got == id)) {
        Some(Event::RecordsFound { records, .. }) => records,
        _ => panic!("no records event"),
    }
}

#[test]
fn a_store_naming_another_publisher_is_refused() {
    let mut sim = Sim::new(3, 5, 0);
    let (a, b, c) = (sim.contact(0), sim.contact(1), sim.contact(2));
    let now = sim.now;
    let record = fovea_core::dht::WireRecord {
        key: NodeId::from_rng(&mut sim.rng),
        publisher: c.id,
        value: Bytes::from_static(b"forged"),
        ttl: Duration::from_secs(60),
    };
    sim.nodes[1].handle(now, a, 1, Message::Store { record });
    let t = sim.nodes[1].poll_transmit().unwrap();
    assert_eq!((t.to, t.rpc, t.msg), (a, 1, Message::Stored { ok: false }));
    assert!(sim.nodes[1].store().is_empty());
    assert_eq!(sim.nodes[1].stats().stores_refused, 1);
    let _ = b;
}

/// A node that looked a key up hears of a new record under it within a couple of network
/// hops (the storers push it), and of its retraction the same way: what makes a new
/// remote subscriber visible to publishers in well under a second.
#[test]
fn watchers_are_told_of_new_and_retracted_records() {
    let mut sim = Sim::new(120, 11, 0);
    sim.join_all();
    let key: Key = NodeId::from_rng(&mut sim.rng);
    let (watcher, newcomer) = (5usize, 90usize);
    let now = sim.now;
    let id = sim.nodes[watcher].find_records(now, key).unwrap();
    sim.collect();
    let end = sim.now + Duration::from_secs(5);
    sim.run_until(end, |s| {
        s.events.iter().any(|(i, e)| *i == watcher && matches!(e, Event::RecordsFound { id: got, .. } if *got == id))
    });
    assert!(
        matches!(sim.take_event(watcher, |e| matches!(e, Event::RecordsFound { .. })), Some(Event::RecordsFound { records, .. }) if records.is_empty())
    );
    // A record appears: the watcher is told without looking again.
    let start = sim.now;
    let now = sim.now;
    sim.nodes[newcomer].publish(now, key, Bytes::from_static(b"interest"), Duration::from_secs(60));
    sim.collect();
    let end = sim.now + Duration::from_secs(5);
    sim.run_until(end, |s| s.events.iter().any(|(i, e)| *i == watcher && matches!(e, Event::Notified { .. })));
    let Some(Event::Notified { record }) = sim.take_event(watcher, |e| matches!(e, Event::Notified { .. })) else {
        panic!("the watcher was not notified");
    };
    assert_eq!((record.publisher, &record.value[..]), (sim.contact(newcomer).id, &b"interest"[..]));
    let took = sim.now - start;
    assert!(took < Duration::from_millis(500), "notified after {took:?} of simulated time");
    // Retracted: the watcher hears an empty record.
    let now = sim.now;
    sim.nodes[newcomer].retract(now, key, Duration::from_secs(30));
    sim.collect();
    let end = sim.now + Duration::from_secs(5);
    sim.run_until(end, |s| {
        s.events
            .iter()
            .any(|(i, e)| *i == watcher && matches!(e, Event::Notified { record } if record.value.is_empty()))
    });
    assert!(sim.take_event(watcher, |e| matches!(e, Event::Notified { record } if record.value.is_empty())).is_some());
    // A node that never looked the key up is not told anything.
    assert!(sim.events.iter().all(|(i, e)| !matches!(e, Event::Notified { .. }) || *i == watcher));
}

/// A partition that heals converges: while the halves cannot talk, their lookups time out
/// and each side drops the other; once healed, each node meets its seed again (the node
/// layer redials its join addresses) and looks itself up, and lookups from either side
/// find the true closest nodes mesh-wide again.
#[test]
fn a_healed_partition_converges() {
    let mut sim = Sim::new(200, 21, 0);
    sim.join_all();
    let side: HashSet<usize> = (0..200).filter(|i| i % 2 == 1).collect();
    sim.partition = Some(side);
    // Lookups during the partition: each side forgets the other as requests fail.
    let (during, _) = lookup_quality(&mut sim, 20);
    sim.run(Duration::from_secs(30));
    sim.partition = None;
    for i in 1..200 {
        let (seed, now) = (sim.contact(0), sim.now);
        sim.nodes[i].add_contact(seed, now);
        sim.nodes[i].bootstrap(now);
        sim.collect_one(i);
        sim.run(Duration::from_millis(5));
    }
    sim.run(Duration::from_secs(5));
    let (after, exact) = lookup_quality(&mut sim, 30);
    assert!(after >= 0.95, "mean overlap after healing: {after} (during the partition: {during})");
    assert!(exact >= 29, "lookups that found the closest node after healing: {exact} of 30");
}
