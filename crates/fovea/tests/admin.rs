//! The admin HTTP endpoint of a real node, after real traffic.

mod common;

use std::net::SocketAddr;

use common::{TestNode, WAIT};
use fovea_client::Client;
use fovea_node::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET over plain HTTP/1.1: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    get_with(addr, path, "").await
}

/// GET with extra header lines (each ending in CRLF).
async fn get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test]
async fn health_ready_and_info() {
    let node = TestNode::start().await;
    let (status, body) = get(node.admin, "/health").await;
    assert_eq!((status, json(&body)["status"].as_str()), (200, Some("ok")));
    let (status, body) = get(node.admin, "/ready").await;
    assert_eq!((status, json(&body)["status"].as_str()), (200, Some("ready")));
    let (status, body) = get(node.admin, "/info").await;
    assert_eq!(status, 200);
    let info = json(&body);
    assert_eq!(info["limits"]["slow_consumer_timeout"], "10s");
    assert_eq!(info["realms"][0], "default");
    assert!(info["version"].is_string() && info["uptime_s"].is_u64());
    // #[tokio::test] runs the node on one thread.
    assert_eq!(info["workers"], 1);
    assert!(info["cores"].as_u64().is_some_and(|c| c >= 1), "{info}");
    node.stop().await;
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let node = TestNode::start().await;
    let c = node.client().await;
    let mut sub = c.subscribe("m.>").await.unwrap();
    for _ in 0..10 {
        c.publish("m.x", "1").await.unwrap();
    }
    for _ in 0..10 {
        tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap();
    }
    let _ = c.subscribe("bad..pattern").await;
    let (status, body) = get(node.admin, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "# TYPE fovea_messages_in_total counter",
        "fovea_messages_in_total 10",
        "fovea_deliveries_total 10",
        "fovea_connections 1",
        "fovea_subscriptions 1",
    ] {
        assert!(body.lines().any(|l| l == line), "missing {line:?} in:\n{body}");
    }
    node.stop().await;
}

#[tokio::test]
async fn connections_show_a_slow_subscribers_drops() {
    let node = TestNode::start_with(Limits { max_pending_bytes: 64 * 1024, ..Limits::default() }).await;
    let slow =
        Client::connect(&node.url(), node.options().name("the-slow-one").subscription_capacity(1)).await.unwrap();
    let _stalled = slow.subscribe("firehose").await.unwrap();
    let publisher = node.client().await;
    for _ in 0..5_000 {
        publisher.publish("firehose", vec![0u8; 1024]).await.unwrap();
    }
    publisher.flush().await.unwrap();
    let (status, body) = get(node.admin, "/connections?sort=dropped&limit=1").await;
    assert_eq!(status, 200);
    let page = json(&body);
    assert_eq!(page["total"], 2);
    let top = &page["connections"][0];
    assert_eq!(top["client"], "the-slow-one");
    assert!(top["dropped"].as_u64().unwrap() > 0, "{top}");
    assert_eq!(top["subscriptions"], 1);
    let (status, _) = get(node.admin, "/connections?sort=sideways").await;
    assert_eq!(status, 400);
    let (_, body) = get(node.admin, "/connections?realm=nope").await;
    assert_eq!(json(&body)["total"], 0);
    node.stop().await;
}

/// A client on loopback is sent datagrams larger than a network path allows (MTU
/// discovery up to `fovea_core::path::LOOPBACK_UDP_PAYLOAD`), and `/connections` shows
/// each connection's datagram size and round-trip time.
#[tokio::test]
async fn loopback_connections_use_large_datagrams() {
    let node = TestNode::start().await;
    let row = datagrams_after_traffic(&node, |size| size > 1452, WAIT).await;
    let size = row["datagram_bytes"].as_u64().unwrap();
    assert!(size > 1452 && size <= u64::from(fovea_core::path::LOOPBACK_UDP_PAYLOAD), "{row}");
    assert!(row["rtt_us"].as_u64().unwrap() > 0, "{row}");
    node.stop().await;
}

/// `max_loopback_datagram` bounds what the node sends to a loopback client.
#[tokio::test]
async fn max_loopback_datagram_bounds_the_nodes_datagrams() {
    let node = TestNode::start_with(Limits { max_loopback_datagram: 1300, ..Limits::default() }).await;
    // Traffic enough for MTU discovery to have tried (it probes at once on loopback).
    let row = datagrams_after_traffic(&node, |_| false, std::time::Duration::from_secs(2)).await;
    let size = row["datagram_bytes"].as_u64().unwrap();
    assert!((1200..=1300).contains(&size), "{row}");
    node.stop().await;
}

/// Publishes 4 KiB messages to itself through `node` until the connection's
/// `/connections` row satisfies `done` (or `give_up` has passed), and returns the row.
async fn datagrams_after_traffic(
    node: &TestNode,
    done: impl Fn(u64) -> bool,
    give_up: std::time::Duration,
) -> serde_json::Value {
    let c = node.client().await;
    let mut sub = c.subscribe("big.>").await.unwrap();
    let start = tokio::time::Instant::now();
    loop {
        // Traffic both ways while MTU discovery probes (a few round trips on loopback).
        c.publish("big.x", vec![7u8; 4096]).await.unwrap();
        let m = tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap();
        assert_eq!(m.payload.len(), 4096);
        let (status, body) = get(node.admin, "/connections").await;
        assert_eq!(status, 200);
        let row = json(&body)["connections"][0].clone();
        if done(row["datagram_bytes"].as_u64().unwrap()) || start.elapsed() > give_up {
            return row;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `/metrics` passes `promtool check metrics` (Prometheus's own linter). CI installs
/// promtool and sets FOVEA_REQUIRE_PROMTOOL=1; elsewhere the check runs when promtool is
/// on the PATH and is skipped, with a note, when it is not.
#[tokio::test]
async fn metrics_pass_promtool() {
    let node = TestNode::start().await;
    let c = node.client().await;
    let _sub = c.subscribe("p.>").await.unwrap();
    c.publish("p.x", "1").await.unwrap();
    let _ = c.call("nobody.home", "x", std::time::Duration::from_secs(1)).await;
    let mut reg = c.register("p.echo").await.unwrap();
    tokio::spawn(async move {
        while let Some(r) = reg.next().await {
            r.respond("ok");
        }
    });
    c.call("p.echo", "x", std::time::Duration::from_secs(5)).await.unwrap();
    c.flush().await.unwrap();
    let (_, body) = get(node.admin, "/metrics").await;
    assert!(body.lines().any(|l| l == "fovea_call_duration_seconds_count 1"), "{body}");
    assert!(body.lines().any(|l| l.starts_with("fovea_queued_bytes ")), "{body}");
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var_os("FOVEA_REQUIRE_PROMTOOL").is_none() => {
            eprintln!("note: promtool not found ({e}); skipping (apt-get install prometheus)");
            return;
        }
        Err(e) => panic!("promtool is required here: {e}"),
    };
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    node.stop().await;
}

#[tokio::test]
async fn an_admin_token_guards_everything_but_health() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fovea_node::NodeConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin = Some("127.0.0.1:0".parse().unwrap());
    config.admin_token = Some("s3cret".into());
    let node = fovea_node::Node::bind(config.clone()).unwrap();
    let admin = node.admin_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(node.run(stop.clone()));
    assert_eq!(get(admin, "/health").await.0, 200);
    assert_eq!(get(admin, "/info").await.0, 401);
    assert_eq!(get_with(admin, "/info", "Authorization: Bearer wrong\r\n").await.0, 401);
    assert_eq!(get_with(admin, "/metrics", "Authorization: Bearer s3cret\r\n").await.0, 200);
    stop.cancel();
    task.await.unwrap().unwrap();
    // Without a token the endpoint stays on loopback.
    config.admin = Some("0.0.0.0:0".parse().unwrap());
    config.admin_token = None;
    let e = fovea_node::Node::bind(config).err().expect("refused");
    assert!(e.to_string().contains("--admin-token"), "{e}");
}

/// The dashboard's page is served (self-contained) and `/realms` lists what it shows.
#[tokio::test]
async fn the_dashboard_and_the_realm_listing() {
    let node = TestNode::start().await;
    let (status, page) = get(node.admin, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>fovea node</title>"), "{page}");
    assert!(!page.contains("http://") && !page.contains("https://"), "the page loads nothing from elsewhere");
    let client = node.client().await;
    let _sub = client.subscribe("a.>").await.unwrap();
    let tool = serde_json::json!({ "description": "Doubles a number" });
    let _reg = client.register_tool("math.double", &tool).await.unwrap();
    let readme = serde_json::json!({ "uri": "docs://readme" });
    let _res = client.register_resource("docs.readme", &readme).await.unwrap();
    let (status, body) = get(node.admin, "/realms").await;
    assert_eq!(status, 200);
    let realms = json(&body);
    let default = &realms[0];
    assert_eq!(default["name"], "default");
    assert_eq!(default["subscriptions"], 1);
    assert_eq!(default["procedures"], serde_json::json!([["docs.readme", 1], ["math.double", 1]]));
    assert_eq!(default["tools"][0], serde_json::json!(["docs.readme", "docs://readme", "resource"]));
    assert_eq!(default["tools"][1], serde_json::json!(["math.double", "Doubles a number", "tool"]));
    let (_, info) = get(node.admin, "/info").await;
    let transports = json(&info)["transports"].clone();
    assert!(transports.as_array().unwrap().iter().any(|u| u.as_str().unwrap().starts_with("ws://")), "{transports}");
    node.stop().await;
}
