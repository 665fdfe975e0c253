//! [`CrashStore`]: a test tool that simulates power loss at a chosen persist point.
//!
//! It keeps two images of every page: *live* (what reads see, what writes
//! change) and *durable* (what survives a crash). `persist` copies the named
//! pages from live to durable; `switch_commit` writes a slot straight to the
//! durable image. Each `persist` and each `switch_commit` is one *persist
//! point*, counted from 0. When a crash is armed for point k, the store does
//! not perform point k; instead it decides the fate of everything written but
//! not yet persisted (including the slot being switched) by the [`CrashMode`]:
//! dropped, kept, torn word by word (8-byte granularity, the atomic unit of a
//! CPU store), or reordered (the slot landed, pages at random did not). From then on every operation fails with
//! [`StoreError::Crashed`], and [`CrashStore::recovered`] gives a fresh store
//! holding only the durable image, as a machine would find it after a reboot.
//!
//! The root crate's pool crash media follow the same pattern; this one is
//! public so that tests of crates above RVM can use it too.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use crate::mem_store::DISCARD_POISON;
use crate::store::{byte_range, CommitSlot, PageRun, PageStore, StoreError, COMMIT_SLOT_SIZE};
use crate::PAGE_SIZE;

/// Granularity of a torn write, in bytes.
pub const TEAR_GRANULARITY: usize = 8;

/// What happens, at a crash, to data written but not yet persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Nothing unpersisted reached the medium.
    Drop,
    /// Everything written reached the medium (caches happened to write back).
    Keep,
    /// Each 8-byte word independently reached the medium or not, chosen by a
    /// generator seeded with `seed` (so a failure can be replayed).
    Tear {
        /// Seed of the word-choice generator.
        seed: u64,
    },
    /// Writes reached the medium out of order: a commit slot being switched
    /// reached it in full, while each unpersisted page did or did not, whole,
    /// chosen by a generator seeded with `seed`. This is what exposes a
    /// missing persist before a switch.
    Reorder {
        /// Seed of the page-choice generator.
        seed: u64,
    },
}

#[derive(Debug)]
struct CrashState {
    live: Vec<u8>,
    durable: Vec<u8>,
    unpersisted: BTreeSet<u64>,
    slots: [[u8; COMMIT_SLOT_SIZE]; 2],
    points: u64,
    armed: Option<(u64, CrashMode)>,
    crashed: bool,
}

/// A page store with separate live and durable images and an armable crash.
#[derive(Debug)]
pub struct CrashStore {
    page_count: u64,
    state: Mutex<CrashState>,
}

impl CrashStore {
    /// A store of `page_count` zeroed pages, live and durable.
    pub fn new(page_count: u64) -> Self {
        let bytes = usize::try_from(page_count * PAGE_SIZE as u64).expect("store fits in memory");
        Self::from_durable(vec![0; bytes], [[0; COMMIT_SLOT_SIZE]; 2])
    }

    fn from_durable(pages: Vec<u8>, slots: [[u8; COMMIT_SLOT_SIZE]; 2]) -> Self {
        CrashStore {
            page_count: (pages.len() / PAGE_SIZE) as u64,
            state: Mutex::new(CrashState {
                live: pages.clone(),
                durable: pages,
                unpersisted: BTreeSet::new(),
                slots,
                points: 0,
                armed: None,
                crashed: false,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CrashState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Arms a crash at the persist point `after` points from now (0 = the next one).
    pub fn arm(&self, after: u64, mode: CrashMode) {
        let mut state = self.state();
        let at = state.points + after;
        state.armed = Some((at, mode));
    }

    /// Persist points passed so far (including a crashed one).
    pub fn persist_points(&self) -> u64 {
        self.state().points
    }

    /// Whether the armed crash has happened.
    pub fn has_crashed(&self) -> bool {
        self.state().crashed
    }

    /// A new store holding this store's durable image, live and durable alike,
    /// with no crash armed: the medium as found after the power comes back.
    pub fn recovered(&self) -> CrashStore {
        let state = self.state();
        Self::from_durable(state.durable.clone(), state.slots)
    }

    /// Counts a persist point and, if it is the armed one, crashes. `slot`
    /// carries the slot being switched at this point, if any.
    fn pass_point(
        state: &mut CrashState,
        slot: Option<(CommitSlot, &[u8; COMMIT_SLOT_SIZE])>,
    ) -> Result<(), StoreError> {
        if state.crashed {
            return Err(StoreError::Crashed);
        }
        let point = state.points;
        state.points += 1;
        let Some((at, mode)) = state.armed else { return Ok(()) };
        if point != at {
            return Ok(());
        }
        let mut chooser = Chooser::new(mode);
        let pages: Vec<u64> = state.unpersisted.iter().copied().collect();
        for page in pages {
            let start = page as usize * PAGE_SIZE;
            let whole = matches!(mode, CrashMode::Reorder { .. });
            let keep_page = whole && chooser.coin();
            for word in (start..start + PAGE_SIZE).step_by(TEAR_GRANULARITY) {
                if if whole { keep_page } else { chooser.reaches_medium() } {
                    let end = word + TEAR_GRANULARITY;
                    let (live, durable) = (&state.live[word..end], &mut state.durable[word..end]);
                    durable.copy_from_slice(live);
                }
            }
        }
        state.unpersisted.clear();
        if let Some((slot, record)) = slot {
            let durable = &mut state.slots[slot.index()];
            for word in (0..COMMIT_SLOT_SIZE).step_by(TEAR_GRANULARITY) {
                if matches!(mode, CrashMode::Reorder { .. }) || chooser.reaches_medium() {
                    let end = word + TEAR_GRANULARITY;
                    durable[word..end].copy_from_slice(&record[word..end]);
                }
            }
        }
        state.crashed = true;
        tracing::debug!(point, ?mode, "simulated crash");
        Err(StoreError::Crashed)
    }
}

/// Decides whether unpersisted data reached the medium.
struct Chooser {
    mode: CrashMode,
    state: u64,
}

impl Chooser {
    fn new(mode: CrashMode) -> Self {
        let seed = match mode {
            CrashMode::Tear { seed } | CrashMode::Reorder { seed } => seed,
            CrashMode::Drop | CrashMode::Keep => 0,
        };
        Chooser { mode, state: seed }
    }

    /// A fair coin: splitmix64, small, seedable, good enough to pick writes.
    fn coin(&mut self) -> bool {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) & 1 == 1
    }

    /// Whether one word reached the medium.
    fn reaches_medium(&mut self) -> bool {
        match self.mode {
            CrashMode::Drop => false,
            CrashMode::Keep => true,
            CrashMode::Tear { .. } | CrashMode::Reorder { .. } => self.coin(),
        }
    }
}

impl PageStore for CrashStore {
    fn page_count(&self) -> u64 {
        self.page_count
    }

    fn read(&self, page: u64, offset: usize, buf: &mut [u8]) -> Result<(), StoreError> {
        let range = byte_range(page, offset, buf.len(), self.page_count)?;
        let state = self.state();
        if state.crashed {
            return Err(StoreError::Crashed);
        }
        buf.copy_from_slice(&state.live[range]);
        Ok(())
    }

    fn write(&self, page: u64, offset: usize, data: &[u8]) -> Result<(), StoreError> {
        let range = byte_range(page, offset, data.len(), self.page_count)?;
        let mut state = self.state();
        if state.crashed {
            return Err(StoreError::Crashed);
        }
        if data.is_empty() {
            return Ok(());
        }
        let (first, last) =
            ((range.start / PAGE_SIZE) as u64, ((range.end - 1) / PAGE_SIZE) as u64);
        state.live[range].copy_from_slice(data);
        state.unpersisted.extend(first..=last);
        Ok(())
    }

    fn persist(&self, runs: &[PageRun]) -> Result<(), StoreError> {
        let mut state = self.state();
        for run in runs {
            let len = usize::try_from(run.count).unwrap_or(usize::MAX).saturating_mul(PAGE_SIZE);
            byte_range(run.start, 0, len, self.page_count)?;
        }
        Self::pass_point(&mut state, None)?;
        for run in runs {
            let state = &mut *state;
            let range = run.start as usize * PAGE_SIZE..run.end() as usize * PAGE_SIZE;
            state.durable[range.clone()].copy_from_slice(&state.live[range]);
            for page in run.pages() {
                state.unpersisted.remove(&page);
            }
        }
        Ok(())
    }

    /// Overwrites the live pages with [`DISCARD_POISON`], unpersisted, so a
    /// page discarded too early shows up as garbage after a crash.
    fn discard(&self, runs: &[PageRun]) -> Result<(), StoreError> {
        for run in runs {
            let poison = vec![DISCARD_POISON; run.count as usize * PAGE_SIZE];
            self.write(run.start, 0, &poison)?;
        }
        Ok(())
    }

    fn read_commit_slot(&self, slot: CommitSlot) -> Result<[u8; COMMIT_SLOT_SIZE], StoreError> {
        let state = self.state();
        if state.crashed {
            return Err(StoreError::Crashed);
        }
        Ok(state.slots[slot.index()])
    }

    fn switch_commit(
        &self,
        slot: CommitSlot,
        record: &[u8; COMMIT_SLOT_SIZE],
    ) -> Result<(), StoreError> {
        let mut state = self.state();
        Self::pass_point(&mut state, Some((slot, record)))?;
        state.slots[slot.index()] = *record;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_page(store: &CrashStore, page: u64) -> Vec<u8> {
        let mut buf = vec![0; PAGE_SIZE];
        store.read(page, 0, &mut buf).unwrap();
        buf
    }

    #[test]
    fn persisted_pages_survive_and_unpersisted_pages_are_dropped() {
        let store = CrashStore::new(4);
        store.write(0, 0, &[1; PAGE_SIZE]).unwrap();
        store.persist(&[PageRun::new(0, 1)]).unwrap();
        store.write(1, 0, &[2; PAGE_SIZE]).unwrap();
        store.arm(0, CrashMode::Drop);
        assert!(matches!(store.persist(&[PageRun::new(1, 1)]), Err(StoreError::Crashed)));
        assert!(store.has_crashed());
        assert!(matches!(store.read(0, 0, &mut [0; 1]), Err(StoreError::Crashed)));
        let after = store.recovered();
        assert!(read_page(&after, 0).iter().all(|&b| b == 1));
        assert!(read_page(&after, 1).iter().all(|&b| b == 0));
    }

    #[test]
    fn keep_mode_makes_every_write_durable() {
        let store = CrashStore::new(2);
        store.write(1, 8, &[9; 16]).unwrap();
        store.arm(0, CrashMode::Keep);
        assert!(store.switch_commit(CommitSlot::B, &[5; COMMIT_SLOT_SIZE]).is_err());
        let after = store.recovered();
        assert_eq!(&read_page(&after, 1)[..32], &[[0; 8], [9; 8], [9; 8], [0; 8]].concat()[..]);
        assert_eq!(after.read_commit_slot(CommitSlot::B).unwrap(), [5; COMMIT_SLOT_SIZE]);
    }

    #[test]
    fn torn_writes_mix_whole_words_of_old_and_new_data() {
        let store = CrashStore::new(1);
        store.write(0, 0, &[0xFF; PAGE_SIZE]).unwrap();
        store.arm(1, CrashMode::Tear { seed: 7 });
        store.persist(&[]).unwrap();
        assert!(store.persist(&[]).is_err());
        let page = read_page(&store.recovered(), 0);
        let kept = page.chunks(TEAR_GRANULARITY).filter(|w| w.iter().all(|&b| b == 0xFF)).count();
        let dropped = page.chunks(TEAR_GRANULARITY).filter(|w| w.iter().all(|&b| b == 0)).count();
        assert_eq!(kept + dropped, PAGE_SIZE / TEAR_GRANULARITY, "no word is half written");
        assert!(kept > 0 && dropped > 0, "a tear keeps some words and drops others");
    }

    #[test]
    fn reordering_lands_the_slot_and_whole_pages_only() {
        let store = CrashStore::new(64);
        store.write(0, 0, &[0xEE; 64 * PAGE_SIZE]).unwrap();
        store.arm(0, CrashMode::Reorder { seed: 5 });
        assert!(store.switch_commit(CommitSlot::A, &[3; COMMIT_SLOT_SIZE]).is_err());
        let after = store.recovered();
        assert_eq!(after.read_commit_slot(CommitSlot::A).unwrap(), [3; COMMIT_SLOT_SIZE]);
        let landed: Vec<bool> = (0..64).map(|p| read_page(&after, p)[0] == 0xEE).collect();
        for page in 0..64 {
            let expected = if landed[page as usize] { 0xEE } else { 0 };
            assert!(read_page(&after, page).iter().all(|&b| b == expected), "page {page} is whole");
        }
        assert!(landed.contains(&true) && landed.contains(&false));
    }

    #[test]
    fn persist_points_are_counted_from_arming() {
        let store = CrashStore::new(1);
        store.persist(&[]).unwrap();
        store.arm(2, CrashMode::Drop);
        store.persist(&[]).unwrap();
        store.switch_commit(CommitSlot::A, &[1; COMMIT_SLOT_SIZE]).unwrap();
        assert!(store.persist(&[]).is_err());
        assert_eq!(store.persist_points(), 4);
    }
}
