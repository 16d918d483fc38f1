//! Protocol-wide maxima. Every bound a peer's input is checked against lives here, each with
//! the reason for its value. A node may configure lower limits (and announces its payload
//! limit in `WELCOME`); it never accepts more than these.

/// Longest topic or pattern, in bytes. Topics are names, not data; 1 KiB leaves room for
/// deep hierarchies with long segments while keeping trie keys and cache keys small.
pub const MAX_TOPIC_LEN: usize = 1024;

/// Most segments in a topic or pattern. Matching recurses once per segment and keeps the
/// segments of a topic in a fixed array on the stack, so depth is bounded by design.
pub const MAX_TOPIC_DEPTH: usize = 32;

/// Largest payload by default (1 MiB, as NATS). A node announces its own in `WELCOME`.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// Most header entries on one message: headers are metadata, not a second payload.
pub const MAX_HEADERS: usize = 64;

/// Largest encoded header block, in bytes.
pub const MAX_HEADERS_LEN: usize = 16 * 1024;

/// Largest frame (type and body, without the length prefix): a maximal payload plus room
/// for the topic, headers and field lengths. A longer declared length closes the
/// connection with `FRAME_TOO_LARGE` before anything is allocated.
pub const MAX_FRAME: usize = MAX_PAYLOAD + 32 * 1024;

/// Longest realm name, in bytes.
pub const MAX_REALM_LEN: usize = 64;

/// Longest credential (token) in `HELLO`, in bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Longest free-text field (client name, error message), in bytes.
pub const MAX_TEXT_LEN: usize = 1024;
