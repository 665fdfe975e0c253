//! Logical addresses: persistent references into RVM's address space.
//!
//! A [`PageRef`] names a byte as (logical page, offset). It stays valid
//! across commits, crashes and restarts, because logical pages never move:
//! shadowing changes the physical page behind a logical page, not the logical
//! page itself. Users store `PageRef`s inside their data (as the 8 bytes of
//! [`PageRef::to_raw`]) instead of pointers, so recovery needs no fixed
//! virtual addresses. A [`PageRange`] is a run of logical pages, as handed
//! out by [`Transaction::alloc_pages`](crate::Transaction::alloc_pages).

use crate::error::RvmError;
use crate::geometry::Geometry;
use crate::PAGE_SIZE;

const OFFSET_BITS: u32 = PAGE_SIZE.trailing_zeros();

/// A persistent reference: a byte at `offset` within logical page `page`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageRef {
    page: u64,
    offset: u16,
}

impl PageRef {
    /// The byte `offset` bytes into logical page `page`; offsets of a page or
    /// more move on to the following pages.
    pub fn new(page: u64, offset: usize) -> PageRef {
        let page = page.saturating_add((offset / PAGE_SIZE) as u64);
        PageRef { page, offset: (offset % PAGE_SIZE) as u16 }
    }

    /// The first byte of logical page `page`.
    pub fn page_start(page: u64) -> PageRef {
        PageRef { page, offset: 0 }
    }

    /// The logical page.
    pub fn page(self) -> u64 {
        self.page
    }

    /// The offset within the page, below [`PAGE_SIZE`].
    pub fn offset(self) -> usize {
        usize::from(self.offset)
    }

    /// The reference `bytes` further on, if it is representable.
    pub fn advance(self, bytes: u64) -> Option<PageRef> {
        let absolute = self.page.checked_mul(PAGE_SIZE as u64)?.checked_add(self.offset as u64)?;
        let absolute = absolute.checked_add(bytes)?;
        Some(PageRef {
            page: absolute / PAGE_SIZE as u64,
            offset: (absolute % PAGE_SIZE as u64) as u16,
        })
    }

    /// Packs the reference into 8 bytes' worth (page in the high 52 bits).
    /// Pages of RVM's address space (below 2^32) always fit.
    pub fn to_raw(self) -> u64 {
        (self.page << OFFSET_BITS) | u64::from(self.offset)
    }

    /// Unpacks [`PageRef::to_raw`]. Any value gives some reference; whether it
    /// is allocated is checked when it is used.
    pub fn from_raw(raw: u64) -> PageRef {
        PageRef { page: raw >> OFFSET_BITS, offset: (raw & (PAGE_SIZE as u64 - 1)) as u16 }
    }
}

/// `count` logical pages from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageRange {
    /// First logical page.
    pub start: u64,
    /// Number of pages.
    pub count: u64,
}

impl PageRange {
    /// One past the last page.
    pub fn end(&self) -> u64 {
        self.start + self.count
    }

    /// A reference to the first byte of the range.
    pub fn first_byte(&self) -> PageRef {
        PageRef::page_start(self.start)
    }

    /// The pages of the range.
    pub fn pages(&self) -> std::ops::Range<u64> {
        self.start..self.end()
    }
}

/// The logical pages an access of `len` (> 0) bytes at `at` touches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub first: u64,
    pub last: u64,
    start: u64,
    end: u64,
}

impl Span {
    pub fn new(at: PageRef, len: usize, geometry: &Geometry) -> Result<Span, RvmError> {
        let logical_pages = geometry.logical_pages();
        let out_of_range = |page: u64| RvmError::OutOfRange { page, logical_pages };
        let start = at
            .page
            .checked_mul(PAGE_SIZE as u64)
            .and_then(|b| b.checked_add(u64::from(at.offset)))
            .ok_or(out_of_range(at.page))?;
        let end = start.checked_add(len as u64).ok_or(out_of_range(at.page))?;
        let (first, last) = (start / PAGE_SIZE as u64, (end - 1) / PAGE_SIZE as u64);
        if last >= logical_pages {
            return Err(out_of_range(first.max(logical_pages)));
        }
        Ok(Span { first, last, start, end })
    }

    /// Byte offset within `page` and length of the part of the access on it.
    pub fn part(&self, page: u64) -> (usize, usize) {
        let page_start = page * PAGE_SIZE as u64;
        let from = self.start.max(page_start) - page_start;
        let to = self.end.min(page_start + PAGE_SIZE as u64) - page_start;
        (from as usize, (to - from) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_pack_into_eight_bytes_and_back() {
        let r = PageRef::new(123_456, 4095);
        assert_eq!(PageRef::from_raw(r.to_raw()), r);
        assert_eq!(r.to_raw(), 123_456 * 4096 + 4095);
        assert_eq!(PageRef::new(1, 5000), PageRef::new(2, 904));
        assert_eq!(r.advance(1), Some(PageRef::page_start(123_457)));
        assert_eq!(PageRef::page_start(u64::MAX).advance(1), None);
    }

    #[test]
    fn spans_split_an_access_into_page_parts() {
        let geometry = Geometry::new(1024, 1024).unwrap();
        let span = Span::new(PageRef::new(10, 4000), 5000, &geometry).unwrap();
        assert_eq!((span.first, span.last), (10, 12));
        assert_eq!(span.part(10), (4000, 96));
        assert_eq!(span.part(11), (0, 4096));
        assert_eq!(span.part(12), (0, 808));
        let err = Span::new(PageRef::new(1023, 1), 4096, &geometry).unwrap_err();
        assert_eq!(err.to_string(), "logical page 1024 lies outside the 1024-page address space");
    }
}
