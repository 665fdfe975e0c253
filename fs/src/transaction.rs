//! [`Transaction`]: the one open set of changes, applied atomically at commit.
//!
//! A transaction starts from the newest closed state (which may not be
//! durable yet). Its first write to a logical page *shadows* it: a fresh
//! physical page receives the old contents (only for the parts the write does
//! not cover) and then the new bytes; later writes in the same transaction go
//! to that shadow in place. Consecutive pages are shadowed into physically
//! consecutive runs where the allocator allows, so a long write is one store
//! write and one persisted run. Nothing the last commit uses is touched, so
//! readers and a crash see only committed states. Abort (or drop) discards the
//! shadows.
//!
//! Errors leave the transaction usable when they are detected before anything
//! changed (bad address, no space); a store failure half way through a write
//! breaks it, and it can then only be aborted.

use std::sync::atomic::Ordering;

use crate::address::{PageRange, PageRef, Span};
use crate::allocation_map::AllocationMap;
use crate::commit_record::{RootSlot, ROOT_SLOT_SIZE};
use crate::error::RvmError;
use crate::geometry::table_nodes_covering;
use crate::group_commit::TxChanges;
use crate::page_table::TableEntry;
use crate::rvm::{check_allocated, lock, read_pages, Head, Rvm, Shared, Writer};
use crate::store::{push_page, PageRun, PageStore};
use crate::tree::{NodePages, PageTree};
use crate::PAGE_SIZE;

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// An open transaction. Dropping it aborts it.
#[derive(Debug)]
pub struct Transaction<S: PageStore> {
    rvm: Rvm<S>,
    tree: PageTree,
    logical: AllocationMap,
    user_root: RootSlot,
    base_root: RootSlot,
    base_sequence: u64,
    logical_cursor: u64,
    allocated: Vec<PageRun>,
    freed: Vec<PageRun>,
    broken: bool,
    finished: bool,
}

/// Node pages for the open transaction: allocations keep the commit reserve free.
struct TxPages<'a, S> {
    shared: &'a Shared<S>,
    allocated: &'a mut Vec<PageRun>,
    freed: &'a mut Vec<PageRun>,
}

impl<S: PageStore> NodePages for TxPages<'_, S> {
    fn alloc_node(&mut self) -> Result<u64, RvmError> {
        let run = self.shared.alloc_run(1, self.shared.geometry.commit_reserve())?;
        self.allocated.push(run);
        Ok(run.start)
    }

    fn release(&mut self, page: u64) {
        push_page(self.freed, page);
    }
}

impl<S: PageStore> Transaction<S> {
    pub(crate) fn new(rvm: Rvm<S>, head: &Head) -> Transaction<S> {
        Transaction {
            rvm,
            tree: head.tree.clone(),
            logical: head.logical.clone(),
            user_root: head.user_root,
            base_root: head.user_root,
            base_sequence: head.sequence,
            logical_cursor: head.logical_cursor,
            allocated: Vec::new(),
            freed: Vec::new(),
            broken: false,
            finished: false,
        }
    }

    /// The table entry for `logical` as this transaction sees it (for tests).
    #[cfg(test)]
    pub(crate) fn entry(&self, logical: u64) -> TableEntry {
        self.tree.get(logical)
    }

    fn shared(&self) -> &Shared<S> {
        &self.rvm.shared
    }

    /// The tree and a page source for it, borrowed apart.
    fn tree_and_pages(&mut self) -> (&mut PageTree, TxPages<'_, S>) {
        let pages = TxPages {
            shared: &self.rvm.shared,
            allocated: &mut self.allocated,
            freed: &mut self.freed,
        };
        (&mut self.tree, pages)
    }

    /// Reads `buf.len()` bytes at `at`, including this transaction's writes.
    pub fn read(&self, at: PageRef, buf: &mut [u8]) -> Result<(), RvmError> {
        read_pages(self.shared(), &self.tree, &self.logical, at, buf)
    }

    /// Writes `data` at `at`. Every page touched must be allocated.
    pub fn write(&mut self, at: PageRef, data: &[u8]) -> Result<(), RvmError> {
        if self.broken {
            return Err(RvmError::TransactionBroken);
        }
        if data.is_empty() {
            return Ok(());
        }
        let geometry = self.shared().geometry;
        let span = Span::new(at, data.len(), &geometry)?;
        check_allocated(&geometry, &self.logical, span.first, span.last + 1)?;
        let unshadowed = (span.first..=span.last).filter(|&p| !self.tree.get(p).is_fresh()).count();
        if unshadowed > 0 {
            let nodes = table_nodes_covering(span.first, span.last + 1, geometry.table_levels());
            self.shared().ensure_free(unshadowed as u64 + nodes, geometry.commit_reserve())?;
        }
        let result = self.write_span(&span, data);
        self.broken = result.is_err();
        result
    }

    fn write_span(&mut self, span: &Span, data: &[u8]) -> Result<(), RvmError> {
        let reserve = self.shared().geometry.commit_reserve();
        let mut done = 0;
        let mut page = span.first;
        while page <= span.last {
            let entry = self.tree.get(page);
            if entry.is_fresh() {
                let (offset, len) = span.part(page);
                self.shared()
                    .store
                    .write(entry.page, offset, &data[done..done + len])
                    .map_err(|source| RvmError::WriteShadow { page, source })?;
                done += len;
                page += 1;
                continue;
            }
            let mut wanted = 1;
            while page + wanted <= span.last && !self.tree.get(page + wanted).is_fresh() {
                wanted += 1;
            }
            let run = self.shared().alloc_run(wanted, reserve)?;
            self.allocated.push(run);
            let mut run_bytes = 0;
            for i in 0..run.count {
                let logical = page + i;
                let shadow = run.start + i;
                let len = span.part(logical).1;
                if len < PAGE_SIZE {
                    self.fill_shadow(logical, self.tree.get(logical), shadow)?;
                }
                let (tree, mut pages) = self.tree_and_pages();
                let old = tree.set(logical, TableEntry::fresh(shadow), &mut pages)?;
                if old.is_present() {
                    pages.release(old.page);
                }
                run_bytes += len;
            }
            let offset = span.part(page).0;
            self.shared()
                .store
                .write(run.start, offset, &data[done..done + run_bytes])
                .map_err(|source| RvmError::WriteShadow { page, source })?;
            done += run_bytes;
            page += run.count;
        }
        Ok(())
    }

    /// Gives a shadow page the old contents of `logical` (zeros if unwritten).
    fn fill_shadow(&self, logical: u64, old: TableEntry, shadow: u64) -> Result<(), RvmError> {
        let store = &self.shared().store;
        if old.is_present() {
            store
                .copy_pages(old.page, shadow, 1)
                .map_err(|source| RvmError::CopyShadow { page: logical, source })
        } else {
            store
                .write(shadow, 0, &ZERO_PAGE)
                .map_err(|source| RvmError::WriteShadow { page: logical, source })
        }
    }

    /// Allocates `count` consecutive logical pages, which read as zeros.
    pub fn alloc_pages(&mut self, count: u64) -> Result<PageRange, RvmError> {
        if count == 0 {
            return Err(RvmError::EmptyAllocation);
        }
        let free = self.logical.zeros();
        let start = self
            .logical
            .find_clear_run(count, self.logical_cursor)
            .ok_or(RvmError::NoLogicalSpace { requested: count, free })?;
        self.logical.set_run(start, count);
        self.logical_cursor = start + count;
        Ok(PageRange { start, count })
    }

    /// Frees logical pages; their physical pages are released after the
    /// commit's switch. Every page must be allocated.
    pub fn free_pages(&mut self, range: PageRange) -> Result<(), RvmError> {
        if self.broken {
            return Err(RvmError::TransactionBroken);
        }
        let geometry = self.shared().geometry;
        let end = range.start.checked_add(range.count).ok_or(RvmError::OutOfRange {
            page: range.start,
            logical_pages: geometry.logical_pages(),
        })?;
        check_allocated(&geometry, &self.logical, range.start, end)?;
        let nodes = table_nodes_covering(range.start, end, geometry.table_levels());
        self.shared().ensure_free(nodes, geometry.commit_reserve())?;
        for logical in range.pages() {
            self.logical.clear(logical);
            let (tree, mut pages) = self.tree_and_pages();
            let old = match tree.set(logical, TableEntry::EMPTY, &mut pages) {
                Ok(old) => old,
                Err(error) => {
                    self.broken = true;
                    return Err(error);
                }
            };
            if old.is_present() {
                pages.release(old.page);
            }
        }
        if range.start < self.logical_cursor {
            self.logical_cursor = range.start;
        }
        Ok(())
    }

    /// The user root as this transaction sees it.
    pub fn root(&self) -> RootSlot {
        self.user_root
    }

    /// Sets the user root (up to 64 bytes; the rest of the slot is zeroed).
    pub fn set_root(&mut self, root: &[u8]) -> Result<(), RvmError> {
        if root.len() > ROOT_SLOT_SIZE {
            return Err(RvmError::RootTooLarge { len: root.len(), max: ROOT_SLOT_SIZE });
        }
        self.user_root = [0; ROOT_SLOT_SIZE];
        self.user_root[..root.len()].copy_from_slice(root);
        Ok(())
    }

    /// Whether the transaction has changed nothing.
    pub fn is_empty(&self) -> bool {
        self.allocated.is_empty()
            && self.freed.is_empty()
            && self.logical.dirty_pages().is_empty()
            && self.user_root == self.base_root
    }

    /// Commits: closes the transaction and waits until it is durable (sharing
    /// the persist and switch with whatever else is closed meanwhile).
    /// Returns the commit's sequence number.
    pub fn commit(self) -> Result<u64, RvmError> {
        let rvm = self.rvm.clone();
        let sequence = self.close()?;
        rvm.wait_durable(sequence)?;
        Ok(sequence)
    }

    /// Closes the transaction without waiting: the next transaction sees its
    /// changes, and they become durable with the next switch (see
    /// [`Rvm::wait_durable`] and [`Rvm::sync`]). An empty transaction closes
    /// as a no-op and returns the sequence number it started from.
    pub fn close(mut self) -> Result<u64, RvmError> {
        if self.broken {
            return Err(RvmError::TransactionBroken);
        }
        if self.is_empty() {
            let sequence = self.base_sequence;
            self.abort_quietly();
            return Ok(sequence);
        }
        self.finished = true;
        let changes = TxChanges {
            tree: std::mem::replace(&mut self.tree, PageTree::new(1, 0)),
            logical: std::mem::replace(&mut self.logical, AllocationMap::new(0)),
            user_root: self.user_root,
            allocated: std::mem::take(&mut self.allocated),
            freed: std::mem::take(&mut self.freed),
        };
        self.rvm.shared.close(changes)
    }

    /// Discards every change.
    pub fn abort(mut self) {
        self.rollback();
        self.rvm.shared.counters.aborts.fetch_add(1, Ordering::Relaxed);
    }

    /// Discards the transaction without counting an abort.
    pub(crate) fn abort_quietly(mut self) {
        self.rollback();
    }

    fn rollback(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let shared = &self.rvm.shared;
        let mut allocator = lock(&shared.allocator);
        for run in self.allocated.drain(..) {
            allocator.release(run);
        }
        drop(allocator);
        Writer::finish(lock(&shared.writer), &shared.writer_free);
    }

    /// Format: marks the system pages allocated and takes the root node page.
    pub(crate) fn format_system_pages(&mut self, root: PageRun) {
        let system = self.shared().geometry.system_pages();
        self.logical.set_run(0, system);
        self.logical.mark_all_dirty();
        self.allocated.push(root);
    }
}

impl<S: PageStore> Drop for Transaction<S> {
    fn drop(&mut self) {
        if !self.finished {
            self.rollback();
            self.rvm.shared.counters.aborts.fetch_add(1, Ordering::Relaxed);
        }
    }
}
