//! `RegionStore`: an `fs` region of the pool as RVM's page store.
//!
//! ```text
//! region page 0      commit slot A at byte 0, commit slot B at byte 2048
//!                    (separate 512-byte sectors, so a torn slot write on a
//!                    disk-backed pool cannot touch the other slot)
//! region pages 1..   store pages 0.. (RVM's physical pages)
//! ```
//!
//! Every durability step goes through the pool's medium (`flush` per run,
//! one `barrier` per persist), so the pool's crash media can stop RVM at
//! any of its persist points. The region must not be resized while a store
//! is open on it (its layout is a snapshot).

use std::sync::Arc;

use rvmfs::{CommitSlot, PageRun, PageStore, StoreError, COMMIT_SLOT_SIZE};

use crate::pool::{Media, Pool, PoolError, RegionKind, RegionLayout, PAGE_SIZE};

const SLOT_OFFSETS: [u64; 2] = [0, 2048];

/// RVM pages in a pool region.
#[derive(Debug)]
pub struct RegionStore {
    media: Arc<dyn Media>,
    layout: RegionLayout,
    pages: u64,
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Io(e)
}

impl RegionStore {
    /// The store over region `name`, which must be an `fs` region of at
    /// least two pages.
    pub fn open(pool: &Pool, name: &str) -> Result<RegionStore, PoolError> {
        let info = pool.region(name)?;
        if info.kind != RegionKind::Fs || info.size < 2 * PAGE_SIZE {
            return Err(PoolError::Unsupported {
                path: pool.path().to_path_buf(),
                feature: "an RVM store",
                why: format!("region {name:?} is a {} region of {} bytes", info.kind, info.size),
            });
        }
        let layout = RegionLayout::new(&info.extents);
        let pages = layout.pages() - 1;
        Ok(RegionStore { media: pool.media().clone(), layout, pages })
    }

    fn check(&self, page: u64, offset: usize, len: usize) -> Result<u64, StoreError> {
        let start = page.checked_mul(PAGE_SIZE).and_then(|b| b.checked_add(offset as u64));
        match start.and_then(|s| s.checked_add(len as u64)) {
            Some(end) if end <= self.pages * PAGE_SIZE => Ok(start.expect("checked") + PAGE_SIZE),
            _ => Err(StoreError::OutOfRange {
                page,
                offset: offset as u64,
                end: offset as u64 + len as u64,
                page_count: self.pages,
            }),
        }
    }
}

impl PageStore for RegionStore {
    fn page_count(&self) -> u64 {
        self.pages
    }

    fn read(&self, page: u64, offset: usize, buf: &mut [u8]) -> Result<(), StoreError> {
        let at = self.check(page, offset, buf.len())?;
        let mut done = 0usize;
        for (medium, len) in self.layout.ranges(at, buf.len() as u64) {
            self.media.read(medium, &mut buf[done..done + len as usize]).map_err(io)?;
            done += len as usize;
        }
        Ok(())
    }

    fn write(&self, page: u64, offset: usize, data: &[u8]) -> Result<(), StoreError> {
        let at = self.check(page, offset, data.len())?;
        let mut done = 0usize;
        for (medium, len) in self.layout.ranges(at, data.len() as u64) {
            self.media.write(medium, &data[done..done + len as usize]).map_err(io)?;
            done += len as usize;
        }
        Ok(())
    }

    fn persist(&self, runs: &[PageRun]) -> Result<(), StoreError> {
        for run in runs {
            let at = self.check(run.start, 0, (run.count * PAGE_SIZE) as usize)?;
            for (medium, len) in self.layout.ranges(at, run.count * PAGE_SIZE) {
                self.media.flush(medium, len).map_err(io)?;
            }
        }
        self.media.barrier().map_err(io)
    }

    fn read_commit_slot(&self, slot: CommitSlot) -> Result<[u8; COMMIT_SLOT_SIZE], StoreError> {
        let mut buf = [0u8; COMMIT_SLOT_SIZE];
        let at = self.layout.offset(0) + SLOT_OFFSETS[slot.index()];
        self.media.read(at, &mut buf).map_err(io)?;
        Ok(buf)
    }

    fn switch_commit(
        &self,
        slot: CommitSlot,
        record: &[u8; COMMIT_SLOT_SIZE],
    ) -> Result<(), StoreError> {
        let at = self.layout.offset(0) + SLOT_OFFSETS[slot.index()];
        self.media.write(at, record).map_err(io)?;
        self.media.persist(at, COMMIT_SLOT_SIZE as u64).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rvmfs::{FormatOptions, PageRef, Rvm};

    use super::*;
    use crate::pool::crash::{CrashMedia, TearGranularity};

    fn pool() -> Pool {
        let media = Arc::new(CrashMedia::new(4 << 20, TearGranularity::Nvram));
        let pool = Pool::format(media, Path::new("fs.pool"), 4 << 20, Some(64 << 10)).unwrap();
        pool.create_region("home", RegionKind::Fs, 1 << 20).unwrap();
        pool
    }

    #[test]
    fn rvm_runs_on_a_pool_region_across_reopen() {
        let pool = pool();
        let store = RegionStore::open(&pool, "home").unwrap();
        assert_eq!(store.page_count(), 255);
        let rvm = Rvm::format(store, FormatOptions::default()).unwrap();
        let mut tx = rvm.begin().unwrap();
        let pages = tx.alloc_pages(3).unwrap();
        tx.write(PageRef::new(pages.start, 4000), &[9u8; 5000]).unwrap();
        tx.set_root(&pages.start.to_le_bytes()).unwrap();
        tx.commit().unwrap();
        drop(rvm);
        let rvm = Rvm::open(RegionStore::open(&pool, "home").unwrap()).unwrap();
        let start = u64::from_le_bytes(rvm.root()[..8].try_into().unwrap());
        let mut buf = [0u8; 5000];
        rvm.read(PageRef::new(start, 4000), &mut buf).unwrap();
        assert_eq!(buf, [9u8; 5000]);
        assert!(rvm.check().unwrap().is_clean());
    }

    #[test]
    fn only_fs_regions_can_hold_a_store() {
        let pool = pool();
        pool.create_region("disk", RegionKind::Block, 1 << 20).unwrap();
        let err = RegionStore::open(&pool, "disk").unwrap_err();
        assert!(err.to_string().contains("region \"disk\" is a block region"), "{err}");
        assert!(RegionStore::open(&pool, "nope").is_err());
    }

    #[test]
    fn accesses_outside_the_store_are_refused() {
        let pool = pool();
        let store = RegionStore::open(&pool, "home").unwrap();
        assert!(store.write(254, 4000, &[0u8; 200]).is_err());
        assert!(store.read(u64::MAX, 0, &mut [0u8; 1]).is_err());
    }
}
