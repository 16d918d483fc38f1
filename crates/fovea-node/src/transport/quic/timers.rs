//! The endpoint's deadlines: one heap for all its connections instead of a timer each.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use super::conn::ConnShared;

/// Above this many entries per live connection (plus a floor) the heap is compacted.
const STALE_FACTOR: usize = 4;
const STALE_FLOOR: usize = 1024;

/// Deadlines of connections, earliest first.
///
/// A connection queues a deadline only when it is earlier than the one it already has
/// here ([`ConnShared`] remembers it); a later deadline waits for the earlier entry to
/// fire, which finds nothing due and queues the real one. Entries that went stale that
/// way (and those of connections since dropped) fire harmlessly; to bound them, the heap
/// keeps only the earliest entry per connection whenever it grows past
/// [`STALE_FACTOR`] × the connections plus [`STALE_FLOOR`].
#[derive(Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<Entry>>,
}

struct Entry {
    at: Instant,
    conn: Weak<ConnShared>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at.cmp(&other.at)
    }
}

impl Timers {
    /// Queues `conn`'s deadline `at`; `true` if it is now the earliest (the driver, asleep
    /// until the previous earliest, must be woken).
    pub(super) fn push(&mut self, at: Instant, conn: Weak<ConnShared>, live: usize) -> bool {
        let first = self.heap.peek().is_none_or(|Reverse(e)| at < e.at);
        self.heap.push(Reverse(Entry { at, conn }));
        if self.heap.len() > STALE_FACTOR * live + STALE_FLOOR {
            self.compact();
        }
        first
    }

    /// The earliest deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Moves the entries due at `now` into `out`, with their deadlines.
    pub(super) fn pop_due(&mut self, now: Instant, out: &mut Vec<(Arc<ConnShared>, Instant)>) {
        while self.heap.peek().is_some_and(|Reverse(e)| e.at <= now) {
            if let Some(Reverse(e)) = self.heap.pop() {
                if let Some(c) = e.conn.upgrade() {
                    out.push((c, e.at));
                }
            }
        }
    }

    /// Entries, stale ones included.
    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Keeps the earliest entry of each connection still alive.
    fn compact(&mut self) {
        let mut entries: Vec<Entry> = std::mem::take(&mut self.heap).into_iter().map(|Reverse(e)| e).collect();
        entries.retain(|e| e.conn.strong_count() > 0);
        entries.sort_by(|a, b| a.conn.as_ptr().cmp(&b.conn.as_ptr()).then(a.at.cmp(&b.at)));
        entries.dedup_by(|later, earlier| later.conn.ptr_eq(&earlier.conn));
        self.heap = entries.into_iter().map(Reverse).collect();
    }
}
