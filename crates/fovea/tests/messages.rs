//! Streamed messages through real nodes: publishes larger than a frame reach every
//! subscriber whole or chunk by chunk, paced by the slowest, across the mesh; and how they
//! end (publisher gone, a subscriber that stops reading, rules broken).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::TestNode;
use fovea_client::{ClientError, Headers};

const SECS: Duration = Duration::from_secs(20);

/// Bytes that differ by position, so that a chunk out of order or lost shows.
fn pattern(len: usize) -> Bytes {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect::<Vec<u8>>().into()
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(SECS, f).await.expect("timed out")
}

/// `publish` of more than `max_payload` streams the message; a plain subscription gets it
/// whole, a chunked one as its parts, and both get the small messages around it.
#[tokio::test]
async fn a_large_publish_reaches_plain_and_chunked_subscribers_whole() {
    let node = TestNode::start().await;
    let sub = node.client().await;
    let mut plain = sub.subscribe("files.>").await.unwrap();
    let mut chunked = sub.subscribe_chunked("files.>").await.unwrap();
    let publisher = node.client().await;
    let big = pattern(5 << 20);
    // The chunked subscription reads as the plain one does: the slowest receiver paces the
    // publisher, so one left unread would hold the other back.
    let want = big.clone();
    let chunked_reader = tokio::spawn(async move {
        let mut order = Vec::new();
        for _ in 0..3 {
            let m = within(chunked.next()).await.unwrap();
            order.push(m.topic.as_str().to_owned());
            let mut body = m.body;
            let (mut got, mut parts) = (Vec::new(), 0);
            while let Some(chunk) = within(body.next_chunk()).await {
                got.extend_from_slice(&chunk.unwrap());
                parts += 1;
            }
            if m.topic.as_str() == "files.big" {
                assert_eq!(Bytes::from(got), want);
                assert!(parts > 1, "a large message comes in parts");
            } else {
                assert_eq!(got, b"small");
            }
        }
        order
    });
    publisher.publish("files.before", "small").await.unwrap();
    publisher.publish("files.big", big.clone()).await.unwrap();
    publisher.publish("files.after", "small").await.unwrap();

    let mut topics = Vec::new();
    for _ in 0..3 {
        let m = within(plain.next()).await.unwrap();
        if m.topic.as_str() == "files.big" {
            assert_eq!(m.payload, big, "assembled whole, in order");
        } else {
            assert_eq!(&m.payload[..], b"small");
        }
        topics.push(m.topic.as_str().to_owned());
    }
    topics.sort();
    assert_eq!(topics, ["files.after", "files.before", "files.big"]);
    let order = within(chunked_reader).await.unwrap();
    assert_eq!(order, ["files.before", "files.big", "files.after"], "a chunked subscription keeps publish order");
    node.stop().await;
}

/// A publisher writing as it goes: headers and parts reach the subscriber, in order; the
/// message ends with `finish`.
#[tokio::test]
async fn a_publish_stream_sends_its_parts_in_order() {
    let node = TestNode::start().await;
    let sub = node.client().await;
    let mut chunked = sub.subscribe_chunked("log.lines").await.unwrap();
    let publisher = node.client().await;
    let headers = Headers::from_pairs([("kind", "log")]).unwrap();
    let mut stream = publisher.publish_stream("log.lines", &headers, "first;").await.unwrap();
    for i in 0..200 {
        stream.send(format!("{i};")).await.unwrap();
    }
    stream.finish().await.unwrap();
    let m = within(chunked.next()).await.unwrap();
    assert_eq!(m.headers.get("kind"), Some("log"));
    let all = within(m.body.read_all(1 << 20)).await.unwrap();
    let want: String = std::iter::once("first;".to_owned()).chain((0..200).map(|i| format!("{i};"))).collect();
    assert_eq!(String::from_utf8(all.to_vec()).unwrap(), want);
    node.stop().await;
}

/// A publisher that goes away mid-message: its subscribers learn the message was cut.
#[tokio::test]
async fn a_publisher_lost_mid_message_cuts_it_for_its_subscribers() {
    let node = TestNode::start().await;
    let sub = node.client().await;
    let mut chunked = sub.subscribe_chunked("cut.>").await.unwrap();
    let publisher = node.client().await;
    let mut stream = publisher.publish_stream("cut.me", &Headers::new(), "").await.unwrap();
    stream.send(pattern(100_000)).await.unwrap();
    let m = within(chunked.next()).await.unwrap();
    let mut body = m.body;
    let first = within(body.next_chunk()).await.unwrap().unwrap();
    assert!(!first.is_empty());
    publisher.close().await;
    drop(stream);
    let mut ended = None;
    while let Some(chunk) = within(body.next_chunk()).await {
        if let Err(e) = chunk {
            ended = Some(e);
            break;
        }
    }
    assert!(matches!(ended, Some(ClientError::StreamEnded)), "{ended:?}");
    node.stop().await;
}

/// A subscriber that stops reading holds the publisher to its window; after the node's
/// `slow_consumer_timeout` it is cut from the message and the others get all of it.
#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_and_the_others_go_on() {
    let limits = fovea_node::Limits { slow_consumer_timeout: Duration::from_millis(500), ..Default::default() };
    let node = TestNode::start_with(limits).await;
    let reader = node.client().await;
    let mut good = reader.subscribe_chunked("bulk.>").await.unwrap();
    let stopper = node.client().await;
    let mut bad = stopper.subscribe_chunked("bulk.>").await.unwrap();
    let publisher = node.client().await;
    let big = pattern(24 << 20);
    let sender = {
        let publisher = publisher.clone();
        let big = big.clone();
        tokio::spawn(async move { publisher.publish("bulk.data", big).await })
    };
    // The stopper takes the head and never reads.
    let stalled = within(bad.next()).await.unwrap();
    let m = within(good.next()).await.unwrap();
    let all = within(m.body.read_all(64 << 20)).await.unwrap();
    assert_eq!(all, big);
    within(sender).await.unwrap().unwrap();
    let mut body = stalled.body;
    let mut read = 0;
    let end = loop {
        match within(body.next_chunk()).await {
            Some(Ok(c)) => read += c.len(),
            Some(Err(e)) => break e,
            None => panic!("the stalled subscriber got the whole message"),
        }
    };
    assert!(matches!(end, ClientError::StreamEnded), "{end:?}");
    assert!(read < big.len(), "cut before the end");
    node.stop().await;
}

#[tokio::test]
async fn large_messages_cross_the_mesh() {
    let (a, b) = TestNode::start_two().await;
    let sub = b.client().await;
    let mut plain = sub.subscribe("far.files").await.unwrap();
    let mut group = sub.subscribe_group("far.files", "workers").await.unwrap();
    let publisher = a.client().await;
    // Until both subscriptions on the other node are known here.
    let found = tokio::time::Instant::now() + Duration::from_secs(30);
    let (mut plain_seen, mut group_seen) = (false, false);
    while !(plain_seen && group_seen) {
        publisher.publish("far.files", "ping").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), plain.next()).await {
            plain_seen = true;
        }
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), group.next()).await {
            group_seen = true;
        }
        assert!(tokio::time::Instant::now() < found, "the subscriptions on the other node were never found");
    }
    let big = pattern(6 << 20);
    publisher.publish("far.files", big.clone()).await.unwrap();
    let m = tokio::time::timeout(SECS, plain.next()).await.expect("the plain subscriber got nothing").unwrap();
    assert_eq!(m.payload, big);
    let g = within(group.next()).await.unwrap();
    assert_eq!(g.payload, big, "the queue group's member on the other node gets it too");
    a.stop().await;
    b.stop().await;
}

/// The node holds a streamed message's publisher and subscribers to the rules with raw
/// frames: a version 5 session may not open one; a refused head and a chunk beyond the
/// credit are that message's errors (`ERROR` naming it, `CREDIT` `CUT`); a v5 subscriber
/// is left out. The connections stay.
#[tokio::test]
async fn the_node_holds_message_streams_to_their_rules() {
    use fovea_core::frame::{data_flags, Credit, Data, PubStream, Publish, Subscribe};
    use fovea_core::{ErrorCode, Frame};
    let node = TestNode::start().await;
    let head = |id: u64, topic: &'static [u8]| {
        Frame::PubStream(PubStream {
            id,
            msg: Publish { topic: Bytes::from_static(topic), headers: Headers::new(), payload: Bytes::new() },
        })
    };
    let mut v5 = common::RawClient::handshake_at(&node, 5).await;
    v5.send_frame(&head(1, b"a.b")).await;
    assert_eq!(v5.close_code().await, Some(ErrorCode::ProtocolError.to_u64()));

    // A version 5 subscriber never sees a streamed message; a v6 one does.
    let mut old_sub = common::RawClient::handshake_at(&node, 5).await;
    old_sub
        .send_frame(&Frame::Sub(Subscribe { sid: 1, pattern: Bytes::from_static(b"raw.>"), group: Bytes::new() }))
        .await;
    assert_eq!(old_sub.next_frame().await, Some(Frame::SubAck(1)));

    let mut raw = common::RawClient::handshake(&node).await;
    raw.send_frame(&head(3, b"bad..topic")).await;
    match raw.next_frame().await {
        Some(Frame::Error(e)) => assert_eq!((e.code, e.reference), (ErrorCode::InvalidTopic, 3)),
        other => panic!("expected ERROR INVALID_TOPIC, got {other:?}"),
    }
    let cut = Frame::Credit(Credit { id: 3, flags: data_flags::MESSAGE | data_flags::CUT, bytes: 0 });
    assert_eq!(raw.next_frame().await, Some(cut));

    // Granted 256 KiB with no receiver but the old one (left out); a chunk past that
    // breaks the stream.
    raw.send_frame(&head(4, b"raw.x")).await;
    match raw.next_frame().await {
        Some(Frame::Credit(c)) => assert_eq!((c.id, c.flags, c.bytes), (4, data_flags::MESSAGE, 262_144)),
        other => panic!("expected the first CREDIT, got {other:?}"),
    }
    let chunk = Bytes::from(vec![1u8; 300_000]);
    raw.send_frame(&Frame::Data(Data { id: 4, flags: data_flags::MESSAGE, chunk })).await;
    match raw.next_frame().await {
        Some(Frame::Error(e)) => assert_eq!((e.code, e.reference), (ErrorCode::FlowControlError, 4)),
        other => panic!("expected ERROR FLOW_CONTROL_ERROR, got {other:?}"),
    }
    let cut = Frame::Credit(Credit { id: 4, flags: data_flags::MESSAGE | data_flags::CUT, bytes: 0 });
    assert_eq!(raw.next_frame().await, Some(cut));
    // Frames for a stream that has ended are ignored; the connection is fine.
    raw.send_frame(&Frame::Data(Data { id: 4, flags: data_flags::MESSAGE, chunk: Bytes::from_static(b"x") })).await;
    raw.send_frame(&Frame::Credit(Credit { id: 99, flags: data_flags::MESSAGE, bytes: 5 })).await;
    raw.send_frame(&Frame::Ping(9)).await;
    assert_eq!(raw.next_frame().await, Some(Frame::Pong(9)));
    old_sub.send_frame(&Frame::Ping(10)).await;
    assert_eq!(old_sub.next_frame().await, Some(Frame::Pong(10)), "no MSG_STREAM reached the v5 subscriber");
    let stats = node.stats.snapshot();
    assert!(stats.dropped >= 1, "the left-out subscriber counts as a drop");
    node.stop().await;
}

/// `max_stream_bytes` bounds every stream: a message or a call's request or answer past it
/// ends with `PAYLOAD_TOO_LARGE`, and a smaller one passes.
#[tokio::test]
async fn streams_past_max_stream_bytes_end_with_payload_too_large() {
    let limits = fovea_node::Limits { max_stream_bytes: 2 << 20, ..Default::default() };
    let node = TestNode::start_with(limits).await;
    let sub = node.client().await;
    let mut chunked = sub.subscribe_chunked("capped.>").await.unwrap();
    let publisher = node.client().await;
    // The node's refusal reaches the publish while it sends, or (as for a PUB's) as an
    // event once it has finished.
    let mut events = publisher.events();
    let refused = match publisher.publish("capped.big", pattern(3 << 20)).await {
        Err(ClientError::Refused { code, .. }) => code,
        Err(e) => panic!("{e:?}"),
        Ok(()) => {
            publisher.flush().await.unwrap();
            loop {
                match within(events.recv()).await.unwrap() {
                    fovea_client::Event::ServerError { code, .. } => break code,
                    _ => continue,
                }
            }
        }
    };
    assert_eq!(refused, fovea_client::ErrorCode::PayloadTooLarge);
    let m = within(chunked.next()).await.unwrap();
    let cut = within(m.body.read_all(64 << 20)).await.unwrap_err();
    assert!(matches!(cut, ClientError::StreamEnded), "{cut:?}");
    publisher.publish("capped.ok", pattern(1 << 20)).await.unwrap();
    let m = within(chunked.next()).await.unwrap();
    assert_eq!(within(m.body.read_all(64 << 20)).await.unwrap().len(), 1 << 20);

    let provider = node.client().await;
    let mut reg = provider.register("capped.echo").await.unwrap();
    tokio::spawn(async move {
        while let Some(mut req) = reg.next().await {
            tokio::spawn(async move {
                if let Ok(body) = req.read_body(64 << 20).await {
                    req.respond(body);
                }
            });
        }
    });
    let err = publisher.call("capped.echo", pattern(3 << 20), SECS).await.unwrap_err();
    assert!(format!("{err:?}").contains("PayloadTooLarge") || format!("{err}").contains("max_stream_bytes"), "{err:?}");
    node.stop().await;
}
