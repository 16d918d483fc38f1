//! A small mesh under heavy churn, run through the binary as a user runs it. The figures
//! checked are simulated time and counts, deterministic for the seed: what the protocols
//! achieve, not how fast this machine runs them.

use std::collections::HashMap;
use std::process::Command;

fn run(args: &[&str]) -> HashMap<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_fovea-sim")).args(args).output().expect("fovea-sim runs");
    assert!(out.status.success(), "fovea-sim failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("a summary line");
    last.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn num(fig: &HashMap<String, String>, key: &str) -> f64 {
    fig.get(key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{key} in {fig:?}"))
}

#[test]
fn a_churning_lossy_mesh_finds_records_reaches_newcomers_and_detects_crashes() {
    // 200 nodes, a third of them replaced per simulated minute, 2% loss, 20–80 ms links.
    let fig = run(&[
        "--nodes",
        "200",
        "--churn",
        "20",
        "--loss",
        "0.02",
        "--latency",
        "20ms..80ms",
        "--seed",
        "7",
        "--duration",
        "60s",
        "--warmup",
        "20s",
        "--lookups",
        "300",
        "--arrivals",
        "60",
    ]);
    assert_eq!(num(&fig, "nodes"), 200.0);
    assert!(num(&fig, "crashes") >= 5.0, "churn happened: {fig:?}");
    assert!(num(&fig, "lookup_success") >= 0.99, "{fig:?}");
    assert!(num(&fig, "hops_p50") <= 4.0, "{fig:?}");
    assert!(num(&fig, "reach_p99_ms") <= 1500.0, "{fig:?}");
    assert!(num(&fig, "detect_p99_ms") <= 2000.0, "crashed nodes stop being used within 2 s: {fig:?}");
    assert_eq!(num(&fig, "false_dead"), 0.0, "no live node declared dead: {fig:?}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    // Small and short: a debug build simulates slowly, and order shows in any run.
    let args =
        ["--nodes", "60", "--churn", "20", "--seed", "3", "--duration", "10s", "--warmup", "5s", "--lookups", "50"];
    // Memory is the process's RSS, the one figure that is not simulated.
    let simulated = |mut fig: HashMap<String, String>| {
        fig.remove("bytes_per_node");
        fig
    };
    let (a, b) = (simulated(run(&args)), simulated(run(&args)));
    assert_eq!(a, b, "two runs of one seed differ");
    let c = simulated(run(&[
        "--nodes",
        "60",
        "--churn",
        "20",
        "--seed",
        "4",
        "--duration",
        "10s",
        "--warmup",
        "5s",
        "--lookups",
        "50",
    ]));
    assert_ne!(a, c, "another seed, another run");
}

#[test]
fn bad_flags_are_refused_with_a_hint() {
    let out = Command::new(env!("CARGO_BIN_EXE_fovea-sim")).args(["--latency", "80ms..20ms"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MIN is above MAX"));
    let out = Command::new(env!("CARGO_BIN_EXE_fovea-sim")).args(["--nodes", "1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 2"));
}
