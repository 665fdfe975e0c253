//! Closing transactions and group commit: how changes become durable.
//!
//! A commit has two halves. *Closing* (under the writer lock, by the thread
//! that owns the transaction) finishes the new state: it applies the
//! transaction's allocations and frees to the physical map, gives every
//! changed map page a shadow page (which changes the map again, until nothing
//! new changes), writes the map pages and the dirty table nodes bottom-up,
//! encodes the commit record, and queues the result. The next transaction may
//! begin at once, on top of the closed state.
//!
//! *Switching* (by whichever waiting thread finds no switch in flight, the
//! leader) takes every closed transaction in the queue, persists all their
//! pages with one `persist`, switches one commit record (the newest one's,
//! into the slot that does not hold the current record), publishes the new
//! snapshot to readers, and only then releases the pages the batch freed. So
//! several threads committing at once share one persist and one switch, and a
//! page is never reused while a record that may still be the newest names it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use crate::allocation_map::AllocationMap;
use crate::commit_record::{CommitRecord, RootSlot};
use crate::error::RvmError;
use crate::page_table::TableEntry;
use crate::rvm::{lock, Head, Shared, Snapshot, Writer};
use crate::store::{coalesce_runs, push_page, CommitSlot, PageRun, PageStore, COMMIT_SLOT_SIZE};
use crate::tree::{NodePages, PageTree};
use crate::PAGE_SIZE;

/// A closed transaction waiting for its switch.
#[derive(Debug)]
pub(crate) struct ClosedTx {
    sequence: u64,
    record: [u8; COMMIT_SLOT_SIZE],
    /// Every page the commit wrote.
    persist: Vec<PageRun>,
    /// Pages the commit stopped using; released after the switch.
    freed: Vec<PageRun>,
    snapshot: Arc<Snapshot>,
}

/// Closed transactions and the state of the switch.
#[derive(Debug)]
pub(crate) struct CommitQueue {
    closed: Vec<ClosedTx>,
    in_flight: bool,
    failed: bool,
    /// Threads waiting for a switch; nobody is woken when nobody waits.
    waiting: usize,
    durable: u64,
    last_closed: u64,
    next_slot: CommitSlot,
}

impl CommitQueue {
    pub fn new(durable: u64, next_slot: CommitSlot) -> CommitQueue {
        CommitQueue {
            closed: Vec::new(),
            in_flight: false,
            failed: false,
            waiting: 0,
            durable,
            last_closed: durable,
            next_slot,
        }
    }

    /// Sequence number of the newest closed transaction.
    pub fn last_closed(&self) -> u64 {
        self.last_closed
    }

    /// Whether closed transactions await a switch (and hold freed pages).
    pub fn pending(&self) -> bool {
        self.last_closed > self.durable
    }
}

/// What a transaction hands over at close.
#[derive(Debug)]
pub(crate) struct TxChanges {
    pub tree: PageTree,
    pub logical: AllocationMap,
    pub user_root: RootSlot,
    pub allocated: Vec<PageRun>,
    pub freed: Vec<PageRun>,
}

/// Node pages taken during close: allocations and frees go straight to the
/// physical map that the commit writes.
struct ClosePages<'a, S> {
    shared: &'a Shared<S>,
    physical: &'a mut AllocationMap,
    allocated: &'a mut Vec<PageRun>,
    freed: &'a mut Vec<PageRun>,
}

impl<S: PageStore> NodePages for ClosePages<'_, S> {
    fn alloc_node(&mut self) -> Result<u64, RvmError> {
        let run = self.shared.alloc_run(1, 0)?;
        self.physical.set(run.start);
        self.allocated.push(run);
        Ok(run.start)
    }

    fn release(&mut self, page: u64) {
        self.physical.clear(page);
        push_page(self.freed, page);
    }
}

impl<S: PageStore> Shared<S> {
    /// Closes a transaction: see the module docs. On failure the instance is
    /// poisoned, because the head state may be half updated.
    pub(crate) fn close(&self, changes: TxChanges) -> Result<u64, RvmError> {
        let mut writer = lock(&self.writer);
        let result = self.close_locked(&mut writer.head, changes);
        if result.is_err() {
            self.poisoned.store(true, Ordering::Release);
        }
        Writer::finish(writer, &self.writer_free);
        result
    }

    fn close_locked(&self, head: &mut Head, changes: TxChanges) -> Result<u64, RvmError> {
        let TxChanges { tree, logical, user_root, mut allocated, mut freed } = changes;
        let sequence = head.sequence + 1;
        let geometry = self.geometry;
        head.tree = tree;
        head.logical = logical;
        head.user_root = user_root;
        for run in &allocated {
            head.physical.set_run(run.start, run.count);
        }
        for run in &freed {
            head.physical.clear_run(run.start, run.count);
        }
        let Head { tree, physical, logical, .. } = head;

        // Shadow every changed map page; each shadow changes the physical map
        // again, so repeat until every changed map page has its shadow.
        let mut shadowed: Vec<u64> = Vec::new();
        loop {
            let pending: Vec<u64> = physical
                .dirty_pages()
                .into_iter()
                .map(|i| geometry.physical_map_page(i))
                .chain(logical.dirty_pages().into_iter().map(|i| geometry.logical_map_page(i)))
                .filter(|page| !shadowed.contains(page))
                .collect();
            if pending.is_empty() {
                break;
            }
            for map_page in pending {
                let mut pages = ClosePages {
                    shared: self,
                    physical,
                    allocated: &mut allocated,
                    freed: &mut freed,
                };
                let page = pages.alloc_node()?;
                let old = tree.set(map_page, TableEntry::checked(page, 0), &mut pages)?;
                if old.is_present() {
                    pages.release(old.page);
                }
                shadowed.push(map_page);
            }
        }

        // The maps are final: write them, then record their checksums. The
        // paths to them are already shadowed, so this allocates nothing.
        let mut bytes = [0u8; PAGE_SIZE];
        for &map_page in &shadowed {
            let physical_map_pages = geometry.physical_map_pages();
            if map_page < physical_map_pages {
                physical.encode_page(map_page, &mut bytes);
            } else {
                logical.encode_page(map_page - physical_map_pages, &mut bytes);
            }
            let page = tree.get(map_page).page;
            self.store
                .write(page, 0, &bytes[..])
                .map_err(|source| RvmError::WriteMap { page, source })?;
            let mut pages =
                ClosePages { shared: self, physical, allocated: &mut allocated, freed: &mut freed };
            tree.set(map_page, TableEntry::checked(page, crc32c::crc32c(&bytes[..])), &mut pages)?;
        }
        debug_assert!(physical.dirty_pages().iter().all(|&i| shadowed.contains(&i)));
        physical.mark_clean();
        logical.mark_clean();

        let store = &self.store;
        let root_crc = tree.seal(&mut |page, bytes| {
            store.write(page, 0, bytes).map_err(|source| RvmError::WriteTable { page, source })
        })?;
        let record = CommitRecord {
            sequence,
            physical_pages: geometry.physical_pages(),
            logical_pages: geometry.logical_pages(),
            table_root: tree.root().page(),
            table_root_crc: root_crc,
            table_levels: geometry.table_levels(),
            user_root,
        };
        coalesce_runs(&mut allocated);
        let mut freed_runs = freed;
        coalesce_runs(&mut freed_runs);
        head.sequence = sequence;
        let snapshot = Arc::new(Snapshot {
            sequence,
            tree: head.tree.clone(),
            logical: head.logical.clone(),
            user_root,
        });
        let closed = ClosedTx {
            sequence,
            record: record.encode(),
            persist: allocated,
            freed: freed_runs,
            snapshot,
        };
        let mut queue = lock(&self.queue);
        queue.closed.push(closed);
        queue.last_closed = sequence;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        Ok(sequence)
    }

    /// Hands out a run of up to `max` pages leaving `keep_free` free, waiting
    /// for a pending switch to release pages if need be.
    pub(crate) fn alloc_run(&self, max: u64, keep_free: u64) -> Result<PageRun, RvmError> {
        loop {
            let free = {
                let mut allocator = lock(&self.allocator);
                if let Some(run) = allocator.alloc_run(max, keep_free) {
                    return Ok(run);
                }
                allocator.free()
            };
            if !self.wait_for_released_pages()? {
                let free = free.saturating_sub(keep_free);
                return Err(RvmError::NoPhysicalSpace { requested: 1, free });
            }
        }
    }

    /// Makes sure `needed` pages can be allocated leaving `keep_free` free.
    pub(crate) fn ensure_free(&self, needed: u64, keep_free: u64) -> Result<(), RvmError> {
        loop {
            let free = lock(&self.allocator).free();
            if free >= needed.saturating_add(keep_free) {
                return Ok(());
            }
            if !self.wait_for_released_pages()? {
                let free = free.saturating_sub(keep_free);
                return Err(RvmError::NoPhysicalSpace { requested: needed, free });
            }
        }
    }

    /// If closed transactions await their switch, waits for it so their
    /// freed pages return. Returns whether there was anything to wait for.
    fn wait_for_released_pages(&self) -> Result<bool, RvmError> {
        let target = {
            let queue = lock(&self.queue);
            if !queue.pending() {
                return Ok(false);
            }
            queue.last_closed
        };
        self.wait_durable(target)?;
        Ok(true)
    }

    /// Waits until `sequence` is durable, leading a switch when none is in flight.
    pub(crate) fn wait_durable(&self, sequence: u64) -> Result<(), RvmError> {
        let mut queue = lock(&self.queue);
        let sequence = sequence.min(queue.last_closed);
        loop {
            if queue.durable >= sequence {
                return Ok(());
            }
            if queue.failed {
                return Err(RvmError::Poisoned);
            }
            if !queue.in_flight && !queue.closed.is_empty() {
                let batch = std::mem::take(&mut queue.closed);
                let slot = queue.next_slot;
                queue.in_flight = true;
                drop(queue);
                let result = self.switch_batch(&batch, slot);
                queue = lock(&self.queue);
                queue.in_flight = false;
                match result {
                    Ok(durable) => {
                        queue.durable = durable;
                        queue.next_slot = slot.other();
                        if queue.waiting > 0 {
                            self.queue_changed.notify_all();
                        }
                    }
                    Err(error) => {
                        queue.failed = true;
                        self.poisoned.store(true, Ordering::Release);
                        self.queue_changed.notify_all();
                        return Err(error);
                    }
                }
                continue;
            }
            queue.waiting += 1;
            queue = self.queue_changed.wait(queue).unwrap_or_else(PoisonError::into_inner);
            queue.waiting -= 1;
        }
    }

    /// Persists a batch of closed transactions and switches to the newest.
    fn switch_batch(&self, batch: &[ClosedTx], slot: CommitSlot) -> Result<u64, RvmError> {
        let newest = batch.last().expect("a batch holds at least one transaction");
        let sequence = newest.sequence;
        let mut persist: Vec<PageRun> =
            batch.iter().flat_map(|c| c.persist.iter().copied()).collect();
        coalesce_runs(&mut persist);
        self.store.persist(&persist).map_err(|source| RvmError::Persist { sequence, source })?;
        self.store
            .switch_commit(slot, &newest.record)
            .map_err(|source| RvmError::SwitchCommit { slot, sequence, source })?;
        let superseded = std::mem::replace(
            &mut *self.committed.write().unwrap_or_else(PoisonError::into_inner),
            Arc::clone(&newest.snapshot),
        );
        drop(superseded);
        let mut freed: Vec<PageRun> = batch.iter().flat_map(|c| c.freed.iter().copied()).collect();
        coalesce_runs(&mut freed);
        if let Err(error) = self.store.discard(&freed) {
            tracing::warn!(%error, "discarding freed pages failed; they are free all the same");
        }
        let mut allocator = lock(&self.allocator);
        for run in freed {
            allocator.release(run);
        }
        drop(allocator);
        let persisted: u64 = persist.iter().map(|r| r.count).sum();
        self.counters.switches.fetch_add(1, Ordering::Relaxed);
        self.counters.persisted_pages.fetch_add(persisted, Ordering::Relaxed);
        tracing::trace!(sequence, transactions = batch.len(), persisted, "switched commit record");
        Ok(sequence)
    }
}
