//! The swap tier: slower storage where evicted-but-kept blocks live.
//!
//! [`SwapStore`] is the narrow interface a tier implements: write and read
//! 4 KiB slots, and `sync` to make every written slot durable. Writes may be
//! batched and made durable only at `sync`, so a remote, batched store
//! (object storage, a replicated cache) fits the same trait. Which slots are
//! in use is not stored by the tier at all: the block maps of the regions
//! name them, and [`SlotAllocator`] is rebuilt from the maps at open.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::pool::{Media, PAGE_SIZE};

/// Slot storage for evicted blocks.
pub trait SwapStore: Send + Sync + std::fmt::Debug {
    /// Store one 4 KiB block in `slot` (durable after `sync`).
    fn write_slot(&self, slot: u64, data: &[u8]) -> io::Result<()>;
    /// Store consecutive blocks in slots `first..` (`data` is whole blocks).
    fn write_slots(&self, first: u64, data: &[u8]) -> io::Result<()> {
        for (i, block) in data.chunks(PAGE_SIZE as usize).enumerate() {
            self.write_slot(first + i as u64, block)?;
        }
        Ok(())
    }
    /// Store the blocks at byte `offsets` of `media` in slots `first..`,
    /// in order. A file tier writes them straight from the medium.
    fn write_slots_from(&self, first: u64, media: &dyn Media, offsets: &[u64]) -> io::Result<()> {
        let mut run = vec![0u8; offsets.len() * PAGE_SIZE as usize];
        for (block, &offset) in run.chunks_mut(PAGE_SIZE as usize).zip(offsets) {
            media.read(offset, block)?;
        }
        self.write_slots(first, &run)
    }
    /// Read one 4 KiB block from `slot`.
    fn read_slot(&self, slot: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Read slots `first..`, in order, into the blocks at byte `offsets`
    /// of `media` (not yet durable there). A file tier reads them straight
    /// into the medium.
    fn read_slots_into(&self, first: u64, media: &dyn Media, offsets: &[u64]) -> io::Result<()> {
        let mut block = vec![0u8; PAGE_SIZE as usize];
        for (i, &offset) in offsets.iter().enumerate() {
            self.read_slot(first + i as u64, &mut block)?;
            media.write(offset, &block)?;
        }
        Ok(())
    }
    /// Make every slot written so far durable.
    fn sync(&self) -> io::Result<()>;
    /// `slot` is free; the store may give its space back.
    fn discard_slot(&self, slot: u64);
}

/// A swap file: slot `n` at byte `n * 4096`, grown on demand, sparse.
#[derive(Debug)]
pub struct FileSwap {
    path: PathBuf,
    file: File,
}

impl FileSwap {
    /// Open or create the swap file at `path`.
    pub fn open(path: &Path) -> io::Result<FileSwap> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        Ok(FileSwap { path: path.to_path_buf(), file })
    }

    /// Where the swap file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl SwapStore for FileSwap {
    fn write_slot(&self, slot: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, slot * PAGE_SIZE)
    }

    fn write_slots(&self, first: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, first * PAGE_SIZE)
    }

    fn write_slots_from(&self, first: u64, media: &dyn Media, offsets: &[u64]) -> io::Result<()> {
        media.write_ranges_to(&block_ranges(offsets), &self.file, first * PAGE_SIZE)
    }

    fn read_slots_into(&self, first: u64, media: &dyn Media, offsets: &[u64]) -> io::Result<()> {
        media.read_ranges_from(&block_ranges(offsets), &self.file, first * PAGE_SIZE)
    }

    fn read_slot(&self, slot: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], slot * PAGE_SIZE + done as u64)? {
                // Past the end of the file: never written, reads as zeros.
                0 => {
                    buf[done..].fill(0);
                    break;
                }
                n => done += n,
            }
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard_slot(&self, slot: u64) {
        use rustix::fs::FallocateFlags;
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        let _ = rustix::fs::fallocate(&self.file, flags, slot * PAGE_SIZE, PAGE_SIZE);
    }
}

/// The blocks at byte `offsets` as `(offset, len)` ranges, neighbours in
/// the medium merged.
fn block_ranges(offsets: &[u64]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &offset in offsets {
        match ranges.last_mut() {
            Some((start, len)) if *start + *len == offset => *len += PAGE_SIZE,
            _ => ranges.push((offset, PAGE_SIZE)),
        }
    }
    ranges
}

/// Swap slots on a [`Media`] window (crash tests: the slots share the crash
/// medium with the pool, so one persist counter covers both).
#[derive(Debug)]
pub struct MediaSwap {
    media: Arc<dyn Media>,
    base: u64,
    slots: u64,
}

impl MediaSwap {
    /// Slots `0..slots` at byte `base` of `media`.
    pub fn new(media: Arc<dyn Media>, base: u64, slots: u64) -> MediaSwap {
        MediaSwap { media, base, slots }
    }

    fn offset(&self, slot: u64) -> io::Result<u64> {
        if slot >= self.slots {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "the swap medium is full"));
        }
        Ok(self.base + slot * PAGE_SIZE)
    }
}

impl SwapStore for MediaSwap {
    fn write_slot(&self, slot: u64, data: &[u8]) -> io::Result<()> {
        let at = self.offset(slot)?;
        self.media.write(at, data)?;
        self.media.flush(at, data.len() as u64)
    }

    fn read_slot(&self, slot: u64, buf: &mut [u8]) -> io::Result<()> {
        self.media.read(self.offset(slot)?, buf)
    }

    fn sync(&self) -> io::Result<()> {
        self.media.barrier()
    }

    fn discard_slot(&self, _slot: u64) {}
}

/// Free and used swap slots, shared by every block region of a pool.
#[derive(Debug, Default)]
pub struct SlotAllocator {
    used: BTreeSet<u64>,
    /// Freed below `next`, reused first (lowest first keeps the file small).
    free: BTreeSet<u64>,
    next: u64,
}

impl SlotAllocator {
    /// Record a slot a block map names (at open).
    pub fn claim(&mut self, slot: u64) -> bool {
        if !self.used.insert(slot) {
            return false;
        }
        self.free.remove(&slot);
        while self.next < slot {
            self.free.insert(self.next);
            self.next += 1;
        }
        if slot >= self.next {
            self.next = slot + 1;
        }
        true
    }

    /// Take a free slot.
    pub fn allocate(&mut self) -> u64 {
        let slot = self.free.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.used.insert(slot);
        slot
    }

    /// Give a slot back (its map entry no longer names it, durably).
    pub fn release(&mut self, slot: u64) {
        if self.used.remove(&slot) {
            self.free.insert(slot);
        }
    }

    /// Slots in use.
    pub fn used(&self) -> u64 {
        self.used.len() as u64
    }
}

/// A swap tier: the store and the allocator of its slots.
#[derive(Debug)]
pub struct SwapTier {
    pub store: Box<dyn SwapStore>,
    pub slots: Mutex<SlotAllocator>,
}

impl SwapTier {
    /// A tier over `store` with no slot in use yet.
    pub fn new(store: Box<dyn SwapStore>) -> Arc<SwapTier> {
        Arc::new(SwapTier { store, slots: Mutex::new(SlotAllocator::default()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_claimed_at_open_are_never_handed_out() {
        let mut a = SlotAllocator::default();
        assert!(a.claim(3));
        assert!(!a.claim(3), "a slot named twice is reported");
        let got: Vec<u64> = (0..4).map(|_| a.allocate()).collect();
        assert_eq!(got, vec![0, 1, 2, 4]);
        a.release(1);
        assert_eq!(a.allocate(), 1);
        assert_eq!(a.used(), 5);
    }

    #[test]
    fn file_swap_round_trips_and_unwritten_slots_read_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let swap = FileSwap::open(&dir.path().join("s/pool.swap")).unwrap();
        swap.write_slot(2, &[7u8; 4096]).unwrap();
        swap.sync().unwrap();
        let mut buf = [1u8; 4096];
        swap.read_slot(2, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 4096]);
        swap.read_slot(9, &mut buf).unwrap();
        assert_eq!(buf, [0u8; 4096]);
    }
}
