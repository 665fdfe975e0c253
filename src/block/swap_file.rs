//! `FileSwap`: the swap tier in a file, slot `n` at byte `n * 4096`.
//!
//! The file is mapped, so an eviction is a copy from the pool's mapping
//! into this one and a fault the copy back: no system call per run of
//! blocks and none of the per-page work of `pwritev`/`preadv` through the
//! page cache (on tmpfs those cost about three times a memcpy). The mapping
//! reserves address space for [`RESERVE`] bytes at open and never moves;
//! the file grows under it in steps of at least [`GROW_STEP`], each
//! allocated with `fallocate` before any store reaches it. (A store into a
//! page the file system cannot provide is a SIGBUS; this way a full file
//! system is an error when the file grows.) Slots given back with
//! [`SwapStore::discard_slot`] are punched out and remembered as holes (the
//! holes of an existing file are found once, at open); a store allocates
//! the holes among its slots again first, and a read that would touch a
//! hole reads it with `pread` instead. `sync` is `fdatasync`, which writes
//! back what was stored through the mapping too.
//!
//! Growing costs more than storing: on tmpfs the kernel allocates, zeroes
//! and maps every new page, about 100 ms for 256 MiB against a 25 ms copy.
//! With [`SwapStore::keep_ready`] (the daemon's warm reserve) a thread keeps
//! that much of the file allocated and mapped past the highest slot stored,
//! growing it a step at a time at nice 19 once stores have paused for
//! [`QUIET`], without holding any lock a store needs; stores only touch
//! the file below `len`, which moves once a step is allocated and mapped.
//!
//! That is for a file in memory (tmpfs). On a disk file system the page
//! cache's per-page work is small beside the disk, while stores through a
//! mapping fault again after every write-back: there the slots are written
//! with `pwritev` straight from the pool's mapping and read with `preadv`
//! straight into it (`Media::write_ranges_to`, `read_ranges_from`), and the
//! mapping is not used.
//!
//! The copies rely on the slot and frame rules of block regions: a slot
//! belongs to one block, and a block is only moved with its region's lock
//! held, so no two copies touch one slot or one frame at once.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{FallocateFlags, SeekFrom};

use super::swap::{put, put_each, SwapStore};
use crate::pool::{sys, Media, PAGE_SIZE};

/// Address space reserved for the file: the most it can grow to.
pub const RESERVE: u64 = 4 << 40;
/// The smallest step the file grows by.
const GROW_STEP: u64 = 64 << 20;
/// The warmer grows the file only once no store has come for this long, so
/// that it never competes with a shrink for the CPU and the file...
const QUIET: Duration = Duration::from_millis(100);
/// ... and at its nice value: after the guests' I/O.
const WARM_NICE: i32 = 19;
/// `statfs` type of tmpfs.
const TMPFS_MAGIC: rustix::fs::FsWord = 0x0102_1994;

/// Most separate holes remembered; beyond it freed slots are not punched
/// (they keep their space until reused).
const MAX_HOLES: usize = 1 << 20;

/// A swap file, mapped. See the module documentation.
#[derive(Debug)]
pub struct FileSwap {
    inner: Arc<Inner>,
    /// The thread that keeps free space allocated ([`FileSwap::keep_ready`]).
    warmer: Mutex<Option<JoinHandle<()>>>,
}

/// The file and its mapping, shared with the warming thread.
#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: File,
    map: MmapRaw,
    space: Mutex<Space>,
    /// The file is on a disk: slots move with `pwritev`/`preadv`.
    on_disk: bool,
    /// Bytes of free space to keep allocated past the highest slot stored.
    ready: AtomicU64,
    /// Wakes the warmer; `true` tells it to stop.
    warm: Mutex<bool>,
    warm_changed: Condvar,
    /// When slots were last prepared for a store, in nanoseconds since
    /// `opened`: the warmer waits for [`QUIET`] after it.
    opened: Instant,
    last_store: AtomicU64,
}

/// What of the file the mapping may touch.
#[derive(Debug, Default)]
struct Space {
    /// Bytes of the file (whole slots); nothing past it is touched.
    len: u64,
    /// Runs of slots that are holes, `start -> end` (exclusive), merged.
    holes: BTreeMap<u64, u64>,
    /// End in bytes of the highest slot stored since the file was opened.
    high: u64,
}

impl Space {
    fn add_hole(&mut self, start: u64, end: u64) {
        let (mut start, mut end) = (start, end);
        if let Some((&s, &e)) = self.holes.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.holes.remove(&s);
            }
        }
        while let Some((&s, &e)) = self.holes.range(start..=end).next() {
            end = end.max(e);
            self.holes.remove(&s);
        }
        self.holes.insert(start, end);
    }

    /// The holes among slots `first..end`, taken out of the set.
    fn take_holes(&mut self, first: u64, end: u64) -> Vec<(u64, u64)> {
        let mut taken = Vec::new();
        let from = self.holes.range(..=first).next_back().map_or(first, |(&s, _)| s);
        let overlapping: Vec<(u64, u64)> = self
            .holes
            .range(from..end)
            .map(|(&s, &e)| (s, e))
            .filter(|&(_, e)| e > first)
            .collect();
        for (s, e) in overlapping {
            self.holes.remove(&s);
            if s < first {
                self.holes.insert(s, first);
            }
            if e > end {
                self.holes.insert(end, e);
            }
            taken.push((s.max(first), e.min(end)));
        }
        taken
    }

    fn any_hole(&self, first: u64, end: u64) -> bool {
        let from = self.holes.range(..=first).next_back().map_or(first, |(&s, _)| s);
        self.holes.range(from..end).any(|(_, &e)| e > first)
    }
}

impl FileSwap {
    /// Open or create the swap file at `path`.
    pub fn open(path: &Path) -> io::Result<FileSwap> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let len = file.metadata()?.len();
        if len > RESERVE {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!(
                    "the swap file is larger than the {} TiB a swap tier may use",
                    RESERVE >> 40
                ),
            ));
        }
        let map = MmapOptions::new().len(RESERVE as usize).map_raw(&file)?;
        // Whole slots only (a file cut short by a crash while it grew).
        let mut space = Space { len: len / PAGE_SIZE * PAGE_SIZE, ..Default::default() };
        find_holes(&file, &mut space)?;
        let on_disk = rustix::fs::fstatfs(&file).is_ok_and(|fs| fs.f_type != TMPFS_MAGIC);
        let inner = Inner {
            path: path.to_path_buf(),
            file,
            map,
            space: Mutex::new(space),
            on_disk,
            ready: AtomicU64::new(0),
            warm: Mutex::new(false),
            warm_changed: Condvar::new(),
            opened: Instant::now(),
            last_store: AtomicU64::new(0),
        };
        Ok(FileSwap { inner: Arc::new(inner), warmer: Mutex::new(None) })
    }

    /// Where the swap file is.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

impl Drop for FileSwap {
    fn drop(&mut self) {
        *self.inner.warm.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.inner.warm_changed.notify_all();
        if let Some(warmer) = self.warmer.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = warmer.join();
        }
    }
}

impl Inner {
    fn space(&self) -> MutexGuard<'_, Space> {
        self.space.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Bytes the file should have: past the highest slot stored, the
    /// ready space (whole slots).
    fn wanted_len(&self, space: &Space) -> u64 {
        let ready = self.ready.load(Ordering::Relaxed);
        if ready == 0 {
            return 0;
        }
        space.high.saturating_add(ready).next_multiple_of(PAGE_SIZE).min(RESERVE)
    }

    fn wake_warmer(&self) {
        // Taken so that the warmer cannot miss the wake-up between its
        // check and its wait.
        drop(self.warm.lock().unwrap_or_else(|p| p.into_inner()));
        self.warm_changed.notify_all();
    }

    /// The warming thread: grow the file a step at a time whenever it is
    /// shorter than [`Inner::wanted_len`] and stores have been [`QUIET`],
    /// until the `FileSwap` is dropped.
    fn warm_until_stopped(&self) {
        let _ = rustix::process::setpriority_process(None, WARM_NICE);
        let mut stop = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if *stop {
                return;
            }
            let short = {
                let space = self.space();
                self.wanted_len(&space) > space.len
            };
            if !short {
                stop = self.warm_changed.wait(stop).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let last = Duration::from_nanos(self.last_store.load(Ordering::Relaxed));
            let since = self.opened.elapsed().saturating_sub(last);
            if since < QUIET {
                stop = self
                    .warm_changed
                    .wait_timeout(stop, QUIET - since)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            drop(stop);
            if let Err(err) = self.warm_step() {
                tracing::warn!(
                    "cannot keep swap space ready in {} ({err}); evictions will allocate it",
                    self.path.display()
                );
                let stopped = self.warm.lock().unwrap_or_else(|p| p.into_inner());
                // Try again later, or at the next growth by a store.
                stop = self
                    .warm_changed
                    .wait_timeout(stopped, Duration::from_secs(10))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            stop = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Grow the file by one step towards [`Inner::wanted_len`]: allocate the
    /// pages, map them in (tmpfs), then let stores use them. No lock is
    /// held meanwhile, so a store never waits for this thread (which runs
    /// at nice 19 and may be slow on a busy machine): a store past `len`
    /// allocates what it needs itself. Both may allocate the same pages,
    /// which is harmless (`fallocate` keeps what a page holds, and so does
    /// the mapping in), and `len` only grows.
    fn warm_step(&self) -> io::Result<()> {
        let (len, wanted) = {
            let space = self.space();
            (space.len, self.wanted_len(&space))
        };
        if wanted <= len {
            return Ok(());
        }
        let end = wanted.min(len + GROW_STEP);
        rustix::fs::fallocate(&self.file, FallocateFlags::empty(), len, end - len)?;
        if !self.on_disk {
            // SAFETY: `len..end` lies inside the reserved mapping, and the
            // pages are allocated now; nothing stores there yet.
            unsafe { sys::populate_write(self.base(), len, end - len) };
        }
        let mut space = self.space();
        space.len = space.len.max(end);
        Ok(())
    }

    /// Make slots `first..first + count` safe to store into: grow the file
    /// over them, and allocate again any that were punched.
    fn prepare(&self, first: u64, count: u64) -> io::Result<()> {
        let end = first
            .checked_add(count)
            .and_then(|end| end.checked_mul(PAGE_SIZE))
            .filter(|&end| end <= RESERVE)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!("the swap tier is full ({} TiB)", RESERVE >> 40),
                )
            })?;
        let now = self.opened.elapsed().as_nanos() as u64;
        self.last_store.store(now, Ordering::Relaxed);
        let mut space = self.space();
        if end > space.len {
            let new_len = end.max(space.len + GROW_STEP.max(space.len / 8)).min(RESERVE);
            rustix::fs::fallocate(
                &self.file,
                FallocateFlags::empty(),
                space.len,
                new_len - space.len,
            )?;
            space.len = new_len;
        }
        for (s, e) in space.take_holes(first, first + count) {
            let allocated = rustix::fs::fallocate(
                &self.file,
                FallocateFlags::KEEP_SIZE,
                s * PAGE_SIZE,
                (e - s) * PAGE_SIZE,
            );
            if let Err(err) = allocated {
                space.add_hole(s, e);
                return Err(err.into());
            }
        }
        space.high = space.high.max(end);
        if self.wanted_len(&space) > space.len {
            drop(space);
            self.wake_warmer();
        }
        Ok(())
    }

    /// Whether slots `first..first + count` may be read through the
    /// mapping: inside the file, and no hole (a read fault on a tmpfs hole
    /// allocates a page, which may fail).
    fn mapped_readable(&self, first: u64, count: u64) -> io::Result<bool> {
        let space = self.space();
        Ok((first + count) * PAGE_SIZE <= space.len && !space.any_hole(first, first + count))
    }

    /// Read slot `slot` with `pread`: bytes past the end of the file and in
    /// holes read as zeros.
    fn pread_slot(&self, slot: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], slot * PAGE_SIZE + done as u64)? {
                0 => {
                    buf[done..].fill(0);
                    break;
                }
                n => done += n,
            }
        }
        Ok(())
    }
}

impl SwapStore for FileSwap {
    fn write_slot(&self, slot: u64, data: &[u8]) -> io::Result<()> {
        self.write_slots(slot, &data[..PAGE_SIZE as usize])
    }

    fn write_slots(&self, first: u64, data: &[u8]) -> io::Result<()> {
        let count = (data.len() as u64).div_ceil(PAGE_SIZE);
        self.inner.prepare(first, count)?;
        if self.inner.on_disk {
            return self.inner.file.write_all_at(data, first * PAGE_SIZE);
        }
        // SAFETY: the slots are allocated pages of the file under the live
        // mapping (`prepare`), and only this block's mover touches them
        // (module documentation).
        unsafe { sys::copy_in_streaming(self.inner.base(), first * PAGE_SIZE, data) };
        Ok(())
    }

    fn write_slots_from(&self, first: u64, media: &dyn Media, offsets: &[u64]) -> io::Result<()> {
        self.inner.prepare(first, offsets.len() as u64)?;
        if self.inner.on_disk {
            let ranges: Vec<(u64, u64)> =
                runs(first, offsets).map(|(_, at, len)| (at, len)).collect();
            return media.write_ranges_to(&ranges, &self.inner.file, first * PAGE_SIZE);
        }
        let mut block = Vec::new();
        for (slot, offset, len) in runs(first, offsets) {
            // SAFETY: the frames' region holds its lock while it evicts, so
            // nothing writes them during this copy.
            let data = match unsafe { media.bytes_in_place(offset, len) } {
                Some(data) => data,
                None => {
                    block.resize(len as usize, 0);
                    media.read(offset, &mut block)?;
                    &block[..]
                }
            };
            // SAFETY: the slots are allocated pages of the file under the
            // live mapping (`prepare`) that only this eviction touches.
            unsafe { sys::copy_in_streaming_unfenced(self.inner.base(), slot * PAGE_SIZE, data) };
        }
        sys::store_fence();
        Ok(())
    }

    fn read_slot(&self, slot: u64, buf: &mut [u8]) -> io::Result<()> {
        let buf = &mut buf[..PAGE_SIZE as usize];
        if self.inner.on_disk || !self.inner.mapped_readable(slot, 1)? {
            return self.inner.pread_slot(slot, buf);
        }
        // SAFETY: the slot is an allocated page of the file under the live
        // mapping; nothing stores into it while its block is read.
        unsafe { sys::copy_out(self.inner.base(), slot * PAGE_SIZE, buf) };
        Ok(())
    }

    fn read_slots_into(
        &self,
        first: u64,
        media: &dyn Media,
        offsets: &[u64],
        cold: bool,
    ) -> io::Result<()> {
        if self.inner.on_disk {
            // Bytes past the end of the file and in holes read as zeros.
            let ranges: Vec<(u64, u64)> =
                runs(first, offsets).map(|(_, at, len)| (at, len)).collect();
            return media.read_ranges_from(&ranges, &self.inner.file, first * PAGE_SIZE);
        }
        if !self.inner.mapped_readable(first, offsets.len() as u64)? {
            return put_each(first, media, offsets, cold, |slot, block| {
                self.inner.pread_slot(slot, block)
            });
        }
        for (slot, offset, len) in runs(first, offsets) {
            // SAFETY: the slots are allocated pages of the file under the
            // live mapping (checked above); nothing stores into them while
            // their blocks are faulted in.
            let data = unsafe { sys::bytes_at(self.inner.base(), slot * PAGE_SIZE, len) };
            put(media, offset, data, cold)?;
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.file.sync_data()
    }

    /// Keep `bytes` of the file allocated (and, on tmpfs, mapped) past the
    /// highest slot stored, growing it in the background: a shrink then
    /// stores into pages the file already has instead of waiting for the
    /// kernel to allocate, zero and map each one (on tmpfs, 256 MiB of new
    /// slots cost about 100 ms beside a 25 ms copy). A Linux swap file is
    /// allocated whole for the same reason. Slots punched out by a discard
    /// are not counted and not refilled: they are space given back.
    fn keep_ready(&self, bytes: u64) {
        self.inner.ready.store(bytes, Ordering::Relaxed);
        let mut warmer = self.warmer.lock().unwrap_or_else(|p| p.into_inner());
        if warmer.is_none() && bytes > 0 {
            let inner = Arc::clone(&self.inner);
            let spawned = std::thread::Builder::new()
                .name("swap-warm".into())
                .spawn(move || inner.warm_until_stopped());
            match spawned {
                Ok(handle) => *warmer = Some(handle),
                Err(err) => tracing::warn!("no thread to keep swap space ready ({err})"),
            }
        }
        drop(warmer);
        self.inner.wake_warmer();
    }

    fn discard_slot(&self, slot: u64) {
        self.discard_slots(&[slot]);
    }

    /// One punch per run of adjacent slots.
    fn discard_slots(&self, slots: &[u64]) {
        let mut sorted = slots.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut space = self.inner.space();
        for (first, count) in super::byte_runs(&sorted, 1) {
            let end = (first + count).min(space.len / PAGE_SIZE);
            if first >= end || space.holes.len() >= MAX_HOLES {
                continue;
            }
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            let (offset, len) = (first * PAGE_SIZE, (end - first) * PAGE_SIZE);
            if rustix::fs::fallocate(&self.inner.file, flags, offset, len).is_ok() {
                space.add_hole(first, end);
            }
        }
    }
}

/// Slots `first..` paired with the blocks at `offsets`, as runs where
/// both are consecutive: `(first slot, medium offset, bytes)`, one copy
/// each.
fn runs(first: u64, offsets: &[u64]) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let start = i;
        let offset = *offsets.get(i)?;
        i += 1;
        while offsets.get(i) == Some(&(offset + (i - start) as u64 * PAGE_SIZE)) {
            i += 1;
        }
        Some((first + start as u64, offset, (i - start) as u64 * PAGE_SIZE))
    })
}

/// Note the holes of an existing file in `space` (`SEEK_HOLE`/`SEEK_DATA`).
fn find_holes(file: &File, space: &mut Space) -> io::Result<()> {
    let mut at = 0;
    while at < space.len && space.holes.len() < MAX_HOLES {
        let hole = rustix::fs::seek(file, SeekFrom::Hole(at))?;
        if hole >= space.len {
            break;
        }
        let data = match rustix::fs::seek(file, SeekFrom::Data(hole)) {
            Ok(data) => data.min(space.len),
            // No data after the hole: it runs to the end.
            Err(rustix::io::Errno::NXIO) => space.len,
            Err(e) => return Err(e.into()),
        };
        // Slots with any hole in them count as holes.
        let (first, end) = (hole / PAGE_SIZE, data.div_ceil(PAGE_SIZE));
        space.add_hole(first, end);
        at = end * PAGE_SIZE;
    }
    if space.holes.len() >= MAX_HOLES {
        // Too fragmented to remember: allocate everything instead.
        rustix::fs::fallocate(file, FallocateFlags::KEEP_SIZE, 0, space.len)?;
        space.holes.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// A directory on tmpfs (the mapped path) and one on the disk (the
    /// `pwritev`/`preadv` path), where there are both.
    fn dirs() -> Vec<tempfile::TempDir> {
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        if Path::new("/dev/shm").is_dir() {
            dirs.push(tempfile::tempdir_in("/dev/shm").unwrap());
        }
        dirs
    }

    /// Media whose frames the swap tier copies from and into.
    fn frames(dir: &Path, blocks: u64) -> crate::pool::MappedMedia {
        crate::pool::MappedMedia::create_file(&dir.join("frames"), blocks * PAGE_SIZE).unwrap()
    }

    #[test]
    fn slots_round_trip_and_unwritten_slots_read_as_zeros() {
        for dir in dirs() {
            let swap = FileSwap::open(&dir.path().join("s/pool.swap")).unwrap();
            swap.write_slot(2, &[7u8; 4096]).unwrap();
            swap.sync().unwrap();
            let mut buf = [1u8; 4096];
            swap.read_slot(2, &mut buf).unwrap();
            assert_eq!(buf, [7u8; 4096]);
            // Inside the grown file but never written, and past its end.
            swap.read_slot(9, &mut buf).unwrap();
            assert_eq!(buf, [0u8; 4096]);
            swap.read_slot(1 << 30, &mut buf).unwrap();
            assert_eq!(buf, [0u8; 4096]);
        }
    }

    #[test]
    fn the_file_grows_in_allocated_steps_and_keeps_its_slots_across_opens() {
        for dir in dirs() {
            let path = dir.path().join("pool.swap");
            let swap = FileSwap::open(&path).unwrap();
            let far = (GROW_STEP / PAGE_SIZE) * 3 + 5;
            swap.write_slots(far, &[3u8; 8192]).unwrap();
            let meta = std::fs::metadata(&path).unwrap();
            assert!(meta.len() >= (far + 2) * PAGE_SIZE);
            // Allocated, not sparse: a store through the mapping cannot fault
            // on a full file system.
            assert!(meta.blocks() * 512 >= meta.len(), "{} of {}", meta.blocks() * 512, meta.len());
            drop(swap);
            let again = FileSwap::open(&path).unwrap();
            let mut buf = [0u8; 4096];
            again.read_slot(far + 1, &mut buf).unwrap();
            assert_eq!(buf, [3u8; 4096]);
        }
    }

    #[test]
    fn ready_space_is_allocated_ahead_of_the_highest_slot_in_the_background() {
        for dir in dirs() {
            let path = dir.path().join("pool.swap");
            let swap = FileSwap::open(&path).unwrap();
            let allocated = || {
                let meta = std::fs::metadata(&path).unwrap();
                (meta.len(), meta.blocks() * 512)
            };
            let wait_for = |len: u64| {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while allocated().0 < len {
                    assert!(std::time::Instant::now() < deadline, "still {:?}", allocated());
                    std::thread::sleep(Duration::from_millis(5));
                }
            };
            assert_eq!(allocated().0, 0, "nothing ahead until asked");
            swap.keep_ready(2 * GROW_STEP);
            wait_for(2 * GROW_STEP);
            let (len, blocks) = allocated();
            assert!(blocks >= len, "allocated, not sparse: {blocks} of {len}");
            // Stores past half of it: the file grows ahead again, and the
            // slots keep their data.
            let far = (GROW_STEP + GROW_STEP / 2) / PAGE_SIZE;
            swap.write_slots(far, &[9u8; 8192]).unwrap();
            let wanted = (far + 2) * PAGE_SIZE + 2 * GROW_STEP;
            wait_for(wanted);
            let mut buf = [0u8; 4096];
            swap.read_slot(far + 1, &mut buf).unwrap();
            assert_eq!(buf, [9u8; 4096]);
            // Not further than asked.
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(allocated().0, wanted);
            // Dropping the store stops the thread (the drop joins it).
            drop(swap);
        }
    }

    #[test]
    fn stores_racing_the_warmer_keep_their_data() {
        for dir in dirs() {
            let path = dir.path().join("pool.swap");
            let swap = FileSwap::open(&path).unwrap();
            // The warmer grows towards 256 MiB while stores land ahead of
            // it, behind it and in what it is allocating, then are punched.
            swap.keep_ready(4 * GROW_STEP);
            let step = GROW_STEP / PAGE_SIZE;
            let slots: Vec<u64> = (0..64).map(|i| (i * 7919) % (5 * step)).collect();
            let mut model = BTreeMap::new();
            for (i, &slot) in slots.iter().enumerate() {
                swap.write_slots(slot, &[i as u8 + 1; 4096]).unwrap();
                model.insert(slot, i as u8 + 1);
                if i % 8 == 7 {
                    swap.discard_slots(&[slots[i - 3]]);
                    model.insert(slots[i - 3], 0);
                }
                std::thread::sleep(Duration::from_millis(if i % 16 == 0 { 120 } else { 1 }));
            }
            let mut buf = [0u8; 4096];
            for (&slot, &byte) in &model {
                swap.read_slot(slot, &mut buf).unwrap();
                assert_eq!(buf, [byte; 4096], "slot {slot}");
            }
        }
    }

    #[test]
    fn slots_discarded_together_are_punched_in_runs() {
        for dir in dirs() {
            let path = dir.path().join("pool.swap");
            let swap = FileSwap::open(&path).unwrap();
            swap.write_slots(0, &[5u8; 12 * 4096]).unwrap();
            let allocated = std::fs::metadata(&path).unwrap().blocks();
            swap.discard_slots(&[5, 3, 4, 9, 4, 1 << 40]);
            let punched = allocated - std::fs::metadata(&path).unwrap().blocks();
            assert_eq!(punched, 4 * 8, "slots 3 to 5 and 9, once each; beyond the file ignored");
            assert_eq!(swap.inner.space().holes, BTreeMap::from([(3, 6), (9, 10)]));
            let mut buf = [1u8; 4096];
            for (slot, fill) in [(2, 5u8), (3, 0), (5, 0), (6, 5), (9, 0), (10, 5)] {
                swap.read_slot(slot, &mut buf).unwrap();
                assert_eq!(buf, [fill; 4096], "slot {slot}");
            }
        }
    }

    #[test]
    fn a_discarded_slot_reads_as_zeros_and_takes_data_again() {
        for dir in dirs() {
            let path = dir.path().join("pool.swap");
            let swap = FileSwap::open(&path).unwrap();
            swap.write_slots(0, &[5u8; 3 * 4096]).unwrap();
            let allocated = std::fs::metadata(&path).unwrap().blocks();
            swap.discard_slot(1);
            assert_eq!(std::fs::metadata(&path).unwrap().blocks(), allocated - 8, "punched");
            let mut buf = [1u8; 4096];
            swap.read_slot(1, &mut buf).unwrap();
            assert_eq!(buf, [0u8; 4096]);
            swap.write_slot(1, &[6u8; 4096]).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().blocks(), allocated, "allocated again");
            swap.read_slot(1, &mut buf).unwrap();
            assert_eq!(buf, [6u8; 4096]);
            swap.read_slot(2, &mut buf).unwrap();
            assert_eq!(buf, [5u8; 4096]);
        }
    }

    #[test]
    fn holes_of_an_existing_file_are_found_at_open_and_filled_before_stores() {
        for dir in dirs() {
            let path = dir.path().join("pool.swap");
            std::fs::write(&path, vec![9u8; 8 * 4096]).unwrap();
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            rustix::fs::fallocate(&file, punch, 2 * 4096, 3 * 4096).unwrap();
            let swap = FileSwap::open(&path).unwrap();
            assert_eq!(
                swap.inner.space().holes.iter().map(|(&s, &e)| (s, e)).collect::<Vec<_>>(),
                [(2, 5)]
            );
            let mut buf = [1u8; 4096];
            swap.read_slot(3, &mut buf).unwrap();
            assert_eq!(buf, [0u8; 4096]);
            swap.write_slots(4, &[4u8; 8192]).unwrap();
            assert_eq!(
                swap.inner.space().holes.iter().map(|(&s, &e)| (s, e)).collect::<Vec<_>>(),
                [(2, 4)]
            );
            swap.read_slot(5, &mut buf).unwrap();
            assert_eq!(buf, [4u8; 4096]);
            swap.read_slot(6, &mut buf).unwrap();
            assert_eq!(buf, [9u8; 4096]);
        }
    }

    #[test]
    fn blocks_go_to_swap_and_back_between_frames_in_memory_and_on_disk() {
        for dir in dirs() {
            let media = frames(dir.path(), 16);
            let swap = FileSwap::open(&dir.path().join("pool.swap")).unwrap();
            for block in 0..16u64 {
                media.write(block * PAGE_SIZE, &[block as u8 + 1; 4096]).unwrap();
            }
            // Blocks 2, 3, 4 (neighbours) and 9 to slots 5..9.
            let offsets: Vec<u64> = [2u64, 3, 4, 9].iter().map(|b| b * PAGE_SIZE).collect();
            swap.write_slots_from(5, &media, &offsets).unwrap();
            swap.sync().unwrap();
            let mut buf = [0u8; 4096];
            swap.read_slot(8, &mut buf).unwrap();
            assert_eq!(buf, [10u8; 4096], "{}", dir.path().display());
            // And back, into other frames.
            let targets: Vec<u64> = [12u64, 13, 14, 15].iter().map(|b| b * PAGE_SIZE).collect();
            swap.read_slots_into(5, &media, &targets, false).unwrap();
            for (slot_block, target) in [2u8, 3, 4, 9].iter().zip(12u64..) {
                media.read(target * PAGE_SIZE, &mut buf).unwrap();
                assert_eq!(buf, [slot_block + 1; 4096], "{}", dir.path().display());
            }
        }
    }

    #[test]
    fn neighbouring_blocks_are_copied_as_one_run() {
        let offsets = [0, 4096, 8192, 40960, 12288, 16384];
        assert_eq!(
            runs(10, &offsets).collect::<Vec<_>>(),
            [(10, 0, 12288), (13, 40960, 4096), (14, 12288, 8192)]
        );
        assert_eq!(runs(0, &[]).count(), 0);
    }

    #[test]
    fn hole_runs_merge_and_split() {
        let mut space = Space::default();
        for slot in [5, 7, 6, 1, 2] {
            space.add_hole(slot, slot + 1);
        }
        let runs = |space: &Space| space.holes.iter().map(|(&s, &e)| (s, e)).collect::<Vec<_>>();
        assert_eq!(runs(&space), [(1, 3), (5, 8)]);
        assert!(space.any_hole(2, 3) && space.any_hole(0, 2) && !space.any_hole(3, 5));
        assert_eq!(space.take_holes(2, 6), [(2, 3), (5, 6)]);
        assert_eq!(runs(&space), [(1, 2), (6, 8)]);
    }

    #[test]
    fn slots_beyond_the_reservation_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let swap = FileSwap::open(&dir.path().join("pool.swap")).unwrap();
        let err = swap.write_slot(RESERVE / PAGE_SIZE, &[0u8; 4096]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(err.to_string(), "the swap tier is full (4 TiB)");
    }
}
