//! The simulated mesh: nodes made of the core's state machines (the DHT, discovery and the
//! failure detector, exactly as the node runs them), driven as the node's IO shell drives
//! them, over [`Net`]; and the workload and measurements around them.

use std::time::{Duration, Instant};

use fovea_core::dht::{self, Contact, Dht, Key, LookupId, NodeId};
use fovea_core::discovery::{self, interest_key, Action, Discovery, Providers, Publication};
use fovea_core::failure::{self, Detector};
use fovea_core::hashing::{Map as HashMap, Set as HashSet};
use fovea_core::{Pattern, Topic};

use crate::net::{Kind, Net, Payload};

const REALM: &str = "default";

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Params {
    pub nodes: usize,
    /// Share of the nodes that leave (half crash, half say goodbye) and are replaced, per
    /// simulated hour.
    pub churn: f64,
    pub loss: f64,
    pub latency: (Duration, Duration),
    pub seed: u64,
    /// Simulated time measured, after the joins and a warm-up.
    pub duration: Duration,
    pub warmup: Duration,
    /// Lookups of published records made to measure success and hops.
    pub lookups: usize,
    /// New subscribers and providers whose reach is measured.
    pub arrivals: usize,
}

/// What a node watches for reach: a new subscriber (to topic `t`) or provider (of `p`).
#[derive(Debug, Clone, Copy)]
enum Watch {
    Topic(usize),
    Procedure(usize),
}

struct Reach {
    target: NodeId,
    watch: Watch,
    since: Instant,
}

struct Node {
    contact: Contact,
    alive: bool,
    dht: Dht,
    disc: Discovery,
    fd: Detector,
    watched: HashSet<NodeId>,
    disc_lookups: HashMap<LookupId, Key>,
    /// Measurement lookups: the publisher whose record must be found.
    probe_lookups: HashMap<LookupId, NodeId>,
    timer_at: Option<Instant>,
    /// Topics subscribed and procedures provided, with since when.
    subscribed: Vec<(usize, Instant)>,
    provides: Vec<usize>,
}

/// What was measured.
#[derive(Debug, Default)]
pub struct Report {
    pub nodes: usize,
    pub lookups: u64,
    pub lookups_ok: u64,
    pub hops: [u64; 16],
    pub reach_ms: Vec<f64>,
    pub detect_ms: Vec<f64>,
    /// Live nodes some detector declared dead.
    pub false_dead: u64,
    pub crashes: u64,
    pub leaves: u64,
    pub joins: u64,
    pub msgs: u64,
    pub dht_msgs: u64,
    pub probe_msgs: u64,
    pub node_seconds: f64,
    /// Messages of the measurement lookups (queries and answers).
    pub probe_lookup_msgs: u64,
    /// Reach measurements whose target went away first, or that did not complete.
    pub reach_unfinished: u64,
    pub detect_unfinished: u64,
}

pub struct Sim {
    params: Params,
    net: Net,
    nodes: Vec<Node>,
    index: HashMap<NodeId, usize>,
    topics: Vec<(Topic, Pattern, Vec<usize>)>,
    procedures: Vec<(String, Vec<usize>)>,
    reach: HashMap<usize, Vec<Reach>>,
    detect: HashMap<usize, Vec<(NodeId, Instant)>>,
    measuring: bool,
    report: Report,
    dht_msgs: u64,
    probe_msgs: u64,
    /// The simulation's first instant (the workload's clock counts from it).
    epoch: Instant,
}

fn dht_config() -> dht::Config {
    dht::Config::default()
}

impl Sim {
    pub fn new(params: Params) -> Sim {
        let net = Net::new(params.seed, params.loss, params.latency);
        Sim {
            params,
            net,
            nodes: Vec::new(),
            index: HashMap::default(),
            topics: Vec::new(),
            procedures: Vec::new(),
            reach: HashMap::default(),
            detect: HashMap::default(),
            measuring: false,
            report: Report::default(),
            dht_msgs: 0,
            probe_msgs: 0,
            epoch: Instant::now(),
        }
    }

    /// Live nodes.
    pub fn live(&self) -> usize {
        self.nodes.iter().filter(|n| n.alive).count()
    }

    fn random_live(&mut self) -> usize {
        loop {
            let i = self.net.rng.below(self.nodes.len());
            if self.nodes[i].alive {
                return i;
            }
        }
    }

    /// A new node, joining through a random live one (none for the first).
    fn join(&mut self) -> usize {
        let i = self.nodes.len();
        let id = NodeId::from_rng(&mut self.net.rng);
        let n = i as u32 + 1;
        let addr = std::net::SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 4500));
        let contact = Contact { id, addr };
        let now = self.net.now;
        let seed = self.net.rng.next_u64();
        let node = Node {
            contact,
            alive: true,
            dht: Dht::new(contact, dht_config(), now, seed),
            disc: Discovery::new(contact, discovery::Config::default(), now),
            fd: Detector::new(failure::Config::default(), seed ^ 0x5eed),
            watched: HashSet::default(),
            disc_lookups: HashMap::default(),
            probe_lookups: HashMap::default(),
            timer_at: None,
            subscribed: Vec::new(),
            provides: Vec::new(),
        };
        let through = (!self.nodes.is_empty()).then(|| self.random_live());
        self.nodes.push(node);
        self.index.insert(id, i);
        if let Some(s) = through {
            let seed_contact = self.nodes[s].contact;
            self.nodes[i].dht.add_contact(seed_contact, now);
            self.nodes[i].dht.bootstrap(now);
        }
        if self.measuring {
            self.report.joins += 1;
        }
        self.pump(i);
        i
    }

    /// Runs every event up to `end`, the workload ticking every 100 ms.
    fn run_until(&mut self, end: Instant) {
        let tick = Duration::from_millis(100);
        let mut next_tick = self.net.now + tick;
        loop {
            let until = next_tick.min(end);
            while let Some(kind) = self.net.next(until) {
                self.handle(kind);
            }
            self.net.now = self.net.now.max(until);
            if until >= end {
                return;
            }
            self.tick();
            next_tick += tick;
        }
    }

    fn handle(&mut self, kind: Kind) {
        let now = self.net.now;
        match kind {
            Kind::Deliver { from, to, payload } => {
                if !self.nodes[to].alive {
                    return;
                }
                let n = &mut self.nodes[to];
                match payload {
                    Payload::Dht { rpc, msg } => {
                        n.dht.handle(now, from, rpc, msg);
                        n.fd.heard(&from.id, now);
                    }
                    Payload::Probe(msg) => n.fd.handle(now, from, msg),
                    Payload::Bye => {
                        n.disc.node_gone(&from.id);
                        n.dht.remove_contact(&from.id, now);
                        n.fd.unwatch(&from.id);
                        n.watched.remove(&from.id);
                    }
                }
                self.pump(to);
            }
            Kind::Timer { node } => {
                let n = &mut self.nodes[node];
                if !n.alive || n.timer_at.is_none_or(|t| t > now) {
                    return;
                }
                n.timer_at = None;
                n.dht.handle_timeout(now);
                n.disc.handle_timeout(now);
                n.fd.handle_timeout(now);
                self.pump(node);
            }
        }
    }

    /// Carries out everything node `i`'s state machines want, as the node's shell does.
    fn pump(&mut self, i: usize) {
        if !self.nodes[i].alive {
            return;
        }
        for _ in 0..2 {
            self.drain(i);
            self.check_reach(i);
        }
        self.check_detect(i);
        self.sync_watch(i);
        let now = self.net.now;
        let n = &mut self.nodes[i];
        let next = [n.dht.poll_timeout(), Some(n.disc.poll_timeout()), n.fd.poll_timeout()].into_iter().flatten().min();
        if let Some(t) = next {
            if n.timer_at.is_none_or(|at| t < at) {
                n.timer_at = Some(t);
                self.net.at(t.max(now), Kind::Timer { node: i });
            }
        }
    }

    fn drain(&mut self, i: usize) {
        let now = self.net.now;
        loop {
            let mut busy = false;
            let from = self.nodes[i].contact;
            while let Some(t) = self.nodes[i].dht.poll_transmit() {
                if let Some(&to) = self.index.get(&t.to.id) {
                    self.dht_msgs += 1;
                    self.net.send(from, to, Payload::Dht { rpc: t.rpc, msg: t.msg });
                }
            }
            while let Some(e) = self.nodes[i].dht.poll_event() {
                busy = true;
                let n = &mut self.nodes[i];
                match e {
                    dht::Event::RecordsFound { id, records, cost, .. } => {
                        if let Some(k) = n.disc_lookups.remove(&id) {
                            n.disc.lookup_done(now, k, &records);
                        } else if let Some(expected) = n.probe_lookups.remove(&id) {
                            self.report.lookups += 1;
                            if records.iter().any(|r| r.publisher == expected) {
                                self.report.lookups_ok += 1;
                            }
                            if let Some(h) = cost.hops {
                                self.report.hops[usize::from(h).min(15)] += 1;
                            }
                            // A query and its answer each: workload, not maintenance.
                            self.report.probe_lookup_msgs += 2 * cost.queries as u64;
                        }
                    }
                    dht::Event::Notified { record } => n.disc.pushed(now, &record),
                    _ => {}
                }
            }
            while let Some(a) = self.nodes[i].disc.poll_action() {
                busy = true;
                if let Action::LookUp(key) = a {
                    self.look_up(i, key);
                }
            }
            while let Some(p) = self.nodes[i].disc.poll_publication() {
                busy = true;
                let n = &mut self.nodes[i];
                match p {
                    Publication::Publish { key, value, ttl } => {
                        n.dht.publish(now, key, value, ttl);
                    }
                    Publication::Retract { key, ttl } => {
                        n.dht.retract(now, key, ttl);
                    }
                }
            }
            while let Some(t) = self.nodes[i].fd.poll_transmit() {
                if let Some(&to) = self.index.get(&t.to.id) {
                    self.probe_msgs += 1;
                    self.net.send(from, to, Payload::Probe(t.msg));
                }
            }
            while let Some(failure::Event::Dead(c)) = self.nodes[i].fd.poll_event() {
                busy = true;
                let n = &mut self.nodes[i];
                n.disc.node_gone(&c.id);
                n.dht.remove_contact(&c.id, now);
                n.watched.remove(&c.id);
                if self.measuring && self.index.get(&c.id).is_some_and(|&j| self.nodes[j].alive) {
                    self.report.false_dead += 1;
                }
            }
            if !busy {
                return;
            }
        }
    }

    fn look_up(&mut self, i: usize, key: Key) {
        let now = self.net.now;
        let n = &mut self.nodes[i];
        match n.dht.find_records(now, key) {
            Some(id) => {
                n.disc_lookups.insert(id, key);
            }
            None => n.disc.lookup_done(now, key, &[]),
        }
    }

    /// The detector watches exactly the nodes discovery routes to, and has the DHT's
    /// closest neighbours as helpers for indirect probes (as the node's links to them are).
    fn sync_watch(&mut self, i: usize) {
        let now = self.net.now;
        let n = &mut self.nodes[i];
        let me = n.contact.id;
        if n.watched.len() < 4 {
            for c in n.dht.table().closest(&me, 4) {
                n.fd.add_helper(c);
            }
        }
        let peers: HashMap<NodeId, Contact> = n.disc.peers().filter(|c| c.id != me).map(|c| (c.id, c)).collect();
        for (id, c) in &peers {
            if !n.watched.contains(id) && n.fd.watch(*c, now) {
                n.watched.insert(*id);
            }
        }
        let gone: Vec<NodeId> = n.watched.iter().filter(|id| !peers.contains_key(id)).copied().collect();
        for id in gone {
            n.fd.unwatch(&id);
            n.watched.remove(&id);
        }
    }

    fn check_reach(&mut self, i: usize) {
        let Some(mut waiting) = self.reach.remove(&i) else { return };
        let now = self.net.now;
        waiting.retain(|r| {
            let Some(&t) = self.index.get(&r.target) else { return false };
            if !self.nodes[t].alive {
                self.report.reach_unfinished += 1;
                return false;
            }
            let n = &mut self.nodes[i];
            let reached = match r.watch {
                Watch::Topic(topic) => {
                    n.disc.remote_targets(now, REALM, &self.topics[topic].0).nodes.iter().any(|c| c.id == r.target)
                }
                Watch::Procedure(p) => {
                    n.disc.provider_nodes(REALM, &self.procedures[p].0).iter().any(|c| c.id == r.target)
                }
            };
            if reached {
                self.report.reach_ms.push((now - r.since).as_secs_f64() * 1e3);
            }
            !reached
        });
        if !waiting.is_empty() {
            self.reach.insert(i, waiting);
        }
    }

    fn check_detect(&mut self, i: usize) {
        let Some(mut waiting) = self.detect.remove(&i) else { return };
        let now = self.net.now;
        let in_use: HashSet<NodeId> = self.nodes[i].disc.peers().map(|c| c.id).collect();
        waiting.retain(|(dead, since)| {
            let used = in_use.contains(dead);
            if !used {
                self.report.detect_ms.push((now - *since).as_secs_f64() * 1e3);
            }
            used
        });
        if !waiting.is_empty() {
            self.detect.insert(i, waiting);
        }
    }

    /// The workload, every 100 ms: publishers and callers at work, and while measuring,
    /// lookups, arrivals and churn.
    fn tick(&mut self) {
        let now = self.net.now;
        // Each publisher and caller acts every 5 s (50 ticks), staggered.
        let slot = (now.duration_since(self.epoch).as_millis() / 100) as usize % 50;
        for t in 0..self.topics.len() {
            for k in 0..self.topics[t].2.len() {
                let p = self.topics[t].2[k];
                if (p + k) % 50 == slot && self.nodes[p].alive {
                    let topic = self.topics[t].0.clone();
                    let _ = self.nodes[p].disc.remote_targets(now, REALM, &topic);
                    self.pump(p);
                }
            }
        }
        for q in 0..self.procedures.len() {
            for k in 0..self.procedures[q].1.len() {
                let c = self.procedures[q].1[k];
                if (c + k) % 50 == slot && self.nodes[c].alive {
                    let name = self.procedures[q].0.clone();
                    if let Providers::LookUp(key) = self.nodes[c].disc.providers(now, REALM, &name) {
                        self.look_up(c, key);
                    }
                    self.pump(c);
                }
            }
        }
        if !self.measuring {
            return;
        }
        let ticks = (self.params.duration.as_millis() / 100).max(1) as f64;
        for _ in 0..self.times(self.params.lookups as f64 / ticks) {
            self.probe_lookup();
        }
        for _ in 0..self.times(self.params.arrivals as f64 / ticks) {
            if self.net.rng.below(2) == 0 {
                self.new_subscriber();
            } else {
                self.new_provider();
            }
        }
        let churn_per_tick = self.params.churn * self.params.nodes as f64 / 36_000.0;
        for _ in 0..self.times(churn_per_tick) {
            self.churn();
        }
        self.report.node_seconds += self.live() as f64 * 0.1;
    }

    /// How many times an event expected `p` times per tick happens in this one.
    fn times(&mut self, p: f64) -> usize {
        let whole = p.floor();
        let frac = p - whole;
        whole as usize + usize::from((self.net.rng.next_u64() as f64 / u64::MAX as f64) < frac)
    }

    /// A random live node looks up the interest record of a random live subscriber that
    /// has stood for at least 5 s (published and stored by then).
    fn probe_lookup(&mut self) {
        let now = self.net.now;
        let settled: Vec<(usize, usize)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.alive)
            .flat_map(|(i, n)| {
                n.subscribed
                    .iter()
                    .filter(|(_, since)| now - *since >= Duration::from_secs(5))
                    .map(move |(t, _)| (i, *t))
            })
            .collect();
        if settled.is_empty() {
            return;
        }
        let (s, t) = settled[self.net.rng.below(settled.len())];
        let key = interest_key(REALM, self.topics[t].0.as_str().split('.').next().unwrap_or(""));
        let from = self.random_live();
        let expected = self.nodes[s].contact.id;
        if let Some(id) = self.nodes[from].dht.find_records(now, key) {
            self.nodes[from].probe_lookups.insert(id, expected);
        }
        self.pump(from);
    }

    /// A node subscribes to a topic; each live publisher of it waits to reach it.
    fn new_subscriber(&mut self) {
        let now = self.net.now;
        let s = self.random_live();
        let t = self.net.rng.below(self.topics.len());
        if self.nodes[s].subscribed.iter().any(|(x, _)| *x == t) || self.topics[t].2.contains(&s) {
            return;
        }
        self.subscribe(s, t);
        let target = self.nodes[s].contact.id;
        for &p in &self.topics[t].2 {
            if self.nodes[p].alive {
                self.reach.entry(p).or_default().push(Reach { target, watch: Watch::Topic(t), since: now });
            }
        }
        self.pump(s);
    }

    /// A node starts providing a procedure; each live caller of it waits to reach it.
    fn new_provider(&mut self) {
        let now = self.net.now;
        let r = self.random_live();
        let q = self.net.rng.below(self.procedures.len());
        if self.nodes[r].provides.contains(&q) || self.procedures[q].1.contains(&r) {
            return;
        }
        self.provide(r, q);
        let target = self.nodes[r].contact.id;
        for &c in &self.procedures[q].1 {
            if self.nodes[c].alive {
                self.reach.entry(c).or_default().push(Reach { target, watch: Watch::Procedure(q), since: now });
            }
        }
        self.pump(r);
    }

    fn subscribe(&mut self, s: usize, t: usize) {
        let now = self.net.now;
        let pattern = self.topics[t].1.clone();
        self.nodes[s].disc.add_local(now, REALM, &pattern, None);
        self.nodes[s].subscribed.push((t, now));
    }

    fn provide(&mut self, r: usize, q: usize) {
        let now = self.net.now;
        let name = self.procedures[q].0.clone();
        self.nodes[r].disc.add_provider(now, REALM, &name);
        self.nodes[r].provides.push(q);
    }

    /// One node goes, by a crash (no goodbye) or a goodbye in turn, and a new one joins.
    /// Half the victims are nodes that subscribe or provide, so that departures matter to
    /// someone.
    fn churn(&mut self) {
        let now = self.net.now;
        let active: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].alive && (!self.nodes[i].subscribed.is_empty() || !self.nodes[i].provides.is_empty())
            })
            .collect();
        let victim = if !active.is_empty() && self.net.rng.below(2) == 0 {
            active[self.net.rng.below(active.len())]
        } else {
            self.random_live()
        };
        let crash = (self.report.crashes + self.report.leaves) % 2 == 0;
        let id = self.nodes[victim].contact.id;
        let users: Vec<usize> = (0..self.nodes.len())
            .filter(|&u| u != victim && self.nodes[u].alive && self.nodes[u].disc.peers().any(|c| c.id == id))
            .collect();
        let from = self.nodes[victim].contact;
        self.nodes[victim].alive = false;
        if crash {
            self.report.crashes += 1;
            for u in users {
                self.detect.entry(u).or_default().push((id, now));
            }
        } else {
            self.report.leaves += 1;
            for u in users {
                self.net.send(from, u, Payload::Bye);
            }
        }
        self.join();
    }

    /// Joins every node (a few milliseconds apart), sets up the workload, warms up, then
    /// measures for the configured duration.
    pub fn run(mut self, progress: impl Fn(&str)) -> Report {
        self.epoch = self.net.now;
        let n = self.params.nodes;
        for i in 0..n {
            self.join();
            if i % 1000 == 999 {
                progress(&format!("joined {} nodes", i + 1));
            }
            let step = self.net.now + Duration::from_millis(2);
            self.run_until(step);
        }
        let settle = self.net.now + Duration::from_secs(10);
        self.run_until(settle);
        progress("workload: subscribers, publishers, providers, callers");
        let topics = (n / 20).max(4);
        for t in 0..topics {
            let topic = format!("t{t}.x");
            // `t{N}.x` is a valid topic and pattern; were it not, the topic is left out.
            let (Ok(parsed), Ok(pattern)) = (Topic::new(&topic), Pattern::new(&topic)) else { continue };
            let publishers: Vec<usize> = (0..3).map(|_| self.random_live()).collect();
            self.topics.push((parsed, pattern, publishers));
        }
        for _ in 0..(n / 10).max(4) {
            let s = self.random_live();
            let t = self.net.rng.below(self.topics.len());
            if !self.nodes[s].subscribed.iter().any(|(x, _)| *x == t) {
                self.subscribe(s, t);
                self.pump(s);
            }
        }
        let procedures = (n / 50).max(4);
        for q in 0..procedures {
            let callers: Vec<usize> = (0..3).map(|_| self.random_live()).collect();
            self.procedures.push((format!("p{q}.call"), callers));
            for _ in 0..2 {
                let r = self.random_live();
                self.provide(r, q);
                self.pump(r);
            }
        }
        let warm = self.net.now + self.params.warmup;
        self.run_until(warm);
        progress("measuring");
        self.measuring = true;
        let (msgs0, dht0, probe0) = (self.net.sent, self.dht_msgs, self.probe_msgs);
        let end = self.net.now + self.params.duration;
        self.run_until(end);
        // Let what is under way finish (lookups, detections), without new work.
        self.measuring = false;
        let drain = self.net.now + Duration::from_secs(10);
        self.run_until(drain);
        let mut report = std::mem::take(&mut self.report);
        report.nodes = n;
        report.msgs = self.net.sent - msgs0;
        report.dht_msgs = self.dht_msgs - dht0;
        report.probe_msgs = self.probe_msgs - probe0;
        report.reach_unfinished += self.reach.values().map(|v| v.len() as u64).sum::<u64>();
        report.detect_unfinished += self.detect.values().map(|v| v.len() as u64).sum::<u64>();
        report
    }
}
