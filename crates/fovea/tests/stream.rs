//! Streamed calls through real nodes: answers and requests as chunks, larger than a frame,
//! flow-controlled end to end; and how they end (provider lost, caller gone, deadline,
//! rules broken).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{converges, RawClient, TestNode};
use fovea_client::{ClientError, Headers};
use fovea_core::frame::{call_flags, data_flags, Call, Data, Register, Respond};
use fovea_core::{ErrorCode, Frame};

const SECS: Duration = Duration::from_secs(20);

/// Bytes that differ by position, so that a chunk out of order or lost shows.
fn pattern(len: usize) -> Bytes {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect::<Vec<u8>>().into()
}

/// A provider of `name` that answers each call with `n` chunks "0".."n-1" and a final
/// payload "end", with a header.
async fn counter(node: &TestNode, name: &str, n: usize) -> fovea_client::Client {
    let client = node.client().await;
    let mut reg = client.register(name).await.unwrap();
    tokio::spawn(async move {
        while let Some(mut req) = reg.next().await {
            tokio::spawn(async move {
                assert!(req.answer_streams());
                for i in 0..n {
                    if req.send(i.to_string()).await.is_err() {
                        return;
                    }
                }
                req.respond_with_headers(Headers::from_pairs([("done", "yes")]).unwrap(), "end");
            });
        }
    });
    client
}

#[tokio::test]
async fn an_answer_streams_in_order_then_ends() {
    let node = TestNode::start().await;
    let _p = counter(&node, "count.up", 500).await;
    let caller = node.client().await;
    let mut call = caller.call_stream("count.up", "", SECS).await.unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = call.next().await {
        got.push(String::from_utf8(chunk.unwrap().to_vec()).unwrap());
    }
    let want: Vec<String> = (0..500).map(|i| i.to_string()).chain(["end".to_owned()]).collect();
    assert_eq!(got, want);
    assert_eq!(call.headers().get("done"), Some("yes"));
    // A plain call to the same provider is answered in one piece, as before streams.
    let whole = caller.call_stream("count.up", "", SECS).await.unwrap().collect(1 << 20).await.unwrap();
    assert_eq!(whole.payload.len(), want.iter().map(String::len).sum::<usize>());
    node.stop().await;
}

/// Payloads several times the frame limit, both ways: `call` sends a large request as a
/// stream; the provider reads it whole and answers with more than `max_payload`, which a
/// caller taking a stream receives.
#[tokio::test]
async fn payloads_larger_than_a_frame_cross_the_node_both_ways() {
    let node = TestNode::start().await;
    let provider = node.client().await;
    let mut reg = provider.register("blob.echo").await.unwrap();
    tokio::spawn(async move {
        while let Some(mut req) = reg.next().await {
            let body = req.read_body(64 << 20).await.unwrap();
            // Twice the request: larger than max_payload, streamed by `respond` itself.
            let mut answer = body.to_vec();
            answer.extend_from_slice(&body);
            req.respond(answer);
        }
    });
    let caller = node.client().await;
    let big = pattern(5 << 20);
    // `call` takes one answer: an answer over max_payload is refused by the provider's
    // SDK with a message saying how to receive it.
    match caller.call("blob.echo", big.clone(), SECS).await {
        Err(ClientError::Remote { message, .. }) => assert!(message.contains("call_stream"), "{message}"),
        other => panic!("expected the provider's refusal, got {other:?}"),
    }
    let answer = caller.call_stream("blob.echo", big.clone(), SECS).await.unwrap().collect(64 << 20).await.unwrap();
    assert_eq!(answer.payload.len(), 2 * big.len());
    assert!(answer.payload[..big.len()] == big[..] && answer.payload[big.len()..] == big[..]);
    node.stop().await;
}

/// Both directions at once: the provider answers each chunk as it reads it.
#[tokio::test]
async fn a_call_streams_both_ways_at_once() {
    let node = TestNode::start().await;
    let provider = node.client().await;
    let mut reg = provider.register("chat.upper").await.unwrap();
    tokio::spawn(async move {
        while let Some(mut req) = reg.next().await {
            assert!(req.request_streams() && req.answer_streams());
            while let Some(chunk) = req.next_chunk().await {
                let upper = chunk.unwrap().to_ascii_uppercase();
                req.send(upper).await.unwrap();
            }
            req.respond("bye");
        }
    });
    let caller = node.client().await;
    let mut call = caller.open_call("chat.upper", &Headers::new(), SECS).unwrap();
    for word in ["hello", "streaming", "world"] {
        call.send(word).await.unwrap();
        let back = call.next().await.unwrap().unwrap();
        assert_eq!(&back[..], word.to_ascii_uppercase().as_bytes());
    }
    call.finish().unwrap();
    assert_eq!(&call.next().await.unwrap().unwrap()[..], b"bye");
    assert!(call.next().await.is_none());
    node.stop().await;
}

/// A caller that stops reading holds the provider back: the provider's sends stop within
/// the window, nothing piles up in the node, and everything arrives once it reads again.
#[tokio::test]
async fn a_reader_that_stops_holds_the_writer_back() {
    let node = TestNode::start().await;
    let provider = node.client().await;
    let mut reg = provider.register("firehose").await.unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let sent2 = sent.clone();
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 64 << 20;
    tokio::spawn(async move {
        while let Some(mut req) = reg.next().await {
            let chunk = pattern(CHUNK);
            for _ in 0..TOTAL / CHUNK {
                req.send(chunk.clone()).await.unwrap();
                sent2.fetch_add(CHUNK as u64, Ordering::Relaxed);
            }
            req.respond("");
        }
    });
    let caller = node.client().await;
    let mut call = caller.call_stream("firehose", "", Duration::from_secs(120)).await.unwrap();
    let first = call.next().await.unwrap().unwrap();
    // The provider stops at what the window lets through, however long the caller waits.
    let mut last = 0;
    converges("the provider to stop sending", || {
        let now = sent.load(Ordering::Relaxed);
        let still = now == last;
        last = now;
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            still
        }
    })
    .await;
    let held = sent.load(Ordering::Relaxed);
    assert!(held < 16 << 20, "the provider sent {held} bytes to a caller that read {} bytes", first.len());
    // Reading again lets everything through.
    let mut read = first.len();
    while let Some(chunk) = call.next().await {
        read += chunk.unwrap().len();
    }
    assert_eq!(read, TOTAL);
    node.stop().await;
}

/// A provider killed mid-stream: the caller gets what was sent, then
/// `ProviderDisconnected`.
#[tokio::test]
async fn a_provider_lost_mid_stream_ends_the_call_with_a_code() {
    let node = TestNode::start().await;
    let provider = node.client().await;
    let mut reg = provider.register("flaky").await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut req = reg.next().await.unwrap();
        for i in 0..3 {
            req.send(format!("part {i}")).await.unwrap();
        }
        let _ = tx.send(req);
    });
    let caller = node.client().await;
    let mut call = caller.call_stream("flaky", "", SECS).await.unwrap();
    for i in 0..3 {
        assert_eq!(call.next().await.unwrap().unwrap(), format!("part {i}").as_bytes());
    }
    let _req = rx.await.unwrap();
    provider.close().await;
    match call.next().await {
        Some(Err(ClientError::ProviderDisconnected)) => {}
        other => panic!("expected ProviderDisconnected, got {other:?}"),
    }
    assert!(call.next().await.is_none());
    node.stop().await;
}

/// The caller going away (dropping its stream) or its deadline passing reaches a provider
/// blocked on credit: its send fails with `Cancelled`.
#[tokio::test]
async fn a_caller_that_leaves_or_times_out_cancels_the_providers_stream() {
    let node = TestNode::start().await;
    let provider = node.client().await;
    let mut reg = provider.register("endless").await.unwrap();
    let (tx, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(mut req) = reg.next().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let chunk = pattern(64 * 1024);
                let err = loop {
                    if let Err(e) = req.send(chunk.clone()).await {
                        break e;
                    }
                };
                let _ = tx.send(err);
            });
        }
    });
    let caller = node.client().await;
    let mut call = caller.call_stream("endless", "", SECS).await.unwrap();
    call.next().await.unwrap().unwrap();
    drop(call);
    let e = tokio::time::timeout(SECS, outcomes.recv()).await.unwrap().unwrap();
    assert!(matches!(e, ClientError::Cancelled), "{e:?}");
    // A deadline: the caller reads nothing and the call times out.
    let mut call = caller.call_stream("endless", "", Duration::from_millis(300)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut last = None;
    while let Some(item) = call.next().await {
        last = Some(item);
    }
    assert!(matches!(last, Some(Err(ClientError::Timeout(_)))), "{last:?}");
    let e = tokio::time::timeout(SECS, outcomes.recv()).await.unwrap().unwrap();
    assert!(matches!(e, ClientError::Cancelled), "{e:?}");
    node.stop().await;
}

/// Streams across a mesh link: a large request and a streamed answer between a caller on
/// one node and a provider on another.
#[tokio::test]
async fn streams_cross_the_mesh() {
    let (a, b) = TestNode::start_two().await;
    let provider = b.client().await;
    let mut reg = provider.register("far.echo").await.unwrap();
    tokio::spawn(async move {
        while let Some(mut req) = reg.next().await {
            let body = req.read_body(64 << 20).await.unwrap();
            if !req.answer_streams() {
                req.respond(body);
                continue;
            }
            for piece in body.chunks(100_000) {
                req.send(Bytes::copy_from_slice(piece)).await.unwrap();
            }
            req.respond("");
        }
    });
    let caller = a.client().await;
    let big = pattern(6 << 20);
    converges("the provider on the other node to be found", || async {
        caller.call("far.echo", "ping", SECS).await.is_ok_and(|r| &r.payload[..] == b"ping")
    })
    .await;
    let answer = caller.call_stream("far.echo", big.clone(), SECS).await.unwrap().collect(64 << 20).await.unwrap();
    assert_eq!(answer.payload, big);
    a.stop().await;
    b.stop().await;
}

/// The node enforces the streams' rules: a streamed request to a provider that speaks no
/// streams is refused, and a provider sending past its credit ends the call.
#[tokio::test]
async fn the_node_holds_every_stream_to_its_rules() {
    let node = TestNode::start().await;
    // A provider speaking version 4.
    let mut old = RawClient::handshake_at(&node, 4).await;
    old.send_frame(&Frame::Reg(Register { rid: 1, procedure: Bytes::from_static(b"old.svc"), tool: Bytes::new() }))
        .await;
    assert_eq!(old.next_frame().await, Some(Frame::RegAck(1)));
    let caller = node.client().await;
    let mut call = caller.open_call("old.svc", &Headers::new(), SECS).unwrap();
    match call.next().await {
        Some(Err(ClientError::Refused { code: ErrorCode::StreamsUnsupported, .. })) => {}
        other => panic!("expected STREAMS_UNSUPPORTED, got {other:?}"),
    }
    // A raw version 5 provider that ignores the caller's credit.
    let mut rogue = RawClient::handshake(&node).await;
    rogue
        .send_frame(&Frame::Reg(Register { rid: 2, procedure: Bytes::from_static(b"rogue.svc"), tool: Bytes::new() }))
        .await;
    assert_eq!(rogue.next_frame().await, Some(Frame::RegAck(2)));
    let mut raw_caller = RawClient::handshake(&node).await;
    raw_caller
        .send_frame(&Frame::Call(Call {
            call_id: 9,
            procedure: Bytes::from_static(b"rogue.svc"),
            timeout_ms: 10_000,
            headers: fovea_core::Headers::new(),
            payload: Bytes::new(),
            flags: call_flags::STREAM_ANSWER,
        }))
        .await;
    let Some(Frame::Request(q)) = rogue.next_frame().await else { panic!("expected REQUEST") };
    assert_eq!(q.flags, call_flags::STREAM_ANSWER);
    // 256 KiB of credit, 300 KiB sent: the last chunk breaks the rule.
    for _ in 0..3 {
        let chunk = Bytes::from(vec![1u8; 100 * 1024]);
        rogue.send_frame(&Frame::Data(Data { id: q.req_id, flags: data_flags::ANSWER, chunk })).await;
    }
    let mut chunks = 0;
    let code = loop {
        match raw_caller.next_frame().await {
            Some(Frame::Data(d)) => {
                assert_eq!((d.id, d.flags), (9, data_flags::ANSWER));
                chunks += 1;
            }
            Some(Frame::Result(r)) => break r.code,
            other => panic!("expected DATA or RESULT, got {other:?}"),
        }
    };
    assert_eq!((chunks, code), (2, ErrorCode::FlowControlError));
    assert_eq!(rogue.next_frame().await, Some(Frame::Cancel(q.req_id)));
    // The rogue's late answer is ignored; both connections stay up.
    let answer = Frame::Respond(Respond {
        req_id: q.req_id,
        code: ErrorCode::NoError,
        headers: fovea_core::Headers::new(),
        payload: Bytes::new(),
    });
    rogue.send_frame(&answer).await;
    rogue.send_frame(&Frame::Ping(1)).await;
    assert_eq!(rogue.next_frame().await, Some(Frame::Pong(1)));
    raw_caller.send_frame(&Frame::Ping(2)).await;
    assert_eq!(raw_caller.next_frame().await, Some(Frame::Pong(2)));
    node.stop().await;
}

/// A provider that answers as it reads, with more than either window: the caller sends
/// from a taken sender while it reads, and both directions flow to the end.
#[tokio::test]
async fn sending_and_reading_at_once_moves_more_than_the_windows() {
    let node = TestNode::start().await;
    let provider = node.client().await;
    let mut reg = provider.register("pipe.echo").await.unwrap();
    tokio::spawn(async move {
        while let Some(mut req) = reg.next().await {
            let mut body = req.take_body().unwrap();
            while let Some(chunk) = body.next_chunk().await {
                req.send(chunk.unwrap()).await.unwrap();
            }
            req.respond("");
        }
    });
    let caller = node.client().await;
    let data = pattern(20 << 20);
    let mut call = caller.open_call("pipe.echo", &Headers::new(), SECS).unwrap();
    let mut sender = call.take_sender().unwrap();
    assert!(call.take_sender().is_none(), "taken once");
    let to_send = data.clone();
    let sending = tokio::spawn(async move {
        for piece in to_send.chunks(300_000) {
            sender.send(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        sender.finish().unwrap();
    });
    let mut back = Vec::with_capacity(data.len());
    while let Some(chunk) = call.next().await {
        back.extend_from_slice(&chunk.unwrap());
    }
    sending.await.unwrap();
    assert!(back == data[..], "{} bytes came back", back.len());
    node.stop().await;
}

/// A provider that disconnects before answering: an idempotent call runs once more on
/// another provider and succeeds; any other call fails with `ProviderDisconnected`.
#[tokio::test]
async fn an_idempotent_call_is_retried_once_on_another_provider() {
    for idempotent in [true, false] {
        let node = TestNode::start().await;
        let first = node.client().await;
        let mut reg = first.register("kv.get").await.unwrap();
        let caller = node.client().await;
        let call = {
            let caller = caller.clone();
            tokio::spawn(async move {
                if idempotent {
                    caller.call_idempotent("kv.get", &Headers::new(), "key", SECS).await
                } else {
                    caller.call("kv.get", "key", SECS).await
                }
            })
        };
        // The first provider has the request; a second one arrives; the first goes away
        // without answering.
        let req = tokio::time::timeout(SECS, reg.next()).await.unwrap().unwrap();
        let second = node.client().await;
        let mut reg2 = second.register("kv.get").await.unwrap();
        tokio::spawn(async move {
            while let Some(req) = reg2.next().await {
                req.respond("from the second");
            }
        });
        req.abandon();
        first.close().await;
        let outcome = tokio::time::timeout(SECS, call).await.unwrap().unwrap();
        if idempotent {
            assert_eq!(&outcome.unwrap().payload[..], b"from the second");
        } else {
            assert!(matches!(outcome, Err(ClientError::ProviderDisconnected)), "{outcome:?}");
        }
        node.stop().await;
    }
}

/// Across the mesh: the node of the provider handling an idempotent call goes away; the
/// caller's node sends the call to a provider on a third node.
#[tokio::test]
async fn an_idempotent_call_survives_the_loss_of_its_providers_node() {
    const SECRET: &str = "a mesh secret of some length";
    let a = TestNode::start_mesh(SECRET, &[]).await;
    let b = TestNode::start_mesh(SECRET, &[a.mesh_addr()]).await;
    let c = TestNode::start_mesh(SECRET, &[a.mesh_addr()]).await;
    let on_b = b.client().await;
    let mut reg = on_b.register("kv.read").await.unwrap();
    let caller = a.client().await;
    // Wait until A finds B's provider: a first call is answered by B.
    let answer_on_b = tokio::spawn(async move {
        let first = reg.next().await.unwrap();
        first.respond("b");
        reg.next().await.unwrap()
    });
    converges("A to find the provider on B", || async {
        caller.call("kv.read", "", SECS).await.is_ok_and(|r| &r.payload[..] == b"b")
    })
    .await;
    let call = {
        let caller = caller.clone();
        tokio::spawn(async move { caller.call_idempotent("kv.read", &Headers::new(), "k", SECS).await })
    };
    let held = tokio::time::timeout(SECS, answer_on_b).await.unwrap().unwrap();
    let on_c = c.client().await;
    let mut reg_c = on_c.register("kv.read").await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = reg_c.next().await {
            req.respond("c");
        }
    });
    held.abandon();
    b.stop().await;
    let r = tokio::time::timeout(SECS, call).await.unwrap().unwrap().unwrap();
    assert_eq!(&r.payload[..], b"c");
    a.stop().await;
    c.stop().await;
}

/// Hostile stream frames: `DATA` on a version 4 session closes it with `PROTOCOL_ERROR`;
/// on version 5, frames naming no call are ignored, and credit past the protocol's bound
/// ends the call it names, not the connection.
#[tokio::test]
async fn hostile_stream_frames_cost_only_their_call() {
    let node = TestNode::start().await;
    let mut old = RawClient::handshake_at(&node, 4).await;
    old.send_frame(&Frame::Data(Data { id: 1, flags: 0, chunk: Bytes::from_static(b"x") })).await;
    assert_eq!(old.close_code().await, Some(ErrorCode::ProtocolError.to_u64()));

    let provider = node.client().await;
    let mut reg = provider.register("hold.on").await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = reg.next().await {
            // Keep the request open until the node ends it; never answer.
            tokio::spawn(async move { req.cancelled().await });
        }
    });
    let mut raw = RawClient::handshake(&node).await;
    for f in [
        Frame::Data(Data { id: 77, flags: 0, chunk: Bytes::from_static(b"nobody") }),
        Frame::Data(Data { id: 78, flags: data_flags::ANSWER | data_flags::END, chunk: Bytes::new() }),
        Frame::Credit(fovea_core::frame::Credit { id: 79, flags: data_flags::ANSWER, bytes: u64::MAX >> 2 }),
    ] {
        raw.send_frame(&f).await;
    }
    raw.send_frame(&Frame::Call(Call {
        call_id: 5,
        procedure: Bytes::from_static(b"hold.on"),
        timeout_ms: 10_000,
        headers: fovea_core::Headers::new(),
        payload: Bytes::new(),
        flags: call_flags::STREAM_ANSWER,
    }))
    .await;
    // More answer credit than a sender may hold: the call ends, the connection stays.
    let credit = fovea_core::frame::Credit { id: 5, flags: data_flags::ANSWER, bytes: u64::MAX >> 2 };
    raw.send_frame(&Frame::Credit(credit)).await;
    match raw.next_frame().await {
        Some(Frame::Result(r)) => assert_eq!((r.call_id, r.code), (5, ErrorCode::FlowControlError)),
        other => panic!("expected RESULT FLOW_CONTROL_ERROR, got {other:?}"),
    }
    raw.send_frame(&Frame::Ping(9)).await;
    assert_eq!(raw.next_frame().await, Some(Frame::Pong(9)));
    node.stop().await;
}
