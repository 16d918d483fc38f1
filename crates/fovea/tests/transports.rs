//! The stream transports (TLS over TCP, WebSocket) against real nodes: clients on every
//! transport meet on the same topics and procedures, on one node and across a mesh; the
//! WebSocket mapping (messages as a byte stream, origin checks) and a stream transport's
//! close (a last GOAWAY) behave as docs/PROTOCOL.md §1.1, §1.2 says.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{eventually, TestNode, WAIT};
use fovea_client::{Client, ClientError};
use fovea_core::frame::{Hello, Publish, Subscribe, VERSION};
use fovea_core::{Deframer, ErrorCode, Frame, Headers};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const T: Duration = Duration::from_secs(10);

async fn connect(node: &TestNode, url: &str) -> Client {
    Client::connect(url, node.options()).await.unwrap_or_else(|e| panic!("{url}: {e}"))
}

async fn next(sub: &mut fovea_client::Subscription) -> fovea_client::Message {
    tokio::time::timeout(WAIT, sub.next()).await.expect("message in time").expect("subscription open")
}

#[tokio::test]
async fn clients_on_quic_tls_and_websocket_meet_on_topics_and_procedures() {
    let node = TestNode::start().await;
    let quic = node.client().await;
    let tls = connect(&node, &node.tls_url).await;
    let ws = connect(&node, &node.ws_url).await;

    let mut on_quic = quic.subscribe("sensors.>").await.unwrap();
    let mut on_tls = tls.subscribe("sensors.*.temp").await.unwrap();
    let mut on_ws = ws.subscribe("sensors.kitchen.temp").await.unwrap();
    for (i, from) in [&quic, &tls, &ws].into_iter().enumerate() {
        from.publish("sensors.kitchen.temp", format!("reading {i}")).await.unwrap();
    }
    for sub in [&mut on_quic, &mut on_tls, &mut on_ws] {
        let mut got = Vec::new();
        for _ in 0..3 {
            let m = next(sub).await;
            assert_eq!(m.topic.as_str(), "sensors.kitchen.temp");
            got.push(String::from_utf8_lossy(&m.payload).into_owned());
        }
        got.sort();
        assert_eq!(got, ["reading 0", "reading 1", "reading 2"]);
    }

    // A provider on the WebSocket, callers on the others; then the other way round.
    let mut reg = ws.register("math.double").await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = reg.next().await {
            let n: u64 = String::from_utf8_lossy(&req.payload).parse().unwrap_or(0);
            req.respond((2 * n).to_string());
        }
    });
    for caller in [&quic, &tls, &ws] {
        let answer = caller.call("math.double", "21", T).await.unwrap();
        assert_eq!(answer.payload, "42");
    }
    let mut reg = tls.register("text.upper").await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = reg.next().await {
            let upper = String::from_utf8_lossy(&req.payload).to_uppercase();
            req.respond(upper);
        }
    });
    assert_eq!(ws.call("text.upper", "hi", T).await.unwrap().payload, "HI");
    assert!(matches!(ws.call("nobody.home", "", T).await, Err(ClientError::NoProvider(_))));

    // Large payloads cross every transport whole.
    let mut big_on_ws = ws.subscribe("sensors.big.>").await.unwrap();
    let big = Bytes::from(vec![7u8; 900_000]);
    ws.publish("sensors.big.blob", big.clone()).await.unwrap();
    assert_eq!(next(&mut on_quic).await.payload, big);
    assert_eq!(next(&mut big_on_ws).await.payload, big, "a large frame spans WebSocket messages");
    // A burst over the WebSocket: batches bigger than one message arrive whole.
    for i in 0..2000 {
        ws.publish("sensors.big.burst", vec![i as u8; 2000]).await.unwrap();
    }
    for i in 0..2000 {
        assert_eq!(next(&mut big_on_ws).await.payload, vec![i as u8; 2000]);
    }

    // The admin endpoint says which transport each connection uses.
    let page = common::http::get_json(node.admin, "/connections").await;
    let mut transports: Vec<String> =
        page["connections"].as_array().unwrap().iter().map(|c| c["transport"].as_str().unwrap().to_owned()).collect();
    transports.sort();
    assert_eq!(transports, ["quic", "tls", "ws"]);
    let info = common::http::get_json(node.admin, "/info").await;
    assert_eq!(info["stats"]["transports"]["ws"], 1, "{info}");
    assert_eq!(info["stats"]["transports"]["tls"], 1, "{info}");
    node.stop().await;
}

#[tokio::test]
async fn a_refusal_on_a_stream_transport_says_why() {
    let node = TestNode::start_with_realms(
        r#"
        [[realm]]
        name = "private"
        [[realm.user]]
        name = "alice"
        token_sha256 = "27042f4e6eca7d0b2a7ee4026df2ecfa51d3339e6d122aa099118ecd8563bad9"
        "#,
    )
    .await;
    for url in [&node.tls_url, &node.ws_url] {
        let opts = node.options().realm("private").token("wrong");
        let Err(err) = Client::connect(url, opts).await else { panic!("{url}: not refused") };
        assert!(matches!(err, ClientError::AuthFailed), "{url}: {err}");
    }
    node.stop().await;
}

#[tokio::test]
async fn past_the_connection_limit_a_stream_client_is_told_node_full() {
    let node = TestNode::start_with(fovea_node::Limits { max_connections: 1, ..Default::default() }).await;
    let _first = connect(&node, &node.ws_url).await;
    for url in [&node.tls_url, &node.ws_url] {
        let Err(err) = Client::connect(url, node.options()).await else { panic!("{url}: not refused") };
        assert!(matches!(err, ClientError::Closed { code: ErrorCode::NodeFull, .. }), "{url}: {err}");
    }
    node.stop().await;
}

/// A raw WebSocket client: frames split over messages and several in one message.
async fn raw_ws(node: &TestNode, origin: Option<&str>) -> Result<RawWs, tokio_tungstenite::tungstenite::Error> {
    let mut req = node.ws_url.as_str().into_client_request()?;
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    let tcp = tokio::net::TcpStream::connect(req.uri().authority().unwrap().as_str()).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(req, tcp).await?;
    Ok(RawWs { ws, deframer: Deframer::new(1 << 21) })
}

struct RawWs {
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    deframer: Deframer,
}

impl RawWs {
    async fn send(&mut self, bytes: Bytes) {
        self.ws.send(Message::Binary(bytes)).await.unwrap();
    }

    async fn frame(&mut self) -> Frame {
        loop {
            if let Some(f) = self.deframer.next_frame().unwrap() {
                return f;
            }
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("a message in time") {
                Some(Ok(Message::Binary(b))) => self.deframer.push(b),
                Some(Ok(Message::Close(c))) => panic!("closed: {c:?}"),
                Some(Ok(_)) => {}
                other => panic!("stream ended: {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn websocket_messages_are_a_byte_stream_whatever_their_boundaries() {
    let node = TestNode::start().await;
    let mut raw = raw_ws(&node, None).await.unwrap();
    let mut all = BytesMut::new();
    Frame::Hello(Hello { version: VERSION, realm: "default".into(), token: Bytes::new(), name: "raw".into() })
        .encode(&mut all);
    Frame::Sub(Subscribe { sid: 1, pattern: Bytes::from_static(b"raw.>"), group: Bytes::new() }).encode(&mut all);
    let publish = |topic: &'static str, payload: &'static str| {
        Frame::Pub(Publish {
            topic: Bytes::from_static(topic.as_bytes()),
            headers: Headers::default(),
            payload: Bytes::from_static(payload.as_bytes()),
        })
    };
    publish("raw.a", "one").encode(&mut all);
    publish("raw.b", "two").encode(&mut all);
    let all = all.freeze();
    // HELLO cut in two messages, the rest (SUB and two PUBs) split mid-frame once more.
    let (a, rest) = all.split_at(3);
    let (b, c) = rest.split_at(rest.len() - 5);
    for part in [a, b, c] {
        raw.send(Bytes::copy_from_slice(part)).await;
    }
    assert!(matches!(raw.frame().await, Frame::Welcome(_)));
    let mut got = Vec::new();
    while got.len() < 2 {
        if let Frame::Msg(m) = raw.frame().await {
            got.push(m.payload);
        }
    }
    assert_eq!(got, [Bytes::from_static(b"one"), Bytes::from_static(b"two")]);

    // A text message is not part of the protocol: the node closes with a reason.
    raw.ws.send(Message::Text("hello".into())).await.unwrap();
    let mut closed_with = None;
    while let Ok(Some(m)) = tokio::time::timeout(WAIT, raw.ws.next()).await {
        match m {
            Ok(Message::Binary(b)) => {
                raw.deframer.push(b);
                while let Ok(Some(f)) = raw.deframer.next_frame() {
                    if let Frame::GoAway(g) = f {
                        closed_with = Some(g.code);
                    }
                }
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    assert_eq!(closed_with, Some(ErrorCode::ProtocolError), "a last GOAWAY says why the stream ends");
    node.stop().await;
}

#[tokio::test]
async fn browser_pages_need_an_allowed_origin() {
    let node = TestNode::start().await;
    assert!(raw_ws(&node, Some("http://localhost:3000")).await.is_ok(), "loopback pages are allowed");
    assert!(raw_ws(&node, None).await.is_ok(), "programs send no Origin and are let in");
    let refused = raw_ws(&node, Some("https://evil.example")).await.err().expect("refused");
    let tokio_tungstenite::tungstenite::Error::Http(resp) = refused else { panic!("{refused}") };
    assert_eq!(resp.status(), 403);
    node.stop().await;
}

#[tokio::test]
async fn transports_meet_across_the_mesh() {
    let a = TestNode::start_mesh("a-mesh-secret-of-some-length", &[]).await;
    let b = TestNode::start_mesh("a-mesh-secret-of-some-length", &[a.mesh_addr()]).await;
    let on_a = connect(&a, &a.ws_url).await;
    let on_b = connect(&b, &b.tls_url).await;
    let mut sub = on_a.subscribe("mesh.>").await.unwrap();
    let mut reg = on_b.register("mesh.echo").await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = reg.next().await {
            let p = req.payload.clone();
            req.respond(p);
        }
    });
    // Discovery crosses the mesh in the background: retry until it has.
    let mut answer = None;
    for _ in 0..100 {
        match on_a.call("mesh.echo", "ping", T).await {
            Ok(r) => {
                answer = Some(r.payload);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(answer.as_deref(), Some(&b"ping"[..]));
    let mut seen = false;
    for _ in 0..100 {
        on_b.publish("mesh.hello", "from b").await.unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            assert_eq!(m.payload, "from b");
            seen = true;
            break;
        }
    }
    assert!(seen, "a WebSocket subscriber on one node gets a TLS publisher's messages on another");
    eventually("both sessions counted", || a.stats.snapshot().connections == 1 && b.stats.snapshot().connections == 1)
        .await;
    a.stop().await;
    b.stop().await;
}

/// Streams need nothing of QUIC: a caller over WebSocket and a provider over TLS move a
/// request and an answer several frames long, flow-controlled, through the node.
#[tokio::test]
async fn streams_work_over_tls_and_websocket() {
    let node = TestNode::start().await;
    let provider = connect(&node, &node.tls_url).await;
    let mut reg = provider.register("tcp.echo").await.unwrap();
    tokio::spawn(async move {
        while let Some(mut req) = reg.next().await {
            let body = req.read_body(64 << 20).await.unwrap();
            req.respond(body);
        }
    });
    let caller = connect(&node, &node.ws_url).await;
    let data: Bytes = (0..3_000_000u32).map(|i| (i % 253) as u8).collect::<Vec<u8>>().into();
    let answer =
        caller.call_stream("tcp.echo", data.clone(), Duration::from_secs(20)).await.unwrap().collect(64 << 20).await;
    assert!(answer.unwrap().payload == data, "the answer came back changed");
    node.stop().await;
}
