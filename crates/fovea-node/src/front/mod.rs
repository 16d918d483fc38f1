//! Front ends: what clients, agents and operators talk to. Each turns its own protocol
//! into routing's operations.

pub(crate) mod admin;
pub mod mcp;
pub(crate) mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::auth::{self, AuthLimiter};
use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::routing::Router;
use crate::stats::StatsSnapshot;
use crate::transport::quic::EndpointStats;

/// What every front end of the node shares: the configuration, routing, and the state
/// of sessions (admission, the live connections the admin endpoint lists).
pub(crate) struct Shared {
    pub config: NodeConfig,
    pub router: Arc<Router>,
    /// Bumped by each configuration reload; sessions re-check their credential on change.
    pub config_generation: tokio::sync::watch::Sender<u64>,
    pub next_conn_id: AtomicU64,
    /// Failed authentications per source address.
    pub auth_limiter: AuthLimiter,
    /// Live sessions, for the admin endpoint. At most `max_connections` entries.
    pub conns: Mutex<HashMap<u64, Arc<admin::ConnInfo>>>,
    /// Set when shutdown begins: `/ready` then says so.
    pub draining: AtomicBool,
    /// When the node started.
    pub started: Instant,
    /// The address actually bound.
    pub listen: SocketAddr,
    /// The MCP front end, once serving.
    pub mcp: OnceLock<Arc<mcp::McpState>>,
    /// The client endpoint's gauges and limit counters.
    pub quic: Arc<EndpointStats>,
    /// The stream transports' URLs (`tls://…`, `ws://…`, `wss://…`), for the dashboard.
    pub stream_urls: Vec<String>,
}

/// Reloads realms, users and permissions without a restart (see `Node::reloader`).
#[derive(Clone)]
pub struct Reloader(pub(crate) Arc<Shared>);

impl Reloader {
    /// Replaces every realm's users with those in `realms`. New realms are added; a realm
    /// missing from `realms` admits nobody from now on. Every connection then checks its
    /// credential again: one that is no longer admitted, or whose subscriptions or
    /// registrations are no longer allowed, is closed with `CREDENTIALS_REVOKED`; the
    /// others carry on with their new permissions.
    ///
    /// # Errors
    /// [`NodeError::Config`] if the node runs without configured realms (open mode).
    pub fn reload(&self, realms: &[auth::RealmConfig]) -> Result<(), NodeError> {
        if self.0.config.realms.is_none() {
            return Err(NodeError::Config(
                "this node runs open (no --config): there are no credentials to reload".into(),
            ));
        }
        self.0.router.readmit(realms.iter().map(|r| (r.name.clone(), auth::Admission::users(r))).collect());
        self.0.config_generation.send_modify(|g| *g += 1);
        tracing::info!(realms = realms.len(), "credentials reloaded");
        Ok(())
    }
}

/// Read access to a node's counters.
#[derive(Clone)]
pub struct StatsHandle(pub(crate) Arc<Shared>);

impl StatsHandle {
    /// A consistent-enough copy of every counter (each is read atomically on its own).
    pub fn snapshot(&self) -> StatsSnapshot {
        let realms = self.0.router.realms();
        let subscriptions = realms.values().map(|r| r.subscription_count() as u64).sum();
        let registrations = realms.values().map(|r| r.registration_count() as u64).sum();
        drop(realms);
        self.0.router.stats.snapshot(subscriptions, registrations)
    }
}
