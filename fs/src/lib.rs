//! RvmFS: recoverable virtual memory (RVM) transactions over persistent pages,
//! and the POSIX filesystem built on them, served with FUSE (SPEC §7): see
//! [`RvmFs`] and [`mount`].
//!
//! This crate does not depend on the pool: it defines the narrow storage trait
//! it needs, [`PageStore`] (the report's "RMEM" layer), and the root crate
//! implements it over an `fs` region. [`MemStore`] and [`CrashStore`] implement
//! it in memory for tests.
//!
//! # The RVM protocol
//!
//! An [`Rvm`] is an address space of logical 4 KiB pages, addressed by
//! persistent references ([`PageRef`]: logical page + offset, never a
//! pointer). A page table, itself stored in pages, maps logical pages to the
//! store's physical pages. A [`Transaction`]'s first write to a logical page
//! copies it to a fresh physical page (a shadow); commit persists the shadows
//! (contiguous runs together), the changed page-table nodes and allocation map
//! pages, then switches one checksummed commit record. Pages the commit made
//! unused are freed only after the switch. Recovery reads the newest valid
//! commit record; pages of an interrupted commit are free in it.
//!
//! ```text
//!  commit slot A | commit slot B          (the store's two slots; newest valid wins)
//!        \
//!         commit record: sequence, geometry, table root + crc32c, user root
//!                  |
//!            page-table root node ── 256 entries {page, crc32c, flags}
//!              /        \
//!          leaf nodes ... ── logical page -> physical page
//!            |      \
//!   system pages     user pages
//!   (allocation maps: physical, logical)
//! ```
//!
//! Module map: [`store`](PageStore) (the trait), `commit_record`, `page_table`
//! and `allocation_map` (one on-media format each), `tree` (the table in
//! memory), `transaction`, `group_commit` (close and switch), `recovery`
//! (open and check), `geometry`.
//!
//! # Example
//!
//! ```
//! use rvmfs::{FormatOptions, MemStore, PageRef, Rvm};
//! use std::sync::Arc;
//!
//! # fn main() -> Result<(), rvmfs::RvmError> {
//! let store = Arc::new(MemStore::new(1024)); // 4 MiB of pages
//! let rvm = Rvm::format(Arc::clone(&store), FormatOptions::default())?;
//!
//! // Allocate two logical pages, write across their boundary, and record
//! // where the data is in the user root, all in one transaction.
//! let mut tx = rvm.begin()?;
//! let pages = tx.alloc_pages(2)?;
//! let at = PageRef::new(pages.start, 4090);
//! tx.write(at, b"hello, recoverable world")?;
//! tx.set_root(&at.to_raw().to_le_bytes())?;
//! tx.commit()?;
//!
//! // A transaction that is aborted (or dropped) leaves no trace.
//! let mut tx = rvm.begin()?;
//! tx.write(at, b"HELLO")?;
//! tx.abort();
//!
//! // After a restart, the root leads back to the data.
//! drop(rvm);
//! let rvm = Rvm::open(store)?;
//! let raw = u64::from_le_bytes(rvm.root()[..8].try_into().unwrap());
//! let mut buf = [0u8; 24];
//! rvm.read(PageRef::from_raw(raw), &mut buf)?;
//! assert_eq!(&buf, b"hello, recoverable world");
//! assert!(rvm.check()?.is_clean());
//! # Ok(())
//! # }
//! ```
//!
//! # Concurrency
//!
//! Any number of threads may read the last durable commit ([`Rvm::read`])
//! while one transaction is open; [`Rvm::begin`] waits for the open one.
//! [`Transaction::close`] hands a transaction over for commit and lets the
//! next one begin at once; [`Transaction::commit`] also waits until it is
//! durable. Transactions closed while a switch is in flight are made durable
//! together by the next one (group commit).

mod address;
mod allocation_map;
mod check;
mod commit_record;
mod crash_store;
mod error;
mod geometry;
mod group_commit;
mod mem_store;
mod page_allocator;
mod page_table;
mod recovery;
mod rvm;
mod rvmfs;
mod store;
mod transaction;
mod tree;

pub use address::{PageRange, PageRef};
pub use allocation_map::MapTailError;
pub use check::{CheckReport, Problem};
pub use commit_record::{RecordError, RootSlot, ROOT_SLOT_SIZE};
pub use crash_store::{CrashMode, CrashStore, TEAR_GRANULARITY};
pub use error::RvmError;
pub use geometry::{Geometry, MAX_LOGICAL_PAGES, MAX_TABLE_LEVELS};
pub use mem_store::{MemStore, DISCARD_POISON};
pub use page_table::EntryError;
pub use recovery::check_store;
pub use rvm::{FormatOptions, Rvm, RvmStats, Space};
pub use rvmfs::{
    mount, Caller, DirEntryOut, Errno, FsCheck, FsError, FsOptions, FsResult, Inode, MountHandle,
    MountOptions, RvmFs, SetAttr, StatFs, TimeSet, Timestamp, MAX_FILE_SIZE, MAY_EXEC, MAY_READ,
    MAY_WRITE, NAME_MAX, RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT_INO,
};
pub use store::{CommitSlot, PageRun, PageStore, StoreError, COMMIT_SLOT_SIZE, PAGE_SIZE};
pub use transaction::Transaction;
