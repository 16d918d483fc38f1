//! Records this node holds for others: bounded, each with an expiry, reaped incrementally.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use bytes::Bytes;

use super::id::{Key, NodeId};
use crate::hashing::State;

/// One value stored under a key by one publisher (the node that owns it and republishes
/// it). A key holds at most one record per publisher: a provider record per node
/// offering a procedure, an interest record per node subscribed under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Key,
    pub publisher: NodeId,
    /// Opaque to the DHT (the node layer puts the publisher's address and what it
    /// offers here). Bounded by the codec.
    pub value: Bytes,
    pub expires: Instant,
}

/// Why a record was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The store holds its maximum number of records.
    Full,
}

/// Records by key. Limits: `max_records` in all (a new key is refused at the limit, and
/// counted by the caller) and `max_per_key` per key (the record expiring soonest makes
/// room). Expired records are removed by [`RecordStore::expire`], which pops a heap of
/// expiries: no full scans.
#[derive(Debug)]
pub struct RecordStore {
    map: HashMap<Key, Vec<Record>, State>,
    /// (expiry, key, publisher) for every stored record; entries whose record changed
    /// since are skipped when popped.
    expiries: BinaryHeap<Reverse<(Instant, Key, NodeId)>>,
    len: usize,
    max_records: usize,
    max_per_key: usize,
}

impl RecordStore {
    /// An empty store with these limits.
    pub fn new(max_records: usize, max_per_key: usize) -> Self {
        RecordStore {
            map: HashMap::default(),
            expiries: BinaryHeap::new(),
            len: 0,
            max_records: max_records.max(1),
            max_per_key: max_per_key.max(1),
        }
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `record`, replacing the publisher's previous record under the same key.
    /// Returns whether this changed what the key holds (a new publisher, or a new value):
    /// what watchers must be told of. A refresh of the same value is not a change.
    ///
    /// # Errors
    /// [`StoreError::Full`] at `max_records` when the record would add to the count.
    pub fn put(&mut self, record: Record, now: Instant) -> Result<bool, StoreError> {
        if record.expires <= now {
            return Ok(false);
        }
        let adds = !self.map.get(&record.key).is_some_and(|v| v.iter().any(|r| r.publisher == record.publisher));
        if adds && self.len >= self.max_records {
            self.expire(now);
            if self.len >= self.max_records {
                return Err(StoreError::Full);
            }
        }
        let entry = self.map.entry(record.key).or_default();
        self.expiries.push(Reverse((record.expires, record.key, record.publisher)));
        if let Some(old) = entry.iter_mut().find(|r| r.publisher == record.publisher) {
            let changed = old.value != record.value || old.expires <= now;
            *old = record;
            return Ok(changed);
        }
        if entry.len() >= self.max_per_key {
            // Make room: the record that would expire first goes.
            if let Some(i) = entry.iter().enumerate().min_by_key(|(_, r)| r.expires).map(|(i, _)| i) {
                entry.swap_remove(i);
                self.len -= 1;
            }
        }
        entry.push(record);
        self.len += 1;
        Ok(true)
    }

    /// The live records under `key`.
    pub fn get(&self, key: &Key, now: Instant) -> Vec<Record> {
        self.map.get(key).map(|v| v.iter().filter(|r| r.expires > now).cloned().collect()).unwrap_or_default()
    }

    /// Removes the publisher's record under `key` (it withdrew it). Returns whether one was held.
    pub fn remove(&mut self, key: &Key, publisher: &NodeId) -> bool {
        let Some(v) = self.map.get_mut(key) else { return false };
        let before = v.len();
        v.retain(|r| r.publisher != *publisher);
        let removed = before - v.len();
        if v.is_empty() {
            self.map.remove(key);
        }
        self.len -= removed;
        removed > 0
    }

    /// Drops records that expired by `now`. Returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        while let Some(Reverse((at, key, publisher))) = self.expiries.peek().copied() {
            if at > now {
                break;
            }
            self.expiries.pop();
            let Some(v) = self.map.get_mut(&key) else { continue };
            // Only if the record still carries this expiry (not replaced by a fresher one).
            let before = v.len();
            v.retain(|r| !(r.publisher == publisher && r.expires == at));
            let n = before - v.len();
            if v.is_empty() {
                self.map.remove(&key);
            }
            self.len -= n;
            dropped += n;
        }
        // Stale heap entries (replaced records) are bounded by puts since the last reap;
        // rebuild when they dominate so the heap stays proportional to the store.
        if self.expiries.len() > 2 * self.len + 1024 {
            let mut fresh = BinaryHeap::with_capacity(self.len);
            for r in self.map.values().flatten() {
                fresh.push(Reverse((r.expires, r.key, r.publisher)));
            }
            self.expiries = fresh;
        }
        dropped
    }

    /// When the next record expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiries.peek().map(|Reverse((at, _, _))| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Rng;
    use std::time::Duration;

    fn rec(key: Key, publisher: NodeId, expires: Instant) -> Record {
        Record { key, publisher, value: Bytes::from_static(b"v"), expires }
    }

    #[test]
    fn limits_replacement_and_expiry() {
        let now = Instant::now();
        let mut rng = Rng::new(9);
        let (k1, k2) = (NodeId::from_rng(&mut rng), NodeId::from_rng(&mut rng));
        let pubs: Vec<NodeId> = (0..4).map(|_| NodeId::from_rng(&mut rng)).collect();
        let mut s = RecordStore::new(3, 2);
        let t = |secs| now + Duration::from_secs(secs);
        s.put(rec(k1, pubs[0], t(10)), now).unwrap();
        assert_eq!(s.put(rec(k1, pubs[0], t(20)), now), Ok(false)); // same value: refreshed, not added
        assert_eq!(s.len(), 1);
        s.put(rec(k1, pubs[1], t(5)), now).unwrap();
        // Per-key limit 2: the soonest-expiring record of k1 makes room.
        s.put(rec(k1, pubs[2], t(30)), now).unwrap();
        let held: Vec<NodeId> = s.get(&k1, now).iter().map(|r| r.publisher).collect();
        assert!(held.contains(&pubs[0]) && held.contains(&pubs[2]) && !held.contains(&pubs[1]));
        s.put(rec(k2, pubs[3], t(15)), now).unwrap();
        assert_eq!(s.len(), 3);
        // Full: a new record is refused…
        assert_eq!(s.put(rec(k2, pubs[0], t(15)), now), Err(StoreError::Full));
        // …until expiry frees room. The replaced k1/pubs[0] entry expiring at 10 s is stale.
        assert_eq!(s.expire(t(16)), 1);
        assert_eq!(s.len(), 2);
        assert!(s.get(&k2, t(16)).is_empty());
        s.put(rec(k2, pubs[0], t(40)), t(16)).unwrap();
        assert_eq!(s.expire(t(100)), 3);
        assert!(s.is_empty());
    }
}
