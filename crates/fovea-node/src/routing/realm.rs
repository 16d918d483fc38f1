//! A realm's routing state: its subscription trie, its procedure registry and its tool
//! catalog, and the generation counter that tells connections' match caches when to
//! start afresh.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use fovea_core::balance::{pick_two, Registry, Rng};
use fovea_core::tool::{Catalog, Descriptor};
use fovea_core::{Pattern, Procedure, SubTrie, Topic};

use crate::handle::ProviderRef;

use super::calls::NoRoute;
use super::matches::{GroupKey, Matches, SubRef};

/// A realm's routing state.
pub(crate) struct Realm {
    pub name: String,
    /// `name` as it travels in `FWD` frames.
    pub wire_name: Bytes,
    /// Cross-node interest, when the node is in a mesh.
    pub interest: Option<Arc<super::interest::Interest>>,
    /// The realm-wide tool catalog, when the node is in a mesh.
    pub mesh_catalog: Option<Arc<super::mesh_catalog::MeshCatalog>>,
    /// Who may join, and with what permissions; replaced when the configuration reloads.
    admission: RwLock<Arc<crate::auth::Admission>>,
    subs: RwLock<SubTrie<SubRef>>,
    pub(super) generation: AtomicU64,
    procs: RwLock<Registry<ProviderRef>>,
    /// The realm's tools: procedures registered with a descriptor, here (keys from 1) or
    /// on other nodes (keys from `mesh_catalog::REMOTE_KEY`).
    tools: std::sync::Mutex<Catalog>,
    /// Tool registrations on this node.
    local_tools: AtomicU64,
    /// The catalog's version, for connections and MCP sessions watching it. Bounded: a
    /// watch holds one value, so a burst of changes wakes each watcher once.
    tools_version: tokio::sync::watch::Sender<u64>,
}

impl Realm {
    /// A realm with no subscriptions or registrations yet; `mesh`: the node's mesh parts,
    /// when it is in a mesh.
    pub fn new(name: impl Into<String>, admission: crate::auth::Admission, mesh: Option<&super::MeshRouting>) -> Self {
        let name: String = name.into();
        if let Some(m) = mesh {
            m.catalog.watch(&name);
        }
        Realm {
            wire_name: Bytes::copy_from_slice(name.as_bytes()),
            interest: mesh.map(|m| m.interest.clone()),
            mesh_catalog: mesh.map(|m| m.catalog.clone()),
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
        crate::sync::read(&self.admission).clone()
    }

    /// Replaces the admission rules (configuration reload).
    pub fn set_admission(&self, admission: crate::auth::Admission) {
        *crate::sync::write(&self.admission) = Arc::new(admission);
    }

    pub fn subscribe(&self, pattern: &Pattern, sub: SubRef) {
        if let Some(i) = self.interest.as_ref() {
            i.add_local(&self.name, pattern, sub.group.as_ref().map(|g| &g.name));
        }
        let mut trie = crate::sync::write(&self.subs);
        trie.insert(pattern, sub);
        // Release pairs with the Acquire in MatchCache::lookup: a task that sees the new
        // generation sees the new trie when it next takes the read lock.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Removes subscriptions; one lock and one generation bump for the whole batch.
    pub fn unsubscribe<'a>(&self, subs: impl IntoIterator<Item = (&'a Pattern, SubRef)>) {
        let mut trie = crate::sync::write(&self.subs);
        let interest = self.interest.as_ref();
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

    /// Up to `max` procedures provided on this node, by name, with their provider counts.
    pub fn procedure_list(&self, max: usize) -> Vec<(String, usize)> {
        let procs = crate::sync::read(&self.procs);
        let mut list: Vec<(String, usize)> = procs
            .procedures()
            .take(max)
            .map(|p| (p.as_str().to_owned(), procs.providers(p.as_bytes()).len()))
            .collect();
        list.sort();
        list
    }

    /// Number of subscriptions in the realm.
    pub fn subscription_count(&self) -> usize {
        crate::sync::read(&self.subs).len()
    }

    /// Adds a provider; with `tool`, `(key, descriptor)`, the procedure is also a tool
    /// (`key` is unique on this node and names the registration to `unregister`).
    pub fn register(&self, procedure: &Procedure, provider: ProviderRef, tool: Option<(u64, Descriptor)>) {
        if let Some(i) = self.interest.as_ref() {
            i.add_provider(&self.name, procedure.as_str());
        }
        crate::sync::write(&self.procs).insert(procedure, provider);
        if let Some((key, tool)) = tool {
            let mut tools = crate::sync::lock(&self.tools);
            if tools.insert(procedure.as_str(), key, tool) {
                self.tools_version.send_replace(tools.version());
            }
            let n = self.local_tools.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(m) = self.mesh_catalog.as_ref() {
                m.local_changed(&self.name, n as usize);
            }
        }
    }

    /// Removes registrations, with their tool keys (0: not a tool); one lock for the whole
    /// batch.
    pub fn unregister<'a>(&self, regs: impl IntoIterator<Item = (&'a Procedure, ProviderRef, u64)>) {
        let mut procs = crate::sync::write(&self.procs);
        let interest = self.interest.as_ref();
        let mut tools = None;
        for (procedure, provider, key) in regs {
            if procs.remove(procedure, &provider) {
                if let Some(i) = interest {
                    i.remove_provider(&self.name, procedure.as_str());
                }
            }
            if key != 0 {
                let tools = tools.get_or_insert_with(|| crate::sync::lock(&self.tools));
                if tools.remove(procedure.as_str(), key) {
                    self.tools_version.send_replace(tools.version());
                }
                let n = self.local_tools.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
                if let Some(m) = self.mesh_catalog.as_ref() {
                    m.local_changed(&self.name, n as usize);
                }
            }
        }
    }

    /// Replaces the tools of remote node `node` (from the mesh).
    pub fn set_remote_tools(&self, node: &fovea_core::dht::NodeId, entries: Vec<(String, Descriptor)>) {
        let mut tools = crate::sync::lock(&self.tools);
        if tools.replace_key(crate::routing::mesh_catalog::remote_key(node), entries) {
            self.tools_version.send_replace(tools.version());
        }
    }

    /// This node's own tools, as `TOOL_LIST` carries them (for other nodes). At most a
    /// frame's worth: past ~1 MiB the list is cut, in procedure order.
    pub fn local_tools_json(&self) -> Bytes {
        let tools = crate::sync::lock(&self.tools);
        let mut local = tools.entries_where(|k| k < crate::routing::mesh_catalog::REMOTE_KEY);
        let mut size = 0;
        local.retain(|(p, t)| {
            size += p.len() + t.encoded().len() + 32;
            size < fovea_core::limits::MAX_PAYLOAD
        });
        crate::routing::catalog::list_json(&local)
    }

    /// Runs `f` on the realm's tool catalog (a short lock: no awaiting inside).
    pub fn with_tools<T>(&self, f: impl FnOnce(&Catalog) -> T) -> T {
        f(&crate::sync::lock(&self.tools))
    }

    /// Changes whenever the tool catalog does.
    pub fn watch_tools(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tools_version.subscribe()
    }

    /// Number of registrations in the realm.
    pub fn registration_count(&self) -> usize {
        crate::sync::read(&self.procs).len()
    }

    /// Chooses a provider of `name` by power of two choices on requests in flight.
    ///
    /// # Errors
    /// [`NoRoute::NoProvider`] when there is none, [`NoRoute::Busy`] when the one chosen
    /// has `limit` requests in flight.
    pub fn choose_provider(&self, name: &[u8], rng: &mut Rng, limit: usize) -> Result<ProviderRef, NoRoute> {
        let procs = crate::sync::read(&self.procs);
        let list = procs.providers(name);
        // A provider whose connection is closing (not yet unregistered) loses every
        // comparison; if drawn anyway, any live one is taken instead.
        // Indexes come from `pick_two(list.len(), ..)`, so they are in range.
        let load = |i: usize| {
            let handle = &list[i].handle;
            if handle.out.is_closed() {
                u64::MAX
            } else {
                handle.requests_in_flight() as u64
            }
        };
        let i = pick_two(list.len(), rng, load).ok_or(NoRoute::NoProvider)?;
        let p = if list[i].handle.out.is_closed() {
            list.iter().find(|p| !p.handle.out.is_closed()).ok_or(NoRoute::NoProvider)?
        } else {
            &list[i]
        };
        if p.handle.requests_in_flight() >= limit {
            return Err(NoRoute::Busy);
        }
        Ok(p.clone())
    }

    /// Every subscriber of `topic`: local ones, and (in a mesh) the nodes with remote ones.
    pub(super) fn lookup(&self, topic: &Topic) -> Arc<Matches> {
        let mut m = self.lookup_local(topic);
        if let Some(i) = self.interest.as_ref() {
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
        let trie = crate::sync::read(&self.subs);
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
