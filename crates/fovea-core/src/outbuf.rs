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

use crate::frame::{encode_msg_head, encode_pub_head, Frame};
use crate::headers::Headers;

/// Payloads at least this long are queued by reference rather than copied.
pub const BY_REF_MIN: usize = 1024;

/// A queue of encoded frames. Invariant: `len()` is the exact number of bytes queued.
#[derive(Debug, Default)]
pub struct OutBuf {
    /// Finished chunks, in order, before `cur`.
    chunks: Vec<Bytes>,
    /// The chunk being encoded into.
    cur: BytesMut,
    len: usize,
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

    /// Queues any frame.
    pub fn push_frame(&mut self, frame: &Frame) {
        let before = self.cur.len();
        frame.encode(&mut self.cur);
        self.len += self.cur.len() - before;
    }

    /// Queues a `MSG` frame.
    pub fn push_msg(&mut self, sid: u64, topic: &[u8], headers: &Headers, payload: &Bytes) {
        let before = self.cur.len();
        encode_msg_head(&mut self.cur, sid, topic, headers, payload.len());
        self.len += self.cur.len() - before;
        self.push_payload(payload);
    }

    /// Queues a `PUB` frame.
    pub fn push_pub(&mut self, topic: &[u8], headers: &Headers, payload: &Bytes) {
        let before = self.cur.len();
        encode_pub_head(&mut self.cur, topic, headers, payload.len());
        self.len += self.cur.len() - before;
        self.push_payload(payload);
    }

    fn push_payload(&mut self, payload: &Bytes) {
        self.len += payload.len();
        if payload.len() >= BY_REF_MIN {
            if !self.cur.is_empty() {
                self.chunks.push(self.cur.split().freeze());
            }
            self.chunks.push(payload.clone());
        } else {
            self.cur.extend_from_slice(payload);
        }
    }

    /// Moves everything queued, in order, to the end of `into`, leaving the queue empty.
    /// The encode buffer's spare capacity stays for reuse.
    pub fn take_into(&mut self, into: &mut Vec<Bytes>) {
        into.append(&mut self.chunks);
        if !self.cur.is_empty() {
            into.push(self.cur.split().freeze());
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deframer::Deframer;
    use crate::frame::Delivery;
    use crate::limits::MAX_FRAME;

    #[test]
    fn queued_frames_decode_in_order() {
        let mut q = OutBuf::new();
        let small = Bytes::from_static(b"hi");
        let big = Bytes::from(vec![9u8; 5000]);
        q.push_msg(1, b"a.b", &Headers::new(), &small);
        q.push_msg(2, b"a.c", &Headers::new(), &big);
        q.push_frame(&Frame::Ping(3));
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
                    payload: small
                }),
                Frame::Msg(Delivery {
                    sid: 2,
                    topic: Bytes::from_static(b"a.c"),
                    headers: Headers::new(),
                    payload: big
                }),
                Frame::Ping(3),
            ]
        );
    }
}
