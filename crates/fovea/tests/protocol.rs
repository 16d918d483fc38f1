//! The node against hand-made frames: bad input closes only the offending connection,
//! with the documented code, and everyone else carries on.

mod common;

use bytes::Bytes;
use common::{RawClient, TestNode, WAIT};
use fovea_core::frame::{Hello, Publish, Subscribe};
use fovea_core::{ErrorCode, Frame, Headers};

#[tokio::test]
async fn malformed_frames_close_only_that_connection() {
    let node = TestNode::start().await;
    let bystander = node.client().await;
    let mut sub = bystander.subscribe("still.>").await.unwrap();

    // Each case: a session that then sends junk, and the close code it must get.
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("unknown frame type", vec![0x01, 0x3f], ErrorCode::ProtocolError),
        ("empty frame", vec![0x00], ErrorCode::ProtocolError),
        ("declared length over the limit", vec![0xc0, 0, 0, 0, 0x40, 0, 0, 0], ErrorCode::FrameTooLarge),
        ("payload runs past the frame", vec![0x05, 0x10, 0x01, b'a', 0x00, 0x09], ErrorCode::ProtocolError),
        ("bad header block", vec![0x07, 0x10, 0x01, b'a', 0x01, 0x00, 0x00, 0x00], ErrorCode::ProtocolError),
        ("a second HELLO", Frame::Hello(hello("default")).to_bytes().to_vec(), ErrorCode::ProtocolError),
        ("a node-only frame", Frame::SubAck(1).to_bytes().to_vec(), ErrorCode::ProtocolError),
    ];
    for (what, bytes, code) in cases {
        let mut raw = RawClient::handshake(&node).await;
        raw.send_raw(&bytes).await;
        assert_eq!(raw.close_code().await, Some(code.to_u64()), "{what}");
    }
    assert!(node.stats.snapshot().protocol_errors >= 7);

    // The bystander noticed nothing.
    bystander.publish("still.here", "yes").await.unwrap();
    let m = tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap();
    assert_eq!(&m.payload[..], b"yes");
    node.stop().await;
}

#[tokio::test]
async fn the_first_frame_must_be_hello() {
    let node = TestNode::start().await;
    let mut raw = RawClient::connect(&node).await;
    raw.send_frame(&Frame::Ping(1)).await;
    assert_eq!(raw.close_code().await, Some(ErrorCode::ProtocolError.to_u64()));

    let mut raw = RawClient::connect(&node).await;
    raw.send_frame(&Frame::Hello(Hello { version: 0, ..hello("default") })).await;
    assert_eq!(raw.close_code().await, Some(ErrorCode::UnsupportedVersion.to_u64()));

    let mut raw = RawClient::connect(&node).await;
    raw.send_frame(&Frame::Hello(hello("elsewhere"))).await;
    assert_eq!(raw.close_code().await, Some(ErrorCode::AuthFailed.to_u64()));
    node.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_handshake_timeout() {
    let limits = fovea_node::Limits { handshake_timeout: std::time::Duration::from_millis(200), ..Default::default() };
    let node = TestNode::start_with(limits).await;
    let mut raw = RawClient::connect(&node).await;
    // Open the stream (quinn sends nothing until data is written) but never say HELLO.
    raw.send_raw(&[]).await;
    assert_eq!(raw.close_code().await, Some(ErrorCode::HandshakeTimeout.to_u64()));
    node.stop().await;
}

#[tokio::test]
async fn operation_errors_keep_the_connection_up() {
    let node = TestNode::start().await;
    let mut raw = RawClient::handshake(&node).await;
    let sub = |sid, p: &'static str| {
        Frame::Sub(Subscribe { sid, pattern: Bytes::from_static(p.as_bytes()), group: Bytes::new() })
    };
    raw.send_frame(&sub(5, "a.>.b")).await;
    match raw.next_frame().await {
        Some(Frame::Error(e)) => {
            assert_eq!((e.code, e.reference), (ErrorCode::InvalidPattern, 5));
            assert!(e.message.contains("may only be the last segment"), "{}", e.message);
        }
        other => panic!("expected ERROR, got {other:?}"),
    }
    raw.send_frame(&sub(6, "ok.*")).await;
    assert_eq!(raw.next_frame().await, Some(Frame::SubAck(6)));
    raw.send_frame(&sub(6, "again")).await;
    assert!(matches!(raw.next_frame().await, Some(Frame::Error(e)) if e.code == ErrorCode::DuplicateId));
    let publish = |t: &'static str| {
        Frame::Pub(Publish {
            topic: Bytes::from_static(t.as_bytes()),
            headers: Headers::new(),
            payload: Bytes::from_static(b"p"),
        })
    };
    raw.send_frame(&publish("bad..topic")).await;
    assert!(matches!(raw.next_frame().await, Some(Frame::Error(e)) if e.code == ErrorCode::InvalidTopic));
    // Still routing: our own subscription receives our publish, then PING is answered.
    raw.send_frame(&publish("ok.x")).await;
    raw.send_frame(&Frame::Ping(9)).await;
    assert!(matches!(raw.next_frame().await, Some(Frame::Msg(m)) if m.sid == 6 && &m.topic[..] == b"ok.x"));
    assert_eq!(raw.next_frame().await, Some(Frame::Pong(9)));
    node.stop().await;
}

fn hello(realm: &str) -> Hello {
    Hello { version: fovea_core::frame::VERSION, realm: realm.into(), token: Bytes::new(), name: "raw".into() }
}

#[tokio::test]
async fn a_full_node_refuses_connections_until_one_ends() {
    let node = TestNode::start_with(fovea_node::Limits { max_connections: 1, ..Default::default() }).await;
    let first = node.client().await;
    let refused = RawClient::connect(&node).await;
    assert_eq!(refused.close_code().await, Some(ErrorCode::NodeFull.to_u64()));
    assert!(node.stats.snapshot().closes.contains(&(ErrorCode::NodeFull, 1)), "{:?}", node.stats.snapshot().closes);

    // The connection holding the room is undisturbed; once it ends, its room is free
    // again (when its task has ended, a moment after the close).
    first.publish("still.here", "yes").await.unwrap();
    first.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match fovea_client::Client::connect(&node.url(), node.options().reconnect(false)).await {
            Ok(c) => {
                c.close().await;
                break;
            }
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "no room after the first client left: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    node.stop().await;
}
