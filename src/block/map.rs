//! The block map: one 8-byte entry per logical 4 KiB block of a block
//! region, stored in the region's first pages.
//!
//! ```text
//! region pages:  [ map pages (M) | frames (F) ]
//! map entry (u64, little-endian):
//!   bits 63..62  state: 00 unmapped, 01 resident, 10 swapped
//!   bits 61..0   frame index (resident) or swap slot (swapped)
//! ```
//!
//! An entry is one aligned 8-byte store, which NVRAM writes atomically and a
//! disk sector holds whole, so an entry is always either its old or its new
//! value after a crash. The map is the only record of which frames and swap
//! slots are in use: both free lists are rebuilt from it at open. Ordering
//! rules that keep it consistent (the callers in `mod.rs` follow them):
//! data reaches its frame or slot durably before an entry points at it, and
//! a frame or slot is reused only after the entry that left it is durable.

/// Bytes of one map entry.
pub const ENTRY_SIZE: u64 = 8;

const STATE_SHIFT: u32 = 62;
const INDEX_MASK: u64 = (1 << STATE_SHIFT) - 1;

/// Where one logical block lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// Reads as zeros; owns nothing.
    Unmapped,
    /// In pool frame `n` of the region.
    Resident(u64),
    /// In swap slot `n`.
    Swapped(u64),
}

impl BlockState {
    /// The on-media entry.
    pub fn encode(self) -> u64 {
        match self {
            BlockState::Unmapped => 0,
            BlockState::Resident(frame) => (1 << STATE_SHIFT) | (frame & INDEX_MASK),
            BlockState::Swapped(slot) => (2 << STATE_SHIFT) | (slot & INDEX_MASK),
        }
    }

    /// Decode an entry; `None` for the invalid state `11`.
    pub fn decode(raw: u64) -> Option<BlockState> {
        let index = raw & INDEX_MASK;
        match raw >> STATE_SHIFT {
            0 if index == 0 => Some(BlockState::Unmapped),
            1 => Some(BlockState::Resident(index)),
            2 => Some(BlockState::Swapped(index)),
            _ => None,
        }
    }
}

/// Pages the map of `blocks` logical blocks takes.
pub fn map_pages(blocks: u64) -> u64 {
    (blocks * ENTRY_SIZE).div_ceil(crate::pool::PAGE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_zero_is_unmapped() {
        for s in [
            BlockState::Unmapped,
            BlockState::Resident(0),
            BlockState::Resident(7),
            BlockState::Swapped(0),
            BlockState::Swapped(1 << 40),
        ] {
            assert_eq!(BlockState::decode(s.encode()), Some(s));
        }
        assert_eq!(BlockState::decode(0), Some(BlockState::Unmapped));
    }

    #[test]
    fn invalid_entries_are_refused() {
        assert_eq!(BlockState::decode(3 << 62), None);
        assert_eq!(BlockState::decode(5), None, "unmapped with an index is corrupt");
    }

    #[test]
    fn map_size_rounds_up_to_pages() {
        assert_eq!(map_pages(1), 1);
        assert_eq!(map_pages(512), 1);
        assert_eq!(map_pages(513), 2);
        assert_eq!(map_pages(2 << 20), 4096);
    }
}
