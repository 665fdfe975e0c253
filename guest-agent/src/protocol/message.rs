//! The messages of the protocol. The order of [`Message`]'s variants and of
//! each struct's fields is the wire format: add new variants at the end and
//! bump [`PROTOCOL_VERSION`] for anything else.

use serde::{Deserialize, Serialize};

use super::bounded;
use super::range::BlockRange;
use super::{ProtocolError, PROTOCOL_VERSION};

/// One frame's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Agent → host, the first frame of every connection.
    Hello(Hello),
    /// Host → agent: the host accepts the agent's `Hello`; `version` is the
    /// protocol version both sides speak from now on.
    Welcome {
        /// Protocol version of the session.
        version: u16,
    },
    /// Host → agent: the host will not talk to this agent; it closes the
    /// connection after this frame. The agent retries later.
    Refused {
        /// Why, for the agent's log.
        reason: String,
    },
    /// Host → agent: name blocks to evict (shrink).
    EvictRequest(EvictRequest),
    /// Agent → host: the blocks the agent offers for an `EvictRequest`.
    EvictAnswer(EvictAnswer),
    /// Host → agent: a device's resident quota grew.
    GrowNotice(GrowNotice),
    /// Agent → host: the hot ranges the agent wants resident after a grow.
    HotRanges(HotRanges),
    /// Either way: ask for [`Message::Stats`].
    StatsRequest,
    /// What the agent knows, per device.
    Stats(Stats),
    /// Either way: liveness check; the peer answers `Pong` with the same nonce.
    Ping {
        /// Echoed in the `Pong`.
        nonce: u64,
    },
    /// The answer to `Ping`.
    Pong {
        /// The `Ping`'s nonce.
        nonce: u64,
    },
    /// Either way: a request could not be served. `id` names the request
    /// (`EvictRequest`, `GrowNotice`) when there is one, so a host waiting
    /// for an answer stops waiting.
    Error {
        /// Id of the failed request, if it had one.
        id: Option<u64>,
        /// What went wrong, for a person.
        message: String,
    },
    /// Local hint socket only (a guest application → agent): a hint about
    /// some ranges of a device.
    Hint(Hint),
    /// Local hint socket only: the agent applied a `Hint`.
    HintAccepted {
        /// The hinted device.
        serial: String,
        /// Number of 4 KiB blocks the hint covered.
        blocks: u64,
    },
}

/// Number of variants of [`Message`]; a payload whose variant index is at
/// least this comes from a newer protocol.
pub(crate) const MESSAGE_KINDS: u32 = 14;

impl Message {
    /// Short name of the message kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Welcome { .. } => "Welcome",
            Message::Refused { .. } => "Refused",
            Message::EvictRequest(_) => "EvictRequest",
            Message::EvictAnswer(_) => "EvictAnswer",
            Message::GrowNotice(_) => "GrowNotice",
            Message::HotRanges(_) => "HotRanges",
            Message::StatsRequest => "StatsRequest",
            Message::Stats(_) => "Stats",
            Message::Ping { .. } => "Ping",
            Message::Pong { .. } => "Pong",
            Message::Error { .. } => "Error",
            Message::Hint(_) => "Hint",
            Message::HintAccepted { .. } => "HintAccepted",
        }
    }

    /// The longest sequence in the message as (what, length, bound), for
    /// the encoder's bound check.
    pub(crate) fn longest_list(&self) -> Option<(&'static str, usize, usize)> {
        use super::{MAX_DEVICES, MAX_RANGES};
        match self {
            Message::Hello(h) => Some(("devices", h.devices.len(), MAX_DEVICES)),
            Message::Stats(s) => Some(("devices", s.devices.len(), MAX_DEVICES)),
            Message::EvictAnswer(a) => Some(("ranges", a.ranges.len(), MAX_RANGES)),
            Message::HotRanges(h) => Some(("ranges", h.ranges.len(), MAX_RANGES)),
            Message::Hint(h) => Some(("ranges", h.ranges.len(), MAX_RANGES)),
            _ => None,
        }
    }
}

/// The agent introduces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The agent's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The agent's own version (its crate version), for logs.
    pub agent: String,
    /// The block devices the agent sees, by serial.
    #[serde(deserialize_with = "bounded::devices")]
    pub devices: Vec<Device>,
}

/// A block device in the guest, named by its serial (for a pmvisor region,
/// the serial the host gave the virtio-blk/ublk device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The device's serial.
    pub serial: String,
    /// The size the guest sees, in bytes.
    pub size_bytes: u64,
}

/// The host asks the agent for `count` blocks of device `serial` to evict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvictRequest {
    /// Chosen by the host; the answer carries it back.
    pub id: u64,
    /// The device.
    pub serial: String,
    /// How many blocks the host wants; the answer names at most this many.
    pub count: u64,
    /// Block size of `count` and of the answer's ranges, in bytes: a power
    /// of two, at least 512.
    pub block_size: u32,
    /// How long the host waits for the answer, counted from sending the
    /// request. The agent stops looking for victims when it has spent this
    /// long and answers with what it found.
    pub deadline_ms: u32,
    /// The device's resident blocks now, in blocks of `block_size`, sorted
    /// and disjoint, when the host could list them in at most
    /// [`MAX_RANGES`](super::MAX_RANGES) ranges (`None` otherwise). The
    /// rest are unmapped or in swap already: offering them frees nothing.
    /// Untrusted like any input: the agent only uses it to leave blocks
    /// out. (Protocol version 2.)
    #[serde(deserialize_with = "bounded::optional_ranges")]
    pub resident: Option<Vec<BlockRange>>,
}

/// The agent's answer to an [`EvictRequest`]. The agent sends ranges sorted
/// by `start`, disjoint, and merged where two touching ranges have the same
/// disposition; the host must not rely on that ([`validate_answer`]).
///
/// An answer may be short, even empty: the host completes it.
///
/// [`validate_answer`]: super::validate_answer
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvictAnswer {
    /// The request's id.
    pub id: u64,
    /// The request's serial.
    pub serial: String,
    /// The offered blocks, in blocks of the request's `block_size`.
    #[serde(deserialize_with = "bounded::ranges")]
    pub ranges: Vec<EvictRange>,
}

/// A run of blocks offered for eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EvictRange {
    /// First block.
    pub start: u64,
    /// Number of blocks (at least 1).
    pub count: u64,
    /// What the host may do with them.
    pub disposition: Disposition,
}

impl EvictRange {
    /// The blocks as a [`BlockRange`], without the disposition.
    pub fn blocks(&self) -> BlockRange {
        BlockRange { start: self.start, count: self.count }
    }
}

/// What the host may do with an evicted range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Disposition {
    /// The guest needs the data: move it to swap.
    Keep,
    /// The guest no longer needs the data: the host may unmap the blocks
    /// (later reads return zeros) instead of swapping them.
    Drop,
}

/// The host raised the resident quota of device `serial` by `count` blocks.
///
/// The agent answers with [`HotRanges`]: the ranges hinted hot that it would
/// like resident, at most `count` blocks, most wanted first. The host
/// brings back those of them that are swapped (validating them like an
/// answer) and may use the rest of the quota as it likes. The agent takes
/// the ranges it asked for as returned: it may offer them again in later
/// answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrowNotice {
    /// Chosen by the host; the `HotRanges` reply carries it back.
    pub id: u64,
    /// The device.
    pub serial: String,
    /// By how many blocks the quota grew.
    pub count: u64,
    /// Block size of `count` and of the reply's ranges, in bytes.
    pub block_size: u32,
}

/// The agent's reply to a [`GrowNotice`]: ranges it wants resident, most
/// wanted first (hot blocks it gave away in an earlier answer come first),
/// in blocks of the notice's `block_size`. May be empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotRanges {
    /// The notice's id.
    pub id: u64,
    /// The notice's serial.
    pub serial: String,
    /// The wanted ranges.
    #[serde(deserialize_with = "bounded::ranges")]
    pub ranges: Vec<BlockRange>,
}

/// What the agent knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// One entry per device.
    #[serde(deserialize_with = "bounded::devices")]
    pub devices: Vec<DeviceStats>,
}

/// What the agent knows about one device. Block counts are in
/// [`HINT_BLOCK_SIZE`](super::HINT_BLOCK_SIZE) blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStats {
    /// The device.
    pub serial: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Blocks hinted hot.
    pub hot_blocks: u64,
    /// Blocks hinted cold.
    pub cold_blocks: u64,
    /// Blocks hinted disposable (or discarded).
    pub disposable_blocks: u64,
    /// Blocks given away in answers and not offered again yet.
    pub given_away_blocks: u64,
    /// Evict requests answered for this device.
    pub evict_requests_answered: u64,
    /// Grow notices answered for this device.
    pub grow_notices_answered: u64,
    /// How long the last evict answer took to compute, in microseconds.
    pub last_answer_micros: Option<u64>,
}

/// A hint from the guest: from now on, `ranges` of device `serial` are of
/// `kind`. The latest hint for a block wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hint {
    /// The device.
    pub serial: String,
    /// What the ranges are.
    pub kind: HintKind,
    /// The ranges, in [`HINT_BLOCK_SIZE`](super::HINT_BLOCK_SIZE) blocks.
    #[serde(deserialize_with = "bounded::ranges")]
    pub ranges: Vec<BlockRange>,
}

/// What a hint says about its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HintKind {
    /// In use and accessed often: evict last, ask back after a grow.
    Hot,
    /// In use but rarely accessed: evict (to swap) early.
    Cold,
    /// Not needed any more (freed, discarded, cache that can be rebuilt):
    /// evict first, as `Drop`.
    Disposable,
    /// Forget any hint for these blocks.
    Forget,
}

/// Checks a peer's protocol version against ours.
pub fn check_version(peer: u16) -> Result<(), ProtocolError> {
    if peer == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtocolError::UnsupportedVersion { peer, ours: PROTOCOL_VERSION })
    }
}

/// The host's reply to a `Hello`: `Welcome` if the agent speaks our
/// version, else `Refused` saying why.
pub fn answer_hello(hello: &Hello) -> Message {
    match check_version(hello.version) {
        Ok(()) => Message::Welcome { version: PROTOCOL_VERSION },
        Err(e) => Message::Refused { reason: e.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_of_another_version_is_refused_with_both_versions() {
        let hello = Hello { version: 9, agent: "x".into(), devices: vec![] };
        assert_eq!(
            answer_hello(&hello),
            Message::Refused {
                reason: "the peer speaks protocol version 9, this side speaks version 2; run the \
                         pmvisor-agent built with the host's pmvisor"
                    .into()
            }
        );
        let ok = Hello { version: PROTOCOL_VERSION, ..hello };
        assert_eq!(answer_hello(&ok), Message::Welcome { version: PROTOCOL_VERSION });
    }
}
