//! Allocation maps: which physical pages and which logical pages are in use.
//!
//! Both maps are bitmaps stored in RVM's system pages (see `geometry`) and
//! committed with everything else, so a commit's allocations and frees become
//! durable with its switch and not before: pages allocated by an interrupted
//! commit are simply free in the last committed map, and pages freed by a
//! commit stay allocated on media until its switch.
//!
//! ```text
//! map page (4096 bytes) = word[0] word[1] ... word[511], each a little-endian u64
//! bit b of word w of map page m  <=>  page  m * 32768 + w * 64 + b
//! bits past the end of the map are zero
//! ```
//!
//! In memory a map is a vector of shared pages (`Arc`), so a transaction or a
//! snapshot copies a map in O(pages) pointer copies and a change copies only
//! the map page it touches. The map remembers which pages changed since they
//! were last written.

use std::sync::Arc;

use zerocopy::little_endian::U64;
use zerocopy::FromBytes;

use crate::PAGE_SIZE;

/// Words (u64) per map page.
const WORDS: usize = PAGE_SIZE / 8;

/// Pages tracked by one map page.
pub(crate) const BITS_PER_MAP_PAGE: u64 = (PAGE_SIZE * 8) as u64;

const _: () = assert!(size_of::<[U64; WORDS]>() == PAGE_SIZE);

type MapPage = [u64; WORDS];

/// Why a map page does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bits past the end of the map ({len} bits) are set")]
pub struct MapTailError {
    /// Length of the map in bits.
    pub len: u64,
}

/// A bitmap over `len` pages.
#[derive(Debug, Clone)]
pub(crate) struct AllocationMap {
    len: u64,
    ones: u64,
    pages: Vec<Arc<MapPage>>,
    dirty: Vec<bool>,
}

impl AllocationMap {
    /// A map of `len` clear bits.
    pub fn new(len: u64) -> AllocationMap {
        let pages = len.div_ceil(BITS_PER_MAP_PAGE) as usize;
        let zero = Arc::new([0u64; WORDS]);
        AllocationMap { len, ones: 0, pages: vec![zero; pages], dirty: vec![false; pages] }
    }

    /// Number of set bits.
    pub fn ones(&self) -> u64 {
        self.ones
    }

    /// Number of clear bits.
    pub fn zeros(&self) -> u64 {
        self.len - self.ones
    }

    /// Number of map pages.
    pub fn page_count(&self) -> u64 {
        self.pages.len() as u64
    }

    fn word(&self, bit: u64) -> u64 {
        self.pages[(bit / BITS_PER_MAP_PAGE) as usize][(bit % BITS_PER_MAP_PAGE / 64) as usize]
    }

    fn word_mut(&mut self, bit: u64) -> &mut u64 {
        let page = (bit / BITS_PER_MAP_PAGE) as usize;
        self.dirty[page] = true;
        &mut Arc::make_mut(&mut self.pages[page])[(bit % BITS_PER_MAP_PAGE / 64) as usize]
    }

    /// Whether `bit` is set. Bits past the end read as clear.
    pub fn get(&self, bit: u64) -> bool {
        bit < self.len && self.word(bit) & (1 << (bit % 64)) != 0
    }

    /// Sets `bit`; returns whether it was already set.
    pub fn set(&mut self, bit: u64) -> bool {
        assert!(bit < self.len, "bit {bit} past the end of a {}-bit map", self.len);
        let mask = 1 << (bit % 64);
        let word = self.word_mut(bit);
        let was = *word & mask != 0;
        *word |= mask;
        self.ones += u64::from(!was);
        was
    }

    /// Clears `bit`; returns whether it was set.
    pub fn clear(&mut self, bit: u64) -> bool {
        assert!(bit < self.len, "bit {bit} past the end of a {}-bit map", self.len);
        let mask = 1 << (bit % 64);
        let word = self.word_mut(bit);
        let was = *word & mask != 0;
        *word &= !mask;
        self.ones -= u64::from(was);
        was
    }

    /// Sets `count` bits from `start`.
    pub fn set_run(&mut self, start: u64, count: u64) {
        self.change_run(start, count, true);
    }

    /// Clears `count` bits from `start`.
    pub fn clear_run(&mut self, start: u64, count: u64) {
        self.change_run(start, count, false);
    }

    /// Sets or clears a run a word at a time.
    fn change_run(&mut self, start: u64, count: u64, value: bool) {
        let end = start + count;
        assert!(end <= self.len, "bits {start}..{end} past the end of a {}-bit map", self.len);
        let mut bit = start;
        while bit < end {
            let low = bit % 64;
            let width = (64 - low).min(end - bit);
            let mask = if width == 64 { u64::MAX } else { ((1u64 << width) - 1) << low };
            let word = self.word_mut(bit);
            let before = u64::from((*word & mask).count_ones());
            if value {
                *word |= mask;
                self.ones += width - before;
            } else {
                *word &= !mask;
                self.ones -= before;
            }
            bit += width;
        }
    }

    /// The first clear bit at or after `from`, if any.
    pub fn first_clear_from(&self, from: u64) -> Option<u64> {
        let mut bit = from;
        while bit < self.len {
            let word = !self.word(bit) & (u64::MAX << (bit % 64));
            if word != 0 {
                let found = bit - bit % 64 + u64::from(word.trailing_zeros());
                return (found < self.len).then_some(found);
            }
            bit = bit - bit % 64 + 64;
        }
        None
    }

    /// How many consecutive clear bits start at `start`, up to `max`.
    pub fn clear_run_len(&self, start: u64, max: u64) -> u64 {
        let limit = self.len.min(start.saturating_add(max));
        let mut bit = start;
        while bit < limit {
            let word = self.word(bit) >> (bit % 64);
            let clear = if word == 0 { 64 - bit % 64 } else { u64::from(word.trailing_zeros()) };
            if clear == 0 {
                break;
            }
            bit += clear;
            if word != 0 {
                break;
            }
        }
        bit.min(limit) - start
    }

    /// The start of `count` consecutive clear bits, searching from `hint`
    /// to the end and then from the beginning.
    pub fn find_clear_run(&self, count: u64, hint: u64) -> Option<u64> {
        if count == 0 || count > self.zeros() {
            return None;
        }
        let hint = hint.min(self.len);
        for (from, to) in [(hint, self.len), (0, hint.saturating_add(count).min(self.len))] {
            let mut bit = from;
            while let Some(start) = self.first_clear_from(bit) {
                if start >= to {
                    break;
                }
                let run = self.clear_run_len(start, count);
                if run == count {
                    return Some(start);
                }
                bit = start + run;
            }
        }
        None
    }

    /// Runs of set bits from `from` on, as (start, count).
    pub fn set_runs(&self, from: u64) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for bit in from..self.len {
            if bit % 64 == 0 && self.word(bit) == 0 {
                continue;
            }
            if self.get(bit) {
                match runs.last_mut() {
                    Some((start, count)) if *start + *count == bit => *count += 1,
                    _ => runs.push((bit, 1)),
                }
            }
        }
        runs
    }

    /// Indices of map pages changed since [`AllocationMap::mark_clean`].
    pub fn dirty_pages(&self) -> Vec<u64> {
        (0..self.pages.len()).filter(|&i| self.dirty[i]).map(|i| i as u64).collect()
    }

    /// Marks every map page changed (a new map is written in full).
    pub fn mark_all_dirty(&mut self) {
        self.dirty.fill(true);
    }

    /// Forgets which pages changed.
    pub fn mark_clean(&mut self) {
        self.dirty.fill(false);
    }

    /// Encodes map page `index`.
    pub fn encode_page(&self, index: u64, out: &mut [u8; PAGE_SIZE]) {
        for (word, chunk) in self.pages[index as usize].iter().zip(out.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
    }

    /// Replaces map page `index` with decoded media bytes. Bits past the end
    /// of the map must be clear.
    pub fn load_page(&mut self, index: u64, bytes: &[u8; PAGE_SIZE]) -> Result<(), MapTailError> {
        let raw = <[U64; WORDS]>::ref_from_bytes(bytes).expect("a page holds one map page");
        let mut page = [0u64; WORDS];
        for (word, raw) in page.iter_mut().zip(raw.iter()) {
            *word = raw.get();
        }
        let first = index * BITS_PER_MAP_PAGE;
        let valid = self.len.saturating_sub(first).min(BITS_PER_MAP_PAGE);
        for (w, word) in page.iter().enumerate() {
            let word_first = w as u64 * 64;
            let valid_here = valid.saturating_sub(word_first).min(64);
            let tail = if valid_here == 64 { 0 } else { u64::MAX << valid_here };
            if word & tail != 0 {
                return Err(MapTailError { len: self.len });
            }
        }
        let old: u64 = self.pages[index as usize].iter().map(|w| u64::from(w.count_ones())).sum();
        let new: u64 = page.iter().map(|w| u64::from(w.count_ones())).sum();
        self.ones = self.ones - old + new;
        self.pages[index as usize] = Arc::new(page);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_clear_count_ones_and_mark_pages_dirty() {
        let mut map = AllocationMap::new(70_000);
        assert_eq!(map.page_count(), 3);
        assert!(!map.set(40_000));
        assert!(map.set(40_000));
        assert_eq!(map.ones(), 1);
        assert_eq!(map.dirty_pages(), vec![1]);
        assert!(map.clear(40_000));
        assert!(!map.clear(40_000));
        assert_eq!(map.zeros(), 70_000);
    }

    #[test]
    fn runs_of_clear_bits_are_found_across_words_and_wrap_around() {
        let mut map = AllocationMap::new(300);
        map.set_run(0, 70);
        map.set(100);
        assert_eq!(map.first_clear_from(0), Some(70));
        assert_eq!(map.clear_run_len(70, 1000), 30);
        assert_eq!(map.find_clear_run(30, 0), Some(70));
        assert_eq!(map.find_clear_run(31, 0), Some(101));
        assert_eq!(map.find_clear_run(10, 295), Some(70), "wraps to the start");
        assert_eq!(map.find_clear_run(199, 0), Some(101));
        assert_eq!(map.find_clear_run(200, 0), None);
        map.set_run(101, 199);
        assert_eq!(map.first_clear_from(101), None);
        assert_eq!(map.set_runs(0), vec![(0, 70), (100, 200)]);
    }

    #[test]
    fn runs_are_set_and_cleared_a_word_at_a_time() {
        let mut map = AllocationMap::new(40_000);
        map.set(100);
        map.set_run(60, 32_800);
        assert_eq!(map.ones(), 32_800);
        assert!(map.get(60) && map.get(32_859) && !map.get(59) && !map.get(32_860));
        map.clear_run(61, 32_798);
        assert_eq!(map.ones(), 2);
        assert!(map.get(60) && map.get(32_859) && !map.get(100));
        assert_eq!(map.dirty_pages(), vec![0, 1]);
    }

    #[test]
    fn clones_share_pages_until_written() {
        let mut a = AllocationMap::new(100);
        a.set(1);
        let mut b = a.clone();
        b.set(2);
        assert!(!a.get(2) && b.get(2) && b.get(1));
    }

    #[test]
    fn map_pages_round_trip_and_reject_bits_past_the_end() {
        let mut map = AllocationMap::new(40_000);
        map.set(0);
        map.set(39_999);
        let mut page = [0u8; PAGE_SIZE];
        map.encode_page(1, &mut page);
        let mut back = AllocationMap::new(40_000);
        back.load_page(1, &page).unwrap();
        assert!(back.get(39_999) && back.ones() == 1);
        let tail_word = (40_000 - 32_768) / 64 * 8;
        page[tail_word + 7] |= 0x80;
        assert_eq!(back.load_page(1, &page), Err(MapTailError { len: 40_000 }));
    }
}
