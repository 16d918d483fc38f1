//! A real node under attack over QUIC: for every kind of bad input the node stays up, only
//! the offender is closed (with the documented code) or refused, the reason is counted,
//! and a well-behaved pair of clients on the same node keeps exchanging every message.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{RawClient, TestNode, WAIT};
use fovea_client::{Client, Subscription};
use fovea_core::frame::{Hello, Publish, Subscribe};
use fovea_core::{ErrorCode, Frame, Headers};
use fovea_node::Limits;

/// A publisher and a subscriber that exchange numbered messages while the node is attacked.
struct Bystander {
    publisher: Client,
    _sub_client: Client,
    sub: Subscription,
    sent: u32,
    received: u32,
}

impl Bystander {
    async fn new(node: &TestNode) -> Bystander {
        let sub_client = node.client().await;
        let sub = sub_client.subscribe("bystander.seq").await.unwrap();
        Bystander { publisher: node.client().await, _sub_client: sub_client, sub, sent: 0, received: 0 }
    }

    /// Sends a few more messages and checks that every one so far arrived, in order.
    async fn check(&mut self) {
        for _ in 0..10 {
            self.publisher.publish("bystander.seq", self.sent.to_be_bytes().to_vec()).await.unwrap();
            self.sent += 1;
        }
        while self.received < self.sent {
            let m = tokio::time::timeout(WAIT, self.sub.next()).await.expect("bystander message in time").unwrap();
            assert_eq!(&m.payload[..], &self.received.to_be_bytes(), "bystander lost or reordered a message");
            self.received += 1;
        }
    }
}

/// xorshift: reproducible "random" bytes without a dependency.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn garbage_closes_only_the_sender() {
    let node = TestNode::start().await;
    let mut bystander = Bystander::new(&node).await;
    let mut closed = 0;
    for seed in 1..=20u64 {
        let mut raw = RawClient::handshake(&node).await;
        // A valid first byte of a big length so the noise is read as a frame body.
        raw.send_raw(&noise(seed, 4096)).await;
        let _ = raw.send.finish();
        let code = raw.close_code().await;
        assert!(
            [ErrorCode::ProtocolError, ErrorCode::FrameTooLarge].map(|c| Some(c.to_u64())).contains(&code),
            "seed {seed}: closed with {code:?}"
        );
        closed += 1;
        bystander.check().await;
    }
    // Noise before any handshake, too.
    for seed in 100..110u64 {
        let mut raw = RawClient::connect(&node).await;
        raw.send_raw(&noise(seed, 512)).await;
        let _ = raw.send.finish();
        assert!(raw.close_code().await.is_some());
        bystander.check().await;
    }
    assert!(node.stats.snapshot().protocol_errors >= closed);
    node.stop().await;
}

#[tokio::test]
async fn truncated_frames_and_bad_text_are_protocol_errors() {
    let node = TestNode::start().await;
    let mut bystander = Bystander::new(&node).await;
    // A PUB cut short, then the end of the stream.
    let mut raw = RawClient::handshake(&node).await;
    let full = Frame::Pub(Publish {
        topic: Bytes::from_static(b"a"),
        headers: Headers::new(),
        payload: Bytes::from_static(b"payload"),
    })
    .to_bytes();
    raw.send_raw(&full[..full.len() - 3]).await;
    raw.send.finish().unwrap();
    assert_eq!(raw.close_code().await, Some(ErrorCode::ProtocolError.to_u64()));
    bystander.check().await;
    // HELLO whose realm is not UTF-8.
    let mut raw = RawClient::connect(&node).await;
    raw.send_raw(&[0x08, 0x01, 0x03, 0x03, 0xff, 0xfe, 0xfd, 0x00, 0x00]).await;
    assert_eq!(raw.close_code().await, Some(ErrorCode::ProtocolError.to_u64()));
    bystander.check().await;
    node.stop().await;
}

#[tokio::test]
async fn subscription_floods_are_bounded_and_harmless() {
    let node = TestNode::start_with(Limits { max_subscriptions: 100, ..Limits::default() }).await;
    let mut bystander = Bystander::new(&node).await;
    let mut raw = RawClient::handshake(&node).await;
    let mut burst = bytes::BytesMut::new();
    for sid in 1..=5_000u64 {
        let pattern = Bytes::from(format!("flood.{}.>", sid % 300));
        Frame::Sub(Subscribe { sid, pattern, group: Bytes::new() }).encode(&mut burst);
        if sid % 2 == 0 {
            Frame::Unsub(sid).encode(&mut burst);
        }
    }
    raw.send_raw(&burst).await;
    raw.send_frame(&Frame::Ping(1)).await;
    let (mut acks, mut refused) = (0, 0);
    loop {
        match raw.next_frame().await {
            Some(Frame::SubAck(_)) => acks += 1,
            Some(Frame::Error(e)) => {
                assert_eq!(e.code, ErrorCode::TooManySubscriptions);
                refused += 1;
            }
            Some(Frame::Pong(1)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acks + refused, 5_000);
    assert!(refused > 0, "the limit held");
    // The node holds at most the limit for this connection (plus the bystander's one).
    assert!(node.stats.snapshot().subscriptions <= 101);
    bystander.check().await;
    drop(raw);
    node.stop().await;
}

#[tokio::test]
async fn extra_streams_are_never_granted() {
    let node = TestNode::start().await;
    let mut bystander = Bystander::new(&node).await;
    let raw = RawClient::handshake(&node).await;
    // The node allows one bidirectional stream per connection (in use) and no
    // unidirectional ones: QUIC flow control holds these opens forever.
    assert!(tokio::time::timeout(Duration::from_millis(300), raw.conn.open_bi()).await.is_err());
    assert!(tokio::time::timeout(Duration::from_millis(300), raw.conn.open_uni()).await.is_err());
    bystander.check().await;
    node.stop().await;
}

#[tokio::test]
async fn oversized_payloads_are_refused_per_message() {
    let node = TestNode::start_with(Limits { max_payload: 1024, ..Limits::default() }).await;
    let mut bystander = Bystander::new(&node).await;
    let mut raw = RawClient::handshake(&node).await;
    let big = Frame::Pub(Publish {
        topic: Bytes::from_static(b"big"),
        headers: Headers::new(),
        payload: Bytes::from(vec![0u8; 4096]),
    });
    raw.send_frame(&big).await;
    match raw.next_frame().await {
        Some(Frame::Error(e)) => {
            assert_eq!(e.code, ErrorCode::PayloadTooLarge);
            assert!(e.message.contains("max_payload of 1024"), "{}", e.message);
        }
        other => panic!("expected ERROR, got {other:?}"),
    }
    // The offender's connection is still usable.
    raw.send_frame(&Frame::Ping(5)).await;
    assert_eq!(raw.next_frame().await, Some(Frame::Pong(5)));
    // The SDK never sends such a frame: with the node's limit from WELCOME, it streams a
    // larger payload as chunks within it (protocol 6).
    let c = node.client().await;
    c.publish("big", vec![0u8; 2000]).await.unwrap();
    c.flush().await.unwrap();
    bystander.check().await;
    node.stop().await;
}

#[tokio::test]
async fn many_bad_handshakes_leave_the_node_serving() {
    let node = TestNode::start().await;
    let mut bystander = Bystander::new(&node).await;
    for i in 0..30 {
        let mut raw = RawClient::connect(&node).await;
        match i % 3 {
            0 => raw.send_frame(&Frame::Ping(1)).await,
            1 => {
                raw.send_frame(&Frame::Hello(Hello {
                    version: 0,
                    realm: "default".into(),
                    token: Bytes::new(),
                    name: String::new(),
                }))
                .await
            }
            _ => {
                raw.send_frame(&Frame::Hello(Hello {
                    version: 3,
                    realm: "nope".into(),
                    token: Bytes::new(),
                    name: String::new(),
                }))
                .await
            }
        }
        assert!(raw.close_code().await.is_some());
    }
    bystander.check().await;
    let s = node.stats.snapshot();
    assert_eq!(s.connections, 2, "only the bystanders remain: {s:?}");
    node.stop().await;
}

#[tokio::test]
async fn a_node_can_lower_the_name_limits() {
    let node = TestNode::start_with(Limits { max_topic_len: 16, max_topic_depth: 3, ..Limits::default() }).await;
    let c = node.client().await;
    for p in ["a.b.c.d", "a-very-long-pattern.>"] {
        match c.subscribe(p).await {
            Err(fovea_client::ClientError::Refused { code: ErrorCode::InvalidPattern, message }) => {
                assert!(message.contains("segments") || message.contains("bytes long"), "{message}")
            }
            other => panic!("{p}: expected InvalidPattern, got {other:?}"),
        }
    }
    let mut events = c.events();
    c.publish("a.b.c.d", "x").await.unwrap();
    c.flush().await.unwrap();
    let refused = std::iter::from_fn(|| events.try_recv().ok())
        .any(|e| matches!(e, fovea_client::Event::ServerError { code: ErrorCode::InvalidTopic, .. }));
    assert!(refused, "a topic over the node's depth limit is refused");
    assert!(c.subscribe("a.b.c").await.is_ok());
    node.stop().await;
}
