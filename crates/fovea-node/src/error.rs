//! Why a node could not start, or stopped.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Reading or writing a file failed (data dir, certificate, key).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The certificate or key is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}; is another node running there? choose another with --listen")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The admin endpoint's address cannot be bound.
    #[error("cannot serve the admin endpoint on {addr}: {source}; choose another with --admin, or --admin off")]
    AdminBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The MCP endpoint's address cannot be bound.
    #[error("cannot serve MCP on {addr}: {source}; choose another address with --mcp")]
    McpBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A stream transport's address cannot be bound.
    #[error("cannot serve {what} on {addr}: {source}; choose another address with --{flag}")]
    TransportBind {
        /// The transport (`TLS over TCP`, `WebSocket`).
        what: &'static str,
        /// The flag that sets its address.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
}
