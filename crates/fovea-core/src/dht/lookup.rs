//! One iterative lookup: ask the α closest unqueried nodes for nodes closer to a target,
//! until the k closest known have all answered.

use std::collections::BTreeMap;

use super::id::{Distance, NodeId};
use super::table::Contact;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Known, not asked yet.
    Waiting,
    /// Asked; no answer yet.
    InFlight,
    /// Answered.
    Answered,
    /// Did not answer in time, or answered with an error.
    Failed,
}

/// The state of one lookup (sans-IO: the caller sends the queries and reports answers).
///
/// Invariants: at most `alpha` queries in flight; a peer is asked at most once; the
/// candidate set is capped (closest kept), so a lookup's memory is bounded whatever
/// peers answer.
#[derive(Debug, Clone)]
pub struct Lookup {
    target: NodeId,
    k: usize,
    alpha: usize,
    /// Each candidate with its state and its hop count: 1 for the seeds, one more than
    /// the peer whose answer named it.
    peers: BTreeMap<Distance, (Contact, State, u8)>,
    /// Peers whose first query went unanswered and were put back to be asked once more:
    /// a lost message should not cost a lookup its closest node. Bounded by the
    /// candidate cap.
    retried: Vec<NodeId>,
    in_flight: usize,
    /// Queries sent so far.
    asked: usize,
}

/// Candidates kept per lookup: enough to survive failures among the closest k.
const CANDIDATES_PER_K: usize = 4;

impl Lookup {
    /// A lookup for `target` starting from `seeds` (the caller's closest contacts).
    pub fn new(target: NodeId, k: usize, alpha: usize, seeds: impl IntoIterator<Item = Contact>) -> Self {
        let mut l = Lookup {
            target,
            k: k.max(1),
            alpha: alpha.max(1),
            peers: BTreeMap::new(),
            retried: Vec::new(),
            in_flight: 0,
            asked: 0,
        };
        l.add(seeds, 1);
        l
    }

    /// The id being looked up.
    pub fn target(&self) -> NodeId {
        self.target
    }

    fn add(&mut self, contacts: impl IntoIterator<Item = Contact>, hops: u8) {
        for c in contacts {
            let d = c.id.distance(&self.target);
            self.peers.entry(d).or_insert((c, State::Waiting, hops));
        }
        // Keep the closest; drop far candidates nobody is waiting on.
        let cap = self.k * CANDIDATES_PER_K;
        while self.peers.len() > cap {
            let Some((&d, &(_, state, _))) = self.peers.iter().next_back() else { break };
            if state == State::InFlight {
                break;
            }
            self.peers.remove(&d);
        }
    }

    /// The next peer to ask, if fewer than α are in flight and one of the k closest
    /// (not counting failed ones) has not been asked. Marks it in flight.
    pub fn next_query(&mut self) -> Option<Contact> {
        if self.in_flight >= self.alpha {
            return None;
        }
        let k = self.k;
        let (_, (contact, state, _)) = self
            .peers
            .iter_mut()
            .filter(|(_, (_, s, _))| *s != State::Failed)
            .take(k)
            .find(|(_, (_, s, _))| *s == State::Waiting)?;
        *state = State::InFlight;
        self.in_flight += 1;
        self.asked += 1;
        Some(*contact)
    }

    /// `from` answered with `closer` contacts. Answers from peers not asked are ignored.
    pub fn on_answer(&mut self, from: &NodeId, closer: impl IntoIterator<Item = Contact>) {
        if !self.settle(from, State::Answered) {
            return;
        }
        let hops = self.peers.get(&from.distance(&self.target)).map_or(1, |(_, _, h)| h.saturating_add(1));
        self.add(closer, hops);
    }

    /// `from` did not answer in time: it is asked once more, then given up.
    pub fn on_timeout(&mut self, from: &NodeId) {
        if self.retried.contains(from) {
            self.settle(from, State::Failed);
        } else if self.settle(from, State::Waiting) {
            self.retried.push(*from);
        }
    }

    /// `from` failed for good (an error answer, or its link is gone).
    pub fn on_failure(&mut self, from: &NodeId) {
        self.settle(from, State::Failed);
    }

    fn settle(&mut self, from: &NodeId, to: State) -> bool {
        let d = from.distance(&self.target);
        match self.peers.get_mut(&d) {
            Some((_, s, _)) if *s == State::InFlight => {
                *s = to;
                self.in_flight -= 1;
                true
            }
            _ => false,
        }
    }

    /// Done: the k closest non-failed peers have all answered, or nobody is left to ask
    /// and nothing is in flight.
    pub fn is_finished(&self) -> bool {
        let mut window = self.peers.values().filter(|(_, s, _)| *s != State::Failed).take(self.k);
        let all_answered = window.clone().all(|(_, s, _)| *s == State::Answered);
        let waiting = window.any(|(_, s, _)| *s == State::Waiting);
        all_answered || (!waiting && self.in_flight == 0)
    }

    /// Queries in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queries sent so far (a retried peer counts twice).
    pub fn asked(&self) -> usize {
        self.asked
    }

    /// The closest peers that answered, closest first, at most k.
    pub fn closest(&self) -> Vec<Contact> {
        self.peers.values().filter(|(_, s, _)| *s == State::Answered).take(self.k).map(|(c, _, _)| *c).collect()
    }

    /// Hops to the closest peer that answered: the sequential rounds a lookup needed to
    /// reach it (1 when the seeds held it). `None` when nobody answered.
    pub fn hops(&self) -> Option<u8> {
        self.peers.values().find(|(_, s, _)| *s == State::Answered).map(|(_, _, h)| *h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Rng;

    fn c(id: NodeId) -> Contact {
        Contact { id, addr: "127.0.0.1:1".parse().unwrap() }
    }

    #[test]
    fn at_most_alpha_in_flight_and_each_peer_asked_once() {
        let mut rng = Rng::new(1);
        let target = NodeId::from_rng(&mut rng);
        let seeds: Vec<Contact> = (0..10).map(|_| c(NodeId::from_rng(&mut rng))).collect();
        let mut l = Lookup::new(target, 4, 3, seeds.clone());
        let asked: Vec<Contact> = std::iter::from_fn(|| l.next_query()).collect();
        assert_eq!(asked.len(), 3);
        // Answers with nothing new; failures free slots but never re-ask.
        l.on_answer(&asked[0].id, []);
        l.on_failure(&asked[1].id);
        let more: Vec<Contact> = std::iter::from_fn(|| l.next_query()).collect();
        assert_eq!(more.len(), 2);
        assert!(more.iter().all(|m| !asked.contains(m)));
        // An answer from someone never asked changes nothing.
        let stranger = c(NodeId::from_rng(&mut rng));
        l.on_answer(&stranger.id, [stranger]);
        assert_eq!(l.in_flight(), 3);
    }

    #[test]
    fn hops_count_the_answers_that_led_to_the_closest() {
        let mut rng = Rng::new(3);
        let target = NodeId::from_rng(&mut rng);
        let mut ids: Vec<NodeId> = (0..3).map(|_| NodeId::from_rng(&mut rng)).collect();
        ids.sort_by_key(|id| std::cmp::Reverse(id.distance(&target)));
        let (far, mid, near) = (c(ids[0]), c(ids[1]), c(ids[2]));
        let mut l = Lookup::new(target, 1, 1, [far]);
        assert_eq!(l.hops(), None);
        let q = l.next_query().unwrap();
        l.on_answer(&q.id, [mid]);
        assert_eq!(l.hops(), Some(1), "the seed answered");
        let q = l.next_query().unwrap();
        assert_eq!(q, mid);
        l.on_answer(&q.id, [near]);
        let q = l.next_query().unwrap();
        l.on_answer(&q.id, []);
        assert!(l.is_finished());
        assert_eq!(l.hops(), Some(3), "seed → mid → near");
    }

    #[test]
    fn finishes_when_the_k_closest_answered() {
        let mut rng = Rng::new(2);
        let target = NodeId::from_rng(&mut rng);
        let seeds: Vec<Contact> = (0..3).map(|_| c(NodeId::from_rng(&mut rng))).collect();
        let mut l = Lookup::new(target, 3, 3, seeds);
        assert!(!l.is_finished());
        while let Some(p) = l.next_query() {
            l.on_answer(&p.id, []);
        }
        assert!(l.is_finished());
        assert_eq!(l.closest().len(), 3);
    }
}
