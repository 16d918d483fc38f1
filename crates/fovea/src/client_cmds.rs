//! `fovea pub` and `fovea sub`.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use fovea_client::{Client, ConnectOptions, Headers, Trust};
use tokio::io::AsyncBufReadExt;

use crate::cli::{ClientArgs, PubArgs, SubArgs};

/// What `--ca` and `--insecure` ask for.
pub fn trust(ca: Option<&std::path::Path>, insecure: bool) -> Trust {
    match (ca, insecure) {
        (_, true) => Trust::Insecure,
        (Some(ca), false) => Trust::CaFiles(vec![ca.to_owned()]),
        (None, false) => Trust::Auto,
    }
}

/// Connects as the flags say.
pub async fn connect(args: &ClientArgs, name: &str) -> anyhow::Result<Client> {
    if args.insecure {
        eprintln!("warning: --insecure: the node's certificate is not verified; do not use this outside tests");
    }
    if !(args.connect_timeout.is_finite() && args.connect_timeout > 0.0) {
        bail!("--connect-timeout must be a positive number of seconds, got {}", args.connect_timeout);
    }
    let trust = trust(args.ca.as_deref(), args.insecure);
    let mut opts = ConnectOptions::new()
        .realm(&args.realm)
        .name(name)
        .trust(trust)
        .connect_timeout(Duration::from_secs_f64(args.connect_timeout));
    if let Some(t) = &args.token {
        opts = opts.token(t.clone().into_bytes());
    }
    if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
        opts = opts.client_cert(cert, key);
    }
    Ok(Client::connect(&args.url, opts).await?)
}

pub async fn publish(mut args: PubArgs) -> anyhow::Result<()> {
    let headers = parse_headers(&args.headers)?;
    // Validate before connecting, so a typo is reported even with no node running.
    fovea_core::Topic::new(&args.topic).map_err(|e| anyhow::anyhow!("invalid topic {:?}: it {e}", args.topic))?;
    // A file larger than a frame is read as it is sent, never whole.
    let file = args.file.take().filter(|p| p.as_os_str() != "-");
    let size = match &file {
        Some(p) => Some(std::fs::metadata(p).with_context(|| format!("cannot read --file {}", p.display()))?.len()),
        None => None,
    };
    let client = connect(&args.client, "fovea-pub").await?;
    let mut events = client.events();
    let whole = |size: u64| usize::try_from(size).is_ok_and(|s| s <= client.server_info().map_or(0, |i| i.max_payload));
    match (file, size) {
        (Some(path), Some(size)) if !whole(size) => publish_file(&client, &args.topic, &headers, &path).await?,
        (Some(path), _) => {
            let data = std::fs::read(&path).with_context(|| format!("cannot read --file {}", path.display()))?;
            client.publish_with_headers(&args.topic, &headers, data).await?;
        }
        _ => publish_rest(&client, &args, &headers).await?,
    }
    client.flush().await.context("the node did not confirm the publish")?;
    client.close().await;
    // The node answers a refused publish (permission, topic, size) before the flush's
    // PONG, so every refusal is in the event queue by now.
    while let Ok(event) = events.try_recv() {
        if let fovea_client::Event::ServerError { code, message } = event {
            bail!("the node refused the publish: {code}: {message}");
        }
    }
    Ok(())
}

/// Publishes a file as one streamed message, read as it is sent.
async fn publish_file(client: &Client, topic: &str, headers: &Headers, path: &std::path::Path) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut file =
        tokio::fs::File::open(path).await.with_context(|| format!("cannot read --file {}", path.display()))?;
    let mut stream = client.publish_stream(topic, headers, bytes::Bytes::new()).await?;
    let mut buf = bytes::BytesMut::new();
    loop {
        buf.reserve(1 << 20);
        let n = file.read_buf(&mut buf).await.with_context(|| format!("reading --file {}", path.display()))?;
        if n == 0 {
            break;
        }
        stream.send(buf.split().freeze()).await?;
    }
    stream.finish().await?;
    Ok(())
}

/// `fovea pub` without a file: the payload argument, all of stdin (`--file -`), or each
/// line of stdin.
async fn publish_rest(client: &Client, args: &PubArgs, headers: &Headers) -> anyhow::Result<()> {
    match crate::rpc_cmds::read_payload(args.file.as_deref(), args.payload.clone(), false)? {
        Some(p) => client.publish_with_headers(&args.topic, headers, p).await?,
        None => {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Some(line) = lines.next_line().await.context("reading stdin")? {
                client.publish_with_headers(&args.topic, headers, line).await?;
            }
        }
    }
    Ok(())
}

/// Turns `-H NAME=VALUE` flags into headers.
pub fn parse_headers(flags: &[String]) -> anyhow::Result<Headers> {
    let pairs: Vec<(&str, &str)> = flags
        .iter()
        .map(|h| h.split_once('=').with_context(|| format!("header {h:?} has no `=`: write it as NAME=VALUE")))
        .collect::<Result<_, _>>()?;
    Ok(Headers::from_pairs(pairs)?)
}

pub async fn subscribe(args: SubArgs) -> anyhow::Result<()> {
    fovea_core::Pattern::new(&args.pattern)
        .map_err(|e| anyhow::anyhow!("invalid pattern {:?}: it {e}", args.pattern))?;
    let client = connect(&args.client, "fovea-sub").await?;
    let mut events = client.events();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match events.recv().await {
                Ok(fovea_client::Event::Dropped { pattern, count }) => {
                    eprintln!(
                        "warning: the node dropped {count} messages for {pattern}: this subscriber reads too slowly"
                    );
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            }
        }
    });
    if args.raw {
        return subscribe_raw(&client, &args).await;
    }
    let mut sub = match &args.group {
        Some(group) => client.subscribe_group(&args.pattern, group).await?,
        None => client.subscribe(&args.pattern).await?,
    };
    match &args.group {
        Some(group) => eprintln!("subscribed to {} in queue group {group} on {}", args.pattern, client.url()),
        None => eprintln!("subscribed to {} on {}", args.pattern, client.url()),
    }
    let stdout = std::io::stdout();
    let mut n = 0u64;
    while args.count.is_none_or(|c| n < c) {
        let Some(msg) = sub.next().await else {
            bail!("the subscription ended: the client was closed or the node cancelled it");
        };
        n += 1;
        let mut out = stdout.lock();
        out.write_all(msg.topic.as_bytes())?;
        if args.headers && !msg.headers.is_empty() {
            let hs: Vec<String> = msg.headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
            write!(out, " [{}]", hs.join(" "))?;
        }
        out.write_all(b" ")?;
        out.write_all(String::from_utf8_lossy(&msg.payload).as_bytes())?;
        out.write_all(b"\n")?;
        out.flush()?;
    }
    drop(sub);
    client.close().await;
    Ok(())
}

/// `fovea sub --raw`: exactly the payloads, nothing added, each written as its chunks
/// arrive (a message larger than memory passes through).
async fn subscribe_raw(client: &Client, args: &SubArgs) -> anyhow::Result<()> {
    let group = args.group.as_deref().unwrap_or_default();
    let mut sub = client.subscribe_chunked_group(&args.pattern, group).await?;
    eprintln!("subscribed to {} on {}", args.pattern, client.url());
    let mut n = 0u64;
    while args.count.is_none_or(|c| n < c) {
        let Some(msg) = sub.next().await else {
            bail!("the subscription ended: the client was closed or the node cancelled it");
        };
        n += 1;
        let mut body = msg.body;
        while let Some(chunk) = body.next_chunk().await {
            let chunk = chunk.with_context(|| format!("a message on {} ended before its end", msg.topic))?;
            let mut out = std::io::stdout().lock();
            out.write_all(&chunk)?;
            out.flush()?;
        }
    }
    drop(sub);
    client.close().await;
    Ok(())
}
