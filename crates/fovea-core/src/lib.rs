//! # fovea-core
//!
//! The sans-IO heart of fovea: everything that decides *what* happens, with nothing that
//! decides *when* or *where*. No async runtime, no sockets, no clock, no threads: the node
//! (`fovea-node`) and the SDK (`fovea-client`) are thin IO shells around these types, and
//! tests, property tests and fuzzers drive them directly.
//!
//! ```text
//!   bytes from a QUIC stream ──▶ Deframer ──▶ Frame ──▶ (node/client logic)
//!                                                           │
//!   Topic / Pattern ◀── parse once at the edge              ▼
//!   SubTrie<V>: pattern → subscribers, matched per topic   OutBuf ──▶ bytes to a stream
//! ```
//!
//! - [`frame`]: every protocol message, encode and decode (`docs/PROTOCOL.md`).
//! - [`deframer`]: reassembles frames from stream chunks without copying payloads.
//! - [`outbuf`]: batches encoded frames for one write.
//! - [`topic`]: validated [`Topic`] and [`Pattern`] newtypes.
//! - [`trie`]: the subscription index.
//! - [`balance`]: the procedure registry and power-of-two-choices balancing.
//! - [`dht`]: Kademlia for the mesh (routing table, lookups, records), driven by the node.
//! - [`discovery`]: which nodes want which topics and provide which procedures, over the DHT.
//! - [`deadline`]: call deadlines, filed once and never unfiled.
//! - [`headers`]: message headers, kept encoded until read.
//! - [`tool`]: tool descriptors, the procedure ↔ tool-name mapping, MCP result conversion.
//! - [`path`]: which QUIC settings a path gets (loopback or network).
//! - [`code`]: wire error codes. [`limits`]: protocol maxima. [`varint`]: integer encoding.
//!
//! Neighbours: `fovea-node` (the server) and `fovea-client` (the SDK) depend on this crate;
//! it depends on neither.

#![forbid(unsafe_code)]

pub mod balance;
pub mod code;
pub mod deadline;
pub mod deframer;
pub mod dht;
pub mod discovery;
pub mod duration;
pub mod failure;
pub mod frame;
pub mod hashing;
pub mod headers;
pub mod limits;
pub mod outbuf;
pub mod path;
pub mod tool;
pub mod topic;
pub mod trie;
pub mod varint;

pub use code::ErrorCode;
pub use deframer::Deframer;
pub use frame::{DecodeError, Frame};
pub use headers::Headers;
pub use outbuf::OutBuf;
pub use topic::{Pattern, Procedure, Topic, TopicError};
pub use trie::SubTrie;

/// Entry points for the fuzz targets in `fuzz/` and for the test that replays their
/// corpora. Each must never panic, whatever the input; a panic is a bug.
#[doc(hidden)]
pub mod fuzzing {
    use bytes::Bytes;

    use crate::limits::MAX_FRAME;
    use crate::{Deframer, Frame, Pattern, Procedure, Topic};

    /// Feeds `data` to a deframer in chunks whose sizes come from the data itself, and
    /// checks that every frame that decodes re-encodes to an equal frame.
    pub fn frames(data: &[u8]) {
        let Some((&split, rest)) = data.split_first() else { return };
        let rest = Bytes::copy_from_slice(rest);
        let step = usize::from(split).max(1);
        let mut d = Deframer::new(MAX_FRAME);
        let mut pos = 0;
        while pos < rest.len() {
            let end = (pos + step).min(rest.len());
            d.push(rest.slice(pos..end));
            pos = end;
            loop {
                match d.next_frame() {
                    Ok(Some(f)) => {
                        let again = f.to_bytes();
                        let back = Frame::decode(&again, MAX_FRAME).ok().flatten().map(|(f, _)| f);
                        assert_eq!(back.as_ref(), Some(&f), "a decoded frame must round-trip");
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    }

    /// Decodes `data` as a DHT message; whatever decodes must survive encode → decode unchanged.
    pub fn dht(data: &[u8]) {
        if let Ok(msg) = crate::dht::wire::decode(Bytes::copy_from_slice(data)) {
            let mut out = bytes::BytesMut::new();
            crate::dht::wire::encode(&msg, &mut out);
            assert_eq!(crate::dht::wire::decode(out.freeze()).as_ref(), Ok(&msg), "a DHT message must round-trip");
        }
    }

    /// Parses `data` as a topic, a pattern and a procedure name, and checks the relations
    /// between them.
    pub fn names(data: &[u8]) {
        let raw = Bytes::copy_from_slice(data);
        let topic = Topic::from_bytes(raw.clone());
        let pattern = Pattern::from_bytes(raw.clone());
        let procedure = Procedure::from_bytes(raw);
        assert_eq!(topic.is_ok(), procedure.is_ok(), "procedures follow the topic rules");
        if let Ok(t) = &topic {
            let literal = pattern.as_ref().is_ok_and(|p| p.matches(t) && p.is_literal());
            assert!(literal, "every topic is a literal pattern that matches it");
        }
        if let Ok(p) = &pattern {
            assert!(p.covers(p), "a pattern covers itself");
        }
    }
}

/// How many ack-eliciting QUIC packets a peer of a client connection may receive before it
/// must acknowledge (the ACK frequency extension's threshold; QUIC's own default is 1, an
/// ACK for every second packet). Both ends ask it of each other. 8 measured best of 1, 8
/// and 16–32 for many-caller RPC and no worse for pub/sub (BENCHMARKS.md, "QUIC settings").
pub const ACK_ELICITING_THRESHOLD: u32 = 8;
