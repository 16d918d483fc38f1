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
//! - [`code`]: wire error codes. [`limits`]: protocol maxima. [`varint`]: integer encoding.
//!
//! Neighbours: `fovea-node` (the server) and `fovea-client` (the SDK) depend on this crate;
//! it depends on neither.

#![forbid(unsafe_code)]

pub mod balance;
pub mod code;
pub mod deframer;
pub mod frame;
pub mod headers;
pub mod limits;
pub mod outbuf;
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
