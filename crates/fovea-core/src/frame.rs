//! The frame codec: every message of the fovea protocol, encoded and decoded.
//!
//! ```text
//! frame = length:varint  type:varint  body
//!         └─ bytes of type + body, at most MAX_FRAME
//! ```
//!
//! All integers are QUIC varints ([`crate::varint`]); `str` and `bytes` fields are
//! `len:varint` followed by that many bytes (`str` is UTF-8). Bytes after the last field a
//! receiver knows are ignored, so later protocol versions may append fields. The full
//! layout of each frame, with hex examples, is in `docs/PROTOCOL.md`; the examples there are
//! the `test_vectors` at the bottom of this file.
//!
//! Decoding never panics and never allocates more than the frame it is given: the declared
//! length is checked against the limit before anything else, and payloads, topics and
//! header blocks are [`Bytes`] slices of the input.

use bytes::{BufMut, Bytes, BytesMut};

use crate::code::ErrorCode;
use crate::headers::{HeaderError, Headers};
use crate::limits::{MAX_REALM_LEN, MAX_TEXT_LEN, MAX_TOKEN_LEN, MAX_TOPIC_LEN};
use crate::varint;

/// The protocol version this crate speaks. Sent in `HELLO` and `WELCOME`.
///
/// Version 2 added RPC (`REG` … `CANCEL`) and queue groups (the `group` field of `SUB`);
/// version 3 the `DROPPED` notice; version 4 tools: the `tool` field of `REG`, `NOTICE`
/// (progress and logs during a call) and the tool catalog (`TOOLS`, `TOOL_LIST`,
/// `TOOLS_CHANGED`); version 5 streams: `CALL` and `REQUEST`'s `flags`, `DATA` and
/// `CREDIT`; version 6 streamed messages: `PUB_STREAM`, `MSG_STREAM` and the `MESSAGE`
/// and `CUT` flags of `DATA` and `CREDIT`.
pub const VERSION: u64 = 8;

/// The first version with RPC frames and queue groups.
pub const VERSION_RPC: u64 = 2;

/// The first version whose clients receive `DROPPED`.
pub const VERSION_DROPPED: u64 = 3;

/// The first version with tools: `REG`'s `tool` field, `NOTICE` and the catalog frames.
pub const VERSION_TOOLS: u64 = 4;

/// The first version with streams: `CALL`/`REQUEST` `flags`, `DATA` and `CREDIT`.
pub const VERSION_STREAMS: u64 = 5;

/// The first version with streamed messages: `PUB_STREAM`, `MSG_STREAM`, and `DATA` and
/// `CREDIT` for them.
pub const VERSION_MESSAGE_STREAMS: u64 = 6;

/// First version whose catalog holds resources, resource templates and prompts beside
/// tools (a descriptor's `kind`), with MCP methods served by calls (§4.6).
pub const VERSION_MCP_KINDS: u64 = 7;

/// First version whose providers ask the caller's agent questions through their calls
/// (`NOTICE` kinds `QUESTION` and `REPLY`, §4.7).
pub const VERSION_QUESTIONS: u64 = 8;

/// Flags of `CALL` and `REQUEST` (v5): which directions of the call stream.
pub mod call_flags {
    /// The caller streams its request: the payload is its first part, `DATA` frames
    /// follow, the last one flagged [`super::data_flags::END`].
    pub const STREAM_REQUEST: u64 = 1;
    /// The caller accepts its answer as `DATA` frames before the `RESULT`.
    pub const STREAM_ANSWER: u64 = 2;
    /// The call may run twice: when its provider disconnects before answering (no chunk of
    /// the answer passed on), the node sends it once more, to another provider. Ignored on
    /// a call that streams its request (its chunks went to the first provider).
    pub const IDEMPOTENT: u64 = 4;
    /// Every flag this version knows; a node ignores (and does not pass on) the others.
    pub const KNOWN: u64 = STREAM_REQUEST | STREAM_ANSWER | IDEMPOTENT;
}

/// Flags of `DATA` and `CREDIT` (v5).
pub mod data_flags {
    /// The answer stream (provider to caller); without it, the request stream.
    pub const ANSWER: u64 = 1;
    /// `DATA` only: the last chunk of a request (v5) or of a message (v6).
    pub const END: u64 = 2;
    /// v6: the id names a message stream (`PUB_STREAM`, `MSG_STREAM`, `FWD_STREAM`), not a
    /// call.
    pub const MESSAGE: u64 = 4;
    /// v6, message streams: the stream is cut before its end. On `DATA` (from its sender):
    /// the message ends here, incomplete. On `CREDIT` (from its receiver): the receiver
    /// wants no more of it.
    pub const CUT: u64 = 8;
}

/// Bytes of `DATA` chunks a stream's sender may send before any `CREDIT` (v5).
pub const INITIAL_CREDIT: u64 = 256 * 1024;

/// Most credit a stream's sender may hold (granted and not yet used); a `CREDIT` that
/// would raise it further breaks the stream's rules (`FLOW_CONTROL_ERROR`). Bounds what a
/// node holds for one stream.
pub const MAX_CREDIT: u64 = 16 * 1024 * 1024;

/// The TLS ALPN protocol id. A later major version gets a new ALPN (`fovea/2`).
pub const ALPN: &[u8] = b"fovea/1";

/// Frame type codes.
pub mod kind {
    pub const HELLO: u64 = 0x01;
    pub const WELCOME: u64 = 0x02;
    pub const PING: u64 = 0x03;
    pub const PONG: u64 = 0x04;
    pub const ERROR: u64 = 0x05;
    pub const GOAWAY: u64 = 0x06;
    pub const PUB: u64 = 0x10;
    pub const SUB: u64 = 0x11;
    pub const UNSUB: u64 = 0x12;
    pub const SUBACK: u64 = 0x13;
    pub const MSG: u64 = 0x14;
    pub const DROPPED: u64 = 0x15;
    pub const PUB_STREAM: u64 = 0x16;
    pub const MSG_STREAM: u64 = 0x17;
    pub const REG: u64 = 0x20;
    pub const UNREG: u64 = 0x21;
    pub const REGACK: u64 = 0x22;
    pub const CALL: u64 = 0x23;
    pub const REQUEST: u64 = 0x24;
    pub const RESPOND: u64 = 0x25;
    pub const RESULT: u64 = 0x26;
    pub const CANCEL: u64 = 0x27;
    pub const NOTICE: u64 = 0x28;
    pub const TOOLS: u64 = 0x29;
    pub const TOOL_LIST: u64 = 0x2a;
    pub const TOOLS_CHANGED: u64 = 0x2b;
    pub const DATA: u64 = 0x2c;
    pub const CREDIT: u64 = 0x2d;
    pub const MESH_HELLO: u64 = 0x40;
    pub const DHT: u64 = 0x41;
    pub const FWD: u64 = 0x42;
    pub const BIND: u64 = 0x43;
    pub const MESH_TOOLS: u64 = 0x44;
    pub const PROBE: u64 = 0x45;
    pub const FWD_STREAM: u64 = 0x46;
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// Client → node, first frame: who I am and what I speak.
    Hello(Hello),
    /// Node → client, answer to `HELLO`: the session is open.
    Welcome(Welcome),
    /// Either way: answer with `PONG` carrying the same token, after every frame received
    /// before it has been processed.
    Ping(u64),
    /// Either way: answer to `PING`.
    Pong(u64),
    /// Node → client: one operation failed; the connection stays up.
    Error(ErrorFrame),
    /// Node → client: the node is shutting down; reconnect.
    GoAway(GoAway),
    /// Client → node: publish a message.
    Pub(Publish),
    /// Client → node: subscribe `sid` to a pattern.
    Sub(Subscribe),
    /// Client → node: end subscription `sid`.
    Unsub(u64),
    /// Node → client: subscription `sid` is active.
    SubAck(u64),
    /// Node → client: a message for subscription `sid`.
    Msg(Delivery),
    /// Node → client (v3): messages for a subscription were dropped because the
    /// connection's queue at the node was full.
    Dropped(Dropped),
    /// Client → node (v2): provide a procedure under registration id `rid`.
    Reg(Register),
    /// Client → node (v2): stop providing registration `rid`.
    Unreg(u64),
    /// Node → client (v2): registration `rid` is active.
    RegAck(u64),
    /// Client → node (v2): call a procedure.
    Call(Call),
    /// Node → provider (v2): handle a call.
    Request(Request),
    /// Provider → node (v2): the answer to a `REQUEST`.
    Respond(Respond),
    /// Node → caller (v2): the answer to a `CALL`.
    Result(CallResult),
    /// Either way (v2): caller → node, abandon call `id`; node → provider, request `id` was
    /// abandoned (cancelled or timed out) and will not be answered to anyone.
    Cancel(u64),
    /// Either way (v4), during a call: provider → node (`id` is the request id), node →
    /// caller (`id` is the call id). Progress or a log line; always before the answer.
    Notice(Notice),
    /// Client → node (v4): list the tools of the realm that this client may call.
    Tools(ToolsQuery),
    /// Node → client (v4): one page of the tool catalog, the answer to `TOOLS`.
    ToolList(ToolList),
    /// Node → client (v4): the catalog watched by `TOOLS` request `id` changed; ask again.
    ToolsChanged(u64),
    /// Either way (v5): a chunk of a streamed request or answer.
    Data(Data),
    /// Either way (v5): the receiver of a stream lets its sender send more.
    Credit(Credit),
    /// Client → node (v6): publish a message whose payload continues in `DATA` frames.
    PubStream(PubStream),
    /// Node → client (v6): a message for subscription `sid` whose payload continues in
    /// `DATA` frames.
    MsgStream(MsgStream),
    /// Node → node, first frame each way on a mesh link: who I am and the proof that I
    /// hold the mesh's credential (docs/MESH.md).
    MeshHello(MeshHello),
    /// Node → node: a Kademlia message (`fovea_core::dht::wire`) under an rpc id.
    Dht(DhtFrame),
    /// Node → node: a message published on the sender, for the receiver's local
    /// subscribers (never forwarded further).
    Fwd(Forward),
    /// Node → node: `REQUEST`s with registration id `rid` on this link are calls of
    /// `procedure` in `realm` (sent once, before the first such request).
    Bind(Bind),
    /// Node → node: the tools of `realm` whose providers are connected to the receiver,
    /// answered with a `TOOL_LIST` carrying the same id.
    MeshTools(MeshTools),
    /// Node → node: a failure detector's message (`fovea_core::failure::wire`).
    Probe(Bytes),
    /// Node → node: a streamed message published on the sender (a `FWD` whose payload
    /// continues in `DATA` frames).
    /// Boxed: the largest variant, and rare; inline it would grow every `Frame`.
    FwdStream(Box<FwdStream>),
}

/// Largest `PROBE` body: the longest message (`PING_REQ` with an IPv6 contact) is 72 bytes.
pub const MAX_PROBE: usize = 128;

/// `MESH_TOOLS` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshTools {
    pub id: u64,
    pub realm: Bytes,
}

/// `HELLO` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Highest protocol version the client speaks.
    pub version: u64,
    /// The realm to join.
    pub realm: String,
    /// The credential (may be empty).
    pub token: Bytes,
    /// A free-text client name, shown in introspection.
    pub name: String,
}

/// `WELCOME` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The version both sides will speak: the lower of the two.
    pub version: u64,
    /// The node's name.
    pub node: String,
    /// The node's id for this connection (for logs and introspection).
    pub connection_id: u64,
    /// Largest payload the node accepts.
    pub max_payload: u64,
}

/// `ERROR` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// What went wrong.
    pub code: ErrorCode,
    /// The id the failed operation carried (a sid), or 0.
    pub reference: u64,
    /// Details for humans.
    pub message: String,
}

/// `GOAWAY` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoAway {
    /// Why (normally [`ErrorCode::GoingAway`]).
    pub code: ErrorCode,
    /// Details for humans.
    pub message: String,
}

/// `PUB` fields. The topic is raw: the node validates it (so a bad topic is an `ERROR`
/// for that publish, not a broken connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: Bytes,
    pub headers: Headers,
    pub payload: Bytes,
}

/// A `PUB` frame read in place: its fields as positions in the buffer it was decoded from.
/// A node copies most messages into its subscribers' queues, and slicing the topic and
/// payload as [`Bytes`] cost two atomic increments and two decrements per message on the
/// buffer's shared count (~9% of a node in 64-byte pub/sub). [`PubAt::to_publish`] makes
/// the owned form where one is kept (mesh forwarding, queue groups).
///
/// Invariant: both ranges lie within `src` (checked as the frame was decoded).
#[derive(Debug, Clone)]
pub struct PubAt<'a> {
    src: &'a Bytes,
    topic: std::ops::Range<usize>,
    /// The message's headers (empty ones take no reference on `src`).
    pub headers: Headers,
    payload: std::ops::Range<usize>,
}

impl<'a> PubAt<'a> {
    /// The buffer the message lies in.
    pub fn src(&self) -> &'a Bytes {
        self.src
    }

    /// The topic, raw (unvalidated).
    pub fn topic(&self) -> &'a [u8] {
        self.src.get(self.topic.clone()).unwrap_or_default()
    }

    /// The payload.
    pub fn payload(&self) -> &'a [u8] {
        self.src.get(self.payload.clone()).unwrap_or_default()
    }

    /// Where the topic and the payload lie in [`PubAt::src`].
    pub fn ranges(&self) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        (self.topic.clone(), self.payload.clone())
    }

    /// The owned form, referring to the same bytes.
    pub fn to_publish(&self) -> Publish {
        Publish {
            topic: self.src.slice(self.topic.clone()),
            headers: self.headers.clone(),
            payload: self.src.slice(self.payload.clone()),
        }
    }
}

/// A `FWD` frame read in place: the message as a [`PubAt`] and the realm's position in
/// the same buffer. A node receiving a link's forwards copies most of them into its
/// subscribers' queues, so, as for `PUB`, slicing each field would cost atomic operations
/// on the buffer's shared count per message.
///
/// Invariant: `realm` lies within `msg.src()` (checked as the frame was decoded).
#[derive(Debug, Clone)]
pub struct FwdAt<'a> {
    realm: std::ops::Range<usize>,
    /// As [`Forward::groups`] (usually none: then no allocation).
    pub groups: Vec<(Bytes, Bytes)>,
    /// The topic, headers and payload.
    pub msg: PubAt<'a>,
}

impl<'a> FwdAt<'a> {
    /// The realm's wire name.
    pub fn realm(&self) -> &'a [u8] {
        self.msg.src.get(self.realm.clone()).unwrap_or_default()
    }

    /// The owned form, referring to the same bytes.
    pub fn to_forward(&self) -> Forward {
        let Publish { topic, headers, payload } = self.msg.to_publish();
        Forward { realm: self.msg.src.slice(self.realm.clone()), topic, headers, groups: self.groups.clone(), payload }
    }
}

/// `SUB` fields. The pattern is raw, validated by the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Client-chosen subscription id, non-zero, unique among the connection's active ones.
    pub sid: u64,
    pub pattern: Bytes,
    /// Queue group (v2; empty: none). Encoded only when non-empty, so a `SUB` without a
    /// group is byte-for-byte a version 1 `SUB`.
    pub group: Bytes,
}

/// `DROPPED` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// The subscription that lost messages.
    pub sid: u64,
    /// How many, since the previous `DROPPED` for it.
    pub count: u64,
}

/// Most subscriptions a `SLOW_CONSUMER` close's reason lists ([`slow_consumer_reason`]): the
/// reason must fit in one packet with the close (16 pairs of 20-digit numbers are under
/// 700 bytes).
pub const SLOW_CONSUMER_SIDS: usize = 16;

/// The reason phrase of a `SLOW_CONSUMER` close (docs/PROTOCOL.md §4): `why`, then
/// `; dropped ` and `SID=COUNT` pairs separated by spaces, the largest counts first, at
/// most [`SLOW_CONSUMER_SIDS`] and then `…`. `drops` are every message dropped per
/// subscription over the connection's life: the `DROPPED` notices still queued behind a
/// stalled stream never arrive, so the close says what was lost.
pub fn slow_consumer_reason(why: &str, mut drops: Vec<(u64, u64)>) -> String {
    drops.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut pairs: Vec<String> = drops.iter().take(SLOW_CONSUMER_SIDS).map(|(sid, n)| format!("{sid}={n}")).collect();
    if drops.len() > SLOW_CONSUMER_SIDS {
        pairs.push("…".to_owned());
    }
    format!("{why}; dropped {}", pairs.join(" "))
}

/// The `SID=COUNT` pairs of a `SLOW_CONSUMER` close's reason ([`slow_consumer_reason`]);
/// empty when it has none (an older node, or a reason of another shape).
pub fn slow_consumer_drops(reason: &str) -> Vec<(u64, u64)> {
    let Some((_, pairs)) = reason.rsplit_once("; dropped ") else { return Vec::new() };
    pairs
        .split(' ')
        .filter_map(|p| {
            let (sid, n) = p.split_once('=')?;
            Some((sid.parse().ok()?, n.parse().ok()?))
        })
        .collect()
}

/// `REG` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    /// Client-chosen registration id, non-zero, unique among the connection's active ones.
    pub rid: u64,
    pub procedure: Bytes,
    /// v4: the tool descriptor, a JSON object ([`crate::tool`]); empty for a plain
    /// procedure. Encoded only when non-empty, so a plain `REG` is byte-for-byte a v2 one.
    pub tool: Bytes,
}

/// `NOTICE` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub id: u64,
    /// [`notice::PROGRESS`] or [`notice::LOG`]; receivers ignore kinds they do not know.
    pub kind: u64,
    /// A JSON object (docs/PROTOCOL.md), at most [`MAX_NOTICE_LEN`] bytes.
    pub body: Bytes,
}

/// `NOTICE` kinds.
pub mod notice {
    /// `{"progress": number, "total"?: number, "message"?: string}`.
    pub const PROGRESS: u64 = 1;
    /// `{"level": "debug"|…|"emergency", "logger"?: string, "data": any}`.
    pub const LOG: u64 = 2;
    /// Provider → caller (v8): `{"id": number, "method": string, "params": object}`, a
    /// question for the caller's agent.
    pub const QUESTION: u64 = 3;
    /// Caller → provider (v8), on the caller's call id: `{"id": number, "result": any}` or
    /// `{"id": number, "error": {"code": number, "message": string}}`.
    pub const REPLY: u64 = 4;
}

/// The codec's bound on a name a client sends (a topic, pattern, queue group, procedure,
/// tool cursor): the frame's. The receiver validates names ([`crate::Topic`] and its
/// kin, [`crate::limits::MAX_TOPIC_LEN`]), so an over-long one is that request's error
/// (`INVALID_TOPIC`, `INVALID_PATTERN`, `INVALID_PROCEDURE`) and the connection stays:
/// the frame itself is well formed.
const CLIENT_NAME_MAX: usize = usize::MAX;

/// Largest `NOTICE` body: progress and log lines are status, not results.
pub const MAX_NOTICE_LEN: usize = 16 * 1024;

/// Largest tool descriptor in `REG`.
pub const MAX_TOOL_LEN: usize = 64 * 1024;

/// `TOOLS` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolsQuery {
    /// Client-chosen id, echoed in `TOOL_LIST` and `TOOLS_CHANGED`.
    pub id: u64,
    /// Where to continue: empty for the first page, else a `next` from `TOOL_LIST`.
    pub cursor: Bytes,
    /// Non-zero: send `TOOLS_CHANGED` with this id whenever the catalog changes, until
    /// the connection ends or a later `TOOLS` with the same id and `watch` 0.
    pub watch: u64,
}

/// `TOOL_LIST` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolList {
    pub id: u64,
    /// The cursor of the next page; empty on the last page.
    pub next: Bytes,
    /// A JSON array of `{"procedure": name, "tool": descriptor}`, in procedure order.
    pub tools: Bytes,
}

/// `CALL` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Client-chosen call id, non-zero, unique among the connection's calls in flight.
    pub call_id: u64,
    pub procedure: Bytes,
    /// Milliseconds the caller will wait, from when the node reads the frame.
    pub timeout_ms: u64,
    pub headers: Headers,
    pub payload: Bytes,
    /// v5: [`call_flags`]. Encoded only when non-zero, so a plain `CALL` is byte-for-byte
    /// a v2 one.
    pub flags: u64,
}

/// `DATA` fields (v5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// The call: its call id between the caller and its node, its request id between a
    /// node and the provider.
    pub id: u64,
    /// [`data_flags`].
    pub flags: u64,
    pub chunk: Bytes,
}

/// `CREDIT` fields (v5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credit {
    /// The call, named as in [`Data`].
    pub id: u64,
    /// [`data_flags::ANSWER`] for the answer stream (sent by the caller), else the request
    /// stream (sent by the provider).
    pub flags: u64,
    /// How many more bytes of chunks the stream's sender may send.
    pub bytes: u64,
}

/// `PUB_STREAM` fields (v6): a `PUB` whose payload is the message's first part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubStream {
    /// Publisher-chosen stream id, non-zero, unique among the connection's open publish
    /// streams; its `DATA` and `CREDIT` frames carry it.
    pub id: u64,
    pub msg: Publish,
}

/// `MSG_STREAM` fields (v6): a `MSG` whose payload is the message's first part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgStream {
    /// Node-chosen stream id, unique among the message streams open to the connection.
    pub id: u64,
    pub msg: Delivery,
}

/// `FWD_STREAM` fields (node to node): a `FWD` whose payload is the message's first part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwdStream {
    /// Chosen by the sending node, unique among its streams open on the link.
    pub id: u64,
    pub fwd: Forward,
}

/// `REQUEST` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Node-chosen id, unique among this provider connection's requests in flight.
    pub req_id: u64,
    /// The registration it is for.
    pub rid: u64,
    /// Milliseconds left before the caller's deadline, as the node forwards it.
    pub timeout_ms: u64,
    pub headers: Headers,
    pub payload: Bytes,
    /// v5: the call's [`call_flags`], sent only to providers of version 5 and only when
    /// non-zero.
    pub flags: u64,
}

/// `RESPOND` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Respond {
    pub req_id: u64,
    /// [`ErrorCode::NoError`] for success; otherwise an application code (0x1000 and up)
    /// and `payload` is the error message in UTF-8.
    pub code: ErrorCode,
    pub headers: Headers,
    pub payload: Bytes,
}

/// `RESULT` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResult {
    pub call_id: u64,
    /// [`ErrorCode::NoError`] for success; a node code (`NO_PROVIDER`, `TIMEOUT`, …) or the
    /// provider's application code otherwise, with the message in `payload`.
    pub code: ErrorCode,
    pub headers: Headers,
    pub payload: Bytes,
}

/// `MSG` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub sid: u64,
    pub topic: Bytes,
    pub headers: Headers,
    pub payload: Bytes,
}

/// `MESH_HELLO` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshHello {
    pub version: u64,
    /// The sender's node id (32 bytes: SHA-256 of its public key).
    pub node_id: Bytes,
    /// Where the sender's mesh endpoint listens, as `ip:port`.
    pub mesh_addr: String,
    /// The sender's name, for logs.
    pub name: String,
    /// Mesh-secret mode: HMAC-SHA256 over the TLS exporter of this connection; empty in
    /// certificate mode.
    pub proof: Bytes,
}

/// `FWD` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub realm: Bytes,
    pub topic: Bytes,
    pub headers: Headers,
    /// Queue groups, as `(pattern, name)`, whose one delivery for this message falls to
    /// the receiving node; its members of other groups do not get it (another node's
    /// member does). Plain subscribers always do.
    pub groups: Vec<(Bytes, Bytes)>,
    pub payload: Bytes,
}

/// Most queue groups named in one `FWD`.
pub const MAX_FWD_GROUPS: usize = 1024;

/// `BIND` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub rid: u64,
    pub realm: Bytes,
    pub procedure: Bytes,
}

/// `DHT` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtFrame {
    pub rpc: u64,
    pub body: Bytes,
}

/// Why a frame could not be decoded. Every variant is fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The declared length is over the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: u64, max: usize },
    /// A frame with length 0 (no type).
    #[error("empty frame")]
    Empty,
    /// A field runs past the end of its frame.
    #[error("truncated {field} field")]
    Truncated { field: &'static str },
    /// A field is longer than its limit.
    #[error("{field} field of {len} bytes exceeds the limit of {max}")]
    FieldTooLong { field: &'static str, len: u64, max: usize },
    /// A text field is not UTF-8.
    #[error("{field} field is not valid UTF-8")]
    NotUtf8 { field: &'static str },
    /// A frame type this version does not know (the peer ignored the negotiated version).
    #[error("unknown frame type 0x{0:x}")]
    UnknownType(u64),
    /// The header block is malformed.
    #[error("bad headers: {0}")]
    Headers(#[from] HeaderError),
}

impl DecodeError {
    /// The close code a receiver sends for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::ProtocolError,
        }
    }
}

/// Reads the length prefix at the front of `src`: the total size of the first frame
/// (prefix included), or `None` if even the prefix is incomplete.
///
/// # Errors
/// [`DecodeError::FrameTooLarge`] or [`DecodeError::Empty`] as soon as the prefix is known.
#[inline]
pub fn frame_size(src: &[u8], max_frame: usize) -> Result<Option<usize>, DecodeError> {
    let Some((len, n)) = varint::decode(src) else { return Ok(None) };
    if len > max_frame as u64 {
        return Err(DecodeError::FrameTooLarge { len, max: max_frame });
    }
    if len == 0 {
        return Err(DecodeError::Empty);
    }
    // Cannot overflow: len <= max_frame, a usize.
    Ok(Some(n + len as usize))
}

impl Frame {
    /// Decodes the first frame of `src`.
    ///
    /// Returns `Ok(None)` when `src` does not yet hold a whole frame, else the frame and the
    /// number of bytes it took. Variable-length fields are slices of `src`.
    ///
    /// # Errors
    /// [`DecodeError`] for a malformed frame; the connection must be closed with
    /// [`DecodeError::code`].
    pub fn decode(src: &Bytes, max_frame: usize) -> Result<Option<(Frame, usize)>, DecodeError> {
        let Some(total) = frame_size(src, max_frame)? else { return Ok(None) };
        if src.len() < total {
            return Ok(None);
        }
        // The prefix may use a non-minimal encoding: take its real size.
        let start = varint::decode(src).map_or(0, |(_, n)| n);
        let mut r = Reader { src, pos: start, end: total };
        let ty = r.varint("type")?;
        let frame = match ty {
            kind::HELLO => Frame::Hello(Hello {
                version: r.varint("version")?,
                realm: r.text("realm", MAX_REALM_LEN)?,
                token: r.bytes("token", MAX_TOKEN_LEN)?,
                name: r.text("name", MAX_TEXT_LEN)?,
            }),
            kind::WELCOME => Frame::Welcome(Welcome {
                version: r.varint("version")?,
                node: r.text("node", MAX_TEXT_LEN)?,
                connection_id: r.varint("connection_id")?,
                max_payload: r.varint("max_payload")?,
            }),
            kind::PING => Frame::Ping(r.varint("token")?),
            kind::PONG => Frame::Pong(r.varint("token")?),
            kind::ERROR => Frame::Error(ErrorFrame {
                code: ErrorCode::from_u64(r.varint("code")?),
                reference: r.varint("reference")?,
                message: r.text("message", MAX_TEXT_LEN)?,
            }),
            kind::GOAWAY => Frame::GoAway(GoAway {
                code: ErrorCode::from_u64(r.varint("code")?),
                message: r.text("message", MAX_TEXT_LEN)?,
            }),
            kind::PUB => Frame::Pub(r.publish()?),
            kind::SUB => Frame::Sub(Subscribe {
                sid: r.varint("sid")?,
                pattern: r.bytes("pattern", CLIENT_NAME_MAX)?,
                group: if r.is_empty() { Bytes::new() } else { r.bytes("group", CLIENT_NAME_MAX)? },
            }),
            kind::UNSUB => Frame::Unsub(r.varint("sid")?),
            kind::SUBACK => Frame::SubAck(r.varint("sid")?),
            kind::MSG => Frame::Msg(r.delivery()?),
            kind::DROPPED => Frame::Dropped(Dropped { sid: r.varint("sid")?, count: r.varint("count")? }),
            kind::REG => Frame::Reg(Register {
                rid: r.varint("rid")?,
                procedure: r.bytes("procedure", CLIENT_NAME_MAX)?,
                tool: if r.is_empty() { Bytes::new() } else { r.bytes("tool", MAX_TOOL_LEN)? },
            }),
            kind::UNREG => Frame::Unreg(r.varint("rid")?),
            kind::REGACK => Frame::RegAck(r.varint("rid")?),
            kind::CALL => Frame::Call(Call {
                call_id: r.varint("call_id")?,
                procedure: r.bytes("procedure", CLIENT_NAME_MAX)?,
                timeout_ms: r.varint("timeout_ms")?,
                headers: r.headers()?,
                payload: r.bytes("payload", usize::MAX)?,
                flags: if r.is_empty() { 0 } else { r.varint("flags")? },
            }),
            kind::REQUEST => Frame::Request(Request {
                req_id: r.varint("req_id")?,
                rid: r.varint("rid")?,
                timeout_ms: r.varint("timeout_ms")?,
                headers: r.headers()?,
                payload: r.bytes("payload", usize::MAX)?,
                flags: if r.is_empty() { 0 } else { r.varint("flags")? },
            }),
            kind::RESPOND => Frame::Respond(Respond {
                req_id: r.varint("req_id")?,
                code: ErrorCode::from_u64(r.varint("code")?),
                headers: r.headers()?,
                payload: r.bytes("payload", usize::MAX)?,
            }),
            kind::RESULT => Frame::Result(CallResult {
                call_id: r.varint("call_id")?,
                code: ErrorCode::from_u64(r.varint("code")?),
                headers: r.headers()?,
                payload: r.bytes("payload", usize::MAX)?,
            }),
            kind::CANCEL => Frame::Cancel(r.varint("id")?),
            kind::NOTICE => Frame::Notice(Notice {
                id: r.varint("id")?,
                kind: r.varint("kind")?,
                body: r.bytes("body", MAX_NOTICE_LEN)?,
            }),
            kind::TOOLS => Frame::Tools(ToolsQuery {
                id: r.varint("id")?,
                cursor: r.bytes("cursor", CLIENT_NAME_MAX)?,
                watch: r.varint("watch")?,
            }),
            kind::TOOL_LIST => Frame::ToolList(ToolList {
                id: r.varint("id")?,
                next: r.bytes("next", MAX_TOPIC_LEN)?,
                tools: r.bytes("tools", usize::MAX)?,
            }),
            kind::TOOLS_CHANGED => Frame::ToolsChanged(r.varint("id")?),
            kind::DATA => Frame::Data(Data {
                id: r.varint("id")?,
                flags: r.varint("flags")?,
                chunk: r.bytes("chunk", usize::MAX)?,
            }),
            kind::CREDIT => {
                Frame::Credit(Credit { id: r.varint("id")?, flags: r.varint("flags")?, bytes: r.varint("bytes")? })
            }
            kind::MESH_HELLO => Frame::MeshHello(MeshHello {
                version: r.varint("version")?,
                node_id: r.bytes("node_id", 32)?,
                mesh_addr: r.text("mesh_addr", MAX_TEXT_LEN)?,
                name: r.text("name", MAX_TEXT_LEN)?,
                proof: r.bytes("proof", 64)?,
            }),
            kind::DHT => Frame::Dht(DhtFrame { rpc: r.varint("rpc")?, body: r.bytes("body", usize::MAX)? }),
            kind::BIND => Frame::Bind(Bind {
                rid: r.varint("rid")?,
                realm: r.bytes("realm", MAX_REALM_LEN)?,
                procedure: r.bytes("procedure", MAX_TOPIC_LEN)?,
            }),
            kind::MESH_TOOLS => {
                Frame::MeshTools(MeshTools { id: r.varint("id")?, realm: r.bytes("realm", MAX_REALM_LEN)? })
            }
            kind::PROBE => Frame::Probe(r.bytes("body", MAX_PROBE)?),
            kind::FWD => Frame::Fwd(r.forward_at()?.to_forward()),
            kind::PUB_STREAM => Frame::PubStream(PubStream { id: r.varint("id")?, msg: r.publish()? }),
            kind::MSG_STREAM => {
                let sid = r.varint("sid")?;
                let id = r.varint("id")?;
                let msg = Delivery {
                    sid,
                    topic: r.bytes("topic", MAX_TOPIC_LEN)?,
                    headers: r.headers()?,
                    payload: r.bytes("payload", usize::MAX)?,
                };
                Frame::MsgStream(MsgStream { id, msg })
            }
            kind::FWD_STREAM => {
                Frame::FwdStream(Box::new(FwdStream { id: r.varint("id")?, fwd: r.forward_at()?.to_forward() }))
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        Ok(Some((frame, total)))
    }

    /// As [`Frame::decode`], except that a `MSG` is handed to `on_msg` (and `Ok(Some((None,
    /// n)))` returned) instead of being built into a [`Frame`]: a `Frame` is 152 bytes, and
    /// moving one out per message shows in a subscriber's profile (`memmove` under
    /// `Deframer::next_frame` and the SDK's read loop).
    ///
    /// # Errors
    /// As [`Frame::decode`].
    pub fn decode_diverting_msg(
        src: &Bytes,
        max_frame: usize,
        on_msg: &mut impl FnMut(Delivery),
    ) -> Result<Option<(Option<Frame>, usize)>, DecodeError> {
        Self::decode_diverting(src, max_frame, kind::MSG, |r| r.delivery(), on_msg)
    }

    /// As [`Frame::decode_diverting_msg`], for `PUB` (what a node receives from clients).
    ///
    /// # Errors
    /// As [`Frame::decode`].
    /// `PUB` frames go to `on_pub` read in place ([`PubAt`]), taking no reference on `src`.
    pub fn decode_diverting_pub<'s>(
        src: &'s Bytes,
        max_frame: usize,
        on_pub: &mut impl FnMut(PubAt<'s>),
    ) -> Result<Option<(Option<Frame>, usize)>, DecodeError> {
        Self::decode_diverting(src, max_frame, kind::PUB, |r| r.publish_at(), on_pub)
    }

    /// As [`Frame::decode_diverting_pub`], for `FWD` (what a node receives on a mesh
    /// link), each read in place ([`FwdAt`]).
    ///
    /// # Errors
    /// As [`Frame::decode`].
    pub fn decode_diverting_fwd<'s>(
        src: &'s Bytes,
        max_frame: usize,
        on_fwd: &mut impl FnMut(FwdAt<'s>),
    ) -> Result<Option<(Option<Frame>, usize)>, DecodeError> {
        Self::decode_diverting(src, max_frame, kind::FWD, |r| r.forward_at(), on_fwd)
    }

    fn decode_diverting<'s, T>(
        src: &'s Bytes,
        max_frame: usize,
        diverted: u64,
        read: fn(&mut Reader<'s>) -> Result<T, DecodeError>,
        on: &mut impl FnMut(T),
    ) -> Result<Option<(Option<Frame>, usize)>, DecodeError> {
        let Some(total) = frame_size(src, max_frame)? else { return Ok(None) };
        if src.len() < total {
            return Ok(None);
        }
        let start = varint::decode(src).map_or(0, |(_, n)| n);
        let mut r = Reader { src, pos: start, end: total };
        if r.varint("type")? != diverted {
            return Ok(Frame::decode(src, max_frame)?.map(|(frame, n)| (Some(frame), n)));
        }
        on(read(&mut r)?);
        Ok(Some((None, total)))
    }

    /// The frame's type code.
    pub fn kind(&self) -> u64 {
        match self {
            Frame::Hello(_) => kind::HELLO,
            Frame::Welcome(_) => kind::WELCOME,
            Frame::Ping(_) => kind::PING,
            Frame::Pong(_) => kind::PONG,
            Frame::Error(_) => kind::ERROR,
            Frame::GoAway(_) => kind::GOAWAY,
            Frame::Pub(_) => kind::PUB,
            Frame::Sub(_) => kind::SUB,
            Frame::Unsub(_) => kind::UNSUB,
            Frame::SubAck(_) => kind::SUBACK,
            Frame::Msg(_) => kind::MSG,
            Frame::Dropped(_) => kind::DROPPED,
            Frame::Reg(_) => kind::REG,
            Frame::Unreg(_) => kind::UNREG,
            Frame::RegAck(_) => kind::REGACK,
            Frame::Call(_) => kind::CALL,
            Frame::Request(_) => kind::REQUEST,
            Frame::Respond(_) => kind::RESPOND,
            Frame::Result(_) => kind::RESULT,
            Frame::Cancel(_) => kind::CANCEL,
            Frame::Notice(_) => kind::NOTICE,
            Frame::Tools(_) => kind::TOOLS,
            Frame::ToolList(_) => kind::TOOL_LIST,
            Frame::ToolsChanged(_) => kind::TOOLS_CHANGED,
            Frame::Data(_) => kind::DATA,
            Frame::Credit(_) => kind::CREDIT,
            Frame::MeshHello(_) => kind::MESH_HELLO,
            Frame::Dht(_) => kind::DHT,
            Frame::Fwd(_) => kind::FWD,
            Frame::Bind(_) => kind::BIND,
            Frame::MeshTools(_) => kind::MESH_TOOLS,
            Frame::Probe(_) => kind::PROBE,
            Frame::PubStream(_) => kind::PUB_STREAM,
            Frame::MsgStream(_) => kind::MSG_STREAM,
            Frame::FwdStream(_) => kind::FWD_STREAM,
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Frame::Pub(p) => {
                encode_pub_head(out, &p.topic, &p.headers, p.payload.len());
                out.put_slice(&p.payload);
            }
            Frame::Msg(m) => {
                encode_msg_head(out, m.sid, &m.topic, &m.headers, m.payload.len());
                out.put_slice(&m.payload);
            }
            // Every call passes through these four (two per side): the same register path.
            // Streamed calls' flags come after the payload: the general path.
            Frame::Call(c) if c.flags == 0 => encode_call(out, c),
            Frame::Request(q) if q.flags == 0 => {
                encode_numbered(out, kind::REQUEST, &[q.req_id, q.rid, q.timeout_ms], &q.headers, &q.payload);
            }
            Frame::Respond(x) => {
                encode_numbered(out, kind::RESPOND, &[x.req_id, x.code.to_u64()], &x.headers, &x.payload);
            }
            Frame::Result(x) => {
                encode_numbered(out, kind::RESULT, &[x.call_id, x.code.to_u64()], &x.headers, &x.payload);
            }
            other => {
                let mut w = Writer::default();
                other.fields(&mut w, None);
                let len = varint::size(other.kind()) + w.len;
                out.reserve(varint::size(len as u64) + len);
                varint::encode(len as u64, out);
                varint::encode(other.kind(), out);
                other.fields(&mut w, Some(out));
            }
        }
    }

    /// Encodes into a fresh buffer; for tests and cold paths.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }

    /// Walks the fields of a fixed-layout frame: counts their size into `w`, and writes them
    /// to `out` when given. One walk for both keeps size and layout from drifting apart.
    fn fields(&self, w: &mut Writer, mut out: Option<&mut BytesMut>) {
        let o = &mut out;
        match self {
            Frame::Hello(h) => {
                w.varint(o, h.version);
                w.bytes(o, h.realm.as_bytes());
                w.bytes(o, &h.token);
                w.bytes(o, h.name.as_bytes());
            }
            Frame::Welcome(x) => {
                w.varint(o, x.version);
                w.bytes(o, x.node.as_bytes());
                w.varint(o, x.connection_id);
                w.varint(o, x.max_payload);
            }
            Frame::Ping(t)
            | Frame::Pong(t)
            | Frame::Unsub(t)
            | Frame::SubAck(t)
            | Frame::Unreg(t)
            | Frame::RegAck(t)
            | Frame::Cancel(t)
            | Frame::ToolsChanged(t) => w.varint(o, *t),
            Frame::Notice(n) => {
                w.varint(o, n.id);
                w.varint(o, n.kind);
                w.bytes(o, &n.body);
            }
            Frame::Tools(t) => {
                w.varint(o, t.id);
                w.bytes(o, &t.cursor);
                w.varint(o, t.watch);
            }
            Frame::ToolList(t) => {
                w.varint(o, t.id);
                w.bytes(o, &t.next);
                w.bytes(o, &t.tools);
            }
            Frame::Error(e) => {
                w.varint(o, e.code.to_u64());
                w.varint(o, e.reference);
                w.bytes(o, e.message.as_bytes());
            }
            Frame::GoAway(g) => {
                w.varint(o, g.code.to_u64());
                w.bytes(o, g.message.as_bytes());
            }
            Frame::Sub(s) => {
                w.varint(o, s.sid);
                w.bytes(o, &s.pattern);
                if !s.group.is_empty() {
                    w.bytes(o, &s.group);
                }
            }
            Frame::Dropped(d) => {
                w.varint(o, d.sid);
                w.varint(o, d.count);
            }
            Frame::Reg(x) => {
                w.varint(o, x.rid);
                w.bytes(o, &x.procedure);
                if !x.tool.is_empty() {
                    w.bytes(o, &x.tool);
                }
            }
            Frame::MeshHello(h) => {
                w.varint(o, h.version);
                w.bytes(o, &h.node_id);
                w.bytes(o, h.mesh_addr.as_bytes());
                w.bytes(o, h.name.as_bytes());
                w.bytes(o, &h.proof);
            }
            Frame::Dht(d) => {
                w.varint(o, d.rpc);
                w.bytes(o, &d.body);
            }
            Frame::MeshTools(t) => {
                w.varint(o, t.id);
                w.bytes(o, &t.realm);
            }
            Frame::Probe(body) => w.bytes(o, body),
            Frame::Data(d) => {
                w.varint(o, d.id);
                w.varint(o, d.flags);
                w.bytes(o, &d.chunk);
            }
            Frame::Credit(c) => {
                w.varint(o, c.id);
                w.varint(o, c.flags);
                w.varint(o, c.bytes);
            }
            Frame::Call(c) => {
                w.varint(o, c.call_id);
                w.bytes(o, &c.procedure);
                w.varint(o, c.timeout_ms);
                w.headers(o, &c.headers);
                w.bytes(o, &c.payload);
                w.varint(o, c.flags);
            }
            Frame::Request(q) => {
                w.varint(o, q.req_id);
                w.varint(o, q.rid);
                w.varint(o, q.timeout_ms);
                w.headers(o, &q.headers);
                w.bytes(o, &q.payload);
                w.varint(o, q.flags);
            }
            Frame::Bind(b) => {
                w.varint(o, b.rid);
                w.bytes(o, &b.realm);
                w.bytes(o, &b.procedure);
            }
            Frame::PubStream(p) => {
                w.varint(o, p.id);
                w.bytes(o, &p.msg.topic);
                w.headers(o, &p.msg.headers);
                w.bytes(o, &p.msg.payload);
            }
            Frame::MsgStream(m) => {
                w.varint(o, m.msg.sid);
                w.varint(o, m.id);
                w.bytes(o, &m.msg.topic);
                w.headers(o, &m.msg.headers);
                w.bytes(o, &m.msg.payload);
            }
            Frame::FwdStream(f) => {
                w.varint(o, f.id);
                Frame::forward_fields(w, o, &f.fwd);
            }
            Frame::Fwd(f) => Frame::forward_fields(w, o, f),
            // Encoded by their own fast paths in `encode`.
            Frame::Pub(_) | Frame::Msg(_) | Frame::Respond(_) | Frame::Result(_) => {}
        }
    }

    /// `FWD`'s fields (also `FWD_STREAM`'s after its id).
    fn forward_fields(w: &mut Writer, o: &mut Option<&mut BytesMut>, f: &Forward) {
        w.bytes(o, &f.realm);
        w.bytes(o, &f.topic);
        w.headers(o, &f.headers);
        let groups = &f.groups[..f.groups.len().min(MAX_FWD_GROUPS)];
        w.varint(o, groups.len() as u64);
        for (pattern, name) in groups {
            w.bytes(o, pattern);
            w.bytes(o, name);
        }
        w.bytes(o, &f.payload);
    }
}

/// Appends a `PUB` frame without its payload bytes, which the caller appends (or sends by
/// reference) next: `payload_len` of them.
pub fn encode_pub_head(out: &mut BytesMut, topic: &[u8], headers: &Headers, payload_len: usize) {
    let fields = str_len(topic.len()) + headers.encoded_len() + str_len(payload_len);
    let len = varint::size(kind::PUB) + fields;
    // Varints::append_to writes a whole array before cutting it back: room for that too.
    out.reserve(varint::size(len as u64) + len - payload_len + Varints::SPAN);
    let mut head = Varints::default();
    head.push(len as u64, out);
    head.push(kind::PUB, out);
    head.push(topic.len() as u64, out);
    head.append_to(out);
    out.extend_from_slice(topic);
    encode_tail(out, headers, payload_len);
}

/// Appends a `FWD` frame naming no queue groups, without its payload bytes, which the
/// caller appends (or sends by reference) next: `payload_len` of them.
pub fn encode_fwd_head(out: &mut BytesMut, realm: &[u8], topic: &[u8], headers: &Headers, payload_len: usize) {
    let fields = str_len(realm.len()) + str_len(topic.len()) + headers.encoded_len() + 1 + str_len(payload_len);
    let len = varint::size(kind::FWD) + fields;
    out.reserve(varint::size(len as u64) + len - payload_len + Varints::SPAN);
    let mut head = Varints::default();
    head.push(len as u64, out);
    head.push(kind::FWD, out);
    head.push(realm.len() as u64, out);
    head.append_to(out);
    out.extend_from_slice(realm);
    head.push(topic.len() as u64, out);
    head.append_to(out);
    out.extend_from_slice(topic);
    if headers.is_empty() {
        // An empty header block is its zero count.
        head.push(0, out);
    } else {
        headers.write(out);
    }
    // No groups.
    head.push(0, out);
    head.push(payload_len as u64, out);
    head.append_to(out);
}

/// Appends a `DATA` frame without its chunk's bytes, which the caller appends (or sends
/// by reference) next: `chunk_len` of them.
pub fn encode_data_head(out: &mut BytesMut, id: u64, flags: u64, chunk_len: usize) {
    let len = varint::size(kind::DATA) + varint::size(id) + varint::size(flags) + str_len(chunk_len);
    out.reserve(varint::size(len as u64) + len - chunk_len);
    varint::encode(len as u64, out);
    varint::encode(kind::DATA, out);
    varint::encode(id, out);
    varint::encode(flags, out);
    varint::encode(chunk_len as u64, out);
}

/// Appends a `MSG` frame without its payload bytes, which the caller appends (or sends by
/// reference) next: `payload_len` of them.
pub fn encode_msg_head(out: &mut BytesMut, sid: u64, topic: &[u8], headers: &Headers, payload_len: usize) {
    let fields = varint::size(sid) + str_len(topic.len()) + headers.encoded_len() + str_len(payload_len);
    let len = varint::size(kind::MSG) + fields;
    // Varints::append_to writes a whole array before cutting it back: room for that too.
    out.reserve(varint::size(len as u64) + len - payload_len + Varints::SPAN);
    let mut head = Varints::default();
    head.push(len as u64, out);
    head.push(kind::MSG, out);
    head.push(sid, out);
    head.push(topic.len() as u64, out);
    head.append_to(out);
    out.extend_from_slice(topic);
    encode_tail(out, headers, payload_len);
}

/// Appends a frame whose fields are small integers, a header block and a payload
/// (`REQUEST`, `RESPOND`, `RESULT`): the layout `fields` walks for them, written through
/// the register like a message head (the walk, twice over, was ~500 instructions per call
/// at the node: `scripts/profile.sh instructions rpc`).
fn encode_numbered(out: &mut BytesMut, kind: u64, nums: &[u64], headers: &Headers, payload: &[u8]) {
    let fields = nums.iter().map(|v| varint::size(*v)).sum::<usize>() + headers.encoded_len() + str_len(payload.len());
    let len = varint::size(kind) + fields;
    out.reserve(varint::size(len as u64) + len + Varints::SPAN);
    let mut head = Varints::default();
    head.push(len as u64, out);
    head.push(kind, out);
    for v in nums {
        head.push(*v, out);
    }
    head.append_to(out);
    encode_tail(out, headers, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a `CALL`: as [`encode_numbered`], with the procedure's name after the call id.
fn encode_call(out: &mut BytesMut, c: &Call) {
    // Room for the payload too, so that the head's own reservation is the only one: five
    // varints of at most 8 bytes, the name, the headers and the register's overrun.
    out.reserve(5 * 8 + c.procedure.len() + c.headers.encoded_len() + c.payload.len() + 2 * Varints::SPAN);
    encode_call_head(out, c.call_id, &c.procedure, c.timeout_ms, &c.headers, c.payload.len());
    out.extend_from_slice(&c.payload);
}

/// Appends a `CALL` frame without its payload bytes, which the caller appends (or sends
/// by reference) next: `payload_len` of them. For a client encoding from borrowed parts,
/// as [`encode_pub_head`] for a publish.
pub fn encode_call_head(
    out: &mut BytesMut,
    call_id: u64,
    procedure: &[u8],
    timeout_ms: u64,
    headers: &Headers,
    payload_len: usize,
) {
    let fields = varint::size(call_id)
        + str_len(procedure.len())
        + varint::size(timeout_ms)
        + headers.encoded_len()
        + str_len(payload_len);
    let len = varint::size(kind::CALL) + fields;
    out.reserve(varint::size(len as u64) + len - payload_len + 2 * Varints::SPAN);
    let mut head = Varints::default();
    head.push(len as u64, out);
    head.push(kind::CALL, out);
    head.push(call_id, out);
    head.push(procedure.len() as u64, out);
    head.append_to(out);
    out.extend_from_slice(procedure);
    let mut mid = Varints::default();
    mid.push(timeout_ms, out);
    mid.append_to(out);
    encode_tail(out, headers, payload_len);
}

/// A message head's end: its header block, then the payload's length.
#[inline]
fn encode_tail(out: &mut BytesMut, headers: &Headers, payload_len: usize) {
    let mut tail = Varints::default();
    if headers.is_empty() {
        // An empty header block is its zero count.
        tail.push(0, out);
    } else {
        headers.write(out);
    }
    tail.push(payload_len as u64, out);
    tail.append_to(out);
}

/// Varints gathered in a register and appended eight bytes at a time: a message head is
/// five small fields, and writing each through `BufMut` (a capacity check and a call per
/// field) was ~4% of the node in 64-byte pub/sub. Not a byte array: bytes stored one by
/// one and then copied out as a block stall the load (no store forwarding), and copying
/// only the bytes used goes through a `memmove` call.
#[derive(Default)]
struct Varints {
    /// The pending bytes, first in the least significant byte (little-endian order).
    acc: u64,
    len: usize,
}

impl Varints {
    /// Bytes an append writes before cutting back.
    const SPAN: usize = 8;

    #[inline]
    fn push(&mut self, v: u64, out: &mut BytesMut) {
        let (word, n) = varint::to_word(v);
        if self.len + n > Self::SPAN {
            self.append_to(out);
        }
        // The encoding's n bytes, big-endian in the low bytes of `word`, reversed into
        // the low bytes of `le`; n is 1..=8, so both shifts stay below 64.
        let le = word.swap_bytes() >> (64 - 8 * n as u32);
        self.acc |= le.checked_shl(8 * self.len as u32).unwrap_or(0);
        self.len += n;
    }

    /// Appends what is gathered: all eight bytes (a fixed-size store), then cuts back.
    #[inline]
    fn append_to(&mut self, out: &mut BytesMut) {
        let keep = out.len() + self.len;
        out.put_u64_le(self.acc);
        out.truncate(keep);
        *self = Varints::default();
    }
}

fn str_len(len: usize) -> usize {
    varint::size(len as u64) + len
}

#[derive(Default)]
struct Writer {
    len: usize,
}

impl Writer {
    fn varint(&mut self, out: &mut Option<&mut BytesMut>, v: u64) {
        self.len += varint::size(v);
        if let Some(out) = out {
            varint::encode(v, *out);
        }
    }

    fn headers(&mut self, out: &mut Option<&mut BytesMut>, h: &Headers) {
        self.len += h.encoded_len();
        if let Some(out) = out {
            h.write(*out);
        }
    }

    fn bytes(&mut self, out: &mut Option<&mut BytesMut>, b: &[u8]) {
        self.varint(out, b.len() as u64);
        self.len += b.len();
        if let Some(out) = out {
            out.put_slice(b);
        }
    }
}

/// A cursor over one frame's type and body. Every read is checked.
/// Reads the fields of one frame, `src[pos..end]`. Only the fields returned as `Bytes` take
/// a reference on the buffer (one atomic increment each); numbers, text and an empty header
/// block take none.
struct Reader<'a> {
    src: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    /// The unread part of the frame (empty, never a panic, should `pos` pass `end`).
    #[inline]
    fn rest(&self) -> &[u8] {
        self.src.get(self.pos..self.end).unwrap_or_default()
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.rest().is_empty()
    }

    #[inline]
    fn varint(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let (v, n) = varint::decode(self.rest()).ok_or(DecodeError::Truncated { field })?;
        self.pos += n;
        Ok(v)
    }

    /// The next length-prefixed field's range, checked against `max` and the frame's end.
    #[inline]
    fn field(&mut self, field: &'static str, max: usize) -> Result<std::ops::Range<usize>, DecodeError> {
        let len = self.varint(field)?;
        if len > max as u64 {
            return Err(DecodeError::FieldTooLong { field, len, max });
        }
        if len > self.rest().len() as u64 {
            return Err(DecodeError::Truncated { field });
        }
        // Cannot truncate: len <= rest().len(), a usize.
        let range = self.pos..self.pos + len as usize;
        self.pos = range.end;
        Ok(range)
    }

    #[inline]
    fn bytes(&mut self, field: &'static str, max: usize) -> Result<Bytes, DecodeError> {
        let range = self.field(field, max)?;
        Ok(self.src.slice(range))
    }

    fn text(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let range = self.field(field, max)?;
        let raw = self.src.get(range).unwrap_or_default();
        std::str::from_utf8(raw).map(str::to_owned).map_err(|_| DecodeError::NotUtf8 { field })
    }

    /// A `PUB` frame's fields, after its type.
    #[inline]
    fn publish(&mut self) -> Result<Publish, DecodeError> {
        Ok(Publish {
            topic: self.bytes("topic", CLIENT_NAME_MAX)?,
            headers: self.headers()?,
            payload: self.bytes("payload", usize::MAX)?,
        })
    }

    /// A `PUB` frame's fields, after its type, in place.
    #[inline]
    fn publish_at(&mut self) -> Result<PubAt<'a>, DecodeError> {
        let topic = self.field("topic", CLIENT_NAME_MAX)?;
        let headers = self.headers()?;
        let payload = self.field("payload", usize::MAX)?;
        Ok(PubAt { src: self.src, topic, headers, payload })
    }

    /// A `FWD` frame's fields, after its type, in place.
    #[inline]
    fn forward_at(&mut self) -> Result<FwdAt<'a>, DecodeError> {
        let realm = self.field("realm", MAX_REALM_LEN)?;
        let topic = self.field("topic", MAX_TOPIC_LEN)?;
        let headers = self.headers()?;
        let n = self.varint("groups")?;
        if n > MAX_FWD_GROUPS as u64 {
            return Err(DecodeError::FieldTooLong { field: "groups", len: n, max: MAX_FWD_GROUPS });
        }
        let mut groups = Vec::new();
        for _ in 0..n {
            groups.push((self.bytes("group pattern", MAX_TOPIC_LEN)?, self.bytes("group name", MAX_TOPIC_LEN)?));
        }
        let payload = self.field("payload", usize::MAX)?;
        Ok(FwdAt { realm, groups, msg: PubAt { src: self.src, topic, headers, payload } })
    }

    /// A `MSG` frame's fields, after its type.
    #[inline]
    fn delivery(&mut self) -> Result<Delivery, DecodeError> {
        Ok(Delivery {
            sid: self.varint("sid")?,
            topic: self.bytes("topic", MAX_TOPIC_LEN)?,
            headers: self.headers()?,
            payload: self.bytes("payload", usize::MAX)?,
        })
    }

    #[inline]
    fn headers(&mut self) -> Result<Headers, DecodeError> {
        let rest = self.rest();
        // Most messages carry none: a zero count is one byte, and needs no slice.
        if rest.first() == Some(&0) {
            self.pos += 1;
            return Ok(Headers::new());
        }
        // The block is self-delimiting: find its end, then validate it as a whole.
        let (count, mut len) = varint::decode(rest).ok_or(DecodeError::Truncated { field: "headers" })?;
        for _ in 0..count.min(crate::limits::MAX_HEADERS as u64 + 1) * 2 {
            let (n, used) = varint::decode(rest.get(len..).unwrap_or_default())
                .ok_or(DecodeError::Truncated { field: "headers" })?;
            len = usize::try_from(n)
                .ok()
                .and_then(|n| len.checked_add(used)?.checked_add(n))
                .filter(|end| *end <= rest.len())
                .ok_or(DecodeError::Truncated { field: "headers" })?;
        }
        let block = self.src.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(Headers::from_encoded(block)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_consumer_reasons_round_trip() {
        let reason = slow_consumer_reason("too slow", vec![(3, 5), (1, 120), (7, 5)]);
        assert_eq!(reason, "too slow; dropped 1=120 3=5 7=5");
        assert_eq!(slow_consumer_drops(&reason), vec![(1, 120), (3, 5), (7, 5)]);
        let many: Vec<(u64, u64)> = (1..=40).map(|sid| (sid, sid)).collect();
        let reason = slow_consumer_reason("x", many);
        assert!(reason.ends_with('…') && reason.len() < 700, "{reason}");
        assert_eq!(slow_consumer_drops(&reason).len(), SLOW_CONSUMER_SIDS);
        assert!(slow_consumer_drops("closed for another reason").is_empty());
    }
    use crate::limits::MAX_FRAME;
    use proptest::prelude::*;

    fn hex(s: &str) -> Bytes {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect::<Vec<u8>>()
            .into()
    }

    fn round_trip(f: &Frame) {
        let bytes = f.to_bytes();
        let (back, n) = Frame::decode(&bytes, MAX_FRAME).unwrap().unwrap();
        assert_eq!(&back, f);
        assert_eq!(n, bytes.len());
        // Every strict prefix is "need more bytes", never an error or a panic.
        for cut in 0..bytes.len() {
            assert_eq!(Frame::decode(&bytes.slice(..cut), MAX_FRAME), Ok(None), "cut at {cut}");
        }
    }

    /// The examples in docs/PROTOCOL.md. If one of these changes, the document must too.
    #[test]
    fn test_vectors() {
        let vectors: Vec<(Frame, &str)> = vec![
            (
                Frame::Hello(Hello { version: 1, realm: "default".into(), token: Bytes::new(), name: "cli".into() }),
                "0f 01 01 07 64 65 66 61 75 6c 74 00 03 63 6c 69",
            ),
            (
                Frame::Welcome(Welcome { version: 1, node: "n1".into(), connection_id: 7, max_payload: 1_048_576 }),
                "0a 02 01 02 6e 31 07 80 10 00 00",
            ),
            (
                Frame::Pub(Publish {
                    topic: Bytes::from_static(b"sensors.temp"),
                    headers: Headers::new(),
                    payload: Bytes::from_static(b"21.5"),
                }),
                "14 10 0c 73 65 6e 73 6f 72 73 2e 74 65 6d 70 00 04 32 31 2e 35",
            ),
            (
                Frame::Sub(Subscribe { sid: 1, pattern: Bytes::from_static(b"sensors.>"), group: Bytes::new() }),
                "0c 11 01 09 73 65 6e 73 6f 72 73 2e 3e",
            ),
            (
                Frame::Sub(Subscribe {
                    sid: 2,
                    pattern: Bytes::from_static(b"jobs.>"),
                    group: Bytes::from_static(b"workers"),
                }),
                "11 11 02 06 6a 6f 62 73 2e 3e 07 77 6f 72 6b 65 72 73",
            ),
            (
                Frame::Reg(Register { rid: 1, procedure: Bytes::from_static(b"math.add"), tool: Bytes::new() }),
                "0b 20 01 08 6d 61 74 68 2e 61 64 64",
            ),
            (
                Frame::Reg(Register {
                    rid: 2,
                    procedure: Bytes::from_static(b"t.x"),
                    tool: Bytes::from_static(br#"{"description":"x"}"#),
                }),
                "1a 20 02 03 74 2e 78 13 7b 22 64 65 73 63 72 69 70 74 69 6f 6e 22 3a 22 78 22 7d",
            ),
            (
                Frame::Notice(Notice { id: 5, kind: notice::PROGRESS, body: Bytes::from_static(br#"{"progress":1}"#) }),
                "12 28 05 01 0e 7b 22 70 72 6f 67 72 65 73 73 22 3a 31 7d",
            ),
            (
                Frame::Notice(Notice {
                    id: 5,
                    kind: notice::QUESTION,
                    body: Bytes::from_static(br#"{"id":1,"method":"roots/list","params":{}}"#),
                }),
                "2e 28 05 03 2a 7b 22 69 64 22 3a 31 2c 22 6d 65 74 68 6f 64 22 3a 22 72 6f 6f 74 73 2f 6c 69 73 74 22 2c 22 70 61 72 61 6d 73 22 3a 7b 7d 7d",
            ),
            (
                Frame::Notice(Notice {
                    id: 9,
                    kind: notice::REPLY,
                    body: Bytes::from_static(br#"{"id":1,"result":{"roots":[]}}"#),
                }),
                "22 28 09 04 1e 7b 22 69 64 22 3a 31 2c 22 72 65 73 75 6c 74 22 3a 7b 22 72 6f 6f 74 73 22 3a 5b 5d 7d 7d",
            ),
            (Frame::Tools(ToolsQuery { id: 1, cursor: Bytes::new(), watch: 1 }), "04 29 01 00 01"),
            (
                Frame::ToolList(ToolList { id: 1, next: Bytes::new(), tools: Bytes::from_static(b"[]") }),
                "06 2a 01 00 02 5b 5d",
            ),
            (Frame::ToolsChanged(1), "02 2b 01"),
            (Frame::RegAck(1), "02 22 01"),
            (Frame::Unreg(1), "02 21 01"),
            (
                Frame::Call(Call {
                    call_id: 5,
                    procedure: Bytes::from_static(b"math.add"),
                    timeout_ms: 5000,
                    headers: Headers::new(),
                    payload: Bytes::from_static(b"[1,2]"),
                    flags: 0,
                }),
                "14 23 05 08 6d 61 74 68 2e 61 64 64 53 88 00 05 5b 31 2c 32 5d",
            ),
            (
                Frame::Call(Call {
                    call_id: 7,
                    procedure: Bytes::from_static(b"files.get"),
                    timeout_ms: 5000,
                    headers: Headers::new(),
                    payload: Bytes::from_static(b"a.txt"),
                    flags: call_flags::STREAM_ANSWER,
                }),
                "16 23 07 09 66 69 6c 65 73 2e 67 65 74 53 88 00 05 61 2e 74 78 74 02",
            ),
            (
                Frame::Data(Data { id: 7, flags: data_flags::ANSWER, chunk: Bytes::from_static(b"hi") }),
                "06 2c 07 01 02 68 69",
            ),
            (Frame::Data(Data { id: 5, flags: data_flags::END, chunk: Bytes::new() }), "04 2c 05 02 00"),
            (
                Frame::PubStream(PubStream {
                    id: 5,
                    msg: Publish {
                        topic: Bytes::from_static(b"log.a"),
                        headers: Headers::new(),
                        payload: Bytes::from_static(b"he"),
                    },
                }),
                "0c 16 05 05 6c 6f 67 2e 61 00 02 68 65",
            ),
            (Frame::Credit(Credit { id: 5, flags: data_flags::MESSAGE, bytes: 262_144 }), "07 2d 05 04 80 04 00 00"),
            (
                Frame::Data(Data { id: 5, flags: data_flags::MESSAGE, chunk: Bytes::from_static(b"llo ") }),
                "08 2c 05 04 04 6c 6c 6f 20",
            ),
            (
                Frame::Data(Data {
                    id: 5,
                    flags: data_flags::MESSAGE | data_flags::END,
                    chunk: Bytes::from_static(b"world"),
                }),
                "09 2c 05 06 05 77 6f 72 6c 64",
            ),
            (
                Frame::MsgStream(MsgStream {
                    id: 3,
                    msg: Delivery {
                        sid: 1,
                        topic: Bytes::from_static(b"log.a"),
                        headers: Headers::new(),
                        payload: Bytes::from_static(b"he"),
                    },
                }),
                "0d 17 01 03 05 6c 6f 67 2e 61 00 02 68 65",
            ),
            (
                Frame::Result(CallResult {
                    call_id: 7,
                    code: ErrorCode::NoError,
                    headers: Headers::new(),
                    payload: Bytes::new(),
                }),
                "05 26 07 00 00 00",
            ),
            (Frame::Credit(Credit { id: 7, flags: data_flags::ANSWER, bytes: 262_144 }), "07 2d 07 01 80 04 00 00"),
            (
                Frame::Request(Request {
                    req_id: 9,
                    rid: 1,
                    timeout_ms: 4998,
                    headers: Headers::new(),
                    payload: Bytes::from_static(b"[1,2]"),
                    flags: 0,
                }),
                "0c 24 09 01 53 86 00 05 5b 31 2c 32 5d",
            ),
            (
                Frame::Respond(Respond {
                    req_id: 9,
                    code: ErrorCode::NoError,
                    headers: Headers::new(),
                    payload: Bytes::from_static(b"3"),
                }),
                "06 25 09 00 00 01 33",
            ),
            (
                Frame::Result(CallResult {
                    call_id: 5,
                    code: ErrorCode::NoError,
                    headers: Headers::new(),
                    payload: Bytes::from_static(b"3"),
                }),
                "06 26 05 00 00 01 33",
            ),
            (
                Frame::Result(CallResult {
                    call_id: 6,
                    code: ErrorCode::NoProvider,
                    headers: Headers::new(),
                    payload: Bytes::from_static(b"none"),
                }),
                "0a 26 06 41 07 00 04 6e 6f 6e 65",
            ),
            (Frame::Cancel(5), "02 27 05"),
            (Frame::Dropped(Dropped { sid: 1, count: 300 }), "04 15 01 41 2c"),
            (
                Frame::Msg(Delivery {
                    sid: 1,
                    topic: Bytes::from_static(b"sensors.temp"),
                    headers: Headers::from_pairs([("unit", "C")]).unwrap(),
                    payload: Bytes::from_static(b"21.5"),
                }),
                "1c 14 01 0c 73 65 6e 73 6f 72 73 2e 74 65 6d 70 01 04 75 6e 69 74 01 43 04 32 31 2e 35",
            ),
            (Frame::SubAck(1), "02 13 01"),
            (Frame::Unsub(1), "02 12 01"),
            (Frame::Ping(42), "02 03 2a"),
            (Frame::Pong(42), "02 04 2a"),
            (
                Frame::Error(ErrorFrame { code: ErrorCode::InvalidPattern, reference: 3, message: "bad".into() }),
                "08 05 41 02 03 03 62 61 64",
            ),
            (Frame::GoAway(GoAway { code: ErrorCode::GoingAway, message: String::new() }), "03 06 07 00"),
        ];
        for (frame, dump) in vectors {
            let want = hex(dump);
            assert_eq!(frame.to_bytes(), want, "encoding of {frame:?}");
            let (back, n) = Frame::decode(&want, MAX_FRAME).unwrap().unwrap();
            assert_eq!(back, frame);
            assert_eq!(n, want.len());
        }
    }

    #[test]
    fn limits_checked_before_reading() {
        // Declares 2^30 bytes: refused from the prefix alone.
        let big = hex("c0 00 00 00 40 00 00 00");
        assert!(matches!(Frame::decode(&big, MAX_FRAME), Err(DecodeError::FrameTooLarge { .. })));
        assert_eq!(Frame::decode(&hex("00"), MAX_FRAME), Err(DecodeError::Empty));
        assert_eq!(Frame::decode(&hex("01 3f"), MAX_FRAME), Err(DecodeError::UnknownType(0x3f)));
        // A non-minimal length prefix is accepted, as RFC 9000 allows for varints.
        assert_eq!(Frame::decode(&hex("40 02 03 2a"), MAX_FRAME), Ok(Some((Frame::Ping(42), 4))));
        // A PUB whose payload length runs past the frame.
        assert_eq!(
            Frame::decode(&hex("05 10 01 61 00 09"), MAX_FRAME),
            Err(DecodeError::Truncated { field: "payload" })
        );
        // Trailing bytes after known fields are ignored (forward compatibility).
        assert_eq!(Frame::decode(&hex("04 03 2a ff ff"), MAX_FRAME), Ok(Some((Frame::Ping(42), 5))));
    }

    #[test]
    fn frames_round_trip() {
        round_trip(&Frame::Hello(Hello {
            version: 9,
            realm: "r".into(),
            token: Bytes::from_static(b"\0\xff"),
            name: "ü".into(),
        }));
        round_trip(&Frame::Pub(Publish {
            topic: Bytes::from_static(b"a"),
            headers: Headers::from_pairs([("k", "v"), ("k2", "v2")]).unwrap(),
            payload: Bytes::from(vec![7u8; 100_000]),
        }));
        round_trip(&Frame::MeshHello(MeshHello {
            version: 1,
            node_id: Bytes::from(vec![0xab; 32]),
            mesh_addr: "127.0.0.1:4434".into(),
            name: "n1".into(),
            proof: Bytes::from(vec![1; 32]),
        }));
        round_trip(&Frame::Dht(DhtFrame { rpc: 77, body: Bytes::from_static(b"\x01") }));
        round_trip(&Frame::MeshTools(MeshTools { id: 4, realm: Bytes::from_static(b"acme") }));
        round_trip(&Frame::Probe(Bytes::from_static(b"\x01\x07")));
        round_trip(&Frame::Notice(Notice { id: 1, kind: 9, body: Bytes::from_static(b"{}") }));
        round_trip(&Frame::Bind(Bind {
            rid: 3,
            realm: Bytes::from_static(b"acme"),
            procedure: Bytes::from_static(b"math.add"),
        }));
        round_trip(&Frame::Fwd(Forward {
            realm: Bytes::from_static(b"acme"),
            topic: Bytes::from_static(b"a.b"),
            headers: Headers::from_pairs([("k", "v")]).unwrap(),
            groups: vec![(Bytes::from_static(b"jobs.>"), Bytes::from_static(b"workers"))],
            payload: Bytes::from_static(b"hi"),
        }));
        round_trip(&Frame::FwdStream(Box::new(FwdStream {
            id: 9,
            fwd: Forward {
                realm: Bytes::from_static(b"acme"),
                topic: Bytes::from_static(b"a.b"),
                headers: Headers::from_pairs([("k", "v")]).unwrap(),
                groups: vec![(Bytes::from_static(b"jobs.>"), Bytes::from_static(b"workers"))],
                payload: Bytes::from_static(b"hi"),
            },
        })));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let src = Bytes::from(bytes);
            if let Ok(Some((f, n))) = Frame::decode(&src, 1024) {
                prop_assert!(n <= src.len());
                // Whatever decodes re-encodes to something that decodes to the same frame.
                let again = f.to_bytes();
                prop_assert_eq!(Frame::decode(&again, MAX_FRAME).unwrap().map(|x| x.0), Some(f));
            }
        }

        #[test]
        fn publish_round_trips(
            topic in "[a-z]{1,10}(\\.[a-z]{1,10}){0,4}",
            payload in proptest::collection::vec(any::<u8>(), 0..2000),
            hv in "[ -~]{0,20}",
        ) {
            let f = Frame::Pub(Publish {
                topic: Bytes::from(topic),
                headers: Headers::from_pairs([("h", hv.as_str())]).unwrap(),
                payload: Bytes::from(payload),
            });
            round_trip(&f);
        }

        /// `MSG` heads are gathered on the stack (`Varints`): every varint width (sid up to
        /// 2^62 - 1, payload lengths across 64 and 16 384) and both header forms.
        #[test]
        fn delivery_round_trips(
            sid in prop_oneof![0u64..64, 64u64..16_384, 16_384u64..(1 << 30), (1u64 << 30)..=crate::varint::MAX],
            topic in "[a-z]{1,10}(\\.[a-z]{1,10}){0,4}",
            len in prop_oneof![0usize..80, 16_000usize..16_500],
            hv in proptest::option::of("[ -~]{0,20}"),
        ) {
            let headers = match &hv {
                // Cannot fail: a plain name and a value of printable ASCII.
                Some(v) => Headers::from_pairs([("h", v.as_str())]).unwrap(),
                None => Headers::new(),
            };
            let f = Frame::Msg(Delivery { sid, topic: Bytes::from(topic), headers, payload: Bytes::from(vec![7u8; len]) });
            round_trip(&f);
        }

        /// The four frames of a call have register-gathered heads too (`encode_numbered`,
        /// `encode_call`): every varint width in every numeric field, and both header forms.
        #[test]
        fn call_frames_round_trip(
            ids in proptest::array::uniform3(prop_oneof![
                0u64..64, 64u64..16_384, 16_384u64..(1 << 30), (1u64 << 30)..=crate::varint::MAX
            ]),
            code in prop_oneof![Just(0u64), 0x100u64..0x110, 0x1000u64..(1 << 40)],
            procedure in "[a-z]{1,10}(\\.[a-z]{1,60}){0,3}",
            len in prop_oneof![0usize..80, 16_000usize..16_500],
            hv in proptest::option::of("[ -~]{0,20}"),
            flags in prop_oneof![Just(0u64), 1u64..4, 4u64..(1 << 20)],
        ) {
            let headers = match &hv {
                Some(v) => Headers::from_pairs([("h", v.as_str())]).unwrap(),
                None => Headers::new(),
            };
            let payload = Bytes::from(vec![3u8; len]);
            let code = ErrorCode::from_u64(code);
            let [a, b, c] = ids;
            let procedure = Bytes::from(procedure);
            let (h, p) = (headers.clone(), payload.clone());
            round_trip(&Frame::Call(Call { call_id: a, procedure, timeout_ms: b, headers: h, payload: p, flags }));
            let (h, p) = (headers.clone(), payload.clone());
            round_trip(&Frame::Request(Request { req_id: a, rid: b, timeout_ms: c, headers: h, payload: p, flags }));
            round_trip(&Frame::Data(Data { id: a, flags, chunk: payload.clone() }));
            round_trip(&Frame::Credit(Credit { id: b, flags, bytes: c }));
            let (h, p) = (headers.clone(), payload.clone());
            round_trip(&Frame::Respond(Respond { req_id: a, code, headers: h, payload: p }));
            round_trip(&Frame::Result(CallResult { call_id: c, code, headers, payload }));
        }
    }
}
