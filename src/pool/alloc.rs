//! `FreeSpace`: the page allocator's free runs, kept in memory only.
//!
//! Free space is never stored on the medium: at open it is computed as the
//! complement of every region's extents (a sort of the extents, so its cost
//! follows the metadata, not the pool size). A page is therefore either
//! owned by exactly one region or free, and no crash can leak one: whatever
//! an interrupted operation had taken is free again at the next open.
//!
//! Runs are indexed by start (to merge neighbours and grow in place) and by
//! length (best fit in O(log n)).

use std::collections::{BTreeMap, BTreeSet};

use super::region::Extent;

/// Free page runs of the data area.
#[derive(Debug, Clone, Default)]
pub struct FreeSpace {
    by_start: BTreeMap<u64, u64>,
    by_len: BTreeSet<(u64, u64)>,
    free: u64,
}

impl FreeSpace {
    /// The free runs of `[first, end)` not covered by `owned`. `owned` must
    /// be sorted by start, inside the range and not overlapping.
    pub fn complement(first: u64, end: u64, owned: &[Extent]) -> FreeSpace {
        let mut fs = FreeSpace::default();
        let mut cursor = first;
        for e in owned {
            if e.start > cursor {
                fs.insert(cursor, e.start - cursor);
            }
            cursor = cursor.max(e.end());
        }
        if end > cursor {
            fs.insert(cursor, end - cursor);
        }
        fs
    }

    /// Free pages in all.
    pub fn free_pages(&self) -> u64 {
        self.free
    }

    /// The longest free run.
    pub fn largest_run(&self) -> u64 {
        self.by_len.last().map_or(0, |&(len, _)| len)
    }

    fn insert(&mut self, start: u64, len: u64) {
        self.by_start.insert(start, len);
        self.by_len.insert((len, start));
        self.free += len;
    }

    fn remove(&mut self, start: u64, len: u64) {
        self.by_start.remove(&start);
        self.by_len.remove(&(len, start));
        self.free -= len;
    }

    /// Take `count` pages from the front of the free run at `start`.
    fn take_front(&mut self, start: u64, len: u64, count: u64) -> Extent {
        self.remove(start, len);
        if len > count {
            self.insert(start + count, len - count);
        }
        Extent { start, count }
    }

    /// One contiguous run of `count` pages, best fit.
    pub fn allocate_contiguous(&mut self, count: u64) -> Option<Extent> {
        let &(len, start) = self.by_len.range((count, 0)..).next()?;
        Some(self.take_front(start, len, count))
    }

    /// `count` pages in at most `max_extents` runs: one run when one fits,
    /// else the largest runs first (fewest extents).
    pub fn allocate(&mut self, count: u64, max_extents: usize) -> Option<Vec<Extent>> {
        if count == 0 {
            return Some(Vec::new());
        }
        if let Some(e) = self.allocate_contiguous(count) {
            return Some(vec![e]);
        }
        if count > self.free {
            return None;
        }
        let mut plan = Vec::new();
        let mut left = count;
        for &(len, start) in self.by_len.iter().rev() {
            if left == 0 {
                break;
            }
            if plan.len() == max_extents {
                return None;
            }
            let take = len.min(left);
            plan.push((start, len, take));
            left -= take;
        }
        if left > 0 {
            return None;
        }
        let mut got: Vec<Extent> =
            plan.into_iter().map(|(s, l, take)| self.take_front(s, l, take)).collect();
        got.sort();
        Some(got)
    }

    /// Take `[start, start+count)` if it is entirely free (growth in place).
    pub fn take_at(&mut self, start: u64, count: u64) -> bool {
        let Some((&run, &len)) = self.by_start.range(..=start).next_back() else {
            return false;
        };
        if run + len < start + count {
            return false;
        }
        self.remove(run, len);
        if start > run {
            self.insert(run, start - run);
        }
        if run + len > start + count {
            self.insert(start + count, run + len - start - count);
        }
        true
    }

    /// Give pages back, merging with free neighbours.
    pub fn release(&mut self, e: Extent) {
        if e.count == 0 {
            return;
        }
        let (mut start, mut len) = (e.start, e.count);
        if let Some((&ps, &pl)) = self.by_start.range(..start).next_back() {
            debug_assert!(ps + pl <= start, "releasing a page that is already free");
            if ps + pl == start {
                self.remove(ps, pl);
                start = ps;
                len += pl;
            }
        }
        if let Some(&nl) = self.by_start.get(&(start + len)) {
            self.remove(start + len, nl);
            len += nl;
        }
        self.insert(start, len);
    }

    /// The free runs in page order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = Extent> + '_ {
        self.by_start.iter().map(|(&start, &count)| Extent { start, count })
    }
}

/// Merge adjacent extents of a list in order.
pub fn coalesce(extents: &mut Vec<Extent>) {
    let mut out: Vec<Extent> = Vec::with_capacity(extents.len());
    for e in extents.drain(..) {
        match out.last_mut() {
            Some(last) if last.end() == e.start => last.count += e.count,
            _ => out.push(e),
        }
    }
    *extents = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(start: u64, count: u64) -> Extent {
        Extent { start, count }
    }

    #[test]
    fn complement_finds_the_gaps() {
        let fs = FreeSpace::complement(10, 100, &[ext(10, 5), ext(20, 10), ext(90, 10)]);
        assert_eq!(fs.iter().collect::<Vec<_>>(), vec![ext(15, 5), ext(30, 60)]);
        assert_eq!(fs.free_pages(), 65);
    }

    #[test]
    fn allocation_prefers_one_best_fitting_run() {
        let mut fs = FreeSpace::complement(0, 100, &[ext(10, 10), ext(25, 5)]);
        assert_eq!(fs.allocate(5, 8), Some(vec![ext(20, 5)]));
        assert_eq!(fs.allocate(12, 8), Some(vec![ext(30, 12)]));
    }

    #[test]
    fn fragmented_allocation_takes_largest_runs_first() {
        let mut fs = FreeSpace::complement(0, 30, &[ext(4, 6), ext(12, 10)]);
        // free: 0..4, 10..12, 22..30
        assert_eq!(fs.allocate(11, 8), Some(vec![ext(0, 3), ext(22, 8)]));
        assert_eq!(fs.free_pages(), 3);
        assert_eq!(fs.allocate(4, 8), None);
        assert_eq!(fs.allocate(3, 1), None, "extent limit honoured");
    }

    #[test]
    fn release_merges_neighbours() {
        let mut fs = FreeSpace::complement(0, 30, &[ext(10, 10)]);
        fs.release(ext(10, 5));
        fs.release(ext(15, 5));
        assert_eq!(fs.iter().collect::<Vec<_>>(), vec![ext(0, 30)]);
        assert_eq!(fs.largest_run(), 30);
    }

    #[test]
    fn take_at_grows_in_place_only_when_free() {
        let mut fs = FreeSpace::complement(0, 30, &[ext(0, 10), ext(20, 10)]);
        assert!(!fs.take_at(10, 11));
        assert!(fs.take_at(12, 3));
        assert_eq!(fs.iter().collect::<Vec<_>>(), vec![ext(10, 2), ext(15, 5)]);
    }

    #[test]
    fn coalesce_merges_touching_extents() {
        let mut v = vec![ext(0, 2), ext(2, 3), ext(9, 1)];
        coalesce(&mut v);
        assert_eq!(v, vec![ext(0, 5), ext(9, 1)]);
    }
}
