//! Replays the fuzzers' corpora (`fuzz/corpus/*`) as ordinary tests, so an input that once
//! found a bug keeps being checked on every CI run, without a nightly toolchain.

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_file() {
            run(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

#[test]
fn frames_corpus() {
    replay("frames", fovea_core::fuzzing::frames);
}

#[test]
fn names_corpus() {
    replay("names", fovea_core::fuzzing::names);
}

#[test]
fn config_corpus() {
    replay("config", fovea_node::config::file::fuzz_config);
}

#[test]
fn dht_corpus() {
    replay("dht", fovea_core::fuzzing::dht);
}
