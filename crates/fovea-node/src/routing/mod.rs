//! Routing state shared by all connection tasks of a node, and the per-connection match
//! cache that keeps the shared state off the hot path.
//!
//! Each realm has one subscription trie and one procedure registry, each behind a
//! `RwLock` written only when a subscription or registration starts or ends. A generation
//! counter is bumped after every trie write. A publishing connection's task routes its own
//! messages: it looks the topic up in its private [`MatchCache`], valid while the
//! generation is unchanged, so a steady stream of publishes touches no lock and no shared
//! cache line except one atomic load. This is principle 1: no process, task or lock that
//! every message crosses.

pub(crate) mod interest;
mod matches;
mod realm;
pub(crate) mod remote_tools;
pub(crate) mod tools;

pub(crate) use matches::{check_limits, GroupKey, MatchCache, Matches, SubRef};
pub(crate) use realm::Realm;
