//! `DirtyMap`: which chunks of a mapped medium were written since they were
//! last flushed, so that a power-outage flush writes back only those and
//! not the whole pool.
//!
//! One bit per chunk (64 KiB, or larger so the map stays at most 128 KiB).
//! A writer marks its chunks *after* copying its bytes; a flush clears a
//! chunk's bit *before* writing it back. So a write racing a flush is either
//! covered by that flush or leaves its bit set for the next one: a chunk
//! whose bit is clear holds nothing unflushed.

use std::sync::atomic::{AtomicU64, Ordering};

/// The smallest chunk tracked.
const MIN_CHUNK_SHIFT: u32 = 16;
/// The most bits the map holds (128 KiB of map).
const MAX_BITS: u64 = 1 << 20;

/// Dirty chunks of a medium of fixed length.
#[derive(Debug)]
pub(crate) struct DirtyMap {
    chunk_shift: u32,
    len: u64,
    words: Vec<AtomicU64>,
}

impl DirtyMap {
    /// A clean map for a medium of `len` bytes.
    pub(crate) fn new(len: u64) -> DirtyMap {
        let mut chunk_shift = MIN_CHUNK_SHIFT;
        while len.div_ceil(1 << chunk_shift) > MAX_BITS {
            chunk_shift += 1;
        }
        let bits = len.div_ceil(1 << chunk_shift);
        let words = (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        DirtyMap { chunk_shift, len, words }
    }

    /// Bytes per chunk.
    pub(crate) fn chunk_size(&self) -> u64 {
        1 << self.chunk_shift
    }

    /// Note that `offset..offset+len` was written (call after the copy).
    pub(crate) fn mark(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset >> self.chunk_shift;
        let last = (offset + len - 1) >> self.chunk_shift;
        for chunk in first..=last {
            let word = &self.words[(chunk / 64) as usize];
            let bit = 1u64 << (chunk % 64);
            // Most writes land in an already dirty chunk: read before the RMW.
            if word.load(Ordering::Relaxed) & bit == 0 {
                word.fetch_or(bit, Ordering::AcqRel);
            }
        }
    }

    /// Forget the chunks wholly inside `offset..offset+len`, which the
    /// caller is about to write back (call before the write-back).
    pub(crate) fn clear(&self, offset: u64, len: u64) {
        let chunk = self.chunk_size();
        let first = offset.div_ceil(chunk);
        let end = if offset + len >= self.len {
            self.len.div_ceil(chunk)
        } else {
            (offset + len) / chunk
        };
        for c in first..end {
            self.words[(c / 64) as usize].fetch_and(!(1u64 << (c % 64)), Ordering::AcqRel);
        }
    }

    /// Take every dirty chunk (clearing it) as merged byte ranges, clipped
    /// to the medium.
    pub(crate) fn take(&self) -> Vec<(u64, u64)> {
        let chunk = self.chunk_size();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (i, word) in self.words.iter().enumerate() {
            if word.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                let c = i as u64 * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let start = c * chunk;
                let end = (start + chunk).min(self.len);
                match ranges.last_mut() {
                    Some((s, l)) if *s + *l == start => *l += end - start,
                    _ => ranges.push((start, end - start)),
                }
            }
        }
        ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_chunks_come_back_merged_and_then_clean() {
        let map = DirtyMap::new(1 << 20);
        assert_eq!(map.chunk_size(), 65536);
        map.mark(10, 1);
        map.mark(65536 + 5, 65536); // chunks 1 and 2
        map.mark(9 * 65536, 4096);
        assert_eq!(map.take(), vec![(0, 3 * 65536), (9 * 65536, 65536)]);
        assert!(map.take().is_empty());
    }

    #[test]
    fn a_flush_clears_only_chunks_it_wholly_covers() {
        let map = DirtyMap::new(1 << 20);
        map.mark(0, 4 * 65536);
        map.clear(100, 2 * 65536); // covers chunk 1 only
        assert_eq!(map.take(), vec![(0, 65536), (2 * 65536, 2 * 65536)]);
    }

    #[test]
    fn the_last_partial_chunk_is_clipped_and_clearable() {
        let map = DirtyMap::new(65536 + 100);
        map.mark(65536 + 50, 10);
        map.clear(65536, 100);
        assert!(map.take().is_empty());
        map.mark(65536 + 50, 10);
        assert_eq!(map.take(), vec![(65536, 100)]);
    }

    #[test]
    fn huge_media_get_larger_chunks_not_a_larger_map() {
        let map = DirtyMap::new(1 << 40);
        assert!(map.words.len() as u64 * 64 <= MAX_BITS);
        map.mark((1 << 40) - 1, 1);
        assert_eq!(map.take(), vec![((1 << 40) - map.chunk_size(), map.chunk_size())]);
    }
}
