//! [`MemStore`]: a [`PageStore`] in ordinary memory, for tests and benchmarks.
//!
//! Everything written is "durable" at once (there is no power to lose), so
//! `persist` only counts calls. Discarded pages are overwritten with a poison
//! pattern so that a test reading a freed page sees garbage instead of the
//! stale contents it hoped for. It assumes nothing about its callers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use crate::store::{byte_range, CommitSlot, PageRun, PageStore, StoreError, COMMIT_SLOT_SIZE};
use crate::PAGE_SIZE;

/// Byte written over discarded pages.
pub const DISCARD_POISON: u8 = 0xDE;

/// Pages and commit slots in memory.
#[derive(Debug)]
pub struct MemStore {
    page_count: u64,
    pages: RwLock<Vec<u8>>,
    slots: Mutex<[[u8; COMMIT_SLOT_SIZE]; 2]>,
    persists: AtomicU64,
    switches: AtomicU64,
    poison_discarded: AtomicBool,
}

impl MemStore {
    /// A store of `page_count` zeroed pages and two zeroed slots.
    pub fn new(page_count: u64) -> Self {
        let bytes = usize::try_from(page_count * PAGE_SIZE as u64).expect("store fits in memory");
        Self::from_image(vec![0; bytes], [[0; COMMIT_SLOT_SIZE]; 2])
    }

    /// A store holding the given page bytes (a whole number of pages) and
    /// commit slots, e.g. a crash image from [`crate::CrashStore`].
    pub fn from_image(pages: Vec<u8>, slots: [[u8; COMMIT_SLOT_SIZE]; 2]) -> Self {
        assert_eq!(pages.len() % PAGE_SIZE, 0, "image is a whole number of pages");
        MemStore {
            page_count: (pages.len() / PAGE_SIZE) as u64,
            pages: RwLock::new(pages),
            slots: Mutex::new(slots),
            persists: AtomicU64::new(0),
            switches: AtomicU64::new(0),
            poison_discarded: AtomicBool::new(true),
        }
    }

    /// Copies of all pages and both slots.
    pub fn image(&self) -> (Vec<u8>, [[u8; COMMIT_SLOT_SIZE]; 2]) {
        let pages = self.pages.read().unwrap_or_else(PoisonError::into_inner).clone();
        let slots = *self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        (pages, slots)
    }

    /// How many times `persist` was called.
    pub fn persist_count(&self) -> u64 {
        self.persists.load(Ordering::Relaxed)
    }

    /// How many times `switch_commit` was called.
    pub fn switch_count(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// Whether `discard` overwrites pages with [`DISCARD_POISON`] (the
    /// default, for tests). Benchmarks turn it off: a real store does not
    /// spend a memset on a freed page.
    pub fn set_discard_poison(&self, poison: bool) {
        self.poison_discarded.store(poison, Ordering::Relaxed);
    }

    /// Overwrites bytes without going through RVM: for corruption tests.
    pub fn corrupt(&self, page: u64, offset: usize, data: &[u8]) {
        self.write(page, offset, data).expect("corruption lies within the store");
    }

    /// Overwrites a commit slot without counting a switch: for corruption tests.
    pub fn corrupt_slot(&self, slot: CommitSlot, offset: usize, data: &[u8]) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots[slot.index()][offset..offset + data.len()].copy_from_slice(data);
    }
}

impl PageStore for MemStore {
    fn page_count(&self) -> u64 {
        self.page_count
    }

    fn read(&self, page: u64, offset: usize, buf: &mut [u8]) -> Result<(), StoreError> {
        let range = byte_range(page, offset, buf.len(), self.page_count)?;
        let pages = self.pages.read().unwrap_or_else(PoisonError::into_inner);
        buf.copy_from_slice(&pages[range]);
        Ok(())
    }

    fn write(&self, page: u64, offset: usize, data: &[u8]) -> Result<(), StoreError> {
        let range = byte_range(page, offset, data.len(), self.page_count)?;
        let mut pages = self.pages.write().unwrap_or_else(PoisonError::into_inner);
        pages[range].copy_from_slice(data);
        Ok(())
    }

    fn copy_pages(&self, from: u64, to: u64, count: u64) -> Result<(), StoreError> {
        let len = usize::try_from(count).unwrap_or(usize::MAX).saturating_mul(PAGE_SIZE);
        let src = byte_range(from, 0, len, self.page_count)?;
        let dst = byte_range(to, 0, len, self.page_count)?;
        let mut pages = self.pages.write().unwrap_or_else(PoisonError::into_inner);
        pages.copy_within(src, dst.start);
        Ok(())
    }

    fn persist(&self, runs: &[PageRun]) -> Result<(), StoreError> {
        for run in runs {
            let len = usize::try_from(run.count).unwrap_or(usize::MAX).saturating_mul(PAGE_SIZE);
            byte_range(run.start, 0, len, self.page_count)?;
        }
        self.persists.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn read_commit_slot(&self, slot: CommitSlot) -> Result<[u8; COMMIT_SLOT_SIZE], StoreError> {
        Ok(self.slots.lock().unwrap_or_else(PoisonError::into_inner)[slot.index()])
    }

    fn switch_commit(
        &self,
        slot: CommitSlot,
        record: &[u8; COMMIT_SLOT_SIZE],
    ) -> Result<(), StoreError> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)[slot.index()] = *record;
        self.switches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn discard(&self, runs: &[PageRun]) -> Result<(), StoreError> {
        if !self.poison_discarded.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut pages = self.pages.write().unwrap_or_else(PoisonError::into_inner);
        for run in runs {
            let len = usize::try_from(run.count).unwrap_or(usize::MAX).saturating_mul(PAGE_SIZE);
            let range = byte_range(run.start, 0, len, self.page_count)?;
            pages[range].fill(DISCARD_POISON);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_spanning_pages_read_back() {
        let store = MemStore::new(4);
        let data: Vec<u8> = (0..6000u32).map(|i| (i % 251) as u8).collect();
        store.write(1, 100, &data).unwrap();
        let mut back = vec![0; data.len()];
        store.read(1, 100, &mut back).unwrap();
        assert_eq!(back, data);
        assert!(store.write(3, 4000, &[0; 200]).is_err());
    }

    #[test]
    fn copy_and_discard_act_on_whole_pages() {
        let store = MemStore::new(4);
        store.write(0, 0, &[7; PAGE_SIZE * 2]).unwrap();
        store.copy_pages(0, 2, 2).unwrap();
        let mut page = vec![0; PAGE_SIZE];
        store.read(3, 0, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 7));
        store.discard(&[PageRun::new(3, 1)]).unwrap();
        store.read(3, 0, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == DISCARD_POISON));
    }
}
