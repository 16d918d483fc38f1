//! What one node knows of other nodes' interest, per realm: their records by prefix and a
//! trie of their patterns, matched on a publisher's cache miss.

use std::time::Instant;

use bytes::Bytes;

use super::{GroupId, RemoteGroups};
use crate::dht::{Contact, NodeId};
use crate::frame::Forward;
use crate::hashing::Map as HashMap;
use crate::{Pattern, SubTrie, Topic};

/// One entry of another node's interest record.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RemoteSub {
    pub pattern: Pattern,
    /// Set for a queue group, with the node's member count (its weight in the choice).
    pub group: Option<(Bytes, u32)>,
}

/// What a publisher's node knows of one first segment of the topics published.
pub(super) enum PrefixState {
    /// The first lookups run (`keys_left` of the two); messages wait, each with the queue
    /// groups already served by a member on this node.
    Pending { waiting: Vec<(Forward, Vec<GroupId>)>, keys_left: Vec<crate::dht::Key> },
    /// Known; `used` since the last renewal.
    Ready { renewed: Instant, used: bool },
}

/// Another node's interest under one prefix.
pub(super) struct RemoteNode {
    pub contact: Contact,
    pub subs: Vec<RemoteSub>,
    /// When this entry was last set, by a lookup or a push.
    pub learned: Instant,
}

/// Interest elsewhere in one realm.
#[derive(Default)]
pub(super) struct RemoteRealm {
    /// By first segment of the topics published.
    pub prefixes: HashMap<String, PrefixState>,
    /// (record prefix, node) → the node's subscriptions under the prefix.
    pub nodes: HashMap<(String, NodeId), RemoteNode>,
    /// Every remote pattern → (node, queue group, weight); rebuilt when `nodes` changes.
    trie: SubTrie<(NodeId, Option<GroupId>, u32)>,
}

impl RemoteRealm {
    /// Where `topic` goes beyond this node: nodes with plain subscribers (each once), and
    /// per queue group the nodes with members and their member counts.
    pub fn targets(&self, topic: &Topic) -> (Vec<Contact>, RemoteGroups) {
        let mut plain: Vec<NodeId> = Vec::new();
        let mut groups: Vec<(GroupId, Vec<(NodeId, u32)>)> = Vec::new();
        self.trie.for_each_match(topic, |(id, group, weight)| match group {
            None => {
                if !plain.contains(id) {
                    plain.push(*id);
                }
            }
            Some(g) => match groups.iter_mut().find(|(k, _)| k == g) {
                Some((_, nodes)) => {
                    if !nodes.iter().any(|(n, _)| n == id) {
                        nodes.push((*id, *weight));
                    }
                }
                None => groups.push((g.clone(), vec![(*id, *weight)])),
            },
        });
        let contact = |id: &NodeId| self.nodes.iter().find(|((_, n), _)| n == id).map(|(_, node)| node.contact);
        let plain = plain.iter().filter_map(contact).collect();
        let groups = groups
            .into_iter()
            .map(|(g, nodes)| (g, nodes.iter().filter_map(|(id, w)| contact(id).map(|c| (c, *w))).collect()))
            .collect();
        (plain, groups)
    }

    /// Makes the trie match `nodes` again.
    pub fn rebuild(&mut self) {
        let mut trie = SubTrie::new();
        for ((_, id), node) in &self.nodes {
            for sub in &node.subs {
                let (group, weight) = match &sub.group {
                    Some((name, n)) => (Some((Bytes::copy_from_slice(sub.pattern.as_bytes()), name.clone())), *n),
                    None => (None, 1),
                };
                trie.insert(&sub.pattern, (*id, group, weight));
            }
        }
        self.trie = trie;
    }
}
