//! The page-table node format: the on-media radix tree from logical to physical pages.
//!
//! A node is one page of 256 entries of 16 bytes. Level 0 nodes (leaves) map
//! logical pages; higher levels map the nodes below them. The table has
//! `levels` levels (1 to 4), so logical page `n` is found by taking its bits
//! 8 at a time from the top:
//!
//! ```text
//! logical page n:  [ index at level L-1 ] ... [ index at level 1 ] [ index at level 0 ]
//!                        8 bits                    8 bits              8 bits
//!
//! node page (4096 bytes) = entry[0] entry[1] ... entry[255]
//!
//! entry (16 bytes):
//! offset size field
//!      0    8 page   physical page of the child node or of the data
//!      8    4 crc32c checksum of that page (when CHECKED is set)
//!     12    4 flags  bit 0 PRESENT, bit 1 CHECKED; other bits zero
//! ```
//!
//! An entry that is not PRESENT is all zeros. Entries for child nodes and for
//! RVM's own map pages are CHECKED, so the whole table and the allocation maps
//! verify from the checksum of the root held by the commit record. User data
//! pages are not checksummed: that would cost a crc32c of every page on every
//! commit.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::PAGE_SIZE;

/// Entries per page-table node.
pub(crate) const ENTRIES_PER_NODE: usize = 256;

/// The entry maps a page.
pub(crate) const PRESENT: u32 = 1 << 0;
/// The entry's crc32c field is the checksum of the page it maps.
pub(crate) const CHECKED: u32 = 1 << 1;
/// In memory only: the data page was shadowed by the open transaction, so
/// further writes go to it in place. Never written to media.
pub(crate) const FRESH: u32 = 1 << 31;

const MEDIA_FLAGS: u32 = PRESENT | CHECKED;

/// On-media layout of one entry (see the module table).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
struct EntryRaw {
    page: U64,
    crc: U32,
    flags: U32,
}

const _: () = assert!(size_of::<EntryRaw>() == 16);
const _: () = assert!(size_of::<[EntryRaw; ENTRIES_PER_NODE]>() == PAGE_SIZE);

/// A decoded entry, as held in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TableEntry {
    pub page: u64,
    pub crc: u32,
    pub flags: u32,
}

impl TableEntry {
    /// An entry that maps nothing.
    pub const EMPTY: TableEntry = TableEntry { page: 0, crc: 0, flags: 0 };

    /// A data page shadowed by the open transaction.
    pub fn fresh(page: u64) -> TableEntry {
        TableEntry { page, crc: 0, flags: PRESENT | FRESH }
    }

    /// A page with a known checksum.
    pub fn checked(page: u64, crc: u32) -> TableEntry {
        TableEntry { page, crc, flags: PRESENT | CHECKED }
    }

    pub fn is_present(&self) -> bool {
        self.flags & PRESENT != 0
    }

    pub fn is_checked(&self) -> bool {
        self.flags & CHECKED != 0
    }

    pub fn is_fresh(&self) -> bool {
        self.flags & FRESH != 0
    }
}

/// Why a node page does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Flag bits this version does not define are set.
    #[error("entry {index} has unknown flags {flags:#x}")]
    UnknownFlags {
        /// Entry index within the node.
        index: usize,
        /// The flags field.
        flags: u32,
    },
    /// An entry without PRESENT has non-zero fields.
    #[error("entry {index} is not present but is not zero")]
    DirtyEmptyEntry {
        /// Entry index within the node.
        index: usize,
    },
}

/// Encodes a node's entries into a page. In-memory flags are dropped.
#[cfg(test)]
pub(crate) fn encode_node(entries: &[TableEntry; ENTRIES_PER_NODE], out: &mut [u8; PAGE_SIZE]) {
    encode_node_with(out, |index| entries[index]);
}

/// Encodes the node whose entry `i` is `entry(i)` into a page.
pub(crate) fn encode_node_with(
    out: &mut [u8; PAGE_SIZE],
    mut entry: impl FnMut(usize) -> TableEntry,
) {
    for (index, chunk) in out.chunks_exact_mut(size_of::<EntryRaw>()).enumerate() {
        let entry = entry(index);
        let raw = EntryRaw {
            page: U64::new(entry.page),
            crc: U32::new(entry.crc),
            flags: U32::new(entry.flags & MEDIA_FLAGS),
        };
        chunk.copy_from_slice(raw.as_bytes());
    }
}

/// Decodes a node page, checking every entry's flags.
pub(crate) fn decode_node(
    bytes: &[u8; PAGE_SIZE],
) -> Result<Box<[TableEntry; ENTRIES_PER_NODE]>, EntryError> {
    let raw = <[EntryRaw; ENTRIES_PER_NODE]>::ref_from_bytes(bytes)
        .expect("a page holds exactly one node");
    let mut entries = Box::new([TableEntry::EMPTY; ENTRIES_PER_NODE]);
    for (index, (raw, entry)) in raw.iter().zip(entries.iter_mut()).enumerate() {
        let flags = raw.flags.get();
        if flags & !MEDIA_FLAGS != 0 {
            return Err(EntryError::UnknownFlags { index, flags });
        }
        if flags & PRESENT == 0 && (flags != 0 || raw.page.get() != 0 || raw.crc.get() != 0) {
            return Err(EntryError::DirtyEmptyEntry { index });
        }
        *entry = TableEntry { page: raw.page.get(), crc: raw.crc.get(), flags };
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_round_trip_without_in_memory_flags() {
        let mut entries = [TableEntry::EMPTY; ENTRIES_PER_NODE];
        entries[0] = TableEntry::checked(77, 0x1234_5678);
        entries[255] = TableEntry::fresh(u64::MAX - 1);
        let mut page = [0u8; PAGE_SIZE];
        encode_node(&entries, &mut page);
        assert_eq!(&page[..16], &[77, 0, 0, 0, 0, 0, 0, 0, 0x78, 0x56, 0x34, 0x12, 3, 0, 0, 0]);
        let back = decode_node(&page).unwrap();
        assert_eq!(back[0], entries[0]);
        assert_eq!(back[255], TableEntry { page: u64::MAX - 1, crc: 0, flags: PRESENT });
        assert!(back[1..255].iter().all(|e| *e == TableEntry::EMPTY));
    }

    #[test]
    fn decoding_rejects_unknown_flags_and_dirty_empty_entries() {
        let mut page = [0u8; PAGE_SIZE];
        page[16 + 12] = 0x10;
        assert_eq!(decode_node(&page), Err(EntryError::UnknownFlags { index: 1, flags: 0x10 }));
        let mut page = [0u8; PAGE_SIZE];
        page[32] = 5;
        assert_eq!(
            decode_node(&page).unwrap_err().to_string(),
            "entry 2 is not present but is not zero"
        );
    }
}
