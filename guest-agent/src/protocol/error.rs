//! Errors of the protocol: framing and decoding ([`ProtocolError`]) and
//! range checks ([`RangeError`]).

use thiserror::Error;

use super::range::BlockRange;

/// A frame could not be read, written, encoded or decoded.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// The transport failed while reading or writing a frame.
    #[error("the connection failed while carrying a frame")]
    Io(#[source] std::io::Error),
    /// The peer closed the connection at a frame boundary.
    #[error("the peer closed the connection")]
    Closed,
    /// A frame's length prefix (or an encoded message) exceeds the bound.
    #[error("frame of {size} bytes exceeds the {max}-byte bound")]
    FrameTooLarge {
        /// The length the frame claims (or the encoded size).
        size: u64,
        /// [`MAX_FRAME`](super::MAX_FRAME).
        max: u32,
    },
    /// The connection ended inside a frame.
    #[error("frame truncated: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes the frame (header or payload) should have had.
        expected: u64,
        /// Bytes that arrived.
        got: u64,
    },
    /// The payload is not a message this protocol knows how to decode.
    #[error("frame payload is not a valid message")]
    Garbage(#[source] postcard::Error),
    /// The payload's message kind is past the last one this build knows.
    #[error("unknown message kind {tag} (the peer speaks a newer protocol)")]
    UnknownMessage {
        /// The variant index found in the payload.
        tag: u32,
    },
    /// The payload held a message and then more bytes.
    #[error("{extra} stray bytes after the message in a frame")]
    TrailingBytes {
        /// How many bytes followed the message.
        extra: usize,
    },
    /// A list in a message to encode is longer than the protocol allows.
    #[error("{what} list of {len} entries exceeds the bound of {max}")]
    TooManyEntries {
        /// Which list.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The peer speaks another protocol version.
    #[error(
        "the peer speaks protocol version {peer}, this side speaks version {ours}; run the \
         pmvisor-agent built with the host's pmvisor"
    )]
    UnsupportedVersion {
        /// The peer's version.
        peer: u16,
        /// [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION).
        ours: u16,
    },
    /// A message could not be serialized.
    #[error("message could not be encoded")]
    Encode(#[source] postcard::Error),
}

/// A list of ranges breaks a rule of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RangeError {
    /// A range has no blocks.
    #[error("range at block {start} is empty")]
    Empty {
        /// Its first block.
        start: u64,
    },
    /// A range's end does not fit in a u64.
    #[error("range {range} runs past the largest block number")]
    Overflow {
        /// The range.
        range: BlockRange,
    },
    /// Two ranges share blocks.
    #[error("ranges {first} and {second} overlap")]
    Overlap {
        /// The range that starts first.
        first: BlockRange,
        /// The other one.
        second: BlockRange,
    },
    /// A range ends past the device.
    #[error("range {range} ends past the device's {device_blocks} blocks")]
    OutOfDevice {
        /// The range.
        range: BlockRange,
        /// Size of the device in blocks.
        device_blocks: u64,
    },
    /// The ranges add up to more blocks than were asked for.
    #[error("{total} blocks offered for a request of {count}")]
    TooMany {
        /// Blocks named.
        total: u64,
        /// Blocks requested.
        count: u64,
    },
    /// The answer names another request or device.
    #[error(
        "answer for request {got_id} on {got_serial:?}, expected {want_id} on {want_serial:?}"
    )]
    WrongRequest {
        /// The answer's id.
        got_id: u64,
        /// The answer's serial.
        got_serial: String,
        /// The request's id.
        want_id: u64,
        /// The request's serial.
        want_serial: String,
    },
}
