//! The commit record: the one small structure whose switch commits a transaction.
//!
//! Two copies live in the store's two commit slots. Commits write them
//! alternately, so the slot being written never holds the newest valid
//! record; recovery decodes both and takes the valid one with the higher
//! sequence number. A torn or corrupt slot fails its crc32c and is ignored.
//! The record names the page-table root (and its checksum), the geometry the
//! tables were built for, and a user root slot through which a user finds its
//! data after recovery.
//!
//! ```text
//! offset size field
//!      0    8 magic             "RVMCOMIT"
//!      8    4 version           1
//!     12    4 record size       128
//!     16    8 sequence          commit number, grows by one per closed transaction
//!     24    8 physical pages    store pages the record was written for
//!     32    8 logical pages     size of the logical address space
//!     40    8 table root        physical page of the page-table root node
//!     48    4 table root crc32c crc32c of the root node page
//!     52    1 table levels      height of the page table, 1..=4
//!     53    3 reserved          zero
//!     56   64 user root         opaque bytes owned by the RVM user
//!    120    4 reserved          zero
//!    124    4 crc32c            over bytes 0..124
//! ```

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::store::COMMIT_SLOT_SIZE;

/// Size of the user root slot carried by every commit record.
pub const ROOT_SLOT_SIZE: usize = 64;

/// The user root: opaque bytes committed atomically with everything else.
pub type RootSlot = [u8; ROOT_SLOT_SIZE];

const MAGIC: [u8; 8] = *b"RVMCOMIT";
const VERSION: u32 = 1;
const CRC_OFFSET: usize = COMMIT_SLOT_SIZE - 4;

/// On-media layout of a commit record (see the module table).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct CommitRecordRaw {
    magic: [u8; 8],
    version: U32,
    size: U32,
    sequence: U64,
    physical_pages: U64,
    logical_pages: U64,
    table_root: U64,
    table_root_crc: U32,
    table_levels: u8,
    reserved0: [u8; 3],
    user_root: [u8; ROOT_SLOT_SIZE],
    reserved1: [u8; 4],
    crc: U32,
}

const _: () = assert!(size_of::<CommitRecordRaw>() == COMMIT_SLOT_SIZE);

/// A decoded, checksum-verified commit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CommitRecord {
    pub sequence: u64,
    pub physical_pages: u64,
    pub logical_pages: u64,
    pub table_root: u64,
    pub table_root_crc: u32,
    pub table_levels: u8,
    pub user_root: RootSlot,
}

/// Why a commit slot does not hold a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The slot was never written (or was cleared by a format).
    #[error("the slot is empty")]
    Empty,
    /// The slot does not start with the commit record magic.
    #[error("the slot does not hold a commit record (bad magic)")]
    BadMagic,
    /// The record's crc32c does not match its bytes: a torn or corrupt write.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Checksum stored in the record.
        stored: u32,
        /// Checksum of the record's bytes.
        computed: u32,
    },
    /// The record was written by a format version this code does not know.
    #[error("unsupported commit record version {version} (size {size})")]
    UnsupportedVersion {
        /// Version field.
        version: u32,
        /// Size field.
        size: u32,
    },
    /// Reserved bytes are not zero.
    #[error("reserved bytes are not zero")]
    ReservedNotZero,
}

impl CommitRecord {
    /// Encodes the record with its checksum.
    pub fn encode(&self) -> [u8; COMMIT_SLOT_SIZE] {
        let raw = CommitRecordRaw {
            magic: MAGIC,
            version: U32::new(VERSION),
            size: U32::new(COMMIT_SLOT_SIZE as u32),
            sequence: U64::new(self.sequence),
            physical_pages: U64::new(self.physical_pages),
            logical_pages: U64::new(self.logical_pages),
            table_root: U64::new(self.table_root),
            table_root_crc: U32::new(self.table_root_crc),
            table_levels: self.table_levels,
            reserved0: [0; 3],
            user_root: self.user_root,
            reserved1: [0; 4],
            crc: U32::new(0),
        };
        let mut bytes = [0u8; COMMIT_SLOT_SIZE];
        bytes.copy_from_slice(raw.as_bytes());
        let crc = crc32c::crc32c(&bytes[..CRC_OFFSET]);
        bytes[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Decodes and verifies a slot. Geometry is checked by the caller, which
    /// knows the store.
    pub fn decode(bytes: &[u8; COMMIT_SLOT_SIZE]) -> Result<CommitRecord, RecordError> {
        if bytes.iter().all(|&b| b == 0) {
            return Err(RecordError::Empty);
        }
        let raw = CommitRecordRaw::ref_from_bytes(bytes).map_err(|_| RecordError::BadMagic)?;
        if raw.magic != MAGIC {
            return Err(RecordError::BadMagic);
        }
        let computed = crc32c::crc32c(&bytes[..CRC_OFFSET]);
        if raw.crc.get() != computed {
            return Err(RecordError::Checksum { stored: raw.crc.get(), computed });
        }
        if raw.version.get() != VERSION || raw.size.get() != COMMIT_SLOT_SIZE as u32 {
            return Err(RecordError::UnsupportedVersion {
                version: raw.version.get(),
                size: raw.size.get(),
            });
        }
        if raw.reserved0 != [0; 3] || raw.reserved1 != [0; 4] {
            return Err(RecordError::ReservedNotZero);
        }
        Ok(CommitRecord {
            sequence: raw.sequence.get(),
            physical_pages: raw.physical_pages.get(),
            logical_pages: raw.logical_pages.get(),
            table_root: raw.table_root.get(),
            table_root_crc: raw.table_root_crc.get(),
            table_levels: raw.table_levels,
            user_root: raw.user_root,
        })
    }
}

/// Picks the valid record with the highest sequence number; on a tie (which
/// RVM never writes) slot A wins. Returns the index of the chosen slot.
pub(crate) fn newest(
    slots: &[Result<CommitRecord, RecordError>; 2],
) -> Option<(usize, CommitRecord)> {
    match (&slots[0], &slots[1]) {
        (Ok(a), Ok(b)) if b.sequence > a.sequence => Some((1, *b)),
        (Ok(a), _) => Some((0, *a)),
        (Err(_), Ok(b)) => Some((1, *b)),
        (Err(_), Err(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sequence: u64) -> CommitRecord {
        CommitRecord {
            sequence,
            physical_pages: 1024,
            logical_pages: 1024,
            table_root: 17,
            table_root_crc: 0xDEAD_BEEF,
            table_levels: 2,
            user_root: [sequence as u8; ROOT_SLOT_SIZE],
        }
    }

    #[test]
    fn records_round_trip_through_their_encoding() {
        let r = record(42);
        assert_eq!(CommitRecord::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn recovery_ignores_torn_commit_slot() {
        let old = record(7).encode();
        let new = record(8).encode();
        let mut torn = old;
        torn[16..24].copy_from_slice(&new[16..24]);
        let slots = [CommitRecord::decode(&torn), CommitRecord::decode(&new)];
        assert!(matches!(slots[0], Err(RecordError::Checksum { .. })));
        assert_eq!(newest(&slots), Some((1, record(8))));
        let slots = [CommitRecord::decode(&record(9).encode()), CommitRecord::decode(&torn)];
        assert_eq!(newest(&slots), Some((0, record(9))));
    }

    #[test]
    fn the_newest_valid_record_wins() {
        let slots = [CommitRecord::decode(&record(3).encode()), Ok(record(4))];
        assert_eq!(newest(&slots).unwrap().1.sequence, 4);
        let slots = [Ok(record(5)), Ok(record(4))];
        assert_eq!(newest(&slots).unwrap(), (0, record(5)));
        assert_eq!(newest(&[Err(RecordError::Empty), Err(RecordError::BadMagic)]), None);
    }

    #[test]
    fn decoding_rejects_empty_foreign_and_future_slots() {
        assert_eq!(CommitRecord::decode(&[0; COMMIT_SLOT_SIZE]), Err(RecordError::Empty));
        assert_eq!(CommitRecord::decode(&[0xAB; COMMIT_SLOT_SIZE]), Err(RecordError::BadMagic));
        let mut future = record(1).encode();
        future[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&future[..CRC_OFFSET]);
        future[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            CommitRecord::decode(&future).unwrap_err().to_string(),
            "unsupported commit record version 2 (size 128)"
        );
    }
}
