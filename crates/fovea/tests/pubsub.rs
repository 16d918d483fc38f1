//! Pub/sub through real nodes on loopback, driven by the SDK.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{eventually, TestNode, WAIT};
use fovea_client::{Client, ClientError, ConnectionState, ErrorCode, Event, Headers, Message, Subscription};
use fovea_node::Limits;

async fn recv(sub: &mut Subscription) -> Message {
    tokio::time::timeout(WAIT, sub.next()).await.expect("message in time").expect("subscription open")
}

/// Asserts that nothing more arrives on `sub` once everything sent before has been routed.
async fn assert_quiet(sub: &mut Subscription, publisher: &Client) {
    publisher.flush().await.unwrap();
    // The publisher's flush orders its earlier publishes before the node's PONG; a short
    // grace covers the hop from the node to this subscriber.
    let got = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
    assert!(got.is_err(), "unexpected message: {got:?}");
}

#[tokio::test]
async fn wildcards_route_to_exactly_the_matching_subscriptions() {
    let node = TestNode::start().await;
    let sub_client = node.client().await;
    let publisher = node.client().await;
    let mut exact = sub_client.subscribe("sensors.kitchen.temp").await.unwrap();
    let mut star = sub_client.subscribe("sensors.*.temp").await.unwrap();
    let mut gt = sub_client.subscribe("sensors.>").await.unwrap();
    let mut other = sub_client.subscribe("actuators.>").await.unwrap();

    publisher.publish("sensors.kitchen.temp", "21.5").await.unwrap();
    publisher.publish("sensors.kitchen.humidity.raw", "40").await.unwrap();
    publisher.publish("sensors", "not matched by sensors.>").await.unwrap();

    let m = recv(&mut exact).await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("sensors.kitchen.temp", &b"21.5"[..]));
    assert_eq!(recv(&mut star).await.topic.as_str(), "sensors.kitchen.temp");
    assert_eq!(recv(&mut gt).await.topic.as_str(), "sensors.kitchen.temp");
    assert_eq!(recv(&mut gt).await.topic.as_str(), "sensors.kitchen.humidity.raw");
    assert_quiet(&mut gt, &publisher).await;
    assert_quiet(&mut exact, &publisher).await;
    assert_quiet(&mut star, &publisher).await;
    assert_quiet(&mut other, &publisher).await;
    node.stop().await;
}

#[tokio::test]
async fn one_publishers_messages_arrive_in_order_with_headers() {
    let node = TestNode::start().await;
    let a = node.client().await;
    let b = node.client().await;
    let mut sub = b.subscribe("seq.>").await.unwrap();
    let headers = Headers::from_pairs([("trace-id", "t1"), ("unit", "C")]).unwrap();
    const N: u32 = 20_000;
    for i in 0..N {
        // Alternate sizes so small (copied) and large (by reference) payloads interleave.
        let mut payload = i.to_be_bytes().to_vec();
        if i % 100 == 0 {
            payload.resize(20_000, 7);
        }
        a.publish_with_headers("seq.n", &headers, payload).await.unwrap();
    }
    for i in 0..N {
        let m = recv(&mut sub).await;
        assert_eq!(&m.payload[..4], &i.to_be_bytes(), "message {i} out of order");
        assert_eq!(m.headers.get("trace-id"), Some("t1"));
    }
    node.stop().await;
}

/// The node delivers consecutive publishes to the same subscribers as a run (one lock per
/// subscriber per run): interleaved topics, a queue group and a subscribe between
/// publishes must not reorder or lose anything.
#[tokio::test]
async fn interleaved_topics_and_fan_out_keep_each_subscriptions_order() {
    let node = TestNode::start().await;
    let publisher = node.client().await;
    let subscribers = [node.client().await, node.client().await, node.client().await];
    let mut on_a = Vec::new();
    for c in &subscribers {
        on_a.push(c.subscribe("run.a").await.unwrap());
    }
    let mut on_b = subscribers[0].subscribe("run.b").await.unwrap();
    let mut both = subscribers[1].subscribe("run.*").await.unwrap();
    let mut group = subscribers[2].subscribe_group("run.a", "workers").await.unwrap();
    // Longer than a run (64), and topics alternating in bursts of varying length.
    const N: u32 = 1000;
    let topic = |i: u32| if (i / (1 + i % 7)) % 2 == 0 { "run.a" } else { "run.b" };
    for i in 0..N {
        publisher.publish(topic(i), i.to_be_bytes().to_vec()).await.unwrap();
    }
    let expect = |t: &str| (0..N).filter(|i| topic(*i) == t).collect::<Vec<_>>();
    let seq = |m: Message| (m.topic.to_string(), u32::from_be_bytes(m.payload[..4].try_into().unwrap()));
    for sub in &mut on_a {
        for i in expect("run.a") {
            assert_eq!(seq(recv(sub).await), ("run.a".to_string(), i));
        }
    }
    for i in expect("run.b") {
        assert_eq!(seq(recv(&mut on_b).await), ("run.b".to_string(), i));
    }
    for i in 0..N {
        assert_eq!(seq(recv(&mut both).await), (topic(i).to_string(), i));
    }
    for i in expect("run.a") {
        assert_eq!(seq(recv(&mut group).await), ("run.a".to_string(), i), "the group's only member gets every one");
    }
    // A subscription made between two publishes gets the second and not the first.
    publisher.publish("run.late", "before").await.unwrap();
    publisher.flush().await.unwrap();
    let mut late = subscribers[0].subscribe("run.late").await.unwrap();
    publisher.publish("run.late", "after").await.unwrap();
    assert_eq!(&recv(&mut late).await.payload[..], b"after");
    assert_quiet(&mut late, &publisher).await;
    node.stop().await;
}

/// Frames that span many packets, mixed with small ones in one burst: the node and the SDK
/// take several packets' chunks per read, and a frame split across them must come out
/// whole, in order, beside the small frames around it.
#[tokio::test]
async fn large_and_small_messages_in_one_burst_arrive_whole_and_in_order() {
    let node = TestNode::start().await;
    let publisher = node.client().await;
    let subscriber = node.client().await;
    let mut sub = subscriber.subscribe("mix.>").await.unwrap();
    // A payload whose every byte depends on its message and position.
    let payload = |i: u32, len: usize| -> Vec<u8> { (0..len).map(|k| (i as usize * 31 + k) as u8).collect() };
    let len = |i: u32| match i % 5 {
        0 => 300 * 1024, // by reference at the node, hundreds of packets
        1 => 9 * 1024,   // copied, several packets
        _ => 1 + (i as usize % 90),
    };
    const N: u32 = 60;
    for i in 0..N {
        let topic = if i % 2 == 0 { "mix.even" } else { "mix.odd" };
        publisher.publish(topic, payload(i, len(i))).await.unwrap();
    }
    for i in 0..N {
        let m = recv(&mut sub).await;
        assert_eq!(m.topic.as_str(), if i % 2 == 0 { "mix.even" } else { "mix.odd" }, "message {i}");
        assert_eq!(m.payload.len(), len(i), "message {i}");
        assert!(m.payload[..] == payload(i, len(i))[..], "message {i}'s payload is intact");
    }
    assert_quiet(&mut sub, &publisher).await;
    node.stop().await;
}

#[tokio::test]
async fn a_publisher_receives_its_own_messages_when_subscribed() {
    let node = TestNode::start().await;
    let c = node.client().await;
    let mut sub = c.subscribe("echo").await.unwrap();
    c.publish("echo", Bytes::from_static(b"me")).await.unwrap();
    assert_eq!(&recv(&mut sub).await.payload[..], b"me");
    node.stop().await;
}

#[tokio::test]
async fn dropping_a_subscription_unsubscribes_at_the_node() {
    let node = TestNode::start().await;
    let c = node.client().await;
    let sub = c.subscribe("x.>").await.unwrap();
    let _keep = c.subscribe("y").await.unwrap();
    assert_eq!(node.stats.snapshot().subscriptions, 2);
    drop(sub);
    c.flush().await.unwrap();
    assert_eq!(node.stats.snapshot().subscriptions, 1);
    drop(_keep);
    c.close().await;
    eventually("the node to forget a closed client's subscriptions", || node.stats.snapshot().subscriptions == 0).await;
    node.stop().await;
}

#[tokio::test]
async fn invalid_names_are_refused_with_the_reason() {
    let node = TestNode::start().await;
    let c = node.client().await;
    let e = c.subscribe("a.>.b").await.unwrap_err();
    assert!(matches!(e, ClientError::InvalidPattern { .. }), "{e}");
    assert!(e.to_string().contains("`>` may only be the last segment"), "{e}");
    let e = c.publish("a.*", "x").await.unwrap_err();
    assert!(e.to_string().contains("wildcards are only allowed when subscribing"), "{e}");
    // Over max_payload is not an error: the message is streamed (protocol 6).
    let big = vec![0u8; fovea_core::limits::MAX_PAYLOAD + 1];
    c.publish("a", big).await.unwrap();
    // The connection is still fine.
    c.flush().await.unwrap();
    node.stop().await;
}

#[tokio::test]
async fn subscription_limit_is_a_clear_error_and_the_connection_stays() {
    let node = TestNode::start_with(Limits { max_subscriptions: 2, ..Limits::default() }).await;
    let c = node.client().await;
    let _a = c.subscribe("a").await.unwrap();
    let _b = c.subscribe("b").await.unwrap();
    match c.subscribe("c").await {
        Err(ClientError::Refused { code: ErrorCode::TooManySubscriptions, message }) => {
            assert!(message.contains("2 subscriptions"), "{message}")
        }
        other => panic!("expected TooManySubscriptions, got {other:?}"),
    }
    c.flush().await.unwrap();
    node.stop().await;
}

#[tokio::test]
async fn unknown_realm_fails_authentication() {
    let node = TestNode::start().await;
    let e = Client::connect(&node.url(), node.options().realm("nope")).await.unwrap_err();
    assert!(matches!(e, ClientError::AuthFailed), "{e}");
    assert_eq!(node.stats.snapshot().auth_failures, 1);
    node.stop().await;
}

#[tokio::test]
async fn a_certificate_from_elsewhere_is_not_trusted() {
    let node = TestNode::start().await;
    let other = TestNode::start().await;
    let e = Client::connect(&node.url(), fovea_client::ConnectOptions::new().ca_file(&other.cert)).await.unwrap_err();
    assert!(matches!(e, ClientError::Untrusted { .. }), "{e}");
    assert!(e.to_string().contains("--ca"), "{e}");
    // --insecure connects anyway.
    let c =
        Client::connect(&node.url(), fovea_client::ConnectOptions::new().trust(fovea_client::Trust::Insecure)).await;
    assert!(c.is_ok());
    node.stop().await;
    other.stop().await;
}

#[tokio::test]
async fn no_node_says_how_to_start_one() {
    // A bound but silent UDP socket: nothing will answer the handshake.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let url = format!("quic://{}", silent.local_addr().unwrap());
    let opts = fovea_client::ConnectOptions::new()
        .trust(fovea_client::Trust::Insecure)
        .connect_timeout(Duration::from_millis(300));
    let e = Client::connect(&url, opts).await.unwrap_err();
    assert!(matches!(e, ClientError::NoNode { .. }), "{e}");
    assert!(e.to_string().contains("start one with `fovea node`"), "{e}");
}

#[tokio::test]
async fn a_stalled_subscriber_loses_messages_counted_and_never_slows_the_publisher() {
    // 1 MiB per-connection queue; 10 MiB published in batches that the healthy subscriber
    // confirms, so only the stalled one can overflow.
    let node = TestNode::start_with(Limits { max_pending_bytes: 1024 * 1024, ..Limits::default() }).await;
    let stalled_client = Client::connect(&node.url(), node.options().subscription_capacity(1)).await.unwrap();
    let mut stalled = stalled_client.subscribe("load").await.unwrap();
    let mut stalled_events = stalled_client.events();
    let healthy_client = node.client().await;
    let mut healthy = healthy_client.subscribe("load").await.unwrap();
    let publisher = node.client().await;
    const BATCH: u32 = 1000;
    const BATCHES: u32 = 20;
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u32);
    let reader = tokio::spawn(async move {
        for n in 1..=BATCH * BATCHES {
            recv(&mut healthy).await;
            progress_tx.send_replace(n);
        }
    });
    for b in 1..=BATCHES {
        for _ in 0..BATCH {
            publisher.publish("load", vec![1u8; 512]).await.unwrap();
        }
        tokio::time::timeout(WAIT, progress.wait_for(|n| *n >= b * BATCH))
            .await
            .expect("the healthy subscriber keeps up")
            .unwrap();
    }
    reader.await.unwrap();
    let s = node.stats.snapshot();
    assert!(s.dropped > 0, "drops for the stalled subscriber are counted: {s:?}");
    assert_eq!(s.deliveries + s.dropped, u64::from(2 * BATCH * BATCHES), "every message is delivered or counted");

    // The stalled subscriber wakes up: it gets what was queued, then learns exactly how
    // many messages it lost.
    let mut received = 0u64;
    while tokio::time::timeout(Duration::from_millis(500), stalled.next()).await.is_ok_and(|m| m.is_some()) {
        received += 1;
    }
    assert_eq!(received + stalled.dropped(), u64::from(BATCH * BATCHES), "received + reported dropped = published");
    assert_eq!(stalled.dropped(), s.dropped);
    let mut reported = 0;
    while let Ok(e) = stalled_events.try_recv() {
        if let Event::Dropped { pattern, count } = e {
            assert_eq!(pattern, "load");
            reported += count;
        }
    }
    assert_eq!(reported, s.dropped, "the drops arrive as events too");
    node.stop().await;
}

#[tokio::test]
async fn the_client_reconnects_and_restores_subscriptions() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let node = TestNode::start_at("127.0.0.1:0".parse().unwrap(), dir.clone(), Limits::default()).await;
    let addr = node.addr;
    let opts = node.options().max_reconnect_delay(Duration::from_millis(100));
    let c = Client::connect(&node.url(), opts).await.unwrap();
    let mut sub = c.subscribe("after.restart").await.unwrap();
    let mut state = c.state();
    let mut events = c.events();

    node.stop().await;
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == ConnectionState::Reconnecting)).await.unwrap().unwrap();
    let mut saw_goaway = false;
    while let Ok(e) = events.try_recv() {
        saw_goaway |= matches!(e, Event::GoAway(_));
    }
    assert!(saw_goaway, "a stopping node says GOAWAY");

    let node = TestNode::start_at(addr, dir, Limits::default()).await;
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == ConnectionState::Connected)).await.unwrap().unwrap();
    let publisher = node.client().await;
    // The restored SUB is sent before anything else on the new session; once the
    // subscriber's own flush returns, the node has it.
    c.flush().await.unwrap();
    publisher.publish("after.restart", "hello again").await.unwrap();
    assert_eq!(&recv(&mut sub).await.payload[..], b"hello again");
    node.stop().await;
}

#[tokio::test]
async fn close_ends_subscriptions_and_later_calls_fail() {
    let node = TestNode::start().await;
    let c = node.client().await;
    let mut sub = c.subscribe("z").await.unwrap();
    c.close().await;
    assert!(tokio::time::timeout(WAIT, sub.next()).await.unwrap().is_none());
    assert!(matches!(c.publish("z", "x").await, Err(ClientError::ClientClosed)));
    assert_eq!(*c.state().borrow(), ConnectionState::Closed);
    node.stop().await;
}

#[tokio::test]
async fn a_subscriber_that_stays_slow_is_disconnected() {
    let limits =
        Limits { max_pending_bytes: 64 * 1024, slow_consumer_timeout: Duration::from_millis(300), ..Limits::default() };
    let node = TestNode::start_with(limits).await;
    let opts = node.options().subscription_capacity(1).reconnect(false);
    let stalled_client = Client::connect(&node.url(), opts).await.unwrap();
    let stalled = stalled_client.subscribe("flood").await.unwrap();
    let publisher = node.client().await;
    let mut state = stalled_client.state();
    // Publish until the node gives up on the subscriber (bounded: 30 s of publishing).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while *state.borrow() != ConnectionState::Closed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow consumer was never disconnected: {:?}",
            node.stats.snapshot()
        );
        for _ in 0..100 {
            publisher.publish("flood", vec![0u8; 1024]).await.unwrap();
        }
        publisher.flush().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_millis(10), state.changed()).await;
    }
    let closes = node.stats.snapshot().closes;
    assert!(closes.contains(&(ErrorCode::SlowConsumer, 1)), "{closes:?}");
    // What it lost is known to the subscription, from the close if no DROPPED got through.
    assert!(stalled.dropped() > 0, "the subscription was not told what it lost");
    assert!(stalled.dropped() <= node.stats.snapshot().dropped);
    // The publisher never noticed.
    publisher.flush().await.unwrap();
    node.stop().await;
}

/// A publisher feeding a subscriber whose queue at the node is more than an eighth full is
/// held back (`producer_stall`, counted, and counted again when it runs out), and is never
/// refused; with the stall off it is never held back and the node drops for the subscriber
/// instead.
#[tokio::test]
async fn a_fast_publisher_is_held_back_for_a_full_subscriber_queue() {
    for stall in [Duration::from_millis(5), Duration::ZERO] {
        let limits = Limits { max_pending_bytes: 64 * 1024, producer_stall: stall, ..Limits::default() };
        let node = TestNode::start_with(limits).await;
        // A subscriber that takes nothing: its transport window fills, then its queue.
        let idle = Client::connect(&node.url(), node.options().subscription_capacity(1)).await.unwrap();
        let _held = idle.subscribe("burst").await.unwrap();
        let publisher = node.client().await;
        for _ in 0..4000 {
            publisher.publish("burst", vec![0u8; 1024]).await.unwrap();
        }
        publisher.flush().await.unwrap();
        let s = node.stats.snapshot();
        if stall.is_zero() {
            assert_eq!(s.stalls, 0, "{s:?}");
            assert_eq!(s.stall_timeouts, 0, "{s:?}");
            assert!(s.dropped > 0, "4 MB against a 64 KiB queue and an idle reader: {s:?}");
        } else {
            assert!(s.stalls > 0, "the publisher was never held back: {s:?}");
            // The reader takes nothing, so a hold-back runs out and is counted.
            assert!(s.stall_timeouts > 0, "{s:?}");
        }
        node.stop().await;
    }
}

/// Clients sharing one UDP socket each have their own connection: messages flow between
/// them, and closing one leaves the others (and the socket) working.
#[tokio::test]
async fn clients_share_a_socket_and_close_independently() {
    let node = TestNode::start().await;
    let socket = fovea_client::Socket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = node.url();
    let connect = || Client::connect(&url, node.options().socket(&socket));
    let (a, b, c) = (connect().await.unwrap(), connect().await.unwrap(), connect().await.unwrap());
    let ids: std::collections::HashSet<u64> =
        [&a, &b, &c].iter().map(|x| x.server_info().unwrap().connection_id).collect();
    assert_eq!(ids.len(), 3, "each client has its own connection");
    let mut sub = b.subscribe("shared.>").await.unwrap();
    a.publish("shared.one", "1").await.unwrap();
    assert_eq!(&recv(&mut sub).await.payload[..], b"1");
    c.close().await;
    a.publish("shared.two", "2").await.unwrap();
    assert_eq!(&recv(&mut sub).await.payload[..], b"2");
    assert_eq!(*b.state().borrow(), ConnectionState::Connected);
    node.stop().await;
}
