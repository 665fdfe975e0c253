//! [`Rvm`]: an address space of logical pages with transactions, over a [`PageStore`].
//!
//! An `Rvm` handle is cheap to clone and may be shared between threads. It
//! promises:
//! - readers ([`Rvm::read`], [`Rvm::root`]) see the last *durable* commit and
//!   never block on a transaction's writes;
//! - at most one [`Transaction`] is open at a time ([`Rvm::begin`] waits for
//!   the open one to close or abort); closed transactions queue for one shared
//!   persist and switch (group commit, see `group_commit`);
//! - after any crash, [`Rvm::open`] finds exactly the last switched commit.
//!
//! It assumes one process owns the store: two `Rvm`s over one store corrupt it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};

use crate::address::{PageRange, PageRef, Span};
use crate::allocation_map::AllocationMap;
use crate::check::{CheckReport, Problem};
use crate::commit_record::{RootSlot, ROOT_SLOT_SIZE};
use crate::error::RvmError;
use crate::geometry::Geometry;
use crate::group_commit::CommitQueue;
use crate::page_allocator::PageAllocator;
use crate::recovery::walk;
use crate::store::{CommitSlot, PageStore, COMMIT_SLOT_SIZE};
use crate::transaction::Transaction;
use crate::tree::PageTree;

/// Options for [`Rvm::format`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FormatOptions {
    /// Size of the logical address space in pages; default: the store's page count.
    pub logical_pages: Option<u64>,
}

/// Counters since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RvmStats {
    /// Transactions closed (each gets a sequence number).
    pub commits: u64,
    /// Commit record switches; below `commits` when commits were grouped.
    pub switches: u64,
    /// Transactions aborted.
    pub aborts: u64,
    /// Pages named by `persist` calls.
    pub persisted_pages: u64,
    /// Sequence number of the last durable commit.
    pub durable_sequence: u64,
}

/// Space in pages, for `statfs`-like reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// The geometry.
    pub geometry: Geometry,
    /// Physical pages not in use by anything (committed, pending or open).
    pub free_physical_pages: u64,
    /// Logical pages not allocated in the last commit.
    pub free_logical_pages: u64,
}

/// The last committed state as readers see it.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub sequence: u64,
    pub tree: PageTree,
    pub logical: AllocationMap,
    pub user_root: RootSlot,
}

/// The newest closed state, on which the next transaction starts.
#[derive(Debug)]
pub(crate) struct Head {
    pub sequence: u64,
    pub tree: PageTree,
    pub logical: AllocationMap,
    /// The physical map as the next commit record will describe it.
    pub physical: AllocationMap,
    pub user_root: RootSlot,
    pub logical_cursor: u64,
}

#[derive(Debug)]
pub(crate) struct Writer {
    pub open: bool,
    /// Threads waiting in `begin`; nobody is woken when nobody waits.
    pub waiting: usize,
    pub head: Head,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub commits: AtomicU64,
    pub switches: AtomicU64,
    pub aborts: AtomicU64,
    pub persisted_pages: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Shared<S> {
    pub store: S,
    pub geometry: Geometry,
    pub allocator: Mutex<PageAllocator>,
    pub writer: Mutex<Writer>,
    pub writer_free: Condvar,
    pub committed: RwLock<Arc<Snapshot>>,
    pub queue: Mutex<CommitQueue>,
    pub queue_changed: Condvar,
    pub poisoned: AtomicBool,
    pub counters: Counters,
}

impl Writer {
    /// Ends the open transaction and wakes a thread waiting to begin, if any.
    pub fn finish(mut guard: MutexGuard<'_, Writer>, free: &Condvar) {
        guard.open = false;
        let wake = guard.waiting > 0;
        drop(guard);
        if wake {
            free.notify_all();
        }
    }
}

/// Locks a mutex; a panic elsewhere does not make the state unreadable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Recoverable virtual memory over a page store.
#[derive(Debug)]
pub struct Rvm<S: PageStore> {
    pub(crate) shared: Arc<Shared<S>>,
}

impl<S: PageStore> Clone for Rvm<S> {
    fn clone(&self) -> Self {
        Rvm { shared: Arc::clone(&self.shared) }
    }
}

impl<S: PageStore> Rvm<S> {
    /// Makes `store` an empty RVM instance: clears both commit slots, writes
    /// empty maps and table, and commits them. If the format is interrupted,
    /// [`Rvm::open`] fails with [`RvmError::NoCommitRecord`]; format again.
    pub fn format(store: S, options: FormatOptions) -> Result<Rvm<S>, RvmError> {
        let physical_pages = store.page_count();
        let geometry =
            Geometry::new(physical_pages, options.logical_pages.unwrap_or(physical_pages))?;
        for slot in [CommitSlot::B, CommitSlot::A] {
            store
                .switch_commit(slot, &[0; COMMIT_SLOT_SIZE])
                .map_err(|source| RvmError::ClearCommitSlot { slot, source })?;
        }
        let mut physical = AllocationMap::new(geometry.physical_pages());
        let logical = AllocationMap::new(geometry.logical_pages());
        let mut allocator = PageAllocator::new(&physical);
        let root = allocator.alloc_run(1, 0).expect("a checked geometry has free pages");
        // Format writes every map page, not only the ones it changes.
        physical.mark_all_dirty();
        let tree = PageTree::new(geometry.table_levels(), root.start);
        let head = Head {
            sequence: 0,
            tree: tree.clone(),
            logical: logical.clone(),
            physical,
            user_root: [0; ROOT_SLOT_SIZE],
            logical_cursor: geometry.system_pages(),
        };
        let snapshot = Snapshot { sequence: 0, tree, logical, user_root: [0; ROOT_SLOT_SIZE] };
        let rvm = Rvm::assemble(store, geometry, allocator, head, snapshot, CommitSlot::A);
        let mut tx = rvm.begin()?;
        tx.format_system_pages(root);
        tx.commit()?;
        Ok(rvm)
    }

    /// Opens a formatted store at its last committed state. Reads only
    /// metadata; pages of an interrupted commit are free in that state.
    /// Fails with [`RvmError::Corrupt`] if the walk finds anything but leaks;
    /// leaked pages are reclaimed (and the repair is written by the next commit).
    pub fn open(store: S) -> Result<Rvm<S>, RvmError> {
        let (report, committed) = walk(&store)?;
        let harmful: Vec<&Problem> = report.problems.iter().filter(|p| !p.is_leak()).collect();
        let committed = match (committed, harmful.first()) {
            (Some(committed), None) => committed,
            (_, first) => {
                let first = first.copied().or(report.problems.first()).cloned();
                return Err(RvmError::Corrupt {
                    count: report.problem_count(),
                    first: first.unwrap_or(Problem::MapMissing { logical: 0 }),
                });
            }
        };
        let mut physical = committed.physical;
        for problem in &report.problems {
            if let Problem::Leaked { page } = problem {
                tracing::warn!(page, "reclaiming a leaked page");
                physical.clear(*page);
            }
        }
        let record = committed.record;
        tracing::debug!(sequence = record.sequence, slot = %committed.slot, "opened RVM");
        let head = Head {
            sequence: record.sequence,
            tree: committed.tree.clone(),
            logical: committed.logical.clone(),
            physical: physical.clone(),
            user_root: record.user_root,
            logical_cursor: committed.geometry.system_pages(),
        };
        let snapshot = Snapshot {
            sequence: record.sequence,
            tree: committed.tree,
            logical: committed.logical,
            user_root: record.user_root,
        };
        let allocator = PageAllocator::new(&physical);
        let next_slot = committed.slot.other();
        Ok(Rvm::assemble(store, committed.geometry, allocator, head, snapshot, next_slot))
    }

    fn assemble(
        store: S,
        geometry: Geometry,
        allocator: PageAllocator,
        head: Head,
        snapshot: Snapshot,
        next_slot: CommitSlot,
    ) -> Rvm<S> {
        let sequence = snapshot.sequence;
        Rvm {
            shared: Arc::new(Shared {
                store,
                geometry,
                allocator: Mutex::new(allocator),
                writer: Mutex::new(Writer { open: false, waiting: 0, head }),
                writer_free: Condvar::new(),
                committed: RwLock::new(Arc::new(snapshot)),
                queue: Mutex::new(CommitQueue::new(sequence, next_slot)),
                queue_changed: Condvar::new(),
                poisoned: AtomicBool::new(false),
                counters: Counters::default(),
            }),
        }
    }

    /// Opens a transaction on the newest closed state, waiting while another
    /// transaction is open. Calling it while holding an open transaction on
    /// the same thread deadlocks.
    pub fn begin(&self) -> Result<Transaction<S>, RvmError> {
        let mut writer = lock(&self.shared.writer);
        loop {
            if self.shared.poisoned.load(Ordering::Acquire) {
                return Err(RvmError::Poisoned);
            }
            if !writer.open {
                break;
            }
            writer.waiting += 1;
            writer = self.shared.writer_free.wait(writer).unwrap_or_else(PoisonError::into_inner);
            writer.waiting -= 1;
        }
        writer.open = true;
        Ok(Transaction::new(self.clone(), &writer.head))
    }

    /// Like [`Rvm::begin`], but returns `None` instead of waiting.
    pub fn try_begin(&self) -> Result<Option<Transaction<S>>, RvmError> {
        let mut writer = lock(&self.shared.writer);
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Err(RvmError::Poisoned);
        }
        if writer.open {
            return Ok(None);
        }
        writer.open = true;
        Ok(Some(Transaction::new(self.clone(), &writer.head)))
    }

    /// Reads `buf.len()` bytes at `at` as of the last durable commit.
    pub fn read(&self, at: PageRef, buf: &mut [u8]) -> Result<(), RvmError> {
        let snapshot = self.shared.committed.read().unwrap_or_else(PoisonError::into_inner);
        // The read guard is held while reading: pages the snapshot uses are
        // not released to the allocator until a newer snapshot replaces it.
        read_pages(&self.shared, &snapshot.tree, &snapshot.logical, at, buf)
    }

    /// The user root of the last durable commit.
    pub fn root(&self) -> RootSlot {
        self.snapshot().user_root
    }

    /// Sequence number of the last durable commit.
    pub fn durable_sequence(&self) -> u64 {
        self.snapshot().sequence
    }

    /// Allocated user page ranges as of the last durable commit.
    pub fn allocated_ranges(&self) -> Vec<PageRange> {
        let snapshot = self.snapshot();
        let runs = snapshot.logical.set_runs(self.shared.geometry.system_pages());
        runs.into_iter().map(|(start, count)| PageRange { start, count }).collect()
    }

    /// Waits until the commit with sequence number `sequence` (and all before
    /// it) is durable, persisting it and whatever else is closed if no other
    /// thread is doing so.
    pub fn wait_durable(&self, sequence: u64) -> Result<(), RvmError> {
        self.shared.wait_durable(sequence)
    }

    /// Makes every closed transaction durable.
    pub fn sync(&self) -> Result<(), RvmError> {
        let last = lock(&self.shared.queue).last_closed();
        self.shared.wait_durable(last)
    }

    /// The geometry.
    pub fn geometry(&self) -> Geometry {
        self.shared.geometry
    }

    /// Free and total space.
    pub fn space(&self) -> Space {
        Space {
            geometry: self.shared.geometry,
            free_physical_pages: lock(&self.shared.allocator).free(),
            free_logical_pages: self.snapshot().logical.zeros(),
        }
    }

    /// Counters since open.
    pub fn stats(&self) -> RvmStats {
        let c = &self.shared.counters;
        RvmStats {
            commits: c.commits.load(Ordering::Relaxed),
            switches: c.switches.load(Ordering::Relaxed),
            aborts: c.aborts.load(Ordering::Relaxed),
            persisted_pages: c.persisted_pages.load(Ordering::Relaxed),
            durable_sequence: self.durable_sequence(),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// Makes everything closed durable, then walks the committed structures on
    /// the store and compares them with the running allocator: every page in
    /// use must be marked allocated exactly once, and nothing else. Waits for
    /// the open transaction to finish and holds off new ones meanwhile.
    pub fn check(&self) -> Result<CheckReport, RvmError> {
        let quiet = self.begin()?;
        self.sync()?;
        let (mut report, committed) = walk(&self.shared.store)?;
        if let Some(committed) = committed {
            let allocator = lock(&self.shared.allocator);
            for page in 0..self.shared.geometry.physical_pages() {
                match (allocator.is_busy(page), committed.physical.get(page)) {
                    (true, false) => report.push(Problem::AllocatorLeak { page }),
                    (false, true) => report.push(Problem::AllocatorWouldReuse { page }),
                    _ => {}
                }
            }
        }
        quiet.abort_quietly();
        Ok(report)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.shared.committed.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Reads `buf.len()` bytes at `at` through `tree`, refusing unallocated and
/// system pages. Consecutive pages that are physically consecutive are read
/// with one store call.
pub(crate) fn read_pages<S: PageStore>(
    shared: &Shared<S>,
    tree: &PageTree,
    logical: &AllocationMap,
    at: PageRef,
    buf: &mut [u8],
) -> Result<(), RvmError> {
    if buf.is_empty() {
        return Ok(());
    }
    let span = Span::new(at, buf.len(), &shared.geometry)?;
    check_allocated(&shared.geometry, logical, span.first, span.last + 1)?;
    let mut filled = 0;
    let mut page = span.first;
    while page <= span.last {
        let entry = tree.get(page);
        let (offset, len) = span.part(page);
        if !entry.is_present() {
            buf[filled..filled + len].fill(0);
            filled += len;
            page += 1;
            continue;
        }
        let (mut pages, mut total) = (1, len);
        while page + pages <= span.last {
            let next = tree.get(page + pages);
            if !next.is_present() || next.page != entry.page + pages {
                break;
            }
            total += span.part(page + pages).1;
            pages += 1;
        }
        shared
            .store
            .read(entry.page, offset, &mut buf[filled..filled + total])
            .map_err(|source| RvmError::ReadPage { page, source })?;
        filled += total;
        page += pages;
    }
    Ok(())
}

/// Checks that logical pages `first..end` are user pages and allocated.
pub(crate) fn check_allocated(
    geometry: &Geometry,
    logical: &AllocationMap,
    first: u64,
    end: u64,
) -> Result<(), RvmError> {
    if end > geometry.logical_pages() {
        let page = first.max(geometry.logical_pages());
        return Err(RvmError::OutOfRange { page, logical_pages: geometry.logical_pages() });
    }
    if first < geometry.system_pages() {
        return Err(RvmError::Reserved { page: first });
    }
    match (first..end).find(|&page| !logical.get(page)) {
        Some(page) => Err(RvmError::Unallocated { page }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemStore, PAGE_SIZE};

    fn formatted(pages: u64) -> (Arc<MemStore>, Rvm<Arc<MemStore>>) {
        let store = Arc::new(MemStore::new(pages));
        let rvm = Rvm::format(Arc::clone(&store), FormatOptions::default()).unwrap();
        (store, rvm)
    }

    fn read_vec<S: PageStore>(rvm: &Rvm<S>, at: PageRef, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        rvm.read(at, &mut buf).unwrap();
        buf
    }

    #[test]
    fn a_formatted_store_opens_empty_and_clean() {
        let (store, rvm) = formatted(256);
        assert!(rvm.allocated_ranges().is_empty());
        assert_eq!(rvm.durable_sequence(), 1);
        drop(rvm);
        let rvm = Rvm::open(store).unwrap();
        let report = rvm.check().unwrap();
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.map_pages, 2);
        assert_eq!(report.allocated_pages, 3, "root node and two map pages");
        assert_eq!(rvm.root(), [0; ROOT_SLOT_SIZE]);
    }

    #[test]
    fn committed_writes_survive_reopen() {
        let (store, rvm) = formatted(512);
        let mut tx = rvm.begin().unwrap();
        let range = tx.alloc_pages(3).unwrap();
        let data: Vec<u8> = (0..9000u32).map(|i| (i * 7) as u8).collect();
        tx.write(PageRef::new(range.start, 100), &data).unwrap();
        tx.set_root(b"root").unwrap();
        let sequence = tx.commit().unwrap();
        drop(rvm);
        let rvm = Rvm::open(store).unwrap();
        assert_eq!(rvm.durable_sequence(), sequence);
        assert_eq!(read_vec(&rvm, PageRef::new(range.start, 100), 9000), data);
        assert_eq!(read_vec(&rvm, PageRef::page_start(range.start), 100), vec![0; 100]);
        assert_eq!(&rvm.root()[..5], b"root\0");
        assert_eq!(rvm.allocated_ranges(), vec![range]);
        assert!(rvm.check().unwrap().is_clean());
    }

    #[test]
    fn an_aborted_transaction_leaves_no_trace_and_no_leak() {
        let (_, rvm) = formatted(512);
        let mut tx = rvm.begin().unwrap();
        let range = tx.alloc_pages(1).unwrap();
        tx.write(range.first_byte(), b"kept").unwrap();
        tx.commit().unwrap();
        let free = rvm.space().free_physical_pages;
        let mut tx = rvm.begin().unwrap();
        tx.write(range.first_byte(), b"lost").unwrap();
        tx.alloc_pages(5).unwrap();
        tx.set_root(b"lost").unwrap();
        tx.abort();
        assert_eq!(rvm.space().free_physical_pages, free);
        let tx = rvm.begin().unwrap();
        let mut buf = [0; 4];
        tx.read(range.first_byte(), &mut buf).unwrap();
        assert_eq!(&buf, b"kept");
        drop(tx);
        assert_eq!(rvm.root(), [0; ROOT_SLOT_SIZE]);
        assert_eq!(rvm.stats().aborts, 2);
        assert!(rvm.check().unwrap().is_clean());
    }

    #[test]
    fn readers_see_the_last_durable_commit_until_the_switch() {
        let (_, rvm) = formatted(512);
        let mut tx = rvm.begin().unwrap();
        let range = tx.alloc_pages(1).unwrap();
        tx.write(range.first_byte(), b"one").unwrap();
        tx.commit().unwrap();
        let mut tx = rvm.begin().unwrap();
        tx.write(range.first_byte(), b"two").unwrap();
        assert_eq!(read_vec(&rvm, range.first_byte(), 3), b"one");
        let sequence = tx.close().unwrap();
        assert_eq!(read_vec(&rvm, range.first_byte(), 3), b"one", "closed is not durable");
        let tx = rvm.begin().unwrap();
        let mut buf = [0; 3];
        tx.read(range.first_byte(), &mut buf).unwrap();
        assert_eq!(&buf, b"two", "the next transaction starts from the closed state");
        drop(tx);
        rvm.wait_durable(sequence).unwrap();
        assert_eq!(read_vec(&rvm, range.first_byte(), 3), b"two");
    }

    #[test]
    fn old_pages_are_released_only_after_the_switch() {
        let (_, rvm) = formatted(512);
        let mut tx = rvm.begin().unwrap();
        let range = tx.alloc_pages(1).unwrap();
        tx.write(range.first_byte(), b"one").unwrap();
        tx.commit().unwrap();
        let old = rvm.snapshot().tree.get(range.start).page;
        let mut tx = rvm.begin().unwrap();
        tx.write(range.first_byte(), b"two").unwrap();
        let new = tx.entry(range.start).page;
        assert_ne!(old, new, "the first write shadows the page");
        tx.close().unwrap();
        assert!(lock(&rvm.shared.allocator).is_busy(old), "still named by the durable record");
        rvm.sync().unwrap();
        assert!(!lock(&rvm.shared.allocator).is_busy(old));
        assert!(lock(&rvm.shared.allocator).is_busy(new));
    }

    #[test]
    fn a_long_write_is_shadowed_into_one_contiguous_run() {
        let (store, rvm) = formatted(1024);
        let mut tx = rvm.begin().unwrap();
        let range = tx.alloc_pages(64).unwrap();
        tx.write(range.first_byte(), &vec![1; 64 * PAGE_SIZE]).unwrap();
        let first = tx.entry(range.start).page;
        assert!(range.pages().all(|p| tx.entry(p).page == first + p - range.start));
        tx.commit().unwrap();
        let persists = store.persist_count();
        let mut tx = rvm.begin().unwrap();
        tx.write(PageRef::new(range.start, 1), &vec![2; 10 * PAGE_SIZE]).unwrap();
        tx.commit().unwrap();
        assert_eq!(store.persist_count(), persists + 1, "one persist per commit");
        let data = read_vec(&rvm, range.first_byte(), 11 * PAGE_SIZE + 1);
        assert_eq!(data[0], 1);
        assert!(data[1..10 * PAGE_SIZE + 1].iter().all(|&b| b == 2));
        assert!(data[10 * PAGE_SIZE + 1..].iter().all(|&b| b == 1));
    }

    #[test]
    fn an_empty_commit_switches_nothing() {
        let (store, rvm) = formatted(256);
        let switches = store.switch_count();
        let tx = rvm.begin().unwrap();
        assert_eq!(tx.commit().unwrap(), 1);
        assert_eq!(store.switch_count(), switches);
    }

    #[test]
    fn bad_accesses_are_refused_with_the_page_named() {
        let (_, rvm) = formatted(256);
        let mut tx = rvm.begin().unwrap();
        let range = tx.alloc_pages(1).unwrap();
        let message = |r: Result<(), RvmError>| r.unwrap_err().to_string();
        assert_eq!(
            message(tx.write(PageRef::page_start(0), b"x")),
            "logical page 0 is reserved for RVM's allocation maps"
        );
        assert_eq!(
            message(tx.write(PageRef::new(range.start, 4095), b"xy")),
            format!("logical page {} is not allocated", range.start + 1)
        );
        assert_eq!(
            message(tx.read(PageRef::page_start(300), &mut [0])),
            "logical page 300 lies outside the 256-page address space"
        );
        assert!(matches!(tx.set_root(&[0; 65]), Err(RvmError::RootTooLarge { len: 65, .. })));
        assert!(matches!(tx.alloc_pages(0), Err(RvmError::EmptyAllocation)));
        assert!(matches!(tx.alloc_pages(1000), Err(RvmError::NoLogicalSpace { .. })));
        tx.write(range.first_byte(), b"still usable").unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn a_full_store_reports_no_space_and_the_transaction_stays_usable() {
        let (_, rvm) = formatted(64);
        let mut tx = rvm.begin().unwrap();
        let range = tx.alloc_pages(61).unwrap();
        let err = tx.write(range.first_byte(), &vec![3; 61 * PAGE_SIZE]).unwrap_err();
        assert!(matches!(err, RvmError::NoPhysicalSpace { .. }), "{err}");
        tx.write(range.first_byte(), &vec![3; 20 * PAGE_SIZE]).unwrap();
        tx.commit().unwrap();
        let mut tx = rvm.begin().unwrap();
        tx.free_pages(range).unwrap();
        tx.commit().unwrap();
        assert!(rvm.check().unwrap().is_clean());
        let mut tx = rvm.begin().unwrap();
        let range = tx.alloc_pages(40).unwrap();
        tx.write(range.first_byte(), &vec![4; 40 * PAGE_SIZE]).unwrap();
        tx.commit().unwrap();
        assert!(rvm.check().unwrap().is_clean());
    }

    #[test]
    fn open_refuses_unformatted_and_resized_stores() {
        let err = Rvm::open(MemStore::new(64)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "neither commit slot holds a valid commit record (A: the slot is empty; \
             B: the slot is empty)"
        );
        let (store, rvm) = formatted(64);
        drop(rvm);
        let (pages, slots) = store.image();
        let mut bigger = pages;
        bigger.extend_from_slice(&[0; PAGE_SIZE]);
        let err = Rvm::open(MemStore::from_image(bigger, slots)).unwrap_err();
        assert_eq!(err.to_string(), "the commit record describes 64 pages but the store has 65");
    }
}
