//! `fovea bench stream`: streamed calls and messages through one node and across a mesh
//! link. One large transfer each way (caller → provider as a streamed request, provider →
//! caller as a streamed answer) and one published message (publisher → subscriber), with
//! the node's memory sampled while each runs, then a stream of small chunks (a model's
//! tokens): chunks per second and the time to the first chunk.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use fovea_client::{Client, Headers};

use super::{rss_kib, Report};
use crate::cli::BenchArgs;

/// How long any one streamed call of the benchmark may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// The report's keys: through one node, then across the link.
const KEYS: [[&str; 6]; 2] = [
    ["request_gbit", "answer_gbit", "publish_gbit", "rss_growth_mb", "chunk_rate", "first_chunk_us"],
    [
        "link_request_gbit",
        "link_answer_gbit",
        "link_publish_gbit",
        "link_rss_growth_mb",
        "link_chunk_rate",
        "link_first_chunk_us",
    ],
];

/// Calls whose first chunk is timed.
const FIRST_CHUNK_CALLS: usize = 50;

pub(super) async fn stream(args: &BenchArgs) -> anyhow::Result<Report> {
    let (a, b, opts) = super::two_nodes()?;
    let bytes = args.bytes;
    println!(
        "stream: {} MB each way, then {} chunks of {} bytes; through node A, then from A to a provider on B",
        bytes / 1_000_000,
        args.msgs,
        args.size
    );
    let mut r = Report::new("stream");
    r.put("bytes", bytes).put("chunks", args.msgs).put("chunk_size", args.size);
    // The peer figure: quinn alone, one stream between two endpoints of this process.
    let quinn = quinn_bulk(bytes, &a.cert).await?;
    let quinn_gbit = bytes as f64 * 8.0 / quinn.as_secs_f64() / 1e9;
    println!("  quinn alone (one stream, no node): {quinn_gbit:.2} Gbit/s");
    r.put("quinn_gbit", format!("{quinn_gbit:.2}"));
    for (keys, provider_url) in KEYS.iter().zip([&a.url, &b.url]) {
        let provider = Client::connect(provider_url, opts.clone()).await?;
        let _served = serve(&provider, args.size).await?;
        let caller = Client::connect(&a.url, opts.clone()).await?;
        // A provider on the other node is found once its registration has spread.
        let deadline = Instant::now() + Duration::from_secs(30);
        while caller.call("bench.sink", "", Duration::from_secs(5)).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the provider on {provider_url} was not found in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pid = a.child.id();
        let (up, up_rss) = sampled(pid, upload(&caller, bytes)).await?;
        let (down, down_rss) = sampled(pid, download(&caller, bytes)).await?;
        let (publish, pub_rss) = sampled(pid, publish(&caller, &provider, bytes)).await?;
        let (rate, first) = chunks(&caller, args.msgs).await?;
        let where_ = if provider_url == &a.url { "through one node" } else { "across the link" };
        let gbit = |d: Duration| bytes as f64 * 8.0 / d.as_secs_f64() / 1e9;
        let grew = up_rss.max(down_rss).max(pub_rss) / 1024;
        println!(
            "  {where_}: request {:.2} Gbit/s, answer {:.2} Gbit/s, published message {:.2} Gbit/s, \
             node A grew {grew} MB at most; {rate:.0} chunks/s, first chunk after {first:.0} µs \
             (median of {FIRST_CHUNK_CALLS})",
            gbit(up),
            gbit(down),
            gbit(publish),
        );
        r.put(keys[0], format!("{:.2}", gbit(up)));
        r.put(keys[1], format!("{:.2}", gbit(down)));
        r.put(keys[2], format!("{:.2}", gbit(publish)));
        r.put(keys[3], grew);
        r.put(keys[4], format!("{rate:.0}"));
        r.put(keys[5], format!("{first:.0}"));
        caller.close().await;
        provider.close().await;
    }
    Ok(r)
}

/// quinn's own bulk rate here: `bytes` on one stream from one endpoint to another on
/// loopback, with the node's certificate (`cert`, its key beside it) and quinn's defaults.
async fn quinn_bulk(bytes: u64, cert: &std::path::Path) -> anyhow::Result<Duration> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>().context("reading node.crt")?;
    let key = PrivateKeyDer::from_pem_file(cert.with_file_name("node.key")).context("reading node.key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key)?;
    server_tls.alpn_protocols = vec![b"bulk".to_vec()];
    let server_quic = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)?;
    let server =
        quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(server_quic)), "127.0.0.1:0".parse()?)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in chain {
        roots.add(c)?;
    }
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![b"bulk".to_vec()];
    let client_quic = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_quic)));
    let addr = server.local_addr()?;
    let receiver = tokio::spawn(async move {
        let conn = server.accept().await.context("no connection")?.await?;
        let mut recv = conn.accept_uni().await?;
        let mut got = 0u64;
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
            got += chunk.bytes.len() as u64;
        }
        conn.close(0u32.into(), b"");
        anyhow::Ok(got)
    });
    let conn = client.connect(addr, "localhost")?.await?;
    let block = Bytes::from(vec![5u8; fovea_client::MAX_CHUNK]);
    let t0 = Instant::now();
    let mut send = conn.open_uni().await?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        send.write_chunk(block.slice(..n)).await?;
        left -= n as u64;
    }
    send.finish()?;
    let got = receiver.await??;
    let took = t0.elapsed();
    anyhow::ensure!(got == bytes, "quinn delivered {got} bytes of {bytes}");
    client.wait_idle().await;
    Ok(took)
}

/// Serves `bench.sink` (reads a streamed request, answers its size), `bench.source`
/// (answers the number of bytes its payload names) and `bench.tokens` (answers the number
/// of chunks of `size` bytes its payload names).
async fn serve(provider: &Client, size: usize) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut sink = provider.register("bench.sink").await?;
    let mut source = provider.register("bench.source").await?;
    let mut tokens = provider.register("bench.tokens").await?;
    let block = Bytes::from(vec![7u8; fovea_client::MAX_CHUNK]);
    let token = Bytes::from(vec![b't'; size]);
    Ok(vec![
        tokio::spawn(async move {
            while let Some(mut req) = sink.next().await {
                tokio::spawn(async move {
                    let mut n = req.payload.len();
                    while let Some(Ok(chunk)) = req.next_chunk().await {
                        n += chunk.len();
                    }
                    req.respond(n.to_string());
                });
            }
        }),
        tokio::spawn(async move {
            while let Some(mut req) = source.next().await {
                let block = block.clone();
                tokio::spawn(async move {
                    let mut left: u64 = String::from_utf8_lossy(&req.payload).parse().unwrap_or(0);
                    while left > 0 {
                        let n = left.min(block.len() as u64) as usize;
                        if req.send(block.slice(..n)).await.is_err() {
                            return;
                        }
                        left -= n as u64;
                    }
                    req.respond("");
                });
            }
        }),
        tokio::spawn(async move {
            while let Some(mut req) = tokens.next().await {
                let token = token.clone();
                tokio::spawn(async move {
                    let n: u64 = String::from_utf8_lossy(&req.payload).parse().unwrap_or(0);
                    for _ in 0..n {
                        if req.send(token.clone()).await.is_err() {
                            return;
                        }
                    }
                    req.respond("");
                });
            }
        }),
    ])
}

/// Runs `work` while sampling the node's memory: its result, and how far the node's RSS
/// rose above where it started (KiB).
async fn sampled<T>(pid: u32, work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<(T, u64)> {
    let start = rss_kib(pid).unwrap_or(0);
    let peak = Arc::new(AtomicU64::new(start));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Some(now) = rss_kib(pid) {
                    peak.fetch_max(now, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let out = work.await;
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    Ok((out?, peak.load(Ordering::Relaxed).saturating_sub(start)))
}

/// One streamed request of `bytes` to `bench.sink`; its time.
async fn upload(caller: &Client, bytes: u64) -> anyhow::Result<Duration> {
    let block = Bytes::from(vec![3u8; fovea_client::MAX_CHUNK]);
    let t0 = Instant::now();
    let mut call = caller.open_call("bench.sink", &Headers::new(), CALL_TIMEOUT)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        call.send(block.slice(..n)).await?;
        left -= n as u64;
    }
    call.finish()?;
    let answer = call.collect(64).await?;
    let took = t0.elapsed();
    let got: u64 = String::from_utf8_lossy(&answer.payload).parse().unwrap_or(0);
    anyhow::ensure!(got == bytes, "the provider received {got} bytes of {bytes}");
    Ok(took)
}

/// One streamed answer of `bytes` from `bench.source`; its time.
async fn download(caller: &Client, bytes: u64) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut call = caller.call_stream("bench.source", bytes.to_string(), CALL_TIMEOUT).await?;
    let mut got = 0u64;
    while let Some(chunk) = call.next().await {
        got += chunk?.len() as u64;
    }
    let took = t0.elapsed();
    anyhow::ensure!(got == bytes, "received {got} bytes of {bytes}");
    Ok(took)
}

/// One message of `bytes` published by `publisher` and read chunk by chunk by a
/// subscriber on `subscriber`'s node; the time from its head to the subscriber's last byte.
async fn publish(publisher: &Client, subscriber: &Client, bytes: u64) -> anyhow::Result<Duration> {
    let mut sub = subscriber.subscribe_chunked("bench.bulk.>").await?;
    // A subscriber on the other node is known here once a small message reaches it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        publisher.publish("bench.bulk.ping", "").await?;
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            m.body.read_all(0).await?;
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the subscriber was not found in 30 s");
    }
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {}
    let reader = tokio::spawn(async move {
        let m = sub.next().await.context("the subscription ended")?;
        let mut body = m.body;
        let mut got = 0u64;
        while let Some(chunk) = body.next_chunk().await {
            got += chunk?.len() as u64;
        }
        anyhow::Ok(got)
    });
    let block = Bytes::from(vec![5u8; fovea_client::MAX_CHUNK]);
    let t0 = Instant::now();
    let mut stream = publisher.publish_stream("bench.bulk.data", &Headers::new(), Bytes::new()).await?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        stream.send(block.slice(..n)).await?;
        left -= n as u64;
    }
    stream.finish().await?;
    let got = reader.await??;
    let took = t0.elapsed();
    anyhow::ensure!(got == bytes, "the subscriber received {got} bytes of {bytes}");
    Ok(took)
}

/// `n` small chunks in one answer (their rate), then the median time from a call to its
/// first chunk (µs).
async fn chunks(caller: &Client, n: u64) -> anyhow::Result<(f64, f64)> {
    let t0 = Instant::now();
    let mut call = caller.call_stream("bench.tokens", n.to_string(), CALL_TIMEOUT).await?;
    let mut got = 0u64;
    while let Some(chunk) = call.next().await {
        chunk?;
        got += 1;
    }
    let rate = got as f64 / t0.elapsed().as_secs_f64();
    anyhow::ensure!(got == n, "received {got} chunks of {n}");
    let mut firsts = Vec::with_capacity(FIRST_CHUNK_CALLS);
    for _ in 0..FIRST_CHUNK_CALLS {
        let t0 = Instant::now();
        let mut call = caller.call_stream("bench.tokens", "1", CALL_TIMEOUT).await?;
        call.next().await.context("no chunk")??;
        firsts.push(t0.elapsed().as_secs_f64() * 1e6);
        while call.next().await.is_some() {}
    }
    firsts.sort_by(f64::total_cmp);
    Ok((rate, firsts[firsts.len() / 2]))
}
