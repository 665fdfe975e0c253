//! Recovery: load the last committed state from a store, checking it on the way.
//!
//! Recovery reads both commit slots, takes the newest valid record, and walks
//! what it names: every page-table node (verified against the checksum its
//! parent holds) and every allocation map page. It reads metadata only, so
//! its time is proportional to the table and the maps, never to the data.
//! It writes nothing: pages that an interrupted commit allocated are free in
//! the committed physical map, so they are reclaimed simply by not being
//! marked. The same walk serves [`check_store`], which reports instead of
//! failing, and every bound (page numbers, depth, a page reached twice) is
//! checked before it is followed, so corrupt media yields problems, not panics
//! or unbounded work.

use std::sync::Arc;

use crate::allocation_map::AllocationMap;
use crate::check::{CheckReport, Problem};
use crate::commit_record::{newest, CommitRecord};
use crate::error::RvmError;
use crate::geometry::{levels_for, Geometry};
use crate::page_table::{decode_node, TableEntry, ENTRIES_PER_NODE};
use crate::store::{CommitSlot, PageStore};
use crate::tree::{NodeBody, PageTree, TableNode};
use crate::PAGE_SIZE;

/// The committed state as loaded from the store.
#[derive(Debug)]
pub(crate) struct Committed {
    pub record: CommitRecord,
    pub slot: CommitSlot,
    pub geometry: Geometry,
    pub tree: PageTree,
    pub physical: AllocationMap,
    pub logical: AllocationMap,
}

/// Reads the newest valid commit record and checks it against the store.
pub(crate) fn read_newest_record<S: PageStore>(
    store: &S,
) -> Result<(CommitSlot, CommitRecord, Geometry), RvmError> {
    let mut decoded = Vec::with_capacity(2);
    for slot in CommitSlot::ALL {
        let bytes = store
            .read_commit_slot(slot)
            .map_err(|source| RvmError::ReadCommitSlot { slot, source })?;
        decoded.push(CommitRecord::decode(&bytes));
    }
    let decoded = [decoded.remove(0), decoded.remove(0)];
    let (index, record) = match (newest(&decoded), decoded) {
        (Some(found), _) => found,
        (None, [Err(slot_a), Err(slot_b)]) => {
            return Err(RvmError::NoCommitRecord { slot_a, slot_b })
        }
        (None, _) => unreachable!("newest() finds any valid record"),
    };
    if record.physical_pages != store.page_count() {
        return Err(RvmError::GeometryMismatch {
            record: record.physical_pages,
            store: store.page_count(),
        });
    }
    let geometry = Geometry::new(record.physical_pages, record.logical_pages)?;
    let expected = levels_for(record.logical_pages);
    if record.table_levels != expected {
        return Err(RvmError::TableLevelsMismatch { levels: record.table_levels, expected });
    }
    Ok((CommitSlot::ALL[index], record, geometry))
}

/// Walks the committed state. Returns the report and, when the table and
/// maps could be read, the loaded state.
pub(crate) fn walk<S: PageStore>(store: &S) -> Result<(CheckReport, Option<Committed>), RvmError> {
    let (slot, record, geometry) = read_newest_record(store)?;
    let mut walk = Walk {
        store,
        geometry,
        owned: AllocationMap::new(geometry.physical_pages()),
        report: CheckReport { sequence: record.sequence, slot: Some(slot), ..Default::default() },
    };
    let root = walk.load_node(
        TableEntry::checked(record.table_root, record.table_root_crc),
        record.table_levels - 1,
        0,
    )?;
    let Some(root) = root else { return Ok((walk.report, None)) };
    let tree = PageTree::from_root(record.table_levels, root);
    let physical =
        walk.load_map(&tree, geometry.physical_pages(), |i| geometry.physical_map_page(i))?;
    let logical =
        walk.load_map(&tree, geometry.logical_pages(), |i| geometry.logical_map_page(i))?;
    let (Some(physical), Some(logical)) = (physical, logical) else {
        return Ok((walk.report, None));
    };
    walk.cross_check(&tree, &physical, &logical);
    let committed = Committed { record, slot, geometry, tree, physical, logical };
    Ok((walk.report, Some(committed)))
}

/// Walks the committed state of `store` and reports every problem found,
/// without opening it. Fails only when the store cannot be read or holds no
/// valid commit record.
pub fn check_store<S: PageStore>(store: &S) -> Result<CheckReport, RvmError> {
    walk(store).map(|(report, _)| report)
}

/// The outcome of reading a checksummed page.
enum Checked {
    Good(Box<[u8; PAGE_SIZE]>),
    /// Not read: the problem is already reported.
    Refused,
    BadChecksum,
}

struct Walk<'a, S> {
    store: &'a S,
    geometry: Geometry,
    owned: AllocationMap,
    report: CheckReport,
}

impl<S: PageStore> Walk<'_, S> {
    /// Marks `page` as used by the structure being walked; false if it cannot be.
    fn claim(&mut self, page: u64) -> bool {
        if page >= self.geometry.physical_pages() {
            self.report.push(Problem::OutsideStore { page });
            return false;
        }
        if self.owned.set(page) {
            self.report.push(Problem::DoublyOwned { page });
            return false;
        }
        true
    }

    /// Reads the page `entry` names and verifies its checksum.
    fn read_checked(&mut self, entry: TableEntry) -> Result<Checked, RvmError> {
        let page = entry.page;
        if !entry.is_checked() {
            self.report.push(Problem::UncheckedEntry { page });
            return Ok(Checked::Refused);
        }
        if !self.claim(page) {
            return Ok(Checked::Refused);
        }
        let mut bytes = Box::new([0u8; PAGE_SIZE]);
        self.store
            .read(page, 0, &mut bytes[..])
            .map_err(|source| RvmError::ReadTable { page, source })?;
        if crc32c::crc32c(&bytes[..]) != entry.crc {
            return Ok(Checked::BadChecksum);
        }
        Ok(Checked::Good(bytes))
    }

    /// Loads the node `entry` names, at `level`, covering logical pages from `first`.
    fn load_node(
        &mut self,
        entry: TableEntry,
        level: u8,
        first: u64,
    ) -> Result<Option<TableNode>, RvmError> {
        let page = entry.page;
        let bytes = match self.read_checked(entry)? {
            Checked::Good(bytes) => bytes,
            Checked::Refused => return Ok(None),
            Checked::BadChecksum => {
                self.report.push(Problem::TableChecksum { page });
                return Ok(None);
            }
        };
        let mut entries = match decode_node(&bytes) {
            Ok(entries) => entries,
            Err(source) => {
                self.report.push(Problem::BadTableNode { page, source });
                return Ok(None);
            }
        };
        self.report.table_nodes += 1;
        let span = 1u64 << (8 * u32::from(level));
        let logical_pages = self.geometry.logical_pages();
        if level == 0 {
            for (i, entry) in entries.iter_mut().enumerate().filter(|(_, e)| e.is_present()) {
                let logical = first + i as u64;
                if logical >= logical_pages {
                    self.report.push(Problem::MappedOutsideSpace { logical });
                    *entry = TableEntry::EMPTY;
                } else if logical >= self.geometry.system_pages() {
                    // Map pages are claimed when the maps are loaded.
                    if self.claim(entry.page) {
                        self.report.data_pages += 1;
                    } else {
                        *entry = TableEntry::EMPTY;
                    }
                }
            }
            return Ok(Some(TableNode::loaded(page, entry.crc, NodeBody::Leaf(entries))));
        }
        let mut children = Box::new([const { None }; ENTRIES_PER_NODE]);
        for (i, child) in entries.iter().enumerate().filter(|(_, e)| e.is_present()) {
            let child_first = first + i as u64 * span;
            if child_first >= logical_pages {
                self.report.push(Problem::MappedOutsideSpace { logical: child_first });
                continue;
            }
            children[i] = self.load_node(*child, level - 1, child_first)?.map(Arc::new);
        }
        Ok(Some(TableNode::loaded(page, entry.crc, NodeBody::Interior(children))))
    }

    /// Loads a map of `len` bits whose page `i` lives at logical page `logical_of(i)`.
    fn load_map(
        &mut self,
        tree: &PageTree,
        len: u64,
        logical_of: impl Fn(u64) -> u64,
    ) -> Result<Option<AllocationMap>, RvmError> {
        let mut map = AllocationMap::new(len);
        let mut complete = true;
        for index in 0..map.page_count() {
            let logical = logical_of(index);
            let entry = tree.get(logical);
            if !entry.is_present() {
                self.report.push(Problem::MapMissing { logical });
                complete = false;
                continue;
            }
            let page = entry.page;
            let bytes = match self.read_checked(entry) {
                Ok(Checked::Good(bytes)) => bytes,
                Ok(Checked::Refused) => {
                    complete = false;
                    continue;
                }
                Ok(Checked::BadChecksum) => {
                    self.report.push(Problem::MapChecksum { page });
                    complete = false;
                    continue;
                }
                Err(RvmError::ReadTable { page, source }) => {
                    return Err(RvmError::ReadMap { page, source })
                }
                Err(other) => return Err(other),
            };
            self.report.map_pages += 1;
            if let Err(source) = map.load_page(index, &bytes) {
                self.report.push(Problem::BadMapPage { page, source });
                complete = false;
            }
        }
        map.mark_clean();
        Ok(complete.then_some(map))
    }

    /// Compares what the walk found in use with what the maps say.
    fn cross_check(&mut self, tree: &PageTree, physical: &AllocationMap, logical: &AllocationMap) {
        for page in 0..self.geometry.physical_pages() {
            match (self.owned.get(page), physical.get(page)) {
                (true, false) => self.report.push(Problem::OwnedButFree { page }),
                (false, true) => self.report.push(Problem::Leaked { page }),
                _ => {}
            }
        }
        self.report.allocated_pages = physical.ones();
        for system in 0..self.geometry.system_pages() {
            if !logical.get(system) {
                self.report.push(Problem::SystemPageFree { logical: system });
            }
        }
        let mut unallocated = Vec::new();
        tree.for_each_mapped(&mut |page, _| {
            if !logical.get(page) {
                unallocated.push(page);
            }
        });
        for logical in unallocated {
            self.report.push(Problem::MappedButUnallocated { logical });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit_record::RecordError;
    use crate::page_table::encode_node;
    use crate::{FormatOptions, MemStore, PageRef, Rvm};

    /// Two committed user pages, "AAAA" and "BBBB".
    fn two_pages() -> (Arc<MemStore>, u64, u64) {
        let store = Arc::new(MemStore::new(512));
        let rvm = Rvm::format(Arc::clone(&store), FormatOptions::default()).unwrap();
        let mut tx = rvm.begin().unwrap();
        let range = tx.alloc_pages(2).unwrap();
        tx.write(PageRef::page_start(range.start), b"AAAA").unwrap();
        tx.write(PageRef::page_start(range.start + 1), b"BBBB").unwrap();
        tx.commit().unwrap();
        (store, range.start, range.start + 1)
    }

    fn read_page(store: &MemStore, page: u64) -> [u8; PAGE_SIZE] {
        let mut bytes = [0; PAGE_SIZE];
        store.read(page, 0, &mut bytes).unwrap();
        bytes
    }

    /// Changes the committed table entry of `logical` in place, as a media
    /// fault would, but with every checksum up to the record fixed, so that
    /// only the cross-checks can notice.
    fn tamper_entry(store: &MemStore, logical: u64, change: impl FnOnce(&mut TableEntry)) {
        let (slot, mut record, _) = read_newest_record(store).unwrap();
        let mut path = vec![record.table_root];
        for level in (1..record.table_levels).rev() {
            let node = decode_node(&read_page(store, *path.last().unwrap())).unwrap();
            path.push(node[(logical >> (8 * u32::from(level))) as usize & 255].page);
        }
        let mut change = Some(change);
        let mut new_crc = None;
        for (depth, &page) in path.iter().enumerate().rev() {
            let level = record.table_levels as usize - 1 - depth;
            let mut node = decode_node(&read_page(store, page)).unwrap();
            let entry = &mut node[(logical >> (8 * level)) as usize & 255];
            match new_crc {
                None => change.take().expect("the leaf comes first")(entry),
                Some(crc) => entry.crc = crc,
            }
            let mut bytes = [0; PAGE_SIZE];
            encode_node(&node, &mut bytes);
            store.corrupt(page, 0, &bytes);
            new_crc = Some(crc32c::crc32c(&bytes));
        }
        record.table_root_crc = new_crc.unwrap();
        store.corrupt_slot(slot, 0, &record.encode());
    }

    /// Changes a committed map page (by its logical page) and fixes its checksum.
    fn tamper_map(store: &MemStore, logical: u64, change: impl FnOnce(&mut [u8; PAGE_SIZE])) {
        let (_, committed) = walk(store).unwrap();
        let page = committed.unwrap().tree.get(logical).page;
        let mut bytes = read_page(store, page);
        change(&mut bytes);
        store.corrupt(page, 0, &bytes);
        tamper_entry(store, logical, |entry| entry.crc = crc32c::crc32c(&bytes));
    }

    fn first_problem(store: Arc<MemStore>) -> Problem {
        match Rvm::open(store) {
            Err(RvmError::Corrupt { first, .. }) => first,
            other => panic!("expected a corrupt store, got {other:?}"),
        }
    }

    #[test]
    fn recovery_ignores_a_commit_slot_torn_by_a_crash() {
        let store = crate::CrashStore::new(512);
        let rvm = Rvm::format(&store, FormatOptions::default()).unwrap();
        let mut tx = rvm.begin().unwrap();
        let range = tx.alloc_pages(1).unwrap();
        tx.write(range.first_byte(), b"old").unwrap();
        let old = tx.commit().unwrap();
        let mut tx = rvm.begin().unwrap();
        tx.write(range.first_byte(), b"new").unwrap();
        store.arm(1, crate::CrashMode::Tear { seed: 3 });
        assert!(tx.commit().is_err(), "the crash hits the switch");
        let (slot, _, _) = read_newest_record(&store.recovered()).unwrap();
        let torn = store.recovered().read_commit_slot(slot.other()).unwrap();
        assert!(matches!(CommitRecord::decode(&torn), Err(RecordError::Checksum { .. })));
        let rvm = Rvm::open(store.recovered()).unwrap();
        assert_eq!(rvm.durable_sequence(), old);
        let mut buf = [0; 3];
        rvm.read(range.first_byte(), &mut buf).unwrap();
        assert_eq!(&buf, b"old");
        assert!(rvm.check().unwrap().is_clean());
    }

    #[test]
    fn a_corrupt_table_node_is_reported_not_followed() {
        let (store, _, _) = two_pages();
        let (_, record, _) = read_newest_record(&*store).unwrap();
        store.corrupt(record.table_root, 100, &[0x55; 3]);
        let report = check_store(&*store).unwrap();
        assert_eq!(report.problems, vec![Problem::TableChecksum { page: record.table_root }]);
        assert_eq!(first_problem(store), Problem::TableChecksum { page: record.table_root });
    }

    #[test]
    fn check_finds_a_doubly_owned_page() {
        let (store, a, b) = two_pages();
        let (_, committed) = walk(&*store).unwrap();
        let tree = committed.unwrap().tree;
        let (page_a, page_b) = (tree.get(a).page, tree.get(b).page);
        tamper_entry(&store, b, |entry| entry.page = page_a);
        let report = check_store(&*store).unwrap();
        assert_eq!(
            report.problems,
            vec![Problem::DoublyOwned { page: page_a }, Problem::Leaked { page: page_b }]
        );
        assert_eq!(first_problem(store), Problem::DoublyOwned { page: page_a });
    }

    #[test]
    fn a_page_in_use_but_marked_free_is_refused() {
        let (store, a, _) = two_pages();
        let page = walk(&*store).unwrap().1.unwrap().tree.get(a).page;
        tamper_map(&store, 0, |bytes| bytes[page as usize / 8] &= !(1 << (page % 8)));
        assert_eq!(first_problem(store), Problem::OwnedButFree { page });
    }

    #[test]
    fn a_leaked_page_is_reported_and_reclaimed_at_open() {
        let (store, a, _) = two_pages();
        tamper_map(&store, 0, |bytes| bytes[500 / 8] |= 1 << (500 % 8));
        let report = check_store(&*store).unwrap();
        assert_eq!(report.problems, vec![Problem::Leaked { page: 500 }]);
        let rvm = Rvm::open(Arc::clone(&store)).unwrap();
        let mut tx = rvm.begin().unwrap();
        tx.write(PageRef::page_start(a), b"next").unwrap();
        tx.commit().unwrap();
        assert!(rvm.check().unwrap().is_clean(), "the next commit wrote the repaired map");
    }

    #[test]
    fn entries_pointing_outside_the_store_or_space_are_reported() {
        let (store, a, _) = two_pages();
        tamper_entry(&store, a, |entry| entry.page = u64::MAX);
        let report = check_store(&*store).unwrap();
        assert!(report.problems.contains(&Problem::OutsideStore { page: u64::MAX }), "{report}");
        let (store, _, _) = two_pages();
        tamper_entry(&store, a + 5, |entry| *entry = TableEntry::fresh(400));
        let report = check_store(&*store).unwrap();
        assert_eq!(
            report.problems,
            vec![
                Problem::OwnedButFree { page: 400 },
                Problem::MappedButUnallocated { logical: a + 5 }
            ]
        );
    }
}
