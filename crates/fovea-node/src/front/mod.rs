//! Front ends: what clients, agents and operators talk to. Each turns its own protocol
//! into routing's operations.

pub(crate) mod admin;
pub mod mcp;
pub(crate) mod session;
