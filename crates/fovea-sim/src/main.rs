//! `fovea-sim`: thousands of fovea nodes' discovery in one process, on simulated time.
//!
//! Each simulated node is made of the core's own state machines — the DHT, discovery and the
//! failure detector — driven as the node's IO shell drives them, over a network with
//! latency and loss. Nodes join, crash and leave; subscribers and providers come and go;
//! publishers and callers resolve them. Deterministic for a seed. The last line sums up in
//! `key=value` form (see `--help`).

mod net;
mod sim;

use std::time::{Duration, Instant};

use clap::Parser;
use fovea_core::duration::parse_duration;

use crate::net::percentile;
use crate::sim::{Params, Sim};

/// Simulates a mesh of fovea nodes (DHT, discovery, failure detection) on simulated time,
/// and prints what it measured.
///
/// The last line carries: nodes, lookup_success (share of lookups of a standing record that
/// found it), hops_p50/hops_p99 (of those lookups: hops to the closest node answering),
/// reach_p50_ms/reach_p99_ms (a new subscriber or provider until each remote publisher or
/// caller of it routes to it), detect_p50_ms/detect_p99_ms (a crash until each node that
/// routed to the crashed node stops), false_dead (live nodes declared dead),
/// maint_msgs_per_node_s (every message sent but the measurement lookups', per live
/// node and second: the DHT's upkeep, discovery, failure detection, arrivals and churn),
/// bytes_per_node (process memory per simulated node), and the churn counted.
#[derive(Parser, Debug)]
#[command(name = "fovea-sim", version)]
struct Args {
    /// Nodes in the mesh (kept constant: each departure is followed by a join).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Share of the nodes that leave per simulated hour (half crash, half say goodbye),
    /// each replaced by a new node.
    #[arg(long, default_value_t = 0.2)]
    churn: f64,
    /// Share of messages lost on every link.
    #[arg(long, default_value_t = 0.02)]
    loss: f64,
    /// One-way latency of a link, drawn uniformly per message: MIN..MAX (ms or s).
    #[arg(long, default_value = "20ms..80ms", value_parser = parse_range)]
    latency: (Duration, Duration),
    /// Seed of everything random.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated time measured, after the joins and the warm-up (e.g. 120s, 10m).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    duration: Duration,
    /// Simulated time between setting up the workload and measuring.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    warmup: Duration,
    /// Lookups of standing records made while measuring.
    #[arg(long, default_value_t = 2000)]
    lookups: usize,
    /// New subscribers and providers whose reach is measured.
    #[arg(long, default_value_t = 200)]
    arrivals: usize,
}

fn parse_range(s: &str) -> Result<(Duration, Duration), String> {
    let (lo, hi) = s.split_once("..").ok_or_else(|| format!("{s:?}: write MIN..MAX, e.g. 20ms..80ms"))?;
    let (lo, hi) = (parse_duration(lo)?, parse_duration(hi)?);
    if lo > hi {
        return Err(format!("{s:?}: MIN is above MAX"));
    }
    Ok((lo, hi))
}

/// The process's resident memory in bytes (Linux; 0 elsewhere).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn main() {
    let args = Args::parse();
    if args.nodes < 2 {
        eprintln!("error: --nodes must be at least 2");
        std::process::exit(2);
    }
    if !(0.0..=1.0).contains(&args.loss) || args.churn < 0.0 {
        eprintln!("error: --loss must be within 0..1 and --churn not negative");
        std::process::exit(2);
    }
    // Same seed, same run: core's maps hash with a fixed seed here (never in a node).
    fovea_core::hashing::use_fixed_seeds();
    let started = Instant::now();
    let rss0 = rss();
    let params = Params {
        nodes: args.nodes,
        churn: args.churn,
        loss: args.loss,
        latency: args.latency,
        seed: args.seed,
        duration: args.duration,
        warmup: args.warmup,
        lookups: args.lookups,
        arrivals: args.arrivals,
    };
    let sim = Sim::new(params);
    let report = sim.run(|what| eprintln!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64()));
    let bytes_per_node = rss().saturating_sub(rss0) / args.nodes as u64;

    let mut reach = report.reach_ms.clone();
    reach.sort_by(f64::total_cmp);
    let mut detect = report.detect_ms.clone();
    detect.sort_by(f64::total_cmp);
    let mut hops: Vec<f64> = Vec::new();
    for (h, n) in report.hops.iter().enumerate() {
        hops.extend(std::iter::repeat_n(h as f64, *n as usize));
    }
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:.0}"));
    let success = if report.lookups == 0 { 0.0 } else { report.lookups_ok as f64 / report.lookups as f64 };
    let per_node_s = |m: u64| if report.node_seconds > 0.0 { m as f64 / report.node_seconds } else { 0.0 };
    let maintenance = report.msgs.saturating_sub(report.probe_lookup_msgs);
    println!(
        "detail lookups={} lookups_ok={} reach_samples={} reach_unfinished={} detect_samples={} detect_unfinished={} \
         dht_msgs_per_node_s={:.2} probe_msgs_per_node_s={:.2} wall_s={:.1}",
        report.lookups,
        report.lookups_ok,
        reach.len(),
        report.reach_unfinished,
        detect.len(),
        report.detect_unfinished,
        per_node_s(report.dht_msgs),
        per_node_s(report.probe_msgs),
        started.elapsed().as_secs_f64(),
    );
    println!(
        "nodes={} lookup_success={:.4} hops_p50={} hops_p99={} reach_p50_ms={} reach_p99_ms={} detect_p50_ms={} \
         detect_p99_ms={} false_dead={} maint_msgs_per_node_s={:.2} bytes_per_node={} crashes={} leaves={} joins={} \
         churn={} loss={} latency_ms={}..{} seed={} duration_s={}",
        report.nodes,
        success,
        ms(percentile(&hops, 50.0)),
        ms(percentile(&hops, 99.0)),
        ms(percentile(&reach, 50.0)),
        ms(percentile(&reach, 99.0)),
        ms(percentile(&detect, 50.0)),
        ms(percentile(&detect, 99.0)),
        report.false_dead,
        per_node_s(maintenance),
        bytes_per_node,
        report.crashes,
        report.leaves,
        report.joins,
        args.churn,
        args.loss,
        args.latency.0.as_millis(),
        args.latency.1.as_millis(),
        args.seed,
        args.duration.as_secs(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_or_say_how() {
        assert_eq!(parse_range("20ms..80ms"), Ok((Duration::from_millis(20), Duration::from_millis(80))));
        assert!(parse_range("80ms..20ms").unwrap_err().contains("MIN is above MAX"));
        assert!(parse_range("fast..80ms").unwrap_err().contains("e.g."));
    }
}
