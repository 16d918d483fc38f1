//! Turns a stream of byte chunks (as a QUIC stream delivers them) into frames.
//!
//! Frames that lie wholly inside one chunk are decoded in place: their payloads are slices
//! of that chunk, never copied. Only a frame split across chunks is assembled, into a
//! buffer sized once from its length prefix, so a 1 MiB frame arriving in 1 KiB pieces
//! costs one copy, not a quadratic number.

use bytes::{Buf, Bytes, BytesMut};

use crate::frame::{frame_size, DecodeError, Delivery, Frame, FwdAt, PubAt};

/// Sans-IO frame reassembly. Feed chunks with [`Deframer::push`], then call
/// [`Deframer::next_frame`] until it returns `Ok(None)`.
///
/// Invariant: at most one partial frame is buffered, and never more than `max_frame` plus
/// one chunk's bytes. A chunk that completes a split frame gives it only the bytes it
/// lacks; the rest of the chunk is decoded in place. (Copying the whole chunk instead cost
/// every chunk after a split a copy: with small frames, every chunk.)
#[derive(Debug)]
pub struct Deframer {
    max_frame: usize,
    /// An incomplete frame being assembled. Its bytes come before `ready`'s.
    partial: BytesMut,
    /// Bytes `partial` needs before it can be decoded: its frame's whole size once the
    /// length prefix is in (then `partial` holds exactly one frame when complete), else 0.
    need: usize,
    /// Undecoded bytes after `partial`; they start at a frame boundary once `partial` is
    /// complete. Non-empty beside `partial` only when `partial` holds exactly `need` bytes.
    ready: Bytes,
    /// `partial` holds the start of exactly one frame (left by `next_frame`), so a chunk
    /// gives it only what it lacks. False when chunks were pushed before draining and
    /// `partial` holds them all, whatever their frames.
    single: bool,
}

impl Deframer {
    /// A deframer that refuses frames over `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Deframer { max_frame, ready: Bytes::new(), partial: BytesMut::new(), need: 0, single: false }
    }

    /// Adds the next chunk of the stream.
    pub fn push(&mut self, mut chunk: Bytes) {
        if !self.ready.is_empty() || (!self.partial.is_empty() && !self.single) {
            // The caller pushed before draining; keep order by assembling everything.
            self.partial.extend_from_slice(&self.ready);
            self.partial.extend_from_slice(&chunk);
            self.ready = Bytes::new();
            self.need = 0;
            self.single = false;
            return;
        }
        if self.partial.is_empty() {
            self.ready = chunk;
            return;
        }
        // Complete the split frame: first its length prefix, a byte at a time (at most a
        // varint's 8), then exactly the bytes it still lacks.
        while !chunk.is_empty() {
            match frame_size(&self.partial, self.max_frame) {
                Ok(Some(total)) => {
                    let take = total.saturating_sub(self.partial.len()).min(chunk.len());
                    self.partial.extend_from_slice(&chunk.split_to(take));
                    self.need = total;
                    break;
                }
                Ok(None) => self.partial.extend_from_slice(&chunk.split_to(1)),
                Err(_) => {
                    // Malformed: next_frame decodes it all and reports the error.
                    self.partial.extend_from_slice(&chunk);
                    chunk = Bytes::new();
                    self.need = 0;
                    self.single = false;
                }
            }
        }
        self.ready = chunk;
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
        Ok(self.next_one(|src, max| Ok(Frame::decode(src, max)?.map(|(f, n)| (Some(f), n))))?.flatten())
    }

    /// As [`Deframer::next_frame`], except that every `MSG` on the way to the next other
    /// frame is handed to `on_msg`, in order, instead of being returned (see
    /// [`Frame::decode_diverting_msg`]). `Ok(None)`: more bytes are needed, and every
    /// message before them has been handed over.
    ///
    /// # Errors
    /// As [`Deframer::next_frame`]; messages before the malformed frame have been handed
    /// over.
    pub fn next_frame_or_msgs(&mut self, mut on_msg: impl FnMut(Delivery)) -> Result<Option<Frame>, DecodeError> {
        self.next_diverting(|src, max| Frame::decode_diverting_msg(src, max, &mut on_msg))
    }

    /// As [`Deframer::next_frame_or_msgs`], for `PUB` frames, each read in place
    /// ([`PubAt`]: valid for the call; [`PubAt::to_publish`] keeps one).
    ///
    /// # Errors
    /// As [`Deframer::next_frame_or_msgs`].
    pub fn next_frame_or_pubs(&mut self, mut on_pub: impl FnMut(PubAt<'_>)) -> Result<Option<Frame>, DecodeError> {
        self.next_diverting(|src, max| Frame::decode_diverting_pub(src, max, &mut on_pub))
    }

    /// As [`Deframer::next_frame_or_pubs`], for `FWD` frames (a mesh link's forwarded
    /// messages), each read in place ([`FwdAt`]).
    ///
    /// # Errors
    /// As [`Deframer::next_frame_or_msgs`].
    pub fn next_frame_or_fwds(&mut self, mut on_fwd: impl FnMut(FwdAt<'_>)) -> Result<Option<Frame>, DecodeError> {
        self.next_diverting(|src, max| Frame::decode_diverting_fwd(src, max, &mut on_fwd))
    }

    fn next_diverting(
        &mut self,
        mut decode: impl FnMut(&Bytes, usize) -> Result<Option<(Option<Frame>, usize)>, DecodeError>,
    ) -> Result<Option<Frame>, DecodeError> {
        loop {
            match self.next_one(&mut decode)? {
                Some(Some(frame)) => return Ok(Some(frame)),
                // A diverted message: decode on.
                Some(None) => {}
                None => return Ok(None),
            }
        }
    }

    /// One frame through `decode`: `Some(None)` when `decode` consumed it without
    /// returning it (a diverted message).
    fn next_one(
        &mut self,
        mut decode: impl FnMut(&Bytes, usize) -> Result<Option<(Option<Frame>, usize)>, DecodeError>,
    ) -> Result<Option<Option<Frame>>, DecodeError> {
        if !self.partial.is_empty() {
            if self.partial.len() < self.need {
                return Ok(None);
            }
            let exact = self.single && self.need > 0;
            // Taken whole, so no spare capacity stays behind sharing the frame's allocation.
            let head = std::mem::take(&mut self.partial).freeze();
            self.need = 0;
            self.single = false;
            if self.ready.is_empty() {
                self.ready = head;
            } else if exact {
                // Exactly one frame (push gave it `need` bytes); the chunk's rest follows.
                return match decode(&head, self.max_frame)? {
                    Some((frame, _)) => Ok(Some(frame)),
                    None => Err(DecodeError::Truncated { field: "frame" }),
                };
            } else {
                // Not left so by push; should it happen, order is kept by joining.
                let mut joined = BytesMut::with_capacity(head.len() + self.ready.len());
                joined.extend_from_slice(&head);
                joined.extend_from_slice(&self.ready);
                self.ready = joined.freeze();
            }
        }
        match decode(&self.ready, self.max_frame)? {
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
                let total = frame_size(&self.ready, self.max_frame)?.unwrap_or(0);
                self.need = total;
                self.partial.reserve(total.max(self.ready.len()));
                self.partial.extend_from_slice(&self.ready);
                self.ready = Bytes::new();
                self.single = true;
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

    /// Pushes `bytes` in pieces of the lengths `cuts` (then the rest), draining after each.
    fn feed_in_cuts(d: &mut Deframer, bytes: &Bytes, cuts: &[usize], mut drain: impl FnMut(&mut Deframer)) {
        let mut pos = 0;
        for c in cuts {
            let end = (pos + c).min(bytes.len());
            d.push(bytes.slice(pos..end));
            drain(d);
            pos = end;
        }
        d.push(bytes.slice(pos..));
        drain(d);
    }

    /// Frames of three kinds, `MSG` most often (what `next_frame_or_msgs` diverts).
    fn mixed(kinds: &[u8], size: usize) -> (Vec<Frame>, Bytes) {
        let mut out = BytesMut::new();
        let mut fs = Vec::new();
        for (i, k) in kinds.iter().enumerate() {
            let payload = Bytes::from(vec![i as u8; size + i]);
            let f = match k % 4 {
                0 => Frame::Ping(i as u64),
                1 => Frame::Pub(Publish { topic: Bytes::from(format!("t.{i}")), headers: Headers::new(), payload }),
                _ => Frame::Msg(crate::frame::Delivery {
                    sid: i as u64,
                    topic: Bytes::from(format!("m.{i}")),
                    headers: Headers::new(),
                    payload,
                }),
            };
            f.encode(&mut out);
            fs.push(f);
        }
        (fs, out.freeze())
    }

    proptest! {
        /// Diverting messages (`MSG` or `PUB`) to a closure yields the same frames in the
        /// same order as returning them, however the stream is cut.
        #[test]
        fn diverted_messages_keep_their_place_among_frames(
            kinds in proptest::collection::vec(any::<u8>(), 1..30),
            size in 0usize..1500,
            cuts in proptest::collection::vec(1usize..3000, 0..40),
            pubs: bool,
        ) {
            let (want, bytes) = mixed(&kinds, size);
            let mut d = Deframer::new(MAX_FRAME);
            let mut got = Vec::new();
            let drain = |d: &mut Deframer, got: &mut Vec<Frame>| {
                let mut diverted = Vec::new();
                loop {
                    let next = if pubs {
                        d.next_frame_or_pubs(|p| diverted.push(Frame::Pub(p.to_publish())))
                    } else {
                        d.next_frame_or_msgs(|m| diverted.push(Frame::Msg(m)))
                    };
                    got.append(&mut diverted);
                    match next.unwrap() {
                        Some(f) => got.push(f),
                        None => break,
                    }
                }
            };
            feed_in_cuts(&mut d, &bytes, &cuts, |d| drain(d, &mut got));
            prop_assert_eq!(got, want);
            prop_assert_eq!(d.buffered(), 0);
        }

        #[test]
        fn any_chunking_yields_the_same_frames(
            n in 1usize..20,
            size in 0usize..3000,
            cuts in proptest::collection::vec(1usize..4000, 0..40),
        ) {
            let (want, bytes) = frames(n, size);
            let mut d = Deframer::new(MAX_FRAME);
            let mut got = Vec::new();
            feed_in_cuts(&mut d, &bytes, &cuts, |d| drain(d, &mut got));
            prop_assert_eq!(got, want);
            prop_assert_eq!(d.buffered(), 0);
        }

        /// Pushes and drains in any interleaving (several pushes before a drain, drains
        /// that stop early) yield the frames in order.
        #[test]
        fn any_interleaving_of_pushes_and_drains_keeps_order(
            n in 1usize..30,
            size in 0usize..200,
            steps in proptest::collection::vec((1usize..300, 0usize..4), 0..60),
        ) {
            let (want, bytes) = frames(n, size);
            let mut d = Deframer::new(MAX_FRAME);
            let mut got = Vec::new();
            let mut pos = 0;
            for (cut, drains) in steps {
                let end = (pos + cut).min(bytes.len());
                d.push(bytes.slice(pos..end));
                pos = end;
                for _ in 0..drains {
                    if let Some(f) = d.next_frame().unwrap() {
                        got.push(f);
                    }
                }
            }
            d.push(bytes.slice(pos..));
            drain(&mut d, &mut got);
            prop_assert_eq!(got, want);
            prop_assert_eq!(d.buffered(), 0);
        }
    }

    /// A chunk that completes a split frame gives it only the bytes it lacks: the frames
    /// after it are decoded in place, their payloads slices of the chunk, not copies.
    #[test]
    fn frames_after_a_split_are_not_copied() {
        let (want, bytes) = frames(6, 40);
        let mut d = Deframer::new(MAX_FRAME);
        let cut = bytes.len() / 3;
        d.push(bytes.slice(..cut));
        let mut got = Vec::new();
        drain(&mut d, &mut got);
        let second = bytes.slice(cut..);
        d.push(second.clone());
        let before = got.len();
        drain(&mut d, &mut got);
        assert_eq!(got, want);
        let range = second.as_ptr() as usize..second.as_ptr() as usize + second.len();
        // The first frame of the second chunk was split (assembled); every later one is in place.
        for f in &got[before + 1..] {
            let Frame::Pub(p) = f else { panic!("{f:?}") };
            assert!(range.contains(&(p.payload.as_ptr() as usize)), "payload copied: {f:?}");
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
