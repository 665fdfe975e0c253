//! Checkpoints: a full snapshot of the region table in one of two slots.
//!
//! The superblock names the active slot. A new checkpoint is written to the
//! other slot and made durable before the superblock switches to it, so the
//! active slot is never written while it is active.
//!
//! ```text
//! checkpoint slot
//! offset size field
//!      0    8 magic "PMVCKPT\0"
//!      8    8 generation (equals the superblock's)
//!     16    8 next region id
//!     24    8 region count R
//!     32    8 payload bytes P
//!     40   20 reserved, zero
//!     60    4 crc32c of bytes 0..60 and of the payload
//!     64    P payload: R region entries back to back (see region.rs)
//! ```

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::region::RegionEntry;

const MAGIC: [u8; 8] = *b"PMVCKPT\0";
/// Bytes of the checkpoint header.
pub const HEADER_SIZE: usize = 64;

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct RawHeader {
    magic: [u8; 8],
    generation: U64,
    next_region_id: U64,
    region_count: U64,
    payload_len: U64,
    reserved: [u8; 20],
    crc: U32,
}
const _: () = assert!(std::mem::size_of::<RawHeader>() == HEADER_SIZE);

/// A decoded checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub generation: u64,
    pub next_region_id: u64,
    pub regions: Vec<RegionEntry>,
}

/// Encode a checkpoint of `regions`.
pub fn encode<'a>(
    generation: u64,
    next_region_id: u64,
    regions: impl Iterator<Item = &'a RegionEntry>,
) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_SIZE];
    let mut count = 0u64;
    for r in regions {
        r.encode_into(&mut out);
        count += 1;
    }
    let mut head = RawHeader {
        magic: MAGIC,
        generation: generation.into(),
        next_region_id: next_region_id.into(),
        region_count: count.into(),
        payload_len: ((out.len() - HEADER_SIZE) as u64).into(),
        reserved: [0; 20],
        crc: 0.into(),
    };
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head.as_bytes()[..60]), &out[HEADER_SIZE..]);
    head.crc = crc.into();
    out[..HEADER_SIZE].copy_from_slice(head.as_bytes());
    out
}

/// Whether `bytes` start with the checkpoint magic.
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// The payload length a header announces, bounded by the slot size, so the
/// caller knows how much to read before decoding.
pub fn payload_len(header: &[u8], slot_bytes: u64) -> Result<usize, String> {
    let head = RawHeader::read_from_prefix(header)
        .map_err(|_| "the checkpoint header is cut short".to_string())?
        .0;
    if head.magic != MAGIC {
        return Err("the active checkpoint has no checkpoint magic".into());
    }
    let len = head.payload_len.get();
    if len > slot_bytes.saturating_sub(HEADER_SIZE as u64) {
        return Err(format!("the active checkpoint claims {len} bytes, more than its slot"));
    }
    Ok(len as usize)
}

/// Decode a checkpoint from its header and payload bytes.
pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
    let head = RawHeader::read_from_prefix(bytes)
        .map_err(|_| "the checkpoint header is cut short".to_string())?
        .0;
    let len = head.payload_len.get() as usize;
    let payload = bytes
        .get(HEADER_SIZE..HEADER_SIZE + len)
        .ok_or_else(|| "the checkpoint payload is cut short".to_string())?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head.as_bytes()[..60]), payload);
    if head.magic != MAGIC || crc != head.crc.get() {
        return Err("the active checkpoint's checksum does not match".into());
    }
    let count = head.region_count.get();
    // Each entry takes at least 40 bytes: bound the count before allocating.
    if count > (len / 40) as u64 {
        return Err(format!("the checkpoint claims {count} regions in {len} bytes"));
    }
    let mut regions = Vec::with_capacity(count as usize);
    let mut at = 0;
    for _ in 0..count {
        let (entry, used) = RegionEntry::decode(&payload[at..])?;
        regions.push(entry);
        at += used;
    }
    if at != len {
        return Err("the checkpoint has bytes after its last region".into());
    }
    Ok(Checkpoint {
        generation: head.generation.get(),
        next_region_id: head.next_region_id.get(),
        regions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::region::{Extent, RegionKind};

    fn regions() -> Vec<RegionEntry> {
        (0..3)
            .map(|i| RegionEntry {
                id: i,
                name: format!("r{i}"),
                kind: RegionKind::Fs,
                created_unix: 5,
                extents: vec![Extent { start: 10 + i * 4, count: 4 }],
                attrs: Default::default(),
            })
            .collect()
    }

    #[test]
    fn checkpoint_round_trips() {
        let bytes = encode(3, 9, regions().iter());
        assert_eq!(payload_len(&bytes, 1 << 20).unwrap(), bytes.len() - HEADER_SIZE);
        let back = decode(&bytes).unwrap();
        assert_eq!(back, Checkpoint { generation: 3, next_region_id: 9, regions: regions() });
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let bytes = encode(3, 9, regions().iter());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn oversized_payload_claim_is_bounded_by_the_slot() {
        let mut bytes = encode(1, 1, regions().iter());
        bytes[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(payload_len(&bytes, 4096).is_err());
    }
}
