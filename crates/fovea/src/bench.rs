//! `fovea bench`: throughput figures, printed last as key=value pairs in the shape that
//! the benchmark harness's `nats.sh` prints, so the two can be compared from one run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use fovea_client::{Client, ConnectOptions, Trust};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{BenchArgs, BenchMode, BenchTransport};

mod stream;

/// A subscriber that has seen nothing for this long after the publisher finished is done.
const QUIET: Duration = Duration::from_secs(3);

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let compared = matches!(args.mode, BenchMode::Pubsub | BenchMode::Fanout | BenchMode::Rpc);
    anyhow::ensure!(
        compared || !args.compare_nats,
        "--compare-nats covers pubsub, fanout and rpc; NATS has no counterpart for this mode"
    );
    let rounds = args.rounds as usize;
    anyhow::ensure!(
        compared || rounds == 1,
        "--rounds covers pubsub, fanout and rpc; run other workloads again by hand"
    );
    if matches!(args.mode, BenchMode::Startup) {
        // Starts nodes of its own, one after another.
        return startup(args.runs)?.finish();
    }
    if matches!(args.mode, BenchMode::Mesh) {
        return mesh(&args).await?.finish();
    }
    if matches!(args.mode, BenchMode::Mcp) {
        return mcp(&args).await?.finish();
    }
    if matches!(args.mode, BenchMode::Stream) {
        return stream::stream(&args).await?.finish();
    }
    let mut extra: Vec<String> = match args.mode {
        // Room for every benchmark connection whatever the node's default.
        BenchMode::Conns => vec!["--max-connections".into(), (args.conns + 16).to_string()],
        _ => Vec::new(),
    };
    match args.transport {
        BenchTransport::Quic => {}
        BenchTransport::Tls => extra.extend(["--tcp".to_owned(), "127.0.0.1:0".to_owned()]),
        BenchTransport::Ws => extra.extend(["--ws".to_owned(), "127.0.0.1:0".to_owned()]),
    }
    if let Some(addr) = args.node_listen {
        if args.node_config.is_none() && !fovea_core::path::is_loopback(addr.ip()) {
            // A node off loopback refuses to run open by default; the benchmark's clients
            // connect without credentials, as they do to a loopback node.
            extra.push("--allow-anonymous".to_owned());
        }
    }
    let (url, trust, node) = match &args.url {
        Some(url) => (url.clone(), crate::client_cmds::trust(args.ca.as_deref(), args.insecure), None),
        None => {
            let listen = args.node_listen.map_or_else(|| ChildNode::LISTEN.to_owned(), |a| a.to_string());
            let node = ChildNode::start_at(&listen, args.node_config.as_deref(), &extra)?;
            // The node's self-signed certificate names localhost, 127.0.0.1 and ::1 only; at
            // another address the benchmark trusts the node it started itself, whatever the
            // name in its certificate.
            let trust = match args.node_listen {
                Some(_) => Trust::Insecure,
                None => Trust::CaFiles(vec![node.cert.clone()]),
            };
            let url = match args.transport {
                BenchTransport::Quic => node.url.clone(),
                t => node.stream_url(t.scheme()).context("the node did not print the transport's URL")?,
            };
            (url, trust, Some(node))
        }
    };
    if args.transport != BenchTransport::Quic {
        println!("clients connect over {url}");
    }
    let mut opts = ConnectOptions::new().trust(trust).realm(&args.realm);
    if let Some(t) = &args.token {
        opts = opts.token(t.clone().into_bytes());
    }
    let node_pid = node.as_ref().map(|n| n.child.id());
    if let Some(spin) = args.client_spin {
        println!("the benchmark's clients spin up to {spin:?} before their workers sleep (--client-spin)");
    }
    let mut done = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        if rounds > 1 {
            println!("round {round} of {rounds}");
        }
        let mut report = match args.mode {
            BenchMode::Pubsub => fanout(&url, opts.clone(), args.msgs, args.size, 1).await?,
            BenchMode::Fanout => fanout(&url, opts.clone(), args.msgs, args.size, args.subs).await?,
            BenchMode::Rpc => rpc(&url, opts.clone(), args.callers, args.calls, args.size).await?,
            BenchMode::Conns => conns(&url, opts.clone(), args.conns, node_pid).await?,
            BenchMode::SlowConsumer => slow_consumer(&url, opts.clone(), args.msgs, args.size, node_pid).await?,
            BenchMode::Soak => {
                let duration = args.duration.unwrap_or(Duration::from_secs(600));
                soak(&url, opts.clone(), args.size, duration, args.sample, node_pid).await?
            }
            BenchMode::Mcp | BenchMode::Stream => unreachable!("handled above"),
            BenchMode::Startup => startup(args.runs)?,
            BenchMode::Mesh => mesh(&args).await?,
        };
        if let Some(spin) = args.client_spin {
            report.put("client_spin_us", spin.as_micros());
        }
        let nats = if args.compare_nats {
            println!("{}", report.line());
            let nats = run_nats(&args)?;
            println!("{}", nats.line);
            println!("{}", compare_line(&args, &report, &nats));
            Some(nats)
        } else {
            if rounds > 1 {
                println!("{}", report.line());
            }
            None
        };
        done.push((report, nats));
    }
    drop(node);
    if rounds == 1 {
        let Some((report, nats)) = done.pop() else { bail!("no round ran") };
        return if nats.is_some() { report.check() } else { report.finish() };
    }
    summarize(&args, &done)
}

/// The figures a workload is judged by: those compared with NATS, and summarized over rounds.
fn key_figures(mode: &BenchMode) -> &'static [&'static str] {
    match mode {
        BenchMode::Rpc => &["rate", "p50_us", "p99_us"],
        _ => &["delivered_rate"],
    }
}

/// The median of `values` (the mean of the middle two for an even count), with the range.
fn median(mut values: Vec<f64>) -> Option<(f64, f64, f64)> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let (first, last) = (*values.first()?, *values.last()?);
    let mid = values.len() / 2;
    let m = if values.len() % 2 == 0 { (values[mid - 1] + values[mid]) / 2.0 } else { values[mid] };
    Some((m, first, last))
}

/// After several rounds: the median of each key figure (and of the ratios to NATS, taken
/// per round, so both systems of a ratio saw the same moment of the machine), with the
/// range, then a last line of key=value pairs. Fails if any round did.
fn summarize(args: &BenchArgs, done: &[(Report, Option<NatsRun>)]) -> anyhow::Result<()> {
    let keys = key_figures(&args.mode);
    let rounds = done.len();
    println!("{rounds} rounds, median (min-max):");
    let mode = done.first().map_or("?", |(r, _)| r.mode);
    let mut line = if args.compare_nats {
        format!("compare mode={} rounds={rounds}", nats_mode(&args.mode))
    } else {
        format!("system=fovea mode={mode} rounds={rounds}")
    };
    for key in keys {
        let fovea = median(done.iter().filter_map(|(r, _)| r.get(key)).collect());
        let nats = median(done.iter().filter_map(|(_, n)| n.as_ref()?.get(key)).collect());
        let ratio =
            median(done.iter().filter_map(|(r, n)| Some(r.get(key)? / n.as_ref()?.get(key)?.max(1e-9))).collect());
        if let Some((m, lo, hi)) = fovea {
            println!("  fovea {key} {m:.0} ({lo:.0}-{hi:.0})");
            let prefix = if args.compare_nats { "fovea_" } else { "" };
            line.push_str(&format!(" {prefix}{key}={m:.0} {prefix}{key}_min={lo:.0} {prefix}{key}_max={hi:.0}"));
        }
        if let Some((m, lo, hi)) = nats {
            println!("  nats  {key} {m:.0} ({lo:.0}-{hi:.0})");
            line.push_str(&format!(" nats_{key}={m:.0}"));
        }
        if let Some((m, lo, hi)) = ratio {
            println!("  ratio {key} {m:.2} ({lo:.2}-{hi:.2})");
            line.push_str(&format!(" {key}_ratio={m:.2} {key}_ratio_min={lo:.2} {key}_ratio_max={hi:.2}"));
        }
    }
    let fovea_dropped: f64 = done.iter().filter_map(|(r, _)| r.get("dropped")).sum();
    if args.compare_nats {
        let nats_dropped: f64 = done.iter().filter_map(|(_, n)| n.as_ref()?.get("dropped")).sum();
        if matches!(args.mode, BenchMode::Pubsub | BenchMode::Fanout) {
            line.push_str(&format!(" nats_dropped={nats_dropped:.0} fovea_dropped={fovea_dropped:.0}"));
        }
    } else if matches!(args.mode, BenchMode::Pubsub | BenchMode::Fanout) {
        line.push_str(&format!(" dropped={fovea_dropped:.0}"));
    }
    println!("{line}");
    match done.iter().find_map(|(r, _)| r.failure.as_ref()) {
        Some(f) => bail!("{f}"),
        None => Ok(()),
    }
}

/// What a workload measured: the key=value pairs of its last line, and whether it failed
/// (lost messages), which makes the command exit non-zero after printing.
struct Report {
    mode: &'static str,
    pairs: Vec<(&'static str, String)>,
    failure: Option<String>,
}

impl Report {
    fn new(mode: &'static str) -> Report {
        Report { mode, pairs: Vec::new(), failure: None }
    }

    fn put(&mut self, key: &'static str, value: impl std::fmt::Display) -> &mut Self {
        self.pairs.push((key, value.to_string()));
        self
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.pairs.iter().find(|(k, _)| *k == key).and_then(|(_, v)| v.parse().ok())
    }

    /// `system=fovea mode=… key=value …`, the shape `nats.sh` prints.
    fn line(&self) -> String {
        let mut line = format!("system=fovea mode={}", self.mode);
        for (k, v) in &self.pairs {
            line.push_str(&format!(" {k}={v}"));
        }
        line
    }

    fn check(&self) -> anyhow::Result<()> {
        match &self.failure {
            Some(f) => bail!("{f}"),
            None => Ok(()),
        }
    }

    /// Prints the key=value line (last) and fails if the workload did.
    fn finish(self) -> anyhow::Result<()> {
        println!("{}", self.line());
        self.check()
    }
}

/// A progress bar that appears only once a run has taken longer than a second (and only on
/// a terminal), fed by a counter the workers bump without touching the bar.
struct Progress {
    count: Arc<AtomicU64>,
    ticker: tokio::task::JoinHandle<()>,
    bar: ProgressBar,
}

impl Progress {
    /// A bar towards `len`, or (`len` 0: a run for a duration) a running count.
    fn start(len: u64, what: &'static str) -> Progress {
        let bar = ProgressBar::with_draw_target((len > 0).then_some(len), ProgressDrawTarget::hidden());
        let template = if len > 0 {
            "{msg} {wide_bar} {pos}/{len} ({per_sec}, eta {eta})"
        } else {
            "{msg} {spinner} {pos} ({per_sec})"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_message(what);
        let count = Arc::new(AtomicU64::new(0));
        let (c, b) = (count.clone(), bar.clone());
        let ticker = tokio::spawn(async move {
            let t0 = Instant::now();
            let mut shown = false;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if !shown && t0.elapsed() >= Duration::from_secs(1) {
                    b.set_draw_target(ProgressDrawTarget::stderr());
                    shown = true;
                }
                b.set_position(c.load(Ordering::Relaxed));
            }
        });
        Progress { count, ticker, bar }
    }

    fn counter(&self) -> Arc<AtomicU64> {
        self.count.clone()
    }

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

/// One publisher → `subs` subscribers, each on its own connection, as `nats.sh` runs it.
async fn fanout(url: &str, opts: ConnectOptions, msgs: u64, size: usize, subs: usize) -> anyhow::Result<Report> {
    anyhow::ensure!(subs > 0, "--subs must be at least 1");
    let run = fast_run(url, url, &opts, "bench.x", msgs, size, subs).await?;
    let expected = msgs * subs as u64;
    let dropped = expected - run.got;
    let mode = if subs == 1 { "pubsub" } else { "fanout" };
    println!("{mode}: {msgs} messages of {size} bytes, 1 publisher -> {subs} subscriber(s)");
    println!(
        "  published at {:.0} msgs/s, delivered {} at {:.0} msgs/s ({:.1} MB/s), dropped {dropped}",
        run.pub_rate,
        run.got,
        run.rate,
        run.rate * size as f64 / 1e6
    );
    let mut r = Report::new(mode);
    r.put("size", size).put("subs", subs).put("published", msgs).put("delivered", run.got).put("dropped", dropped);
    r.put("pub_rate", format!("{:.0}", run.pub_rate))
        .put("delivered_rate", format!("{:.0}", run.rate))
        .put("elapsed_s", format!("{:.3}", run.elapsed));
    if dropped > 0 {
        r.failure = Some(format!("{dropped} messages were not delivered"));
    }
    Ok(r)
}

async fn rpc(url: &str, opts: ConnectOptions, callers: usize, calls: u64, size: usize) -> anyhow::Result<Report> {
    rpc_between(url, url, opts, callers, calls, size).await
}

/// Callers on `url`, one echoing provider on `provider_url` (the same node, or another
/// node of a mesh).
async fn rpc_between(
    url: &str,
    provider_url: &str,
    opts: ConnectOptions,
    callers: usize,
    calls: u64,
    size: usize,
) -> anyhow::Result<Report> {
    anyhow::ensure!(callers > 0, "--callers must be at least 1");
    let provider = Client::connect(provider_url, opts.clone().name("bench-provider")).await?;
    let mut reg = provider.register("bench.rpc").await?;
    tokio::spawn(async move {
        while let Some(req) = reg.next().await {
            let payload = req.payload.clone();
            req.respond(payload);
        }
    });
    let caller = Client::connect(url, opts.name("bench-caller")).await?;
    let payload = Bytes::from(vec![b'x'; size]);
    // A provider on another node is visible once its registration has crossed the mesh.
    let t0 = Instant::now();
    while let Err(e) = caller.call("bench.rpc", payload.clone(), Duration::from_secs(10)).await {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(10), "the provider never answered: {e}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let per = calls / callers as u64;
    let progress = Progress::start(per * callers as u64, "calls");
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (c, p, done) = (caller.clone(), payload.clone(), progress.counter());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per as usize);
            for _ in 0..per {
                let t = Instant::now();
                c.call("bench.rpc", p.clone(), Duration::from_secs(10)).await?;
                lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, fovea_client::ClientError>(lat)
        }));
    }
    let mut lat = Vec::with_capacity(calls as usize);
    for t in tasks {
        lat.extend(t.await.context("caller task failed")??);
    }
    let elapsed = t0.elapsed().as_secs_f64().max(1e-9);
    progress.finish();
    lat.sort_unstable();
    let q = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    let rate = lat.len() as f64 / elapsed;
    println!("rpc: {} calls of {size} bytes from {callers} concurrent callers to 1 provider", lat.len());
    println!("  {rate:.0} calls/s; latency p50 {} µs, p99 {} µs, p99.9 {} µs", q(0.5), q(0.99), q(0.999));
    let mut r = Report::new("rpc");
    r.put("size", size).put("callers", callers).put("calls", lat.len()).put("rate", format!("{rate:.0}"));
    r.put("p50_us", q(0.5)).put("p99_us", q(0.99)).put("p999_us", q(0.999));
    caller.close().await;
    provider.close().await;
    Ok(r)
}

/// What one publisher → subscribers run measured.
struct Run {
    /// Messages published per second (until the publisher's flush returned).
    pub_rate: f64,
    /// Deliveries per second (all subscribers), from the first publish to the last receipt.
    rate: f64,
    /// Deliveries, all subscribers together.
    got: u64,
    /// Seconds from the first publish to the last receipt.
    elapsed: f64,
}

/// One publisher and `subs` subscribers that keep up, on `topic`.
#[allow(clippy::too_many_arguments)]
async fn fast_run(
    url: &str,
    sub_url: &str,
    opts: &ConnectOptions,
    topic: &str,
    msgs: u64,
    size: usize,
    subs: usize,
) -> anyhow::Result<Run> {
    let mut receivers = Vec::with_capacity(subs);
    let mut sub_clients = Vec::with_capacity(subs);
    for i in 0..subs {
        let c = Client::connect(sub_url, opts.clone().name(format!("bench-sub-{i}"))).await?;
        let sub = c.subscribe(topic).await?;
        sub_clients.push(c);
        receivers.push(sub);
    }
    let publisher = Client::connect(url, opts.clone().name("bench-pub")).await?;
    if url != sub_url {
        // Across a mesh, a new subscription is known to other nodes once its interest
        // record is stored (milliseconds); what is published before that does not reach
        // it. Probe until it does, then measure.
        let t0 = Instant::now();
        loop {
            publisher.publish(topic, Bytes::new()).await?;
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(2), receivers[0].next()).await {
                break;
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(10), "the subscription never became visible");
        }
        publisher.flush().await?;
        for sub in &mut receivers {
            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {}
        }
    }
    let progress = Progress::start(msgs, "published");
    let t0 = Instant::now();
    let receivers: Vec<_> = receivers
        .into_iter()
        .map(|mut sub| {
            tokio::spawn(async move {
                let (mut got, mut last) = (0u64, Instant::now());
                // One timer for the whole run, pushed back every 256 messages: a timeout
                // per message would read the clock per message, a tenth of the
                // receiver's work.
                let quiet = tokio::time::sleep(QUIET);
                tokio::pin!(quiet);
                while got < msgs {
                    tokio::select! {
                        biased;
                        m = sub.next() => {
                            if m.is_none() {
                                break;
                            }
                            got += 1;
                            if got % 256 == 0 || got == msgs {
                                last = Instant::now();
                                quiet.as_mut().reset((last + QUIET).into());
                            }
                        }
                        _ = &mut quiet => break,
                    }
                }
                (got, last)
            })
        })
        .collect();
    let payload = Bytes::from(vec![b'x'; size]);
    let done = progress.counter();
    for i in 0..msgs {
        publisher.publish(topic, payload.clone()).await?;
        if i % 1024 == 0 {
            done.store(i, Ordering::Relaxed);
        }
    }
    publisher.flush().await.context("flushing the publisher")?;
    let pub_rate = msgs as f64 / t0.elapsed().as_secs_f64().max(1e-9);
    progress.finish();
    let (mut got, mut last) = (0u64, t0);
    for r in receivers {
        let (g, l) = r.await.context("receiver task failed")?;
        got += g;
        last = last.max(l);
    }
    let elapsed = last.saturating_duration_since(t0).as_secs_f64().max(1e-9);
    publisher.close().await;
    for c in sub_clients {
        c.close().await;
    }
    Ok(Run { pub_rate, rate: got as f64 / elapsed, got, elapsed })
}

/// Connections are opened through shared sockets, this many per socket: a client process
/// holding 100 000 connections would otherwise need 100 000 file descriptors. Not many
/// more: one socket's receive buffer overflows under the keep-alives of thousands of
/// connections, and a handshake whose packets are lost that way fails in the load
/// generator, not in the node.
const CONNS_PER_SOCKET: usize = 250;
/// Handshakes in flight at once while opening connections.
const CONNECTS_IN_FLIGHT: usize = 64;
/// Connections opened before the baseline sample, so one-off allocations (pools, tables
/// growing from empty) are not charged to the per-connection figure.
const WARM_UP_CONNS: usize = 200;

/// Opens `n` idle connections and reports the node's RSS growth per connection, measured
/// after a keep-alive round, from a baseline taken after a warm-up.
async fn conns(url: &str, opts: ConnectOptions, n: usize, node: Option<u32>) -> anyhow::Result<Report> {
    anyhow::ensure!(n > WARM_UP_CONNS, "--conns must be more than {WARM_UP_CONNS}");
    let pid = node.context("bench conns measures the node's memory, so it starts its own node: drop --url")?;
    let addr: std::net::SocketAddr = "0.0.0.0:0".parse().context("bind address")?;
    let mut sockets = Vec::new();
    for _ in 0..n.div_ceil(CONNS_PER_SOCKET) {
        sockets.push(fovea_client::Socket::bind(addr)?);
    }
    // A handshake queued behind thousands of others (and behind the keep-alives of those
    // already open) is slow, not refused: give it time, and count only real failures.
    let opts = opts.reconnect(false).subscription_capacity(1).connect_timeout(Duration::from_secs(60));
    let progress = Progress::start(n as u64, "connections");
    let done = progress.counter();
    let mut clients = Vec::with_capacity(n);
    let open = |range: std::ops::Range<usize>| {
        let (sockets, opts, done) = (&sockets, &opts, done.clone());
        async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(CONNECTS_IN_FLIGHT));
            let mut set = tokio::task::JoinSet::new();
            for i in range {
                let permit = limit.clone().acquire_owned().await?;
                let o = opts.clone().socket(&sockets[i / CONNS_PER_SOCKET]);
                let (u, d) = (url.to_owned(), done.clone());
                set.spawn(async move {
                    let c = Client::connect(&u, o).await;
                    drop(permit);
                    d.fetch_add(1, Ordering::Relaxed);
                    c
                });
            }
            let mut out = Vec::new();
            let mut failed = 0usize;
            let mut first_error = None;
            while let Some(r) = set.join_next().await {
                match r? {
                    Ok(c) => out.push(c),
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            Ok::<_, anyhow::Error>((out, failed, first_error))
        }
    };
    let (warm, mut failed, mut first_error) = open(0..WARM_UP_CONNS).await?;
    clients.extend(warm);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = rss_kib(pid).context("reading the node's memory from /proc")?;
    let t0 = Instant::now();
    let (rest, f, e) = open(WARM_UP_CONNS..n).await?;
    let connect_s = t0.elapsed().as_secs_f64().max(1e-9);
    progress.finish();
    clients.extend(rest);
    failed += f;
    first_error = first_error.or(e);
    // Past one keep-alive round (10 s by default), so each connection has sent and
    // acknowledged packets since its handshake: the steady idle state.
    let settle = Duration::from_secs(12);
    println!("conns: {} connections open, waiting {settle:?} for a keep-alive round", clients.len());
    tokio::time::sleep(settle).await;
    let after = rss_kib(pid).context("reading the node's memory from /proc")?;
    let opened = clients.len();
    let per_conn = (after.saturating_sub(base)) as f64 * 1024.0 / (opened.saturating_sub(WARM_UP_CONNS)).max(1) as f64;
    let rate = (n - WARM_UP_CONNS) as f64 / connect_s;
    println!("  opened {opened} of {n} at {rate:.0} connections/s; {failed} failed");
    if let Some(e) = &first_error {
        println!("  first failure: {e}");
    }
    println!(
        "  node RSS {:.1} MiB after {WARM_UP_CONNS} warm-up connections, {:.1} MiB with {opened}: {:.1} KB per connection",
        base as f64 / 1024.0,
        after as f64 / 1024.0,
        per_conn / 1000.0
    );
    // The path decides the node's QUIC settings (datagram size, MTU discovery): say which.
    if url_is_loopback(url) {
        println!(
            "  (a loopback path, with datagrams of the node's max_loopback_datagram; \
             scripts/netns-conns.sh measures a network path)"
        );
    } else {
        println!("  (a network path: datagrams up to what MTU discovery finds, at most 1 452 bytes)");
    }
    let mut r = Report::new("conns");
    r.put("conns", n).put("opened", opened).put("failed", failed).put("connect_rate", format!("{rate:.0}"));
    r.put("rss_base_kib", base).put("rss_kib", after).put("bytes_per_conn", format!("{per_conn:.0}"));
    if failed > 0 {
        r.failure = Some(format!("{failed} connections failed"));
    }
    // Dropping 100 000 clients one by one takes a while and measures nothing: the node
    // is killed when `run` returns, and this process exits after it.
    std::mem::forget(clients);
    Ok(r)
}

/// Whether `url` names a loopback address (the node the benchmark started, or `--url`).
fn url_is_loopback(url: &str) -> bool {
    fovea_client::NodeUrl::parse(url).is_ok_and(|u| u.is_loopback())
}

/// Starts `fovea node` `runs` times and measures spawn → ready line. The first start
/// creates the self-signed certificate and is reported apart.
fn startup(runs: usize) -> anyhow::Result<Report> {
    anyhow::ensure!(runs >= 2, "--runs must be at least 2");
    let dir = tempfile::tempdir().context("creating a temporary data dir")?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let node = ChildNode::start_in(dir.path(), ChildNode::LISTEN, None, &[])?;
        times.push(t.elapsed());
        drop(node);
    }
    let first = times[0];
    let mut rest: Vec<Duration> = times[1..].to_vec();
    rest.sort_unstable();
    let p50 = rest[rest.len() / 2];
    let max = rest[rest.len() - 1];
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
    println!("startup: {runs} starts of `fovea node` (spawn to ready line)");
    println!("  first start (creates the certificate) {} ms; then p50 {} ms, max {} ms", ms(first), ms(p50), ms(max));
    let mut r = Report::new("startup");
    r.put("runs", runs).put("first_ms", ms(first)).put("p50_ms", ms(p50)).put("max_ms", ms(max));
    Ok(r)
}

/// `bench mcp`: a node with an MCP endpoint and a provider of `bench.echo` on it.
async fn mcp(args: &BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.url.is_none(), "bench mcp starts its own node (with --mcp); drop --url");
    anyhow::ensure!(args.callers > 0, "--callers must be at least 1");
    let mut extra = vec!["--mcp".to_owned(), "127.0.0.1:0".to_owned()];
    if args.sessions > 0 {
        // Room for the sessions measured: the node's defaults are below some runs.
        let cfg = tempfile::NamedTempFile::new()?;
        let n = args.sessions + 1000;
        let mut toml = format!("[mcp]\nmax_sessions = {n}\nmax_sessions_per_user = {n}\n");
        if let Some(h) = &args.hibernate_after {
            toml.push_str(&format!("hibernate_after = \"{h}\"\n"));
        }
        std::fs::write(cfg.path(), toml)?;
        let node = ChildNode::start(Some(cfg.path()), &extra)?;
        return mcp_on(args, node).await;
    }
    extra.extend(["--mcp-call-timeout".to_owned(), "10s".to_owned()]);
    let node = ChildNode::start(args.node_config.as_deref(), &extra)?;
    mcp_on(args, node).await
}

async fn mcp_on(args: &BenchArgs, node: ChildNode) -> anyhow::Result<Report> {
    let endpoint = node.mcp.clone().context("the node did not report its MCP endpoint")?;
    let opts = ConnectOptions::new().trust(Trust::CaFiles(vec![node.cert.clone()]));
    let provider = crate::bench_mcp::provider(&node.url, opts).await?;
    let mut r = Report::new("mcp");
    if args.sessions > 0 {
        let pid = node.child.id();
        let before = rss_kib(pid).unwrap_or(0);
        let progress = Progress::start(args.sessions as u64, "sessions");
        let ids = crate::bench_mcp::open_sessions(&endpoint, args.sessions, progress.counter()).await?;
        progress.finish();
        // Idle for as long as the node hibernates sessions after, and a few of its sweeps.
        let idle = match args.hibernate_after.as_deref() {
            None => Duration::from_secs(30),
            Some("off") => Duration::ZERO,
            Some(h) => crate::cli::parse_duration(h).unwrap_or_default(),
        };
        let sweep = if idle.is_zero() {
            Duration::ZERO
        } else {
            (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
        };
        tokio::time::sleep(idle + sweep + Duration::from_secs(2)).await;
        let after = rss_kib(pid).unwrap_or(0);
        let per = (after.saturating_sub(before)) as f64 / args.sessions as f64;
        let hibernate = args.hibernate_after.as_deref().unwrap_or("30s (the default)");
        println!(
            "mcp sessions: {} idle 2025-11-25 sessions, hibernate_after {hibernate}; node RSS {before} → {after} KiB, {per:.1} KiB each",
            args.sessions
        );
        // The first request of an idle session: restored first when it hibernated.
        let lat = crate::bench_mcp::first_requests(&endpoint, &ids[..ids.len().min(2000)]).await?;
        let q =
            |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
        println!("  first request (ping) of {} of them: p50 {} µs, p99 {} µs", lat.len(), q(0.5), q(0.99));
        r.put("sessions", args.sessions)
            .put("hibernate_after", hibernate)
            .put("kib_per_session", format!("{per:.1}"))
            .put("first_p50_us", q(0.5))
            .put("first_p99_us", q(0.99));
    }
    let duration = args.duration.unwrap_or(Duration::from_secs(10));
    if args.upstream {
        provider.close().await;
        return mcp_upstream(args, &node, &endpoint, duration, r).await;
    }
    if let Some(rate) = args.rate {
        let conns = args.callers.max(512);
        let progress = Progress::start((rate as f64 * duration.as_secs_f64()) as u64, "calls");
        let run = crate::bench_mcp::open_loop(&endpoint, rate, duration, conns, progress.counter()).await?;
        progress.finish();
        let q = |lat: &[u32], p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0)
        };
        let (a, b) = (&run.admitted, &run.busy);
        println!("mcp open loop: {} calls offered at {rate}/s over {conns} connections", run.offered);
        println!(
            "  admitted {} ({:.0}/s): p50 {} µs, p99 {} µs; busy {}: p50 {} µs, p99 {} µs; {} errors",
            a.len(),
            a.len() as f64 / run.elapsed,
            q(a, 0.5),
            q(a, 0.99),
            b.len(),
            q(b, 0.5),
            q(b, 0.99),
            run.errors
        );
        let (sa, sb) = (&run.admitted_sent, &run.busy_sent);
        println!(
            "  from the send (the node's view): admitted p50 {} µs, p99 {} µs; busy p50 {} µs, p99 {} µs",
            q(sa, 0.5),
            q(sa, 0.99),
            q(sb, 0.5),
            q(sb, 0.99)
        );
        r.put("sent_p99_us", q(sa, 0.99)).put("busy_sent_p99_us", q(sb, 0.99));
        r.put("offered_rate", rate).put("conns", conns).put("admitted", a.len()).put("busy", b.len());
        r.put("rate", format!("{:.0}", a.len() as f64 / run.elapsed))
            .put("p50_us", q(a, 0.5))
            .put("p99_us", q(a, 0.99));
        r.put("busy_p99_us", q(b, 0.99)).put("errors", run.errors);
        provider.close().await;
        return Ok(r);
    }
    use crate::bench_mcp::Ask;
    let era = if args.legacy { "2025-11-25 sessions" } else { "2026-07-28 stateless" };
    r.put("era", if args.legacy { "2025-11-25" } else { "2026-07-28" }).put("callers", args.callers);
    let mut failed = 0;
    // Each method in turn, for the same time: their rates are comparable within the run.
    let keys = |p: &'static [&'static str; 5]| *p;
    for (ask, what, [calls, errors, rate, p50, p99]) in [
        (Ask::Tool("bench__echo"), "tools/call", keys(&["calls", "errors", "rate", "p50_us", "p99_us"])),
        (
            Ask::Read,
            "resources/read",
            keys(&["read_requests", "read_errors", "read_rate", "read_p50_us", "read_p99_us"]),
        ),
        (
            Ask::Prompt,
            "prompts/get",
            keys(&["prompt_requests", "prompt_errors", "prompt_rate", "prompt_p50_us", "prompt_p99_us"]),
        ),
    ] {
        let progress = Progress::start(0, "requests");
        let run =
            crate::bench_mcp::closed_loop(&endpoint, ask, args.callers, duration, args.legacy, progress.counter())
                .await?;
        progress.finish();
        let lat = &run.lat;
        let q =
            |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
        println!(
            "mcp: {} {what} ({era}) from {} callers over HTTP, through the node's RPC to 1 provider",
            run.calls, args.callers
        );
        println!("  {:.0} requests/s; latency p50 {} µs, p99 {} µs; {} errors", run.rate, q(0.5), q(0.99), run.errors);
        r.put(calls, run.calls).put(errors, run.errors).put(rate, format!("{:.0}", run.rate));
        r.put(p50, q(0.5)).put(p99, q(0.99));
        failed += run.errors;
    }
    if failed > 0 {
        r.failure = Some(format!("{failed} requests failed"));
    }
    provider.close().await;
    drop(node);
    Ok(r)
}

/// `bench mcp --upstream`: the same closed loop against a bare upstream MCP server, then
/// against the node's endpoint with that server attached (`fovea mcp attach`).
async fn mcp_upstream(
    args: &BenchArgs,
    node: &ChildNode,
    endpoint: &str,
    duration: Duration,
    mut r: Report,
) -> anyhow::Result<Report> {
    let upstream = crate::bench_mcp::bare_upstream().await?;
    let exe = std::env::current_exe().context("locating the fovea binary")?;
    let dir = tempfile::tempdir()?;
    let mut attach = tokio::process::Command::new(exe)
        .args(["mcp", "attach", "bench", "--no-pin", "--upstream-url", &upstream, "--url", &node.url, "--ca"])
        .arg(&node.cert)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting fovea mcp attach")?;
    let t0 = Instant::now();
    loop {
        let mut http = crate::bench_mcp::Http::connect(endpoint).await?;
        let req = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}}});
        let a = http.post(&req, "tools/list", "", "2026-07-28").await?;
        if a.body.contains("bench__echo") {
            break;
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(20), "the attached tool never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let run = |endpoint: String, tool: &'static str| async move {
        crate::bench_mcp::closed_loop(
            &endpoint,
            crate::bench_mcp::Ask::Tool(tool),
            args.callers,
            duration,
            false,
            Default::default(),
        )
        .await
    };
    let direct = run(upstream.clone(), "echo").await?;
    let meshed = run(endpoint.to_owned(), "bench__echo").await?;
    let _ = attach.kill().await;
    let q = |lat: &[u32], p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0)
    };
    println!("mcp upstream: tools/call from {} callers, 2026-07-28 stateless", args.callers);
    println!(
        "  direct to the upstream:      {:.0} calls/s, p50 {} µs, p99 {} µs",
        direct.rate,
        q(&direct.lat, 0.5),
        q(&direct.lat, 0.99)
    );
    println!(
        "  through the mesh (attached): {:.0} calls/s, p50 {} µs, p99 {} µs",
        meshed.rate,
        q(&meshed.lat, 0.5),
        q(&meshed.lat, 0.99)
    );
    r.put("callers", args.callers).put("direct_rate", format!("{:.0}", direct.rate));
    r.put("direct_p50_us", q(&direct.lat, 0.5)).put("rate", format!("{:.0}", meshed.rate));
    r.put("p50_us", q(&meshed.lat, 0.5)).put("p99_us", q(&meshed.lat, 0.99));
    r.put("added_p50_us", q(&meshed.lat, 0.5).saturating_sub(q(&direct.lat, 0.5)));
    let errors = direct.errors + meshed.errors;
    r.put("errors", errors);
    if errors > 0 {
        r.failure = Some(format!("{errors} calls failed"));
    }
    Ok(r)
}

/// Two nodes in a mesh, as users run them: publisher and caller on A, subscriber and
/// provider on B. Measures pub/sub and RPC across the link, and how long a new remote
/// subscriber takes to receive (its discovery latency).
async fn mesh(args: &BenchArgs) -> anyhow::Result<Report> {
    let (a, b, opts) = two_nodes()?;
    // The mesh is formed once a message crosses it.
    let publisher = Client::connect(&a.url, opts.clone()).await?;
    let sub_client = Client::connect(&b.url, opts.clone()).await?;
    let crossed = |topic: &'static str, deadline: Duration| {
        let (publisher, sub_client) = (&publisher, &sub_client);
        async move {
            let mut sub = sub_client.subscribe(topic).await?;
            let t0 = Instant::now();
            loop {
                publisher.publish(topic, "x").await?;
                if tokio::time::timeout(Duration::from_millis(1), sub.next()).await.is_ok() {
                    return Ok::<_, anyhow::Error>(t0.elapsed());
                }
                anyhow::ensure!(t0.elapsed() < deadline, "no message crossed the mesh in {deadline:?}");
            }
        }
    };
    crossed("warmup.x", Duration::from_secs(30)).await?;
    let mut discovery: Vec<Duration> = Vec::new();
    for topic in ["disc1.x", "disc2.x", "disc3.x", "disc4.x", "disc5.x"] {
        discovery.push(crossed(topic, Duration::from_secs(10)).await?);
    }
    discovery.sort_unstable();
    publisher.close().await;
    sub_client.close().await;
    let run = fast_run(&a.url, &b.url, &opts, "bench.mesh", args.msgs, args.size, 1).await?;
    let dropped = args.msgs - run.got;
    let rpc = rpc_between(&a.url, &b.url, opts, args.callers, args.calls, args.size).await?;
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
    println!("mesh: two nodes, publisher and caller on A, subscriber and provider on B");
    println!(
        "  pub/sub across the link: {:.0} msgs/s delivered ({} of {}), dropped {dropped}",
        run.rate, run.got, args.msgs
    );
    println!(
        "  a new remote subscriber receives after {} ms (median of 5, max {} ms)",
        ms(discovery[2]),
        ms(discovery[4])
    );
    let mut r = Report::new("mesh");
    r.put("size", args.size).put("published", args.msgs).put("delivered", run.got).put("dropped", dropped);
    r.put("delivered_rate", format!("{:.0}", run.rate));
    for key in ["rate", "p50_us", "p99_us"] {
        if let Some(v) = rpc.get(key) {
            r.put(
                match key {
                    "rate" => "rpc_rate",
                    "p50_us" => "rpc_p50_us",
                    _ => "rpc_p99_us",
                },
                format!("{v:.0}"),
            );
        }
    }
    r.put("discovery_p50_ms", ms(discovery[2])).put("discovery_max_ms", ms(discovery[4]));
    if dropped > 0 {
        r.failure = Some(format!("{dropped} messages were not delivered across the mesh"));
    }
    Ok(r)
}

/// Two nodes joined in a mesh (B joined through A), and client options that trust both.
fn two_nodes() -> anyhow::Result<(ChildNode, ChildNode, ConnectOptions)> {
    let secret = format!("bench-{:x}", std::process::id() as u64 * 0x9e37_79b9);
    let secret = format!("{secret}{secret}");
    let base = ["--mesh-secret".to_owned(), secret, "--mesh-listen".to_owned(), "127.0.0.1:0".to_owned()];
    let a = ChildNode::start(None, &base)?;
    let a_mesh = a.mesh.clone().context("node A printed no mesh address")?;
    let mut join = base.to_vec();
    join.extend(["--join".to_owned(), a_mesh]);
    let b = ChildNode::start(None, &join)?;
    let opts = ConnectOptions::new().trust(Trust::CaFiles(vec![a.cert.clone(), b.cert.clone()]));
    Ok((a, b, opts))
}

/// Runs `nats.sh` for the workload just measured and prints both lines and the ratio.
/// The name `nats.sh` gives a workload.
fn nats_mode(mode: &BenchMode) -> &'static str {
    match mode {
        BenchMode::Rpc => "reqrep",
        BenchMode::Fanout => "fanout",
        _ => "pubsub",
    }
}

/// One run of `nats.sh`: its `system=nats …` line.
struct NatsRun {
    line: String,
}

impl NatsRun {
    fn get(&self, key: &str) -> Option<f64> {
        self.line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('='))?.parse::<f64>().ok())
    }
}

/// Runs `nats.sh` for the workload `args` describes.
fn run_nats(args: &BenchArgs) -> anyhow::Result<NatsRun> {
    // `run` refused the other modes before anything ran.
    let (msgs, k) = match args.mode {
        BenchMode::Fanout => (args.msgs, args.subs),
        BenchMode::Rpc => (args.calls, args.callers),
        _ => (args.msgs, 1),
    };
    let script = match &args.nats_script {
        Some(script) => {
            anyhow::ensure!(
                script.exists(),
                "NATS benchmark script {} not found; give the harness's bench/nats.sh with --nats-script FILE \
                 (or FOVEA_NATS_BENCH=FILE)",
                script.display()
            );
            script.clone()
        }
        None => find_nats_script()?,
    };
    let script = &script;
    let out = Command::new("bash")
        .arg(script)
        .args([nats_mode(&args.mode).to_owned(), msgs.to_string(), args.size.to_string(), k.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().rev().find(|l| l.starts_with("system=nats")) else {
        bail!("{} printed no result line (exit {}): {text}", script.display(), out.status);
    };
    Ok(NatsRun { line: line.to_owned() })
}

/// Where the harness keeps its NATS script, relative to a directory that holds it.
const NATS_SCRIPT: &str = "shared/bench/nats.sh";

/// The first [`NATS_SCRIPT`] in the current directory or one of its parents: a checkout
/// run from inside the benchmark harness finds it wherever the two sit; a released binary
/// run elsewhere is told what to give.
fn find_nats_script() -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    cwd.ancestors().map(|dir| dir.join(NATS_SCRIPT)).find(|p| p.is_file()).with_context(|| {
        format!(
            "no {NATS_SCRIPT} in {} or a parent; give the NATS benchmark script with --nats-script FILE \
             (or FOVEA_NATS_BENCH=FILE)",
            cwd.display()
        )
    })
}

/// `compare mode=… <key>_ratio=…`: fovea's figure over NATS's, for one round.
fn compare_line(args: &BenchArgs, fovea: &Report, nats: &NatsRun) -> String {
    let mut cmp = format!("compare mode={}", nats_mode(&args.mode));
    for key in key_figures(&args.mode) {
        if let (Some(f), Some(n)) = (fovea.get(key), nats.get(key)) {
            cmp.push_str(&format!(" {key}_ratio={:.2}", f / n.max(1e-9)));
        }
    }
    if let Some(d) = nats.get("dropped") {
        cmp.push_str(&format!(" nats_dropped={d:.0} fovea_dropped={}", fovea.get("dropped").unwrap_or(0.0)));
    }
    cmp
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
) -> anyhow::Result<Report> {
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
    let kib = |k: Option<u64>| k.map_or("unknown".into(), |k| k.to_string());
    let mut r = Report::new("soak");
    r.put("size", size).put("duration_s", format!("{:.0}", duration.as_secs_f64()));
    r.put("published", published).put("calls", calls);
    r.put("rss_first_kib", kib(first)).put("rss_last_kib", kib(last)).put("rss_max_kib", kib(max));
    for d in drains {
        d.abort();
    }
    Ok(r)
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
) -> anyhow::Result<Report> {
    // Baseline: the fast subscriber alone.
    let base = fast_run(url, url, &opts, "bench.base", msgs, size, 1).await?;
    let (base_pub, base_rate, base_got) = (base.pub_rate, base.rate, base.got);
    // Same run with a stalled subscriber on the same topic: it never reads.
    let stalled_client = Client::connect(url, opts.clone().name("bench-stalled").subscription_capacity(1)).await?;
    let mut stalled = stalled_client.subscribe("bench.slow").await?;
    let run = fast_run(url, url, &opts, "bench.slow", msgs, size, 1).await?;
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
    let mut r = Report::new("slow-consumer");
    r.put("size", size).put("published", msgs).put("baseline_rate", format!("{base_rate:.0}"));
    r.put("fast_rate", format!("{rate:.0}")).put("ratio", format!("{ratio:.3}")).put("fast_delivered", got);
    r.put("stalled_received", stalled_got).put("stalled_dropped", dropped);
    r.put("node_peak_rss_kib", peak.map_or("unknown".to_owned(), |k| k.to_string()));
    stalled_client.close().await;
    if got != msgs || base_got != msgs {
        r.failure = Some("the fast subscriber lost messages".into());
    }
    Ok(r)
}

/// A node started as a child process, as users run it, on a free port and a fresh data dir.
struct ChildNode {
    child: Child,
    url: String,
    /// The stream transports' URLs from the ready line (`tls://…`, `ws://…`).
    streams: Vec<String>,
    /// The mesh address from the ready line, for a node in a mesh.
    mesh: Option<String>,
    /// The MCP endpoint from the ready line, for a node with one.
    mcp: Option<String>,
    cert: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl ChildNode {
    /// Where a benchmark's node listens unless `--node-listen` says otherwise.
    const LISTEN: &'static str = "127.0.0.1:0";

    fn start(config: Option<&Path>, extra: &[String]) -> anyhow::Result<ChildNode> {
        ChildNode::start_at(ChildNode::LISTEN, config, extra)
    }

    /// Starts a node listening on `listen`, with its state in a temporary dir.
    fn start_at(listen: &str, config: Option<&Path>, extra: &[String]) -> anyhow::Result<ChildNode> {
        let dir = tempfile::tempdir().context("creating a temporary data dir")?;
        let mut node = ChildNode::start_in(dir.path(), listen, config, extra)?;
        node._dir = Some(dir);
        Ok(node)
    }

    /// Starts a node with its state in `dir`, and returns once it printed its ready line.
    fn start_in(dir: &Path, listen: &str, config: Option<&Path>, extra: &[String]) -> anyhow::Result<ChildNode> {
        let exe = std::env::current_exe().context("locating the fovea binary")?;
        let mut child = Command::new(exe)
            .args(["node", "--listen", listen, "--admin", "off", "--log-level", "error", "--data-dir"])
            .arg(dir)
            .args(extra)
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
        let mesh = line.split(", mesh ").nth(1).and_then(|rest| rest.split_whitespace().next()).map(str::to_owned);
        let mcp = line
            .split(", mcp ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(|u| u.trim_end_matches([')', ',']).to_owned());
        let streams = line
            .split([' ', ','])
            .filter(|w| w.starts_with("tls://") || w.starts_with("ws://") || w.starts_with("wss://"))
            .map(|w| w.trim().trim_end_matches([')', ',']).to_owned())
            .collect();
        Ok(ChildNode { url: url.to_owned(), streams, mesh, mcp, cert: dir.join("node.crt"), child, _dir: None })
    }

    /// The node's URL for a stream transport (`tls`, `ws`), when it serves one.
    fn stream_url(&self, scheme: &str) -> Option<String> {
        self.streams.iter().find(|u| u.starts_with(&format!("{scheme}://"))).cloned()
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
