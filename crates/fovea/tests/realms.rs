//! Realms, credentials and permissions through real nodes.

mod common;

use std::time::Duration;

use common::{TestNode, WAIT};
use fovea_client::{Client, ClientError, ErrorCode, Event};

const T: Duration = Duration::from_secs(10);

fn digest(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Two realms, each with an all-powerful user, and in `acme` a restricted one.
fn config() -> String {
    format!(
        r#"
[[realm]]
name = "acme"

[[realm.user]]
name = "admin"
token_sha256 = "{admin}"
publish = [">"]
subscribe = [">"]
call = [">"]
register = [">"]

[[realm.user]]
name = "sensor-1"
token_sha256 = "{sensor}"
publish = ["sensors.sensor-1.>"]
subscribe = ["commands.sensor-1.>", "broadcast.*"]
call = ["time.*"]
register = ["sensor-1.>"]

[[realm]]
name = "globex"

[[realm.user]]
name = "admin"
token_sha256 = "{globex}"
publish = [">"]
subscribe = [">"]
call = [">"]
register = [">"]
"#,
        admin = digest("acme-admin"),
        sensor = digest("sensor-1-token"),
        globex = digest("globex-admin"),
    )
}

async fn join(node: &TestNode, realm: &str, token: &str) -> Result<Client, ClientError> {
    Client::connect(&node.url(), node.options().realm(realm).token(token.as_bytes().to_vec())).await
}

#[tokio::test]
async fn nothing_crosses_realms() {
    let node = TestNode::start_with_realms(&config()).await;
    let acme = join(&node, "acme", "acme-admin").await.unwrap();
    let globex = join(&node, "globex", "globex-admin").await.unwrap();

    // Pub/sub and queue groups: the same names in both realms never meet.
    let mut acme_sub = acme.subscribe("orders.>").await.unwrap();
    let mut acme_group = acme.subscribe_group("orders.>", "workers").await.unwrap();
    let mut globex_sub = globex.subscribe("orders.>").await.unwrap();
    let mut globex_group = globex.subscribe_group("orders.>", "workers").await.unwrap();
    globex.publish("orders.new", "globex order").await.unwrap();
    acme.publish("orders.new", "acme order").await.unwrap();
    for (sub, want) in [
        (&mut acme_sub, "acme order"),
        (&mut acme_group, "acme order"),
        (&mut globex_sub, "globex order"),
        (&mut globex_group, "globex order"),
    ] {
        let m = tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap();
        assert_eq!(&m.payload[..], want.as_bytes());
        assert!(
            tokio::time::timeout(Duration::from_millis(200), sub.next()).await.is_err(),
            "a message crossed realms"
        );
    }

    // RPC: a provider in one realm is invisible from the other.
    let mut reg = acme.register("svc.secret").await.unwrap();
    tokio::spawn(async move {
        while let Some(r) = reg.next().await {
            r.respond("acme only");
        }
    });
    assert_eq!(&acme.call("svc.secret", "", T).await.unwrap().payload[..], b"acme only");
    assert!(matches!(globex.call("svc.secret", "", T).await, Err(ClientError::NoProvider(_))));
    node.stop().await;
}

#[tokio::test]
async fn bad_token_and_unknown_realm_fail_alike() {
    let node = TestNode::start_with_realms(&config()).await;
    for (realm, token) in [("acme", "wrong"), ("acme", ""), ("nope", "acme-admin"), ("globex", "acme-admin")] {
        let e = join(&node, realm, token).await.unwrap_err();
        assert!(matches!(e, ClientError::AuthFailed), "{realm}/{token}: {e}");
        assert_eq!(e.to_string(), "authentication failed: check the realm and token (--realm, --token)");
    }
    assert_eq!(node.stats.snapshot().auth_failures, 4);
    node.stop().await;
}

#[tokio::test]
async fn repeated_failures_are_rate_limited() {
    let node = TestNode::start_with_realms(&config()).await;
    for _ in 0..5 {
        assert!(matches!(join(&node, "acme", "guess").await, Err(ClientError::AuthFailed)));
    }
    // Now even the right token is refused for a while from this address.
    assert!(matches!(join(&node, "acme", "acme-admin").await, Err(ClientError::AuthFailed)));
    let s = node.stats.snapshot();
    assert_eq!((s.auth_failures, s.auth_rate_limited), (6, 1));
    node.stop().await;
}

#[tokio::test]
async fn each_permission_is_checked_with_wildcards() {
    let node = TestNode::start_with_realms(&config()).await;
    let admin = join(&node, "acme", "acme-admin").await.unwrap();
    let sensor = join(&node, "acme", "sensor-1-token").await.unwrap();
    let mut events = sensor.events();

    // subscribe: within an allowed pattern, or refused.
    let mut commands = sensor.subscribe("commands.sensor-1.reboot").await.unwrap();
    let _all = sensor.subscribe("broadcast.*").await.unwrap();
    for p in ["commands.>", "commands.sensor-2.x", "broadcast.>", ">"] {
        match sensor.subscribe(p).await {
            Err(ClientError::Refused { code: ErrorCode::PermissionDenied, message }) => {
                assert!(message.contains("not allowed to subscribe"), "{message}")
            }
            other => panic!("{p}: expected PermissionDenied, got {other:?}"),
        }
    }

    // publish: allowed topics go through; others are refused with an event, and the
    // connection stays up.
    let mut watch = admin.subscribe("sensors.>").await.unwrap();
    sensor.publish("sensors.sensor-1.temp", "20").await.unwrap();
    sensor.publish("sensors.sensor-2.temp", "forged").await.unwrap();
    sensor.flush().await.unwrap();
    let m = tokio::time::timeout(WAIT, watch.next()).await.unwrap().unwrap();
    assert_eq!(m.topic.as_str(), "sensors.sensor-1.temp");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watch.next()).await.is_err(),
        "a denied publish got through"
    );
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await.unwrap().unwrap() {
            Event::ServerError { code, message } => {
                assert_eq!(code, ErrorCode::PermissionDenied);
                assert!(message.contains("sensors.sensor-2.temp"), "{message}");
                break;
            }
            Event::Connected => {}
            other => panic!("expected a permission error event, got {other:?}"),
        }
    }
    admin.publish("commands.sensor-1.reboot", "now").await.unwrap();
    assert_eq!(&tokio::time::timeout(WAIT, commands.next()).await.unwrap().unwrap().payload[..], b"now");

    // register and call.
    let mut reg = sensor.register("sensor-1.status").await.unwrap();
    tokio::spawn(async move {
        while let Some(r) = reg.next().await {
            r.respond("ok");
        }
    });
    assert!(matches!(
        sensor.register("sensor-2.status").await,
        Err(ClientError::Refused { code: ErrorCode::PermissionDenied, .. })
    ));
    let mut time = admin.register("time.now").await.unwrap();
    tokio::spawn(async move {
        while let Some(r) = time.next().await {
            r.respond("noon");
        }
    });
    assert_eq!(&sensor.call("time.now", "", T).await.unwrap().payload[..], b"noon");
    match sensor.call("sensor-1.status", "", T).await {
        Err(ClientError::Refused { code: ErrorCode::PermissionDenied, message }) => {
            assert!(message.contains("not allowed to call"), "{message}")
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    assert_eq!(&admin.call("sensor-1.status", "", T).await.unwrap().payload[..], b"ok");
    let denied = node.stats.snapshot().rejections.iter().find(|(c, _)| *c == ErrorCode::PermissionDenied).map(|x| x.1);
    assert_eq!(denied, Some(7), "every denial is counted");
    node.stop().await;
}

#[tokio::test]
async fn an_open_node_refuses_public_addresses_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fovea_node::NodeConfig::new(dir.path());
    config.listen = "0.0.0.0:0".parse().unwrap();
    config.admin = None;
    let e = fovea_node::Node::bind(config.clone()).err().expect("refused");
    assert!(e.to_string().contains("--allow-anonymous"), "{e}");
    config.allow_anonymous = true;
    assert!(fovea_node::Node::bind(config).is_ok());
}

#[tokio::test]
async fn a_reload_revokes_exactly_what_it_takes_away() {
    let node = TestNode::start_with_realms(&config()).await;
    let opts = |realm: &str, token: &str| node.options().realm(realm).token(token.as_bytes().to_vec()).reconnect(false);
    let admin = Client::connect(&node.url(), opts("acme", "acme-admin")).await.unwrap();
    let sensor = Client::connect(&node.url(), opts("acme", "sensor-1-token")).await.unwrap();
    let globex = Client::connect(&node.url(), opts("globex", "globex-admin")).await.unwrap();
    let _broadcasts = sensor.subscribe("broadcast.*").await.unwrap();
    let mut admin_events = admin.events();

    // New file: globex is gone, sensor-1 may no longer subscribe to broadcasts, the admin
    // is unchanged.
    let text = config();
    let acme_only = &text[..text.find("[[realm]]\nname = \"globex\"").unwrap()];
    let changed = acme_only.replace(r#""commands.sensor-1.>", "broadcast.*""#, r#""commands.sensor-1.>""#);
    assert_ne!(changed, acme_only);
    let realms = fovea_node::config::file::parse_realms(&changed, "reloaded.toml").unwrap();
    node.reloader.reload(&realms).unwrap();

    for (who, c) in [("sensor", &sensor), ("globex", &globex)] {
        let mut state = c.state();
        tokio::time::timeout(WAIT, state.wait_for(|s| *s == fovea_client::ConnectionState::Closed))
            .await
            .unwrap_or_else(|_| panic!("{who} was not disconnected"))
            .unwrap();
    }
    // The admin is still connected and working, and no disconnect happened to it.
    admin.flush().await.unwrap();
    assert_eq!(*admin.state().borrow(), fovea_client::ConnectionState::Connected);
    assert!(!std::iter::from_fn(|| admin_events.try_recv().ok()).any(|e| matches!(e, Event::Disconnected(_))));
    let closes = node.stats.snapshot().closes;
    assert!(closes.contains(&(ErrorCode::CredentialsRevoked, 2)), "{closes:?}");
    // And the revoked credentials no longer get in.
    assert!(matches!(join(&node, "globex", "globex-admin").await, Err(ClientError::AuthFailed)));
    node.stop().await;
}

#[tokio::test]
async fn a_client_certificate_identifies_a_user() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str| {
        let (cert, key, line) = fovea_node::auth::new_client_cert(name).unwrap();
        let (c, k) = (dir.path().join(format!("{name}.crt")), dir.path().join(format!("{name}.key")));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k, line)
    };
    let (cert, key, line) = write("device-7");
    let (other_cert, other_key, _) = write("stranger");
    let config = format!(
        "[[realm]]\nname = \"iot\"\n[[realm.user]]\nname = \"device-7\"\n{line}\npublish = [\"devices.7.>\"]\nsubscribe = [\"devices.7.>\"]\n"
    );
    let node = TestNode::start_with_realms(&config).await;
    let device = Client::connect(&node.url(), node.options().realm("iot").client_cert(&cert, &key)).await.unwrap();
    let mut sub = device.subscribe("devices.7.>").await.unwrap();
    device.publish("devices.7.temp", "31").await.unwrap();
    assert_eq!(&tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap().payload[..], b"31");
    assert!(matches!(
        device.subscribe("devices.8.>").await,
        Err(ClientError::Refused { code: ErrorCode::PermissionDenied, .. })
    ));
    let e = Client::connect(&node.url(), node.options().realm("iot").client_cert(&other_cert, &other_key))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::AuthFailed), "{e}");
    let e = Client::connect(&node.url(), node.options().realm("iot")).await.unwrap_err();
    assert!(matches!(e, ClientError::AuthFailed), "{e}");
    node.stop().await;
}

/// A session that ends with calls in flight ends them at once with `Disconnected`, not at
/// their deadlines: the SDK's reader keeps those calls, and they go with it.
#[tokio::test]
async fn calls_in_flight_end_with_their_session() {
    let node = TestNode::start_with_realms(&config()).await;
    let opts = |token: &str| node.options().realm("acme").token(token.as_bytes().to_vec()).reconnect(false);
    let provider = Client::connect(&node.url(), opts("acme-admin")).await.unwrap();
    let mut reg = provider.register("time.hold").await.unwrap();
    let caller = Client::connect(&node.url(), opts("sensor-1-token")).await.unwrap();
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let c = caller.clone();
            tokio::spawn(async move { c.call("time.hold", format!("{i}"), Duration::from_secs(600)).await })
        })
        .collect();
    // Held, not answered: each call waits at the provider.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::time::timeout(WAIT, reg.next()).await.expect("a request").expect("the registration"));
    }
    // The caller's credential goes: the node closes its connection.
    let text = config();
    let without_sensor = text
        .replace("name = \"sensor-1\"", "name = \"sensor-1-gone\"")
        .replace(&digest("sensor-1-token"), &digest("other"));
    node.reloader.reload(&fovea_node::config::file::parse_realms(&without_sensor, "reloaded.toml").unwrap()).unwrap();
    for call in calls {
        let r = tokio::time::timeout(WAIT, call).await.expect("the call to end with its session").unwrap();
        assert!(matches!(r, Err(ClientError::Disconnected)), "{r:?}");
    }
    drop(held);
    node.stop().await;
}
