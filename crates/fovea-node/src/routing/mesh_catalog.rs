//! Tools across the mesh: every node's MCP endpoint lists (and calls) the tools of the
//! whole realm, wherever their providers are connected.
//!
//! Descriptors are too large for DHT records (4 KiB), so the DHT carries only *that* a
//! node has tools in a realm, and which version of them:
//!
//! ```text
//!  key   SHA-256("fovea/tools/v1\0" realm)
//!  value "<mesh addr> <version>"     one record per node with tools in the realm
//! ```
//!
//! Every node watches the key of each of its realms. When a record appears or its version
//! changes, the node asks the publisher for its list over their link (`MESH_TOOLS` →
//! `TOOL_LIST`) and puts it into the realm's catalog under one key per remote node, which
//! bumps the catalog's version: agents get `tools/list_changed` as for a local change. A
//! retraction, or the node leaving the mesh, removes its tools. Calls then route as any
//! call does (the provider records find the node).
//!
//! Cost: one small record per (node, realm) with tools; one `MESH_TOOLS` round trip per
//! watcher per change. Bounded by the catalog's own limits: a list larger than a frame
//! (1 MiB) is cut by the sender.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use fovea_core::dht::{Contact, Key, NodeId, Record};
use fovea_core::tool::Descriptor;
use tokio_util::sync::CancellationToken;

use crate::mesh::Mesh;
use crate::sync::lock;

/// Lifetime of a tools record at the storers (republished by the DHT while held).
const RECORD_TTL: Duration = Duration::from_secs(150);

/// How often watched keys are looked up again (which renews the watch at the storers;
/// watches last 60 s).
const RENEW_EVERY: Duration = Duration::from_secs(30);

/// Right after start the mesh is still being joined, and a lookup may reach no storer:
/// watched keys are looked up this often during [`WARM_UP`].
const RENEW_EARLY: Duration = Duration::from_secs(1);
const WARM_UP: Duration = Duration::from_secs(20);

/// How soon local changes are published.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A remote node's tools go into a realm catalog under a key with this bit set; local
/// registrations number from 1 and never reach it.
pub(crate) const REMOTE_KEY: u64 = 1 << 63;

/// The DHT key of realm `realm`'s tools records.
pub fn tools_key(realm: &str) -> Key {
    fovea_core::dht::NodeId::derive(b"fovea/tools/v1", &[realm.as_bytes()])
}

/// The catalog key of remote node `id`'s tools.
pub(crate) fn remote_key(id: &NodeId) -> u64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&id.0[..8]);
    u64::from_le_bytes(k) | REMOTE_KEY
}

/// One node's part in the realm-wide tool catalogs.
pub(crate) struct MeshCatalog {
    mesh: Arc<Mesh>,
    /// Realm → (local tools, version of this node's local tools).
    local: Mutex<HashMap<String, (usize, u64)>>,
    dirty: Mutex<HashSet<String>>,
    /// Watched keys → realm.
    watched: Mutex<HashMap<Key, String>>,
    /// (realm, node) → the version whose list was applied (or is being fetched).
    seen: Mutex<HashMap<(String, NodeId), u64>>,
    /// Whose realms' catalogs get the remote lists (weak: the router owns this).
    router: Weak<super::Router>,
    flush_now: tokio::sync::Notify,
}

impl MeshCatalog {
    pub(crate) fn new(mesh: Arc<Mesh>, router: Weak<super::Router>) -> Arc<MeshCatalog> {
        Arc::new(MeshCatalog {
            mesh,
            local: Mutex::new(HashMap::new()),
            dirty: Mutex::new(HashSet::new()),
            watched: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            router,
            flush_now: tokio::sync::Notify::new(),
        })
    }

    /// Puts remote node `node`'s tools of `realm` into the realm's catalog (empty: it has
    /// none now).
    fn apply(&self, realm: &str, node: &NodeId, entries: Vec<(String, Descriptor)>) {
        if let Some(r) = self.router.upgrade().and_then(|r| r.realm(realm)) {
            r.set_remote_tools(node, entries);
        }
    }

    /// This node's own tools of `realm` changed; `count` of them are left.
    pub(crate) fn local_changed(&self, realm: &str, count: usize) {
        {
            let mut local = lock(&self.local);
            let entry = local.entry(realm.to_owned()).or_insert((0, 0));
            *entry = (count, entry.1 + 1);
        }
        lock(&self.dirty).insert(realm.to_owned());
        self.flush_now.notify_one();
    }

    /// Starts following the tools of `realm` on other nodes.
    pub(crate) fn watch(self: &Arc<Self>, realm: &str) {
        let key = tools_key(realm);
        if lock(&self.watched).insert(key, realm.to_owned()).is_none() {
            let me = self.clone();
            tokio::spawn(async move { me.look_up(key).await });
        }
    }

    async fn look_up(self: Arc<Self>, key: Key) {
        let records = self.mesh.find_records(key).await;
        for r in records {
            self.consider(&r);
        }
    }

    /// A tools record, from a lookup or a push.
    fn consider(self: &Arc<Self>, record: &Record) {
        let Some(realm) = lock(&self.watched).get(&record.key).cloned() else { return };
        if record.publisher == self.mesh.local().id {
            return;
        }
        let parsed = std::str::from_utf8(&record.value).ok().and_then(|v| {
            let (addr, version) = v.split_once(' ')?;
            Some((addr.parse().ok()?, version.parse::<u64>().ok()?))
        });
        let key = (realm.clone(), record.publisher);
        let Some((addr, version)) = parsed else {
            // A retraction: the node has no tools in the realm now.
            if lock(&self.seen).remove(&key).is_some() {
                self.apply(&realm, &record.publisher, Vec::new());
            }
            return;
        };
        if lock(&self.seen).insert(key.clone(), version) == Some(version) {
            return;
        }
        let me = self.clone();
        let node = Contact { id: record.publisher, addr };
        tokio::spawn(async move {
            let Some(json) = me.mesh.fetch_tools(node, &Bytes::from(realm.clone().into_bytes())).await else {
                // Unreachable now; the next push or renewal tries again.
                lock(&me.seen).remove(&key);
                return;
            };
            // A newer version may have been seen while this one was fetched; it fetches too.
            if lock(&me.seen).get(&key) != Some(&version) {
                return;
            }
            me.apply(&realm, &node.id, parse_list(&json));
        });
    }

    /// A node left the mesh: its tools go.
    fn node_gone(&self, id: &NodeId) {
        let realms: Vec<String> = {
            let mut seen = lock(&self.seen);
            let realms = seen.keys().filter(|(_, n)| n == id).map(|(r, _)| r.clone()).collect();
            seen.retain(|(_, n), _| n != id);
            realms
        };
        for realm in realms {
            self.apply(&realm, id, Vec::new());
        }
    }

    async fn flush(&self) {
        let dirty: Vec<String> = lock(&self.dirty).drain().collect();
        for realm in dirty {
            let state = lock(&self.local).get(&realm).copied();
            let key = tools_key(&realm);
            match state {
                Some((count, version)) if count > 0 => {
                    let value = Bytes::from(format!("{} {version}", self.mesh.local().addr));
                    self.mesh.publish(key, value, RECORD_TTL).await;
                }
                _ => self.mesh.retract(key, RECORD_TTL).await,
            }
        }
    }

    /// Publishes local changes, follows pushes and departures, renews watches; until `stop`.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut pushes = self.mesh.notifications();
        let mut departures = self.mesh.departures();
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut renew = tokio::time::interval(RENEW_EARLY);
        let started = tokio::time::Instant::now();
        let mut warm = true;
        loop {
            if warm && started.elapsed() > WARM_UP {
                warm = false;
                renew = tokio::time::interval(RENEW_EVERY);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = flush.tick() => self.flush().await,
                () = self.flush_now.notified() => self.flush().await,
                _ = renew.tick() => {
                    let keys: Vec<Key> = lock(&self.watched).keys().copied().collect();
                    for key in keys {
                        tokio::spawn(self.clone().look_up(key));
                    }
                }
                r = pushes.recv() => match r {
                    Ok(record) => self.consider(&record),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Missed pushes: look every watched key up again at once.
                        renew.reset_immediately();
                    }
                    Err(_) => return,
                },
                d = departures.recv() => if let Ok(id) = d { self.node_gone(&id) },
            }
        }
    }
}

/// A `TOOL_LIST` JSON array as (procedure, descriptor) pairs; malformed entries (and
/// descriptors this node would refuse) are skipped.
fn parse_list(json: &[u8]) -> Vec<(String, Descriptor)> {
    let Ok(serde_json::Value::Array(items)) = serde_json::from_slice(json) else { return Vec::new() };
    items
        .iter()
        .filter_map(|item| {
            let procedure = item.get("procedure")?.as_str()?;
            fovea_core::Procedure::new(procedure).ok()?;
            let raw = serde_json::to_vec(item.get("tool")?).ok()?;
            Some((procedure.to_owned(), Descriptor::parse(&raw).ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_bad_entries_are_skipped() {
        let json = br#"[{"procedure":"a.b","tool":{"description":"ok"}},
                        {"procedure":"bad name","tool":{"description":"x"}},
                        {"procedure":"c","tool":{"description":"hidden\u200b"}},
                        {"procedure":"d"}]"#;
        let list = parse_list(json);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].0, "a.b");
        assert!(parse_list(b"garbage").is_empty());
        assert_ne!(remote_key(&NodeId([7; 32])) & REMOTE_KEY, 0);
    }
}
