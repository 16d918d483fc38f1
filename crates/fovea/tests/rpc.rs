//! RPC and queue groups through real nodes on loopback, driven by the SDK.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::{RawClient, TestNode, WAIT};
use fovea_client::{Client, ClientError, Headers, Registration, Request};
use fovea_core::frame::{Call, Hello, Register};
use fovea_core::{ErrorCode, Frame};
use fovea_node::Limits;

const T: Duration = Duration::from_secs(10);

async fn next_request(reg: &mut Registration) -> Request {
    tokio::time::timeout(WAIT, reg.next()).await.expect("request in time").expect("registration open")
}

/// Serves `reg` by echoing payloads, tagging answers with `name`, until it ends.
fn echo(mut reg: Registration, name: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(req) = reg.next().await {
            let headers = Headers::from_pairs([("served-by", name)]).unwrap();
            let payload = req.payload.clone();
            req.respond_with_headers(headers, payload);
        }
    })
}

#[tokio::test]
async fn a_call_reaches_a_provider_and_returns_its_answer_with_headers() {
    let node = TestNode::start().await;
    let provider = node.client().await;
    let mut reg = provider.register("math.double").await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = reg.next().await {
            let n: u64 = String::from_utf8_lossy(&req.payload).parse().unwrap();
            assert_eq!(req.headers.get("trace"), Some("t-1"));
            req.respond_with_headers(Headers::from_pairs([("unit", "none")]).unwrap(), (n * 2).to_string());
        }
    });
    let caller = node.client().await;
    let headers = Headers::from_pairs([("trace", "t-1")]).unwrap();
    let r = caller.call_with_headers("math.double", &headers, "21", T).await.unwrap();
    assert_eq!(&r.payload[..], b"42");
    assert_eq!(r.headers.get("unit"), Some("none"));
    assert_eq!(node.stats.snapshot().registrations, 1);
    node.stop().await;
}

#[tokio::test]
async fn calls_spread_over_three_providers() {
    let node = TestNode::start().await;
    let mut providers = Vec::new();
    for name in ["a", "b", "c"] {
        let c = node.client().await;
        echo(c.register("svc.echo").await.unwrap(), name);
        providers.push(c);
    }
    let caller = node.client().await;
    let mut count: HashMap<String, u32> = HashMap::new();
    for _ in 0..300 {
        let r = caller.call("svc.echo", "x", T).await.unwrap();
        *count.entry(r.headers.get("served-by").unwrap().to_owned()).or_default() += 1;
    }
    // Uniform in expectation (100 each); 60 is five standard deviations below.
    for name in ["a", "b", "c"] {
        assert!(count.get(name).copied().unwrap_or(0) >= 60, "{count:?}");
    }
    node.stop().await;
}

#[tokio::test]
async fn a_provider_with_calls_piling_up_gets_fewer_new_ones() {
    let node = TestNode::start().await;
    // "slow" answers each request 50 ms late; the others answer at once.
    let slow = node.client().await;
    let mut slow_reg = slow.register("svc.work").await.unwrap();
    tokio::spawn(async move {
        while let Some(r) = slow_reg.next().await {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let headers = Headers::from_pairs([("served-by", "slow")]).unwrap();
                r.respond_with_headers(headers, "x");
            });
        }
    });
    let mut fast = Vec::new();
    for name in ["f1", "f2"] {
        let c = node.client().await;
        echo(c.register("svc.work").await.unwrap(), name);
        fast.push(c);
    }
    let caller = node.client().await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = caller.clone();
        tasks.push(tokio::spawn(async move {
            let mut slow_hits = 0u32;
            for _ in 0..25 {
                let r = c.call("svc.work", "x", T).await.unwrap();
                slow_hits += u32::from(r.headers.get("served-by") == Some("slow"));
            }
            slow_hits
        }));
    }
    let mut slow_got = 0;
    for t in tasks {
        slow_got += t.await.unwrap();
    }
    // Uniform would give it a third (133 of 400). With power of two choices a provider
    // with requests in flight loses every pairing against an idle one.
    assert!(slow_got < 400 / 6, "the slow provider got {slow_got} of 400");
    node.stop().await;
}

#[tokio::test]
async fn no_provider_is_answered_at_once() {
    let node = TestNode::start().await;
    let caller = node.client().await;
    // A long timeout: the answer must not wait for it.
    let r = tokio::time::timeout(WAIT, caller.call("nobody.home", "x", Duration::from_secs(3600))).await.unwrap();
    match r {
        Err(ClientError::NoProvider(p)) => assert_eq!(p, "nobody.home"),
        other => panic!("expected NoProvider, got {other:?}"),
    }
    let e = caller.call("bad..name", "x", T).await.unwrap_err();
    assert!(matches!(e, ClientError::InvalidProcedure { .. }), "{e}");
    node.stop().await;
}

#[tokio::test]
async fn a_late_answer_after_the_deadline_is_discarded_and_counted() {
    let node = TestNode::start().await;
    let provider = node.client().await;
    let mut reg = provider.register("svc.slow").await.unwrap();
    let caller = node.client().await;
    let call = tokio::spawn(async move { caller.call("svc.slow", "x", Duration::from_millis(200)).await });
    let req = next_request(&mut reg).await;
    let left = req.deadline().saturating_duration_since(tokio::time::Instant::now());
    assert!(left <= Duration::from_millis(200), "the provider sees the caller's deadline: {left:?}");
    match call.await.unwrap() {
        Err(ClientError::Timeout(t)) => assert_eq!(t, Duration::from_millis(200)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    req.respond("too late");
    provider.flush().await.unwrap();
    let s = node.stats.snapshot();
    assert_eq!(s.late_responses, 1, "{s:?}");
    // The node ended the call at its deadline (the client's own timer waits a grace longer).
    assert!(s.rejections.contains(&(ErrorCode::Timeout, 1)), "{s:?}");
    node.stop().await;
}

/// The client's own deadline (the timeout plus a grace) ends a call whose answer it
/// cannot read: here the node's `TIMEOUT` waits in the stream behind messages for a
/// subscription the application does not read (flow control holds the reader).
#[tokio::test]
async fn a_call_whose_answer_cannot_be_read_times_out_at_the_clients_own_deadline() {
    let node = TestNode::start().await;
    let provider = node.client().await;
    let mut reg = provider.register("svc.held").await.unwrap();
    let caller = Client::connect(&node.url(), node.options().subscription_capacity(1)).await.unwrap();
    let mut unread = caller.subscribe("flood").await.unwrap();
    let publisher = node.client().await;
    for i in 0..10u8 {
        publisher.publish("flood", vec![i]).await.unwrap();
    }
    // Routed, so these messages reach the caller ahead of any answer to its call.
    publisher.flush().await.unwrap();
    let c = caller.clone();
    let call = tokio::spawn(async move { c.call("svc.held", "x", Duration::from_millis(200)).await });
    let held = next_request(&mut reg).await;
    let r = tokio::time::timeout(WAIT, call).await.expect("the call ended without its answer").unwrap();
    assert!(matches!(r, Err(ClientError::Timeout(t)) if t == Duration::from_millis(200)), "{r:?}");
    // Reading again lets the node's late TIMEOUT through, to no call: the client carries on.
    for i in 0..10u8 {
        let m = tokio::time::timeout(WAIT, unread.next()).await.unwrap().unwrap();
        assert_eq!(m.payload, vec![i]);
    }
    drop(held);
    echo(reg, "provider");
    let r = caller.call("svc.held", "again", T).await.unwrap();
    assert_eq!(r.payload, "again");
    node.stop().await;
}

#[tokio::test]
async fn the_node_ends_each_call_at_its_own_deadline_whatever_the_order_they_came_in() {
    let node = TestNode::start().await;
    let provider = node.client().await;
    let mut reg = provider.register("svc.silent").await.unwrap();
    let caller = node.client().await;
    // Longest first: each later call brings a deadline earlier than the one the node's
    // timer is set to. One call is answered in time; its deadline must not fire.
    let timeouts = [3000u64, 1200, 600, 300];
    let mut calls = Vec::new();
    let mut held = Vec::new();
    for ms in timeouts {
        let c = caller.clone();
        calls.push(tokio::spawn(async move {
            let t0 = tokio::time::Instant::now();
            (c.call("svc.silent", "x", Duration::from_millis(ms)).await, t0.elapsed())
        }));
        held.push(next_request(&mut reg).await);
    }
    held.remove(1).respond("in time"); // the 1 200 ms call
    for (i, call) in calls.into_iter().enumerate() {
        let (r, took) = call.await.unwrap();
        let ms = timeouts[i];
        if ms == 1200 {
            assert_eq!(r.unwrap().payload, "in time");
            continue;
        }
        assert!(matches!(r, Err(ClientError::Timeout(t)) if t == Duration::from_millis(ms)), "{ms} ms: {r:?}");
        assert!(took >= Duration::from_millis(ms), "the {ms} ms call ended after {took:?}");
    }
    let s = node.stats.snapshot();
    assert!(s.rejections.contains(&(ErrorCode::Timeout, 3)), "the node timed out all three: {s:?}");
    drop(held);
    node.stop().await;
}

#[tokio::test]
async fn a_provider_that_disconnects_fails_its_calls_at_once_and_others_take_over() {
    let node = TestNode::start().await;
    let doomed = node.client().await;
    let mut doomed_reg = doomed.register("svc.x").await.unwrap();
    let caller = node.client().await;
    let c2 = caller.clone();
    let call = tokio::spawn(async move { c2.call("svc.x", "x", Duration::from_secs(3600)).await });
    let _held = next_request(&mut doomed_reg).await;
    // A second provider registers while the first holds the call.
    let survivor = node.client().await;
    echo(survivor.register("svc.x").await.unwrap(), "survivor");
    doomed.close().await;
    let r = tokio::time::timeout(WAIT, call).await.unwrap().unwrap();
    assert!(matches!(r, Err(ClientError::ProviderDisconnected)), "{r:?}");
    let r = caller.call("svc.x", "y", T).await.unwrap();
    assert_eq!(r.headers.get("served-by"), Some("survivor"));
    node.stop().await;
}

#[tokio::test]
async fn provider_errors_reach_the_caller_with_their_code() {
    let node = TestNode::start().await;
    let provider = node.client().await;
    let mut reg = provider.register("svc.fail").await.unwrap();
    tokio::spawn(async move {
        let r = reg.next().await.unwrap();
        r.fail_with_code(0x1005, "no such account");
        // Dropped without an answer: the caller still gets one.
        drop(reg.next().await.unwrap());
    });
    let caller = node.client().await;
    match caller.call("svc.fail", "x", T).await {
        Err(ClientError::Remote { code, message }) => {
            assert_eq!((code, message.as_str()), (0x1005, "no such account"));
        }
        other => panic!("expected Remote, got {other:?}"),
    }
    match caller.call("svc.fail", "x", T).await {
        Err(ClientError::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::ApplicationError.to_u64());
            assert!(message.contains("without an answer"), "{message}");
        }
        other => panic!("expected Remote, got {other:?}"),
    }
    node.stop().await;
}

#[tokio::test]
async fn calls_over_the_in_flight_limit_are_busy() {
    let node = TestNode::start_with(Limits { max_calls_in_flight: 1, ..Limits::default() }).await;
    let provider = node.client().await;
    let mut reg = provider.register("svc.hold").await.unwrap();
    let caller = node.client().await;
    let c2 = caller.clone();
    let first = tokio::spawn(async move { c2.call("svc.hold", "1", T).await });
    let held = next_request(&mut reg).await;
    let second = caller.call("svc.hold", "2", T).await;
    assert!(matches!(second, Err(ClientError::Busy(_))), "{second:?}");
    held.respond("ok");
    assert_eq!(&first.await.unwrap().unwrap().payload[..], b"ok");
    assert!(node.stats.snapshot().rejections.contains(&(ErrorCode::Busy, 1)));
    node.stop().await;
}

#[tokio::test]
async fn a_dropped_call_is_cancelled_at_the_provider() {
    let node = TestNode::start().await;
    // A raw provider, to see the CANCEL frame the SDK does not surface.
    let mut raw = RawClient::handshake(&node).await;
    raw.send_frame(&Frame::Reg(Register { rid: 7, procedure: Bytes::from_static(b"svc.cancel"), tool: Bytes::new() }))
        .await;
    assert_eq!(raw.next_frame().await, Some(Frame::RegAck(7)));
    let caller = node.client().await;
    let c2 = caller.clone();
    let call = tokio::spawn(async move { c2.call("svc.cancel", "x", Duration::from_secs(3600)).await });
    let req_id = match raw.next_frame().await {
        Some(Frame::Request(q)) => {
            assert_eq!(q.rid, 7);
            q.req_id
        }
        other => panic!("expected REQUEST, got {other:?}"),
    };
    call.abort();
    assert_eq!(raw.next_frame().await, Some(Frame::Cancel(req_id)));
    node.stop().await;
}

/// A handler sees its request abandoned whether it asked before the node's `CANCEL` came
/// (and waits on it) or only after.
#[tokio::test]
async fn a_handler_learns_of_cancellation_whether_it_asked_before_or_after() {
    let node = TestNode::start().await;
    let provider = node.client().await;
    let mut reg = provider.register("svc.abandoned").await.unwrap();
    echo(provider.register("svc.echo").await.unwrap(), "provider");
    let caller = node.client().await;
    let (c1, c2) = (caller.clone(), caller.clone());
    let first = tokio::spawn(async move { c1.call("svc.abandoned", "1", T).await });
    let asked_before = next_request(&mut reg).await;
    let second = tokio::spawn(async move { c2.call("svc.abandoned", "2", T).await });
    let asked_after = next_request(&mut reg).await;
    assert!(!asked_before.is_cancelled());
    let waiting = tokio::spawn(async move {
        asked_before.cancelled().await;
        asked_before
    });
    first.abort();
    second.abort();
    assert!(first.await.unwrap_err().is_cancelled() && second.await.unwrap_err().is_cancelled());
    // Sent after the two cancels, over the same connections: its request reaches the
    // provider after them.
    caller.call("svc.echo", "x", T).await.unwrap();
    assert!(asked_after.is_cancelled(), "the CANCEL came before the handler asked");
    let req = tokio::time::timeout(WAIT, waiting).await.expect("the waiting handler woke").unwrap();
    assert!(req.is_cancelled());
    node.stop().await;
}

/// The node checks each `CALL`'s procedure name (it skips the check only for a repeat of
/// the last name that passed): an invalid name between two valid ones is refused, and the
/// valid ones still go through. The SDK checks names itself, so a raw client sends these.
#[tokio::test]
async fn the_node_checks_every_calls_procedure_name_however_they_alternate() {
    let node = TestNode::start_with(Limits { max_topic_depth: 3, ..Limits::default() }).await;
    let provider = node.client().await;
    echo(provider.register("svc.ok").await.unwrap(), "provider");
    let mut raw = RawClient::handshake(&node).await;
    let names: [&'static [u8]; 5] = [b"svc.ok", b"svc..ok", b"svc.ok", b"a.b.c.d", b"svc.ok"];
    for (i, name) in names.into_iter().enumerate() {
        let call_id = i as u64 + 1;
        let call = Call {
            call_id,
            procedure: Bytes::from_static(name),
            timeout_ms: 10_000,
            headers: Headers::new(),
            payload: Bytes::from_static(b"x"),
            flags: 0,
        };
        raw.send_frame(&Frame::Call(call)).await;
        let Some(Frame::Result(r)) = raw.next_frame().await else { panic!("expected RESULT for call {call_id}") };
        assert_eq!(r.call_id, call_id);
        let want = if name == b"svc.ok" { ErrorCode::NoError } else { ErrorCode::InvalidProcedure };
        assert_eq!(r.code, want, "{:?}: {:?}", String::from_utf8_lossy(name), String::from_utf8_lossy(&r.payload));
    }
    node.stop().await;
}

#[tokio::test]
async fn rpc_frames_need_protocol_version_2() {
    let node = TestNode::start().await;
    let mut raw = RawClient::connect(&node).await;
    let hello = Hello { version: 1, realm: "default".into(), token: Bytes::new(), name: "v1".into() };
    raw.send_frame(&Frame::Hello(hello)).await;
    assert!(matches!(raw.next_frame().await, Some(Frame::Welcome(w)) if w.version == 1));
    raw.send_frame(&Frame::Reg(Register { rid: 1, procedure: Bytes::from_static(b"a"), tool: Bytes::new() })).await;
    assert_eq!(raw.close_code().await, Some(ErrorCode::ProtocolError.to_u64()));
    node.stop().await;
}

#[tokio::test]
async fn a_queue_group_delivers_each_message_to_one_member() {
    let node = TestNode::start().await;
    let mut members = Vec::new();
    for _ in 0..3 {
        let c = node.client().await;
        let s = c.subscribe_group("jobs.>", "workers").await.unwrap();
        members.push((c, s));
    }
    let plain_client = node.client().await;
    let mut plain = plain_client.subscribe("jobs.>").await.unwrap();
    let publisher = node.client().await;
    const N: u32 = 300;
    for i in 0..N {
        publisher.publish("jobs.new", i.to_string()).await.unwrap();
    }
    publisher.flush().await.unwrap();
    for _ in 0..N {
        tokio::time::timeout(WAIT, plain.next()).await.unwrap().unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let mut per_member = Vec::new();
    for (_, sub) in &mut members {
        let mut n = 0;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
            assert!(seen.insert(m.payload.clone()), "message delivered to two members");
            n += 1;
        }
        per_member.push(n);
    }
    assert_eq!(seen.len(), N as usize, "every message reached one member: {per_member:?}");
    assert!(per_member.iter().all(|n| *n > 0), "{per_member:?}");
    node.stop().await;
}

/// Starts a node again at `addr` and waits until `client` has reconnected to it and the
/// node has seen what it restored.
async fn restart(addr: std::net::SocketAddr, dir: std::sync::Arc<tempfile::TempDir>, client: &Client) -> TestNode {
    let node = TestNode::start_at(addr, dir, Limits::default()).await;
    let mut state = client.state();
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == fovea_client::ConnectionState::Connected))
        .await
        .unwrap()
        .unwrap();
    client.flush().await.unwrap();
    node
}

/// A node with a data dir that outlives it (so `restart` brings back the same identity) and
/// a client that reconnects within 100 ms.
async fn node_and_quick_provider() -> (std::sync::Arc<tempfile::TempDir>, TestNode, Client) {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let node = TestNode::start_at("127.0.0.1:0".parse().unwrap(), dir.clone(), Limits::default()).await;
    let provider =
        Client::connect(&node.url(), node.options().max_reconnect_delay(Duration::from_millis(100))).await.unwrap();
    (dir, node, provider)
}

#[tokio::test]
async fn registrations_come_back_after_a_reconnect() {
    let (dir, node, provider) = node_and_quick_provider().await;
    let addr = node.addr;
    echo(provider.register("svc.back").await.unwrap(), "p");
    node.stop().await;
    let node = restart(addr, dir, &provider).await;
    let caller = node.client().await;
    assert_eq!(&caller.call("svc.back", "hi", T).await.unwrap().payload[..], b"hi");
    node.stop().await;
}

/// The node numbers requests per connection, so after a reconnect an old request's id can
/// name a new call: the old request's answer must not reach it.
#[tokio::test]
async fn an_answer_from_before_a_reconnect_does_not_reach_a_new_call() {
    let (dir, node, provider) = node_and_quick_provider().await;
    let addr = node.addr;
    let mut reg = provider.register("svc.held").await.unwrap();
    let (tx, mut held) = tokio::sync::mpsc::channel::<Request>(4);
    tokio::spawn(async move {
        while let Some(req) = reg.next().await {
            let _ = tx.send(req).await;
        }
    });
    // A call on the first connection, held unanswered by the provider.
    let caller = node.client().await;
    let first = tokio::spawn(async move { caller.call("svc.held", "first", T).await });
    let old = tokio::time::timeout(WAIT, held.recv()).await.unwrap().unwrap();
    assert_eq!(&old.payload[..], b"first");
    node.stop().await;
    assert!(first.await.unwrap().is_err());

    // The node comes back; the provider reconnects and gets a new call (the same request
    // id on its new connection).
    let node = restart(addr, dir, &provider).await;
    let caller = node.client().await;
    let second = tokio::spawn(async move { caller.call("svc.held", "second", T).await });
    let new = tokio::time::timeout(WAIT, held.recv()).await.unwrap().unwrap();
    assert_eq!(&new.payload[..], b"second");

    // The old request is answered late: that answer is dropped, not given to the new call.
    old.respond("stale");
    provider.flush().await.unwrap();
    new.respond("fresh");
    assert_eq!(&second.await.unwrap().unwrap().payload[..], b"fresh");
    node.stop().await;
}
