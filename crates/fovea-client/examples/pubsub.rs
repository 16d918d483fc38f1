//! Publish and subscribe through a running node.
//!
//! ```text
//! fovea node                                      # in one shell
//! cargo run -p fovea-client --example pubsub      # in another
//! ```
//!
//! Set `FOVEA_URL` and `FOVEA_CA` to use a node elsewhere.

use std::time::Duration;

use fovea_client::{Client, ConnectOptions, Headers};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("FOVEA_URL").unwrap_or_else(|_| fovea_client::DEFAULT_URL.to_owned());
    let mut opts = ConnectOptions::new().name("pubsub-example");
    if let Ok(ca) = std::env::var("FOVEA_CA") {
        opts = opts.ca_file(ca);
    }
    let client = Client::connect(&url, opts).await?;
    println!("connected to {} ({:?})", client.url(), client.server_info().map(|i| i.node));

    // Subscribe first: the node confirms before `subscribe` returns, so nothing published
    // afterwards is missed.
    let mut temps = client.subscribe("sensors.*.temp").await?;

    let headers = Headers::from_pairs([("unit", "C")])?;
    for (room, t) in [("kitchen", "21.5"), ("hall", "19.0"), ("attic", "25.1")] {
        client.publish_with_headers(&format!("sensors.{room}.temp"), &headers, t).await?;
    }
    client.publish("sensors.kitchen.humidity", "40").await?; // not matched by the pattern

    for _ in 0..3 {
        let msg = tokio::time::timeout(Duration::from_secs(5), temps.next()).await?.ok_or("subscription ended")?;
        println!("{} = {} {}", msg.topic, String::from_utf8_lossy(&msg.payload), msg.headers.get("unit").unwrap_or(""));
    }
    client.close().await;
    Ok(())
}
