//! Wire error codes: one numbering for QUIC close codes and for `ERROR` frames.
//!
//! Codes below `0x100` end the connection (sent as the QUIC application close code);
//! codes from `0x100` reject one operation and leave the connection up (sent in an
//! `ERROR` frame). A receiver that meets a code it does not know treats it as a generic
//! error of its class, so new codes can be added without breaking old clients.

use std::fmt;

macro_rules! codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, $wire:literal, $text:literal; )*) => {
        /// A wire error code. See `docs/PROTOCOL.md` §"Error codes".
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $name, )*
            /// A code this version does not know; its class follows from its value.
            Unknown(u64),
        }

        impl ErrorCode {
            /// The code's number on the wire.
            pub fn to_u64(self) -> u64 {
                match self {
                    $( ErrorCode::$name => $value, )*
                    ErrorCode::Unknown(v) => v,
                }
            }

            /// The code for a number read from the wire; never fails.
            pub fn from_u64(v: u64) -> Self {
                match v {
                    $( $value => ErrorCode::$name, )*
                    other => ErrorCode::Unknown(other),
                }
            }

            /// A short description for humans.
            pub fn description(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => $text, )*
                    ErrorCode::Unknown(_) => "unknown error code",
                }
            }

            /// The code's name as written in `docs/PROTOCOL.md` (`NODE_FULL`), or `UNKNOWN`.
            pub fn name(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => $wire, )*
                    ErrorCode::Unknown(_) => "UNKNOWN",
                }
            }

            /// Every known code, for documentation and tests.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$name, )* ];
        }
    };
}

codes! {
    /// Normal close.
    NoError = 0x00, "NO_ERROR", "closed normally";
    /// A malformed or unexpected frame.
    ProtocolError = 0x01, "PROTOCOL_ERROR", "protocol error";
    /// A frame longer than the receiver's limit.
    FrameTooLarge = 0x02, "FRAME_TOO_LARGE", "frame too large";
    /// No protocol version in common.
    UnsupportedVersion = 0x03, "UNSUPPORTED_VERSION", "unsupported protocol version";
    /// The credential was refused (or the realm is unknown: the two are not told apart).
    AuthFailed = 0x04, "AUTH_FAILED", "authentication failed";
    /// `HELLO` did not arrive in time.
    HandshakeTimeout = 0x05, "HANDSHAKE_TIMEOUT", "handshake timeout";
    /// The node is at its connection limit; try another node or later.
    NodeFull = 0x06, "NODE_FULL", "node full";
    /// The node is shutting down; reconnect (to another node if there is one).
    GoingAway = 0x07, "GOING_AWAY", "node going away";
    /// The client read too slowly for too long.
    SlowConsumer = 0x08, "SLOW_CONSUMER", "slow consumer";
    /// A bug or resource failure in the node.
    InternalError = 0x09, "INTERNAL_ERROR", "internal error";
    /// A stream was opened that the protocol does not allow.
    StreamError = 0x0a, "STREAM_ERROR", "stream error";
    /// The node's configuration changed and this credential no longer admits the
    /// connection, or no longer allows one of its subscriptions or registrations.
    CredentialsRevoked = 0x0b, "CREDENTIALS_REVOKED", "credentials revoked";
    /// The topic of a `PUB` is invalid.
    InvalidTopic = 0x101, "INVALID_TOPIC", "invalid topic";
    /// The pattern of a `SUB` is invalid.
    InvalidPattern = 0x102, "INVALID_PATTERN", "invalid pattern";
    /// A `SUB`, `REG` or `CALL` reused an id that is still active on the connection.
    DuplicateId = 0x103, "DUPLICATE_ID", "id already in use";
    /// The connection holds as many subscriptions as the node allows.
    TooManySubscriptions = 0x104, "TOO_MANY_SUBSCRIPTIONS", "too many subscriptions";
    /// A payload larger than the node's `max_payload`.
    PayloadTooLarge = 0x105, "PAYLOAD_TOO_LARGE", "payload too large";
    /// The credential does not allow this operation.
    PermissionDenied = 0x106, "PERMISSION_DENIED", "permission denied";
    /// No provider is registered for the procedure (answered at once).
    NoProvider = 0x107, "NO_PROVIDER", "no provider";
    /// The call's deadline passed before a response arrived.
    Timeout = 0x108, "TIMEOUT", "timeout";
    /// The provider handling the call disconnected.
    ProviderDisconnected = 0x109, "PROVIDER_DISCONNECTED", "provider disconnected";
    /// The caller or every eligible provider is at its in-flight limit; retry later.
    Busy = 0x10a, "BUSY", "busy";
    /// The procedure name is invalid.
    InvalidProcedure = 0x10b, "INVALID_PROCEDURE", "invalid procedure";
    /// The connection holds as many registrations as the node allows.
    TooManyRegistrations = 0x10c, "TOO_MANY_REGISTRATIONS", "too many registrations";
    /// A call's `DATA` or `CREDIT` broke its stream's rules (beyond the credit, after the
    /// end, on a direction that does not stream); the call ended (v5).
    FlowControlError = 0x10d, "FLOW_CONTROL_ERROR", "stream flow control error";
    /// The call streams its request and the provider chosen speaks a protocol version
    /// without streams (v5).
    StreamsUnsupported = 0x10e, "STREAMS_UNSUPPORTED", "the provider cannot take a streamed request";
    /// The provider failed the call without a code of its own (codes from 0x1000 are the
    /// provider's own, passed through).
    ApplicationError = 0x1000, "APPLICATION_ERROR", "application error";
    /// A provider's failure with a meaning the node knows: nothing is under what the call
    /// names, e.g. an MCP resource URI (agents get `-32602`, v7).
    NotFound = 0x1001, "NOT_FOUND", "not found";
    /// A provider's failure with a meaning the node knows: the call's arguments are
    /// refused, e.g. an MCP prompt's (agents get `-32602`, v7).
    InvalidArguments = 0x1002, "INVALID_ARGUMENTS", "invalid arguments";
}

impl ErrorCode {
    /// Whether this code ends the connection (below `0x100`) rather than one operation.
    pub fn is_fatal(self) -> bool {
        self.to_u64() < 0x100
    }

    /// Whether this code belongs to a provider (`0x1000` and above): a call result carrying
    /// it is the provider's answer, not the node's.
    pub fn is_application(self) -> bool {
        self.to_u64() >= 0x1000
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:x})", self.description(), self.to_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.to_u64()), "duplicate {c:?}");
            assert_eq!(ErrorCode::from_u64(c.to_u64()), *c);
        }
        assert_eq!(ErrorCode::from_u64(0x777), ErrorCode::Unknown(0x777));
        assert!(ErrorCode::NodeFull.is_fatal());
        assert!(!ErrorCode::InvalidTopic.is_fatal());
    }
}
