//! `MappedMedia`: a pool medium mapped into memory with memmap2.
//!
//! Opens a regular file, a block device or a devdax character device, takes
//! the pool lock, and maps the whole medium shared. Regular files are first
//! tried with `MAP_SYNC` (only a DAX filesystem accepts it); there, and on
//! devdax, durability is cache-line write-back plus a fence. Everywhere else
//! it is `msync`. Locking: a second opener, in this process or another, gets
//! [`PoolError::LockedBy`] naming the holder's PID.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::FallocateFlags;

use std::sync::atomic::{AtomicBool, Ordering};

use super::dirty::DirtyMap;
use super::error::{PoolError, Result};
use super::media::{check_bounds, check_disjoint, Media, MediaKind};
use super::sys;

enum Mapping {
    Mmap(MmapRaw),
    Sync(sys::SyncMapping),
}

/// Ranges beyond which one `msync` of their span replaces one per range.
const SPAN_FLUSH_FROM: usize = 16;

/// A pool medium backed by a mapped file or device.
pub struct MappedMedia {
    path: PathBuf,
    file: File,
    mapping: Mapping,
    base: *mut u8,
    len: u64,
    kind: MediaKind,
    writable: bool,
    /// What was written since it was last flushed.
    dirty: DirtyMap,
    /// Fenced: every change is refused and the mapping is read-only.
    protected: AtomicBool,
}

// SAFETY: `base` points into `mapping`, owned by this struct; the mapping is
// shared memory with no thread affinity.
unsafe impl Send for MappedMedia {}
// SAFETY: all access goes through bounds-checked copies; callers do not race
// on a range (the `Media` contract).
unsafe impl Sync for MappedMedia {}

impl std::fmt::Debug for MappedMedia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedMedia")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("kind", &self.kind)
            .field("writable", &self.writable)
            .finish()
    }
}

fn io_err<'a>(path: &'a Path, operation: &'static str) -> impl FnOnce(io::Error) -> PoolError + 'a {
    move |source| PoolError::Io { path: path.to_path_buf(), operation, source }
}

impl MappedMedia {
    /// Copy `data` to `offset` with `copy` (`sys::copy_in` or its
    /// streaming twin) and mark it dirty.
    fn store(
        &self,
        offset: u64,
        data: &[u8],
        copy: unsafe fn(*mut u8, u64, &[u8]),
    ) -> io::Result<()> {
        self.check_writable()?;
        check_bounds(self.len, offset, data.len() as u64)?;
        // SAFETY: bounds checked above; the mapping is writable and lives as
        // long as self; both copies have the same contract.
        unsafe { copy(self.base, offset, data) };
        self.dirty.mark(offset, data.len() as u64);
        Ok(())
    }

    /// Create a sparse pool file of `size` bytes; fails if `path` exists.
    pub fn create_file(path: &Path, size: u64) -> Result<MappedMedia> {
        if path.is_dir() {
            return Err(PoolError::WrongFileType { path: path.to_path_buf(), what: "directory" });
        }
        let file = match OpenOptions::new().read(true).write(true).create_new(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(PoolError::PoolExists { path: path.to_path_buf() })
            }
            Err(source) => return Err(PoolError::Open { path: path.to_path_buf(), source }),
        };
        let made = (|| {
            file.set_len(size).map_err(io_err(path, "setting the pool size"))?;
            Self::from_file(path, file, true)
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(path);
        }
        made
    }

    /// Open an existing pool medium.
    pub fn open(path: &Path, writable: bool) -> Result<MappedMedia> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(PoolError::PoolNotFound { path: path.to_path_buf() })
            }
            Err(source) => return Err(PoolError::Open { path: path.to_path_buf(), source }),
        };
        let ft = meta.file_type();
        let what = if ft.is_dir() {
            Some("directory")
        } else if ft.is_fifo() {
            Some("FIFO")
        } else if ft.is_socket() {
            Some("socket")
        } else if ft.is_char_device() && !is_devdax(path) {
            Some("character device that is not device-DAX")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(PoolError::WrongFileType { path: path.to_path_buf(), what });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|source| PoolError::Open { path: path.to_path_buf(), source })?;
        Self::from_file(path, file, writable)
    }

    fn from_file(path: &Path, file: File, writable: bool) -> Result<MappedMedia> {
        let path = path.to_path_buf();
        if !sys::lock_pool(file.as_fd(), writable).map_err(io_err(&path, "locking"))? {
            // F_GETLK reports no holder when the holder is this very process
            // (POSIX locks never conflict with their owner): another open of
            // the same pool here. Anything else unknown gets `Locked`.
            return Err(match sys::lock_holder(file.as_fd(), writable) {
                Ok(Some(pid)) => PoolError::LockedBy { path, pid },
                Ok(None) => PoolError::LockedBy { path, pid: std::process::id() as i32 },
                Err(_) => PoolError::Locked { path },
            });
        }
        let ft = file.metadata().map_err(io_err(&path, "reading file metadata"))?.file_type();
        let (len, mut kind) = if ft.is_block_device() {
            let len = sys::block_device_size(file.as_fd()).map_err(io_err(&path, "sizing"))?;
            (len, MediaKind::BlockDevice)
        } else if ft.is_char_device() {
            (devdax_size(&path)?, MediaKind::DevDax)
        } else {
            let len = file.metadata().map_err(io_err(&path, "reading file metadata"))?.len();
            (len, MediaKind::File)
        };
        if len == 0 {
            return Err(PoolError::NotAPool { path });
        }
        let map_len = usize::try_from(len).map_err(|_| PoolError::Unsupported {
            path: path.clone(),
            feature: "a pool this large",
            why: "it does not fit the address space".into(),
        })?;
        let mut mapping = None;
        if kind == MediaKind::File {
            if let Some(m) = sys::SyncMapping::map(file.as_fd(), map_len, writable)
                .map_err(io_err(&path, "mapping"))?
            {
                kind = MediaKind::DaxFile;
                mapping = Some(Mapping::Sync(m));
            }
        }
        let mapping = match mapping {
            Some(m) => m,
            None => {
                let mut opts = MmapOptions::new();
                opts.len(map_len);
                let raw =
                    if writable { opts.map_raw(&file) } else { opts.map_raw_read_only(&file) };
                Mapping::Mmap(raw.map_err(io_err(&path, "mapping"))?)
            }
        };
        let base = match &mapping {
            Mapping::Mmap(m) => m.as_mut_ptr(),
            Mapping::Sync(m) => {
                debug_assert_eq!(m.len(), map_len);
                m.as_ptr()
            }
        };
        let dirty = DirtyMap::new(len);
        let protected = AtomicBool::new(false);
        Ok(MappedMedia { path, file, mapping, base, len, kind, writable, dirty, protected })
    }

    /// The path this medium was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cache_flushed(&self) -> bool {
        matches!(self.kind, MediaKind::DaxFile | MediaKind::DevDax)
    }

    fn check_writable(&self) -> io::Result<()> {
        if !self.writable {
            Err(io::Error::new(io::ErrorKind::PermissionDenied, "the pool is mapped read-only"))
        } else if self.protected.load(Ordering::Acquire) {
            Err(io::Error::new(io::ErrorKind::PermissionDenied, "the pool is fenced (read-only)"))
        } else {
            Ok(())
        }
    }

    /// Write back `offset..offset+len` (bounds already checked).
    fn write_back(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.cache_flushed() {
            // SAFETY: the caller checked the bounds.
            unsafe { sys::write_back_lines(self.base, offset, len) };
            return Ok(());
        }
        match &self.mapping {
            Mapping::Mmap(m) => m.flush_range(offset as usize, len as usize),
            Mapping::Sync(_) => Ok(()),
        }
    }
}

fn is_devdax(path: &Path) -> bool {
    sysfs_dir(path)
        .map(|d| d.join("dax_region").exists() || d.join("size").exists())
        .unwrap_or(false)
        && path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("dax"))
}

fn sysfs_dir(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(path).ok()?.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    Some(PathBuf::from(format!("/sys/dev/char/{major}:{minor}")))
}

fn devdax_size(path: &Path) -> Result<u64> {
    let unsupported = |why: String| PoolError::Unsupported {
        path: path.to_path_buf(),
        feature: "this character device",
        why,
    };
    let dir = sysfs_dir(path).ok_or_else(|| unsupported("its sysfs entry is missing".into()))?;
    let text = std::fs::read_to_string(dir.join("size"))
        .map_err(|e| unsupported(format!("cannot read its size from sysfs ({e})")))?;
    text.trim().parse().map_err(|_| unsupported(format!("sysfs size {text:?} is not a number")))
}

impl Media for MappedMedia {
    fn len(&self) -> u64 {
        self.len
    }

    fn kind(&self) -> MediaKind {
        self.kind
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_bounds(self.len, offset, buf.len() as u64)?;
        // SAFETY: bounds checked above; the mapping lives as long as self.
        unsafe { sys::copy_out(self.base, offset, buf) };
        Ok(())
    }

    unsafe fn bytes_in_place(&self, offset: u64, len: u64) -> Option<&[u8]> {
        check_bounds(self.len, offset, len).ok()?;
        // SAFETY: bounds checked above; the mapping lives as long as self
        // (which the slice borrows); the caller keeps writers away.
        Some(unsafe { sys::bytes_at(self.base, offset, len) })
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.store(offset, data, sys::copy_in)
    }

    fn write_cold(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.store(offset, data, sys::copy_in_streaming)
    }

    fn flush(&self, offset: u64, len: u64) -> io::Result<()> {
        check_bounds(self.len, offset, len)?;
        if len == 0 || !self.writable {
            return Ok(());
        }
        self.dirty.clear(offset, len);
        self.write_back(offset, len)
    }

    fn flush_ranges(&self, ranges: &[(u64, u64)]) -> io::Result<()> {
        // Cache-line write-back costs per line flushed: range by range.
        // `msync` costs per call and per page of the span it walks, and
        // writes back only dirty pages: many ranges go as one span.
        let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
            return Ok(());
        };
        if self.cache_flushed() || ranges.len() <= SPAN_FLUSH_FROM {
            return ranges.iter().try_for_each(|&(offset, len)| self.flush(offset, len));
        }
        self.flush(first.0, last.0 + last.1 - first.0)
    }

    fn flush_dirty(&self) -> io::Result<u64> {
        if !self.writable {
            return Ok(0);
        }
        let mut bytes = 0;
        for (offset, len) in self.dirty.take() {
            self.write_back(offset, len)?;
            bytes += len;
        }
        Ok(bytes)
    }

    fn protect(&self, read_only: bool) -> io::Result<()> {
        if !self.writable {
            return Ok(());
        }
        if read_only {
            self.protected.store(true, Ordering::Release);
        }
        // SAFETY: `base..base+len` is exactly our live mapping. Writers go
        // through `check_writable`, which refuses from the store above on;
        // the pool's users have drained their writes (the gate) before the
        // fence, so no store is under way when the mapping turns read-only.
        unsafe { sys::protect_mapping(self.base, self.len as usize, !read_only) }?;
        if !read_only {
            self.protected.store(false, Ordering::Release);
        }
        Ok(())
    }

    fn barrier(&self) -> io::Result<()> {
        if self.cache_flushed() {
            sys::store_fence();
        }
        Ok(())
    }

    fn zero(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        check_bounds(self.len, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if self.kind == MediaKind::File || self.kind == MediaKind::DaxFile {
            let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            rustix::fs::fallocate(&self.file, punch, offset, len)?;
            rustix::fs::fallocate(&self.file, FallocateFlags::KEEP_SIZE, offset, len)?;
            return Ok(());
        }
        const CHUNK: usize = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(len as usize)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64);
            self.write(offset + done, &zeros[..n as usize])?;
            done += n;
        }
        self.persist(offset, len)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        check_bounds(self.len, offset, len)?;
        if len > 0 && matches!(self.kind, MediaKind::File | MediaKind::DaxFile) {
            let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            rustix::fs::fallocate(&self.file, punch, offset, len)?;
        }
        Ok(())
    }

    fn reserve(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        check_bounds(self.len, offset, len)?;
        if len > 0 && matches!(self.kind, MediaKind::File | MediaKind::DaxFile) {
            rustix::fs::fallocate(&self.file, FallocateFlags::KEEP_SIZE, offset, len)?;
        }
        Ok(())
    }

    fn populate(&self, offset: u64, len: u64) -> io::Result<()> {
        check_bounds(self.len, offset, len)?;
        if len == 0 || !self.writable {
            return Ok(());
        }
        // SAFETY: the range is inside the live mapping (checked above).
        unsafe { sys::populate_write(self.base, offset, len) };
        Ok(())
    }

    fn copy(&self, from: u64, to: u64, len: u64) -> io::Result<()> {
        self.copy_many(&[(from, to)], len)
    }

    fn copy_many(&self, moves: &[(u64, u64)], len: u64) -> io::Result<()> {
        self.check_writable()?;
        for &(from, to) in moves {
            check_bounds(self.len, from, len)?;
            check_bounds(self.len, to, len)?;
            check_disjoint(from, to, len)?;
        }
        // SAFETY: every range is inside the live, writable mapping, and the
        // two of each pair do not overlap (checked above).
        unsafe { sys::copy_within(self.base, moves, len) };
        for &(_, to) in moves {
            self.dirty.mark(to, len);
        }
        Ok(())
    }

    fn write_ranges_to(&self, ranges: &[(u64, u64)], file: &File, at: u64) -> io::Result<()> {
        for &(offset, len) in ranges {
            check_bounds(self.len, offset, len)?;
        }
        // SAFETY: every range is inside the live mapping (checked above).
        unsafe { sys::write_ranges(file.as_fd(), self.base, ranges, at) }
    }

    fn read_ranges_from(&self, ranges: &[(u64, u64)], file: &File, at: u64) -> io::Result<()> {
        self.check_writable()?;
        for &(offset, len) in ranges {
            check_bounds(self.len, offset, len)?;
        }
        // SAFETY: every range is inside the live, writable mapping (checked
        // above).
        let read = unsafe { sys::read_ranges(file.as_fd(), self.base, ranges, at) };
        for &(offset, len) in ranges {
            self.dirty.mark(offset, len);
        }
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::crash::{CrashMedia, TearGranularity};

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn ranges_go_to_a_file_straight_from_the_mapping_as_through_a_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let len = 1 << 20;
        let mapped = MappedMedia::create_file(&dir.path().join("m"), len).unwrap();
        let buffered = CrashMedia::new(len, TearGranularity::Nvram);
        let data = pattern(len as usize);
        mapped.write(0, &data).unwrap();
        buffered.write(0, &data).unwrap();
        // More ranges than one pwritev takes, of odd lengths, some empty.
        let ranges: Vec<(u64, u64)> =
            (0..1500u64).map(|i| ((i * 613) % (len - 700), (i * 7) % 700)).collect();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let open = |p: &Path| {
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(p).unwrap()
        };
        let (fa, fb) = (open(&a), open(&b));
        mapped.write_ranges_to(&ranges, &fa, 100).unwrap();
        buffered.write_ranges_to(&ranges, &fb, 100).unwrap();
        let (ba, bb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(ba.len() as u64, 100 + ranges.iter().map(|r| r.1).sum::<u64>());
        assert!(ba == bb, "the mapped and buffered writes differ");
        let outside = mapped.write_ranges_to(&[(len - 10, 11)], &fa, 0).unwrap_err();
        assert_eq!(outside.kind(), io::ErrorKind::InvalidInput);

        // Reading the file back into the same ranges of fresh media gives
        // the same bytes, mapped or buffered; past the file's end, zeros.
        let back = MappedMedia::create_file(&dir.path().join("back"), len).unwrap();
        let back_buffered = CrashMedia::new(len, TearGranularity::Nvram);
        let mut disjoint: Vec<(u64, u64)> =
            (0..300u64).map(|i| (i * 3000, (i * 11) % 2900)).collect();
        disjoint.push((len - 8192, 8192));
        back.read_ranges_from(&disjoint, &fa, 100).unwrap();
        back_buffered.read_ranges_from(&disjoint, &fb, 100).unwrap();
        let (mut x, mut y) = (vec![0u8; len as usize], vec![0u8; len as usize]);
        back.read(0, &mut x).unwrap();
        back_buffered.read(0, &mut y).unwrap();
        assert!(x == y, "the mapped and buffered reads differ");
        back.write(len - 8192, &[7; 8192]).unwrap();
        let total = ba.len() as u64;
        back.read_ranges_from(&[(len - 8192, 8192)], &fa, total - 100).unwrap();
        let mut tail = vec![1u8; 8192];
        back.read(len - 8192, &mut tail).unwrap();
        assert_eq!(tail[..100], ba[ba.len() - 100..]);
        assert!(tail[100..].iter().all(|&b| b == 0), "past the end of the file reads zeros");
    }

    #[test]
    fn flush_dirty_writes_back_only_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let mapped = MappedMedia::create_file(&dir.path().join("m"), 16 << 20).unwrap();
        assert_eq!(mapped.flush_dirty().unwrap(), 0);
        mapped.write(5 << 20, &[1; 100]).unwrap();
        mapped.copy(5 << 20, 9 << 20, 100).unwrap();
        assert_eq!(mapped.flush_dirty().unwrap(), 2 * mapped.dirty.chunk_size());
        mapped.write(0, &[1; 100]).unwrap();
        mapped.persist(0, 65536).unwrap();
        assert_eq!(mapped.flush_dirty().unwrap(), 0, "a persist already covered it");
    }

    #[test]
    fn a_protected_medium_refuses_writes_until_unprotected() {
        let dir = tempfile::tempdir().unwrap();
        let mapped = MappedMedia::create_file(&dir.path().join("m"), 1 << 20).unwrap();
        mapped.write(0, &[7; 16]).unwrap();
        mapped.protect(true).unwrap();
        let refused = mapped.write(0, &[8; 16]).unwrap_err();
        assert_eq!(refused.to_string(), "the pool is fenced (read-only)");
        assert!(mapped.copy(0, 4096, 16).is_err());
        assert!(mapped.zero(0, 4096).is_err());
        let mut back = [0u8; 16];
        mapped.read(0, &mut back).unwrap();
        assert_eq!(back, [7; 16], "reads still work and nothing changed");
        mapped.protect(false).unwrap();
        mapped.write(0, &[8; 16]).unwrap();
        mapped.read(0, &mut back).unwrap();
        assert_eq!(back, [8; 16]);
    }

    #[test]
    fn copies_inside_the_mapping_refuse_overlaps() {
        let dir = tempfile::tempdir().unwrap();
        let mapped = MappedMedia::create_file(&dir.path().join("m"), 65536).unwrap();
        let data = pattern(8192);
        mapped.write(0, &data).unwrap();
        mapped.copy(0, 16384, 8192).unwrap();
        let mut back = vec![0u8; 8192];
        mapped.read(16384, &mut back).unwrap();
        assert_eq!(back, data);
        let overlap = mapped.copy(0, 4096, 8192).unwrap_err();
        assert!(overlap.to_string().contains("overlap"), "{overlap}");
        assert!(mapped.copy(65536 - 100, 0, 200).is_err());
    }

    #[test]
    fn many_copies_land_like_one_at_a_time_and_are_refused_before_any_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let mapped = MappedMedia::create_file(&dir.path().join("m"), 1 << 20).unwrap();
        let window =
            crate::pool::MediaWindow::new(std::sync::Arc::new(mapped), 65536, 512 << 10).unwrap();
        let data = pattern(4 * 4096);
        window.write(0, &data).unwrap();
        // Blocks 0..4 to scattered places, in reverse order.
        let moves = [(0, 40960), (4096, 20480), (8192, 61440), (12288, 32768)];
        window.copy_many(&moves, 4096).unwrap();
        for (i, &(_, to)) in moves.iter().enumerate() {
            let mut back = vec![0u8; 4096];
            window.read(to, &mut back).unwrap();
            assert_eq!(back, data[i * 4096..(i + 1) * 4096], "block {i}");
        }
        // One bad pair (past the window's end, or overlapping) and nothing
        // is copied.
        for bad in [(0, 512 << 10), (4096, 6144)] {
            window.write(100_000, &[0u8; 4096]).unwrap();
            assert!(window.copy_many(&[(0, 100_000), bad], 4096).is_err(), "{bad:?}");
            let mut back = vec![1u8; 4096];
            window.read(100_000, &mut back).unwrap();
            assert!(back.iter().all(|&b| b == 0), "{bad:?}: a copy was made");
        }
    }
}
