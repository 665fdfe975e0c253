//! Geometry: how an RVM instance divides its store and its address space.
//!
//! Physical pages are the store's pages, `0..physical_pages`. Logical pages
//! are what users address, `0..logical_pages`; the page table maps each
//! written logical page to a physical page. The first logical pages are
//! *system pages* that RVM reserves for its own allocation maps, so those maps
//! are shadowed and committed exactly like user data:
//!
//! ```text
//! logical pages: | physical map pages | logical map pages | user pages ...          |
//!                0                    P                   P+Q                        L
//!   P = ceil(physical_pages / 32768), Q = ceil(logical_pages / 32768)
//! ```
//!
//! Everything here is derived from the two page counts, which the commit
//! record carries; nothing else about the layout is stored.

use crate::allocation_map::BITS_PER_MAP_PAGE;
use crate::error::RvmError;
use crate::page_table::ENTRIES_PER_NODE;

/// Largest logical address space RVM accepts (2^32 pages = 16 TiB).
pub const MAX_LOGICAL_PAGES: u64 = 1 << 32;

/// Most levels a page table may have (256^4 = 2^32 entries).
pub const MAX_TABLE_LEVELS: u8 = 4;

/// The sizes of an RVM instance's physical store and logical address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    physical_pages: u64,
    logical_pages: u64,
    table_levels: u8,
}

impl Geometry {
    /// Checks and derives the geometry for a store of `physical_pages` pages and
    /// an address space of `logical_pages` pages.
    pub(crate) fn new(physical_pages: u64, logical_pages: u64) -> Result<Geometry, RvmError> {
        if logical_pages > MAX_LOGICAL_PAGES {
            return Err(RvmError::LogicalSpaceTooLarge {
                pages: logical_pages,
                max: MAX_LOGICAL_PAGES,
            });
        }
        let table_levels = levels_for(logical_pages);
        let geometry = Geometry { physical_pages, logical_pages, table_levels };
        let needed = geometry.system_pages() + 1;
        if logical_pages < needed {
            return Err(RvmError::LogicalSpaceTooSmall { pages: logical_pages, needed });
        }
        let needed = 2 * geometry.commit_reserve() + 2;
        if physical_pages < needed {
            return Err(RvmError::StoreTooSmall { pages: physical_pages, needed });
        }
        Ok(geometry)
    }

    /// Store pages managed by RVM.
    pub fn physical_pages(&self) -> u64 {
        self.physical_pages
    }

    /// Size of the logical address space in pages.
    pub fn logical_pages(&self) -> u64 {
        self.logical_pages
    }

    /// Height of the page table.
    pub fn table_levels(&self) -> u8 {
        self.table_levels
    }

    /// Pages of the physical allocation map.
    pub fn physical_map_pages(&self) -> u64 {
        self.physical_pages.div_ceil(BITS_PER_MAP_PAGE)
    }

    /// Pages of the logical allocation map.
    pub fn logical_map_pages(&self) -> u64 {
        self.logical_pages.div_ceil(BITS_PER_MAP_PAGE)
    }

    /// Logical pages reserved for RVM's maps; user pages start here.
    pub fn system_pages(&self) -> u64 {
        self.physical_map_pages() + self.logical_map_pages()
    }

    /// Logical page holding page `index` of the physical map.
    pub(crate) fn physical_map_page(&self, index: u64) -> u64 {
        index
    }

    /// Logical page holding page `index` of the logical map.
    pub(crate) fn logical_map_page(&self, index: u64) -> u64 {
        self.physical_map_pages() + index
    }

    /// Physical pages a close may need beyond those its transaction
    /// allocated: a new copy of every map page and of every table node on the
    /// paths to them. Transactions leave this many pages free.
    pub(crate) fn commit_reserve(&self) -> u64 {
        self.system_pages() + table_nodes_covering(0, self.system_pages(), self.table_levels)
    }
}

/// Levels needed for `logical_pages` entries: at least one.
pub(crate) fn levels_for(logical_pages: u64) -> u8 {
    let mut levels = 1u8;
    let mut covered = ENTRIES_PER_NODE as u64;
    while covered < logical_pages {
        levels += 1;
        covered = covered.saturating_mul(ENTRIES_PER_NODE as u64);
    }
    levels
}

/// Upper bound on the table nodes on the paths to logical pages `first..end`.
pub(crate) fn table_nodes_covering(first: u64, end: u64, levels: u8) -> u64 {
    if end <= first {
        return 0;
    }
    let last = end - 1;
    (1..=u32::from(levels))
        .map(|level| {
            let shift = 8 * level;
            let span = |page: u64| page.checked_shr(shift).unwrap_or(0);
            span(last) - span(first) + 1
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_grow_by_one_per_factor_of_256() {
        assert_eq!(levels_for(1), 1);
        assert_eq!(levels_for(256), 1);
        assert_eq!(levels_for(257), 2);
        assert_eq!(levels_for(65536), 2);
        assert_eq!(levels_for(65537), 3);
        assert_eq!(levels_for(MAX_LOGICAL_PAGES), 4);
    }

    #[test]
    fn system_pages_hold_both_maps() {
        let g = Geometry::new(100_000, 70_000).unwrap();
        assert_eq!((g.physical_map_pages(), g.logical_map_pages()), (4, 3));
        assert_eq!(g.system_pages(), 7);
        assert_eq!(g.logical_map_page(0), 4);
        assert_eq!(g.table_levels(), 3);
    }

    #[test]
    fn tiny_stores_and_huge_spaces_are_refused() {
        assert_eq!(
            Geometry::new(4, 64).unwrap_err().to_string(),
            "the store has 4 pages; RVM needs at least 8"
        );
        assert!(Geometry::new(64, MAX_LOGICAL_PAGES + 1).is_err());
        assert!(Geometry::new(64, 2).is_err());
    }

    #[test]
    fn node_bound_counts_every_level() {
        assert_eq!(table_nodes_covering(0, 1, 1), 1);
        assert_eq!(table_nodes_covering(0, 257, 2), 3);
        assert_eq!(table_nodes_covering(255, 257, 3), 4);
        assert_eq!(table_nodes_covering(5, 5, 2), 0);
    }
}
