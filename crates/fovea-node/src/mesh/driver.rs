//! The DHT's driver: one task owns [`fovea_core::dht::Dht`] and the links' failure
//! detector ([`fovea_core::failure::Detector`]), feeds them what links bring and the time,
//! sends what they yield, and answers the commands of the layers above.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fovea_core::dht::{self, Contact, Dht, NodeId};
use fovea_core::failure::{self, Detector};
use fovea_core::frame::DhtFrame;
use fovea_core::Frame;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{hex, lock, Mesh, MeshSnapshot};

pub(super) enum Input {
    Message {
        from: Contact,
        rpc: u64,
        msg: dht::Message,
    },
    /// A failure detector's message from a linked node.
    Probe {
        from: Contact,
        msg: failure::Message,
    },
    /// A link brought something from this node (sent at most every few hundred ms per link):
    /// it is alive, and need not be probed.
    Heard(NodeId),
    /// A link came up (joined, or accepted).
    Up(Contact),
    /// A link closed to save resources (idle, evicted): its node is alive and stays
    /// known, but is no longer probed.
    Unlinked(NodeId),
    /// A link closed or a dial failed.
    Down(NodeId),
    Command(Command),
}

pub(super) enum Command {
    Snapshot(oneshot::Sender<(Vec<String>, usize, u64, u64)>),
    FindRecords(dht::Key, oneshot::Sender<Vec<dht::Record>>),
    Publish(dht::Key, Bytes, Duration),
    Withdraw(dht::Key),
    Retract(dht::Key, Duration),
    FindNode(NodeId, oneshot::Sender<Vec<Contact>>),
}

impl Mesh {
    pub(super) async fn drive_dht(
        self: Arc<Self>,
        mut dht: Dht,
        mut fd: Detector,
        mut rx: mpsc::Receiver<Input>,
        shutdown: CancellationToken,
    ) {
        let mut waiting_records: HashMap<dht::LookupId, oneshot::Sender<Vec<dht::Record>>> = HashMap::new();
        let mut waiting_nodes: HashMap<dht::LookupId, oneshot::Sender<Vec<Contact>>> = HashMap::new();
        let mut last_bootstrap: Option<Instant> = None;
        loop {
            let deadline = [dht.poll_timeout(), fd.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    let now = Instant::now();
                    match input {
                        Input::Message { from, rpc, msg } => {
                            fd.heard(&from.id, now);
                            dht.handle(now, from, rpc, msg);
                        }
                        Input::Probe { from, msg } => fd.handle(now, from, msg),
                        Input::Heard(id) => fd.heard(&id, now),
                        Input::Up(peer) => {
                            let new = !dht.table().contains(&peer.id);
                            dht.add_contact(peer, now);
                            // Every linked node is watched; the DHT's closest neighbours
                            // help probe a suspect when few links are up.
                            if !fd.watch(peer, now) {
                                tracing::debug!(peer = %peer.id, "failure detector full: peer not watched");
                            }
                            for c in dht.table().closest(&self.local.id, 4) {
                                fd.add_helper(c);
                            }
                            // A node not known before may know a part of the mesh this node
                            // does not (first join, a healed partition): look ourselves up
                            // through it, at most every few seconds.
                            if new && last_bootstrap.is_none_or(|t: Instant| now.duration_since(t) >= Duration::from_secs(5)) {
                                dht.bootstrap(now);
                                last_bootstrap = Some(now);
                            }
                        }
                        Input::Unlinked(id) => fd.unwatch(&id),
                        Input::Down(id) => {
                            fd.unwatch(&id);
                            dht.remove_contact(&id, now);
                            let _ = self.departed.send(id);
                        }
                        Input::Command(c) => match c {
                            Command::Snapshot(tx) => {
                                let s = dht.stats();
                                let contacts = dht.table().contacts().map(|c| hex(&c.id)).collect();
                                let _ = tx.send((contacts, dht.store().len(), s.lookups_started, s.requests_timed_out));
                            }
                            Command::FindRecords(key, tx) => match dht.find_records(now, key) {
                                Some(id) => { waiting_records.insert(id, tx); }
                                None => { let _ = tx.send(Vec::new()); }
                            },
                            Command::FindNode(target, tx) => match dht.find_node(now, target) {
                                Some(id) => { waiting_nodes.insert(id, tx); }
                                None => { let _ = tx.send(Vec::new()); }
                            },
                            Command::Publish(key, value, ttl) => { dht.publish(now, key, value, ttl); }
                            Command::Withdraw(key) => { dht.withdraw(&key); }
                            Command::Retract(key, ttl) => { dht.retract(now, key, ttl); }
                        },
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let now = Instant::now();
                    dht.handle_timeout(now);
                    fd.handle_timeout(now);
                }
            }
            while let Some(t) = fd.poll_transmit() {
                let mut body = BytesMut::new();
                failure::wire::encode(&t.msg, &mut body);
                self.send_on_link(&t.to.id, &Frame::Probe(body.freeze()));
            }
            while let Some(failure::Event::Dead(peer)) = fd.poll_event() {
                // Heard from by no path: gone, as if its link had closed (which it is now).
                tracing::info!(peer = %peer.id, addr = %peer.addr, "mesh peer stopped answering probes: dropped");
                self.stats.peers_dead.fetch_add(1, Ordering::Relaxed);
                self.close_dead_link(&peer.id);
                dht.remove_contact(&peer.id, Instant::now());
                let _ = self.departed.send(peer.id);
            }
            while let Some(t) = dht.poll_transmit() {
                let mut body = BytesMut::new();
                dht::wire::encode(&t.msg, &mut body);
                let _ = self.send(t.to, Frame::Dht(DhtFrame { rpc: t.rpc, body: body.freeze() }));
            }
            while let Some(e) = dht.poll_event() {
                match e {
                    dht::Event::RecordsFound { id, records, .. } => {
                        if let Some(tx) = waiting_records.remove(&id) {
                            let _ = tx.send(records);
                        }
                    }
                    dht::Event::NodesFound { id, closest, .. } => {
                        if let Some(tx) = waiting_nodes.remove(&id) {
                            let _ = tx.send(closest);
                        }
                    }
                    dht::Event::Published { key, stored_at, .. } => {
                        tracing::debug!(key = %key, stored_at, "record published");
                    }
                    dht::Event::Notified { record } => {
                        // No receiver yet is fine: nobody watches that key any more.
                        let _ = self.notified.send(record);
                    }
                }
            }
        }
    }

    pub(super) async fn command<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.inputs.send(Input::Command(make(tx))).await.ok()?;
        rx.await.ok()
    }

    /// The mesh as it stands.
    pub async fn snapshot(&self) -> MeshSnapshot {
        let (mut table, records, lookups, timed_out) = self.command(Command::Snapshot).await.unwrap_or_default();
        table.sort();
        let mut links: Vec<(String, SocketAddr)> = lock(&self.links).iter().map(|(id, l)| (hex(id), l.addr)).collect();
        links.sort();
        MeshSnapshot {
            node_id: hex(&self.local.id),
            mesh_addr: self.local.addr,
            links,
            dht_contacts: table.len(),
            dht_table: table,
            dht_records: records,
            dht_lookups: lookups,
            dht_requests_timed_out: timed_out,
            peers_refused: self.stats.peers_refused.load(Ordering::Relaxed),
            dht_dropped: self.stats.dht_dropped.load(Ordering::Relaxed),
            frames_dropped: self.stats.frames_dropped.load(Ordering::Relaxed),
        }
    }

    /// Publishes this node's record under `key` (republished until withdrawn).
    pub async fn publish(&self, key: dht::Key, value: Bytes, ttl: Duration) {
        let _ = self.inputs.send(Input::Command(Command::Publish(key, value, ttl))).await;
    }

    /// Changes pushed for keys this node looked up with [`Mesh::find_records`] in the last
    /// `watch_ttl` (an empty value is a retraction).
    pub fn notifications(&self) -> tokio::sync::broadcast::Receiver<dht::Record> {
        self.notified.subscribe()
    }

    /// Replaces this node's record under `key` with a retraction, pushed to watchers.
    pub async fn retract(&self, key: dht::Key, ttl: Duration) {
        let _ = self.inputs.send(Input::Command(Command::Retract(key, ttl))).await;
    }

    /// Stops republishing the record under `key`.
    pub async fn withdraw(&self, key: dht::Key) {
        let _ = self.inputs.send(Input::Command(Command::Withdraw(key))).await;
    }

    /// Every live record under `key`, from a DHT lookup.
    pub async fn find_records(&self, key: dht::Key) -> Vec<dht::Record> {
        self.command(|tx| Command::FindRecords(key, tx)).await.unwrap_or_default()
    }

    /// The nodes closest to `target`, from a DHT lookup.
    pub async fn find_node(&self, target: NodeId) -> Vec<Contact> {
        self.command(|tx| Command::FindNode(target, tx)).await.unwrap_or_default()
    }
}
