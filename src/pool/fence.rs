//! The fence record: what a power-outage fence left in the pool (SPEC §8).
//!
//! When the POD sequence has committed and flushed everything, it writes a
//! fence record and makes the pool read-only. The record says when the pool
//! was fenced, the metadata state it was fenced at (superblock generation
//! and journal length), and carries the sequence's report (per-phase
//! timings, which VMs saved where) as an opaque, checksummed body. The next
//! open sees it: a pool whose newest record is *fenced* and whose metadata
//! is exactly what the record names opens with no recovery work, and stays
//! unwritable until its opener marks the fence *lifted* (the daemon does at
//! start); `pmvisor pod cancel` marks it *cancelled*.
//!
//! # Place in the pool
//!
//! Superblock pages 0 and 1 use only their first 256 bytes. Bytes
//! 2048..4096 of each hold one fence slot; records alternate between them
//! (slot = sequence % 2) and the newest valid one wins, so a torn write
//! leaves the previous record standing. Pools made before fences existed
//! hold zeros there: no magic, no record, and they open as before.
//!
//! ```text
//! offset size field
//!      0    8 magic "PMVFENCE"
//!      8    4 record version (1)
//!     12    4 state: 1 fenced, 2 cancelled, 3 lifted
//!     16   16 pool UUID (a record from an earlier format of the medium
//!             does not count)
//!     32    8 sequence (1, 2, ...)
//!     40    8 superblock generation when fenced
//!     48    8 journal bytes in use when fenced
//!     56    8 fence time, nanoseconds since the Unix epoch
//!     64    4 report length
//!     68    4 crc32c of the report
//!     72   52 reserved, zero
//!    124    4 crc32c of bytes 0..124
//!    128    - report (at most 1,920 bytes)
//! ```

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::superblock::Superblock;
use super::{Media, Pool, PoolError, Result, PAGE_SIZE};

/// The fence record magic.
pub const FENCE_MAGIC: [u8; 8] = *b"PMVFENCE";
/// The record version this build writes.
pub const FENCE_VERSION: u32 = 1;
/// Where a fence slot starts inside its superblock page.
pub const FENCE_SLOT_OFFSET: u64 = 2048;
/// Bytes of one fence slot.
pub const FENCE_SLOT_BYTES: usize = 2048;
const HEADER_SIZE: usize = 128;
/// The largest report a record carries.
pub const MAX_FENCE_REPORT: usize = FENCE_SLOT_BYTES - HEADER_SIZE;

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy)]
#[repr(C)]
struct RawFence {
    magic: [u8; 8],
    version: U32,
    state: U32,
    uuid: [u8; 16],
    sequence: U64,
    generation: U64,
    journal_bytes: U64,
    fenced_unix_ns: U64,
    report_len: U32,
    report_crc: U32,
    reserved: [u8; 52],
    crc: U32,
}

const _: () = assert!(std::mem::size_of::<RawFence>() == HEADER_SIZE);

/// What a fence record says about the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FenceState {
    /// Fenced: everything was durable and nothing was written since.
    Fenced,
    /// Power came back in time; `pod cancel` lifted the fence.
    Cancelled,
    /// A later open (the daemon's start) lifted the fence.
    Lifted,
}

impl FenceState {
    /// The state's name, as the API and `pool info` show it.
    pub fn name(self) -> &'static str {
        match self {
            FenceState::Fenced => "fenced",
            FenceState::Cancelled => "cancelled",
            FenceState::Lifted => "lifted",
        }
    }

    fn code(self) -> u32 {
        match self {
            FenceState::Fenced => 1,
            FenceState::Cancelled => 2,
            FenceState::Lifted => 3,
        }
    }

    fn from_code(code: u32) -> Option<FenceState> {
        match code {
            1 => Some(FenceState::Fenced),
            2 => Some(FenceState::Cancelled),
            3 => Some(FenceState::Lifted),
            _ => None,
        }
    }
}

/// A decoded fence record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceRecord {
    pub sequence: u64,
    pub state: FenceState,
    /// The superblock generation when the pool was fenced.
    pub generation: u64,
    /// Journal bytes in use when the pool was fenced.
    pub journal_bytes: u64,
    pub fenced_unix_ns: u64,
    /// The POD report, as its writer encoded it.
    pub report: Vec<u8>,
}

/// The fence as the pool saw it at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceAtOpen {
    /// The newest valid record.
    pub record: FenceRecord,
    /// The record is *fenced* and the metadata is exactly what it names:
    /// nothing was written after the fence, so nothing needs recovering.
    pub clean: bool,
}

/// Byte offset of fence slot `slot` (0 or 1).
pub fn slot_offset(slot: u64) -> u64 {
    slot * PAGE_SIZE + FENCE_SLOT_OFFSET
}

impl FenceRecord {
    /// Encode for slot `sequence % 2`; a report longer than
    /// [`MAX_FENCE_REPORT`] is refused by the caller.
    pub fn encode(&self, uuid: &[u8; 16]) -> Vec<u8> {
        let mut raw = RawFence {
            magic: FENCE_MAGIC,
            version: FENCE_VERSION.into(),
            state: self.state.code().into(),
            uuid: *uuid,
            sequence: self.sequence.into(),
            generation: self.generation.into(),
            journal_bytes: self.journal_bytes.into(),
            fenced_unix_ns: self.fenced_unix_ns.into(),
            report_len: (self.report.len() as u32).into(),
            report_crc: crc32c::crc32c(&self.report).into(),
            reserved: [0; 52],
            crc: 0.into(),
        };
        raw.crc = crc32c::crc32c(&raw.as_bytes()[..HEADER_SIZE - 4]).into();
        let mut out = raw.as_bytes().to_vec();
        out.extend_from_slice(&self.report);
        out
    }

    /// Decode one slot; `None` for anything that is not a whole, valid
    /// record of this pool (zeros, a torn write, another pool's record).
    pub fn decode(bytes: &[u8], uuid: &[u8; 16]) -> Option<FenceRecord> {
        let raw = RawFence::read_from_prefix(bytes).ok()?.0;
        if raw.magic != FENCE_MAGIC
            || raw.version.get() != FENCE_VERSION
            || crc32c::crc32c(&raw.as_bytes()[..HEADER_SIZE - 4]) != raw.crc.get()
            || &raw.uuid != uuid
        {
            return None;
        }
        let len = raw.report_len.get() as usize;
        if len > MAX_FENCE_REPORT {
            return None;
        }
        let report = bytes.get(HEADER_SIZE..HEADER_SIZE + len)?;
        if crc32c::crc32c(report) != raw.report_crc.get() {
            return None;
        }
        Some(FenceRecord {
            sequence: raw.sequence.get(),
            state: FenceState::from_code(raw.state.get())?,
            generation: raw.generation.get(),
            journal_bytes: raw.journal_bytes.get(),
            fenced_unix_ns: raw.fenced_unix_ns.get(),
            report: report.to_vec(),
        })
    }
}

/// The newest valid record in the two slots.
pub(super) fn read_newest(media: &dyn Media, sb: &Superblock) -> Option<FenceRecord> {
    let mut newest: Option<FenceRecord> = None;
    for slot in 0..2 {
        let mut buf = vec![0u8; FENCE_SLOT_BYTES];
        if media.read(slot_offset(slot), &mut buf).is_err() {
            continue;
        }
        let Some(record) = FenceRecord::decode(&buf, &sb.uuid) else { continue };
        if record.sequence % 2 == slot
            && newest.as_ref().is_none_or(|n| record.sequence > n.sequence)
        {
            newest = Some(record);
        }
    }
    newest
}

/// The fence as found at open, given the metadata state replay reached.
pub(super) fn at_open(
    media: &dyn Media,
    sb: &Superblock,
    journal_bytes: u64,
) -> Option<FenceAtOpen> {
    let record = read_newest(media, sb)?;
    let clean = record.state == FenceState::Fenced
        && record.generation == sb.generation
        && record.journal_bytes == journal_bytes;
    Some(FenceAtOpen { record, clean })
}

/// The pool's fence bookkeeping (inside the pool's state mutex).
#[derive(Debug, Clone, Default)]
pub(super) struct Fence {
    /// What open found.
    pub at_open: Option<FenceAtOpen>,
    /// The newest record on the medium.
    pub newest: Option<FenceRecord>,
    /// No change may be made: fenced now, or opened fenced and not lifted.
    pub fenced: bool,
}

impl Fence {
    pub(super) fn from_open(at_open: Option<FenceAtOpen>) -> Fence {
        Fence {
            fenced: at_open.as_ref().is_some_and(|f| f.clean),
            newest: at_open.as_ref().map(|f| f.record.clone()),
            at_open,
        }
    }
}

impl Pool {
    /// Write a *fenced* record carrying `report` and refuse every later
    /// change until the fence is lifted. The caller has made everything
    /// durable first; the record is durable when this returns.
    pub fn write_fence(&self, fenced_unix_ns: u64, report: &[u8]) -> Result<FenceRecord> {
        let mut st = self.writable_state()?;
        let record = FenceRecord {
            sequence: st.fence.newest.as_ref().map_or(1, |r| r.sequence + 1),
            state: FenceState::Fenced,
            generation: st.sb.generation,
            journal_bytes: st.cursor.offset,
            fenced_unix_ns,
            report: report.to_vec(),
        };
        self.put_fence(&mut st, &record)?;
        st.fence.fenced = true;
        Ok(record)
    }

    /// Make the pool's mapping read-only (after [`Pool::write_fence`]).
    pub fn protect(&self) -> Result<()> {
        self.media.protect(true).map_err(|source| PoolError::Io {
            path: self.path.clone(),
            operation: "making the pool read-only",
            source,
        })
    }

    /// Lift the fence: the mapping becomes writable again, a record in
    /// state `why` (cancelled or lifted) replaces the fenced one, and
    /// changes are accepted again. Does nothing on a pool that is not
    /// fenced.
    pub fn lift_fence(&self, why: FenceState) -> Result<Option<FenceRecord>> {
        if !self.writable {
            return Err(PoolError::ReadOnly { path: self.path.clone() });
        }
        let mut st = self.lock();
        if !st.fence.fenced {
            return Ok(None);
        }
        match self.media.protect(false) {
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {}
            other => other.map_err(|source| PoolError::Io {
                path: self.path.clone(),
                operation: "making the pool writable again",
                source,
            })?,
        }
        let newest = st.fence.newest.clone().expect("a fenced pool has a record");
        let record = FenceRecord { sequence: newest.sequence + 1, state: why, ..newest };
        self.put_fence(&mut st, &record)?;
        st.fence.fenced = false;
        Ok(Some(record))
    }

    /// The newest fence record, if the pool ever was fenced.
    pub fn fence_record(&self) -> Option<FenceRecord> {
        self.lock().fence.newest.clone()
    }

    /// What open found: `clean` when the pool was fenced and untouched since.
    pub fn fence_at_open(&self) -> Option<FenceAtOpen> {
        self.lock().fence.at_open.clone()
    }

    /// Whether changes are refused because of a fence.
    pub fn is_fenced(&self) -> bool {
        self.lock().fence.fenced
    }

    fn put_fence(&self, st: &mut super::State, record: &FenceRecord) -> Result<()> {
        if record.report.len() > MAX_FENCE_REPORT {
            return Err(PoolError::MetadataFull { capacity: MAX_FENCE_REPORT as u64 });
        }
        let bytes = record.encode(&st.sb.uuid);
        let at = slot_offset(record.sequence % 2);
        self.media
            .write(at, &bytes)
            .and_then(|()| self.media.persist(at, bytes.len() as u64))
            .map_err(|source| PoolError::Io {
                path: self.path.clone(),
                operation: "writing the fence record",
                source,
            })?;
        st.fence.newest = Some(record.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::pool::crash::{CrashMedia, TearGranularity};
    use crate::pool::{OpenMode, RegionKind};

    fn sample() -> FenceRecord {
        FenceRecord {
            sequence: 3,
            state: FenceState::Fenced,
            generation: 2,
            journal_bytes: 640,
            fenced_unix_ns: 1_700_000_000_000_000_000,
            report: br#"{"phases":[]}"#.to_vec(),
        }
    }

    #[test]
    fn a_record_round_trips() {
        let bytes = sample().encode(&[1; 16]);
        assert_eq!(FenceRecord::decode(&bytes, &[1; 16]), Some(sample()));
    }

    #[test]
    fn a_torn_or_foreign_record_is_no_record() {
        let bytes = sample().encode(&[1; 16]);
        assert_eq!(FenceRecord::decode(&bytes, &[2; 16]), None, "another pool's record");
        for at in [20, HEADER_SIZE + 3] {
            let mut torn = bytes.clone();
            torn[at] ^= 0x10;
            assert_eq!(FenceRecord::decode(&torn, &[1; 16]), None, "flipped byte {at}");
        }
        assert_eq!(FenceRecord::decode(&bytes[..HEADER_SIZE + 2], &[1; 16]), None);
        assert_eq!(FenceRecord::decode(&[0; FENCE_SLOT_BYTES], &[1; 16]), None);
    }

    fn pool_on(media: &Arc<CrashMedia>) -> Pool {
        let media: Arc<dyn Media> = Arc::clone(media) as Arc<dyn Media>;
        Pool::open_media(media, Path::new("mem"), OpenMode::ReadWrite).unwrap()
    }

    fn new_pool() -> (Arc<CrashMedia>, Pool) {
        let media = Arc::new(CrashMedia::new(4 << 20, TearGranularity::Nvram));
        let dynm: Arc<dyn Media> = Arc::clone(&media) as Arc<dyn Media>;
        let pool = Pool::format(dynm, Path::new("mem"), 4 << 20, Some(64 << 10)).unwrap();
        (media, pool)
    }

    #[test]
    fn a_fenced_pool_refuses_changes_and_reopens_fenced_and_clean() {
        let (media, pool) = new_pool();
        pool.create_region("a", RegionKind::Block, 8192).unwrap();
        assert_eq!(pool.fence_at_open(), None, "a fresh pool has no fence");
        let record = pool.write_fence(42, b"report").unwrap();
        pool.protect().unwrap();
        let err = pool.create_region("b", RegionKind::Block, 4096).unwrap_err();
        assert!(err.to_string().contains("is fenced after a power outage"), "{err}");
        drop(pool);
        let reopened = pool_on(&Arc::new(CrashMedia::from_image(
            media.durable_image(),
            TearGranularity::Nvram,
        )));
        let at_open = reopened.fence_at_open().unwrap();
        assert!(at_open.clean);
        assert_eq!(at_open.record, record);
        assert!(reopened.is_fenced(), "changes wait until the fence is lifted");
        assert!(reopened.create_region("b", RegionKind::Block, 4096).is_err());
        let lifted = reopened.lift_fence(FenceState::Lifted).unwrap().unwrap();
        assert_eq!((lifted.sequence, lifted.state), (2, FenceState::Lifted));
        reopened.create_region("b", RegionKind::Block, 4096).unwrap();
    }

    #[test]
    fn cancel_lifts_the_fence_in_place_and_the_next_fence_counts_on() {
        let (media, pool) = new_pool();
        pool.write_fence(1, b"one").unwrap();
        pool.protect().unwrap();
        let cancelled = pool.lift_fence(FenceState::Cancelled).unwrap().unwrap();
        assert_eq!(cancelled.state, FenceState::Cancelled);
        pool.create_region("a", RegionKind::Block, 4096).unwrap();
        let again = pool.write_fence(2, b"two").unwrap();
        assert_eq!(again.sequence, 3);
        assert_eq!(again.journal_bytes, pool.info().journal_used);
        drop(pool);
        let reopened = pool_on(&Arc::new(CrashMedia::from_image(
            media.durable_image(),
            TearGranularity::Nvram,
        )));
        assert!(reopened.fence_at_open().unwrap().clean);
        assert_eq!(reopened.fence_record().unwrap().report, b"two");
    }

    #[test]
    fn a_pool_changed_after_its_fence_is_not_clean() {
        let (media, pool) = new_pool();
        let record = pool.write_fence(1, b"r").unwrap();
        drop(pool);
        // An older pmvisor that knows no fences changes the pool.
        let image = media.durable_image();
        let older = Arc::new(CrashMedia::from_image(image, TearGranularity::Nvram));
        let pool = pool_on(&older);
        pool.lift_fence(FenceState::Lifted).unwrap();
        pool.create_region("x", RegionKind::Block, 4096).unwrap();
        // Put the fenced record back, as if the lift never happened.
        let sb = pool.lock().sb;
        older.write(slot_offset(record.sequence % 2), &record.encode(&sb.uuid)).unwrap();
        older.write(slot_offset(0), &[0; FENCE_SLOT_BYTES]).unwrap();
        older.persist(0, 2 * PAGE_SIZE).unwrap();
        drop(pool);
        let reopened = pool_on(&older);
        let at_open = reopened.fence_at_open().unwrap();
        assert!(!at_open.clean, "the journal grew after the fence");
        assert!(!reopened.is_fenced());
    }

    #[test]
    fn a_torn_fence_write_leaves_the_previous_record() {
        for point in 0..4 {
            let (media, pool) = new_pool();
            pool.write_fence(1, b"first").unwrap();
            pool.lift_fence(FenceState::Cancelled).unwrap();
            let before = media.persist_points();
            drop(pool);
            let crashing = Arc::new(
                CrashMedia::from_image(media.durable_image(), TearGranularity::Nvram)
                    .crash_at(point),
            );
            let pool = pool_on(&crashing);
            let _ = pool.write_fence(2, b"second");
            for image in crashing.crash_images(8, point as u64) {
                let pool =
                    pool_on(&Arc::new(CrashMedia::from_image(image, TearGranularity::Nvram)));
                let newest = pool.fence_record().unwrap();
                match newest.state {
                    FenceState::Cancelled => assert_eq!(newest.report, b"first"),
                    FenceState::Fenced => assert_eq!(newest.report, b"second"),
                    FenceState::Lifted => panic!("never lifted"),
                }
            }
            assert!(before > 0);
        }
    }
}
