//! The guest agent (SPEC §6): it finds the guest's block devices by
//! serial, learns hints from guest applications on a local socket, and
//! answers the host's evict requests, grow notices, stats requests and
//! pings over virtio-serial, vsock or a Unix/TCP socket, reconnecting
//! whenever the host goes away.
//!
//! - [`knowledge`]: hints and given-away blocks per device, and the answers;
//! - `victims`: the victim choice (disposable as `Drop`, then cold, then
//!   unhinted, hot last), over `span` maps;
//! - [`devices`]: discovery by serial;
//! - [`endpoint`]: transports ([`serial`]: the virtio-serial port);
//!   [`session`]: the host link loop;
//! - [`hint_socket`]: the local hint socket and its client;
//! - [`range_syntax`]: the command line's `0-1023,4096+16` ranges.
//!
//! [`run`] ties them together; the `pmvisor-agent` binary is a thin CLI
//! over this module.

pub mod devices;
pub mod endpoint;
pub mod hint_socket;
pub mod knowledge;
pub mod range_syntax;
pub mod serial;
pub mod session;
mod span;
mod victims;

use std::path::PathBuf;

pub use devices::Discovery;
pub use endpoint::Endpoint;
pub use hint_socket::{HintSocket, DEFAULT_HINT_SOCKET};
pub use knowledge::{Knowledge, KnowledgeError};
pub use session::{Agent, Backoff};

use crate::protocol::Device;

/// Everything `pmvisor-agent run` needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Where the host is.
    pub endpoint: Endpoint,
    /// The hint socket, or `None` for no hint socket.
    pub hint_socket: Option<PathBuf>,
    /// Where to find devices.
    pub discovery: Discovery,
    /// Devices declared on the command line.
    pub declared: Vec<Device>,
    /// Reconnection delays.
    pub backoff: Backoff,
}

/// Runs the agent until the future is dropped: the hint socket (if any)
/// on its own task, the host link on this one.
pub async fn run(config: RunConfig) -> Result<(), hint_socket::HintSocketError> {
    let agent = Agent::new(config.discovery, config.declared);
    let devices = agent.knowledge().devices();
    tracing::info!(
        devices = ?devices.iter().map(|d| d.serial.as_str()).collect::<Vec<_>>(),
        endpoint = %config.endpoint,
        "pmvisor-agent {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let hints = match &config.hint_socket {
        Some(path) => Some(HintSocket::bind(path)?),
        None => None,
    };
    // Dropping `run` stops the hint task, whose socket file goes with it.
    let _hint_task = hints.map(|socket| AbortOnDrop(tokio::spawn(socket.serve(agent.clone()))));
    session::serve_host_forever(&agent, &config.endpoint, config.backoff).await;
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
