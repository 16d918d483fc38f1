//! The routing table: 256 k-buckets of contacts, least recently seen first.

use std::net::SocketAddr;
use std::time::Instant;

use super::id::NodeId;

/// A node as the DHT knows it: its id and where its mesh endpoint listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Contact {
    pub id: NodeId,
    pub addr: SocketAddr,
}

/// What [`RoutingTable::seen`] did with a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// New, and there was room.
    Added,
    /// Already known: moved to the most recently seen end (its address updated).
    Refreshed,
    /// The bucket is full. The newcomer waits as the bucket's replacement; ping `check`,
    /// the least recently seen entry, and report the outcome with [`RoutingTable::seen`]
    /// or [`RoutingTable::failed`]. Kademlia keeps old contacts that still answer: nodes
    /// that have been up long tend to stay up.
    Full { check: Contact },
    /// The table's own id.
    Ignored,
}

#[derive(Debug, Clone)]
struct Entry {
    contact: Contact,
    /// Requests in a row that went unanswered.
    failures: u8,
}

#[derive(Debug, Clone)]
struct Bucket {
    /// At most `k`, least recently seen first.
    entries: Vec<Entry>,
    /// The newest contact that found the bucket full.
    replacement: Option<Contact>,
    /// The last time a lookup went through this bucket's range (for refresh).
    touched: Instant,
}

/// Contacts by distance from `local`, bucket `i` holding ids whose distance has its
/// highest set bit at `i`.
///
/// Invariants: at most `k` entries per bucket, no duplicate ids, never `local`. Memory is
/// bounded by `256 × (k + 1)` contacts.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    local: NodeId,
    k: usize,
    max_failures: u8,
    buckets: Vec<Bucket>,
}

impl RoutingTable {
    /// An empty table around `local`. A contact is dropped after `max_failures`
    /// unanswered requests in a row.
    pub fn new(local: NodeId, k: usize, max_failures: u8, now: Instant) -> Self {
        let bucket = Bucket { entries: Vec::new(), replacement: None, touched: now };
        RoutingTable { local, k: k.max(1), max_failures: max_failures.max(1), buckets: vec![bucket; 256] }
    }

    /// The table's own id.
    pub fn local(&self) -> NodeId {
        self.local
    }

    /// Contacts held.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.entries.len()).sum()
    }

    /// Whether no contact is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(|b| b.entries.is_empty())
    }

    /// Whether `id` is in the table.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.local.bucket_of(id).is_some_and(|b| self.buckets[b].entries.iter().any(|e| e.contact.id == *id))
    }

    /// Records that `contact` was heard from (a request or an answer).
    pub fn seen(&mut self, contact: Contact) -> Insert {
        let Some(b) = self.local.bucket_of(&contact.id) else { return Insert::Ignored };
        let k = self.k;
        let bucket = &mut self.buckets[b];
        if let Some(i) = bucket.entries.iter().position(|e| e.contact.id == contact.id) {
            let mut e = bucket.entries.remove(i);
            e.contact = contact;
            e.failures = 0;
            bucket.entries.push(e);
            return Insert::Refreshed;
        }
        if bucket.entries.len() < k {
            bucket.entries.push(Entry { contact, failures: 0 });
            if bucket.replacement.is_some_and(|r| r.id == contact.id) {
                bucket.replacement = None;
            }
            return Insert::Added;
        }
        bucket.replacement = Some(contact);
        // Invariant: a full bucket has k ≥ 1 entries.
        match bucket.entries.first() {
            Some(e) => Insert::Full { check: e.contact },
            None => Insert::Ignored,
        }
    }

    /// Records an unanswered request to `id`. After `max_failures` in a row the contact
    /// is dropped and the bucket's replacement, if any, takes its place. Returns whether
    /// the contact was dropped.
    pub fn failed(&mut self, id: &NodeId) -> bool {
        let Some(b) = self.local.bucket_of(id) else { return false };
        let max = self.max_failures;
        let bucket = &mut self.buckets[b];
        let Some(i) = bucket.entries.iter().position(|e| e.contact.id == *id) else { return false };
        bucket.entries[i].failures = bucket.entries[i].failures.saturating_add(1);
        if bucket.entries[i].failures < max {
            return false;
        }
        bucket.entries.remove(i);
        if let Some(r) = bucket.replacement.take() {
            bucket.entries.push(Entry { contact: r, failures: 0 });
        }
        true
    }

    /// Removes `id` at once (the node layer learned it is gone). Returns whether it was held.
    pub fn remove(&mut self, id: &NodeId) -> bool {
        let Some(b) = self.local.bucket_of(id) else { return false };
        let bucket = &mut self.buckets[b];
        let before = bucket.entries.len();
        bucket.entries.retain(|e| e.contact.id != *id);
        if bucket.replacement.is_some_and(|r| r.id == *id) {
            bucket.replacement = None;
        }
        let removed = bucket.entries.len() != before;
        if removed {
            if let Some(r) = bucket.replacement.take() {
                bucket.entries.push(Entry { contact: r, failures: 0 });
            }
        }
        removed
    }

    /// Up to `n` contacts closest to `target`, closest first. Scans every bucket: at most
    /// 256 × k entries, a few microseconds, and only per lookup step, never per message.
    pub fn closest(&self, target: &NodeId, n: usize) -> Vec<Contact> {
        let mut all: Vec<Contact> = self.buckets.iter().flat_map(|b| b.entries.iter().map(|e| e.contact)).collect();
        all.sort_unstable_by_key(|c| c.id.distance(target));
        all.truncate(n);
        all
    }

    /// Marks the bucket covering `target` as just looked up.
    pub fn touch(&mut self, target: &NodeId, now: Instant) {
        if let Some(b) = self.local.bucket_of(target) {
            self.buckets[b].touched = now;
        }
    }

    /// Buckets due for a refresh: not looked up through for `interval`, between one
    /// nearer than the nearest non-empty bucket and one past the farthest (buckets are
    /// numbered from the nearest, 0, out). Nearer ones are closer than any node of the
    /// mesh (a lookup of this node's own id covers them); refreshing all 256 would start
    /// ~250 lookups per node at once in a large mesh.
    pub fn stale_buckets(&self, now: Instant, interval: std::time::Duration) -> Vec<usize> {
        let Some(near) = self.buckets.iter().position(|b| !b.entries.is_empty()) else { return Vec::new() };
        let far = self.buckets.iter().rposition(|b| !b.entries.is_empty()).map_or(near, |i| (i + 1).min(255));
        (near.saturating_sub(1)..=far)
            .filter(|&i| now.saturating_duration_since(self.buckets[i].touched) >= interval)
            .collect()
    }

    /// Every contact, for diagnostics.
    pub fn contacts(&self) -> impl Iterator<Item = &Contact> {
        self.buckets.iter().flat_map(|b| b.entries.iter().map(|e| &e.contact))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Rng;

    fn contact(id: NodeId) -> Contact {
        Contact { id, addr: "127.0.0.1:1".parse().unwrap() }
    }

    #[test]
    fn only_buckets_around_the_known_nodes_are_refreshed() {
        let now = Instant::now();
        let mut rng = Rng::new(9);
        let local = NodeId([0; 32]);
        let mut table = RoutingTable::new(local, 20, 1, now);
        assert!(table.stale_buckets(now, std::time::Duration::ZERO).is_empty(), "nothing known, nothing to refresh");
        for b in [240, 247, 255] {
            table.seen(contact(local.random_in_bucket(b, &mut rng)));
        }
        let later = now + std::time::Duration::from_secs(1);
        assert_eq!(table.stale_buckets(later, std::time::Duration::ZERO), (239..=255).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_bucket_keeps_old_contacts_that_answer_and_replaces_dead_ones() {
        let now = Instant::now();
        let mut rng = Rng::new(7);
        let local = NodeId([0; 32]);
        let mut table = RoutingTable::new(local, 2, 1, now);
        // Three ids in bucket 255 (top bit set).
        let ids: Vec<NodeId> = (0..3).map(|_| local.random_in_bucket(255, &mut rng)).collect();
        assert_eq!(table.seen(contact(ids[0])), Insert::Added);
        assert_eq!(table.seen(contact(ids[1])), Insert::Added);
        assert_eq!(table.seen(contact(ids[2])), Insert::Full { check: contact(ids[0]) });
        // The oldest answers: it stays, now most recent; the newcomer waits.
        assert_eq!(table.seen(contact(ids[0])), Insert::Refreshed);
        assert!(!table.contains(&ids[2]));
        // The (new) oldest fails: the waiting newcomer takes its place.
        assert!(table.failed(&ids[1]));
        assert!(table.contains(&ids[2]) && table.contains(&ids[0]) && !table.contains(&ids[1]));
        assert_eq!(table.len(), 2);
        assert_eq!(table.seen(contact(local)), Insert::Ignored);
    }

    #[test]
    fn closest_is_sorted_by_distance() {
        let now = Instant::now();
        let mut rng = Rng::new(3);
        let local = NodeId::from_rng(&mut rng);
        let mut table = RoutingTable::new(local, 20, 2, now);
        for _ in 0..500 {
            table.seen(contact(NodeId::from_rng(&mut rng)));
        }
        let target = NodeId::from_rng(&mut rng);
        let got = table.closest(&target, 20);
        assert_eq!(got.len(), 20);
        assert!(got.windows(2).all(|w| w[0].id.distance(&target) <= w[1].id.distance(&target)));
        // Nothing held is closer than the last one returned.
        let worst = got[19].id.distance(&target);
        let closer = table.contacts().filter(|c| c.id.distance(&target) < worst).count();
        assert_eq!(closer, 19);
    }
}
