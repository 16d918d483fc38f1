//! The SDK's opt-in idle spinning, in a process of its own: the setting is process-wide.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{TestNode, WAIT};
use fovea_client::spin;

#[test]
fn clients_opened_while_spinning_is_on_are_watched_and_work_as_usual() {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    // Hooks in, window zero: off until set below.
    spin::install(&mut builder, Duration::ZERO);
    let runtime = builder.build().unwrap();
    runtime.block_on(async {
        let node = TestNode::start().await;
        let quiet = node.client().await;
        let before = spin::watched();
        assert!(!spin::enabled());

        spin::set_max(Duration::from_micros(200));
        assert!(spin::enabled());
        let provider = node.client().await;
        let caller = node.client().await;
        assert_eq!(spin::watched(), before + 2, "each new client's socket is watched");

        let mut reg = provider.register("spin.echo").await.unwrap();
        tokio::spawn(async move {
            while let Some(req) = reg.next().await {
                let payload = req.payload.clone();
                req.respond(payload);
            }
        });
        for i in 0..200u32 {
            let payload = Bytes::from(i.to_be_bytes().to_vec());
            let answer = caller.call("spin.echo", payload.clone(), WAIT).await.unwrap();
            assert_eq!(answer.payload, payload);
        }
        let mut sub = quiet.subscribe("spin.>").await.unwrap();
        for i in 0..1000u32 {
            caller.publish("spin.topic", Bytes::from(i.to_be_bytes().to_vec())).await.unwrap();
        }
        for i in 0..1000u32 {
            let m = tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap();
            assert_eq!(m.payload, Bytes::from(i.to_be_bytes().to_vec()));
        }

        // A closed client gives its place back.
        caller.close().await;
        drop(caller);
        common::eventually("the closed client's watch ends", || spin::watched() == before + 1).await;
        spin::set_max(Duration::ZERO);
        node.stop().await;
    });
}
