//! The `Media` trait: the one door through which the pool reads, writes and
//! makes bytes durable.
//!
//! All durability goes through [`Media::flush`] and [`Media::barrier`] (and
//! [`Media::persist`], which is the two together). Nothing the pool writes is
//! assumed durable until a barrier after a flush covering it has returned.
//! That rule is what lets [`crate::pool::crash::CrashMedia`] stop a workload
//! at any persist point and show what a real crash could leave behind.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// What kind of medium stands behind a pool, and so how `persist` works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// A regular file mapped shared; durability by `msync`.
    File,
    /// A file on a DAX filesystem mapped with `MAP_SYNC`; durability by
    /// cache-line write-back and a store fence.
    DaxFile,
    /// A block device (`/dev/pmem0`, a loop device); durability by `msync`.
    BlockDevice,
    /// A device-DAX character device (`/dev/dax0.0`); cache-line write-back.
    DevDax,
    /// Memory only (tests): the crash-simulating media.
    Memory,
}

impl MediaKind {
    /// A short name for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            MediaKind::File => "file",
            MediaKind::DaxFile => "dax-file",
            MediaKind::BlockDevice => "block-device",
            MediaKind::DevDax => "devdax",
            MediaKind::Memory => "memory",
        }
    }
}

impl fmt::Display for MediaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A byte-addressable persistent medium of fixed length.
///
/// Offsets are absolute byte offsets in the medium. Implementations check
/// bounds and return `InvalidInput` for accesses outside `len()`. Callers
/// must not write a range while another thread reads or writes it.
pub trait Media: Send + Sync + fmt::Debug {
    /// Length in bytes.
    fn len(&self) -> u64;

    /// Whether the medium has no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What kind of medium this is.
    fn kind(&self) -> MediaKind;

    /// Copy bytes out of the medium.
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// The bytes of `offset..offset + len` in place, when the medium is
    /// memory this process addresses (a mapping); `None` when it is not,
    /// or the range is out of bounds. For serving reads without a copy.
    ///
    /// # Safety
    /// Nothing may write the range while the returned slice lives (block
    /// regions write their frames only under their lock, and hold it).
    unsafe fn bytes_in_place(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let _ = (offset, len);
        None
    }

    /// Copy bytes into the medium (not yet durable).
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()>;

    /// [`write`](Media::write) data nobody will read soon (a block going
    /// to swap or brought back unasked): a mapped medium writes whole
    /// blocks without pulling them into the cache.
    fn write_cold(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write(offset, data)
    }

    /// Start making a range durable. It is durable once a later
    /// [`barrier`](Media::barrier) has returned.
    fn flush(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Start making each of `ranges` (`(offset, len)`, sorted, disjoint)
    /// durable, as [`flush`](Media::flush) of each would. A medium for
    /// which one flush of the span covering them is cheaper than many (an
    /// `msync` of a file mapping writes back only dirty pages) does that.
    fn flush_ranges(&self, ranges: &[(u64, u64)]) -> io::Result<()> {
        ranges.iter().try_for_each(|&(offset, len)| self.flush(offset, len))
    }

    /// Wait until every flushed range is durable, and order every later
    /// write after them. This is the persist point crash tests stop at.
    fn barrier(&self) -> io::Result<()>;

    /// Make a range durable now: `flush` then `barrier`.
    fn persist(&self, offset: u64, len: u64) -> io::Result<()> {
        self.flush(offset, len)?;
        self.barrier()
    }

    /// Start making every byte written since it was last flushed durable
    /// (durable at the next [`barrier`](Media::barrier)), and say how many
    /// bytes that covered. A medium that tracks what was written flushes
    /// only that; the default flushes everything.
    fn flush_dirty(&self) -> io::Result<u64> {
        self.flush(0, self.len())?;
        Ok(self.len())
    }

    /// Refuse (`true`) or allow again (`false`) every change to the medium:
    /// the power-outage fence. A mapped medium also makes its mapping
    /// read-only, so that no store at all can reach the pool.
    fn protect(&self, read_only: bool) -> io::Result<()> {
        let _ = read_only;
        Err(io::Error::new(io::ErrorKind::Unsupported, "this medium cannot be made read-only"))
    }

    /// Make a range read as zeros, durably, with its storage reserved so
    /// that later writes cannot fail for lack of space (file media punch a
    /// hole and allocate it again; devices write zeros).
    fn zero(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Tell the medium a range is no longer in use: file media give its
    /// storage back. Its contents are unspecified afterwards.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Make sure later writes to a range cannot fail for lack of space,
    /// keeping what it holds (file media allocate its holes; other media
    /// have nothing to do).
    fn reserve(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    /// Map a range in now, ready for writing, so that first touches do not
    /// fault page by page (a hint: media without a mapping ignore it).
    fn populate(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    /// Copy `len` bytes at `from` to `to` inside the medium (the ranges must
    /// not overlap); not yet durable. A mapped medium copies in place.
    fn copy(&self, from: u64, to: u64, len: u64) -> io::Result<()> {
        check_bounds(self.len(), from, len)?;
        check_bounds(self.len(), to, len)?;
        check_disjoint(from, to, len)?;
        let mut buf = vec![0u8; len.min(COPY_CHUNK) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(COPY_CHUNK) as usize;
            self.read(from + done, &mut buf[..n])?;
            self.write(to + done, &buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// [`Media::copy`] for each `(from, to)` of `moves`, in order: a mapped
    /// medium fences its streaming stores once for all of them.
    fn copy_many(&self, moves: &[(u64, u64)], len: u64) -> io::Result<()> {
        moves.iter().try_for_each(|&(from, to)| self.copy(from, to, len))
    }

    /// Write the byte ranges `(offset, len)` of the medium, one after the
    /// other, to `file` at byte `at`. A mapped medium hands the kernel its
    /// own memory (one `pwritev` per 1,024 ranges, no copy through a
    /// buffer).
    fn write_ranges_to(&self, ranges: &[(u64, u64)], file: &File, at: u64) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut at = at;
        for &(offset, len) in ranges {
            check_bounds(self.len(), offset, len)?;
            buf.resize(len as usize, 0);
            self.read(offset, &mut buf)?;
            file.write_all_at(&buf, at)?;
            at += len;
        }
        Ok(())
    }

    /// Fill the byte ranges `(offset, len)` of the medium, one after the
    /// other, from `file` at byte `at` (bytes past the end of the file
    /// read as zeros); not yet durable. A mapped medium lets the kernel
    /// copy straight into its memory (`preadv`).
    fn read_ranges_from(&self, ranges: &[(u64, u64)], file: &File, at: u64) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut at = at;
        for &(offset, len) in ranges {
            check_bounds(self.len(), offset, len)?;
            buf.resize(len as usize, 0);
            let mut done = 0;
            while done < buf.len() {
                match file.read_at(&mut buf[done..], at + done as u64)? {
                    0 => break,
                    n => done += n,
                }
            }
            buf[done..].fill(0);
            self.write(offset, &buf)?;
            at += len;
        }
        Ok(())
    }
}

/// Largest piece [`Media::copy`] moves through a buffer at once.
const COPY_CHUNK: u64 = 1 << 20;

/// Refuse a copy between overlapping ranges.
pub(crate) fn check_disjoint(from: u64, to: u64, len: u64) -> io::Result<()> {
    if from < to.saturating_add(len) && to < from.saturating_add(len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("copy of {len} bytes from {from} to {to}: the ranges overlap"),
        ));
    }
    Ok(())
}

/// Check that `offset..offset+len` lies inside a medium of `media_len` bytes.
pub(crate) fn check_bounds(media_len: u64, offset: u64, len: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= media_len => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range {offset}+{len} is outside the {media_len}-byte medium"),
        )),
    }
}
