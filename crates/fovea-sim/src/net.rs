//! Simulated time and network: a queue of timed events, links with latency and loss.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use fovea_core::balance::Rng;
use fovea_core::dht::{self, Contact};
use fovea_core::failure;

/// What travels between nodes.
#[derive(Debug, Clone)]
pub enum Payload {
    Dht {
        rpc: u64,
        msg: dht::Message,
    },
    Probe(failure::Message),
    /// A graceful departure, as a closing link tells the other end.
    Bye,
}

/// Something that happens at a simulated instant.
#[derive(Debug)]
pub enum Kind {
    Deliver {
        from: Contact,
        to: usize,
        payload: Payload,
    },
    /// Node `node`'s state machines may have a timeout due.
    Timer {
        node: usize,
    },
}

struct Ev {
    at: Instant,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Ev {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ev {
    /// Reversed: the heap pops the earliest first, ties in order of scheduling.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The event queue and the links' behaviour.
pub struct Net {
    queue: BinaryHeap<Ev>,
    seq: u64,
    pub now: Instant,
    pub rng: Rng,
    /// Per million messages lost.
    loss_ppm: u64,
    latency: (Duration, Duration),
    /// Messages put on the wire (lost ones included), and their encoded size estimate.
    pub sent: u64,
    pub lost: u64,
}

impl Net {
    pub fn new(seed: u64, loss: f64, latency: (Duration, Duration)) -> Net {
        Net {
            queue: BinaryHeap::new(),
            seq: 0,
            now: Instant::now(),
            rng: Rng::new(seed),
            loss_ppm: (loss.clamp(0.0, 1.0) * 1e6) as u64,
            latency,
            sent: 0,
            lost: 0,
        }
    }

    pub fn at(&mut self, at: Instant, kind: Kind) {
        self.seq += 1;
        self.queue.push(Ev { at, seq: self.seq, kind });
    }

    /// One link's latency, drawn uniformly from the configured range.
    pub fn latency(&mut self) -> Duration {
        let (lo, hi) = self.latency;
        let span = hi.saturating_sub(lo).as_micros() as usize;
        lo + Duration::from_micros(if span == 0 { 0 } else { self.rng.below(span + 1) as u64 })
    }

    /// Sends `payload` from `from` to node `to`: lost with the configured probability,
    /// else delivered after one latency.
    pub fn send(&mut self, from: Contact, to: usize, payload: Payload) {
        self.sent += 1;
        if (self.rng.next_u64() % 1_000_000) < self.loss_ppm {
            self.lost += 1;
            return;
        }
        let at = self.now + self.latency();
        self.at(at, Kind::Deliver { from, to, payload });
    }

    /// The next event at or before `end`, with the clock moved to it.
    pub fn next(&mut self, end: Instant) -> Option<Kind> {
        if self.queue.peek()?.at > end {
            return None;
        }
        let ev = self.queue.pop()?;
        self.now = self.now.max(ev.at);
        Some(ev.kind)
    }
}

/// Percentiles of a sample (nearest rank); `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_in_time_order_and_ties_in_order() {
        let mut net = Net::new(1, 0.0, (Duration::ZERO, Duration::ZERO));
        let t0 = net.now;
        net.at(t0 + Duration::from_millis(5), Kind::Timer { node: 2 });
        net.at(t0 + Duration::from_millis(1), Kind::Timer { node: 1 });
        net.at(t0 + Duration::from_millis(5), Kind::Timer { node: 3 });
        let order: Vec<usize> = std::iter::from_fn(|| match net.next(t0 + Duration::from_secs(1)) {
            Some(Kind::Timer { node }) => Some(node),
            _ => None,
        })
        .collect();
        assert_eq!(order, [1, 2, 3]);
        assert_eq!(net.now, t0 + Duration::from_millis(5));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 50.0), Some(50.0));
        assert_eq!(percentile(&xs, 99.0), Some(99.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
