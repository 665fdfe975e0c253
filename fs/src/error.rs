//! The RVM error type: one variant per step that can fail.
//!
//! Store failures carry the [`StoreError`] as their source; corrupt media is
//! reported as [`RvmError::Corrupt`] with the first [`Problem`] found, never
//! as a panic.

use crate::check::Problem;
use crate::commit_record::RecordError;
use crate::store::{CommitSlot, StoreError};

/// Why an RVM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RvmError {
    /// Reading a commit slot failed.
    #[error("cannot read commit slot {slot}")]
    ReadCommitSlot {
        /// The slot.
        slot: CommitSlot,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Neither slot holds a valid commit record: the store was never
    /// formatted, or its format was interrupted.
    #[error("neither commit slot holds a valid commit record (A: {slot_a}; B: {slot_b})")]
    NoCommitRecord {
        /// Why slot A is invalid.
        slot_a: RecordError,
        /// Why slot B is invalid.
        slot_b: RecordError,
    },
    /// The commit record was written for a store of another size.
    #[error("the commit record describes {record} pages but the store has {store}")]
    GeometryMismatch {
        /// Pages in the record.
        record: u64,
        /// Pages in the store.
        store: u64,
    },
    /// The commit record's table height does not fit its address space.
    #[error(
        "the commit record has a {levels}-level page table; its address space needs {expected}"
    )]
    TableLevelsMismatch {
        /// Levels in the record.
        levels: u8,
        /// Levels the logical page count implies.
        expected: u8,
    },
    /// The store is too small to hold RVM's metadata and one page.
    #[error("the store has {pages} pages; RVM needs at least {needed}")]
    StoreTooSmall {
        /// Pages in the store.
        pages: u64,
        /// Pages needed.
        needed: u64,
    },
    /// The logical address space is larger than RVM supports.
    #[error("a logical address space of {pages} pages is larger than the maximum of {max}")]
    LogicalSpaceTooLarge {
        /// Requested pages.
        pages: u64,
        /// The maximum.
        max: u64,
    },
    /// The logical address space cannot hold RVM's system pages and one page.
    #[error("a logical address space of {pages} pages is too small; it needs at least {needed}")]
    LogicalSpaceTooSmall {
        /// Requested pages.
        pages: u64,
        /// Pages needed.
        needed: u64,
    },
    /// Clearing a commit slot while formatting failed.
    #[error("cannot clear commit slot {slot} while formatting")]
    ClearCommitSlot {
        /// The slot.
        slot: CommitSlot,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Reading a page-table node failed.
    #[error("cannot read page-table node at physical page {page}")]
    ReadTable {
        /// Physical page.
        page: u64,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Reading an allocation map page failed.
    #[error("cannot read allocation map page at physical page {page}")]
    ReadMap {
        /// Physical page.
        page: u64,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The committed structures are inconsistent.
    #[error("the committed state is corrupt ({count} problems found; the first follows)")]
    Corrupt {
        /// Number of problems found.
        count: usize,
        /// The first problem.
        #[source]
        first: Problem,
    },
    /// Reading a data page failed.
    #[error("cannot read logical page {page}")]
    ReadPage {
        /// Logical page.
        page: u64,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Copying a page to its shadow failed.
    #[error("cannot copy logical page {page} to its shadow page")]
    CopyShadow {
        /// Logical page.
        page: u64,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Writing a shadow page failed.
    #[error("cannot write logical page {page}")]
    WriteShadow {
        /// Logical page.
        page: u64,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Writing a page-table node failed.
    #[error("cannot write page-table node at physical page {page}")]
    WriteTable {
        /// Physical page.
        page: u64,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Writing an allocation map page failed.
    #[error("cannot write allocation map page at physical page {page}")]
    WriteMap {
        /// Physical page.
        page: u64,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Persisting a commit's pages failed.
    #[error("cannot persist the pages of commit {sequence}")]
    Persist {
        /// Sequence number of the commit.
        sequence: u64,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Switching the commit record failed.
    #[error("cannot switch commit slot {slot} to commit {sequence}")]
    SwitchCommit {
        /// The slot being written.
        slot: CommitSlot,
        /// Sequence number of the commit.
        sequence: u64,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The access goes past the end of the logical address space.
    #[error("logical page {page} lies outside the {logical_pages}-page address space")]
    OutOfRange {
        /// First logical page outside the space.
        page: u64,
        /// Size of the space.
        logical_pages: u64,
    },
    /// The access touches a logical page that is not allocated.
    #[error("logical page {page} is not allocated")]
    Unallocated {
        /// The page.
        page: u64,
    },
    /// The access touches a page RVM reserves for its allocation maps.
    #[error("logical page {page} is reserved for RVM's allocation maps")]
    Reserved {
        /// The page.
        page: u64,
    },
    /// An allocation of zero pages was asked for.
    #[error("cannot allocate zero pages")]
    EmptyAllocation,
    /// No run of free logical pages is long enough.
    #[error("no run of {requested} free logical pages ({free} pages are free in all)")]
    NoLogicalSpace {
        /// Pages asked for.
        requested: u64,
        /// Free logical pages.
        free: u64,
    },
    /// Not enough free physical pages.
    #[error("{requested} physical pages are needed but only {free} are free")]
    NoPhysicalSpace {
        /// Pages needed.
        requested: u64,
        /// Pages free beyond the commit reserve.
        free: u64,
    },
    /// The user root given is longer than the slot.
    #[error("a root of {len} bytes does not fit the {max}-byte root slot")]
    RootTooLarge {
        /// Length given.
        len: usize,
        /// Slot size.
        max: usize,
    },
    /// An earlier write in this transaction failed half way; it must be aborted.
    #[error("an earlier write in this transaction failed; abort it")]
    TransactionBroken,
    /// An earlier commit failed; the instance refuses further work.
    #[error("an earlier commit failed; reopen the store to recover the last committed state")]
    Poisoned,
}
