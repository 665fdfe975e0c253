//! The running physical page allocator.
//!
//! It marks a page busy from the moment it is handed out until the switch
//! that makes it unused: busy = committed pages + pages of closed and open
//! transactions + pages freed by transactions whose switch has not happened
//! yet. So a page named by any commit record that might still be the newest
//! is never handed out again. It is volatile: at open it starts as a copy of
//! the committed physical map. It hands out runs next-fit from a cursor, so
//! consecutive shadow pages tend to be physically contiguous and persist as
//! one run; released pages pull the cursor back, so the pages a commit just
//! freed (still in the CPU cache) are the next ones reused.

use crate::allocation_map::AllocationMap;
use crate::store::PageRun;

#[derive(Debug)]
pub(crate) struct PageAllocator {
    busy: AllocationMap,
    cursor: u64,
}

impl PageAllocator {
    /// An allocator whose busy pages are those of `committed`.
    pub fn new(committed: &AllocationMap) -> PageAllocator {
        let mut busy = committed.clone();
        busy.mark_clean();
        PageAllocator { busy, cursor: 0 }
    }

    /// Pages not busy.
    pub fn free(&self) -> u64 {
        self.busy.zeros()
    }

    /// Whether `page` is busy.
    pub fn is_busy(&self, page: u64) -> bool {
        self.busy.get(page)
    }

    /// Hands out a run of 1 to `max` pages, leaving at least `keep_free` pages
    /// free; `None` when that is impossible.
    pub fn alloc_run(&mut self, max: u64, keep_free: u64) -> Option<PageRun> {
        let max = max.min(self.free().checked_sub(keep_free)?);
        if max == 0 {
            return None;
        }
        let start =
            self.busy.first_clear_from(self.cursor).or_else(|| self.busy.first_clear_from(0))?;
        let count = self.busy.clear_run_len(start, max);
        self.busy.set_run(start, count);
        self.cursor = start + count;
        Some(PageRun::new(start, count))
    }

    /// Returns pages whose last user is gone.
    pub fn release(&mut self, run: PageRun) {
        debug_assert!(run.pages().all(|page| self.busy.get(page)), "{run:?} released twice");
        self.busy.clear_run(run.start, run.count);
        self.cursor = self.cursor.min(run.start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_handed_out_next_fit_and_respect_the_reserve() {
        let mut committed = AllocationMap::new(100);
        committed.set_run(0, 10);
        committed.set(15);
        let mut alloc = PageAllocator::new(&committed);
        assert_eq!(alloc.free(), 89);
        assert_eq!(alloc.alloc_run(8, 0), Some(PageRun::new(10, 5)), "stops at a busy page");
        assert_eq!(alloc.alloc_run(3, 0), Some(PageRun::new(16, 3)));
        assert_eq!(alloc.alloc_run(100, 70), Some(PageRun::new(19, 11)));
        assert_eq!(alloc.alloc_run(1, 70), None, "the reserve is kept");
        assert_eq!(alloc.alloc_run(100, 0), Some(PageRun::new(30, 70)), "next fit goes on");
        alloc.release(PageRun::new(10, 5));
        assert_eq!(alloc.alloc_run(100, 0), Some(PageRun::new(10, 5)), "released pages come first");
        assert_eq!(alloc.alloc_run(1, 0), None);
    }
}
