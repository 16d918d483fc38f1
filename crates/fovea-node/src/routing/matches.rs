//! Which subscriptions a topic reaches ([`Matches`]), and the per-connection cache of
//! those answers ([`MatchCache`]) that keeps the shared realm state off the hot path.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use foldhash::fast::RandomState;
use fovea_core::balance::{pick_two, Rng};
use fovea_core::{Pattern, Topic, TopicError};

use crate::auth::Allow;
use crate::handle::Handle;

use super::realm::Realm;

/// The identity of a queue group: members share a pattern and a group name.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct GroupKey {
    pub pattern: Pattern,
    pub name: Bytes,
}

/// One subscription as the router sees it: where to deliver, and under which id.
#[derive(Clone)]
pub(crate) struct SubRef {
    pub handle: Arc<Handle>,
    pub sid: u64,
    /// Set for a queue-group member.
    pub group: Option<Arc<GroupKey>>,
}

impl PartialEq for SubRef {
    fn eq(&self, other: &Self) -> bool {
        self.sid == other.sid && Arc::ptr_eq(&self.handle, &other.handle)
    }
}

/// The subscriptions a topic reaches: every plain one, and one member of each group.
#[derive(Default)]
pub(crate) struct Matches {
    pub plain: Vec<SubRef>,
    pub groups: Vec<Vec<SubRef>>,
    /// Other nodes with plain subscribers to the topic (mesh only).
    pub remote: Vec<fovea_core::dht::Contact>,
    /// Queue groups with members on other nodes: the nodes and their member counts.
    pub remote_groups: crate::routing::interest::RemoteGroups,
    /// Discovery of the topic's remote subscribers is still running: messages go to
    /// [`crate::routing::interest::Interest::hold`] instead of `remote`.
    pub remote_pending: bool,
}

impl Matches {
    /// Calls `f` for every plain subscription and for one member of each queue group,
    /// chosen by power of two choices on queued bytes (the same policy as RPC).
    pub fn for_each_target(&self, rng: &mut Rng, mut f: impl FnMut(&SubRef)) {
        self.plain.iter().for_each(&mut f);
        for members in &self.groups {
            pick_member(members, rng, &mut f);
        }
    }

    /// As [`Matches::for_each_target`], for a mesh: each queue group's one delivery goes
    /// to a member here or to a node with members, chosen in proportion to members.
    /// Returns the nodes to forward to, each with the groups it serves, and (for a
    /// message held while discovery runs) the groups served here.
    pub fn for_each_target_mesh(
        &self,
        rng: &mut Rng,
        mut f: impl FnMut(&SubRef),
    ) -> (Vec<(fovea_core::dht::Contact, Vec<crate::routing::interest::GroupId>)>, Vec<crate::routing::interest::GroupId>)
    {
        self.plain.iter().for_each(&mut f);
        let mut sends: Vec<(fovea_core::dht::Contact, Vec<crate::routing::interest::GroupId>)> =
            self.remote.iter().map(|c| (*c, Vec::new())).collect();
        let mut served = Vec::new();
        let id_of = |members: &Vec<SubRef>| {
            members
                .first()
                .and_then(|m| m.group.as_ref())
                .map(|g| (Bytes::copy_from_slice(g.pattern.as_bytes()), g.name.clone()))
        };
        for members in &self.groups {
            let Some(id) = id_of(members) else { continue };
            let remote = self.remote_groups.iter().find(|(g, _)| *g == id).map(|(_, n)| &n[..]).unwrap_or(&[]);
            let local = u32::try_from(members.len()).unwrap_or(u32::MAX);
            match fovea_core::balance::pick_weighted(remote, local, rng) {
                None => {
                    pick_member(members, rng, &mut f);
                    served.push(id);
                }
                Some(node) => add_group(&mut sends, node, id),
            }
        }
        // Groups with no member here.
        for (id, nodes) in &self.remote_groups {
            if self.groups.iter().any(|m| id_of(m).as_ref() == Some(id)) {
                continue;
            }
            if let Some(node) = fovea_core::balance::pick_weighted(nodes, 0, rng) {
                add_group(&mut sends, node, id.clone());
            }
        }
        (sends, served)
    }

    /// Delivers a message another node forwarded: to every plain subscription, and for
    /// each of `groups` (the groups this node was chosen for) to one member.
    pub fn for_each_forwarded(&self, groups: &[(Bytes, Bytes)], rng: &mut Rng, mut f: impl FnMut(&SubRef)) {
        self.plain.iter().for_each(&mut f);
        for members in &self.groups {
            let chosen = members
                .first()
                .and_then(|m| m.group.as_ref())
                .is_some_and(|g| groups.iter().any(|(p, n)| p[..] == *g.pattern.as_bytes() && *n == g.name));
            if chosen {
                pick_member(members, rng, &mut f);
            }
        }
    }
}

fn add_group(
    sends: &mut Vec<(fovea_core::dht::Contact, Vec<crate::routing::interest::GroupId>)>,
    node: fovea_core::dht::Contact,
    id: crate::routing::interest::GroupId,
) {
    match sends.iter_mut().find(|(c, _)| c.id == node.id) {
        Some((_, groups)) => groups.push(id),
        None => sends.push((node, vec![id])),
    }
}

/// One member of a queue group, by power of two choices on queued bytes.
fn pick_member(members: &[SubRef], rng: &mut Rng, f: &mut impl FnMut(&SubRef)) {
    // A member whose connection is closing (its unsubscribe not yet applied) must not
    // swallow the message: it loses every comparison, and if drawn anyway the message
    // goes to any live member.
    // Indexes come from `pick_two(members.len(), ..)`, so they are in range.
    let load = |i: usize| {
        let out = &members[i].handle.out;
        if out.is_closed() {
            u64::MAX
        } else {
            out.pending() as u64
        }
    };
    let Some(i) = pick_two(members.len(), rng, load) else { return };
    let chosen = if members[i].handle.out.is_closed() {
        members.iter().find(|m| !m.handle.out.is_closed())
    } else {
        members.get(i)
    };
    if let Some(m) = chosen {
        f(m);
    }
}

/// A connection's private map from topic to its subscribers.
///
/// Invariant: every entry was computed at generation `generation` or later; the whole map
/// is dropped when the realm's generation moves on, and when it reaches `cap` entries.
/// `map` holds indexes into `entries`, one each, so a hit lends its entry with one hash.
pub(crate) struct MatchCache {
    generation: u64,
    /// Topic → index in `entries`.
    map: HashMap<Bytes, usize, RandomState>,
    /// (Topic, subscribers, may this connection publish to the topic).
    entries: Vec<(Bytes, Arc<Matches>, bool)>,
    /// The entry the last lookup found (`usize::MAX`: none). Publishers tend to send runs
    /// to one topic; checking it first costs one comparison of the topic's bytes and
    /// saves hashing them, on the path every publish takes.
    last: usize,
    cap: usize,
    /// The node's name limits (at most the protocol's).
    max_len: usize,
    max_depth: usize,
    /// Local subscribers only: for messages another node forwarded (never forwarded on).
    local_only: bool,
}

impl MatchCache {
    pub fn new(cap: usize, max_len: usize, max_depth: usize) -> Self {
        MatchCache {
            generation: u64::MAX,
            map: HashMap::default(),
            entries: Vec::new(),
            last: usize::MAX,
            cap: cap.max(1),
            max_len,
            max_depth,
            local_only: false,
        }
    }

    /// A cache of local subscribers only, for a mesh link's forwarded messages.
    pub fn new_local(cap: usize, max_len: usize, max_depth: usize) -> Self {
        MatchCache { local_only: true, ..MatchCache::new(cap, max_len, max_depth) }
    }

    /// The subscribers of `raw` and whether `allow` lets this connection publish to it,
    /// validating the topic and checking the permission on a miss only. Lent, not cloned:
    /// a publish that joins a run of its predecessor's subscribers takes no reference.
    pub fn lookup(&mut self, realm: &Realm, raw: &[u8], allow: &Allow) -> Result<(&Arc<Matches>, bool), TopicError> {
        let generation = realm.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.clear();
            self.generation = generation;
        }
        let i = match self.entries.get(self.last) {
            Some((topic, _, _)) if topic[..] == *raw => self.last,
            _ => match self.map.get(raw) {
                Some(&i) => i,
                None => self.insert(realm, raw, allow)?,
            },
        };
        self.last = i;
        // Always present: `map` and `entries` are filled and cleared together.
        self.entries.get(i).map(|(_, subs, allowed)| (subs, *allowed)).ok_or(TopicError::Empty)
    }

    fn clear(&mut self) {
        self.map.clear();
        self.entries.clear();
        self.last = usize::MAX;
    }

    /// Computes and stores a missing entry; returns its index.
    #[cold]
    fn insert(&mut self, realm: &Realm, raw: &[u8], allow: &Allow) -> Result<usize, TopicError> {
        // The node's limits first: a topic may be as long as a frame, and is not copied
        // before it is known to be short enough.
        check_limits(raw, self.max_len, self.max_depth)?;
        // Copy the key: `raw` is a slice of a read buffer that must not be pinned.
        let topic = Topic::from_bytes(Bytes::copy_from_slice(raw))?;
        let allowed = allow.name(topic.as_bytes());
        let subs = match (allowed, self.local_only) {
            (false, _) => Arc::new(Matches::default()),
            (true, true) => realm.lookup_local(&topic),
            (true, false) => realm.lookup(&topic),
        };
        if self.map.len() >= self.cap {
            self.clear();
        }
        self.entries.push((topic.as_shared().clone(), subs, allowed));
        self.map.insert(topic.as_shared().clone(), self.entries.len() - 1);
        Ok(self.entries.len() - 1)
    }
}

/// Applies a node's own (lower) name limits to a name that passed the protocol's.
pub(crate) fn check_limits(raw: &[u8], max_len: usize, max_depth: usize) -> Result<(), TopicError> {
    if raw.len() > max_len {
        return Err(TopicError::TooLong { len: raw.len(), max: max_len });
    }
    if raw.split(|b| *b == b'.').count() > max_depth {
        return Err(TopicError::TooDeep { max: max_depth });
    }
    Ok(())
}
