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

/// A member that keeps one link at a time, reaped after `idle`.
fn one_link(join: Vec<std::net::SocketAddr>, idle: Duration) -> fovea_node::MeshConfig {
    let mut m = fovea_node::MeshConfig::new("127.0.0.1:0".parse().unwrap(), SECRET);
    m.join = join;
    m.max_links = 1;
    m.link_idle = idle;
    m
}

/// Each node's mesh view, for a failure message.
async fn snapshots(nodes: &[&TestNode]) -> Vec<fovea_node::mesh::MeshSnapshot> {
    let mut snaps = Vec::new();
    for n in nodes {
        snaps.push(mesh(n).snapshot().await);
    }
    snaps
}

/// A subscriber on `<prefix>.<i>` and a publishing client for each node, in order.
async fn subscriber_and_publisher_each(
    nodes: &[&TestNode],
    prefix: &str,
) -> (Vec<fovea_client::Subscription>, Vec<fovea_client::Client>) {
    let (mut subs, mut pubs) = (Vec::new(), Vec::new());
    for (i, n) in nodes.iter().enumerate() {
        subs.push(n.client().await.subscribe(&format!("{prefix}.{i}")).await.unwrap());
        pubs.push(n.client().await);
    }
    (subs, pubs)
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

/// A node that looked a key up is pushed new records under it: the mechanism that tells
/// publishers about a new remote subscriber without waiting for a cache refresh.
#[tokio::test]
async fn new_records_are_pushed_to_nodes_that_looked_the_key_up() {
    let a = TestNode::start_mesh(SECRET, &[]).await;
    let b = TestNode::start_mesh(SECRET, &[a.mesh_addr()]).await;
    let c = TestNode::start_mesh(SECRET, &[a.mesh_addr()]).await;
    for n in [&a, &b, &c] {
        converges("every node to know the two others", || async { mesh(n).snapshot().await.dht_contacts == 2 }).await;
    }
    let key = NodeId([9; 32]);
    let mut pushed = mesh(&a).notifications();
    assert!(mesh(&a).find_records(key).await.is_empty());
    let t0 = std::time::Instant::now();
    mesh(&c).publish(key, Bytes::from_static(b"interest"), Duration::from_secs(60)).await;
    let record = tokio::time::timeout(Duration::from_secs(10), pushed.recv()).await.expect("pushed in time").unwrap();
    eprintln!("record pushed {:?} after publishing", t0.elapsed());
    assert_eq!(record.publisher, mesh(&c).local().id);
    mesh(&c).retract(key, Duration::from_secs(30)).await;
    // Several storers push the same change; consumers take them as idempotent updates.
    let retraction = async {
        loop {
            let r = pushed.recv().await.unwrap();
            if r.value.is_empty() {
                break r;
            }
        }
    };
    let retracted = tokio::time::timeout(Duration::from_secs(10), retraction).await.expect("retraction in time");
    assert_eq!(retracted.publisher, mesh(&c).local().id);
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// In a two-node mesh the publisher is also the only other storer: the watcher still hears.
#[tokio::test]
async fn records_are_pushed_in_a_two_node_mesh() {
    let a = TestNode::start_mesh(SECRET, &[]).await;
    let b = TestNode::start_mesh(SECRET, &[a.mesh_addr()]).await;
    for n in [&a, &b] {
        converges("the two nodes to know each other", || async { mesh(n).snapshot().await.dht_contacts == 1 }).await;
    }
    let key = NodeId([3; 32]);
    let mut pushed = mesh(&a).notifications();
    assert!(mesh(&a).find_records(key).await.is_empty());
    mesh(&b).publish(key, Bytes::from_static(b"x"), Duration::from_secs(60)).await;
    let record = tokio::time::timeout(Duration::from_secs(10), pushed.recv()).await.expect("pushed in time").unwrap();
    assert_eq!(record.publisher, mesh(&b).local().id);
    for n in [a, b] {
        n.stop().await;
    }
}

async fn recv(sub: &mut fovea_client::Subscription) -> fovea_client::Message {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("message in time")
        .expect("subscription open")
}

/// Wildcard pub/sub across nodes: a publisher on A reaches subscribers on B and C whose
/// patterns match, each message once, in order; nobody else.
#[tokio::test]
async fn wildcard_messages_cross_the_mesh() {
    let a = TestNode::start_mesh(SECRET, &[]).await;
    let b = TestNode::start_mesh(SECRET, &[a.mesh_addr()]).await;
    let c = TestNode::start_mesh(SECRET, &[a.mesh_addr()]).await;
    for n in [&a, &b, &c] {
        converges("every node to know the two others", || async { mesh(n).snapshot().await.dht_contacts == 2 }).await;
    }
    let (sb, sc) = (b.client().await, c.client().await);
    let mut all = sb.subscribe("sensors.>").await.unwrap();
    let mut temps = sc.subscribe("sensors.*.temp").await.unwrap();
    let mut other = sc.subscribe("actuators.>").await.unwrap();
    // Interest is published within a flush interval; the first publish on A then finds it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let p = a.client().await;
    for i in 0..100u32 {
        p.publish("sensors.kitchen.temp", i.to_be_bytes().to_vec()).await.unwrap();
    }
    p.publish("sensors.kitchen.humidity", "40").await.unwrap();
    for i in 0..100u32 {
        assert_eq!(&recv(&mut all).await.payload[..], &i.to_be_bytes(), "B, message {i}");
        assert_eq!(&recv(&mut temps).await.payload[..], &i.to_be_bytes(), "C, message {i}");
    }
    assert_eq!(recv(&mut all).await.topic.as_str(), "sensors.kitchen.humidity");
    p.flush().await.unwrap();
    let nothing = tokio::time::timeout(Duration::from_millis(300), temps.next()).await;
    assert!(nothing.is_err(), "C must not get sensors.kitchen.humidity: {nothing:?}");
    assert!(tokio::time::timeout(Duration::from_millis(100), other.next()).await.is_err());
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// A subscriber that appears after the publisher's node has cached "nobody here" is told
/// to it by the DHT's push, and receives what is published next.
#[tokio::test]
async fn a_late_subscriber_is_reached() {
    let a = TestNode::start_mesh(SECRET, &[]).await;
    let b = TestNode::start_mesh(SECRET, &[a.mesh_addr()]).await;
    for n in [&a, &b] {
        converges("the two nodes to know each other", || async { mesh(n).snapshot().await.dht_contacts == 1 }).await;
    }
    let p = a.client().await;
    // A learns that nobody on other nodes wants `late.*`.
    p.publish("late.x", "before").await.unwrap();
    p.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sb = b.client().await;
    let t0 = std::time::Instant::now();
    let mut sub = sb.subscribe("late.*").await.unwrap();
    // Publish until the first message arrives: the discovery latency of a new subscriber.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let got = loop {
        p.publish("late.x", "after").await.unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(5), sub.next()).await {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "the late subscriber was never reached");
    };
    eprintln!("late subscriber reached {:?} after subscribing", t0.elapsed());
    assert_eq!(&got.payload[..], b"after");
    for n in [a, b] {
        n.stop().await;
    }
}

/// Serves `name` on `node`, answering with `tag`.
async fn provide(node: &TestNode, name: &str, tag: &'static str) -> fovea_client::Client {
    let client = node.client().await;
    let mut reg = client.register(name).await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = reg.next().await {
            req.respond(Bytes::from_static(tag.as_bytes()));
        }
    });
    client
}

/// RPC across nodes: calls from A are balanced over providers on B and C; when B goes
/// away, calls go on through C; a procedure nobody provides anywhere is NO_PROVIDER.
#[tokio::test]
async fn calls_cross_the_mesh_and_fail_over() {
    let a = TestNode::start_mesh(SECRET, &[]).await;
    let b = TestNode::start_mesh(SECRET, &[a.mesh_addr()]).await;
    let c = TestNode::start_mesh(SECRET, &[a.mesh_addr()]).await;
    for n in [&a, &b, &c] {
        converges("every node to know the two others", || async { mesh(n).snapshot().await.dht_contacts == 2 }).await;
    }
    let _pb = provide(&b, "math.where", "b").await;
    let _pc = provide(&c, "math.where", "c").await;
    // Registrations are published within a flush interval.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let caller = a.client().await;
    let mut served = std::collections::HashMap::new();
    for _ in 0..60 {
        let r = caller.call("math.where", "", Duration::from_secs(5)).await.unwrap();
        *served.entry(String::from_utf8_lossy(&r.payload).into_owned()).or_insert(0) += 1;
    }
    assert!(served.get("b").copied().unwrap_or(0) > 0 && served.get("c").copied().unwrap_or(0) > 0, "{served:?}");
    b.stop().await;
    // After B's link closes, every call is answered by C.
    converges("calls to go to C only", || async {
        matches!(caller.call("math.where", "", Duration::from_secs(5)).await, Ok(r) if &r.payload[..] == b"c")
    })
    .await;
    for _ in 0..20 {
        let r = caller.call("math.where", "", Duration::from_secs(5)).await.unwrap();
        assert_eq!(&r.payload[..], b"c");
    }
    let missing = caller.call("math.nobody", "", Duration::from_secs(5)).await;
    assert!(matches!(missing, Err(fovea_client::ClientError::NoProvider(_))), "{missing:?}");
    for n in [a, c] {
        n.stop().await;
    }
}

/// Realms stay apart across the mesh: with the same topic in two realms, each realm's
/// subscriber on B gets only its own realm's messages from A.
#[tokio::test]
async fn realms_stay_apart_across_nodes() {
    let digest = |t: &str| {
        let d = ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
        d.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let realms = format!(
        r#"
[[realm]]
name = "red"
[[realm.user]]
name = "r"
token_sha256 = "{red}"
publish = [">"]
subscribe = [">"]

[[realm]]
name = "blue"
[[realm.user]]
name = "b"
token_sha256 = "{blue}"
publish = [">"]
subscribe = [">"]
"#,
        red = digest("red-token"),
        blue = digest("blue-token")
    );
    let dir = || std::sync::Arc::new(tempfile::tempdir().unwrap());
    let a = TestNode::start_mesh_realms(dir(), SECRET, &[], Some(&realms)).await;
    let b = TestNode::start_mesh_realms(dir(), SECRET, &[a.mesh_addr()], Some(&realms)).await;
    for n in [&a, &b] {
        converges("the two nodes to know each other", || async { mesh(n).snapshot().await.dht_contacts == 1 }).await;
    }
    let connect = |node: &TestNode, realm: &str, token: &str| {
        let opts = node.options().realm(realm).token(token.as_bytes().to_vec());
        let url = node.url();
        async move { fovea_client::Client::connect(&url, opts).await.unwrap() }
    };
    let (red_sub, blue_sub) = (connect(&b, "red", "red-token").await, connect(&b, "blue", "blue-token").await);
    let mut red = red_sub.subscribe("alerts.>").await.unwrap();
    let mut blue = blue_sub.subscribe("alerts.>").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (red_pub, blue_pub) = (connect(&a, "red", "red-token").await, connect(&a, "blue", "blue-token").await);
    red_pub.publish("alerts.fire", "red").await.unwrap();
    blue_pub.publish("alerts.fire", "blue").await.unwrap();
    assert_eq!(&recv(&mut red).await.payload[..], b"red");
    assert_eq!(&recv(&mut blue).await.payload[..], b"blue");
    red_pub.flush().await.unwrap();
    blue_pub.flush().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), red.next()).await.is_err());
    assert!(tokio::time::timeout(Duration::from_millis(100), blue.next()).await.is_err());
    for n in [a, b] {
        n.stop().await;
    }
}

/// A queue group spanning nodes gets each message once, mesh-wide, shared among members
/// on every node; a plain subscriber beside it gets everything.
#[tokio::test]
async fn queue_groups_span_the_mesh() {
    let a = TestNode::start_mesh(SECRET, &[]).await;
    let b = TestNode::start_mesh(SECRET, &[a.mesh_addr()]).await;
    let c = TestNode::start_mesh(SECRET, &[a.mesh_addr()]).await;
    for n in [&a, &b, &c] {
        converges("every node to know the two others", || async { mesh(n).snapshot().await.dht_contacts == 2 }).await;
    }
    let (ca, cb, cc) = (a.client().await, b.client().await, c.client().await);
    let members = vec![
        ("a", ca.subscribe_group("jobs.>", "workers").await.unwrap()),
        ("b", cb.subscribe_group("jobs.>", "workers").await.unwrap()),
        ("b", cb.subscribe_group("jobs.>", "workers").await.unwrap()),
        ("c", cc.subscribe_group("jobs.>", "workers").await.unwrap()),
    ];
    let mut watcher = cc.subscribe("jobs.>").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let p = a.client().await;
    // The first message resolves `jobs` on A; while that runs, groups are served by A's
    // own member (messages wait only for plain subscribers elsewhere). Then share.
    p.publish("jobs.warmup", "w").await.unwrap();
    assert_eq!(recv(&mut watcher).await.topic.as_str(), "jobs.warmup");
    let mut members = members;
    for (_, sub) in &mut members {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {}
    }
    const N: u32 = 400;
    for i in 0..N {
        p.publish("jobs.run", i.to_be_bytes().to_vec()).await.unwrap();
    }
    p.flush().await.unwrap();
    for i in 0..N {
        assert_eq!(&recv(&mut watcher).await.payload[..], &i.to_be_bytes(), "the plain subscriber gets everything");
    }
    let mut got = std::collections::BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for (node, mut sub) in members {
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            assert!(seen.insert(m.payload.clone()), "a message reached the group twice");
            *got.entry(node).or_insert(0u32) += 1;
        }
    }
    assert_eq!(seen.len() as u32, N, "every message reached the group once: {got:?}");
    assert!(got.len() == 3, "members on every node got a share: {got:?}");
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// Many new topics in a row, each subscribed on B just before A publishes to it: every
/// one becomes visible (the bench's discovery probe, as a test).
#[tokio::test]
async fn new_subscriptions_become_visible_every_time() {
    let a = TestNode::start_mesh(SECRET, &[]).await;
    let b = TestNode::start_mesh(SECRET, &[a.mesh_addr()]).await;
    for n in [&a, &b] {
        converges("the two nodes to know each other", || async { mesh(n).snapshot().await.dht_contacts == 1 }).await;
    }
    let (p, s) = (a.client().await, b.client().await);
    for i in 0..30 {
        let topic = format!("fresh{i}.x");
        let mut sub = s.subscribe(&topic).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            p.publish(&topic, "x").await.unwrap();
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(2), sub.next()).await {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{topic} never crossed");
        }
    }
    for n in [a, b] {
        n.stop().await;
    }
}

/// Admission by certificate: nodes with certificates from the mesh CA join (no secret);
/// a node whose certificate comes from another CA is refused.
#[tokio::test]
async fn a_mesh_ca_admits_its_nodes_only() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (ca_cert, ca_key) = fovea_node::tls::new_mesh_ca("test mesh CA").unwrap();
    let (other_cert, other_key) = fovea_node::tls::new_mesh_ca("another CA").unwrap();
    let ca_path = write("ca.crt", &ca_cert);
    let config = |name: &str, ca: (&str, &str), join: Vec<std::net::SocketAddr>| {
        let (cert, key) = fovea_node::tls::new_mesh_node_cert(name, ca.0, ca.1).unwrap();
        let mut m = fovea_node::MeshConfig::new("127.0.0.1:0".parse().unwrap(), "");
        m.secret = None;
        m.ca = Some(ca_path.clone());
        m.identity = Some(fovea_node::TlsFiles {
            cert: write(&format!("{name}.crt"), &cert),
            key: write(&format!("{name}.key"), &key),
        });
        m.join = join;
        m
    };
    let a = TestNode::start_mesh_config(config("a", (&ca_cert, &ca_key), vec![])).await;
    let b = TestNode::start_mesh_config(config("b", (&ca_cert, &ca_key), vec![a.mesh_addr()])).await;
    for n in [&a, &b] {
        converges("the two nodes to know each other", || async { mesh(n).snapshot().await.dht_contacts == 1 }).await;
    }
    let stranger = TestNode::start_mesh_config(config("x", (&other_cert, &other_key), vec![a.mesh_addr()])).await;
    converges("A to refuse the stranger", || async { mesh(&a).snapshot().await.peers_refused >= 1 }).await;
    assert_eq!(mesh(&a).snapshot().await.dht_contacts, 1);
    assert_eq!(mesh(&stranger).snapshot().await.dht_contacts, 0);
    for n in [a, b, stranger] {
        n.stop().await;
    }
}

/// Links are a bounded pool: idle links are closed, and at the limit the least recently
/// used one makes room; either way the node stays known and the link is dialed again when
/// needed, so messages keep flowing.
#[tokio::test]
async fn idle_and_evicted_links_come_back_when_needed() {
    let config = |join| one_link(join, Duration::from_millis(300));
    let a = TestNode::start_mesh_config(config(vec![])).await;
    let b = TestNode::start_mesh_config(config(vec![a.mesh_addr()])).await;
    let c = TestNode::start_mesh_config(config(vec![a.mesh_addr()])).await;
    converges("A to know B and C", || async { mesh(&a).snapshot().await.dht_contacts == 2 }).await;
    let (sb, sc) = (b.client().await, c.client().await);
    let mut on_b = sb.subscribe("pool.b").await.unwrap();
    let mut on_c = sc.subscribe("pool.c").await.unwrap();
    let p = a.client().await;
    // One link at a time on A: each publish alternates the peer it needs.
    for round in 0..3 {
        for (topic, sub) in [("pool.b", &mut on_b), ("pool.c", &mut on_c)] {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                p.publish(topic, format!("{round}")).await.unwrap();
                if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), sub.next()).await {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "{topic} stopped flowing in round {round}");
            }
        }
    }
    let snap = mesh(&a).snapshot().await;
    assert!(snap.links.len() <= 1, "{snap:?}");
    assert_eq!(snap.dht_contacts, 2, "evicted nodes stay known: {snap:?}");
    // Idle links are reaped.
    tokio::time::sleep(Duration::from_millis(800)).await;
    converges("idle links to be reaped", || async { mesh(&a).snapshot().await.links.is_empty() }).await;
    assert_eq!(mesh(&a).snapshot().await.dht_contacts, 2);
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// Two nodes that send to each other in the same instant after their link went idle:
/// both dial, and one dial loses the tie-break. Every round must flow both ways (a dial
/// that lost the tie-break once left its queue behind: frames waited there for good and,
/// with `max_links = 1`, no other node could be dialed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_dials_keep_both_ways_flowing() {
    let config = |join| one_link(join, Duration::from_millis(100));
    let a = TestNode::start_mesh_config(config(vec![])).await;
    let b = TestNode::start_mesh_config(config(vec![a.mesh_addr()])).await;
    let nodes = [&a, &b];
    let (mut subs, pubs) = subscriber_and_publisher_each(&nodes, "cross").await;
    for round in 0..12 {
        converges("the idle link to be reaped", || async {
            mesh(&a).snapshot().await.links.is_empty() && mesh(&b).snapshot().await.links.is_empty()
        })
        .await;
        let mut heard = [false; 2];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while heard != [true, true] {
            let (x, y) = tokio::join!(pubs[0].publish("cross.1", "0"), pubs[1].publish("cross.0", "1"));
            x.unwrap();
            y.unwrap();
            for (to, sub) in subs.iter_mut().enumerate() {
                if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(10), sub.next()).await {
                    heard[to] = true;
                }
            }
            if std::time::Instant::now() >= deadline {
                panic!("round {round}: heard {heard:?}\n{:#?}", snapshots(&nodes).await);
            }
        }
    }
    for n in [a, b] {
        n.stop().await;
    }
}

/// Three nodes with one link each, all sending to both others at once: links are evicted
/// while frames are queued on them and dials cross under churn. Every pair must go on
/// flowing (slower: each node needs two links and has one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_pool_smaller_than_the_traffic_needs_still_reaches_everyone() {
    let config = |join| one_link(join, Duration::from_millis(200));
    let a = TestNode::start_mesh_config(config(vec![])).await;
    let b = TestNode::start_mesh_config(config(vec![a.mesh_addr()])).await;
    let c = TestNode::start_mesh_config(config(vec![a.mesh_addr()])).await;
    for n in [&a, &b, &c] {
        converges("every node to know the two others", || async { mesh(n).snapshot().await.dht_contacts == 2 }).await;
    }
    let nodes = [&a, &b, &c];
    let (mut subs, pubs) = subscriber_and_publisher_each(&nodes, "churn").await;
    for round in 0..4 {
        let mut heard = [[false; 3]; 3];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while heard.iter().enumerate().any(|(to, h)| (0..3).any(|from| from != to && !h[from])) {
            for (from, p) in pubs.iter().enumerate() {
                for to in (0..3).filter(|&t| t != from && !heard[t][from]) {
                    p.publish(&format!("churn.{to}"), format!("{from}")).await.unwrap();
                }
            }
            for (to, sub) in subs.iter_mut().enumerate() {
                while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(5), sub.next()).await {
                    let from: usize = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
                    heard[to][from] = true;
                }
            }
            if std::time::Instant::now() >= deadline {
                panic!("round {round}: heard[to][from] = {heard:?}\n{:#?}", snapshots(&nodes).await);
            }
        }
        // Let the links go idle so the next round dials afresh.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// `--join` given a member's client port (the URL users have at hand) joins through the
/// mesh port next to it, the default layout, instead of retrying the client port forever.
#[tokio::test]
async fn joining_through_a_client_port_finds_the_mesh_port() {
    let a = TestNode::start_mesh_adjacent(SECRET).await;
    assert_eq!(a.mesh_addr().port(), a.addr.port() + 1);
    let b = TestNode::start_mesh(SECRET, &[a.addr]).await;
    converges("B to link to A through A's mesh port", || async {
        mesh(&b).snapshot().await.links.iter().any(|(_, addr)| *addr == a.mesh_addr())
    })
    .await;
    b.stop().await;
    a.stop().await;
}
