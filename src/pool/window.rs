//! `MediaWindow`: a byte range of another medium, seen as a medium of its
//! own. Crash tests put a pool and its swap tier in windows of one
//! `CrashMedia`, so a single persist counter orders both.

use std::fs::File;
use std::io;
use std::sync::Arc;

use super::media::{check_bounds, Media, MediaKind};

/// Bytes `base..base+len` of `inner`.
#[derive(Debug, Clone)]
pub struct MediaWindow {
    inner: Arc<dyn Media>,
    base: u64,
    len: u64,
}

impl MediaWindow {
    /// The window `base..base+len` of `inner`.
    pub fn new(inner: Arc<dyn Media>, base: u64, len: u64) -> io::Result<MediaWindow> {
        check_bounds(inner.len(), base, len)?;
        Ok(MediaWindow { inner, base, len })
    }
}

impl MediaWindow {
    /// `ranges` of this window as ranges of the inner medium.
    fn inner_ranges(&self, ranges: &[(u64, u64)]) -> io::Result<Vec<(u64, u64)>> {
        ranges
            .iter()
            .map(|&(offset, len)| {
                check_bounds(self.len, offset, len).map(|()| (self.base + offset, len))
            })
            .collect()
    }
}

impl Media for MediaWindow {
    fn len(&self) -> u64 {
        self.len
    }

    fn kind(&self) -> MediaKind {
        self.inner.kind()
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_bounds(self.len, offset, buf.len() as u64)?;
        self.inner.read(self.base + offset, buf)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        check_bounds(self.len, offset, data.len() as u64)?;
        self.inner.write(self.base + offset, data)
    }

    fn write_cold(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        check_bounds(self.len, offset, data.len() as u64)?;
        self.inner.write_cold(self.base + offset, data)
    }

    fn flush(&self, offset: u64, len: u64) -> io::Result<()> {
        check_bounds(self.len, offset, len)?;
        self.inner.flush(self.base + offset, len)
    }

    fn barrier(&self) -> io::Result<()> {
        self.inner.barrier()
    }

    /// The inner medium tracks what was written; a window flushes all of
    /// its own range (windows are for tests).
    fn flush_dirty(&self) -> io::Result<u64> {
        self.inner.flush(self.base, self.len)?;
        Ok(self.len)
    }

    fn protect(&self, read_only: bool) -> io::Result<()> {
        self.inner.protect(read_only)
    }

    fn zero(&self, offset: u64, len: u64) -> io::Result<()> {
        check_bounds(self.len, offset, len)?;
        self.inner.zero(self.base + offset, len)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        check_bounds(self.len, offset, len)?;
        self.inner.discard(self.base + offset, len)
    }

    fn reserve(&self, offset: u64, len: u64) -> io::Result<()> {
        check_bounds(self.len, offset, len)?;
        self.inner.reserve(self.base + offset, len)
    }

    fn populate(&self, offset: u64, len: u64) -> io::Result<()> {
        check_bounds(self.len, offset, len)?;
        self.inner.populate(self.base + offset, len)
    }

    fn copy(&self, from: u64, to: u64, len: u64) -> io::Result<()> {
        check_bounds(self.len, from, len)?;
        check_bounds(self.len, to, len)?;
        self.inner.copy(self.base + from, self.base + to, len)
    }

    fn copy_many(&self, moves: &[(u64, u64)], len: u64) -> io::Result<()> {
        let inner: Vec<(u64, u64)> = moves
            .iter()
            .map(|&(from, to)| {
                check_bounds(self.len, from, len)?;
                check_bounds(self.len, to, len)?;
                Ok((self.base + from, self.base + to))
            })
            .collect::<io::Result<_>>()?;
        self.inner.copy_many(&inner, len)
    }

    fn write_ranges_to(&self, ranges: &[(u64, u64)], file: &File, at: u64) -> io::Result<()> {
        self.inner.write_ranges_to(&self.inner_ranges(ranges)?, file, at)
    }

    fn read_ranges_from(&self, ranges: &[(u64, u64)], file: &File, at: u64) -> io::Result<()> {
        self.inner.read_ranges_from(&self.inner_ranges(ranges)?, file, at)
    }
}
