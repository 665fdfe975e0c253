//! Consistency checking: what a walk of the committed structures found.
//!
//! A walk (see `recovery`) follows the commit record to the page table and
//! the allocation maps and records every [`Problem`]: checksum failures,
//! pages outside the store, pages owned twice, pages in use but marked free,
//! pages marked allocated that nothing uses (leaks), mapped logical pages that
//! are not allocated. [`Rvm::check`](crate::Rvm::check) adds the in-memory
//! allocator to the comparison. A clean report means no page is leaked or
//! doubly owned.

use std::fmt;

use crate::allocation_map::MapTailError;
use crate::page_table::EntryError;
use crate::store::CommitSlot;

/// Problems kept in a report; further ones are only counted.
const MAX_PROBLEMS: usize = 64;

/// One inconsistency in the committed state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A table entry names a page past the end of the store.
    #[error("physical page {page} is referenced but lies outside the store")]
    OutsideStore {
        /// The page.
        page: u64,
    },
    /// Two table entries name the same physical page.
    #[error("physical page {page} is referenced twice")]
    DoublyOwned {
        /// The page.
        page: u64,
    },
    /// A table node's bytes do not match the checksum its parent holds.
    #[error("page-table node at physical page {page} fails its checksum")]
    TableChecksum {
        /// The page.
        page: u64,
    },
    /// A table node has malformed entries.
    #[error("page-table node at physical page {page} is malformed")]
    BadTableNode {
        /// The page.
        page: u64,
        /// What is wrong.
        #[source]
        source: EntryError,
    },
    /// An entry for a table node or map page has no checksum.
    #[error("the entry for physical page {page} lacks the checksum its kind requires")]
    UncheckedEntry {
        /// The page.
        page: u64,
    },
    /// A logical page past the end of the address space is mapped.
    #[error("logical page {logical} is mapped but lies outside the address space")]
    MappedOutsideSpace {
        /// The logical page.
        logical: u64,
    },
    /// A map page is not mapped by the table.
    #[error("the allocation map page at logical page {logical} is missing")]
    MapMissing {
        /// Its logical page.
        logical: u64,
    },
    /// A map page's bytes do not match its checksum.
    #[error("the allocation map page at physical page {page} fails its checksum")]
    MapChecksum {
        /// The page.
        page: u64,
    },
    /// A map page has bits set past the end of its map.
    #[error("the allocation map page at physical page {page} is malformed")]
    BadMapPage {
        /// The page.
        page: u64,
        /// What is wrong.
        #[source]
        source: MapTailError,
    },
    /// A page in use is marked free: it would be handed out twice.
    #[error("physical page {page} is in use but the allocation map says it is free")]
    OwnedButFree {
        /// The page.
        page: u64,
    },
    /// A page marked allocated is used by nothing.
    #[error("physical page {page} is allocated but nothing uses it (leaked)")]
    Leaked {
        /// The page.
        page: u64,
    },
    /// A mapped logical page is not allocated in the logical map.
    #[error("logical page {logical} is mapped but not allocated")]
    MappedButUnallocated {
        /// The logical page.
        logical: u64,
    },
    /// A system page is not marked allocated in the logical map.
    #[error("system page {logical} is not marked allocated")]
    SystemPageFree {
        /// The logical page.
        logical: u64,
    },
    /// The running allocator holds a page the committed state does not use.
    #[error("the allocator holds physical page {page} but the committed state does not use it")]
    AllocatorLeak {
        /// The page.
        page: u64,
    },
    /// The running allocator would hand out a page the committed state uses.
    #[error("the allocator would hand out physical page {page}, which the committed state uses")]
    AllocatorWouldReuse {
        /// The page.
        page: u64,
    },
}

impl Problem {
    /// Whether the problem only wastes space (a leak) rather than risking data.
    pub fn is_leak(&self) -> bool {
        matches!(self, Problem::Leaked { .. } | Problem::AllocatorLeak { .. })
    }
}

/// What a walk of the committed state found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Sequence number of the commit record walked.
    pub sequence: u64,
    /// Slot it came from.
    pub slot: Option<CommitSlot>,
    /// Page-table nodes reached.
    pub table_nodes: u64,
    /// Mapped user data pages.
    pub data_pages: u64,
    /// Allocation map pages.
    pub map_pages: u64,
    /// Physical pages marked allocated.
    pub allocated_pages: u64,
    /// Problems found, at most 64.
    pub problems: Vec<Problem>,
    /// Problems found beyond those kept.
    pub omitted: usize,
}

impl CheckReport {
    /// True when no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// Number of problems found.
    pub fn problem_count(&self) -> usize {
        self.problems.len() + self.omitted
    }

    pub(crate) fn push(&mut self, problem: Problem) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(problem);
        } else {
            self.omitted += 1;
        }
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = self.slot.map_or_else(|| "-".to_string(), |s| s.to_string());
        write!(
            f,
            "commit {} (slot {slot}): {} table nodes, {} data pages, {} map pages, \
             {} pages allocated; ",
            self.sequence, self.table_nodes, self.data_pages, self.map_pages, self.allocated_pages
        )?;
        if self.is_clean() {
            return f.write_str("no problems");
        }
        write!(f, "{} problems:", self.problem_count())?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        if self.omitted > 0 {
            write!(f, "\n  - and {} more", self.omitted)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_list_problems_and_count_the_rest() {
        let mut report =
            CheckReport { sequence: 9, slot: Some(CommitSlot::B), ..Default::default() };
        assert_eq!(
            report.to_string(),
            "commit 9 (slot B): 0 table nodes, 0 data pages, 0 map pages, 0 pages allocated; \
             no problems"
        );
        for page in 0..70 {
            report.push(Problem::Leaked { page });
        }
        assert_eq!(report.problem_count(), 70);
        assert!(report.to_string().contains("physical page 3 is allocated but nothing uses it"));
        assert!(report.to_string().ends_with("and 6 more"));
        assert!(report.problems.iter().all(Problem::is_leak));
    }
}
