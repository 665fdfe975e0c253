//! The pool: one NVRAM medium holding named regions (SPEC §4).
//!
//! # Layout
//!
//! ```text
//! page 0          superblock copy A  ┐ identical contents, A written first
//! page 1          superblock copy B  ┘ (superblock.rs)
//! pages 2..       checkpoint slot 0  ┐ full region table; the superblock
//!                 checkpoint slot 1  ┘ names the active one (checkpoint.rs)
//!                 metadata journal     redo records since that checkpoint
//!                                      (journal.rs)
//! data_start..    data pages           owned by regions or free
//! ```
//!
//! # Why a journal over a checkpoint
//!
//! Every metadata operation (create, delete, rename, resize, attributes) is
//! one small journal record made durable with one persist: on NVRAM that is
//! a few cache lines, which is what makes create + delete take microseconds.
//! When the journal is full, the whole table is written to the inactive
//! checkpoint slot and the superblock switches to it, which empties the
//! journal (its records carry the old epoch and stop counting). A shadow
//! root (copy-on-write table) was the alternative; it rewrites table pages
//! on every change, while the journal writes each change once.
//!
//! Crash atomicity: an operation has happened exactly when its record is
//! durable (checksummed, so a torn record is not one), or when the
//! superblock names a checkpoint that contains it. The active checkpoint is
//! never overwritten. Free space is not stored at all: at open it is the
//! complement of the regions' extents, so no crash can leak a page, and
//! open costs one pass over the metadata, never over the data.
//!
//! Data pages are zeroed and reserved when a region takes them (file pools
//! punch a hole and allocate it again), so a new region reads as zeros and
//! later writes to it cannot fail for lack of disk space.

mod alloc;
mod catalog;
mod check;
mod checkpoint;
pub mod crash;
mod data;
mod dirty;
mod discard;
mod error;
pub mod fence;
mod file_media;
mod journal;
mod media;
mod recovery;
mod region;
mod superblock;
pub(crate) mod sys;
mod window;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use check::{CheckReport, Problem};
pub use data::RegionLayout;
pub use discard::DISCARD_DELAY;
pub use error::{ErrorKind, PoolError, Result};
pub use file_media::MappedMedia;
pub use media::{Media, MediaKind};
pub use region::{validate_name, Extent, RegionKind, MAX_NAME_LEN};
pub use window::MediaWindow;

use catalog::Catalog;
use discard::Discards;
use journal::{Change, Cursor};
use recovery::write_superblocks;
use region::{validate_attr_key, RegionEntry, MAX_ATTR_BYTES, MAX_EXTENTS};
use superblock::{Superblock, SUPERBLOCK_SIZE};

/// The pool's allocation unit.
pub const PAGE_SIZE: u64 = 4096;
/// The smallest metadata area: one page per checkpoint slot, two of journal.
pub const MIN_METADATA_SIZE: u64 = 4 * PAGE_SIZE;

/// Options for [`Pool::create`].
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Pool size in bytes (rounded down to whole pages). Ignored for
    /// devices, which are used whole.
    pub size: u64,
    /// Bytes reserved for metadata; `None` picks a size from the pool size.
    pub metadata_size: Option<u64>,
    /// Format a device even if it already holds a pool.
    pub force: bool,
}

/// How to open a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    ReadWrite,
    ReadOnly,
}

/// A region as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionInfo {
    pub id: u64,
    pub name: String,
    pub kind: RegionKind,
    /// Allocated size in bytes (whole pages).
    pub size: u64,
    /// Byte offset in the pool of a `memory` region's single extent.
    pub offset: Option<u64>,
    pub extents: Vec<Extent>,
    pub created_unix: u64,
    pub attrs: BTreeMap<String, String>,
}

impl RegionInfo {
    fn from_entry(e: &RegionEntry) -> RegionInfo {
        RegionInfo {
            id: e.id,
            name: e.name.clone(),
            kind: e.kind,
            size: e.pages() * PAGE_SIZE,
            offset: (e.kind == RegionKind::Memory)
                .then(|| e.extents.first().map(|x| x.start * PAGE_SIZE))
                .flatten(),
            extents: e.extents.clone(),
            created_unix: e.created_unix,
            attrs: e.attrs.clone(),
        }
    }
}

/// Facts about an open pool.
#[derive(Debug, Clone, Serialize)]
pub struct PoolInfo {
    pub path: PathBuf,
    pub uuid: String,
    pub format_version: u32,
    pub media: String,
    pub size: u64,
    pub page_size: u64,
    pub data_pages: u64,
    pub free_pages: u64,
    pub regions: usize,
    pub generation: u64,
    pub metadata_size: u64,
    pub journal_used: u64,
    pub created_unix: u64,
    /// The newest power-outage fence record, if the pool was ever fenced.
    pub fence: Option<FenceInfo>,
}

/// The newest fence record, as `pool info` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FenceInfo {
    /// Fenced now, or lifted (at the next start) or cancelled (power back).
    pub state: fence::FenceState,
    /// The power-outage sequence number.
    pub sequence: u64,
    /// When the pool was fenced, nanoseconds since the Unix epoch.
    pub fenced_unix_ns: u64,
}

#[derive(Debug)]
struct State {
    sb: Superblock,
    catalog: Catalog,
    cursor: Cursor,
    /// Set when a write to the medium failed mid-operation: the in-memory
    /// view may be ahead of the medium, so nothing more is written.
    failed: bool,
    /// The power-outage fence (fence.rs).
    fence: fence::Fence,
}

/// An open pool, exclusively locked. Methods take `&self`; metadata is
/// guarded by one mutex so the daemon can share one `Pool` between threads.
#[derive(Debug)]
pub struct Pool {
    path: PathBuf,
    media: Arc<dyn Media>,
    writable: bool,
    state: Mutex<State>,
    /// Problems met at open that did not stop it (lenient opens only).
    open_problems: Vec<String>,
    /// Freed pages waiting to be given back to the medium.
    discards: Discards,
}

/// What newly taken pages get before their region owns them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// Zeros, durably (they may be read before they are written).
    Zero,
    /// Space only (and mapped in): the owner writes every page before
    /// reading it.
    Reserve,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The metadata area picked for a pool of `size` bytes: 1/64 of the pool,
/// between 1 MiB and 64 MiB.
pub fn default_metadata_size(size: u64) -> u64 {
    (size / 64).clamp(1 << 20, 64 << 20)
}

/// Split a metadata size into (pages per checkpoint slot, journal pages).
fn metadata_split(metadata_size: u64) -> (u64, u64) {
    let pages = (metadata_size / PAGE_SIZE).max(4);
    let checkpoint = pages / 4;
    (checkpoint, pages - 2 * checkpoint)
}

impl Pool {
    /// Create a new pool file of `opts.size` bytes (a sparse file) and open
    /// it read-write. On a block or devdax device, format the device.
    pub fn create(path: &Path, opts: &CreateOptions) -> Result<Pool> {
        let is_device = std::fs::metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_block_device() || m.file_type().is_char_device()
        });
        let size = opts.size / PAGE_SIZE * PAGE_SIZE;
        if is_device {
            let media = MappedMedia::open(path, true)?;
            if !opts.force && Self::holds_pool(&media) {
                return Err(PoolError::DeviceHoldsPool { path: path.to_path_buf() });
            }
            let len = media.len() / PAGE_SIZE * PAGE_SIZE;
            return Self::format(Arc::new(media), path, len, opts.metadata_size);
        }
        Self::check_size(size, opts.metadata_size)?;
        let media = MappedMedia::create_file(path, size)?;
        Self::format(Arc::new(media), path, size, opts.metadata_size).inspect_err(|_| {
            let _ = std::fs::remove_file(path);
        })
    }

    fn holds_pool(media: &dyn Media) -> bool {
        let mut buf = [0u8; SUPERBLOCK_SIZE];
        [0, PAGE_SIZE]
            .iter()
            .any(|&off| media.read(off, &mut buf).is_ok() && Superblock::decode(&buf).is_ok())
    }

    fn check_size(size: u64, metadata_size: Option<u64>) -> Result<()> {
        let meta = metadata_size.unwrap_or_else(|| default_metadata_size(size));
        if meta < MIN_METADATA_SIZE {
            return Err(PoolError::TooSmall { size: meta, min: MIN_METADATA_SIZE });
        }
        let (ckpt, log) = metadata_split(meta);
        let min = (Superblock::metadata_pages(ckpt, log) + 1) * PAGE_SIZE;
        if size < min {
            return Err(PoolError::TooSmall { size, min });
        }
        Ok(())
    }

    /// Format `media` (its first `size` bytes) as an empty pool and open it.
    pub fn format(
        media: Arc<dyn Media>,
        path: &Path,
        size: u64,
        metadata_size: Option<u64>,
    ) -> Result<Pool> {
        Self::check_size(size, metadata_size)?;
        let meta = metadata_size.unwrap_or_else(|| default_metadata_size(size));
        let (checkpoint_pages, log_pages) = metadata_split(meta);
        let data_start = Superblock::metadata_pages(checkpoint_pages, log_pages);
        let sb = Superblock {
            uuid: *uuid::Uuid::new_v4().as_bytes(),
            pool_size: size,
            active_checkpoint: 0,
            generation: 1,
            checkpoint_pages,
            log_pages,
            data_start,
            data_pages: size / PAGE_SIZE - data_start,
            created_unix: now_unix(),
        };
        let io =
            |operation| move |source| PoolError::Io { path: path.to_path_buf(), operation, source };
        let empty = checkpoint::encode(sb.generation, 1, std::iter::empty());
        media.write(sb.checkpoint_offset(0), &empty).map_err(io("writing the first checkpoint"))?;
        media
            .write(sb.log_offset(), &[0; journal::HEADER_SIZE])
            .map_err(io("clearing the journal"))?;
        media.flush(sb.checkpoint_offset(0), empty.len() as u64).map_err(io("flushing"))?;
        media.flush(sb.log_offset(), journal::HEADER_SIZE as u64).map_err(io("flushing"))?;
        media.barrier().map_err(io("flushing"))?;
        write_superblocks(media.as_ref(), &sb).map_err(io("writing the superblocks"))?;
        Self::open_media(media, path, OpenMode::ReadWrite)
    }

    /// Open an existing pool: a regular file, block device or devdax device.
    pub fn open(path: &Path, mode: OpenMode) -> Result<Pool> {
        let media = MappedMedia::open(path, mode == OpenMode::ReadWrite)?;
        Self::open_media(Arc::new(media), path, mode)
    }

    /// Open a pool on any medium (`path` only names it in messages).
    pub fn open_media(media: Arc<dyn Media>, path: &Path, mode: OpenMode) -> Result<Pool> {
        Self::open_inner(media, path, mode, true)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The path the pool was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The medium, for data access by region users.
    pub fn media(&self) -> &Arc<dyn Media> {
        &self.media
    }

    /// Facts about the pool.
    pub fn info(&self) -> PoolInfo {
        let st = self.lock();
        PoolInfo {
            path: self.path.clone(),
            uuid: st.sb.uuid_string(),
            format_version: superblock::FORMAT_VERSION,
            media: self.media.kind().name().to_string(),
            size: st.sb.pool_size,
            page_size: PAGE_SIZE,
            data_pages: st.sb.data_pages,
            free_pages: st.catalog.free.free_pages(),
            regions: st.catalog.regions.len(),
            generation: st.sb.generation,
            metadata_size: st.sb.data_start * PAGE_SIZE,
            journal_used: st.cursor.offset,
            created_unix: st.sb.created_unix,
            fence: st.fence.newest.as_ref().map(|r| FenceInfo {
                state: r.state,
                sequence: r.sequence,
                fenced_unix_ns: r.fenced_unix_ns,
            }),
        }
    }

    /// Every region, sorted by name.
    pub fn regions(&self) -> Vec<RegionInfo> {
        let st = self.lock();
        st.catalog
            .names
            .values()
            .filter_map(|id| st.catalog.regions.get(id))
            .map(RegionInfo::from_entry)
            .collect()
    }

    /// The region called `name`.
    pub fn region(&self, name: &str) -> Result<RegionInfo> {
        let st = self.lock();
        st.catalog
            .by_name(name)
            .map(RegionInfo::from_entry)
            .ok_or_else(|| PoolError::RegionNotFound { name: name.to_string() })
    }

    fn writable_state(&self) -> Result<MutexGuard<'_, State>> {
        if !self.writable {
            return Err(PoolError::ReadOnly { path: self.path.clone() });
        }
        let st = self.lock();
        if st.fence.fenced {
            return Err(PoolError::Fenced { path: self.path.clone() });
        }
        if st.failed {
            return Err(PoolError::Io {
                path: self.path.clone(),
                operation: "an earlier metadata write",
                source: std::io::Error::other(
                    "the pool stopped taking changes; restart to reopen it",
                ),
            });
        }
        Ok(st)
    }

    fn pages_for(size: u64) -> Result<u64> {
        if size == 0 {
            return Err(PoolError::ZeroSize);
        }
        Ok(size.div_ceil(PAGE_SIZE))
    }

    /// Create a region of `size` bytes (rounded up to whole pages). Its
    /// pages read as zeros.
    pub fn create_region(&self, name: &str, kind: RegionKind, size: u64) -> Result<RegionInfo> {
        self.create_region_with_attrs(name, kind, size, BTreeMap::new())
    }

    /// Create a region that carries `attrs` from its first moment (one
    /// atomic change, so no crash leaves it without them).
    pub fn create_region_with_attrs(
        &self,
        name: &str,
        kind: RegionKind,
        size: u64,
        attrs: BTreeMap<String, String>,
    ) -> Result<RegionInfo> {
        for key in attrs.keys() {
            validate_attr_key(key).map_err(|reason| PoolError::InvalidAttribute {
                name: name.to_string(),
                key: key.clone(),
                reason,
            })?;
        }
        if serde_json::to_string(&attrs).map_or(usize::MAX, |s| s.len()) > MAX_ATTR_BYTES {
            return Err(PoolError::InvalidAttribute {
                name: name.to_string(),
                key: String::new(),
                reason: "the region's attributes would exceed 4 KiB",
            });
        }
        validate_name(name)
            .map_err(|reason| PoolError::InvalidName { name: name.to_string(), reason })?;
        let pages = Self::pages_for(size)?;
        let mut st = self.writable_state()?;
        if st.catalog.names.contains_key(name) {
            return Err(PoolError::RegionExists { name: name.to_string() });
        }
        let extents = self.allocate(&mut st, name, kind, pages, MAX_EXTENTS)?;
        let entry = RegionEntry {
            id: st.catalog.next_id,
            name: name.to_string(),
            kind,
            created_unix: now_unix(),
            extents: extents.clone(),
            attrs,
        };
        self.prepare_and_commit(&mut st, &extents, Change::Put(entry.clone()))?;
        Ok(RegionInfo::from_entry(&entry))
    }

    fn allocate(
        &self,
        st: &mut State,
        name: &str,
        kind: RegionKind,
        pages: u64,
        max_extents: usize,
    ) -> Result<Vec<Extent>> {
        let free = st.catalog.free.free_pages();
        if pages > free {
            return Err(PoolError::NoSpace { name: name.to_string(), needed: pages, free });
        }
        if kind == RegionKind::Memory {
            return st.catalog.free.allocate_contiguous(pages).map(|e| vec![e]).ok_or_else(|| {
                PoolError::NoContiguousSpace {
                    name: name.to_string(),
                    needed: pages,
                    largest: st.catalog.free.largest_run(),
                }
            });
        }
        st.catalog
            .free
            .allocate(pages, max_extents)
            .ok_or(PoolError::TooFragmented { name: name.to_string(), max: MAX_EXTENTS })
    }

    /// Zero and reserve newly taken pages, then commit `change`; on failure
    /// the pages go back to the free space.
    fn prepare_and_commit(&self, st: &mut State, taken: &[Extent], change: Change) -> Result<()> {
        self.prepare_and_commit_with(st, taken, Fill::Zero, change).map(drop)
    }

    /// [`Pool::prepare_and_commit`], the new pages zeroed or only reserved.
    /// Returns the pages that were prepared: reserved pages that were never
    /// given back to the medium since they were freed are not.
    fn prepare_and_commit_with(
        &self,
        st: &mut State,
        taken: &[Extent],
        fill: Fill,
        change: Change,
    ) -> Result<Vec<Extent>> {
        let reclaimed = self.discards.claim(taken);
        // Reserved pages that were never discarded are allocated and mapped
        // already: only the others need reserving (and mapping in).
        let fresh: Vec<Extent> = match fill {
            Fill::Zero => taken.to_vec(),
            Fill::Reserve => taken
                .iter()
                .flat_map(|&t| {
                    reclaimed.iter().fold(vec![t], |pieces, &r| {
                        pieces.into_iter().flat_map(|p| discard::subtract(p, r)).collect()
                    })
                })
                .collect(),
        };
        let result = fresh
            .iter()
            .try_for_each(|e| {
                let (at, len) = (e.start * PAGE_SIZE, e.count * PAGE_SIZE);
                match fill {
                    Fill::Zero => self.media.zero(at, len),
                    Fill::Reserve => self.media.reserve(at, len),
                }
            })
            .map_err(|source| PoolError::Io {
                path: self.path.clone(),
                operation: "reserving and zeroing the region's pages",
                source,
            })
            .and_then(|()| self.commit(st, change));
        if result.is_err() && !st.failed {
            for e in taken {
                st.catalog.free.release(*e);
            }
        }
        result.map(|()| fresh)
    }

    /// Make `change` durable (a journal record, or a checkpoint when the
    /// journal is full) and apply it to the catalog.
    fn commit(&self, st: &mut State, change: Change) -> Result<()> {
        let (bytes, next) = journal::encode(st.sb.generation, st.cursor, &change);
        if next.offset <= st.sb.log_bytes() {
            let at = st.sb.log_offset() + st.cursor.offset;
            let written = self
                .media
                .write(at, &bytes)
                .and_then(|()| self.media.persist(at, bytes.len() as u64));
            if let Err(source) = written {
                st.failed = true;
                return Err(PoolError::Io {
                    path: self.path.clone(),
                    operation: "writing a journal record",
                    source,
                });
            }
            st.catalog.apply(&change);
            st.cursor = next;
            return Ok(());
        }
        let undo = match &change {
            Change::Put(e) => match st.catalog.regions.get(&e.id) {
                Some(old) => Change::Put(old.clone()),
                None => Change::Delete { id: e.id },
            },
            Change::Delete { id } => Change::Put(st.catalog.regions[id].clone()),
        };
        st.catalog.apply(&change);
        let written = self.checkpoint(st);
        if written.is_err() && !st.failed {
            st.catalog.apply(&undo);
        }
        written
    }

    /// Write the whole catalog to the inactive checkpoint slot and switch
    /// the superblocks to it; the journal starts empty in the new epoch.
    fn checkpoint(&self, st: &mut State) -> Result<()> {
        let generation = st.sb.generation + 1;
        let bytes = checkpoint::encode(generation, st.catalog.next_id, st.catalog.regions.values());
        if bytes.len() as u64 > st.sb.checkpoint_bytes() {
            return Err(PoolError::MetadataFull { capacity: st.sb.checkpoint_bytes() });
        }
        let slot = 1 - st.sb.active_checkpoint;
        let mut sb = st.sb;
        sb.generation = generation;
        sb.active_checkpoint = slot;
        let at = sb.checkpoint_offset(slot);
        let written = self
            .media
            .write(at, &bytes)
            .and_then(|()| self.media.persist(at, bytes.len() as u64))
            .and_then(|()| write_superblocks(self.media.as_ref(), &sb));
        if let Err(source) = written {
            st.failed = true;
            return Err(PoolError::Io {
                path: self.path.clone(),
                operation: "writing a checkpoint",
                source,
            });
        }
        st.sb = sb;
        st.cursor = Cursor::start(sb.generation, &sb.uuid);
        Ok(())
    }

    /// Delete a region; its pages are freed.
    pub fn delete_region(&self, name: &str) -> Result<()> {
        let mut st = self.writable_state()?;
        let entry = st
            .catalog
            .by_name(name)
            .cloned()
            .ok_or_else(|| PoolError::RegionNotFound { name: name.to_string() })?;
        self.commit(&mut st, Change::Delete { id: entry.id })?;
        self.release(&mut st, &entry.extents);
        Ok(())
    }

    /// Return pages whose new owner state is durable.
    fn release(&self, st: &mut State, extents: &[Extent]) {
        for e in extents {
            st.catalog.free.release(*e);
        }
        self.discards.push(extents);
    }

    /// Wait until freed pages have been given back to the medium (they are
    /// free in the pool at once; see `discard.rs`), but those kept by
    /// [`Pool::keep_freed`].
    pub fn settle_discards(&self) {
        self.discards.settle();
    }

    /// Keep up to `bytes` of freed pages allocated in the medium while the
    /// pool is open, so that a region that grows again takes pages that
    /// are allocated and mapped (on tmpfs, allocating and mapping 256 MiB
    /// costs about 100 ms). Freed pages beyond it are given back after
    /// [`DISCARD_DELAY`].
    pub fn keep_freed(&self, bytes: u64) {
        self.discards.keep(bytes / PAGE_SIZE);
    }

    /// Rename a region.
    pub fn rename_region(&self, name: &str, new_name: &str) -> Result<()> {
        validate_name(new_name)
            .map_err(|reason| PoolError::InvalidName { name: new_name.to_string(), reason })?;
        let mut st = self.writable_state()?;
        let mut entry = st
            .catalog
            .by_name(name)
            .cloned()
            .ok_or_else(|| PoolError::RegionNotFound { name: name.to_string() })?;
        if name == new_name {
            return Ok(());
        }
        if st.catalog.names.contains_key(new_name) {
            return Err(PoolError::RegionExists { name: new_name.to_string() });
        }
        entry.name = new_name.to_string();
        self.commit(&mut st, Change::Put(entry))
    }

    /// Grow or shrink a region's allocation to `size` bytes (rounded up to
    /// pages). Growth reads as zeros; shrinking drops pages from the end.
    /// A memory region grows only in place.
    pub fn resize_region(&self, name: &str, size: u64) -> Result<RegionInfo> {
        self.resize_region_with_attr(name, size, None)
    }

    /// [`Pool::resize_region`] that also sets (`Some((key, Some(value)))`)
    /// or removes (`Some((key, None))`) one attribute in the same atomic
    /// change: after a crash both happened or neither.
    pub fn resize_region_with_attr(
        &self,
        name: &str,
        size: u64,
        attr: Option<(&str, Option<&str>)>,
    ) -> Result<RegionInfo> {
        let pages = Self::pages_for(size)?;
        let mut st = self.writable_state()?;
        let mut entry = st
            .catalog
            .by_name(name)
            .cloned()
            .ok_or_else(|| PoolError::RegionNotFound { name: name.to_string() })?;
        let current = entry.pages();
        if let Some((key, value)) = attr {
            apply_attr(&mut entry, key, value)?;
        }
        if pages == current {
            if attr.is_some() {
                self.commit(&mut st, Change::Put(entry.clone()))?;
            }
            return Ok(RegionInfo::from_entry(&entry));
        }
        if pages < current {
            let mut keep = pages;
            let mut removed = Vec::new();
            let mut kept = Vec::new();
            for e in &entry.extents {
                let take = e.count.min(keep);
                if take > 0 {
                    kept.push(Extent { start: e.start, count: take });
                }
                if take < e.count {
                    removed.push(Extent { start: e.start + take, count: e.count - take });
                }
                keep -= take;
            }
            entry.extents = kept;
            self.commit(&mut st, Change::Put(entry.clone()))?;
            self.release(&mut st, &removed);
            return Ok(RegionInfo::from_entry(&entry));
        }
        let extra = pages - current;
        let last = *entry.extents.last().expect("a region owns pages");
        let taken = if st.catalog.free.take_at(last.end(), extra) {
            vec![Extent { start: last.end(), count: extra }]
        } else if entry.kind == RegionKind::Memory {
            return Err(PoolError::CannotGrowInPlace { name: name.to_string(), extra });
        } else {
            let room = MAX_EXTENTS.saturating_sub(entry.extents.len()).max(1);
            self.allocate(&mut st, name, entry.kind, extra, room)?
        };
        entry.extents.extend(taken.iter().copied());
        alloc::coalesce(&mut entry.extents);
        // A block region grows by frames, which the block layer always
        // writes before it reads them: reserving them is enough.
        let fill = if entry.kind == RegionKind::Block { Fill::Reserve } else { Fill::Zero };
        let fresh =
            self.prepare_and_commit_with(&mut st, &taken, fill, Change::Put(entry.clone()))?;
        drop(st);
        if fill == Fill::Reserve {
            // Mapped in at once (outside the pool's lock) rather than a
            // fault per first touch; a hint, so failures are ignored.
            for e in fresh {
                let _ = self.media.populate(e.start * PAGE_SIZE, e.count * PAGE_SIZE);
            }
        }
        Ok(RegionInfo::from_entry(&entry))
    }

    /// Set (`Some`) or remove (`None`) a small persistent attribute of a
    /// region (at most 4 KiB of attributes per region).
    pub fn set_region_attr(&self, name: &str, key: &str, value: Option<&str>) -> Result<()> {
        let mut st = self.writable_state()?;
        let mut entry = st
            .catalog
            .by_name(name)
            .cloned()
            .ok_or_else(|| PoolError::RegionNotFound { name: name.to_string() })?;
        apply_attr(&mut entry, key, value)?;
        self.commit(&mut st, Change::Put(entry))
    }

    /// Verify every invariant of this open pool.
    pub fn check(&self) -> CheckReport {
        check::run(self)
    }

    /// Check a pool without opening it for use; with `repair`, fix what can
    /// be fixed safely and say what was done.
    pub fn check_path(path: &Path, repair: bool) -> Result<CheckReport> {
        let mode = if repair { OpenMode::ReadWrite } else { OpenMode::ReadOnly };
        let media = MappedMedia::open(path, repair)?;
        let pool = Self::open_inner(Arc::new(media), path, mode, false)?;
        let mut report = pool.check();
        if repair {
            check::repair(&pool, &mut report)?;
        }
        Ok(report)
    }
}

/// Set (`Some`) or remove (`None`) attribute `key` of `entry`, checking
/// the key and the 4 KiB bound of a region's attributes.
fn apply_attr(entry: &mut RegionEntry, key: &str, value: Option<&str>) -> Result<()> {
    let invalid = |reason| PoolError::InvalidAttribute {
        name: entry.name.clone(),
        key: key.to_string(),
        reason,
    };
    validate_attr_key(key).map_err(invalid)?;
    let mut attrs = entry.attrs.clone();
    match value {
        Some(v) => attrs.insert(key.to_string(), v.to_string()),
        None => attrs.remove(key),
    };
    if serde_json::to_string(&attrs).map_or(usize::MAX, |s| s.len()) > MAX_ATTR_BYTES {
        return Err(invalid("the region's attributes would exceed 4 KiB"));
    }
    entry.attrs = attrs;
    Ok(())
}
