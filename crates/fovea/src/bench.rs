//! `fovea bench`: throughput figures, printed last as key=value pairs in the shape that
//! `../shared/bench/nats.sh` prints, so the two can be compared from one run.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use fovea_client::{Client, ConnectOptions, Trust};

use crate::cli::{BenchArgs, BenchMode};

/// A subscriber that has seen nothing for this long after the publisher finished is done.
const QUIET: Duration = Duration::from_secs(3);

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (url, trust, _node) = match &args.url {
        Some(url) => (url.clone(), crate::client_cmds::trust(args.ca.as_deref(), args.insecure), None),
        None => {
            let node = ChildNode::start(args.node_config.as_deref())?;
            (node.url.clone(), Trust::CaFiles(vec![node.cert.clone()]), Some(node))
        }
    };
    let mut opts = ConnectOptions::new().trust(trust).realm(&args.realm);
    if let Some(t) = &args.token {
        opts = opts.token(t.clone().into_bytes());
    }
    let node_pid = _node.as_ref().map(|n| n.child.id());
    match args.mode {
        BenchMode::Pubsub => pubsub(&url, opts, args.msgs, args.size).await,
        BenchMode::Rpc => rpc(&url, opts, args.callers, args.calls, args.size).await,
        BenchMode::SlowConsumer => slow_consumer(&url, opts, args.msgs, args.size, node_pid).await,
        BenchMode::Soak => soak(&url, opts, args.size, args.duration, args.sample, node_pid).await,
    }
}

async fn pubsub(url: &str, opts: ConnectOptions, msgs: u64, size: usize) -> anyhow::Result<()> {
    let run = fast_run(url, &opts, "bench.x", msgs, size).await?;
    let (pub_rate, delivered_rate, got, elapsed) = (run.pub_rate, run.rate, run.got, run.elapsed);
    let dropped = msgs - got;
    println!("pubsub: {msgs} messages of {size} bytes, 1 publisher -> 1 subscriber");
    println!(
        "  published at {:.0} msgs/s, delivered {got} at {:.0} msgs/s ({:.1} MB/s), dropped {dropped}",
        pub_rate,
        delivered_rate,
        delivered_rate * size as f64 / 1e6
    );
    println!(
        "system=fovea mode=pubsub size={size} subs=1 published={msgs} delivered={got} dropped={dropped} \
         pub_rate={pub_rate:.0} delivered_rate={delivered_rate:.0} elapsed_s={elapsed:.3}"
    );
    if dropped > 0 {
        bail!("{dropped} messages were not delivered");
    }
    Ok(())
}

async fn rpc(url: &str, opts: ConnectOptions, callers: usize, calls: u64, size: usize) -> anyhow::Result<()> {
    anyhow::ensure!(callers > 0, "--callers must be at least 1");
    let provider = Client::connect(url, opts.clone().name("bench-provider")).await?;
    let mut reg = provider.register("bench.rpc").await?;
    tokio::spawn(async move {
        while let Some(req) = reg.next().await {
            let payload = req.payload.clone();
            req.respond(payload);
        }
    });
    let caller = Client::connect(url, opts.name("bench-caller")).await?;
    let payload = Bytes::from(vec![b'x'; size]);
    let per = calls / callers as u64;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (c, p) = (caller.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per as usize);
            for _ in 0..per {
                let t = Instant::now();
                c.call("bench.rpc", p.clone(), Duration::from_secs(10)).await?;
                lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            Ok::<_, fovea_client::ClientError>(lat)
        }));
    }
    let mut lat = Vec::with_capacity(calls as usize);
    for t in tasks {
        lat.extend(t.await.context("caller task failed")??);
    }
    let elapsed = t0.elapsed().as_secs_f64().max(1e-9);
    lat.sort_unstable();
    let q = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    let rate = lat.len() as f64 / elapsed;
    println!("rpc: {} calls of {size} bytes from {callers} concurrent callers to 1 provider", lat.len());
    println!("  {rate:.0} calls/s; latency p50 {} µs, p99 {} µs, p99.9 {} µs", q(0.5), q(0.99), q(0.999));
    println!(
        "system=fovea mode=rpc size={size} callers={callers} calls={} rate={rate:.0} p50_us={} p99_us={} p999_us={}",
        lat.len(),
        q(0.5),
        q(0.99),
        q(0.999)
    );
    caller.close().await;
    provider.close().await;
    Ok(())
}

/// What one publisher → one subscriber run measured.
struct Run {
    /// Messages published per second (until the publisher's flush returned).
    pub_rate: f64,
    /// Messages delivered per second, from the first publish to the last receipt.
    rate: f64,
    /// Messages delivered.
    got: u64,
    /// Seconds from the first publish to the last receipt.
    elapsed: f64,
}

/// One publisher and one subscriber that keeps up, on `topic`.
async fn fast_run(url: &str, opts: &ConnectOptions, topic: &str, msgs: u64, size: usize) -> anyhow::Result<Run> {
    let sub_client = Client::connect(url, opts.clone().name("bench-fast")).await?;
    let publisher = Client::connect(url, opts.clone().name("bench-pub")).await?;
    let mut sub = sub_client.subscribe(topic).await?;
    let t0 = Instant::now();
    let receiver = tokio::spawn(async move {
        let (mut got, mut last) = (0u64, Instant::now());
        while got < msgs {
            match tokio::time::timeout(QUIET, sub.next()).await {
                Ok(Some(_)) => {
                    got += 1;
                    last = Instant::now();
                }
                _ => break,
            }
        }
        (got, last)
    });
    let payload = Bytes::from(vec![b'x'; size]);
    for _ in 0..msgs {
        publisher.publish(topic, payload.clone()).await?;
    }
    publisher.flush().await.context("flushing the publisher")?;
    let pub_rate = msgs as f64 / t0.elapsed().as_secs_f64().max(1e-9);
    let (got, last) = receiver.await.context("receiver task failed")?;
    let elapsed = last.saturating_duration_since(t0).as_secs_f64().max(1e-9);
    publisher.close().await;
    sub_client.close().await;
    Ok(Run { pub_rate, rate: got as f64 / elapsed, got, elapsed })
}

/// The node's current resident memory, from /proc (Linux), in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Mixed load for `duration`: a publisher to two subscribers (one in a queue group pair)
/// and a caller to a provider, in bursts with pauses, so the node keeps cycling its queues
/// and tables. Prints the node's RSS every `sample`; flat means nothing accumulates.
async fn soak(
    url: &str,
    opts: ConnectOptions,
    size: usize,
    duration: Duration,
    sample: Duration,
    node: Option<u32>,
) -> anyhow::Result<()> {
    let c = |name: &str| Client::connect(url, opts.clone().name(name));
    let (publisher, sub_a, group_1, group_2, provider, caller) = (
        c("soak-pub").await?,
        c("soak-sub").await?,
        c("soak-g1").await?,
        c("soak-g2").await?,
        c("soak-provider").await?,
        c("soak-caller").await?,
    );
    let mut subs = vec![
        sub_a.subscribe("soak.>").await?,
        group_1.subscribe_group("soak.>", "g").await?,
        group_2.subscribe_group("soak.>", "g").await?,
    ];
    let mut reg = provider.register("soak.echo").await?;
    tokio::spawn(async move {
        while let Some(r) = reg.next().await {
            let p = r.payload.clone();
            r.respond(p);
        }
    });
    let drains: Vec<_> =
        subs.drain(..).map(|mut s| tokio::spawn(async move { while s.next().await.is_some() {} })).collect();
    let payload = Bytes::from(vec![b's'; size]);
    let t0 = Instant::now();
    let mut next_sample = Duration::ZERO;
    let (mut published, mut calls, mut samples) = (0u64, 0u64, Vec::new());
    println!("soak: {duration:?} of mixed pub/sub and RPC; node RSS every {sample:?}");
    while t0.elapsed() < duration {
        if t0.elapsed() >= next_sample {
            let kib = node.and_then(rss_kib);
            println!(
                "  {:>6.0} s  rss {}  published {published}  calls {calls}",
                t0.elapsed().as_secs_f64(),
                kib.map_or("unknown".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
            );
            samples.extend(kib);
            next_sample += sample;
        }
        for i in 0..10_000u64 {
            publisher.publish(&format!("soak.t{}", i % 64), payload.clone()).await?;
        }
        published += 10_000;
        for _ in 0..200 {
            caller.call("soak.echo", payload.clone(), Duration::from_secs(5)).await?;
        }
        calls += 200;
        publisher.flush().await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (first, last, max) = (samples.first().copied(), samples.last().copied(), samples.iter().max().copied());
    println!(
        "system=fovea mode=soak size={size} duration_s={:.0} published={published} calls={calls} rss_first_kib={} rss_last_kib={} rss_max_kib={}",
        duration.as_secs_f64(),
        first.map_or("unknown".into(), |k| k.to_string()),
        last.map_or("unknown".into(), |k| k.to_string()),
        max.map_or("unknown".into(), |k| k.to_string()),
    );
    for d in drains {
        d.abort();
    }
    Ok(())
}

/// The node's peak resident memory, from /proc (Linux), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn slow_consumer(
    url: &str,
    opts: ConnectOptions,
    msgs: u64,
    size: usize,
    node: Option<u32>,
) -> anyhow::Result<()> {
    // Baseline: the fast subscriber alone.
    let base = fast_run(url, &opts, "bench.base", msgs, size).await?;
    let (base_pub, base_rate, base_got) = (base.pub_rate, base.rate, base.got);
    // Same run with a stalled subscriber on the same topic: it never reads.
    let stalled_client = Client::connect(url, opts.clone().name("bench-stalled").subscription_capacity(1)).await?;
    let mut stalled = stalled_client.subscribe("bench.slow").await?;
    let run = fast_run(url, &opts, "bench.slow", msgs, size).await?;
    let (pub_rate, rate, got) = (run.pub_rate, run.rate, run.got);
    // Wake the stalled one: it gets what was queued and learns how much was dropped.
    let mut stalled_got = 0u64;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), stalled.next()).await {
        stalled_got += 1;
    }
    let dropped = stalled.dropped();
    let disconnected = *stalled_client.state().borrow() != fovea_client::ConnectionState::Connected;
    let peak = node.and_then(peak_rss_kib);
    let ratio = rate / base_rate.max(1e-9);
    println!("slow-consumer: {msgs} messages of {size} bytes, a fast and a stalled subscriber");
    println!(
        "  fast subscriber alone:        {base_rate:.0} msgs/s delivered ({base_got}), publisher {base_pub:.0} msgs/s"
    );
    println!("  with a stalled subscriber:    {rate:.0} msgs/s delivered ({got}), publisher {pub_rate:.0} msgs/s ({:.0}% of alone)", ratio * 100.0);
    println!(
        "  stalled subscriber: received {stalled_got}, told of {dropped} dropped{}",
        if disconnected { ", then disconnected as a slow consumer" } else { "" }
    );
    if let Some(kib) = peak {
        println!("  node peak RSS: {:.1} MiB", kib as f64 / 1024.0);
    }
    println!(
        "system=fovea mode=slow-consumer size={size} published={msgs} baseline_rate={base_rate:.0} fast_rate={rate:.0} \
         ratio={ratio:.3} fast_delivered={got} stalled_received={stalled_got} stalled_dropped={dropped} \
         node_peak_rss_kib={}",
        peak.map_or("unknown".to_owned(), |k| k.to_string())
    );
    stalled_client.close().await;
    anyhow::ensure!(got == msgs && base_got == msgs, "the fast subscriber lost messages");
    Ok(())
}

/// A node started as a child process, as users run it, on a free port and a fresh data dir.
struct ChildNode {
    child: Child,
    url: String,
    cert: PathBuf,
    _dir: tempfile::TempDir,
}

impl ChildNode {
    fn start(config: Option<&std::path::Path>) -> anyhow::Result<ChildNode> {
        let dir = tempfile::tempdir().context("creating a temporary data dir")?;
        let exe = std::env::current_exe().context("locating the fovea binary")?;
        let mut child = Command::new(exe)
            .args(["node", "--listen", "127.0.0.1:0", "--admin", "off", "--log-level", "error", "--data-dir"])
            .arg(dir.path())
            .args(config.map(|c| vec![std::ffi::OsStr::new("--config"), c.as_os_str()]).unwrap_or_default())
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .context("starting a node")?;
        let stdout = child.stdout.take().context("node stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).context("reading the node's ready line")?;
        let Some(url) = line.split_whitespace().find(|w| w.starts_with("quic://")) else {
            let _ = child.kill();
            bail!("the node did not print its ready line (got {line:?})");
        };
        Ok(ChildNode { url: url.to_owned(), cert: dir.path().join("node.crt"), child, _dir: dir })
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
