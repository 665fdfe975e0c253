//! The host<->agent wire protocol (SPEC §6), shared by the host daemon and
//! the guest agent.
//!
//! # Framing
//!
//! A connection carries a sequence of frames in both directions:
//!
//! ```text
//! +----------------------+---------------------------------------+
//! | length: u32 LE (4 B) | payload: postcard encoding of Message |
//! +----------------------+---------------------------------------+
//!                          <------------ length bytes ----------->
//! ```
//!
//! `length` never exceeds [`MAX_FRAME`]; a reader refuses a larger length
//! before it allocates or reads the body. The payload is exactly one
//! [`Message`]: bytes left over after it are an error, as is a payload that
//! does not decode. Sequences inside a message are bounded too
//! ([`MAX_RANGES`], [`MAX_DEVICES`]), so decoding any frame allocates at most
//! a few times [`MAX_FRAME`].
//!
//! The payload format is [postcard](https://docs.rs/postcard) 1.x: a compact
//! serde format (varint integers, an enum is its variant index followed by
//! its fields) with a frozen, documented wire specification, no `unsafe`
//! in its decoder and no schema compiler. A worst-case fragmented answer of
//! 256 MiB of 4 KiB blocks (65,536 one-block ranges) encodes in about 800 KiB.
//!
//! # Conversation
//!
//! ```text
//! agent                                   host
//!   | -- Hello { version, agent, devices } --> |   first frame, always
//!   | <-- Welcome { version } | Refused ------ |
//!   | <-- EvictRequest { id, .. } ------------ |   shrink (SPEC §5)
//!   | -- EvictAnswer { id, .. } | Error { id } |
//!   | <-- GrowNotice { id, .. } -------------- |   grow
//!   | -- HotRanges { id, .. } | Error { id } ->|
//!   | <-- StatsRequest / Ping { nonce } ------ |
//!   | -- Stats / Pong { nonce } -------------> |
//! ```
//!
//! The agent answers requests in the order it receives them. `Hint` /
//! `HintAccepted` travel only on the agent's local hint socket, which speaks
//! the same framing (see the `agent` module).
//!
//! # Units
//!
//! Evict and grow exchanges count blocks of the request's `block_size`
//! (a power of two, at least 512). Hints and stats count blocks of
//! [`HINT_BLOCK_SIZE`] (4 KiB). All block numbers are `u64`.
//!
//! # Trust
//!
//! The decoder checks structure only. The host treats an [`EvictAnswer`] as
//! untrusted input: [`validate_answer`] checks that it names the request,
//! stays inside the device, overlaps nowhere and asks for no more than
//! `count` blocks. The agent cannot see the host's block map: the request
//! lists the resident blocks when that fits in [`MAX_RANGES`] ranges, and
//! the agent offers only those. An answer may still name blocks that are
//! not resident (the list was too long, or something changed); the host
//! skips those and completes the count with its own choice, as it does when
//! the agent is absent, late or short.

mod bounded;
mod check;
mod error;
mod frame;
mod message;
#[cfg(test)]
mod proptests;
mod range;

#[doc(hidden)]
pub use check::check_decoder;
pub use error::{ProtocolError, RangeError};
pub use frame::{decode, encode, read_frame, write_frame};
#[cfg(feature = "tokio")]
pub use frame::{read_frame_async, write_frame_async};
pub use message::{
    answer_hello, check_version, Device, DeviceStats, Disposition, EvictAnswer, EvictRange,
    EvictRequest, GrowNotice, Hello, Hint, HintKind, HotRanges, Message, Stats,
};
pub use range::{
    normalize_evict_ranges, normalize_ranges, total_blocks, validate_answer, BlockRange, Overlaps,
};

/// The protocol version this build speaks. Bumped on any incompatible
/// change to [`Message`]; the host refuses an agent whose `Hello` carries
/// another version.
pub const PROTOCOL_VERSION: u16 = 2;

/// Largest payload of one frame, in bytes (4 MiB).
pub const MAX_FRAME: u32 = 4 << 20;

/// Most ranges in one message's range list. One answer can name up to
/// 512 MiB of 4 KiB blocks in the worst fragmentation (one-block ranges);
/// an agent that would need more answers short and the host completes it.
pub const MAX_RANGES: usize = 128 * 1024;

/// Most devices in a `Hello` or a `Stats` message.
pub const MAX_DEVICES: usize = 1024;

/// Block size of hints and stats, in bytes.
pub const HINT_BLOCK_SIZE: u32 = 4096;

/// Name of the virtio-serial port the agent talks on; in the guest it is
/// `/dev/virtio-ports/org.pmvisor.agent.0`.
pub const VIRTIO_SERIAL_PORT_NAME: &str = "org.pmvisor.agent.0";

/// vsock port the host listens on when the agent connects over vsock
/// (to CID 2, the host) because the virtio-serial port is absent.
pub const DEFAULT_VSOCK_PORT: u32 = 0x504d;
