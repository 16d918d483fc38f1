//! Several real nodes on loopback forming a mesh: joining, authentication, the DHT over
//! pooled links.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{converges, TestNode};
use fovea_core::dht::NodeId;

const SECRET: &str = "a mesh secret of some length";

fn mesh(n: &TestNode) -> &fovea_node::mesh::Mesh {
    n.mesh.as_deref().expect("mesh node")
}

#[tokio::test]
async fn nodes_join_through_any_member_and_find_each_other() {
    let a = TestNode::start_mesh(SECRET, &[]).await;
    let b = TestNode::start_mesh(SECRET, &[a.mesh_addr()]).await;
    // C knows only B, yet ends up knowing A too, through the DHT.
    let c = TestNode::start_mesh(SECRET, &[b.mesh_addr()]).await;
    for n in [&a, &b, &c] {
        converges("every node to know the two others", || async { mesh(n).snapshot().await.dht_contacts == 2 }).await;
    }
    // A record C publishes is found from A.
    let key = NodeId([7; 32]);
    mesh(&c).publish(key, Bytes::from_static(b"provider on c"), Duration::from_secs(60)).await;
    let c_id = mesh(&c).local().id;
    converges("A to find C's record", || async {
        mesh(&a).find_records(key).await.iter().any(|r| r.publisher == c_id)
    })
    .await;
    let found = mesh(&a).find_records(key).await;
    assert_eq!(found.len(), 1);
    assert_eq!(&found[0].value[..], b"provider on c");
    for n in [a, b, c] {
        n.stop().await;
    }
}

#[tokio::test]
async fn a_node_without_the_secret_cannot_join() {
    let a = TestNode::start_mesh(SECRET, &[]).await;
    let stranger = TestNode::start_mesh("not the mesh secret at all", &[a.mesh_addr()]).await;
    converges("A to refuse the stranger", || async { mesh(&a).snapshot().await.peers_refused >= 1 }).await;
    let snap = mesh(&a).snapshot().await;
    assert!(snap.links.is_empty(), "{snap:?}");
    assert_eq!(snap.dht_contacts, 0);
    assert_eq!(mesh(&stranger).snapshot().await.dht_contacts, 0);
    stranger.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn a_dead_node_leaves_the_tables_and_a_restarted_one_rejoins() {
    let a = TestNode::start_mesh(SECRET, &[]).await;
    let b = TestNode::start_mesh(SECRET, &[a.mesh_addr()]).await;
    let c_dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let c = TestNode::start_mesh_in(c_dir.clone(), SECRET, &[a.mesh_addr()]).await;
    let c_id = mesh(&c).local().id;
    for n in [&a, &b] {
        converges("every node to know the two others", || async { mesh(n).snapshot().await.dht_contacts == 2 }).await;
    }
    c.stop().await;
    // Its links close; A and B drop it.
    for n in [&a, &b] {
        converges("the dead node to leave the tables", || async { mesh(n).snapshot().await.dht_contacts == 1 }).await;
    }
    // Restarted with the same data dir it has the same id, and rejoins on its own.
    let c = TestNode::start_mesh_in(c_dir, SECRET, &[a.mesh_addr()]).await;
    assert_eq!(mesh(&c).local().id, c_id);
    for n in [&a, &b, &c] {
        converges("every node to know the two others", || async { mesh(n).snapshot().await.dht_contacts == 2 }).await;
    }
    for n in [a, b, c] {
        n.stop().await;
    }
}
