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

pub(crate) mod catalog;
pub(crate) mod interest;
mod matches;
pub(crate) mod mesh_catalog;
pub(crate) mod messages;
mod realm;

pub(crate) use matches::{check_limits, GroupKey, MatchCache, Matches, SubRef};
pub(crate) use realm::Realm;
pub(crate) mod calls;
mod links;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use crate::auth::Admission;
use crate::config::Limits;
use crate::mesh::{self, Mesh};
use crate::stats::Stats;
use interest::Interest;
use mesh_catalog::MeshCatalog;

/// The node's routing state: its realms, the counters routing keeps, and (in a mesh) the
/// parts that reach other nodes. Every front end routes through one `Router`; the mesh
/// reaches it only through [`crate::mesh::LinkHandler`], which it implements.
pub(crate) struct Router {
    pub limits: Limits,
    /// Realms by name. Written only by a configuration reload, which adds realms and never
    /// removes one (a realm dropped from the file keeps its routing state and admits
    /// nobody).
    realms: RwLock<HashMap<String, Arc<Realm>>>,
    pub stats: Stats,
    /// Per-process randomness for balancing generators.
    pub seed: u64,
    /// Numbers tool registrations node-wide (a catalog key; 0 means "not a tool").
    pub next_tool_key: AtomicU64,
    /// Present when the node takes part in a mesh.
    pub mesh: Option<MeshRouting>,
    /// This router, for the tasks and link states it hands out.
    me: std::sync::Weak<Router>,
}

/// What routing keeps of the mesh: the links and DHT, cross-node pub/sub, and the
/// realm-wide tool catalogs.
pub(crate) struct MeshRouting {
    pub mesh: Arc<Mesh>,
    pub interest: Arc<Interest>,
    pub catalog: Arc<MeshCatalog>,
}

impl Router {
    /// The router of a node serving `realms`, over `mesh` when it takes part in one (the
    /// mesh then hands what arrives from other nodes to this router).
    pub fn new(limits: Limits, realms: Vec<(String, Admission)>, mesh: Option<mesh::Bound>) -> Arc<Router> {
        let seed = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u64);
        Arc::new_cyclic(|me: &std::sync::Weak<Router>| {
            let handler: std::sync::Weak<dyn mesh::LinkHandler> = me.clone();
            let mesh = mesh.map(|bound| {
                let mesh = bound.start(handler);
                MeshRouting {
                    interest: Interest::new(mesh.clone(), limits.max_pending_bytes, me.clone()),
                    catalog: MeshCatalog::new(mesh.clone(), me.clone()),
                    mesh,
                }
            });
            let realms = realms
                .into_iter()
                .map(|(name, admission)| (name.clone(), Arc::new(Realm::new(name, admission, mesh.as_ref()))))
                .collect();
            Router {
                limits,
                realms: RwLock::new(realms),
                stats: Stats::default(),
                seed,
                next_tool_key: AtomicU64::new(1),
                mesh,
                me: me.clone(),
            }
        })
    }

    /// A weak reference to this router.
    pub fn weak(&self) -> std::sync::Weak<Router> {
        self.me.clone()
    }

    /// The realm called `name`, if this node serves it.
    pub fn realm(&self, name: &str) -> Option<Arc<Realm>> {
        self.realms().get(name).cloned()
    }

    /// Every realm, read-locked (configuration reloads wait meanwhile).
    pub fn realms(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<Realm>>> {
        crate::sync::read(&self.realms)
    }

    /// Applies new admission rules: `realms` replace the rules of the realms they name and
    /// add those that are new; every other realm admits nobody from now on.
    pub fn readmit(&self, realms: Vec<(String, Admission)>) {
        let mut map = crate::sync::write(&self.realms);
        for realm in map.values() {
            if !realms.iter().any(|(name, _)| *name == realm.name) {
                realm.set_admission(Admission::Users(HashMap::new()));
            }
        }
        for (name, admission) in realms {
            match map.get(&name) {
                Some(realm) => realm.set_admission(admission),
                None => {
                    let realm = Arc::new(Realm::new(name.clone(), admission, self.mesh.as_ref()));
                    map.insert(name, realm);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The keys are a wire format: pinned to the encoding every node uses.
    #[test]
    fn dht_keys_hash_label_and_nul_separated_parts() {
        let sha = |b: &[u8]| ring::digest::digest(&ring::digest::SHA256, b).as_ref().to_vec();
        assert_eq!(super::mesh_catalog::tools_key("r").0.to_vec(), sha(b"fovea/tools/v1\0r"));
        let k = fovea_core::discovery::interest_key("r", "a");
        assert_eq!(k.0.to_vec(), sha(b"fovea/interest/v1\0r\0a"));
        assert_eq!(fovea_core::discovery::provider_key("r", "p.x").0.to_vec(), sha(b"fovea/provider/v1\0r\0p.x"));
    }
}
