//! Failure detection, sans-IO, in the manner of SWIM (Das, Gupta & Motivala, 2002): a node
//! probes the peers it relies on, and one that misses a probe is not condemned on that
//! path alone.
//!
//! A peer not heard from for [`Config::interval`] is pinged. Without an ack within
//! [`Config::ack_timeout`] it is *suspected*: pinged once more and, through up to
//! [`Config::indirect`] other peers, pinged on their paths (`PING_REQ`), and both again
//! halfway through the suspicion; any ack, direct or relayed, or any message from it
//! clears the suspicion. Only when nothing is heard for [`Config::suspect_timeout`] more
//! is it declared dead ([`Event::Dead`]). With 2% loss per message one round fails for a
//! live peer about once in 50 000 suspicions (a direct round trip and three relayed ones
//! all lost), often enough for a large mesh to condemn live nodes; two rounds make it
//! about 10⁻⁹.
//! As Lifeguard observes, any message proves liveness, so a peer that talks is never
//! probed ([`Detector::heard`]).
//!
//! Worst-case detection is `interval + ack_timeout + suspect_timeout` after the last
//! message heard (1.5 s with the defaults); its cost is at most one ping and ack per peer
//! per `interval` while the peer is otherwise silent.
//!
//! The node owns the links and the clock: it feeds what arrives ([`Detector::handle`],
//! [`Detector::heard`]), the time ([`Detector::handle_timeout`] at
//! [`Detector::poll_timeout`]), the set of peers to watch ([`Detector::watch`],
//! [`Detector::unwatch`]), and sends [`Detector::poll_transmit`]'s messages.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use crate::balance::Rng;
use crate::dht::{Contact, NodeId};
use crate::hashing::Map as HashMap;

/// Timings and bounds. The defaults detect in at most 1.5 s on links of up to ~100 ms RTT.
#[derive(Debug, Clone)]
pub struct Config {
    /// A peer silent this long is pinged.
    pub interval: Duration,
    /// A ping unanswered this long makes the peer suspect (and starts the indirect probes).
    pub ack_timeout: Duration,
    /// Peers asked to probe a suspect on their own paths.
    pub indirect: usize,
    /// A suspect heard from by no path for this long is dead.
    pub suspect_timeout: Duration,
    /// Peers watched; past it, [`Detector::watch`] refuses (returns false).
    pub max_peers: usize,
    /// Other nodes known to be reachable, kept to help probe a suspect when fewer than
    /// `indirect` watched peers can ([`Detector::add_helper`]); the oldest goes first.
    pub max_helpers: usize,
    /// Probes relayed for others at once; past it, a `PING_REQ` is ignored (the asker
    /// counts on its other helpers).
    pub max_relays: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interval: Duration::from_millis(500),
            ack_timeout: Duration::from_millis(300),
            indirect: 3,
            suspect_timeout: Duration::from_millis(700),
            max_peers: 4096,
            max_helpers: 8,
            max_relays: 1024,
        }
    }
}

/// What detectors send each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Are you there? Answered by `Ack` with the same `seq`.
    Ping {
        seq: u64,
    },
    Ack {
        seq: u64,
    },
    /// Ping `target` for me; answer `IndirectAck` with `seq` if it acks.
    PingReq {
        target: Contact,
        seq: u64,
    },
    /// `target` answered the ping asked for with `seq`.
    IndirectAck {
        target: NodeId,
        seq: u64,
    },
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: Contact,
    pub msg: Message,
}

/// What the node learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// No path heard from the peer in time: treat it as gone. It is no longer watched.
    Dead(Contact),
}

/// Counters, for metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub pings_sent: u64,
    pub ping_reqs_sent: u64,
    /// Peers that missed a direct probe.
    pub suspected: u64,
    /// Suspects heard from again in time.
    pub refuted: u64,
    pub dead: u64,
    /// `PING_REQ`s ignored at `max_relays`.
    pub relays_refused: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// Nothing outstanding; pinged once silent for `interval`.
    Quiet,
    /// Pinged with `seq`; suspect at `until`.
    Pinged { seq: u64, until: Instant },
    /// Suspect: probed again directly and through others (all with `seq`), once more
    /// halfway (`again`, cleared once done); dead at `until`.
    Suspect { seq: u64, again: Option<Instant>, until: Instant },
}

struct Peer {
    contact: Contact,
    heard: Instant,
    probe: Probe,
}

struct Relay {
    asker: Contact,
    asker_seq: u64,
    target: NodeId,
}

/// One node's failure detector.
///
/// Bounded: `max_peers` peers, `max_relays` relayed probes; the timer heap holds one entry
/// per watched peer, plus stale ones of peers unwatched or re-probed, dropped as they come
/// up.
pub struct Detector {
    config: Config,
    peers: HashMap<NodeId, Peer>,
    /// Our seq → the peer it probes.
    probes: HashMap<u64, NodeId>,
    /// Relayed probes: our seq → who asked.
    relays: HashMap<u64, Relay>,
    /// (when, peer) to look at; stale entries skipped.
    timers: BinaryHeap<Reverse<(Instant, NodeId)>>,
    relay_expiry: VecDeque<(Instant, u64)>,
    /// Helpers besides the watched peers (see [`Config::max_helpers`]).
    helpers: VecDeque<Contact>,
    next_seq: u64,
    rng: Rng,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Detector {
    pub fn new(config: Config, seed: u64) -> Self {
        Detector {
            config,
            peers: HashMap::default(),
            probes: HashMap::default(),
            relays: HashMap::default(),
            timers: BinaryHeap::new(),
            relay_expiry: VecDeque::new(),
            helpers: VecDeque::new(),
            next_seq: 1,
            rng: Rng::new(seed),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Peers watched.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn is_watched(&self, id: &NodeId) -> bool {
        self.peers.contains_key(id)
    }

    /// Starts watching `contact` (heard from now). False at `max_peers`.
    pub fn watch(&mut self, contact: Contact, now: Instant) -> bool {
        if self.peers.contains_key(&contact.id) {
            return true;
        }
        if self.peers.len() >= self.config.max_peers {
            return false;
        }
        self.peers.insert(contact.id, Peer { contact, heard: now, probe: Probe::Quiet });
        self.timers.push(Reverse((now + self.config.interval, contact.id)));
        true
    }

    /// Offers `contact`, a node this one can reach (a DHT neighbour, say), as a helper for
    /// indirect probes: a node watching only one or two peers has too few of its own, and a
    /// single lost round trip must not condemn a peer.
    pub fn add_helper(&mut self, contact: Contact) {
        if self.helpers.iter().any(|h| h.id == contact.id) {
            return;
        }
        if self.helpers.len() >= self.config.max_helpers {
            self.helpers.pop_front();
        }
        self.helpers.push_back(contact);
    }

    /// Stops watching `id` (no longer relied on, or known gone).
    pub fn unwatch(&mut self, id: &NodeId) {
        self.peers.remove(id);
    }

    /// Something arrived from `id`: it is alive.
    pub fn heard(&mut self, id: &NodeId, now: Instant) {
        let Some(p) = self.peers.get_mut(id) else { return };
        p.heard = now;
        match p.probe {
            Probe::Quiet => {}
            Probe::Pinged { seq, .. } => {
                self.probes.remove(&seq);
                p.probe = Probe::Quiet;
            }
            Probe::Suspect { seq, .. } => {
                self.probes.remove(&seq);
                p.probe = Probe::Quiet;
                self.stats.refuted += 1;
            }
        }
        // No timer pushed: the peer's queued one finds it heard and queues the next
        // (every watched peer has one queued; a busy link costs no heap traffic).
    }

    /// A detector message from `from`.
    pub fn handle(&mut self, now: Instant, from: Contact, msg: Message) {
        self.heard(&from.id, now);
        match msg {
            Message::Ping { seq } => self.send(from, Message::Ack { seq }),
            Message::Ack { seq } => {
                if let Some(relay) = self.relays.remove(&seq) {
                    if relay.target == from.id {
                        self.send(relay.asker, Message::IndirectAck { target: from.id, seq: relay.asker_seq });
                    }
                }
            }
            Message::PingReq { target, seq } => {
                if self.relays.len() >= self.config.max_relays {
                    self.stats.relays_refused += 1;
                    return;
                }
                let ours = self.seq();
                self.relays.insert(ours, Relay { asker: from, asker_seq: seq, target: target.id });
                self.relay_expiry.push_back((now + self.config.suspect_timeout, ours));
                self.send(target, Message::Ping { seq: ours });
            }
            Message::IndirectAck { target, seq } => {
                if self.probes.get(&seq) == Some(&target) {
                    self.heard(&target, now);
                }
            }
        }
    }

    /// When [`Detector::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((t, _))| *t);
        let relay = self.relay_expiry.front().map(|(t, _)| *t);
        [timer, relay].into_iter().flatten().min()
    }

    /// Probes, suspects and condemns as due.
    pub fn handle_timeout(&mut self, now: Instant) {
        while self.relay_expiry.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, seq)) = self.relay_expiry.pop_front() {
                self.relays.remove(&seq);
            }
        }
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            self.step(id, now);
        }
    }

    fn step(&mut self, id: NodeId, now: Instant) {
        let Some(p) = self.peers.get(&id) else { return };
        let (contact, heard, probe) = (p.contact, p.heard, p.probe);
        match probe {
            Probe::Quiet => {
                let due = heard + self.config.interval;
                if due > now {
                    // Heard since this timer was set.
                    self.timers.push(Reverse((due, id)));
                    return;
                }
                let seq = self.seq();
                let until = now + self.config.ack_timeout;
                self.set(id, Probe::Pinged { seq, until }, seq, until);
                self.stats.pings_sent += 1;
                self.send(contact, Message::Ping { seq });
            }
            Probe::Pinged { seq, until } if until <= now => {
                self.probes.remove(&seq);
                let seq = self.seq();
                let again = now + self.config.suspect_timeout / 2;
                let until = now + self.config.suspect_timeout;
                self.set(id, Probe::Suspect { seq, again: Some(again), until }, seq, again);
                self.stats.suspected += 1;
                self.probe_suspect(contact, seq);
            }
            Probe::Suspect { seq, again: Some(again), until } if again <= now && until > now => {
                // A second round on fresh paths: one round's losses (about one suspicion in
                // 50 000 at 2% loss) must not condemn a live peer.
                self.set(id, Probe::Suspect { seq, again: None, until }, seq, until);
                self.probe_suspect(contact, seq);
            }
            Probe::Suspect { seq, until, .. } if until <= now => {
                self.probes.remove(&seq);
                self.peers.remove(&id);
                self.stats.dead += 1;
                self.events.push_back(Event::Dead(contact));
            }
            Probe::Pinged { .. } | Probe::Suspect { .. } => {}
        }
    }

    /// Pings a suspect directly and through helpers, all under `seq`.
    fn probe_suspect(&mut self, contact: Contact, seq: u64) {
        self.stats.pings_sent += 1;
        self.send(contact, Message::Ping { seq });
        for helper in self.helpers(&contact.id) {
            self.stats.ping_reqs_sent += 1;
            self.send(helper, Message::PingReq { target: contact, seq });
        }
    }

    fn set(&mut self, id: NodeId, probe: Probe, seq: u64, until: Instant) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.probe = probe;
        }
        self.probes.insert(seq, id);
        self.timers.push(Reverse((until, id)));
    }

    /// Up to `indirect` other watched peers, not suspect themselves, or offered helpers, at
    /// random.
    fn helpers(&mut self, suspect: &NodeId) -> Vec<Contact> {
        let mut candidates: Vec<Contact> = self
            .peers
            .values()
            .filter(|p| p.contact.id != *suspect && !matches!(p.probe, Probe::Suspect { .. }))
            .map(|p| p.contact)
            .collect();
        if candidates.len() < self.config.indirect {
            for h in &self.helpers {
                if h.id != *suspect && !candidates.iter().any(|c| c.id == h.id) {
                    candidates.push(*h);
                }
            }
        }
        let n = self.config.indirect.min(candidates.len());
        for i in 0..n {
            let j = i + self.rng.below(candidates.len() - i);
            candidates.swap(i, j);
        }
        candidates.truncate(n);
        candidates
    }

    fn seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    fn send(&mut self, to: Contact, msg: Message) {
        self.transmits.push_back(Transmit { to, msg });
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

/// The encoding of [`Message`]s, carried as the body of a `PROBE` frame on a mesh link
/// (docs/MESH.md):
///
/// ```text
/// probe   = type:varint seq:varint fields
/// contact = id:32 family:u8(4|6) ip:4|16 port:u16      (as in the DHT's messages)
/// 1 PING  2 ACK  3 PING_REQ target:contact  4 INDIRECT_ACK target:32
/// ```
///
/// Anything malformed is a [`wire::WireError`], never a panic.
pub mod wire {
    use bytes::{Buf, BufMut, Bytes, BytesMut};

    use super::Message;
    pub use crate::dht::wire::WireError;
    use crate::dht::wire::{get_contact, get_id, get_varint, put_contact};
    use crate::varint;

    const PING: u64 = 1;
    const ACK: u64 = 2;
    const PING_REQ: u64 = 3;
    const INDIRECT_ACK: u64 = 4;

    /// Appends `msg`.
    pub fn encode(msg: &Message, out: &mut BytesMut) {
        match msg {
            Message::Ping { seq } => {
                varint::encode(PING, out);
                varint::encode(*seq, out);
            }
            Message::Ack { seq } => {
                varint::encode(ACK, out);
                varint::encode(*seq, out);
            }
            Message::PingReq { target, seq } => {
                varint::encode(PING_REQ, out);
                varint::encode(*seq, out);
                put_contact(target, out);
            }
            Message::IndirectAck { target, seq } => {
                varint::encode(INDIRECT_ACK, out);
                varint::encode(*seq, out);
                out.put_slice(&target.0);
            }
        }
    }

    /// Decodes one whole message from `src` (all of it).
    ///
    /// # Errors
    /// [`WireError`] for anything malformed.
    pub fn decode(mut src: Bytes) -> Result<Message, WireError> {
        let r = &mut src;
        let ty = get_varint(r, "type")?;
        let seq = get_varint(r, "seq")?;
        let msg = match ty {
            PING => Message::Ping { seq },
            ACK => Message::Ack { seq },
            PING_REQ => Message::PingReq { target: get_contact(r)?, seq },
            INDIRECT_ACK => Message::IndirectAck { target: get_id(r, "target")?, seq },
            other => return Err(WireError::UnknownType(other)),
        };
        if r.has_remaining() {
            return Err(WireError::Trailing(r.remaining()));
        }
        Ok(msg)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::dht::{Contact, NodeId};
        use proptest::prelude::*;

        #[test]
        fn every_message_round_trips() {
            let target = Contact { id: NodeId([7; 32]), addr: "[::1]:4500".parse().unwrap() };
            for msg in [
                Message::Ping { seq: 1 },
                Message::Ack { seq: u64::from(u32::MAX) },
                Message::PingReq { target, seq: 3 },
                Message::IndirectAck { target: target.id, seq: 4 },
            ] {
                let mut out = BytesMut::new();
                encode(&msg, &mut out);
                assert_eq!(decode(out.clone().freeze()), Ok(msg));
                // Every cut is an error, not a panic.
                for cut in 0..out.len() {
                    assert!(decode(out.clone().freeze().slice(..cut)).is_err());
                }
            }
        }

        proptest! {
            #[test]
            fn any_bytes_decode_or_fail_without_panicking(data in proptest::collection::vec(any::<u8>(), 0..80)) {
                let _ = decode(Bytes::from(data));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(n: u8) -> Contact {
        Contact { id: NodeId([n; 32]), addr: format!("10.0.0.{n}:4500").parse().unwrap() }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A few detectors on a lossless network with 10 ms links, `down` never answering.
    struct Net {
        nodes: Vec<Detector>,
        down: Vec<bool>,
        now: Instant,
        dead: Vec<(usize, Contact, Instant)>,
    }

    impl Net {
        fn new(n: u8) -> Net {
            let now = Instant::now();
            let mut nodes: Vec<Detector> = (0..n).map(|i| Detector::new(Config::default(), u64::from(i))).collect();
            for (i, d) in nodes.iter_mut().enumerate() {
                for j in 0..n {
                    if usize::from(j) != i {
                        d.watch(contact(j), now);
                    }
                }
            }
            Net { nodes, down: vec![false; usize::from(n)], now, dead: Vec::new() }
        }

        /// Runs in 10 ms steps (messages take one step).
        fn run(&mut self, span: Duration) {
            let end = self.now + span;
            while self.now < end {
                self.now += ms(10);
                let mut wire = Vec::new();
                for (i, d) in self.nodes.iter_mut().enumerate() {
                    d.handle_timeout(self.now);
                    while let Some(t) = d.poll_transmit() {
                        wire.push((i, t));
                    }
                    while let Some(Event::Dead(c)) = d.poll_event() {
                        self.dead.push((i, c, self.now));
                    }
                }
                for (from, t) in wire {
                    let to = usize::from(t.to.id.0[0]);
                    if self.down[from] || self.down[to] {
                        continue;
                    }
                    self.nodes[to].handle(self.now, contact(from as u8), t.msg);
                }
            }
        }
    }

    #[test]
    fn live_peers_are_never_condemned_and_a_dead_one_is_within_the_bound() {
        let mut net = Net::new(5);
        net.run(Duration::from_secs(10));
        assert!(net.dead.is_empty(), "nobody died: {:?}", net.dead);
        let crash = net.now;
        net.down[4] = true;
        net.run(Duration::from_secs(5));
        let c = Config::default();
        let bound = c.interval + c.ack_timeout + c.suspect_timeout + ms(20);
        // Node 4 itself, cut off, finds everyone dead: its view is not what is tested.
        net.dead.retain(|(i, _, _)| *i != 4);
        let mut watchers: Vec<usize> = net.dead.iter().map(|(i, _, _)| *i).collect();
        watchers.sort();
        assert_eq!(watchers, [0, 1, 2, 3], "each of the four others found node 4 dead, once");
        for (_, who, when) in &net.dead {
            assert_eq!(*who, contact(4));
            assert!(*when - crash <= bound, "found after {:?}", *when - crash);
        }
        assert!(!net.nodes[0].is_watched(&contact(4).id));
    }

    #[test]
    fn a_suspect_heard_through_others_is_cleared() {
        // 0 cannot reach 1 directly (both directions), but 2 can: 1 is suspected, not dead.
        let now = Instant::now();
        let mut d = Detector::new(Config::default(), 7);
        d.watch(contact(1), now);
        d.watch(contact(2), now);
        d.heard(&contact(2).id, now + ms(450));
        d.handle_timeout(now + ms(500));
        let ping = d.poll_transmit().unwrap();
        assert_eq!(ping.to, contact(1));
        d.handle_timeout(now + ms(800));
        let sent: Vec<Transmit> = std::iter::from_fn(|| d.poll_transmit()).collect();
        let req = sent.iter().find(|t| t.to == contact(2)).expect("2 is asked to probe 1");
        let Message::PingReq { target, seq } = req.msg.clone() else { panic!("{req:?}") };
        assert_eq!(target, contact(1));
        d.handle(now + ms(850), contact(2), Message::IndirectAck { target: contact(1).id, seq });
        d.handle_timeout(now + ms(2000));
        assert!(d.poll_event().is_none());
        assert!(d.is_watched(&contact(1).id));
        assert_eq!(d.stats().refuted, 1);
    }

    #[test]
    fn offered_helpers_probe_when_few_peers_are_watched() {
        let now = Instant::now();
        let mut d = Detector::new(Config::default(), 3);
        d.watch(contact(1), now);
        for n in 10..20 {
            d.add_helper(contact(n));
        }
        d.handle_timeout(now + ms(500));
        d.handle_timeout(now + ms(800));
        let reqs: Vec<Contact> = std::iter::from_fn(|| d.poll_transmit())
            .filter(|t| matches!(t.msg, Message::PingReq { .. }))
            .map(|t| t.to)
            .collect();
        assert_eq!(reqs.len(), 3, "three helpers asked");
        assert!(reqs.iter().all(|c| (12..20).contains(&c.id.0[0])), "only the 8 newest are kept: {reqs:?}");
    }

    #[test]
    fn a_relay_pings_the_target_and_reports_back() {
        let now = Instant::now();
        let mut relay = Detector::new(Config::default(), 1);
        relay.handle(now, contact(0), Message::PingReq { target: contact(9), seq: 77 });
        let ping = relay.poll_transmit().unwrap();
        assert_eq!(ping.to, contact(9));
        let Message::Ping { seq } = ping.msg else { panic!() };
        // An ack from someone else under that seq is not the target's.
        relay.handle(now, contact(5), Message::Ack { seq });
        assert!(relay.poll_transmit().is_none());
    }

    #[test]
    fn watching_is_bounded_and_talkers_are_not_probed() {
        let now = Instant::now();
        let mut d = Detector::new(Config { max_peers: 2, ..Config::default() }, 1);
        assert!(d.watch(contact(1), now));
        assert!(d.watch(contact(2), now));
        assert!(!d.watch(contact(3), now));
        for step in 1..=20 {
            let t = now + ms(100 * step);
            d.heard(&contact(1).id, t);
            d.heard(&contact(2).id, t);
            d.handle_timeout(t);
        }
        assert!(d.poll_transmit().is_none(), "peers heard from are not pinged");
        assert_eq!(d.stats().pings_sent, 0);
    }
}
