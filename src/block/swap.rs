//! The swap tier: slower storage where evicted-but-kept blocks live.
//!
//! [`SwapStore`] is the narrow interface a tier implements: write and read
//! 4 KiB slots, and `sync` to make every written slot durable. Writes may be
//! batched and made durable only at `sync`, so a remote, batched store
//! (object storage, a replicated cache) fits the same trait. Which slots are
//! in use is not stored by the tier at all: the block maps of the regions
//! name them, and [`SlotAllocator`] is rebuilt from the maps at open.

use std::io;
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
    /// in order; the caller keeps writers away from those blocks meanwhile.
    /// A file tier copies them straight from the medium.
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
    /// of `media` (not yet durable there); `cold`: nobody is waiting to
    /// read them ([`Media::write_cold`]). A file tier reads them straight
    /// into the medium.
    fn read_slots_into(
        &self,
        first: u64,
        media: &dyn Media,
        offsets: &[u64],
        cold: bool,
    ) -> io::Result<()> {
        put_each(first, media, offsets, cold, |slot, block| self.read_slot(slot, block))
    }
    /// Make every slot written so far durable.
    fn sync(&self) -> io::Result<()>;
    /// `slot` is free; the store may give its space back.
    fn discard_slot(&self, slot: u64);
    /// Every slot of `slots` is free (a store may give their space back in
    /// runs).
    fn discard_slots(&self, slots: &[u64]) {
        slots.iter().for_each(|&slot| self.discard_slot(slot));
    }
    /// Keep about `bytes` of free space ready for stores, past the slots in
    /// use, so that an eviction does not wait for space to be allocated
    /// (a hint; a store with nothing to prepare ignores it).
    fn keep_ready(&self, _bytes: u64) {}
}

/// Write a block read from swap into `media`: cold ([`Media::write_cold`])
/// when nobody waits to read it.
pub(super) fn put(media: &dyn Media, offset: u64, data: &[u8], cold: bool) -> io::Result<()> {
    if cold {
        media.write_cold(offset, data)
    } else {
        media.write(offset, data)
    }
}

/// Reads slots `first..` one at a time with `read` and puts each into the
/// block at its offset of `media` (see [`put`]).
pub(super) fn put_each(
    first: u64,
    media: &dyn Media,
    offsets: &[u64],
    cold: bool,
    mut read: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut block = vec![0u8; PAGE_SIZE as usize];
    for (i, &offset) in offsets.iter().enumerate() {
        read(first + i as u64, &mut block)?;
        put(media, offset, &block, cold)?;
    }
    Ok(())
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

/// Free and used swap slots, shared by every block region of a pool: a bit
/// per slot, and the lowest slot that may be free, so that allocation
/// takes the lowest free slot (keeping the file small) in a few word
/// reads, and an eviction of 65,536 blocks allocates in well under a
/// millisecond.
#[derive(Debug, Default)]
pub struct SlotAllocator {
    used: Vec<u64>,
    /// Every slot below it is used.
    lowest_free: u64,
    count: u64,
}

impl SlotAllocator {
    fn is_used(&self, slot: u64) -> bool {
        self.used.get((slot / 64) as usize).is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }

    fn set(&mut self, slot: u64) {
        let word = (slot / 64) as usize;
        if word >= self.used.len() {
            self.used.resize(word + 1, 0);
        }
        self.used[word] |= 1 << (slot % 64);
        self.count += 1;
    }

    /// Record a slot a block map names (at open); false when it was
    /// already named.
    pub fn claim(&mut self, slot: u64) -> bool {
        if self.is_used(slot) {
            return false;
        }
        self.set(slot);
        true
    }

    /// Take the lowest free slot.
    pub fn allocate(&mut self) -> u64 {
        let mut word = (self.lowest_free / 64) as usize;
        while word < self.used.len() && self.used[word] == u64::MAX {
            word += 1;
        }
        let slot = match self.used.get(word) {
            Some(&bits) => word as u64 * 64 + u64::from((!bits).trailing_zeros()),
            None => word as u64 * 64,
        };
        self.set(slot);
        self.lowest_free = slot + 1;
        slot
    }

    /// Give a slot back (its map entry no longer names it, durably).
    pub fn release(&mut self, slot: u64) {
        if self.is_used(slot) {
            self.used[(slot / 64) as usize] &= !(1 << (slot % 64));
            self.count -= 1;
            self.lowest_free = self.lowest_free.min(slot);
        }
    }

    /// Slots in use.
    pub fn used(&self) -> u64 {
        self.count
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

    proptest::proptest! {
        #[test]
        fn allocation_hands_out_the_lowest_free_slot(
            ops in proptest::collection::vec((proptest::bool::ANY, 0u64..200), 0..300),
        ) {
            let (mut a, mut model) = (SlotAllocator::default(), std::collections::BTreeSet::new());
            for (allocate, slot) in ops {
                if allocate {
                    let expected = (0..).find(|s| !model.contains(s)).unwrap();
                    proptest::prop_assert_eq!(a.allocate(), expected);
                    model.insert(expected);
                } else {
                    a.release(slot);
                    model.remove(&slot);
                }
                proptest::prop_assert_eq!(a.used(), model.len() as u64);
            }
        }
    }

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
}
