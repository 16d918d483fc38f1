//! Deadlines for a table whose entries nearly always end before their deadline: calls in
//! flight, which answer in microseconds against timeouts of seconds.
//!
//! A timing wheel (`tokio_util`'s `DelayQueue`) files each entry and unfiles it when it
//! ends: two wheel operations per call, ~1 200 instructions of the node's ~8 900 per
//! RPC (`scripts/profile.sh instructions rpc`). [`Deadlines`] files an entry in a
//! min-heap and leaves it there when it ends: an entry counts only while the owner's table
//! still holds its key with that deadline, which [`Deadlines::pop_expired`] asks. Entries
//! arriving in deadline order (equal timeouts) cost one comparison each.
//!
//! Bound: the owner calls [`Deadlines::rebuild`] whenever [`Deadlines::needs_rebuild`]
//! says so after a push, so the heap never holds more than `2 × live +`
//! [`REBUILD_SLACK`] entries, `live` being the table's size at the last push (so at most
//! twice the table's own bound, plus the slack); filings of ended entries also leave as
//! their deadlines pass. A rebuild is `O(live)` and comes at most once per `live +
//! REBUILD_SLACK` pushes, so pushes stay `O(log n)` amortised.
//!
//! Time is the owner's type (`std::time::Instant` in the node, integers in tests): this
//! crate has no clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// How far a deadline may lie: a timeout too large for the clock (`Duration::MAX`) means
/// "not in this process's lifetime". Owners cap a timeout at this before adding it to
/// their clock, so the sum cannot overflow a monotonic clock in practice.
pub const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Stale entries tolerated beyond the live ones before a rebuild, so that a small table
/// is not rebuilt on every other push.
pub const REBUILD_SLACK: usize = 64;

/// Deadlines of the keys of one table. `T` is a point in time, `K` a key of the table.
#[derive(Debug, Clone)]
pub struct Deadlines<T, K> {
    heap: BinaryHeap<Reverse<(T, K)>>,
}

impl<T: Ord + Copy, K: Ord + Copy> Default for Deadlines<T, K> {
    fn default() -> Self {
        Deadlines { heap: BinaryHeap::new() }
    }
}

impl<T: Ord + Copy, K: Ord + Copy> Deadlines<T, K> {
    /// Files `key`'s deadline. A key filed again (a new entry under a reused key) keeps its
    /// old filing too; [`Deadlines::pop_expired`] tells them apart by the deadline.
    pub fn push(&mut self, at: T, key: K) {
        self.heap.push(Reverse((at, key)));
    }

    /// Whether the heap has outgrown a table of `live` entries (see the module's bound).
    pub fn needs_rebuild(&self, live: usize) -> bool {
        self.heap.len() > live.saturating_mul(2).saturating_add(REBUILD_SLACK)
    }

    /// Replaces every filing with the table's live entries: `(deadline, key)` of each.
    pub fn rebuild(&mut self, live: impl IntoIterator<Item = (T, K)>) {
        let mut v = std::mem::take(&mut self.heap).into_vec();
        v.clear();
        v.extend(live.into_iter().map(Reverse));
        self.heap = BinaryHeap::from(v);
    }

    /// The earliest deadline filed, possibly of an entry that has ended: a timer set to
    /// it fires no later than the earliest live deadline.
    pub fn next(&self) -> Option<T> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// The earliest live deadline (`is_live` as for [`Deadlines::pop_expired`]), dropping
    /// the ended filings ahead of it.
    ///
    /// Where to set the timer after it fired: re-arming to [`Deadlines::next`] instead
    /// would chase the filings of calls answered long ago, one timer tick after another
    /// (every call filed a deadline one timeout after it started), for as long as calls
    /// keep coming. Each filing is dropped once, so the cost is that of the pops a
    /// rebuild would otherwise have saved.
    pub fn next_live(&mut self, mut is_live: impl FnMut(K, T) -> bool) -> Option<T> {
        while let Some(Reverse((at, key))) = self.heap.peek().copied() {
            if is_live(key, at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Takes filings due by `now`, earliest first, until one is live by `is_live(key,
    /// deadline)` (the table holds `key` with that deadline), and returns that key; `None`
    /// once nothing due is left. The caller removes the key from its table.
    pub fn pop_expired(&mut self, now: T, mut is_live: impl FnMut(K, T) -> bool) -> Option<K> {
        while let Some(Reverse((at, key))) = self.heap.peek().copied() {
            if at > now {
                return None;
            }
            self.heap.pop();
            if is_live(key, at) {
                return Some(key);
            }
        }
        None
    }

    /// Forgets every filing.
    pub fn clear(&mut self) {
        self.heap.clear();
    }

    /// Filings held, live or not.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is filed.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The owner's side as the node does it: push, rebuild when told.
    fn start(d: &mut Deadlines<u64, u64>, table: &mut BTreeMap<u64, u64>, key: u64, at: u64) {
        table.insert(key, at);
        d.push(at, key);
        if d.needs_rebuild(table.len()) {
            d.rebuild(table.iter().map(|(k, at)| (*at, *k)));
        }
    }

    fn expire(d: &mut Deadlines<u64, u64>, table: &mut BTreeMap<u64, u64>, now: u64) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(k) = d.pop_expired(now, |k, at| table.get(&k) == Some(&at)) {
            table.remove(&k);
            out.push(k);
        }
        out
    }

    #[test]
    fn ended_entries_never_expire_and_live_ones_do_in_deadline_order() {
        let (mut d, mut t) = (Deadlines::default(), BTreeMap::new());
        start(&mut d, &mut t, 1, 30);
        start(&mut d, &mut t, 2, 10);
        start(&mut d, &mut t, 3, 20);
        t.remove(&2); // answered before its deadline
        assert_eq!(d.next(), Some(10), "a stale filing may still set the timer");
        assert_eq!(expire(&mut d, &mut t, 25), vec![3]);
        assert_eq!(expire(&mut d, &mut t, 25), Vec::<u64>::new());
        assert_eq!(expire(&mut d, &mut t, 30), vec![1]);
        assert!(d.is_empty());
    }

    #[test]
    fn the_timer_is_rearmed_to_the_earliest_live_deadline_not_to_ended_filings() {
        // Calls answered at once, one per tick, each filing a deadline 1 000 ticks out;
        // one call (key 500) still in flight. No rebuild between (as between two rebuilds
        // of a table with many calls in flight).
        let (mut d, mut t) = (Deadlines::default(), BTreeMap::new());
        for i in 0..2_000u64 {
            d.push(i + 1_000, i);
            if i == 500 {
                t.insert(i, i + 1_000);
            }
        }
        // The timer fires at the first filing's deadline: nothing live is due.
        assert_eq!(expire(&mut d, &mut t, 1_000), Vec::<u64>::new());
        assert_eq!(d.next(), Some(1_001), "re-armed by next(), it would fire again a tick later");
        let is_live = |k: u64, at: u64| t.get(&k) == Some(&at);
        assert_eq!(d.next_live(is_live), Some(1_500));
        assert_eq!(d.next(), Some(1_500), "the ended filings ahead of it are gone");
        t.remove(&500);
        assert_eq!(d.next_live(|k, at| t.get(&k) == Some(&at)), None);
        assert!(d.is_empty());
    }

    #[test]
    fn a_reused_key_expires_by_its_new_deadline_only() {
        let (mut d, mut t) = (Deadlines::default(), BTreeMap::new());
        start(&mut d, &mut t, 7, 10);
        t.remove(&7);
        start(&mut d, &mut t, 7, 50);
        assert_eq!(expire(&mut d, &mut t, 20), Vec::<u64>::new(), "the old filing is stale");
        assert_eq!(expire(&mut d, &mut t, 50), vec![7]);
    }

    #[test]
    fn a_long_run_of_answered_calls_keeps_the_heap_bounded() {
        // At most 65 in flight at a push (64 plus the new one).
        let (mut d, mut t) = (Deadlines::default(), BTreeMap::new());
        for i in 0..100_000u64 {
            start(&mut d, &mut t, i, i + 1_000);
            if i >= 64 {
                t.remove(&(i - 64)); // 64 in flight, each answered 64 calls later
            }
            assert!(d.len() <= 2 * 65 + REBUILD_SLACK, "{} filings for {} calls", d.len(), t.len());
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Start { key: u64, timeout: u64 },
        End { key: u64 },
        Advance { by: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..40u64, 0..100u64).prop_map(|(key, timeout)| Op::Start { key, timeout }),
            (0..40u64).prop_map(|key| Op::End { key }),
            (0..50u64).prop_map(|by| Op::Advance { by }),
        ]
    }

    proptest! {
        /// Against a model that scans the whole table: at every point in time exactly the
        /// live entries past their deadline expire, each once, and the heap stays bounded.
        #[test]
        fn expiry_matches_a_full_scan(ops in proptest::collection::vec(op(), 1..300)) {
            let (mut d, mut t) = (Deadlines::default(), BTreeMap::new());
            let (mut now, mut at_push) = (0u64, 0usize);
            for op in ops {
                match op {
                    Op::Start { key, timeout } => {
                        if !t.contains_key(&key) {
                            start(&mut d, &mut t, key, now + timeout);
                            at_push = t.len();
                        }
                    }
                    Op::End { key } => { t.remove(&key); }
                    Op::Advance { by } => now += by,
                }
                let mut due: Vec<u64> = t.iter().filter(|(_, at)| **at <= now).map(|(k, _)| *k).collect();
                let mut got = expire(&mut d, &mut t, now);
                due.sort_unstable();
                got.sort_unstable();
                prop_assert_eq!(got, due);
                prop_assert!(d.len() <= 2 * at_push + REBUILD_SLACK);
                if let Some(earliest) = t.values().min() {
                    prop_assert!(d.next().is_some_and(|n| n <= *earliest), "the timer would fire late");
                }
                if now % 3 == 0 {
                    let live = d.next_live(|k, at| t.get(&k) == Some(&at));
                    prop_assert_eq!(live, t.values().min().copied());
                }
            }
        }
    }
}
