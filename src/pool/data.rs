//! Region data access: region-relative reads, writes and persists,
//! translated through the region's extents to the medium.
//!
//! This is the simple path for small users (tests, tools, RVM's store);
//! transports that need speed map extents once and call the medium directly.

use super::{Extent, Pool, PoolError, Result, PAGE_SIZE};

/// Where each run of a region's pages lies on the medium: a snapshot of the
/// region's extents for users that address region pages directly (block
/// regions, RVM's store). Valid until the region is resized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionLayout {
    /// (first region page, first medium byte, pages), by region page.
    runs: Vec<(u64, u64, u64)>,
    pages: u64,
}

impl RegionLayout {
    /// The layout of a region with these extents (in region order).
    pub fn new(extents: &[Extent]) -> RegionLayout {
        let mut at = 0;
        let runs = extents
            .iter()
            .map(|e| {
                let run = (at, e.start * PAGE_SIZE, e.count);
                at += e.count;
                run
            })
            .collect();
        RegionLayout { runs, pages: at }
    }

    /// Pages in the region.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Medium byte offset of region page `page` (which must be < `pages()`).
    pub fn offset(&self, page: u64) -> u64 {
        let i = self.runs.partition_point(|r| r.0 <= page) - 1;
        let (first, base, _) = self.runs[i];
        base + (page - first) * PAGE_SIZE
    }

    /// The medium ranges (offset, length) of region bytes
    /// `offset..offset+len`, which must lie inside the region.
    pub fn ranges(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let end = offset + len;
        let start_run = self.runs.partition_point(|r| r.0 * PAGE_SIZE <= offset).max(1) - 1;
        self.runs[start_run..].iter().map_while(move |&(first, base, count)| {
            let run_start = first * PAGE_SIZE;
            let run_end = run_start + count * PAGE_SIZE;
            let a = offset.max(run_start);
            let b = end.min(run_end);
            (a < b).then(|| (base + a - run_start, b - a))
        })
    }
}

impl Pool {
    /// Map a region-relative byte range to medium ranges.
    fn locate(&self, name: &str, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        let st = self.lock();
        let entry = st
            .catalog
            .by_name(name)
            .ok_or_else(|| PoolError::RegionNotFound { name: name.to_string() })?;
        let size = entry.pages() * PAGE_SIZE;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(PoolError::OutOfRange { name: name.to_string(), offset, len, size });
        }
        let mut out = Vec::new();
        let (mut pos, mut left) = (offset, len);
        let mut ext_base = 0;
        for e in &entry.extents {
            let ext_len = e.count * PAGE_SIZE;
            if left > 0 && pos < ext_base + ext_len {
                let within = pos - ext_base;
                let n = (ext_len - within).min(left);
                out.push((e.start * PAGE_SIZE + within, n));
                pos += n;
                left -= n;
            }
            ext_base += ext_len;
        }
        Ok(out)
    }

    fn data_io(&self, operation: &'static str) -> impl FnOnce(std::io::Error) -> PoolError + '_ {
        move |source| PoolError::Io { path: self.path.clone(), operation, source }
    }

    /// Read region bytes at a region-relative offset.
    pub fn read_region(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        for (at, n) in self.locate(name, offset, buf.len() as u64)? {
            let n = n as usize;
            self.media
                .read(at, &mut buf[done..done + n])
                .map_err(self.data_io("reading region data"))?;
            done += n;
        }
        Ok(())
    }

    /// Write region bytes at a region-relative offset (durable after
    /// [`persist_region`](Pool::persist_region)).
    pub fn write_region(&self, name: &str, offset: u64, data: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(PoolError::ReadOnly { path: self.path.clone() });
        }
        let mut done = 0usize;
        for (at, n) in self.locate(name, offset, data.len() as u64)? {
            let n = n as usize;
            self.media
                .write(at, &data[done..done + n])
                .map_err(self.data_io("writing region data"))?;
            done += n;
        }
        Ok(())
    }

    /// Make written region bytes durable.
    pub fn persist_region(&self, name: &str, offset: u64, len: u64) -> Result<()> {
        for (at, n) in self.locate(name, offset, len)? {
            self.media.flush(at, n).map_err(self.data_io("flushing region data"))?;
        }
        self.media.barrier().map_err(self.data_io("flushing region data"))
    }
}
