//! Turns a stream of byte chunks (as a QUIC stream delivers them) into frames.
//!
//! Frames that lie wholly inside one chunk are decoded in place: their payloads are slices
//! of that chunk, never copied. Only a frame split across chunks is assembled, into a
//! buffer sized once from its length prefix, so a 1 MiB frame arriving in 1 KiB pieces
//! costs one copy, not a quadratic number.

use bytes::{Buf, Bytes, BytesMut};

use crate::frame::{frame_size, DecodeError, Frame};

/// Sans-IO frame reassembly. Feed chunks with [`Deframer::push`], then call
/// [`Deframer::next_frame`] until it returns `Ok(None)`.
///
/// Invariant: at most one partial frame is buffered, and never more than `max_frame` plus
/// one chunk's bytes.
#[derive(Debug)]
pub struct Deframer {
    max_frame: usize,
    /// Undecoded bytes that start at a frame boundary.
    ready: Bytes,
    /// An incomplete frame being assembled; empty unless `ready` is.
    partial: BytesMut,
    /// Bytes `partial` needs before it can be decoded.
    need: usize,
}

impl Deframer {
    /// A deframer that refuses frames over `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Deframer { max_frame, ready: Bytes::new(), partial: BytesMut::new(), need: 0 }
    }

    /// Adds the next chunk of the stream.
    pub fn push(&mut self, chunk: Bytes) {
        if self.partial.is_empty() && self.ready.is_empty() {
            self.ready = chunk;
            return;
        }
        if !self.ready.is_empty() {
            // The caller pushed before draining; keep order by assembling.
            self.partial.extend_from_slice(&self.ready);
            self.ready = Bytes::new();
            self.need = 0;
        }
        self.partial.extend_from_slice(&chunk);
    }

    /// Bytes held that are not yet part of a returned frame.
    pub fn buffered(&self) -> usize {
        self.ready.len() + self.partial.len()
    }

    /// The next complete frame, or `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    /// [`DecodeError`] if the stream is malformed; the deframer must then be dropped and
    /// the connection closed with [`DecodeError::code`].
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if !self.partial.is_empty() {
            if self.partial.len() < self.need {
                return Ok(None);
            }
            // Taken whole, so no spare capacity stays behind sharing the frame's allocation.
            self.ready = std::mem::take(&mut self.partial).freeze();
        }
        match Frame::decode(&self.ready, self.max_frame)? {
            Some((frame, n)) => {
                self.ready.advance(n);
                if self.ready.is_empty() {
                    // An empty slice still pins the chunk it came from (a whole received
                    // datagram); an idle connection should hold nothing.
                    self.ready = Bytes::new();
                }
                Ok(Some(frame))
            }
            None => {
                // Incomplete: size the assembly buffer for the whole frame when the prefix
                // is known (bounded by max_frame, checked by frame_size).
                let total = frame_size(&self.ready, self.max_frame)?.unwrap_or(self.ready.len() + 1);
                self.need = total;
                self.partial.reserve(total);
                self.partial.extend_from_slice(&self.ready);
                self.ready = Bytes::new();
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Publish;
    use crate::headers::Headers;
    use crate::limits::MAX_FRAME;
    use proptest::prelude::*;

    fn frames(n: usize, size: usize) -> (Vec<Frame>, Bytes) {
        let mut out = BytesMut::new();
        let mut fs = Vec::new();
        for i in 0..n {
            let f = Frame::Pub(Publish {
                topic: Bytes::from(format!("t.{i}")),
                headers: Headers::new(),
                payload: Bytes::from(vec![i as u8; size + i]),
            });
            f.encode(&mut out);
            fs.push(f);
        }
        (fs, out.freeze())
    }

    fn drain(d: &mut Deframer, got: &mut Vec<Frame>) {
        while let Some(f) = d.next_frame().unwrap() {
            got.push(f);
        }
    }

    proptest! {
        #[test]
        fn any_chunking_yields_the_same_frames(
            n in 1usize..20,
            size in 0usize..3000,
            cuts in proptest::collection::vec(1usize..4000, 0..40),
        ) {
            let (want, bytes) = frames(n, size);
            let mut d = Deframer::new(MAX_FRAME);
            let mut got = Vec::new();
            let mut pos = 0;
            for c in cuts {
                let end = (pos + c).min(bytes.len());
                d.push(bytes.slice(pos..end));
                drain(&mut d, &mut got);
                pos = end;
            }
            d.push(bytes.slice(pos..));
            drain(&mut d, &mut got);
            prop_assert_eq!(got, want);
            prop_assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn oversized_frame_is_refused_from_its_prefix() {
        let mut d = Deframer::new(100);
        d.push(Bytes::from_static(&[0x40, 0xff]));
        assert!(matches!(d.next_frame(), Err(DecodeError::FrameTooLarge { .. })));
    }

    #[test]
    fn push_without_drain_keeps_order() {
        let (want, bytes) = frames(3, 10);
        let mut d = Deframer::new(MAX_FRAME);
        d.push(bytes.slice(..5));
        d.push(bytes.slice(5..));
        let mut got = Vec::new();
        drain(&mut d, &mut got);
        assert_eq!(got, want);
    }
}
