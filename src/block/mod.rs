//! Elastic block regions (SPEC §5): a virtual size the client sees, a
//! resident quota of pool frames, and a swap tier for what does not fit.
//!
//! A block region's pool pages are its block map (see `map.rs`) followed by
//! its frames. The resident quota bounds the frames; they are taken from
//! the pool as blocks are written (a step at a time), so quotas may add up
//! to more than the pool, and a region whose pool is full uses its own
//! frames as if at its quota. Each logical
//! 4 KiB block is unmapped (reads as zeros), resident in a frame, or swapped
//! to a slot of the pool's swap tier. Writes to unmapped blocks take a free
//! frame; when none is left the host evicts its coldest block (CLOCK) to
//! swap, or fails with ENOSPC when the region has no swap. Reads of swapped
//! blocks fault them back in.
//!
//! Crash consistency follows two rules (`map.rs`): data is durable in its
//! frame or slot before a map entry points at it, and a frame or slot is
//! reused only once the entry that left it is durable. Overwrites of a
//! resident block go in place and become durable at the next flush, as on
//! any disk; FUA writes and flushes persist every frame and map page they
//! cover. The free frame list and the swap slot list are rebuilt from the
//! map at open, so nothing leaks.

pub mod balance;
mod clock;
mod device;
mod dirty;
mod map;
mod rate;
mod registry;
mod resize;
mod swap;
mod swap_file;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pmvisor_blk::DeviceError;
use serde::Serialize;

pub use clock::{Clock, VictimPolicy};
use dirty::DirtyFrames;
pub use map::BlockState;
pub use registry::{default_swap_path, BlockRegions};
pub use resize::{Disposition, GuestVictims, Rejected, ResizeReport};
pub use swap::{MediaSwap, SlotAllocator, SwapStore, SwapTier};
pub use swap_file::FileSwap;

use crate::pool::{Media, Pool, PoolError, RegionKind, RegionLayout, PAGE_SIZE};

/// Region attribute holding the virtual size in bytes.
pub const ATTR_SIZE: &str = "block.size";
/// Region attribute saying whether the region may use the swap tier.
pub const ATTR_SWAP: &str = "block.swap";
/// Region attribute holding the resident quota in bytes. The frames behind
/// it are taken from the pool as blocks are written, so the quotas of all
/// regions may add up to more than the pool (the balancer settles it).
pub const ATTR_RESIDENT: &str = "block.resident";

const NO_BLOCK: u64 = u64::MAX;
const BLOCK: u64 = PAGE_SIZE;

/// Errors of block regions.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("region {name:?} is a {kind} region, not a block region")]
    NotBlock { name: String, kind: RegionKind },
    #[error("the block map of region {name:?} is damaged: {detail}")]
    Corrupt { name: String, detail: String },
    #[error(
        "region {name:?} cannot hold {resident} blocks in {frames} frames without a swap tier; \
         trim data first, or create the region with --swap"
    )]
    QuotaTooSmall { name: String, resident: u64, frames: u64 },
    #[error(
        "a resident quota of {quota_pages} pages for block region {name:?} (with its \
         {map_pages}-page block map) is more than the whole pool's {data_pages} pages; give a \
         smaller quota, or use a larger pool (quotas of several regions may add up to more \
         than the pool, one alone may not)"
    )]
    QuotaBeyondPool { name: String, quota_pages: u64, map_pages: u64, data_pages: u64 },
    #[error("cannot open the swap tier at {}", path.display())]
    Swap {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid block region request: {0}")]
    Invalid(String),
    #[error("block I/O on region {name:?} failed")]
    Device {
        name: String,
        #[source]
        source: DeviceError,
    },
}

/// What a new block region looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    /// Virtual size in bytes (whole 4 KiB blocks).
    pub size: u64,
    /// Resident quota in bytes (whole 4 KiB frames).
    pub resident: u64,
    /// Whether evicted blocks may go to the swap tier.
    pub swap: bool,
}

/// Counters and occupancy of a block region.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockStats {
    pub size: u64,
    pub resident_quota: u64,
    /// Bytes of frames taken from the pool (at most the quota).
    pub allocated: u64,
    pub resident_blocks: u64,
    pub swapped_blocks: u64,
    pub reads: u64,
    pub writes: u64,
    pub faults: u64,
    /// Faults per second over the last 10 s (the current second so far included).
    pub faults_per_second: f64,
    pub evictions: u64,
    /// Memory residence ratio: resident / (resident + swapped).
    pub mrr: f64,
    pub swap: bool,
}

#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    faults: AtomicU64,
    evictions: AtomicU64,
}

#[derive(Debug)]
struct State {
    layout: RegionLayout,
    /// Frames taken from the pool.
    frames: u64,
    /// Most frames the region may take.
    quota: u64,
    map: Vec<u64>,
    owner: Vec<u64>,
    free: Vec<u64>,
    policy: Box<dyn VictimPolicy>,
    /// Frames written since the last flush.
    dirty_frames: DirtyFrames,
    dirty_map_pages: BTreeSet<u64>,
}

/// An open block region; implements [`BlockDevice`] for the transports.
#[derive(Debug)]
pub struct BlockRegion {
    pool: Arc<Pool>,
    name: String,
    size: u64,
    map_pages: u64,
    media: Arc<dyn Media>,
    swap: Option<Arc<SwapTier>>,
    state: Mutex<State>,
    counters: Counters,
    /// Faults per second, for `region stats`.
    fault_rate: Mutex<rate::RateWindow>,
}

/// Fewest and most frames a region takes from the pool at once.
const GROW_STEP_MIN: u64 = 256;
const GROW_STEP_MAX: u64 = 16384;

/// Most blocks evicted, copied or unmapped in one batch (64 MiB): bounds
/// the lists of a batch and the data written before its entries are.
const BATCH: usize = 16384;

/// Most blocks one copy thread writes to swap in one go (1 MiB).
const COPY_RUN: usize = 256;
/// Blocks a batch needs before its copies are spread over threads.
const PARALLEL_FROM: usize = 1024;
/// Most threads a batch's copies use.
const COPY_THREADS: usize = 4;

/// Sorted, distinct offsets of units `size` long (bytes of frames or
/// pages, or 1 for slot numbers) as `(offset, length)` runs of adjacent
/// units.
fn byte_runs(sorted: &[u64], size: u64) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &at in sorted {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == at => *len += size,
            _ => runs.push((at, size)),
        }
    }
    runs
}

/// Runs `copy` on every item, spread over up to [`COPY_THREADS`] threads
/// when the batch moves at least [`PARALLEL_FROM`] blocks (one thread
/// moves memory at a fraction of what the machine can). The caller is one
/// of the threads, and each takes the next item when it is done with one,
/// so a thread that starts late (an idle virtual CPU can take milliseconds
/// to wake) does less rather than holding up the batch. The first error
/// wins and stops the others taking more; every thread has finished when
/// this returns.
fn in_parallel<T: Sync>(
    items: &[T],
    blocks: usize,
    copy: impl Fn(&T) -> std::io::Result<()> + Sync,
) -> std::io::Result<()> {
    // Asked once: the answer reads cgroup files, too slow for every fault.
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cpus = *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads = cpus.min(COPY_THREADS).min(items.len());
    if threads < 2 || blocks < PARALLEL_FROM {
        return items.iter().try_for_each(&copy);
    }
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(None);
    let work = || {
        while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
            if let Err(e) = copy(item) {
                next.store(items.len(), Ordering::Relaxed);
                failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
            }
        }
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        work();
        helpers.into_iter().for_each(|h| h.join().expect("a copy thread panicked"));
    });
    failed.into_inner().unwrap_or_else(|p| p.into_inner()).map_or(Ok(()), Err)
}

/// Refuse a quota that the whole pool could not hold beside the map.
fn check_quota_fits(pool: &Pool, name: &str, quota: u64, map_pages: u64) -> Result<(), BlockError> {
    let data_pages = pool.info().data_pages;
    if quota.saturating_add(map_pages) > data_pages {
        return Err(BlockError::QuotaBeyondPool {
            name: name.to_string(),
            quota_pages: quota,
            map_pages,
            data_pages,
        });
    }
    Ok(())
}

fn io(source: std::io::Error) -> DeviceError {
    DeviceError::Io(source)
}

impl BlockRegion {
    /// Create a block region in `pool`: the map is allocated now, frames up
    /// to `spec.resident` bytes as blocks are written; every block starts
    /// unmapped.
    pub fn create(pool: &Pool, name: &str, spec: BlockSpec) -> Result<(), BlockError> {
        if spec.size == 0 || spec.size % BLOCK != 0 {
            return Err(BlockError::Invalid(format!(
                "the virtual size must be a positive multiple of 4 KiB, not {}",
                spec.size
            )));
        }
        let pages = map::map_pages(spec.size / BLOCK);
        check_quota_fits(pool, name, spec.resident.div_ceil(BLOCK), pages)?;
        let attrs = BTreeMap::from([
            (ATTR_SIZE.to_string(), spec.size.to_string()),
            (ATTR_SWAP.to_string(), spec.swap.to_string()),
            (ATTR_RESIDENT.to_string(), (spec.resident.div_ceil(BLOCK) * BLOCK).to_string()),
        ]);
        pool.create_region_with_attrs(name, RegionKind::Block, pages * PAGE_SIZE, attrs)?;
        Ok(())
    }

    /// Whether a region's attributes ask for the swap tier.
    pub fn wants_swap(attrs: &BTreeMap<String, String>) -> bool {
        attrs.get(ATTR_SWAP).is_some_and(|v| v == "true")
    }

    /// Open block region `name`. Every swapped block's slot is claimed in
    /// `swap`'s allocator, so open all block regions of a pool before any
    /// of them takes new slots (`BlockRegions` does).
    pub fn open(
        pool: Arc<Pool>,
        name: &str,
        swap: Option<Arc<SwapTier>>,
    ) -> Result<BlockRegion, BlockError> {
        let info = pool.region(name)?;
        if info.kind != RegionKind::Block {
            return Err(BlockError::NotBlock { name: name.to_string(), kind: info.kind });
        }
        let corrupt = |detail: String| BlockError::Corrupt { name: name.to_string(), detail };
        let size: u64 = info
            .attrs
            .get(ATTR_SIZE)
            .and_then(|s| s.parse().ok())
            .filter(|s| s % BLOCK == 0 && *s > 0)
            .ok_or_else(|| corrupt(format!("its {ATTR_SIZE} attribute is missing or invalid")))?;
        let blocks = size / BLOCK;
        let map_pages = map::map_pages(blocks);
        let pages = info.size / PAGE_SIZE;
        let frames = pages
            .checked_sub(map_pages)
            .ok_or_else(|| corrupt(format!("{pages} pages cannot hold a {map_pages}-page map")))?;
        // Regions from before lazy frames have no quota attribute: their
        // quota is what they hold.
        let quota = match info.attrs.get(ATTR_RESIDENT) {
            None => frames,
            Some(v) => {
                v.parse::<u64>().ok().filter(|q| q % BLOCK == 0).map(|q| q / BLOCK).ok_or_else(
                    || {
                        corrupt(format!(
                        "its {ATTR_RESIDENT} attribute {v:?} is not a whole number of 4 KiB frames"
                    ))
                    },
                )?
            }
        }
        .max(frames);
        let layout = RegionLayout::new(&info.extents);
        let media = pool.media().clone();

        let mut raw = vec![0u8; (blocks * map::ENTRY_SIZE) as usize];
        for page in 0..map_pages {
            let start = (page * PAGE_SIZE) as usize;
            let end = (start + PAGE_SIZE as usize).min(raw.len());
            media.read(layout.offset(page), &mut raw[start..end]).map_err(|e| {
                BlockError::Device { name: name.to_string(), source: DeviceError::Io(e) }
            })?;
        }
        let map: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let mut owner = vec![NO_BLOCK; frames as usize];
        let mut claimed = Vec::new();
        for (block, &entry) in map.iter().enumerate() {
            match BlockState::decode(entry) {
                None => {
                    return Err(corrupt(format!("block {block} has an invalid entry {entry:#x}")))
                }
                Some(BlockState::Unmapped) => {}
                Some(BlockState::Resident(f)) => {
                    let slot = owner.get_mut(f as usize).ok_or_else(|| {
                        corrupt(format!("block {block} names frame {f} of {frames}"))
                    })?;
                    if *slot != NO_BLOCK {
                        return Err(corrupt(format!(
                            "blocks {} and {block} share frame {f}",
                            *slot
                        )));
                    }
                    *slot = block as u64;
                }
                Some(BlockState::Swapped(s)) => claimed.push((block, s)),
            }
        }
        if !claimed.is_empty() {
            let tier = swap.as_ref().ok_or_else(|| {
                corrupt(format!("{} blocks are swapped but no swap tier was given", claimed.len()))
            })?;
            let mut slots = tier.slots.lock().unwrap_or_else(|p| p.into_inner());
            for (block, s) in claimed {
                if !slots.claim(s) {
                    return Err(corrupt(format!(
                        "block {block} names swap slot {s}, already in use"
                    )));
                }
            }
        }
        let free = (0..frames).rev().filter(|&f| owner[f as usize] == NO_BLOCK).collect();
        Ok(BlockRegion {
            pool,
            name: name.to_string(),
            size,
            map_pages,
            media,
            swap,
            state: Mutex::new(State {
                layout,
                frames,
                quota,
                map,
                owner,
                free,
                policy: Box::new(Clock::new(frames)),
                dirty_frames: DirtyFrames::default(),
                dirty_map_pages: BTreeSet::new(),
            }),
            counters: Counters::default(),
            fault_rate: Mutex::new(rate::RateWindow::new(std::time::Instant::now())),
        })
    }

    /// The region's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count `n` blocks faulted in from swap by reads.
    fn count_faults(&self, n: u64) {
        self.counters.faults.fetch_add(n, Ordering::Relaxed);
        let mut rate = self.fault_rate.lock().unwrap_or_else(|p| p.into_inner());
        rate.count(n, std::time::Instant::now());
    }

    /// Whether blocks beyond the quota go to a swap tier.
    pub fn has_swap(&self) -> bool {
        self.swap.is_some()
    }

    /// Counters and occupancy.
    pub fn stats(&self) -> BlockStats {
        let st = self.lock();
        let resident = st.frames - st.free.len() as u64;
        let swapped = st
            .map
            .iter()
            .filter(|&&e| matches!(BlockState::decode(e), Some(BlockState::Swapped(_))))
            .count() as u64;
        BlockStats {
            size: self.size,
            resident_quota: st.quota * BLOCK,
            allocated: st.frames * BLOCK,
            resident_blocks: resident,
            swapped_blocks: swapped,
            reads: self.counters.reads.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
            faults: self.counters.faults.load(Ordering::Relaxed),
            faults_per_second: self
                .fault_rate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .per_second(std::time::Instant::now()),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            mrr: if resident + swapped == 0 {
                1.0
            } else {
                resident as f64 / (resident + swapped) as f64
            },
            swap: self.swap.is_some(),
        }
    }

    /// Where each block lives now (tests and tools).
    pub fn block_state(&self, block: u64) -> Option<BlockState> {
        self.lock().map.get(block as usize).and_then(|&e| BlockState::decode(e))
    }

    fn frame_offset(&self, st: &State, frame: u64) -> u64 {
        st.layout.offset(self.map_pages + frame)
    }

    fn entry_offset(&self, st: &State, block: u64) -> (u64, u64) {
        let byte = block * map::ENTRY_SIZE;
        let page = byte / PAGE_SIZE;
        (st.layout.offset(page) + byte % PAGE_SIZE, page)
    }

    /// A free frame, evicting the coldest block when there is none.
    fn take_frame(&self, st: &mut State) -> Result<u64, DeviceError> {
        if let Some(frame) = st.free.pop() {
            return Ok(frame);
        }
        if st.frames < st.quota {
            // Below the quota: take more frames from the pool, a step at a
            // time (one pool change per step, not per block).
            // When the pool has less than a step left, one frame is enough.
            let step = (st.frames / 8).clamp(GROW_STEP_MIN, GROW_STEP_MAX);
            let want = (st.frames + step).min(st.quota);
            let taken =
                self.allocate_frames(st, want).or_else(|_| self.allocate_frames(st, st.frames + 1));
            match taken {
                Ok(()) => return Ok(st.free.pop().expect("new frames are free")),
                // The pool is full (the balancer will make room): use the
                // region's own frames, as at its quota.
                Err(e) => tracing::debug!(region = %self.name, "cannot take frames: {e}"),
            }
        }
        // Make room for the writes that follow too: one swap sync and one
        // map persist per batch instead of per block.
        let batch = (st.frames / 16).clamp(1, 32);
        let mut freed = self.evict_batch(st, batch)?;
        let frame = freed.pop().expect("a batch frees at least one frame");
        st.free.extend(freed);
        Ok(frame)
    }

    /// Evict up to `count` blocks the policy picks, as one batch: their
    /// data goes to swap slots, one swap sync makes it durable, then their
    /// map entries are written and persisted together, and only then are
    /// the frames unowned (returned for the caller to use or free).
    fn evict_batch(&self, st: &mut State, count: u64) -> Result<Vec<u64>, DeviceError> {
        if self.swap.is_none() {
            return Err(DeviceError::NoSpace);
        }
        let frames = st.frames;
        let mut picked: Vec<u64> = Vec::new();
        {
            let State { policy, owner, .. } = &mut *st;
            let mut chosen = BTreeSet::new();
            for _ in 0..count {
                let occupied = |f: u64| {
                    owner.get(f as usize).is_some_and(|&b| b != NO_BLOCK) && !chosen.contains(&f)
                };
                match policy.choose(&occupied, frames) {
                    Some(f) => {
                        chosen.insert(f);
                        picked.push(f);
                    }
                    None => break,
                }
            }
        }
        if picked.is_empty() {
            return Err(DeviceError::NoSpace);
        }
        self.evict_frames(st, picked)
    }

    /// Evict the blocks in `picked` (occupied frames) as one batch: their
    /// data goes to swap slots, written in runs of consecutive slots, one
    /// swap sync makes it durable, then their map entries are written and
    /// persisted together, and only then are the frames unowned (returned
    /// for the caller to use or free).
    fn evict_frames(&self, st: &mut State, picked: Vec<u64>) -> Result<Vec<u64>, DeviceError> {
        let tier = self.swap.clone().ok_or(DeviceError::NoSpace)?;
        let slots: Vec<u64> = {
            let mut allocator = tier.slots.lock().unwrap_or_else(|p| p.into_inner());
            picked.iter().map(|_| allocator.allocate()).collect()
        };
        let stored = (|| {
            let mut order: Vec<usize> = (0..picked.len()).collect();
            order.sort_unstable_by_key(|&i| slots[i]);
            // Runs of consecutive slots, each at most COPY_RUN blocks, so
            // that a big batch spreads over the copy threads.
            let mut runs: Vec<(u64, Vec<u64>)> = Vec::new();
            for &i in &order {
                let offset = self.frame_offset(st, picked[i]);
                match runs.last_mut() {
                    Some((first, run))
                        if slots[i] == *first + run.len() as u64 && run.len() < COPY_RUN =>
                    {
                        run.push(offset)
                    }
                    _ => runs.push((slots[i], vec![offset])),
                }
            }
            in_parallel(&runs, picked.len(), |(first, run)| {
                tier.store.write_slots_from(*first, &*self.media, run)
            })?;
            tier.store.sync()
        })();
        if let Err(e) = stored {
            let mut allocator = tier.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.iter().for_each(|&s| allocator.release(s));
            return Err(io(e));
        }
        let mut pages = Vec::with_capacity(picked.len());
        for (&frame, &slot) in picked.iter().zip(&slots) {
            let block = st.owner[frame as usize];
            pages.push(self.write_entry(st, block, BlockState::Swapped(slot))?);
        }
        self.persist_pages(pages)?;
        for &frame in &picked {
            st.owner[frame as usize] = NO_BLOCK;
            st.policy.forget(frame);
            st.dirty_frames.remove(frame);
        }
        self.counters.evictions.fetch_add(picked.len() as u64, Ordering::Relaxed);
        Ok(picked)
    }

    /// Put `block` (now in `from`) into a new frame holding `data`; the
    /// entry is durable on return. Frees `from`'s slot.
    fn install(
        &self,
        st: &mut State,
        block: u64,
        data: &[u8],
        swapped_from: Option<u64>,
    ) -> Result<u64, DeviceError> {
        let frame = self.take_frame(st)?;
        if let Err(e) = self.media.write(self.frame_offset(st, frame), data) {
            st.free.push(frame);
            return Err(io(e));
        }
        self.commit_placements(st, &[(block, frame, swapped_from)], false)?;
        Ok(frame)
    }

    /// The frame of `block`, faulting it in from swap; `None` if unmapped.
    fn resident_frame(&self, st: &mut State, block: u64) -> Result<Option<u64>, DeviceError> {
        match BlockState::decode(st.map[block as usize]) {
            Some(BlockState::Resident(frame)) => {
                st.policy.touch(frame);
                Ok(Some(frame))
            }
            Some(BlockState::Unmapped) => Ok(None),
            Some(BlockState::Swapped(slot)) => {
                let tier = self.swap.as_ref().ok_or(DeviceError::Io(std::io::Error::other(
                    "a swapped block without a swap tier",
                )))?;
                let mut data = vec![0u8; BLOCK as usize];
                tier.store.read_slot(slot, &mut data).map_err(io)?;
                let frame = self.install(st, block, &data, Some(slot))?;
                self.count_faults(1);
                Ok(Some(frame))
            }
            None => Err(DeviceError::Io(std::io::Error::other("corrupt block map entry"))),
        }
    }

    /// Point `block` at `state` (not yet durable); returns the medium
    /// offset of the entry's page, for one persist of a batch's pages.
    fn write_entry(
        &self,
        st: &mut State,
        block: u64,
        state: BlockState,
    ) -> Result<u64, DeviceError> {
        let raw = state.encode();
        st.map[block as usize] = raw;
        let (at, page) = self.entry_offset(st, block);
        self.media.write(at, &raw.to_le_bytes()).map_err(io)?;
        Ok(st.layout.offset(page))
    }

    /// Unmap `blocks` durably (reads return zeros) and free what they
    /// owned, a batch at a time: the batch's entries are written and
    /// persisted together, then its frames are freed and discarded and its
    /// slots punched and freed, in runs (a per-block persist and punch cost
    /// about 200 µs a block on a virtual machine).
    fn unmap_blocks(&self, st: &mut State, blocks: &[u64]) -> Result<(), DeviceError> {
        for batch in blocks.chunks(BATCH) {
            let (mut pages, mut frames, mut slots) = (Vec::new(), Vec::new(), Vec::new());
            for &block in batch {
                match BlockState::decode(st.map[block as usize]) {
                    Some(BlockState::Unmapped) => continue,
                    Some(BlockState::Resident(frame)) => frames.push(frame),
                    Some(BlockState::Swapped(slot)) => slots.push(slot),
                    None => {}
                }
                pages.push(self.write_entry(st, block, BlockState::Unmapped)?);
            }
            self.persist_pages(pages)?;
            let mut freed: Vec<u64> = Vec::with_capacity(frames.len());
            for &frame in &frames {
                st.owner[frame as usize] = NO_BLOCK;
                st.policy.forget(frame);
                st.dirty_frames.remove(frame);
                st.free.push(frame);
                freed.push(self.frame_offset(st, frame));
            }
            freed.sort_unstable();
            for (at, len) in byte_runs(&freed, BLOCK) {
                let _ = self.media.discard(at, len);
            }
            if let Some(tier) = self.swap.as_ref().filter(|_| !slots.is_empty()) {
                // Punched before they are free: once free, another region
                // may take them and store into them.
                let mut allocator = tier.slots.lock().unwrap_or_else(|p| p.into_inner());
                tier.store.discard_slots(&slots);
                slots.iter().for_each(|&slot| allocator.release(slot));
            }
        }
        Ok(())
    }

    /// Write `data` into `block` at byte `within`.
    fn write_block(
        &self,
        st: &mut State,
        block: u64,
        within: u64,
        data: &[u8],
    ) -> Result<(), DeviceError> {
        let whole = within == 0 && data.len() as u64 == BLOCK;
        let current = BlockState::decode(st.map[block as usize]);
        let frame = match current {
            Some(BlockState::Resident(_)) => self.resident_frame(st, block)?,
            Some(BlockState::Swapped(slot)) if whole => {
                // Overwritten whole: no need to read the old data back.
                self.install(st, block, data, Some(slot))?;
                return Ok(());
            }
            Some(BlockState::Swapped(_)) => self.resident_frame(st, block)?,
            _ => None,
        };
        match frame {
            Some(frame) => {
                let at = self.frame_offset(st, frame) + within;
                self.media.write(at, data).map_err(io)?;
                st.dirty_frames.insert(frame);
                Ok(())
            }
            None => {
                let mut full = vec![0u8; BLOCK as usize];
                full[within as usize..within as usize + data.len()].copy_from_slice(data);
                self.install(st, block, &full, None).map(drop)
            }
        }
    }

    /// Persist every dirty frame and map page, in as few ranges as possible.
    fn flush_locked(&self, st: &mut State) -> Result<(), DeviceError> {
        let offsets: Vec<u64> = st
            .dirty_frames
            .iter()
            .map(|f| self.frame_offset(st, f))
            .chain(st.dirty_map_pages.iter().map(|&p| st.layout.offset(p)))
            .collect();
        self.persist_pages(offsets)?;
        st.dirty_frames.clear();
        st.dirty_map_pages.clear();
        Ok(())
    }

    /// Make the pages at these medium offsets durable: their contiguous
    /// runs flushed together (`Media::flush_ranges`), one barrier for all.
    fn persist_pages(&self, mut offsets: Vec<u64>) -> Result<(), DeviceError> {
        if offsets.is_empty() {
            return Ok(());
        }
        offsets.sort_unstable();
        offsets.dedup();
        self.media.flush_ranges(&byte_runs(&offsets, PAGE_SIZE)).map_err(io)?;
        self.media.barrier().map_err(io)
    }

    /// Point every `(block, frame, slot)` of a batch at its new frame. The
    /// frames' data must already be written; it is made durable first, then
    /// the entries (now if `durable`, or when a slot is freed, else at the
    /// next flush), and only then are the old swap slots let go.
    fn commit_placements(
        &self,
        st: &mut State,
        placed: &[(u64, u64, Option<u64>)],
        durable: bool,
    ) -> Result<(), DeviceError> {
        if placed.is_empty() {
            return Ok(());
        }
        self.persist_pages(placed.iter().map(|&(_, f, _)| self.frame_offset(st, f)).collect())?;
        let mut pages = Vec::new();
        for &(block, frame, _) in placed {
            let raw = BlockState::Resident(frame).encode();
            st.map[block as usize] = raw;
            let (at, page) = self.entry_offset(st, block);
            self.media.write(at, &raw.to_le_bytes()).map_err(io)?;
            pages.push(page);
            st.owner[frame as usize] = block;
            st.policy.touch(frame);
        }
        let frees_slots = placed.iter().any(|p| p.2.is_some());
        if durable || frees_slots {
            self.persist_pages(pages.iter().map(|&p| st.layout.offset(p)).collect())?;
        } else {
            st.dirty_map_pages.extend(pages);
        }
        if let Some(tier) = &self.swap {
            let mut slots = tier.slots.lock().unwrap_or_else(|p| p.into_inner());
            for slot in placed.iter().filter_map(|p| p.2) {
                // No discard: a slot freed by a fault is soon reused by an
                // eviction, and punching a hole costs a journal commit on disk.
                slots.release(slot);
            }
        }
        Ok(())
    }

    /// Bring every swapped block of `first..first+count` back into frames,
    /// as one batch (one persist of the frames, one of the entries).
    fn fault_in_range(&self, st: &mut State, first: u64, count: u64) -> Result<(), DeviceError> {
        let swapped: Vec<(u64, u64)> = (first..first + count)
            .filter_map(|b| match BlockState::decode(st.map[b as usize]) {
                Some(BlockState::Swapped(slot)) => Some((b, slot)),
                _ => None,
            })
            .collect();
        self.fault_in_blocks(st, &swapped, true)
    }

    /// Most blocks one read faults in and keeps resident at once: what
    /// [`BlockRegion::fault_in_blocks`] brings back in one batch.
    fn fault_part(st: &State) -> u64 {
        (st.quota / 2).max(1)
    }

    /// Bring the swapped `(block, slot)`s back into frames, in batches.
    /// `accessed`: a read asked for them, as opposed to a grow bringing
    /// back hinted blocks; only an access counts as a fault and sets the
    /// victim policy's reference bits (so a shrink soon after a grow takes
    /// blocks nobody has read since as readily as any others).
    fn fault_in_blocks(
        &self,
        st: &mut State,
        swapped: &[(u64, u64)],
        accessed: bool,
    ) -> Result<(), DeviceError> {
        if swapped.is_empty() {
            return Ok(());
        }
        let tier = self.swap.clone().ok_or_else(|| {
            DeviceError::Io(std::io::Error::other("a swapped block without a swap tier"))
        })?;
        // Never more at once than the quota can hold beside the others.
        let batch = Self::fault_part(st) as usize;
        for chunk in swapped.chunks(batch) {
            let mut placed: Vec<(u64, u64, Option<u64>)> = Vec::with_capacity(chunk.len());
            for &(block, slot) in chunk {
                match self.take_frame(st) {
                    Ok(frame) => placed.push((block, frame, Some(slot))),
                    Err(e) => {
                        st.free.extend(placed.iter().map(|&(_, f, _)| f));
                        return Err(e);
                    }
                }
            }
            // Runs of consecutive slots, read straight into their frames.
            placed.sort_unstable_by_key(|p| p.2);
            let mut runs: Vec<(u64, Vec<u64>)> = Vec::new();
            for &(_, frame, slot) in &placed {
                let (slot, offset) = (slot.expect("a swapped block"), self.frame_offset(st, frame));
                match runs.last_mut() {
                    Some((first, run))
                        if slot == *first + run.len() as u64 && run.len() < COPY_RUN =>
                    {
                        run.push(offset)
                    }
                    _ => runs.push((slot, vec![offset])),
                }
            }
            let read = in_parallel(&runs, placed.len(), |(first, run)| {
                tier.store.read_slots_into(*first, &*self.media, run, !accessed)
            });
            if let Err(e) = read {
                st.free.extend(placed.iter().map(|&(_, f, _)| f));
                return Err(io(e));
            }
            self.commit_placements(st, &placed, true)?;
            if accessed {
                self.count_faults(placed.len() as u64);
            } else {
                placed.iter().for_each(|&(_, frame, _)| st.policy.forget(frame));
            }
        }
        Ok(())
    }

    /// Change the resident quota to `resident` bytes (whole frames), the
    /// host choosing every victim (see [`BlockRegion::resize_resident`]).
    pub fn set_resident_quota(&self, resident: u64) -> Result<(), BlockError> {
        self.resize_resident(resident, &[], &[]).map(drop)
    }

    /// Give every swap slot this region holds back to the tier (after the
    /// region was deleted).
    fn release_swap(&self) {
        let Some(tier) = &self.swap else { return };
        let st = self.lock();
        let held: Vec<u64> = st
            .map
            .iter()
            .filter_map(|&entry| match BlockState::decode(entry) {
                Some(BlockState::Swapped(slot)) => Some(slot),
                _ => None,
            })
            .collect();
        let mut slots = tier.slots.lock().unwrap_or_else(|p| p.into_inner());
        tier.store.discard_slots(&held);
        held.iter().for_each(|&slot| slots.release(slot));
    }

    /// Blocks `offset..offset+len` as (block, byte within, length) pieces.
    fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> {
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let block = pos / BLOCK;
            let within = pos % BLOCK;
            let n = (BLOCK - within).min(end - pos);
            pos += n;
            Some((block, within, n))
        })
    }
}

#[cfg(test)]
mod tests;
