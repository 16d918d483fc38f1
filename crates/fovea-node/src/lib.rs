//! # fovea-node
//!
//! The fovea node: the IO shell around [`fovea_core`]. It owns the QUIC endpoint, gives
//! every client connection its own task, and keeps the routing state that those tasks
//! share. It decides nothing about the wire format or topic matching; those are
//! `fovea-core`'s. The `fovea` binary runs it as `fovea node`; tests run it in-process.
//!
//! ```text
//!             ┌──────────── Node::run: accept loop ───────────┐
//!  QUIC ──▶   │ conn task: read → decode → route (MatchCache) │──▶ other conns' Outbound
//!             │            write ◀── own Outbound ◀───────────│◀── deliveries
//!             └────────────────────────────────────────────────┘
//! ```
//!
//! ```no_run
//! # async fn demo() -> Result<(), fovea_node::NodeError> {
//! use fovea_node::{Node, NodeConfig};
//! let mut config = NodeConfig::new("/tmp/fovea-demo");
//! config.listen = "127.0.0.1:0".parse().unwrap();
//! let node = Node::bind(config)?;
//! println!("listening on {}", node.local_addr());
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! node.run(shutdown).await
//! # }
//! ```

pub mod auth;
pub mod config;
mod error;
mod front;
mod handle;
pub mod mesh;
mod node;
mod routing;
pub use fovea_spin as spin;
mod stats;
mod sync;
mod transport;

pub use config::{
    format_duration, parse_duration, Limits, McpConfig, MeshConfig, NodeConfig, TlsFiles, DEFAULT_LISTEN, DEFAULT_REALM,
};
pub use error::NodeError;
pub use front::mcp;
pub use front::{Reloader, StatsHandle};
pub use node::Node;
pub use stats::{Stats, StatsSnapshot};
pub use transport::{quic, tls, SOCKET_BUFFER};
