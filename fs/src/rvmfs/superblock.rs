//! The RvmFS superblock, and the root pointer in RVM's root slot that finds it.
//!
//! RVM commits a 64-byte root slot with every transaction; RvmFS keeps a
//! [`RootPointer`] there naming the logical page of the [`Superblock`]. The
//! superblock holds what is global to the filesystem: the inode table's radix
//! tree, the next inode number and generation, and the orphan list (inodes
//! unlinked while still open, freed at the next mount if a crash intervened).
//! Both carry a magic, a version and a crc32c; a mismatch is corruption.
//!
//! ```text
//! root slot (64 bytes)                    superblock (first 128 bytes of its page)
//! +------+---------+-------+------+       +------+---------+-------+-----------------+
//! | 0 magic u64    | 8 version u32 |      | 0 magic u64    | 8 version | 12 crc32c    |
//! | 12 crc32c u32  | 16 sb page u64|      | 16 inode table root | 24 levels | 32 next ino|
//! | 24..64 reserved (zero)         |      | 40 next generation | 48 orphan head | 56 inodes|
//! +--------------------------------+      | 64 created sec | 72..128 reserved       |
//!                                         +------------------------------------------+
//! ```

use zerocopy::little_endian::{I64, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::error::{FsError, FsResult};

/// Magic of the root pointer: "RVMFS\0\x01\0" read as little-endian.
pub const ROOT_MAGIC: u64 = u64::from_le_bytes(*b"RVMFS\0\x01\0");
/// Magic of the superblock: "RVMFSSB1".
pub const SUPERBLOCK_MAGIC: u64 = u64::from_le_bytes(*b"RVMFSSB1");
/// On-RVM format version.
pub const FORMAT_VERSION: u32 = 1;

/// The RVM root slot's contents: where the superblock is.
///
/// | offset | size | field            |
/// |--------|------|------------------|
/// | 0      | 8    | magic            |
/// | 8      | 4    | version          |
/// | 12     | 4    | crc32c of 0..64 with this field zero |
/// | 16     | 8    | superblock page  |
/// | 24     | 40   | reserved, zero   |
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RootPointer {
    magic: U64,
    version: U32,
    crc: U32,
    superblock_page: U64,
    reserved: [u8; 40],
}

const _: () = assert!(size_of::<RootPointer>() == 64);

impl RootPointer {
    /// A pointer to the superblock in `page`.
    pub fn new(page: u64) -> RootPointer {
        let mut pointer = RootPointer {
            magic: ROOT_MAGIC.into(),
            version: FORMAT_VERSION.into(),
            crc: 0.into(),
            superblock_page: page.into(),
            reserved: [0; 40],
        };
        pointer.crc = crc32c::crc32c(pointer.as_bytes()).into();
        pointer
    }

    /// Decodes a root slot; `NotFormatted` if it holds no RvmFS pointer.
    pub fn decode(slot: &[u8; 64]) -> FsResult<RootPointer> {
        let pointer = RootPointer::read_from_bytes(slot).expect("64 bytes");
        if pointer.magic.get() != ROOT_MAGIC {
            return Err(FsError::NotFormatted { magic: pointer.magic.get() });
        }
        let mut zeroed = pointer;
        zeroed.crc = 0.into();
        if crc32c::crc32c(zeroed.as_bytes()) != pointer.crc.get() {
            return Err(FsError::corrupt("root pointer", 0, "checksum mismatch"));
        }
        if pointer.version.get() != FORMAT_VERSION {
            let reason = format!("unsupported version {}", pointer.version.get());
            return Err(FsError::corrupt("root pointer", 0, reason));
        }
        Ok(pointer)
    }

    /// Logical page of the superblock.
    pub fn superblock_page(&self) -> u64 {
        self.superblock_page.get()
    }
}

/// The filesystem-wide state.
///
/// | offset | size | field                                   |
/// |--------|------|-----------------------------------------|
/// | 0      | 8    | magic                                   |
/// | 8      | 4    | version                                 |
/// | 12     | 4    | crc32c of 0..128 with this field zero   |
/// | 16     | 8    | inode table radix root (logical page)   |
/// | 24     | 1    | inode table levels                      |
/// | 25     | 7    | reserved                                |
/// | 32     | 8    | next inode number                       |
/// | 40     | 8    | next generation                         |
/// | 48     | 8    | orphan list head (inode number, 0=none) |
/// | 56     | 8    | inodes in use                           |
/// | 64     | 8    | creation time, seconds                  |
/// | 72     | 56   | reserved, zero                          |
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SuperblockRecord {
    magic: U64,
    version: U32,
    crc: U32,
    inode_table_root: U64,
    inode_table_levels: u8,
    reserved0: [u8; 7],
    next_ino: U64,
    next_generation: U64,
    orphan_head: U64,
    inode_count: U64,
    created: I64,
    reserved1: [u8; 56],
}

const _: () = assert!(size_of::<SuperblockRecord>() == SUPERBLOCK_SIZE);

/// Encoded size of the superblock.
pub const SUPERBLOCK_SIZE: usize = 128;

/// The superblock, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// Radix root of the inode table (0 = empty).
    pub inode_table_root: u64,
    /// Levels of the inode table's radix tree.
    pub inode_table_levels: u8,
    /// Next inode number to hand out; numbers are never reused.
    pub next_ino: u64,
    /// Next generation number.
    pub next_generation: u64,
    /// First inode of the orphan list (0 = none).
    pub orphan_head: u64,
    /// Inodes in use.
    pub inode_count: u64,
    /// When the filesystem was formatted (seconds since the epoch).
    pub created: i64,
}

impl Superblock {
    /// Encodes the superblock with its checksum.
    pub fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut record = SuperblockRecord {
            magic: SUPERBLOCK_MAGIC.into(),
            version: FORMAT_VERSION.into(),
            crc: 0.into(),
            inode_table_root: self.inode_table_root.into(),
            inode_table_levels: self.inode_table_levels,
            reserved0: [0; 7],
            next_ino: self.next_ino.into(),
            next_generation: self.next_generation.into(),
            orphan_head: self.orphan_head.into(),
            inode_count: self.inode_count.into(),
            created: self.created.into(),
            reserved1: [0; 56],
        };
        record.crc = crc32c::crc32c(record.as_bytes()).into();
        let mut out = [0; SUPERBLOCK_SIZE];
        out.copy_from_slice(record.as_bytes());
        out
    }

    /// Decodes a superblock read from logical page `page`.
    pub fn decode(bytes: &[u8; SUPERBLOCK_SIZE], page: u64) -> FsResult<Superblock> {
        let record = SuperblockRecord::read_from_bytes(bytes).expect("128 bytes");
        let corrupt = |reason: String| FsError::corrupt("superblock", page, reason);
        if record.magic.get() != SUPERBLOCK_MAGIC {
            return Err(corrupt(format!("bad magic {:#018x}", record.magic.get())));
        }
        let mut zeroed = record;
        zeroed.crc = 0.into();
        if crc32c::crc32c(zeroed.as_bytes()) != record.crc.get() {
            return Err(corrupt("checksum mismatch".into()));
        }
        if record.version.get() != FORMAT_VERSION {
            return Err(corrupt(format!("unsupported version {}", record.version.get())));
        }
        if record.inode_table_levels > super::page_map::MAX_LEVELS {
            return Err(corrupt(format!("{} inode table levels", record.inode_table_levels)));
        }
        Ok(Superblock {
            inode_table_root: record.inode_table_root.get(),
            inode_table_levels: record.inode_table_levels,
            next_ino: record.next_ino.get(),
            next_generation: record.next_generation.get(),
            orphan_head: record.orphan_head.get(),
            inode_count: record.inode_count.get(),
            created: record.created.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            inode_table_root: 40,
            inode_table_levels: 2,
            next_ino: 9,
            next_generation: 11,
            orphan_head: 0,
            inode_count: 8,
            created: 1_700_000_000,
        }
    }

    #[test]
    fn a_superblock_survives_encode_and_decode() {
        let bytes = sample().encode();
        assert_eq!(&bytes[..8], b"RVMFSSB1");
        assert_eq!(Superblock::decode(&bytes, 3).unwrap(), sample());
    }

    #[test]
    fn a_flipped_superblock_byte_is_reported_as_corruption() {
        let mut bytes = sample().encode();
        bytes[33] ^= 1;
        let error = Superblock::decode(&bytes, 3).unwrap_err();
        assert_eq!(error.to_string(), "corrupt superblock in logical page 3: checksum mismatch");
    }

    #[test]
    fn a_root_slot_without_rvmfs_magic_is_not_formatted() {
        assert!(matches!(RootPointer::decode(&[0; 64]), Err(FsError::NotFormatted { magic: 0 })));
        let pointer = RootPointer::new(17);
        let mut slot = [0u8; 64];
        slot.copy_from_slice(pointer.as_bytes());
        assert_eq!(RootPointer::decode(&slot).unwrap().superblock_page(), 17);
        slot[20] ^= 4;
        assert!(matches!(RootPointer::decode(&slot), Err(FsError::Corrupt { .. })));
    }
}
