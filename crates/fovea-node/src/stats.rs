//! Node-wide counters. Updated with relaxed atomics, in batches where the hot path would
//! otherwise touch a shared cache line per message.

use crate::transport::stream::Transport;
use std::sync::atomic::{AtomicU64, Ordering};

use fovea_core::ErrorCode;

/// Close and rejection counters are kept per code for codes below this bound (within
/// each class); later codes share the last slot.
const CODE_SLOTS: usize = 16;

/// The node's counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Open client sessions (gauge).
    pub connections: AtomicU64,
    /// Connections accepted (transport handshake done), every transport.
    pub accepted: AtomicU64,
    /// Open client sessions by transport, in `Transport::ALL`'s order (gauges).
    pub transports: [AtomicU64; 4],
    /// `PUB` frames received.
    pub msgs_in: AtomicU64,
    /// Bytes read from client streams.
    pub bytes_in: AtomicU64,
    /// Messages queued for subscribers.
    pub deliveries: AtomicU64,
    /// Bytes handed to client streams.
    pub bytes_out: AtomicU64,
    /// Messages dropped because a subscriber's queue was full.
    pub dropped: AtomicU64,
    /// Reads of a publishing connection held back because a subscriber's queue was more
    /// than an eighth full (`producer_stall`).
    pub stalls: AtomicU64,
    /// Of those, hold-backs that ran out before the subscriber's queue was taken: its
    /// publishers then run free until it takes again.
    pub stall_timeouts: AtomicU64,
    /// Connections closed for malformed or unexpected frames.
    pub protocol_errors: AtomicU64,
    /// Handshakes refused for the realm or credential.
    pub auth_failures: AtomicU64,
    /// Of those, refused unchecked because the source had failed too often.
    pub auth_rate_limited: AtomicU64,
    /// `CALL` frames received.
    pub calls: AtomicU64,
    /// `RESPOND` frames received.
    pub responses: AtomicU64,
    /// Responses that arrived after their call ended (deadline, cancel, caller gone).
    pub late_responses: AtomicU64,
    /// `NOTICE`s not passed on: late, over the per-call cap, or the caller's queue full.
    pub notices_dropped: AtomicU64,
    /// Idempotent calls sent to another provider after theirs went away.
    pub calls_retried: AtomicU64,
    /// Streams' `DATA` chunks passed on, and their bytes.
    pub stream_chunks: AtomicU64,
    pub stream_bytes: AtomicU64,
    /// `DATA` and `CREDIT` frames for calls that had ended, ignored.
    pub late_stream_frames: AtomicU64,
    /// Streamed messages opened here (a client's `PUB_STREAM`, a link's `FWD_STREAM`).
    pub message_streams: AtomicU64,
    /// Receivers cut from a streamed message: they stopped reading for
    /// `slow_consumer_timeout` while the publisher waited, or broke its credit rules.
    /// Shared with the tasks that watch publishers for stalled receivers.
    pub messages_cut: std::sync::Arc<AtomicU64>,
    closes: [AtomicU64; CODE_SLOTS],
    rejections: [AtomicU64; CODE_SLOTS],
    /// Time from a call reaching the node to its answer leaving it.
    pub call_latency: Histogram,
}

/// Upper bounds of the latency buckets, in seconds: 100 µs to 10 s.
const BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A fixed-bucket histogram of durations: one relaxed increment per sample, no lock.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Samples per bucket (not cumulative); the last slot is above the largest bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one sample.
    pub fn record(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let slot = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The histogram in Prometheus text format under `name`.
    pub fn render(&self, name: &str, help: &str) -> String {
        let mut out = format!("# HELP {name} {help}\n# TYPE {name} histogram\n");
        let mut cumulative = 0u64;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            out += &format!("{name}_bucket{{le=\"{bound}\"}} {cumulative}\n");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        out += &format!("{name}_bucket{{le=\"+Inf\"}} {cumulative}\n");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        out += &format!("{name}_sum {sum}\n{name}_count {cumulative}\n");
        out
    }
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct StatsSnapshot {
    pub connections: u64,
    /// Open sessions by transport (`quic`, `tls`, `ws`, `wss`).
    pub transports: std::collections::BTreeMap<&'static str, u64>,
    pub accepted: u64,
    pub msgs_in: u64,
    pub bytes_in: u64,
    pub deliveries: u64,
    pub bytes_out: u64,
    pub dropped: u64,
    pub stalls: u64,
    pub stall_timeouts: u64,
    pub protocol_errors: u64,
    pub auth_failures: u64,
    pub auth_rate_limited: u64,
    pub calls: u64,
    pub responses: u64,
    pub late_responses: u64,
    pub notices_dropped: u64,
    pub calls_retried: u64,
    pub stream_chunks: u64,
    pub stream_bytes: u64,
    pub late_stream_frames: u64,
    pub message_streams: u64,
    pub messages_cut: u64,
    pub subscriptions: u64,
    pub registrations: u64,
    /// Connections the node closed, by close code (`NO_ERROR` not counted).
    #[serde(serialize_with = "by_name")]
    pub closes: Vec<(ErrorCode, u64)>,
    /// Operations refused or failed by the node (`ERROR` frames and failed call results),
    /// by code.
    #[serde(serialize_with = "by_name")]
    pub rejections: Vec<(ErrorCode, u64)>,
}

impl Stats {
    pub(crate) fn count_close(&self, code: ErrorCode) {
        let slot = (code.to_u64() as usize).min(CODE_SLOTS - 1);
        self.closes[slot].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_rejection(&self, code: ErrorCode) {
        let slot = (code.to_u64().saturating_sub(0x100) as usize).min(CODE_SLOTS - 1);
        self.rejections[slot].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, subscriptions: u64, registrations: u64) -> StatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let by_code = |slots: &[AtomicU64; CODE_SLOTS], base: u64| {
            slots
                .iter()
                .enumerate()
                .filter(|(_, n)| get(n) > 0)
                .map(|(i, n)| (ErrorCode::from_u64(base + i as u64), get(n)))
                .collect()
        };
        StatsSnapshot {
            connections: get(&self.connections),
            transports: Transport::ALL.iter().map(|t| (t.name(), get(&self.transports[t.index()]))).collect(),
            accepted: get(&self.accepted),
            msgs_in: get(&self.msgs_in),
            bytes_in: get(&self.bytes_in),
            deliveries: get(&self.deliveries),
            bytes_out: get(&self.bytes_out),
            dropped: get(&self.dropped),
            stalls: get(&self.stalls),
            stall_timeouts: get(&self.stall_timeouts),
            protocol_errors: get(&self.protocol_errors),
            auth_failures: get(&self.auth_failures),
            auth_rate_limited: get(&self.auth_rate_limited),
            calls: get(&self.calls),
            responses: get(&self.responses),
            late_responses: get(&self.late_responses),
            notices_dropped: get(&self.notices_dropped),
            calls_retried: get(&self.calls_retried),
            stream_chunks: get(&self.stream_chunks),
            stream_bytes: get(&self.stream_bytes),
            late_stream_frames: get(&self.late_stream_frames),
            message_streams: get(&self.message_streams),
            messages_cut: get(&self.messages_cut),
            subscriptions,
            registrations,
            closes: by_code(&self.closes, 0),
            rejections: by_code(&self.rejections, 0x100),
        }
    }
}

fn by_name<S: serde::Serializer>(rows: &[(ErrorCode, u64)], s: S) -> Result<S::Ok, S::Error> {
    let named: std::collections::BTreeMap<&'static str, u64> = rows.iter().map(|(c, n)| (c.name(), *n)).collect();
    serde::Serialize::serialize(&named, s)
}
