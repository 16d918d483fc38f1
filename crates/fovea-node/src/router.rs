//! Routing state shared by all connection tasks of a node, and the per-connection match
//! cache that keeps the shared state off the hot path.
//!
//! Each realm has one subscription trie behind a `RwLock`, written only when a
//! subscription starts or ends, and a generation counter bumped after every write. A
//! publishing connection's task routes its own messages: it looks the topic up in its
//! private [`MatchCache`], which is valid while the generation is unchanged, so a steady
//! stream of publishes touches no lock and no shared cache line except one atomic load.
//! This is principle 1: no process, task or lock that every message crosses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use foldhash::fast::RandomState;
use fovea_core::{Pattern, SubTrie, Topic, TopicError};

use crate::outbound::Outbound;

/// One subscription as the router sees it: where to deliver, and under which id.
#[derive(Clone)]
pub(crate) struct SubRef {
    pub out: Arc<Outbound>,
    pub sid: u64,
}

impl PartialEq for SubRef {
    fn eq(&self, other: &Self) -> bool {
        self.sid == other.sid && Arc::ptr_eq(&self.out, &other.out)
    }
}

/// A realm's routing state.
pub(crate) struct Realm {
    pub name: String,
    subs: RwLock<SubTrie<SubRef>>,
    generation: AtomicU64,
}

impl Realm {
    pub fn new(name: impl Into<String>) -> Self {
        Realm { name: name.into(), subs: RwLock::new(SubTrie::new()), generation: AtomicU64::new(0) }
    }

    pub fn subscribe(&self, pattern: &Pattern, sub: SubRef) {
        let mut trie = self.subs.write().unwrap_or_else(PoisonError::into_inner);
        trie.insert(pattern, sub);
        // Release pairs with the Acquire in MatchCache::lookup: a task that sees the new
        // generation sees the new trie when it next takes the read lock.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Removes subscriptions; one lock and one generation bump for the whole batch.
    pub fn unsubscribe<'a>(&self, subs: impl IntoIterator<Item = (&'a Pattern, SubRef)>) {
        let mut trie = self.subs.write().unwrap_or_else(PoisonError::into_inner);
        for (pattern, sub) in subs {
            trie.remove(pattern, &sub);
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Number of subscriptions in the realm.
    pub fn subscription_count(&self) -> usize {
        self.subs.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn lookup(&self, topic: &Topic) -> Arc<[SubRef]> {
        let trie = self.subs.read().unwrap_or_else(PoisonError::into_inner);
        let mut found = Vec::new();
        trie.for_each_match(topic, |s| found.push(s.clone()));
        found.into()
    }
}

/// A connection's private map from topic to its subscribers.
///
/// Invariant: every entry was computed at generation `generation` or later; the whole map
/// is dropped when the realm's generation moves on, and when it reaches `cap` entries.
pub(crate) struct MatchCache {
    generation: u64,
    map: HashMap<Bytes, Arc<[SubRef]>, RandomState>,
    cap: usize,
}

impl MatchCache {
    pub fn new(cap: usize) -> Self {
        MatchCache { generation: u64::MAX, map: HashMap::default(), cap: cap.max(1) }
    }

    /// The subscribers of `raw`, validating the topic on a miss (a hit was valid before).
    pub fn lookup(&mut self, realm: &Realm, raw: &Bytes) -> Result<Arc<[SubRef]>, TopicError> {
        let generation = realm.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.map.clear();
            self.generation = generation;
        }
        if let Some(hit) = self.map.get(&raw[..]) {
            return Ok(hit.clone());
        }
        // Copy the key: `raw` is a slice of a read buffer that must not be pinned.
        let topic = Topic::from_bytes(Bytes::copy_from_slice(raw))?;
        let subs = realm.lookup(&topic);
        if self.map.len() >= self.cap {
            self.map.clear();
        }
        self.map.insert(topic.as_shared().clone(), subs.clone());
        Ok(subs)
    }
}
