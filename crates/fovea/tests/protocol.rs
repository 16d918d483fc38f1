//! The node against hand-made frames: bad input closes only the offending connection,
//! with the documented code, and everyone else carries on.

mod common;

use bytes::Bytes;
use common::{RawClient, TestNode, WAIT};
use fovea_core::frame::{Call, CallResult, Hello, Publish, Register, Respond, Subscribe};
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

fn publish(topic: &[u8], payload: &'static [u8]) -> Frame {
    Frame::Pub(Publish {
        topic: Bytes::copy_from_slice(topic),
        headers: Headers::new(),
        payload: Bytes::from_static(payload),
    })
}

fn subscribe(sid: u64, pattern: &[u8]) -> Frame {
    Frame::Sub(Subscribe { sid, pattern: Bytes::copy_from_slice(pattern), group: Bytes::new() })
}

/// §3: a client may pipeline after HELLO. Frames that arrive in the same chunk as HELLO are
/// handled right after WELCOME, not when the client next sends something.
#[tokio::test]
async fn frames_pipelined_with_hello_are_handled_without_more_bytes() {
    let node = TestNode::start().await;
    let mut raw = RawClient::connect(&node).await;
    let mut bytes = Frame::Hello(hello("default")).to_bytes().to_vec();
    bytes.extend_from_slice(&subscribe(1, b"pipe.>").to_bytes());
    bytes.extend_from_slice(&publish(b"pipe.x", b"hi").to_bytes());
    bytes.extend_from_slice(&Frame::Ping(7).to_bytes());
    raw.send_raw(&bytes).await;
    assert!(matches!(raw.next_frame().await, Some(Frame::Welcome(_))));
    assert_eq!(raw.next_frame().await, Some(Frame::SubAck(1)));
    match raw.next_frame().await {
        Some(Frame::Msg(m)) => assert_eq!((m.sid, &m.topic[..], &m.payload[..]), (1, &b"pipe.x"[..], &b"hi"[..])),
        other => panic!("expected MSG, got {other:?}"),
    }
    assert_eq!(raw.next_frame().await, Some(Frame::Pong(7)));
    node.stop().await;
}

/// §7: a name over 1024 bytes is that operation's error; the connection stays.
#[tokio::test]
async fn names_over_the_limit_are_the_operations_error() {
    let node = TestNode::start().await;
    let mut raw = RawClient::handshake(&node).await;
    let long = vec![b'a'; 1025];
    raw.send_frame(&publish(&long, b"p")).await;
    match raw.next_frame().await {
        Some(Frame::Error(e)) => assert_eq!((e.code, e.reference), (ErrorCode::InvalidTopic, 0), "{}", e.message),
        other => panic!("expected ERROR INVALID_TOPIC, got {other:?}"),
    }
    raw.send_frame(&subscribe(3, &long)).await;
    match raw.next_frame().await {
        Some(Frame::Error(e)) => assert_eq!((e.code, e.reference), (ErrorCode::InvalidPattern, 3), "{}", e.message),
        other => panic!("expected ERROR INVALID_PATTERN, got {other:?}"),
    }
    let group = Frame::Sub(Subscribe { sid: 4, pattern: Bytes::from_static(b"ok"), group: long.clone().into() });
    raw.send_frame(&group).await;
    assert!(
        matches!(raw.next_frame().await, Some(Frame::Error(e)) if (e.code, e.reference) == (ErrorCode::InvalidPattern, 4))
    );
    let reg = Register { rid: 5, procedure: long.clone().into(), tool: Bytes::new() };
    raw.send_frame(&Frame::Reg(reg)).await;
    match raw.next_frame().await {
        Some(Frame::Error(e)) => assert_eq!((e.code, e.reference), (ErrorCode::InvalidProcedure, 5), "{}", e.message),
        other => panic!("expected ERROR INVALID_PROCEDURE, got {other:?}"),
    }
    let call = Call {
        call_id: 6,
        procedure: long.clone().into(),
        timeout_ms: 0,
        headers: Headers::new(),
        payload: Bytes::new(),
        flags: 0,
    };
    raw.send_frame(&Frame::Call(call)).await;
    match raw.next_frame().await {
        Some(Frame::Result(r)) => assert_eq!((r.call_id, r.code), (6, ErrorCode::InvalidProcedure)),
        other => panic!("expected RESULT INVALID_PROCEDURE, got {other:?}"),
    }
    // Invalid UTF-8 in a name is the operation's error too.
    raw.send_frame(&publish(b"bad.\xff", b"p")).await;
    assert!(matches!(raw.next_frame().await, Some(Frame::Error(e)) if e.code == ErrorCode::InvalidTopic));
    raw.send_frame(&Frame::Ping(1)).await;
    assert_eq!(raw.next_frame().await, Some(Frame::Pong(1)));
    node.stop().await;
}

/// §3: a tool descriptor is a version 4 field; a session below it that sends one is closed.
#[tokio::test]
async fn a_tool_on_a_session_below_version_4_is_a_protocol_error() {
    let node = TestNode::start().await;
    let mut raw = RawClient::handshake_at(&node, 3).await;
    let reg =
        Register { rid: 1, procedure: Bytes::from_static(b"t.x"), tool: Bytes::from_static(br#"{"description":"x"}"#) };
    raw.send_frame(&Frame::Reg(reg)).await;
    let (code, reason) = raw.close_reason().await.expect("an application close");
    assert_eq!(code, ErrorCode::ProtocolError.to_u64(), "{reason}");
    assert!(reason.contains("tool descriptor") && reason.contains('4'), "{reason}");
    // A plain REG on the same version is fine.
    let mut raw = RawClient::handshake_at(&node, 3).await;
    let reg = Register { rid: 1, procedure: Bytes::from_static(b"t.x"), tool: Bytes::new() };
    raw.send_frame(&Frame::Reg(reg)).await;
    assert_eq!(raw.next_frame().await, Some(Frame::RegAck(1)));
    node.stop().await;
}

/// §4.1: an answer larger than the caller's max_payload is not relayed: the caller gets
/// PAYLOAD_TOO_LARGE, the provider an ERROR that names its request.
#[tokio::test]
async fn an_answer_over_max_payload_fails_the_call_and_tells_the_provider() {
    let max = 4096;
    let node = TestNode::start_with(fovea_node::Limits { max_payload: max, ..Default::default() }).await;
    let mut provider = RawClient::handshake(&node).await;
    provider
        .send_frame(&Frame::Reg(Register { rid: 1, procedure: Bytes::from_static(b"big.answer"), tool: Bytes::new() }))
        .await;
    assert_eq!(provider.next_frame().await, Some(Frame::RegAck(1)));
    let mut caller = RawClient::handshake(&node).await;
    for (call_id, size) in [(1u64, max + 1), (2, max)] {
        let call = Call {
            call_id,
            procedure: Bytes::from_static(b"big.answer"),
            timeout_ms: 10_000,
            headers: Headers::new(),
            payload: Bytes::new(),
            flags: 0,
        };
        caller.send_frame(&Frame::Call(call)).await;
        let Some(Frame::Request(req)) = provider.next_frame().await else { panic!("expected REQUEST") };
        let answer = Respond {
            req_id: req.req_id,
            code: ErrorCode::NoError,
            headers: Headers::new(),
            payload: vec![7u8; size].into(),
        };
        provider.send_frame(&Frame::Respond(answer)).await;
        match caller.next_frame().await {
            Some(Frame::Result(CallResult { call_id: id, code, payload, .. })) if size > max => {
                assert_eq!((id, code), (call_id, ErrorCode::PayloadTooLarge));
                assert!(payload.len() < 200, "the oversize answer must not reach the caller");
                match provider.next_frame().await {
                    Some(Frame::Error(e)) => {
                        assert_eq!((e.code, e.reference), (ErrorCode::PayloadTooLarge, 0));
                        assert!(e.message.contains(&format!("request {}", req.req_id)), "{}", e.message);
                    }
                    other => panic!("expected ERROR PAYLOAD_TOO_LARGE for the provider, got {other:?}"),
                }
            }
            Some(Frame::Result(r)) => {
                assert_eq!((r.call_id, r.code, r.payload.len()), (call_id, ErrorCode::NoError, max))
            }
            other => panic!("expected RESULT, got {other:?}"),
        }
    }
    node.stop().await;
}

/// §4: a subscriber closed as a slow consumer learns from the close's reason what it lost,
/// since the DROPPED notices queued behind its stalled stream never arrive.
#[tokio::test]
async fn a_slow_consumer_close_says_what_was_dropped() {
    let limits = fovea_node::Limits {
        max_pending_bytes: 64 * 1024,
        slow_consumer_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let node = TestNode::start_with(limits).await;
    let mut stalled = RawClient::handshake(&node).await;
    stalled.send_frame(&subscribe(9, b"flood")).await;
    assert_eq!(stalled.next_frame().await, Some(Frame::SubAck(9)));
    // From here on the raw client reads nothing.
    let publisher = node.client().await;
    let closed = stalled.conn.clone();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while closed.close_reason().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never closed: {:?}", node.stats.snapshot());
        for _ in 0..100 {
            publisher.publish("flood", vec![0u8; 1024]).await.unwrap();
        }
        publisher.flush().await.unwrap();
    }
    let (code, reason) = stalled.close_reason().await.expect("an application close");
    assert_eq!(code, ErrorCode::SlowConsumer.to_u64(), "{reason}");
    let pairs = reason.rsplit_once("dropped ").map(|(_, p)| p.to_owned()).unwrap_or_default();
    let (sid, count) = pairs.split_once('=').expect("SID=COUNT in the reason");
    assert_eq!(sid, "9", "{reason}");
    let count: u64 = count.parse().expect("a count");
    assert!(count > 0 && count <= node.stats.snapshot().dropped, "{reason}");
    node.stop().await;
}

fn call(call_id: u64, procedure: &[u8], payload: Vec<u8>) -> Frame {
    Frame::Call(Call {
        call_id,
        procedure: Bytes::copy_from_slice(procedure),
        timeout_ms: 10_000,
        headers: Headers::new(),
        payload: payload.into(),
        flags: 0,
    })
}

/// §4.1: the two cases a CALL is refused with ERROR (id 0; an id in flight, referenced by
/// that id, leaving the call in flight alone), and the failures that are RESULTs.
#[tokio::test]
async fn call_refusals_are_errors_or_results_as_documented() {
    let node = TestNode::start_with(fovea_node::Limits { max_payload: 1024, ..Default::default() }).await;
    let mut provider = RawClient::handshake(&node).await;
    let reg = Register { rid: 1, procedure: Bytes::from_static(b"edge.slow"), tool: Bytes::new() };
    provider.send_frame(&Frame::Reg(reg)).await;
    assert_eq!(provider.next_frame().await, Some(Frame::RegAck(1)));
    let mut caller = RawClient::handshake(&node).await;

    caller.send_frame(&call(0, b"edge.slow", Vec::new())).await;
    assert!(matches!(caller.next_frame().await,
        Some(Frame::Error(e)) if (e.code, e.reference) == (ErrorCode::InvalidProcedure, 0)));

    caller.send_frame(&call(5, b"edge.slow", Vec::new())).await;
    let Some(Frame::Request(req)) = provider.next_frame().await else { panic!("expected REQUEST") };
    caller.send_frame(&call(5, b"edge.slow", Vec::new())).await;
    assert!(matches!(caller.next_frame().await,
        Some(Frame::Error(e)) if (e.code, e.reference) == (ErrorCode::DuplicateId, 5)));
    // The call in flight is untouched: its answer still arrives.
    let answer = Respond {
        req_id: req.req_id,
        code: ErrorCode::NoError,
        headers: Headers::new(),
        payload: Bytes::from_static(b"ok"),
    };
    provider.send_frame(&Frame::Respond(answer)).await;
    assert!(matches!(caller.next_frame().await,
        Some(Frame::Result(r)) if (r.call_id, r.code, &r.payload[..]) == (5, ErrorCode::NoError, &b"ok"[..])));

    for (id, procedure, payload, code) in [
        (6, &b"edge..bad"[..], Vec::new(), ErrorCode::InvalidProcedure),
        (7, &b"edge.*"[..], Vec::new(), ErrorCode::InvalidProcedure),
        (8, &b"edge.slow"[..], vec![0u8; 1025], ErrorCode::PayloadTooLarge),
        (9, &b"edge.nobody"[..], Vec::new(), ErrorCode::NoProvider),
    ] {
        caller.send_frame(&call(id, procedure, payload)).await;
        match caller.next_frame().await {
            Some(Frame::Result(r)) => assert_eq!((r.call_id, r.code), (id, code)),
            other => panic!("call {id}: expected RESULT {code:?}, got {other:?}"),
        }
    }
    node.stop().await;
}

/// §4.3: FIN on the control stream ends the session after what came before it.
#[tokio::test]
async fn a_finished_control_stream_ends_the_session_cleanly() {
    let node = TestNode::start().await;
    let watcher = node.client().await;
    let mut sub = watcher.subscribe("fin.>").await.unwrap();
    let mut raw = RawClient::handshake(&node).await;
    raw.send_frame(&publish(b"fin.last", b"before the FIN")).await;
    raw.send.finish().unwrap();
    assert_eq!(raw.close_code().await, Some(ErrorCode::NoError.to_u64()));
    let m = tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap();
    assert_eq!(&m.payload[..], b"before the FIN");
    node.stop().await;
}
