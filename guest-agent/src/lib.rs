//! The pmvisor guest agent (SPEC §6) and the versioned host<->agent wire
//! protocol shared with the host.
//!
//! - [`protocol`]: framing, messages and range checks. The host uses only
//!   this (`default-features = false, features = ["tokio"]`).
//! - `agent` (feature `agent`, on by default): the agent's knowledge of
//!   its devices, its victim choice, transports, hint socket and the
//!   connection loop behind the `pmvisor-agent` binary.

#[cfg(feature = "agent")]
pub mod agent;
pub mod protocol;

pub use protocol::*;
