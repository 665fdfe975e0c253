//! The host's side of the guest agent (SPEC §5–§6): a link to the
//! `pmvisor-agent` inside a VM, which names the blocks a shrink should
//! evict and the blocks a grow should bring back.
//!
//! Design:
//!
//! - One [`AgentLink`] per block region, reached at an [`AgentAddr`]:
//!   `serial:PATH` (QEMU listens on a chardev socket behind a virtio-serial
//!   port named `org.pmvisor.agent.0`; the daemon connects and reconnects),
//!   `unix:PATH` (the daemon listens; the agent connects) or
//!   `vsock:CID:PORT` (the daemon listens on PORT and accepts only CID).
//! - The agent knows the region by its disk's serial ([`region_serial`],
//!   set on the virtio-blk device by `pmvisor region qemu-args`); a `Hello`
//!   that does not list it is refused.
//! - The wire protocol is `pmvisor_agent::protocol`; every answer is
//!   untrusted: it is checked with `validate_answer` and a wrong, late or
//!   missing answer is an [`AgentFailure`] — counted, logged in one line,
//!   and never fatal: [`resize_with_agent`] hands what it got (possibly
//!   nothing) to [`BlockRegion::resize_resident`](crate::block::BlockRegion::resize_resident),
//!   whose CLOCK completes the choice.
//! - Host memory stays bounded: frames are refused over `MAX_FRAME` before
//!   their body is read, and at most one decoded frame waits at a time.
//! - [`AgentLink::evict`] and [`AgentLink::grow`] are the API the resize
//!   command uses and a pool balancer can use: ask, with a deadline, get
//!   ranges or a failure.

mod addr;
mod failure;
mod latency;
mod link;
mod qemu;
mod resize;

pub use addr::{region_serial, AddrError, AgentAddr, MAX_SERIAL};
pub use failure::{AgentFailure, FAILURE_REASONS};
pub use latency::{LatencyHistogram, LatencySnapshot, BUCKET_MICROS};
pub use link::{AgentLink, AgentStats, LinkError, LinkOptions, BLOCK_SIZE};
pub use qemu::qemu_args;
pub use resize::{resize_with_agent, AgentExchange, AgentResize, DEFAULT_DEADLINE};

#[cfg(test)]
mod tests;
