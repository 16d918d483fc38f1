//! The connection's writer: drains its queue into the stream, many frames per write.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use fovea_core::ErrorCode;

use super::Close;
use crate::handle::Handle;
use crate::transport::stream::Writer;

/// Most bytes a client's writer hands to the transport in one call when a backlog has
/// built up (a few encode buffers): small enough that the queue, and a publisher held back
/// for it, move every millisecond or so at loopback speeds; large enough that the call
/// count does not matter.
const WRITE_STEP: usize = 256 * 1024;

/// The writer: waits for queued frames and writes them all in one call (in steps of
/// [`WRITE_STEP`] when a backlog has built up).
///
/// # Cancel safety
/// Not cancel safe: frames taken from the queue and not yet written are lost if the
/// future is dropped; it is only dropped when the connection ends.
pub(super) async fn write_loop(send: &mut Writer, peer: &Handle, stats: &crate::stats::Stats) -> Result<(), Close> {
    let out = &peer.out;
    // The reason carries the drops (docs/PROTOCOL.md §4): the `DROPPED` notices queued
    // behind the stalled stream never arrive once the connection closes.
    let too_slow = || {
        let why =
            format!("messages were dropped for {:?} without a break: the client reads too slowly", out.slow_after());
        Close::new(ErrorCode::SlowConsumer, fovea_core::frame::slow_consumer_reason(&why, out.drops()))
    };
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        // A long queue goes in steps of WRITE_STEP, so it shrinks as the client reads.
        if out.take_some_into(&mut chunks, WRITE_STEP).is_err() {
            return Err(too_slow());
        }
        if chunks.is_empty() {
            out.wait().await;
            continue;
        }
        // Counted per batch, not per frame.
        let bytes: usize = chunks.iter().map(Bytes::len).sum();
        stats.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        // A stalled client holds this write through flow control, so the slow-consumer
        // verdict must be able to interrupt it.
        tokio::select! {
            r = send.write_all_chunks(&mut chunks) => {
                if let Err(e) = r {
                    return Err(Close::new(ErrorCode::NoError, format!("write: {e}")));
                }
            }
            () = out.turned_slow() => return Err(too_slow()),
        }
        chunks.clear();
    }
}
