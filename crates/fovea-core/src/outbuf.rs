//! The outbound side of a connection: encoded frames waiting for the writer.
//!
//! Producers (the tasks routing messages to this connection) append frames; the
//! connection's writer takes everything at once and hands it to one stream write. That is
//! the batching of principle 4: under load a write carries many frames, at light load a
//! frame is written as soon as the writer wakes.
//!
//! Small payloads are copied into the encode buffer (one memcpy is cheaper than a
//! refcount and a separate write chunk); payloads of [`BY_REF_MIN`] bytes or more are kept
//! as references to the buffer they arrived in, so fan-out of large messages copies
//! nothing.

use bytes::{Bytes, BytesMut};

use crate::frame::{encode_call_head, encode_data_head, encode_fwd_head, encode_msg_head, encode_pub_head, Frame};
use crate::headers::Headers;

/// Payloads at least this long are queued by reference rather than copied. High: quinn
/// keeps a stream's unacknowledged data as a list of the chunks it was given and walks it
/// per packet, so a chunk per 1 KiB message made its send path the hottest code at 1 KiB
/// (`perf`: `write_stream_frames` 13%); copying 1 KiB costs tens of nanoseconds.
/// Measured: 1 KiB pub/sub 203k → 290k msgs/s.
pub const BY_REF_MIN: usize = 16 * 1024;

/// Largest encode buffer. Under glibc's mmap threshold (128 KiB), so a busy connection
/// recycles buffers from the allocator's free lists: buffers that doubled to whatever a
/// burst needed were mapped and unmapped per batch, and the page faults cost more than
/// the encoding (seen in `perf` at 1.5M msgs/s).
pub const CHUNK: usize = 64 * 1024;

/// Smallest encode buffer: what a quiet connection allocates for a frame or two.
const MIN_CHUNK: usize = 512;

/// A queue of encoded frames. Invariant: `len()` is the exact number of bytes queued.
#[derive(Debug, Default)]
pub struct OutBuf {
    /// Finished chunks, in order, before `cur`.
    chunks: Vec<Bytes>,
    /// The chunk being encoded into.
    cur: BytesMut,
    len: usize,
    /// Capacity of the next encode buffer: doubles while batches fill their buffers, up to
    /// [`CHUNK`], and halves when they come out small, so a quiet connection holds (and
    /// pins in its transport's unacknowledged data) little.
    next_cap: usize,
}

impl OutBuf {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for `need` more bytes in the encode buffer, starting a new one when the
    /// current one is full.
    fn room(&mut self, need: usize) {
        if self.cur.capacity() - self.cur.len() < need {
            if !self.cur.is_empty() {
                self.chunks.push(self.cur.split().freeze());
                self.next_cap = (self.next_cap * 2).min(CHUNK);
            }
            self.next_cap = self.next_cap.max(MIN_CHUNK);
            self.cur = BytesMut::with_capacity(self.next_cap.max(need));
        }
    }

    /// Upper bound of a frame head's size besides its topic and headers: type, length,
    /// sid and three length prefixes, each a varint of at most 8 bytes, and the 8 bytes
    /// the head encoder may write past its end before cutting back (`frame::Varints`).
    const HEAD: usize = 48 + 8;

    /// Queues any frame.
    pub fn push_frame(&mut self, frame: &Frame) {
        // Control frames are small; their size is not known before encoding, and
        // BytesMut grows the buffer if this estimate is short.
        self.room(256);
        let before = self.cur.len();
        frame.encode(&mut self.cur);
        self.len += self.cur.len() - before;
    }

    /// Queues a `MSG` frame.
    pub fn push_msg(&mut self, sid: u64, topic: &[u8], headers: &Headers, payload: &Bytes) {
        self.push_msg_from(sid, topic, headers, payload, 0..payload.len());
    }

    /// Queues a `MSG` frame whose payload is `buf[payload]` (a message read in place):
    /// copied like any small payload, and sliced from `buf` only when it is queued by
    /// reference. An out-of-range `payload` (a caller's bug) queues an empty one.
    pub fn push_msg_from(
        &mut self,
        sid: u64,
        topic: &[u8],
        headers: &Headers,
        buf: &Bytes,
        payload: std::ops::Range<usize>,
    ) {
        debug_assert!(payload.end <= buf.len(), "payload range outside its buffer");
        let payload = buf.get(payload).unwrap_or_default();
        self.room(Self::HEAD + topic.len() + headers.encoded_len() + inline_len(payload));
        let before = self.cur.len();
        encode_msg_head(&mut self.cur, sid, topic, headers, payload.len());
        self.len += self.cur.len() - before;
        self.push_payload(buf, payload);
    }

    /// Queues a `FWD` frame naming no queue groups, whose payload lies within `buf` (a
    /// mesh link's run of forwards).
    pub fn push_fwd_from(
        &mut self,
        realm: &[u8],
        topic: &[u8],
        headers: &Headers,
        buf: &Bytes,
        payload: std::ops::Range<usize>,
    ) {
        debug_assert!(payload.end <= buf.len(), "payload range outside its buffer");
        let payload = buf.get(payload).unwrap_or_default();
        self.room(Self::HEAD + realm.len() + topic.len() + headers.encoded_len() + inline_len(payload));
        let before = self.cur.len();
        encode_fwd_head(&mut self.cur, realm, topic, headers, payload.len());
        self.len += self.cur.len() - before;
        self.push_payload(buf, payload);
    }

    /// Queues a `DATA` frame (v5): a stream's chunk, by reference from the buffer it was
    /// read into when it is large, as a message's payload is.
    pub fn push_data(&mut self, id: u64, flags: u64, chunk: &Bytes) {
        self.room(Self::HEAD + inline_len(chunk));
        let before = self.cur.len();
        encode_data_head(&mut self.cur, id, flags, chunk.len());
        self.len += self.cur.len() - before;
        self.push_payload(chunk, chunk);
    }

    /// Queues a `PUB` frame.
    pub fn push_pub(&mut self, topic: &[u8], headers: &Headers, payload: &Bytes) {
        self.room(Self::HEAD + topic.len() + headers.encoded_len() + inline_len(payload));
        let before = self.cur.len();
        encode_pub_head(&mut self.cur, topic, headers, payload.len());
        self.len += self.cur.len() - before;
        self.push_payload(payload, payload);
    }

    /// Queues a `CALL` frame from borrowed parts (a client's call: the procedure name as
    /// the application gave it, validated, and not copied twice).
    pub fn push_call(&mut self, call_id: u64, procedure: &[u8], timeout_ms: u64, headers: &Headers, payload: &Bytes) {
        self.room(Self::HEAD + 8 + procedure.len() + headers.encoded_len() + inline_len(payload));
        let before = self.cur.len();
        encode_call_head(&mut self.cur, call_id, procedure, timeout_ms, headers, payload.len());
        self.len += self.cur.len() - before;
        self.push_payload(payload, payload);
    }

    /// Appends `payload`, which lies within `buf`: copied, or at [`BY_REF_MIN`] bytes and
    /// more queued as a slice of `buf`.
    fn push_payload(&mut self, buf: &Bytes, payload: &[u8]) {
        self.len += payload.len();
        if payload.len() >= BY_REF_MIN {
            if !self.cur.is_empty() {
                self.chunks.push(self.cur.split().freeze());
            }
            self.chunks.push(buf.slice_ref(payload));
        } else {
            self.cur.extend_from_slice(payload);
        }
    }

    /// Moves the oldest part of the queue, in order, to the end of `into`: whole chunks
    /// while fewer than `max` bytes are taken (at least one), or everything, as
    /// [`OutBuf::take_into`], if that is under `max`. Returns whether the queue is now
    /// empty. Lets a writer hand over a long backlog in steps, so that the queue shrinks
    /// as the reader takes it rather than all at once at the end.
    pub fn take_some_into(&mut self, into: &mut Vec<Bytes>, max: usize) -> bool {
        let (mut n, mut taken) = (0, 0);
        for chunk in &self.chunks {
            if n > 0 && taken >= max {
                break;
            }
            taken += chunk.len();
            n += 1;
        }
        // Everything when the rest is small, and when there is no finished chunk to take
        // (then the chunk being encoded goes, whatever its size).
        if n == self.chunks.len() && (n == 0 || taken + self.cur.len() <= max) {
            self.take_into(into);
            return true;
        }
        into.extend(self.chunks.drain(..n));
        self.len -= taken;
        false
    }

    /// Moves everything queued, in order, to the end of `into`, leaving the queue empty
    /// and holding no buffer.
    pub fn take_into(&mut self, into: &mut Vec<Bytes>) {
        into.append(&mut self.chunks);
        let used = self.cur.len();
        if used > 0 {
            // The whole buffer goes: spare capacity kept here would stay allocated for as
            // long as the transport holds the frozen part, and after it on an idle
            // connection.
            into.push(std::mem::take(&mut self.cur).freeze());
        }
        if used < self.next_cap / 4 {
            self.next_cap = (self.next_cap / 2).max(MIN_CHUNK);
        }
        self.len = 0;
    }
}

/// Bytes of `payload` that go into the encode buffer (none if it is queued by reference).
fn inline_len(payload: &[u8]) -> usize {
    if payload.len() >= BY_REF_MIN {
        0
    } else {
        payload.len()
    }
}

/// Cuts `chunks`, consecutive pieces of a byte stream, into messages of at most `max`
/// bytes (`max` ≥ 1) for a transport that frames messages (WebSocket, docs/PROTOCOL.md
/// §1.2): small chunks share a message, a large one is spread over several, wherever the
/// cuts fall. A lone chunk that fits goes on as it is, without a copy. Empties `chunks`.
pub fn cut_messages(chunks: &mut [Bytes], max: usize) -> Vec<Bytes> {
    let max = max.max(1);
    if let [one] = chunks {
        if one.len() <= max {
            return vec![std::mem::take(one)];
        }
    }
    let mut out = Vec::new();
    let mut joined = BytesMut::new();
    for chunk in chunks.iter_mut() {
        let mut c = std::mem::take(chunk);
        while !c.is_empty() {
            let take = (max - joined.len()).min(c.len());
            joined.extend_from_slice(&c.split_to(take));
            if joined.len() == max {
                out.push(joined.split().freeze());
            }
        }
    }
    if !joined.is_empty() {
        out.push(joined.freeze());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deframer::Deframer;
    use crate::frame::Delivery;
    use crate::limits::MAX_FRAME;

    proptest::proptest! {
        /// Taking in steps hands over the same bytes in the same order as taking all at
        /// once, never an empty step while something is queued, and `len` stays exact.
        #[test]
        fn taking_in_steps_keeps_every_byte_in_order(
            sizes in proptest::collection::vec(0usize..40_000, 0..60),
            max in 1usize..200_000,
        ) {
            let (mut all, mut steps) = (OutBuf::new(), OutBuf::new());
            for (i, len) in sizes.iter().enumerate() {
                let payload = Bytes::from(vec![i as u8; *len]);
                all.push_msg(i as u64 + 1, b"t.x", &Headers::new(), &payload);
                steps.push_msg(i as u64 + 1, b"t.x", &Headers::new(), &payload);
            }
            let mut want = Vec::new();
            all.take_into(&mut want);
            let mut got = Vec::new();
            loop {
                let before = (steps.len(), got.len());
                let empty = steps.take_some_into(&mut got, max);
                let moved: usize = got[before.1..].iter().map(Bytes::len).sum();
                proptest::prop_assert_eq!(before.0 - steps.len(), moved);
                proptest::prop_assert!(moved > 0 || before.0 == 0);
                if empty {
                    proptest::prop_assert_eq!(steps.len(), 0);
                    break;
                }
            }
            proptest::prop_assert_eq!(got.concat(), want.concat());
        }
    }

    /// One header `h` with `value`, or none.
    fn one_header(value: &Option<String>) -> Headers {
        match value {
            Some(v) => Headers::from_pairs([("h", v.as_str())]).unwrap(),
            None => Headers::new(),
        }
    }

    /// Everything `q` queued, checked to add up to what it counted.
    fn taken(mut q: OutBuf) -> Vec<Bytes> {
        let queued = q.len();
        let mut chunks = Vec::new();
        q.take_into(&mut chunks);
        assert_eq!(chunks.iter().map(Bytes::len).sum::<usize>(), queued);
        chunks
    }

    proptest::proptest! {
        /// A call queued from its parts is the `CALL` frame itself, whatever its sizes; a
        /// large payload goes by reference.
        #[test]
        fn a_call_queued_from_parts_decodes_to_the_frame(
            call_id in 0u64..=crate::varint::MAX,
            timeout_ms in 0u64..=crate::varint::MAX,
            procedure in "[a-z]{1,10}(\\.[a-z]{1,60}){0,3}",
            len in proptest::prop_oneof![0usize..80, 16_000usize..17_000],
            header in proptest::option::of("[ -~]{0,20}"),
        ) {
            let headers = one_header(&header);
            let payload = Bytes::from(vec![7u8; len]);
            let mut q = OutBuf::new();
            q.push_call(call_id, procedure.as_bytes(), timeout_ms, &headers, &payload);
            let chunks = taken(q);
            proptest::prop_assert_eq!(chunks.iter().any(|c| c.as_ptr() == payload.as_ptr()), len >= BY_REF_MIN);
            let mut d = Deframer::new(MAX_FRAME);
            for c in chunks {
                d.push(c);
            }
            let want = Frame::Call(crate::frame::Call {
                call_id,
                procedure: Bytes::from(procedure),
                timeout_ms,
                headers,
                payload,
                flags: 0,
            });
            proptest::prop_assert_eq!(d.next_frame().unwrap(), Some(want));
            proptest::prop_assert_eq!(d.next_frame().unwrap(), None);
        }
    }

    proptest::proptest! {
        /// A forward queued from its parts is the `FWD` frame itself, and read in place it
        /// gives back the same fields.
        #[test]
        fn a_forward_queued_from_parts_decodes_to_the_frame(
            realm in "[a-z]{0,12}",
            topic in "[a-z]{1,10}(\\.[a-z]{1,60}){0,3}",
            len in proptest::prop_oneof![0usize..80, 16_000usize..17_000],
            header in proptest::option::of("[ -~]{0,20}"),
        ) {
            let headers = one_header(&header);
            let payload = Bytes::from(vec![7u8; len]);
            let mut q = OutBuf::new();
            q.push_fwd_from(realm.as_bytes(), topic.as_bytes(), &headers, &payload, 0..len);
            let chunks = taken(q);
            let want = crate::frame::Forward {
                realm: Bytes::from(realm.clone()),
                topic: Bytes::from(topic.clone()),
                headers: headers.clone(),
                groups: Vec::new(),
                payload: payload.clone(),
            };
            let mut d = Deframer::new(MAX_FRAME);
            for c in &chunks {
                d.push(c.clone());
            }
            proptest::prop_assert_eq!(d.next_frame().unwrap(), Some(Frame::Fwd(want.clone())));
            let mut d = Deframer::new(MAX_FRAME);
            for c in chunks {
                d.push(c);
            }
            let mut seen = Vec::new();
            proptest::prop_assert_eq!(d.next_frame_or_fwds(|f| {
                seen.push((f.realm().to_vec(), f.msg.topic().to_vec(), f.msg.payload().len(), f.to_forward()));
            }).unwrap(), None);
            proptest::prop_assert_eq!(seen, vec![(realm.into_bytes(), topic.into_bytes(), len, want)]);
        }
    }

    #[test]
    fn queued_frames_decode_in_order() {
        let mut q = OutBuf::new();
        let small = Bytes::from_static(b"hi");
        let big = Bytes::from(vec![9u8; 20_000]);
        q.push_msg(1, b"a.b", &Headers::new(), &small);
        q.push_msg(2, b"a.c", &Headers::new(), &big);
        q.push_frame(&Frame::Ping(3));
        q.push_data(4, crate::frame::data_flags::ANSWER, &big);
        q.push_data(5, crate::frame::data_flags::END, &small);
        let expected_len = q.len();
        let mut chunks = Vec::new();
        q.take_into(&mut chunks);
        assert!(q.is_empty());
        assert_eq!(chunks.iter().map(Bytes::len).sum::<usize>(), expected_len);
        assert!(chunks.iter().any(|c| c.as_ptr() == big.as_ptr()), "large payload must be queued by reference");
        let mut d = Deframer::new(MAX_FRAME);
        for c in chunks {
            d.push(c);
        }
        let mut got = Vec::new();
        while let Some(f) = d.next_frame().unwrap() {
            got.push(f);
        }
        assert_eq!(
            got,
            vec![
                Frame::Msg(Delivery {
                    sid: 1,
                    topic: Bytes::from_static(b"a.b"),
                    headers: Headers::new(),
                    payload: small.clone()
                }),
                Frame::Msg(Delivery {
                    sid: 2,
                    topic: Bytes::from_static(b"a.c"),
                    headers: Headers::new(),
                    payload: big.clone()
                }),
                Frame::Ping(3),
                Frame::Data(crate::frame::Data { id: 4, flags: crate::frame::data_flags::ANSWER, chunk: big }),
                Frame::Data(crate::frame::Data { id: 5, flags: crate::frame::data_flags::END, chunk: small }),
            ]
        );
    }

    proptest::proptest! {
        /// Whatever the mix of sizes and wherever the writer takes, the bytes taken decode
        /// to the frames pushed, in order, and `len()` counts them exactly.
        #[test]
        fn any_pushes_and_takes_round_trip(ops in proptest::collection::vec((0usize..40_000, proptest::bool::ANY), 1..100)) {
            let mut q = OutBuf::new();
            let (mut taken, mut expected, mut queued) = (Vec::new(), Vec::new(), 0usize);
            for (i, (size, take)) in ops.into_iter().enumerate() {
                let payload = Bytes::from(vec![i as u8; size]);
                q.push_msg(i as u64, b"t.x", &Headers::new(), &payload);
                expected.push(Frame::Msg(Delivery {
                    sid: i as u64,
                    topic: Bytes::from_static(b"t.x"),
                    headers: Headers::new(),
                    payload,
                }));
                if take {
                    queued += q.len();
                    q.take_into(&mut taken);
                    proptest::prop_assert!(q.is_empty());
                }
            }
            queued += q.len();
            q.take_into(&mut taken);
            proptest::prop_assert_eq!(taken.iter().map(Bytes::len).sum::<usize>(), queued);
            let mut d = Deframer::new(MAX_FRAME);
            let mut got = Vec::new();
            for c in taken {
                d.push(c);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            proptest::prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn messages_are_cut_at_the_limit_and_keep_every_byte_in_order() {
        let lone = Bytes::from_static(b"abc");
        let out = super::cut_messages(&mut [lone.clone()], 4);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_ptr(), lone.as_ptr(), "a lone chunk that fits is not copied");
        let mut chunks: Vec<Bytes> =
            [&b"ab"[..], b"cdefg", b"h", b"ijklmnopq"].iter().map(|c| Bytes::copy_from_slice(c)).collect();
        let out = super::cut_messages(&mut chunks, 4);
        assert!(out.iter().all(|m| !m.is_empty() && m.len() <= 4));
        assert_eq!(out.concat(), b"abcdefghijklmnopq");
        assert!(chunks.iter().all(Bytes::is_empty));
        assert!(super::cut_messages(&mut [], 4).is_empty());
    }
}
