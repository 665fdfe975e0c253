//! Region data access: region-relative reads, writes and persists,
//! translated through the region's extents to the medium.
//!
//! This is the simple path for small users (tests, tools, RVM's store);
//! transports that need speed map extents once and call the medium directly.

use super::{Pool, PoolError, Result, PAGE_SIZE};

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
