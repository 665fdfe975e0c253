//! The superblock: the pool's identity and layout, stored twice.
//!
//! Pages 0 and 1 each hold a copy (the first 256 bytes of the page). Both
//! copies are always written with the same contents, copy A first and made
//! durable, then copy B. A crash between the two leaves one new and one old
//! copy, both valid and both pointing at intact metadata (see `mod.rs`); the
//! newest valid copy wins. A copy destroyed by anything else is rebuilt from
//! the other by `pool check --repair` or the next checkpoint.
//!
//! ```text
//! offset size field
//!      0    8 magic "PMVPOOL\0"
//!      8    4 format version (1)
//!     12    4 header size (256)
//!     16   16 pool UUID
//!     32    8 pool size in bytes
//!     40    4 page size (4096)
//!     44    4 active checkpoint slot (0 or 1)
//!     48    8 generation (checkpoints written so far; the log's epoch)
//!     56    8 pages per checkpoint slot
//!     64    8 pages of the metadata log
//!     72    8 first data page
//!     80    8 number of data pages
//!     88    8 creation time, seconds since the Unix epoch
//!     96  156 reserved, zero
//!    252    4 crc32c of bytes 0..252
//! ```

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::PAGE_SIZE;

/// The superblock magic.
pub const MAGIC: [u8; 8] = *b"PMVPOOL\0";
/// The on-media format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of a superblock copy.
pub const SUPERBLOCK_SIZE: usize = 256;

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy)]
#[repr(C)]
struct RawSuperblock {
    magic: [u8; 8],
    format_version: U32,
    header_size: U32,
    uuid: [u8; 16],
    pool_size: U64,
    page_size: U32,
    active_checkpoint: U32,
    generation: U64,
    checkpoint_pages: U64,
    log_pages: U64,
    data_start: U64,
    data_pages: U64,
    created_unix: U64,
    reserved: [u8; 156],
    crc: U32,
}

const _: () = assert!(std::mem::size_of::<RawSuperblock>() == SUPERBLOCK_SIZE);

/// A decoded superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: [u8; 16],
    pub pool_size: u64,
    pub active_checkpoint: u32,
    pub generation: u64,
    pub checkpoint_pages: u64,
    pub log_pages: u64,
    pub data_start: u64,
    pub data_pages: u64,
    pub created_unix: u64,
}

/// Why a superblock copy was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuperblockFault {
    /// No magic: never a pool, or overwritten.
    NoMagic,
    /// Written by a newer pmvisor.
    NewerFormat(u32),
    /// The checksum does not match: torn or overwritten.
    BadChecksum,
    /// Fields that contradict each other.
    BadLayout(String),
}

impl std::fmt::Display for SuperblockFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SuperblockFault::NoMagic => f.write_str("it does not carry the pool magic"),
            SuperblockFault::NewerFormat(v) => write!(f, "it has newer format version {v}"),
            SuperblockFault::BadChecksum => f.write_str("its checksum does not match"),
            SuperblockFault::BadLayout(why) => write!(f, "its layout is impossible: {why}"),
        }
    }
}

impl Superblock {
    /// Pages before the data area: two superblocks, two checkpoint slots, the log.
    pub fn metadata_pages(checkpoint_pages: u64, log_pages: u64) -> u64 {
        2 + 2 * checkpoint_pages + log_pages
    }

    /// Byte offset of checkpoint slot `slot`.
    pub fn checkpoint_offset(&self, slot: u32) -> u64 {
        (2 + u64::from(slot) * self.checkpoint_pages) * PAGE_SIZE
    }

    /// Bytes of one checkpoint slot.
    pub fn checkpoint_bytes(&self) -> u64 {
        self.checkpoint_pages * PAGE_SIZE
    }

    /// Byte offset of the metadata log.
    pub fn log_offset(&self) -> u64 {
        (2 + 2 * self.checkpoint_pages) * PAGE_SIZE
    }

    /// Bytes of the metadata log.
    pub fn log_bytes(&self) -> u64 {
        self.log_pages * PAGE_SIZE
    }

    /// Encode to the on-media bytes.
    pub fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut raw = RawSuperblock {
            magic: MAGIC,
            format_version: FORMAT_VERSION.into(),
            header_size: (SUPERBLOCK_SIZE as u32).into(),
            uuid: self.uuid,
            pool_size: self.pool_size.into(),
            page_size: (PAGE_SIZE as u32).into(),
            active_checkpoint: self.active_checkpoint.into(),
            generation: self.generation.into(),
            checkpoint_pages: self.checkpoint_pages.into(),
            log_pages: self.log_pages.into(),
            data_start: self.data_start.into(),
            data_pages: self.data_pages.into(),
            created_unix: self.created_unix.into(),
            reserved: [0; 156],
            crc: 0.into(),
        };
        let crc = crc32c::crc32c(&raw.as_bytes()[..SUPERBLOCK_SIZE - 4]);
        raw.crc = crc.into();
        let mut out = [0u8; SUPERBLOCK_SIZE];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Decode and validate one copy.
    pub fn decode(bytes: &[u8]) -> Result<Superblock, SuperblockFault> {
        let raw = RawSuperblock::read_from_prefix(bytes).map_err(|_| SuperblockFault::NoMagic)?.0;
        if raw.magic != MAGIC {
            return Err(SuperblockFault::NoMagic);
        }
        let version = raw.format_version.get();
        if version > FORMAT_VERSION {
            return Err(SuperblockFault::NewerFormat(version));
        }
        if crc32c::crc32c(&raw.as_bytes()[..SUPERBLOCK_SIZE - 4]) != raw.crc.get() {
            return Err(SuperblockFault::BadChecksum);
        }
        let sb = Superblock {
            uuid: raw.uuid,
            pool_size: raw.pool_size.get(),
            active_checkpoint: raw.active_checkpoint.get(),
            generation: raw.generation.get(),
            checkpoint_pages: raw.checkpoint_pages.get(),
            log_pages: raw.log_pages.get(),
            data_start: raw.data_start.get(),
            data_pages: raw.data_pages.get(),
            created_unix: raw.created_unix.get(),
        };
        sb.validate_layout(version, raw.page_size.get()).map_err(SuperblockFault::BadLayout)?;
        Ok(sb)
    }

    fn validate_layout(&self, version: u32, page_size: u32) -> Result<(), String> {
        if version == 0 {
            return Err("format version 0".into());
        }
        if u64::from(page_size) != PAGE_SIZE {
            return Err(format!("page size {page_size}"));
        }
        if self.active_checkpoint > 1 {
            return Err(format!("active checkpoint slot {}", self.active_checkpoint));
        }
        if self.checkpoint_pages == 0 || self.log_pages == 0 {
            return Err("empty metadata area".into());
        }
        let meta = self
            .checkpoint_pages
            .checked_mul(2)
            .and_then(|c| c.checked_add(self.log_pages))
            .and_then(|m| m.checked_add(2));
        if meta != Some(self.data_start) {
            return Err(format!("data starts at page {}", self.data_start));
        }
        let end =
            self.data_start.checked_add(self.data_pages).and_then(|p| p.checked_mul(PAGE_SIZE));
        match end {
            Some(end) if end <= self.pool_size && self.data_pages > 0 => Ok(()),
            _ => Err(format!("{} data pages do not fit the pool", self.data_pages)),
        }
    }

    /// The pool UUID in the usual text form.
    pub fn uuid_string(&self) -> String {
        uuid::Uuid::from_bytes(self.uuid).hyphenated().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            uuid: [7; 16],
            pool_size: 64 << 20,
            active_checkpoint: 1,
            generation: 9,
            checkpoint_pages: 4,
            log_pages: 8,
            data_start: 18,
            data_pages: (64 << 20) / PAGE_SIZE - 18,
            created_unix: 1_700_000_000,
        }
    }

    #[test]
    fn superblock_round_trips() {
        let sb = sample();
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
    }

    #[test]
    fn flipped_bit_fails_the_checksum() {
        let mut bytes = sample().encode();
        bytes[50] ^= 1;
        assert_eq!(Superblock::decode(&bytes), Err(SuperblockFault::BadChecksum));
    }

    #[test]
    fn newer_format_is_reported_before_checksum() {
        let mut bytes = sample().encode();
        bytes[8] = 2;
        assert_eq!(Superblock::decode(&bytes), Err(SuperblockFault::NewerFormat(2)));
    }

    #[test]
    fn zeroed_page_has_no_magic() {
        assert_eq!(Superblock::decode(&[0; 256]), Err(SuperblockFault::NoMagic));
    }

    #[test]
    fn impossible_layout_is_rejected() {
        let mut sb = sample();
        sb.data_pages = u64::MAX / 2;
        assert!(matches!(Superblock::decode(&sb.encode()), Err(SuperblockFault::BadLayout(_))));
    }
}
