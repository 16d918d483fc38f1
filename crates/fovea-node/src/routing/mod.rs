//! Routing state shared by all connection tasks of a node, and the per-connection match
//! cache that keeps the shared state off the hot path.
//!
//! Each realm has one subscription trie and one procedure registry, each behind a
//! `RwLock` written only when a subscription or registration starts or ends. A generation
//! counter is bumped after every trie write. A publishing connection's task routes its own
//! messages: it looks the topic up in its private [`MatchCache`], valid while the
//! generation is unchanged, so a steady stream of publishes touches no lock and no shared
//! cache line except one atomic load. This is principle 1: no process, task or lock that
//! every message crosses.

pub(crate) mod interest;
pub(crate) mod remote_tools;
pub(crate) mod tools;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use foldhash::fast::RandomState;
use fovea_core::balance::{pick_two, Registry, Rng};
use fovea_core::tool::{Catalog, ToolDescriptor};
use fovea_core::{Pattern, Procedure, SubTrie, Topic, TopicError};

use crate::auth::Allow;
use crate::handle::{Handle, ProviderRef};

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
            match crate::routing::interest::pick_weighted(remote, local, rng) {
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
            if let Some(node) = crate::routing::interest::pick_weighted(nodes, 0, rng) {
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

/// A realm's routing state.
pub(crate) struct Realm {
    pub name: String,
    /// `name` as it travels in `FWD` frames.
    pub wire_name: Bytes,
    /// Cross-node interest, when the node is in a mesh (set once, at start or when a
    /// reload adds the realm).
    pub interest: std::sync::OnceLock<Arc<crate::routing::interest::Interest>>,
    /// The realm-wide tool catalog, when the node is in a mesh (set like `interest`).
    pub mesh_tools: std::sync::OnceLock<Arc<crate::routing::remote_tools::MeshTools>>,
    /// Who may join, and with what permissions; replaced when the configuration reloads.
    admission: RwLock<Arc<crate::auth::Admission>>,
    subs: RwLock<SubTrie<SubRef>>,
    generation: AtomicU64,
    procs: RwLock<Registry<ProviderRef>>,
    /// The realm's tools: procedures registered with a descriptor, here (keys from 1) or
    /// on other nodes (keys from `mesh_tools::REMOTE_KEY`).
    tools: std::sync::Mutex<Catalog>,
    /// Tool registrations on this node.
    local_tools: AtomicU64,
    /// The catalog's version, for connections and MCP sessions watching it. Bounded: a
    /// watch holds one value, so a burst of changes wakes each watcher once.
    tools_version: tokio::sync::watch::Sender<u64>,
}

impl Realm {
    pub fn new(name: impl Into<String>, admission: crate::auth::Admission) -> Self {
        let name: String = name.into();
        Realm {
            wire_name: Bytes::copy_from_slice(name.as_bytes()),
            interest: std::sync::OnceLock::new(),
            mesh_tools: std::sync::OnceLock::new(),
            name,
            admission: RwLock::new(Arc::new(admission)),
            subs: RwLock::new(SubTrie::new()),
            generation: AtomicU64::new(0),
            procs: RwLock::new(Registry::new()),
            tools: std::sync::Mutex::new(Catalog::default()),
            local_tools: AtomicU64::new(0),
            tools_version: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The realm's current admission rules.
    pub fn admission(&self) -> Arc<crate::auth::Admission> {
        self.admission.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the admission rules (configuration reload).
    pub fn set_admission(&self, admission: crate::auth::Admission) {
        *self.admission.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(admission);
    }

    pub fn subscribe(&self, pattern: &Pattern, sub: SubRef) {
        if let Some(i) = self.interest.get() {
            i.add_local(&self.name, pattern, sub.group.as_ref().map(|g| &g.name));
        }
        let mut trie = self.subs.write().unwrap_or_else(PoisonError::into_inner);
        trie.insert(pattern, sub);
        // Release pairs with the Acquire in MatchCache::lookup: a task that sees the new
        // generation sees the new trie when it next takes the read lock.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Removes subscriptions; one lock and one generation bump for the whole batch.
    pub fn unsubscribe<'a>(&self, subs: impl IntoIterator<Item = (&'a Pattern, SubRef)>) {
        let mut trie = self.subs.write().unwrap_or_else(PoisonError::into_inner);
        let interest = self.interest.get();
        for (pattern, sub) in subs {
            let group = sub.group.clone();
            if trie.remove(pattern, &sub) {
                if let Some(i) = interest {
                    i.remove_local(&self.name, pattern, group.as_ref().map(|g| &g.name));
                }
            }
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Invalidates every connection's match cache for this realm (remote interest changed).
    pub fn bump(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Number of subscriptions in the realm.
    pub fn subscription_count(&self) -> usize {
        self.subs.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Adds a provider; with `tool`, `(key, descriptor)`, the procedure is also a tool
    /// (`key` is unique on this node and names the registration to `unregister`).
    pub fn register(&self, procedure: &Procedure, provider: ProviderRef, tool: Option<(u64, ToolDescriptor)>) {
        if let Some(i) = self.interest.get() {
            i.add_provider(&self.name, procedure.as_str());
        }
        self.procs.write().unwrap_or_else(PoisonError::into_inner).insert(procedure, provider);
        if let Some((key, tool)) = tool {
            let mut tools = self.tools.lock().unwrap_or_else(PoisonError::into_inner);
            if tools.insert(procedure.as_str(), key, tool) {
                self.tools_version.send_replace(tools.version());
            }
            let n = self.local_tools.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(m) = self.mesh_tools.get() {
                m.local_changed(&self.name, n as usize);
            }
        }
    }

    /// Removes registrations, with their tool keys (0: not a tool); one lock for the whole
    /// batch.
    pub fn unregister<'a>(&self, regs: impl IntoIterator<Item = (&'a Procedure, ProviderRef, u64)>) {
        let mut procs = self.procs.write().unwrap_or_else(PoisonError::into_inner);
        let interest = self.interest.get();
        let mut tools = None;
        for (procedure, provider, key) in regs {
            if procs.remove(procedure, &provider) {
                if let Some(i) = interest {
                    i.remove_provider(&self.name, procedure.as_str());
                }
            }
            if key != 0 {
                let tools = tools.get_or_insert_with(|| self.tools.lock().unwrap_or_else(PoisonError::into_inner));
                if tools.remove(procedure.as_str(), key) {
                    self.tools_version.send_replace(tools.version());
                }
                let n = self.local_tools.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
                if let Some(m) = self.mesh_tools.get() {
                    m.local_changed(&self.name, n as usize);
                }
            }
        }
    }

    /// Replaces the tools of remote node `node` (from the mesh).
    pub fn set_remote_tools(&self, node: &fovea_core::dht::NodeId, entries: Vec<(String, ToolDescriptor)>) {
        let mut tools = self.tools.lock().unwrap_or_else(PoisonError::into_inner);
        if tools.replace_key(crate::routing::remote_tools::remote_key(node), entries) {
            self.tools_version.send_replace(tools.version());
        }
    }

    /// This node's own tools, as `TOOL_LIST` carries them (for other nodes). At most a
    /// frame's worth: past ~1 MiB the list is cut, in procedure order.
    pub fn local_tools_json(&self) -> Bytes {
        let tools = self.tools.lock().unwrap_or_else(PoisonError::into_inner);
        let mut local = tools.entries_where(|k| k < crate::routing::remote_tools::REMOTE_KEY);
        let mut size = 0;
        local.retain(|(p, t)| {
            size += p.len() + t.encoded().len() + 32;
            size < fovea_core::limits::MAX_PAYLOAD
        });
        crate::routing::tools::list_json(&local)
    }

    /// Runs `f` on the realm's tool catalog (a short lock: no awaiting inside).
    pub fn with_tools<T>(&self, f: impl FnOnce(&Catalog) -> T) -> T {
        f(&self.tools.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Changes whenever the tool catalog does.
    pub fn watch_tools(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tools_version.subscribe()
    }

    /// Number of registrations in the realm.
    pub fn registration_count(&self) -> usize {
        self.procs.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Chooses a provider of `name` by power of two choices on requests in flight.
    /// `Err(true)`: there are providers but the chosen one is at `limit`; `Err(false)`:
    /// there is none.
    pub fn choose_provider(&self, name: &[u8], rng: &mut Rng, limit: usize) -> Result<ProviderRef, bool> {
        let procs = self.procs.read().unwrap_or_else(PoisonError::into_inner);
        let list = procs.providers(name);
        // A provider whose connection is closing (not yet unregistered) loses every
        // comparison; if drawn anyway, any live one is taken instead.
        // Indexes come from `pick_two(list.len(), ..)`, so they are in range.
        let load = |i: usize| {
            let peer = &list[i].handle;
            if peer.out.is_closed() {
                u64::MAX
            } else {
                peer.requests_in_flight() as u64
            }
        };
        let i = pick_two(list.len(), rng, load).ok_or(false)?;
        let p = if list[i].handle.out.is_closed() {
            list.iter().find(|p| !p.handle.out.is_closed()).ok_or(false)?
        } else {
            &list[i]
        };
        if p.handle.requests_in_flight() >= limit {
            return Err(true);
        }
        Ok(p.clone())
    }

    /// Every subscriber of `topic`: local ones, and (in a mesh) the nodes with remote ones.
    fn lookup(&self, topic: &Topic) -> Arc<Matches> {
        let mut m = self.lookup_local(topic);
        if let Some(i) = self.interest.get() {
            let remote = i.remote_targets(&self.name, topic);
            if let Some(m) = Arc::get_mut(&mut m) {
                m.remote = remote.nodes;
                m.remote_groups = remote.groups;
                m.remote_pending = remote.pending;
            }
        }
        m
    }

    /// The local subscribers of `topic` (what a message forwarded by another node reaches).
    pub fn lookup_local(&self, topic: &Topic) -> Arc<Matches> {
        let trie = self.subs.read().unwrap_or_else(PoisonError::into_inner);
        let mut m = Matches::default();
        // Members of a group are those with equal keys (same pattern, same name); a topic
        // meets few groups, so a linear search is the cheap way to collect them.
        let mut keys: Vec<Arc<GroupKey>> = Vec::new();
        trie.for_each_match(topic, |s| match &s.group {
            None => m.plain.push(s.clone()),
            Some(g) => match keys.iter().position(|k| **k == **g) {
                Some(i) => m.groups[i].push(s.clone()),
                None => {
                    keys.push(g.clone());
                    m.groups.push(vec![s.clone()]);
                }
            },
        });
        Arc::new(m)
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
    /// saves hashing them (`MatchCache::lookup` was 5% of the node in 64-byte pub/sub).
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
