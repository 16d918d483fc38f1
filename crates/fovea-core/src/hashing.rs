//! The hasher of core's maps and sets: foldhash, seeded at random for each map (as
//! `foldhash::fast::RandomState`: keys come from the network, and a fixed seed would let
//! a peer choose colliding ones) unless the process asked for fixed seeds with
//! [`use_fixed_seeds`].
//!
//! Fixed seeds are for the simulator (`fovea-sim`): the order in which a map yields its
//! entries decides the order of messages, so with random seeds two runs of the same seed
//! differ. A node never calls it.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};

use foldhash::fast::SeedableRandomState;

static FIXED: AtomicBool = AtomicBool::new(false);

/// Makes every map and set core creates from now on in this process hash with the same
/// fixed seed, so that a simulation run is the same each time. Not for a node: see the
/// module's documentation.
pub fn use_fixed_seeds() {
    FIXED.store(true, Ordering::Relaxed);
}

/// A map of core's ([`State`]-hashed).
pub type Map<K, V> = HashMap<K, V, State>;
/// A set of core's ([`State`]-hashed).
pub type Set<T> = HashSet<T, State>;

/// See the module's documentation.
#[derive(Clone, Debug)]
pub struct State(SeedableRandomState);

impl Default for State {
    fn default() -> Self {
        if FIXED.load(Ordering::Relaxed) {
            State(SeedableRandomState::fixed())
        } else {
            State(SeedableRandomState::random())
        }
    }
}

impl BuildHasher for State {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    #[inline(always)]
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_seeds_differ_per_map_and_fixed_ones_do_not() {
        // Only this test in core's unit tests sets fixed seeds, and after its first check.
        let a = State::default().hash_one(42u64);
        let b = State::default().hash_one(42u64);
        assert_ne!(a, b);
        use_fixed_seeds();
        assert_eq!(State::default().hash_one(42u64), State::default().hash_one(42u64));
        FIXED.store(false, Ordering::Relaxed);
    }
}
