//! The subscription index: a trie of topic segments with `*` and `>` branches.
//!
//! Matching a topic of depth `d` visits at most the nodes on the paths that the topic can
//! take through literal and `*` branches, so its cost grows with `d` and with the number
//! of matching patterns, never with the number of subscriptions. Matches are reported
//! through a callback: no allocation per match.
//!
//! ```text
//!           root
//!          /    \
//!        "a"    "*" ──── here: [sub for `*`]
//!        /  \      \
//!     "b"   gt:[a.>] "c" ── here: [sub for `*.c`]
//!   here:[a.b]
//! ```
//!
//! Invariant: no node is empty except the root; removal prunes nodes on the way back up,
//! so memory is proportional to the live subscriptions.

use std::collections::HashMap;

use crate::hashing::State;
use crate::limits::MAX_TOPIC_DEPTH;
use crate::topic::{Pattern, Segment, Topic};

/// A set of `(pattern, value)` subscriptions, searchable by topic.
///
/// The same value may appear under several patterns, and under one pattern several times;
/// [`SubTrie::remove`] removes one occurrence.
#[derive(Debug)]
pub struct SubTrie<V> {
    root: Node<V>,
    len: usize,
}

#[derive(Debug)]
struct Node<V> {
    literal: HashMap<Box<[u8]>, Node<V>, State>,
    star: Option<Box<Node<V>>>,
    /// Values of patterns that end at this node.
    here: Vec<V>,
    /// Values of patterns that end with `>` at this node.
    gt: Vec<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node { literal: HashMap::default(), star: None, here: Vec::new(), gt: Vec::new() }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.star.is_none() && self.here.is_empty() && self.gt.is_empty()
    }
}

impl<V> Default for SubTrie<V> {
    fn default() -> Self {
        SubTrie { root: Node::default(), len: 0 }
    }
}

impl<V: PartialEq> SubTrie<V> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the trie holds no subscription.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a subscription of `value` to `pattern`.
    pub fn insert(&mut self, pattern: &Pattern, value: V) {
        let mut node = &mut self.root;
        for seg in pattern.segments() {
            match seg {
                Segment::Literal(l) => node = node.literal.entry(l.into()).or_default(),
                Segment::Star => node = node.star.get_or_insert_with(Default::default),
                Segment::Gt => {
                    node.gt.push(value);
                    self.len += 1;
                    return;
                }
            }
        }
        node.here.push(value);
        self.len += 1;
    }

    /// Removes one subscription of `value` to `pattern`. Returns whether one was found.
    pub fn remove(&mut self, pattern: &Pattern, value: &V) -> bool {
        let segs: Vec<Segment<'_>> = pattern.segments().collect();
        let removed = remove_at(&mut self.root, &segs, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Calls `f` once for every subscription whose pattern matches `topic`.
    ///
    /// The order of calls is unspecified. A value subscribed under two matching patterns is
    /// reported twice.
    pub fn for_each_match(&self, topic: &Topic, mut f: impl FnMut(&V)) {
        let mut segs: [&[u8]; MAX_TOPIC_DEPTH] = [&[]; MAX_TOPIC_DEPTH];
        let mut depth = 0;
        for s in topic.segments() {
            // Invariant: a validated Topic has at most MAX_TOPIC_DEPTH segments; `get_mut`
            // keeps this panic-free even if that ever changed.
            if let Some(slot) = segs.get_mut(depth) {
                *slot = s;
                depth += 1;
            }
        }
        walk(&self.root, &segs[..depth], &mut f);
    }
}

fn walk<V>(node: &Node<V>, segs: &[&[u8]], f: &mut impl FnMut(&V)) {
    let Some((first, rest)) = segs.split_first() else {
        node.here.iter().for_each(&mut *f);
        return;
    };
    node.gt.iter().for_each(&mut *f);
    if let Some(child) = node.literal.get(*first) {
        walk(child, rest, f);
    }
    if let Some(star) = &node.star {
        walk(star, rest, f);
    }
}

fn remove_one<V: PartialEq>(list: &mut Vec<V>, value: &V) -> bool {
    match list.iter().position(|v| v == value) {
        Some(i) => {
            list.swap_remove(i);
            if list.is_empty() {
                // Give the allocation back: a trie that once held many subscribers under a
                // node must not keep their capacity forever.
                *list = Vec::new();
            }
            true
        }
        None => false,
    }
}

fn remove_at<V: PartialEq>(node: &mut Node<V>, segs: &[Segment<'_>], value: &V) -> bool {
    let Some((first, rest)) = segs.split_first() else {
        return remove_one(&mut node.here, value);
    };
    match first {
        Segment::Gt => remove_one(&mut node.gt, value),
        Segment::Star => {
            let Some(child) = node.star.as_deref_mut() else { return false };
            let removed = remove_at(child, rest, value);
            if child.is_empty() {
                node.star = None;
            }
            removed
        }
        Segment::Literal(l) => {
            let Some(child) = node.literal.get_mut(*l) else { return false };
            let removed = remove_at(child, rest, value);
            if child.is_empty() {
                node.literal.remove(*l);
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matches(trie: &SubTrie<u32>, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        trie.for_each_match(&Topic::new(topic).unwrap(), |v| out.push(*v));
        out.sort_unstable();
        out
    }

    #[test]
    fn wildcard_edge_cases() {
        let mut t = SubTrie::new();
        let subs = ["a.b", "a.*", "a.>", "*.b", ">", "*", "a.b.c", "*.*.c", "a.*.>"];
        for (i, s) in subs.iter().enumerate() {
            t.insert(&Pattern::new(s).unwrap(), i as u32);
        }
        assert_eq!(matches(&t, "a"), vec![4, 5]);
        assert_eq!(matches(&t, "a.b"), vec![0, 1, 2, 3, 4]);
        assert_eq!(matches(&t, "a.b.c"), vec![2, 4, 6, 7, 8]);
        assert_eq!(matches(&t, "x.b"), vec![3, 4]);
        assert_eq!(matches(&t, "x.y.c.d"), vec![4]);
        assert_eq!(t.len(), subs.len());
    }

    #[test]
    fn remove_prunes_to_empty() {
        let mut t = SubTrie::new();
        let pats: Vec<Pattern> = ["a.b.c", "a.*.c", "a.>", "*", ">"].iter().map(|s| Pattern::new(s).unwrap()).collect();
        for (i, p) in pats.iter().enumerate() {
            t.insert(p, i);
        }
        assert!(!t.remove(&pats[0], &99));
        assert!(!t.remove(&Pattern::new("q.r").unwrap(), &0));
        for (i, p) in pats.iter().enumerate() {
            assert!(t.remove(p, &i));
        }
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "removal must prune every node");
    }

    #[test]
    fn duplicate_values_are_counted_separately() {
        let mut t = SubTrie::new();
        let p = Pattern::new("a.*").unwrap();
        t.insert(&p, 1);
        t.insert(&p, 1);
        assert_eq!(matches_u(&t, "a.b"), 2);
        assert!(t.remove(&p, &1));
        assert_eq!(matches_u(&t, "a.b"), 1);
    }

    fn matches_u(t: &SubTrie<i32>, topic: &str) -> usize {
        let mut n = 0;
        t.for_each_match(&Topic::new(topic).unwrap(), |_| n += 1);
        n
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("c".to_string())]
    }

    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(segment(), 1..5).prop_map(|v| v.join("."))
    }

    fn pattern() -> impl Strategy<Value = String> {
        (proptest::collection::vec(prop_oneof![3 => segment(), 1 => Just("*".to_string())], 1..5), any::<bool>())
            .prop_map(|(mut v, gt)| {
                if gt {
                    *v.last_mut().unwrap() = ">".to_string();
                }
                v.join(".")
            })
    }

    proptest! {
        /// The trie reports exactly the subscriptions that the naive matcher accepts, also
        /// after some of them are removed.
        #[test]
        fn agrees_with_naive_matcher(
            pats in proptest::collection::vec(pattern(), 0..40),
            topics in proptest::collection::vec(topic(), 1..20),
            remove_mask in proptest::collection::vec(any::<bool>(), 40),
        ) {
            let pats: Vec<Pattern> = pats.iter().map(|s| Pattern::new(s).unwrap()).collect();
            let mut trie = SubTrie::new();
            for (i, p) in pats.iter().enumerate() {
                trie.insert(p, i);
            }
            let mut live: Vec<bool> = vec![true; pats.len()];
            for (i, p) in pats.iter().enumerate() {
                if remove_mask[i] {
                    prop_assert!(trie.remove(p, &i));
                    live[i] = false;
                }
            }
            prop_assert_eq!(trie.len(), live.iter().filter(|l| **l).count());
            for t in &topics {
                let topic = Topic::new(t).unwrap();
                let mut got = Vec::new();
                trie.for_each_match(&topic, |v| got.push(*v));
                got.sort_unstable();
                let want: Vec<usize> = (0..pats.len()).filter(|i| live[*i] && pats[*i].matches(&topic)).collect();
                prop_assert_eq!(got, want, "topic {}", t);
            }
        }
    }
}
