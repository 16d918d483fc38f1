//! Micro-benchmarks of the per-message work: codec, deframing, trie matching, and
//! subscription churn. `cargo bench -p fovea-core` (figures in BENCHMARKS.md).
//!
//! The trie benches build 1 000 000 subscriptions of depth 5 with 10% wildcards: the
//! scale at which NATS's sublist cache stalled under churn.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fovea_core::frame::{Delivery, Publish};
use fovea_core::{Deframer, Frame, Headers, OutBuf, Pattern, SubTrie, Topic};

const SUBS: usize = 1_000_000;
const DEPTH: usize = 5;
/// Distinct values per segment: 16^5 ≈ 1M literal topics.
const FANOUT: u64 = 16;

/// xorshift64*, so the benches need no RNG crate and are the same every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn topic_string(rng: &mut Rng) -> String {
    let segs: Vec<String> = (0..DEPTH).map(|_| format!("s{}", rng.next() % FANOUT)).collect();
    segs.join(".")
}

/// A depth-5 pattern; one in ten has a wildcard (`*` at a random level, or a `>` tail).
fn pattern_string(rng: &mut Rng) -> String {
    let mut segs: Vec<String> = (0..DEPTH).map(|_| format!("s{}", rng.next() % FANOUT)).collect();
    if rng.next() % 10 == 0 {
        let at = (rng.next() % DEPTH as u64) as usize;
        if rng.next() % 2 == 0 {
            segs[at] = "*".into();
        } else {
            segs.truncate(at.max(1));
            segs.push(">".into());
        }
    }
    segs.join(".")
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    let payload = Bytes::from(vec![b'x'; 64]);
    let publish = Frame::Pub(Publish {
        topic: Bytes::from_static(b"sensors.eu.paris.temp"),
        headers: Headers::new(),
        payload: payload.clone(),
    });
    let encoded = publish.to_bytes();
    g.bench_function("encode PUB 64 B", |b| {
        let mut out = BytesMut::with_capacity(4096);
        b.iter(|| {
            out.clear();
            black_box(&publish).encode(&mut out);
            black_box(out.len())
        })
    });
    g.bench_function("decode PUB 64 B", |b| {
        b.iter(|| Frame::decode(black_box(&encoded), 1 << 20).ok().flatten().map(|(f, n)| (f.kind(), n)))
    });
    g.bench_function("OutBuf::push_msg 64 B", |b| {
        let mut out = OutBuf::new();
        let mut chunks = Vec::new();
        let headers = Headers::new();
        b.iter(|| {
            out.push_msg(7, b"sensors.eu.paris.temp", &headers, black_box(&payload));
            if out.len() > 64 * 1024 {
                out.take_into(&mut chunks);
                chunks.clear();
            }
        })
    });
    // A read buffer of 1000 MSG frames, as a client's read returns them.
    let mut stream = BytesMut::new();
    for sid in 0..1000 {
        let d = Frame::Msg(Delivery {
            sid,
            topic: Bytes::from_static(b"sensors.eu.paris.temp"),
            headers: Headers::new(),
            payload: payload.clone(),
        });
        d.encode(&mut stream);
    }
    let stream = stream.freeze();
    g.throughput(Throughput::Elements(1000));
    g.bench_function("deframe 1000 MSG 64 B", |b| {
        b.iter_batched(
            || Deframer::new(1 << 20),
            |mut d| {
                d.push(stream.clone());
                let mut n = 0;
                while let Ok(Some(f)) = d.next_frame() {
                    n += f.kind();
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn build_trie(rng: &mut Rng) -> (SubTrie<u64>, Vec<Pattern>) {
    let mut trie = SubTrie::new();
    let mut patterns = Vec::with_capacity(SUBS);
    for i in 0..SUBS as u64 {
        let p = Pattern::new(&pattern_string(rng)).expect("generated patterns are valid");
        trie.insert(&p, i);
        patterns.push(p);
    }
    (trie, patterns)
}

fn trie(c: &mut Criterion) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut trie, patterns) = build_trie(&mut rng);
    let topics: Vec<Topic> =
        (0..4096).map(|_| Topic::new(&topic_string(&mut rng)).expect("generated topics are valid")).collect();
    let mut g = c.benchmark_group("trie 1M subs depth 5, 10% wildcards");
    g.throughput(Throughput::Elements(1));
    g.bench_function("match one publish", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % topics.len();
            let mut n = 0u64;
            trie.for_each_match(&topics[i], |v| n = n.wrapping_add(*v));
            n
        })
    });
    // Churn: one unsubscribe and one subscribe of the same pattern per iteration, so the
    // trie keeps its size; ops/s = 2 × iterations/s.
    g.throughput(Throughput::Elements(2));
    g.bench_function("unsubscribe + subscribe", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 7919) % patterns.len();
            let p = &patterns[i];
            let removed = trie.remove(p, &(i as u64));
            trie.insert(p, i as u64);
            removed
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = codec, trie
}
criterion_main!(benches);
