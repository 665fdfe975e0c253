//! The metadata journal: an append-only redo log of region changes since the
//! active checkpoint.
//!
//! Each metadata operation is one record, written after the previous one and
//! made durable with a single persist; the operation has happened exactly
//! when its record is durable and valid. A record is valid when its magic,
//! epoch (the superblock generation), sequence number and checksum all
//! match. Checksums are chained (each record's crc starts from the previous
//! record's), so stale bytes left past the tail by a torn append can never
//! pass for the next record. Replay stops at the first invalid record.
//!
//! ```text
//! record
//! offset size field
//!      0    4 magic "PMVL"
//!      4    2 kind: 1 put region entry, 2 delete region
//!      6    2 reserved, zero
//!      8    8 epoch (superblock generation this log follows)
//!     16    8 sequence number within the epoch, from 0
//!     24    4 payload bytes P
//!     28    4 crc32c of bytes 0..28 and the payload, seeded with the
//!             previous record's crc (the first record's seed comes from
//!             the epoch)
//!     32    P payload: a region entry, or a region id (8 bytes)
//!      -    - zero padding to a multiple of 8
//! ```

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::region::RegionEntry;

const MAGIC: [u8; 4] = *b"PMVL";
/// Bytes of a record header.
pub const HEADER_SIZE: usize = 32;

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct RawRecord {
    magic: [u8; 4],
    kind: U16,
    reserved: U16,
    epoch: U64,
    sequence: U64,
    payload_len: U32,
    crc: U32,
}
const _: () = assert!(std::mem::size_of::<RawRecord>() == HEADER_SIZE);

/// One metadata change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create or replace a region's entry (create, rename, resize, attrs).
    Put(RegionEntry),
    /// Remove a region.
    Delete { id: u64 },
}

/// Where the next record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub offset: u64,
    pub sequence: u64,
    pub crc: u32,
}

impl Cursor {
    /// The empty log of `epoch` in the pool `uuid`. The seed ties the
    /// checksum chain to both, so records of an earlier pool on the same
    /// device, or of an earlier epoch, never continue this log.
    pub fn start(epoch: u64, uuid: &[u8; 16]) -> Cursor {
        let seed = crc32c::crc32c_append(crc32c::crc32c(uuid), &epoch.to_le_bytes());
        Cursor { offset: 0, sequence: 0, crc: seed }
    }
}

/// Encode `change` as the record at `cursor`; returns the bytes and the
/// cursor after it.
pub fn encode(epoch: u64, cursor: Cursor, change: &Change) -> (Vec<u8>, Cursor) {
    let mut out = vec![0u8; HEADER_SIZE];
    let kind = match change {
        Change::Put(entry) => {
            entry.encode_into(&mut out);
            1
        }
        Change::Delete { id } => {
            out.extend_from_slice(&id.to_le_bytes());
            2
        }
    };
    let payload_len = out.len() - HEADER_SIZE;
    out.resize(out.len().next_multiple_of(8), 0);
    let mut head = RawRecord {
        magic: MAGIC,
        kind: U16::new(kind),
        reserved: U16::new(0),
        epoch: epoch.into(),
        sequence: cursor.sequence.into(),
        payload_len: (payload_len as u32).into(),
        crc: 0.into(),
    };
    let crc = crc32c::crc32c_append(
        crc32c::crc32c_append(cursor.crc, &head.as_bytes()[..28]),
        &out[HEADER_SIZE..HEADER_SIZE + payload_len],
    );
    head.crc = crc.into();
    out[..HEADER_SIZE].copy_from_slice(head.as_bytes());
    let next =
        Cursor { offset: cursor.offset + out.len() as u64, sequence: cursor.sequence + 1, crc };
    (out, next)
}

/// How replay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// Zeros, the log's end, or records of an older epoch: nothing torn.
    Clean,
    /// A record of this epoch that fails its checks: an append was torn.
    Torn(String),
}

/// Where replay reads the log from: `read(offset, buf)` fills `buf` from the
/// log at `offset`, or returns false when that range is outside the log or
/// cannot be read.
pub trait LogSource {
    fn read_log(&mut self, offset: u64, buf: &mut [u8]) -> bool;
}

impl LogSource for &[u8] {
    fn read_log(&mut self, offset: u64, buf: &mut [u8]) -> bool {
        let at = offset as usize;
        match self.get(at..at + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

/// Largest payload a record may announce; bounds the read before allocating.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// The valid records of a log, in order, the cursor after them and how the
/// log ended. Reads only the records, never the whole log area.
pub fn replay(mut log: impl LogSource, epoch: u64, uuid: &[u8; 16]) -> (Vec<Change>, Cursor, Tail) {
    let mut cursor = Cursor::start(epoch, uuid);
    let mut changes = Vec::new();
    let mut head_bytes = [0u8; HEADER_SIZE];
    let mut payload = Vec::new();
    loop {
        let at = cursor.offset as usize;
        if !log.read_log(cursor.offset, &mut head_bytes) {
            return (changes, cursor, Tail::Clean);
        }
        let head = RawRecord::read_from_bytes(&head_bytes[..]).expect("header-sized slice");
        if head.magic != MAGIC || head.epoch.get() != epoch {
            return (changes, cursor, Tail::Clean);
        }
        let torn =
            |why: &str| Tail::Torn(format!("record {} at log byte {at} {why}", cursor.sequence));
        let len = head.payload_len.get() as usize;
        if len > MAX_PAYLOAD {
            return (changes, cursor, torn("announces an impossible length"));
        }
        payload.resize(len, 0);
        if !log.read_log((at + HEADER_SIZE) as u64, &mut payload) {
            return (changes, cursor, torn("runs past the end of the log"));
        }
        let payload = &payload[..];
        if head.sequence.get() != cursor.sequence {
            return (changes, cursor, torn("is out of sequence"));
        }
        let crc = crc32c::crc32c_append(
            crc32c::crc32c_append(cursor.crc, &head.as_bytes()[..28]),
            payload,
        );
        if crc != head.crc.get() {
            return (changes, cursor, torn("fails its checksum"));
        }
        let change = match head.kind.get() {
            1 => match RegionEntry::decode(payload) {
                Ok((entry, used)) if used == len => Change::Put(entry),
                Ok(_) => return (changes, cursor, torn("has trailing bytes")),
                Err(e) => return (changes, cursor, torn(&format!("is unreadable: {e}"))),
            },
            2 if len == 8 => {
                Change::Delete { id: u64::from_le_bytes(payload.try_into().expect("8 bytes")) }
            }
            _ => return (changes, cursor, torn("has an unknown kind")),
        };
        changes.push(change);
        cursor = Cursor {
            offset: (at + HEADER_SIZE + len).next_multiple_of(8) as u64,
            sequence: cursor.sequence + 1,
            crc,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::region::{Extent, RegionKind};

    fn put(id: u64) -> Change {
        Change::Put(RegionEntry {
            id,
            name: format!("region-{id}"),
            kind: RegionKind::Block,
            created_unix: 1,
            extents: vec![Extent { start: 50, count: id + 1 }],
            attrs: Default::default(),
        })
    }

    const UUID: [u8; 16] = [3; 16];

    fn log_of(epoch: u64, changes: &[Change]) -> (Vec<u8>, Cursor) {
        let mut log = vec![0u8; 8192];
        let mut cursor = Cursor::start(epoch, &UUID);
        for c in changes {
            let (bytes, next) = encode(epoch, cursor, c);
            log[cursor.offset as usize..next.offset as usize].copy_from_slice(&bytes);
            cursor = next;
        }
        (log, cursor)
    }

    #[test]
    fn replay_returns_every_record_in_order() {
        let changes = vec![put(1), Change::Delete { id: 1 }, put(2)];
        let (log, end) = log_of(4, &changes);
        assert_eq!(replay(&log[..], 4, &UUID), (changes, end, Tail::Clean));
    }

    #[test]
    fn records_of_another_epoch_end_the_log_cleanly() {
        let (log, _) = log_of(4, &[put(1)]);
        let (changes, cursor, tail) = replay(&log[..], 5, &UUID);
        assert!(changes.is_empty());
        assert_eq!((cursor, tail), (Cursor::start(5, &UUID), Tail::Clean));
    }

    #[test]
    fn torn_record_is_reported_and_ignored() {
        let (mut log, end) = log_of(4, &[put(1), put(2)]);
        log[end.offset as usize - 9] ^= 1;
        let (changes, _, tail) = replay(&log[..], 4, &UUID);
        assert_eq!(changes, vec![put(1)]);
        assert!(matches!(tail, Tail::Torn(_)));
    }

    #[test]
    fn a_stale_record_past_the_tail_is_not_replayed() {
        // Log A: put(1), put(2). Then the log is rewritten from the start
        // with one longer record; put(2)'s bytes may survive past the tail
        // but its chained crc no longer matches.
        let (mut log, _) = log_of(4, &[put(1), put(2)]);
        let (first, after) = encode(4, Cursor::start(4, &UUID), &put(9));
        log[..first.len()].copy_from_slice(&first);
        let (changes, cursor, _) = replay(&log[..], 4, &UUID);
        assert_eq!(changes, vec![put(9)]);
        assert_eq!(cursor, after);
    }
}
