//! Choosing among equals: the procedure registry and the power-of-two-choices picker that
//! RPC and queue groups share.
//!
//! **Policy.** For each call (or queue-group message) pick two distinct candidates at
//! random and take the one with less outstanding work: in-flight calls for a provider,
//! queued bytes for a group member. Against round-robin it steers away from a slow or
//! stalled member within one choice; against "least loaded of all" it needs no scan and
//! does not stampede every caller onto the same momentarily idle member (Mitzenmacher, "The
//! Power of Two Choices in Randomized Load Balancing").

use std::borrow::Borrow;
use std::collections::HashMap;

use foldhash::fast::RandomState;

use crate::topic::Procedure;

/// A small seedable PRNG (xorshift64*) for balancing decisions. Not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n`; `n` must be non-zero.
    pub fn below(&mut self, n: usize) -> usize {
        // Multiply-shift: unbiased enough for balancing and free of division.
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Power of two choices over `n` candidates: the index of the less loaded of two distinct
/// random ones (ties go to the first drawn). `None` when `n == 0`.
pub fn pick_two(n: usize, rng: &mut Rng, load: impl Fn(usize) -> u64) -> Option<usize> {
    match n {
        0 => None,
        1 => Some(0),
        _ => {
            let a = rng.below(n);
            // A second index different from `a`, uniformly among the rest.
            let b = (a + 1 + rng.below(n - 1)) % n;
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

/// A weighted choice among `nodes` (each with its weight, e.g. a queue group's member count
/// there) and `local` (the weight of this node itself): `Some(node)`, or `None` for the
/// local side. Every unit of weight is equally likely, so each queue-group member
/// mesh-wide is equally likely to get a message. `None` also when every weight is 0.
pub fn pick_weighted<T: Copy>(nodes: &[(T, u32)], local: u32, rng: &mut Rng) -> Option<T> {
    let total: u64 = u64::from(local) + nodes.iter().map(|(_, w)| u64::from(*w)).sum::<u64>();
    if total == 0 {
        return None;
    }
    let mut r = ((u128::from(rng.next_u64()) * u128::from(total)) >> 64) as u64;
    if r < u64::from(local) {
        return None;
    }
    r -= u64::from(local);
    for (node, w) in nodes {
        if r < u64::from(*w) {
            return Some(*node);
        }
        r -= u64::from(*w);
    }
    nodes.last().map(|(node, _)| *node)
}

/// Procedure name → providers. Invariant: no procedure maps to an empty list.
#[derive(Debug)]
pub struct Registry<P> {
    map: HashMap<Procedure, Vec<P>, RandomState>,
    len: usize,
}

impl<P> Default for Registry<P> {
    fn default() -> Self {
        Registry { map: HashMap::default(), len: 0 }
    }
}

impl<P: PartialEq> Registry<P> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of registrations.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a provider of `procedure`.
    pub fn insert(&mut self, procedure: &Procedure, provider: P) {
        self.map.entry(procedure.clone()).or_default().push(provider);
        self.len += 1;
    }

    /// Removes one registration of `provider` for `procedure`; returns whether it existed.
    pub fn remove(&mut self, procedure: &Procedure, provider: &P) -> bool {
        let Some(list) = self.map.get_mut(procedure) else { return false };
        let Some(i) = list.iter().position(|p| p == provider) else { return false };
        list.swap_remove(i);
        if list.is_empty() {
            self.map.remove(procedure);
        }
        self.len -= 1;
        true
    }

    /// The providers of the procedure named `name` (empty if none).
    pub fn providers(&self, name: &[u8]) -> &[P] {
        self.map.get(name).map_or(&[], Vec::as_slice)
    }

    /// Names with at least one provider.
    pub fn procedures(&self) -> impl Iterator<Item = &Procedure> {
        self.map.keys()
    }
}

impl Borrow<[u8]> for Procedure {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::{pick_two, pick_weighted, Procedure, Registry, Rng};
    use proptest::prelude::{prop_assert, proptest};

    #[test]
    fn weighted_picks_follow_the_weights() {
        let mut rng = Rng::new(9);
        let mut counts = [0u32; 3];
        for _ in 0..60_000 {
            match pick_weighted(&[(1usize, 1), (2, 3)], 2, &mut rng) {
                None => counts[0] += 1,
                Some(n) => counts[n] += 1,
            }
        }
        // Weights 2 (local), 1 and 3: a third, a sixth and a half of the picks.
        assert!((19_000..21_000).contains(&counts[0]), "{counts:?}");
        assert!((9_000..11_000).contains(&counts[1]), "{counts:?}");
        assert!((29_000..31_000).contains(&counts[2]), "{counts:?}");
        assert_eq!(pick_weighted::<usize>(&[], 0, &mut rng), None);
        assert_eq!(pick_weighted(&[(7usize, 0)], 0, &mut rng), None);
        assert_eq!(pick_weighted(&[(7usize, 1)], 0, &mut rng), Some(7));
    }

    #[test]
    fn equal_loads_spread_evenly() {
        let mut rng = Rng::new(7);
        let mut hits = [0u32; 3];
        for _ in 0..30_000 {
            hits[pick_two(3, &mut rng, |_| 0).unwrap()] += 1;
        }
        for h in hits {
            assert!((9_000..11_000).contains(&h), "{hits:?}");
        }
    }

    #[test]
    fn the_most_loaded_is_never_chosen_among_several() {
        let mut rng = Rng::new(1);
        for _ in 0..10_000 {
            let i = pick_two(4, &mut rng, |i| if i == 2 { 100 } else { 1 }).unwrap();
            assert_ne!(i, 2);
        }
        assert_eq!(pick_two(0, &mut rng, |_| 0), None);
        assert_eq!(pick_two(1, &mut rng, |_| 9), Some(0));
    }

    proptest! {
        #[test]
        fn the_unique_most_loaded_never_wins(n in 1usize..50, seed: u64, loads in proptest::collection::vec(0u64..10, 50)) {
            let mut rng = Rng::new(seed);
            let i = pick_two(n, &mut rng, |i| loads[i]).unwrap();
            prop_assert!(i < n);
            if n >= 2 {
                // The single most loaded candidate can never win a comparison.
                let max = loads[..n].iter().max().copied().unwrap();
                if loads[..n].iter().filter(|l| **l == max).count() == 1 {
                    prop_assert!(loads[i] < max);
                }
            }
        }
    }

    #[test]
    fn registry_insert_remove() {
        let mut r = Registry::new();
        let add = Procedure::new("math.add").unwrap();
        r.insert(&add, 1);
        r.insert(&add, 2);
        assert_eq!(r.providers(b"math.add"), &[1, 2]);
        assert!(r.remove(&add, &1));
        assert!(!r.remove(&add, &1));
        assert!(r.remove(&add, &2));
        assert!(r.providers(b"math.add").is_empty());
        assert!(r.is_empty());
        assert_eq!(r.procedures().count(), 0);
    }
}
