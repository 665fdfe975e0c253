//! The storage trait under RVM: the report's "RMEM" layer.
//!
//! A [`PageStore`] owns a fixed range of 4 KiB pages, numbered `0..page_count`,
//! and two small commit slots. It promises nothing about ordering between
//! writes: a write becomes durable only when a later [`PageStore::persist`]
//! names its page, and a commit slot only through [`PageStore::switch_commit`].
//! It does not know which pages are in use: allocation state belongs to RVM,
//! which commits it together with everything else (see `allocation_map`).
//!
//! The trait is shaped so that a remote, batched store can implement it (SPEC
//! §11): writes may be buffered and shipped by `persist` in one batch, a shadow
//! copy is a store-side [`PageStore::copy_pages`], and a commit is one call that
//! replaces one slot. RVM never assumes that a write is a local memcpy.

use std::sync::Arc;

/// Size of a page in bytes: the unit of shadowing and of allocation.
pub const PAGE_SIZE: usize = 4096;

/// Size of one commit slot in bytes.
pub const COMMIT_SLOT_SIZE: usize = 128;

/// One of the two commit slots. RVM writes them alternately, so that a torn
/// slot write leaves the previous commit record intact in the other slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommitSlot {
    /// The first slot.
    A,
    /// The second slot.
    B,
}

impl CommitSlot {
    /// Both slots, in index order.
    pub const ALL: [CommitSlot; 2] = [CommitSlot::A, CommitSlot::B];

    /// The slot's index: 0 for A, 1 for B.
    pub fn index(self) -> usize {
        match self {
            CommitSlot::A => 0,
            CommitSlot::B => 1,
        }
    }

    /// The slot that is not `self`.
    pub fn other(self) -> CommitSlot {
        match self {
            CommitSlot::A => CommitSlot::B,
            CommitSlot::B => CommitSlot::A,
        }
    }
}

impl std::fmt::Display for CommitSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitSlot::A => f.write_str("A"),
            CommitSlot::B => f.write_str("B"),
        }
    }
}

/// `count` consecutive pages starting at page `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageRun {
    /// First page of the run.
    pub start: u64,
    /// Number of pages; never zero in runs produced by RVM.
    pub count: u64,
}

impl PageRun {
    /// A run of `count` pages from `start`.
    pub fn new(start: u64, count: u64) -> Self {
        PageRun { start, count }
    }

    /// One past the last page.
    pub fn end(&self) -> u64 {
        self.start + self.count
    }

    /// The pages of the run.
    pub fn pages(&self) -> std::ops::Range<u64> {
        self.start..self.end()
    }
}

/// Appends `page` to `runs`, extending the last run when `page` follows it.
pub(crate) fn push_page(runs: &mut Vec<PageRun>, page: u64) {
    match runs.last_mut() {
        Some(last) if last.end() == page => last.count += 1,
        _ => runs.push(PageRun::new(page, 1)),
    }
}

/// Sorts runs and merges the ones that touch or overlap.
pub(crate) fn coalesce_runs(runs: &mut Vec<PageRun>) {
    runs.retain(|r| r.count > 0);
    runs.sort_unstable();
    let mut merged: Vec<PageRun> = Vec::with_capacity(runs.len());
    for run in runs.drain(..) {
        match merged.last_mut() {
            Some(last) if run.start <= last.end() => {
                let end = last.end().max(run.end());
                last.count = end - last.start;
            }
            _ => merged.push(run),
        }
    }
    *runs = merged;
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The byte range does not lie within the store's pages.
    #[error("bytes {offset}..{end} from page {page} lie outside the store's {page_count} pages")]
    OutOfRange {
        /// Page the access started at.
        page: u64,
        /// Byte offset within that page.
        offset: u64,
        /// End of the access, in bytes from the start of `page`.
        end: u64,
        /// Pages in the store.
        page_count: u64,
    },
    /// The medium or the transport failed.
    #[error("store i/o failed")]
    Io(#[source] std::io::Error),
    /// A [`crate::CrashStore`] simulated a crash at this persist point (or earlier).
    #[error("the store has crashed (simulated power loss)")]
    Crashed,
}

/// The pages and commit slots that RVM runs on.
///
/// Implementations: [`crate::MemStore`] (tests), [`crate::CrashStore`] (crash
/// tests) and, in the root crate, the pages of a pool `fs` region.
pub trait PageStore: Send + Sync {
    /// Number of pages, fixed for the life of the store. Pages are `0..page_count`.
    fn page_count(&self) -> u64;

    /// Reads `buf.len()` bytes starting at byte `offset` of `page`. The range
    /// may continue into the following pages.
    fn read(&self, page: u64, offset: usize, buf: &mut [u8]) -> Result<(), StoreError>;

    /// Writes `data` starting at byte `offset` of `page` (may continue into
    /// the following pages). Not durable until a `persist` names the pages.
    fn write(&self, page: u64, offset: usize, data: &[u8]) -> Result<(), StoreError>;

    /// Copies `count` whole pages from `from` to `to` (the runs do not
    /// overlap); a shadow copy. Not durable until persisted. A remote store
    /// overrides this to copy on the server side.
    fn copy_pages(&self, from: u64, to: u64, count: u64) -> Result<(), StoreError> {
        let mut page = vec![0u8; PAGE_SIZE];
        for i in 0..count {
            self.read(from + i, 0, &mut page)?;
            self.write(to + i, 0, &page)?;
        }
        Ok(())
    }

    /// Makes every earlier write to the pages of `runs` durable. RVM calls it
    /// once per commit with all the commit's pages, so a remote store can send
    /// one batch.
    fn persist(&self, runs: &[PageRun]) -> Result<(), StoreError>;

    /// Reads a commit slot as it is now (all zeros if never written).
    fn read_commit_slot(&self, slot: CommitSlot) -> Result<[u8; COMMIT_SLOT_SIZE], StoreError>;

    /// Replaces the contents of `slot` and makes them durable before it
    /// returns. It need not be atomic: RVM checksums the record and keeps the
    /// previous one in the other slot, so a torn slot is survivable. A store
    /// that can replace a slot atomically (one remote put) loses nothing.
    fn switch_commit(
        &self,
        slot: CommitSlot,
        record: &[u8; COMMIT_SLOT_SIZE],
    ) -> Result<(), StoreError>;

    /// Tells the store that the contents of `runs` are no longer needed: RVM
    /// calls it for pages freed by a commit, after the commit's switch and
    /// before the pages are reused. A store may release backing memory;
    /// the default does nothing.
    fn discard(&self, runs: &[PageRun]) -> Result<(), StoreError> {
        let _ = runs;
        Ok(())
    }
}

/// Delegates every method to the store behind a smart pointer or reference.
macro_rules! delegate_page_store {
    ($($ty:ty),*) => {$(
        impl<T: PageStore + ?Sized> PageStore for $ty {
            fn page_count(&self) -> u64 {
                (**self).page_count()
            }
            fn read(&self, page: u64, offset: usize, buf: &mut [u8]) -> Result<(), StoreError> {
                (**self).read(page, offset, buf)
            }
            fn write(&self, page: u64, offset: usize, data: &[u8]) -> Result<(), StoreError> {
                (**self).write(page, offset, data)
            }
            fn copy_pages(&self, from: u64, to: u64, count: u64) -> Result<(), StoreError> {
                (**self).copy_pages(from, to, count)
            }
            fn persist(&self, runs: &[PageRun]) -> Result<(), StoreError> {
                (**self).persist(runs)
            }
            fn read_commit_slot(
                &self,
                slot: CommitSlot,
            ) -> Result<[u8; COMMIT_SLOT_SIZE], StoreError> {
                (**self).read_commit_slot(slot)
            }
            fn switch_commit(
                &self,
                slot: CommitSlot,
                record: &[u8; COMMIT_SLOT_SIZE],
            ) -> Result<(), StoreError> {
                (**self).switch_commit(slot, record)
            }
            fn discard(&self, runs: &[PageRun]) -> Result<(), StoreError> {
                (**self).discard(runs)
            }
        }
    )*};
}

delegate_page_store!(Arc<T>, &T, Box<T>);

/// Checks that `len` bytes from byte `offset` of `page` lie within
/// `page_count` pages, and returns the absolute byte range.
pub(crate) fn byte_range(
    page: u64,
    offset: usize,
    len: usize,
    page_count: u64,
) -> Result<std::ops::Range<usize>, StoreError> {
    let out_of_range = || StoreError::OutOfRange {
        page,
        offset: offset as u64,
        end: offset as u64 + len as u64,
        page_count,
    };
    let start = page
        .checked_mul(PAGE_SIZE as u64)
        .and_then(|b| b.checked_add(offset as u64))
        .ok_or_else(out_of_range)?;
    let end = start.checked_add(len as u64).ok_or_else(out_of_range)?;
    if end > page_count * PAGE_SIZE as u64 {
        return Err(out_of_range());
    }
    let start = usize::try_from(start).map_err(|_| out_of_range())?;
    let end = usize::try_from(end).map_err(|_| out_of_range())?;
    Ok(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_merges_touching_and_overlapping_runs() {
        let mut runs = vec![
            PageRun::new(10, 2),
            PageRun::new(3, 1),
            PageRun::new(12, 1),
            PageRun::new(4, 0),
            PageRun::new(2, 2),
            PageRun::new(20, 1),
        ];
        coalesce_runs(&mut runs);
        assert_eq!(runs, vec![PageRun::new(2, 2), PageRun::new(10, 3), PageRun::new(20, 1)]);
    }

    #[test]
    fn byte_range_rejects_accesses_past_the_last_page() {
        assert_eq!(byte_range(1, 10, 20, 2).unwrap(), 4106..4126);
        assert!(byte_range(1, 4090, 10, 2).is_err());
        assert!(byte_range(u64::MAX, 0, 1, 2).is_err());
        assert_eq!(
            byte_range(2, 0, 1, 2).unwrap_err().to_string(),
            "bytes 0..1 from page 2 lie outside the store's 2 pages"
        );
    }
}
