//! The page table in memory: a copy-on-write radix tree of shared nodes.
//!
//! Each node mirrors one on-media node (`page_table`) and knows the physical
//! page that holds it. A node the open transaction changes is *shadowed*
//! once: it gets a fresh physical page at its first change (the old page is
//! released to the transaction's free list) and is marked dirty; later changes
//! in the same transaction edit it in place. Sealing writes every dirty node
//! bottom-up, so each parent entry carries its child's checksum.
//!
//! Nodes are shared (`Arc`) between the committed snapshot, closed
//! transactions and the open transaction: copying a tree is O(1), and a
//! change copies only the nodes on its path. Shadowing is decided by the
//! dirty flag, never by sharing, because a node owned by one tree may still be
//! named by a commit record being written.

use std::sync::Arc;

use crate::error::RvmError;
use crate::page_table::{encode_node_with, TableEntry, CHECKED, ENTRIES_PER_NODE, FRESH, PRESENT};
use crate::PAGE_SIZE;

/// Where sealing writes a node: (physical page, encoded node).
pub(crate) type NodeWriter<'a> = dyn FnMut(u64, &[u8; PAGE_SIZE]) -> Result<(), RvmError> + 'a;

/// Where a tree gets pages for shadowed nodes and where it returns old ones.
pub(crate) trait NodePages {
    /// A free physical page for a new or shadowed node.
    fn alloc_node(&mut self) -> Result<u64, RvmError>;
    /// A page the tree no longer uses (freed only after the next switch).
    fn release(&mut self, page: u64);
}

#[derive(Debug, Clone)]
pub(crate) enum NodeBody {
    Leaf(Box<[TableEntry; ENTRIES_PER_NODE]>),
    Interior(Box<[Option<Arc<TableNode>>; ENTRIES_PER_NODE]>),
}

/// One page-table node in memory.
#[derive(Debug, Clone)]
pub(crate) struct TableNode {
    /// Physical page holding this node.
    page: u64,
    /// Checksum of the node's encoding; valid when not dirty.
    crc: u32,
    /// Changed by the open transaction; written at its close.
    dirty: bool,
    /// Present entries.
    live: u16,
    body: NodeBody,
}

impl TableNode {
    fn empty(level: u8, page: u64) -> TableNode {
        let body = if level == 0 {
            NodeBody::Leaf(Box::new([TableEntry::EMPTY; ENTRIES_PER_NODE]))
        } else {
            NodeBody::Interior(Box::new([const { None }; ENTRIES_PER_NODE]))
        };
        TableNode { page, crc: 0, dirty: true, live: 0, body }
    }

    /// A node read from media.
    pub fn loaded(page: u64, crc: u32, body: NodeBody) -> TableNode {
        let live = match &body {
            NodeBody::Leaf(entries) => entries.iter().filter(|e| e.is_present()).count(),
            NodeBody::Interior(children) => children.iter().filter(|c| c.is_some()).count(),
        };
        TableNode { page, crc, dirty: false, live: live as u16, body }
    }

    /// Physical page of the node.
    pub fn page(&self) -> u64 {
        self.page
    }
}

/// The page table: logical page -> table entry.
#[derive(Debug, Clone)]
pub(crate) struct PageTree {
    levels: u8,
    root: Arc<TableNode>,
}

fn index_at(logical: u64, level: u8) -> usize {
    (logical >> (8 * u32::from(level))) as usize & (ENTRIES_PER_NODE - 1)
}

impl PageTree {
    /// An empty tree whose root will live in `root_page`.
    pub fn new(levels: u8, root_page: u64) -> PageTree {
        PageTree { levels, root: Arc::new(TableNode::empty(levels - 1, root_page)) }
    }

    /// A tree read from media.
    pub fn from_root(levels: u8, root: TableNode) -> PageTree {
        PageTree { levels, root: Arc::new(root) }
    }

    pub fn root(&self) -> &TableNode {
        &self.root
    }

    /// The entry for `logical` (EMPTY if unmapped).
    pub fn get(&self, logical: u64) -> TableEntry {
        let mut node = &self.root;
        let mut level = self.levels - 1;
        loop {
            match &node.body {
                NodeBody::Leaf(entries) => return entries[index_at(logical, 0)],
                NodeBody::Interior(children) => match &children[index_at(logical, level)] {
                    Some(child) => node = child,
                    None => return TableEntry::EMPTY,
                },
            }
            level -= 1;
        }
    }

    /// Sets the entry for `logical`, shadowing the nodes on its path, and
    /// returns the old entry. Setting EMPTY prunes nodes left empty.
    pub fn set(
        &mut self,
        logical: u64,
        entry: TableEntry,
        pages: &mut dyn NodePages,
    ) -> Result<TableEntry, RvmError> {
        if !entry.is_present() && !self.get(logical).is_present() {
            return Ok(TableEntry::EMPTY);
        }
        set_in(&mut self.root, self.levels - 1, logical, entry, pages)
    }

    /// Calls `f` with every mapped logical page and its entry, in order.
    pub fn for_each_mapped(&self, f: &mut dyn FnMut(u64, TableEntry)) {
        visit_mapped(&self.root, self.levels - 1, 0, f);
    }

    /// Writes every dirty node (children before parents) through `emit` and
    /// returns the root's checksum.
    pub fn seal(&mut self, emit: &mut NodeWriter<'_>) -> Result<u32, RvmError> {
        seal_node(&mut self.root, emit)
    }
}

fn visit_mapped(node: &TableNode, level: u8, first: u64, f: &mut dyn FnMut(u64, TableEntry)) {
    match &node.body {
        NodeBody::Leaf(entries) => {
            for (i, entry) in entries.iter().enumerate().filter(|(_, e)| e.is_present()) {
                f(first + i as u64, *entry);
            }
        }
        NodeBody::Interior(children) => {
            let span = 1u64 << (8 * u32::from(level));
            for (i, child) in children.iter().enumerate() {
                if let Some(child) = child {
                    visit_mapped(child, level - 1, first + i as u64 * span, f);
                }
            }
        }
    }
}

/// Makes `node` writable in this transaction, shadowing it at its first change.
fn make_dirty<'a>(
    node: &'a mut Arc<TableNode>,
    pages: &mut dyn NodePages,
) -> Result<&'a mut TableNode, RvmError> {
    if node.dirty {
        return Ok(Arc::make_mut(node));
    }
    let page = pages.alloc_node()?;
    let node = Arc::make_mut(node);
    pages.release(node.page);
    node.page = page;
    node.dirty = true;
    Ok(node)
}

fn set_in(
    node: &mut Arc<TableNode>,
    level: u8,
    logical: u64,
    entry: TableEntry,
    pages: &mut dyn NodePages,
) -> Result<TableEntry, RvmError> {
    let index = index_at(logical, level);
    let node = make_dirty(node, pages)?;
    match &mut node.body {
        NodeBody::Leaf(entries) => {
            let old = entries[index];
            entries[index] = entry;
            match (old.is_present(), entry.is_present()) {
                (false, true) => node.live += 1,
                (true, false) => node.live -= 1,
                _ => {}
            }
            Ok(old)
        }
        NodeBody::Interior(children) => {
            let child = match &mut children[index] {
                Some(child) => child,
                slot => {
                    let page = pages.alloc_node()?;
                    node.live += 1;
                    slot.insert(Arc::new(TableNode::empty(level - 1, page)))
                }
            };
            let old = set_in(child, level - 1, logical, entry, pages)?;
            if child.live == 0 {
                pages.release(child.page);
                children[index] = None;
                node.live -= 1;
            }
            Ok(old)
        }
    }
}

fn seal_node(node: &mut Arc<TableNode>, emit: &mut NodeWriter<'_>) -> Result<u32, RvmError> {
    if !node.dirty {
        return Ok(node.crc);
    }
    let node = Arc::make_mut(node);
    let mut bytes = [0u8; PAGE_SIZE];
    match &mut node.body {
        NodeBody::Leaf(leaf) => {
            for entry in leaf.iter_mut() {
                entry.flags &= !FRESH;
            }
            encode_node_with(&mut bytes, |i| leaf[i]);
        }
        NodeBody::Interior(children) => {
            for child in children.iter_mut().flatten() {
                seal_node(child, emit)?;
            }
            encode_node_with(&mut bytes, |i| match &children[i] {
                Some(child) => {
                    TableEntry { page: child.page, crc: child.crc, flags: PRESENT | CHECKED }
                }
                None => TableEntry::EMPTY,
            });
        }
    }
    node.crc = crc32c::crc32c(&bytes);
    node.dirty = false;
    emit(node.page, &bytes)?;
    Ok(node.crc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_table::decode_node;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Pages {
        next: u64,
        released: Vec<u64>,
    }

    impl NodePages for Pages {
        fn alloc_node(&mut self) -> Result<u64, RvmError> {
            self.next += 1;
            Ok(1000 + self.next)
        }
        fn release(&mut self, page: u64) {
            self.released.push(page);
        }
    }

    fn sealed(tree: &mut PageTree) -> (u32, BTreeMap<u64, [u8; PAGE_SIZE]>) {
        let mut written = BTreeMap::new();
        let crc = tree
            .seal(&mut |page, bytes| {
                written.insert(page, *bytes);
                Ok(())
            })
            .unwrap();
        (crc, written)
    }

    #[test]
    fn entries_set_in_a_three_level_tree_read_back() {
        let mut pages = Pages::default();
        let mut tree = PageTree::new(3, 1);
        for logical in [0, 255, 256, 65_535, 65_536, 16_777_215] {
            tree.set(logical, TableEntry::fresh(logical + 7), &mut pages).unwrap();
        }
        assert_eq!(tree.get(65_536).page, 65_543);
        assert_eq!(tree.get(1), TableEntry::EMPTY);
        assert_eq!(tree.get(16_777_215).page, 16_777_222);
    }

    #[test]
    fn a_sealed_node_is_shadowed_once_per_transaction() {
        let mut pages = Pages::default();
        let mut tree = PageTree::new(2, 1);
        tree.set(3, TableEntry::fresh(50), &mut pages).unwrap();
        let (_, written) = sealed(&mut tree);
        assert_eq!(written.keys().copied().collect::<Vec<_>>(), vec![1, 1001]);
        let snapshot = tree.clone();
        let mut pages = Pages { next: 10, ..Pages::default() };
        tree.set(4, TableEntry::fresh(51), &mut pages).unwrap();
        tree.set(5, TableEntry::fresh(52), &mut pages).unwrap();
        assert_eq!(pages.released, vec![1, 1001], "root and leaf were shadowed once each");
        assert_eq!(snapshot.get(4), TableEntry::EMPTY, "the snapshot is unchanged");
        assert_eq!(snapshot.root().page(), 1);
        assert_eq!(tree.root().page(), 1011);
    }

    #[test]
    fn sealing_writes_children_with_their_checksums_in_the_parent() {
        let mut pages = Pages::default();
        let mut tree = PageTree::new(2, 1);
        tree.set(300, TableEntry::fresh(9), &mut pages).unwrap();
        let (root_crc, written) = sealed(&mut tree);
        let root = decode_node(&written[&1]).unwrap();
        let leaf_page = root[1].page;
        assert_eq!(root[1].crc, crc32c::crc32c(&written[&leaf_page]));
        assert_eq!(root_crc, crc32c::crc32c(&written[&1]));
        let leaf = decode_node(&written[&leaf_page]).unwrap();
        assert_eq!(leaf[300 % 256], TableEntry { page: 9, crc: 0, flags: PRESENT });
        assert!(!tree.get(300).is_fresh(), "sealing ends freshness");
    }

    #[test]
    fn clearing_the_last_entry_prunes_the_leaf() {
        let mut pages = Pages::default();
        let mut tree = PageTree::new(2, 1);
        tree.set(700, TableEntry::fresh(9), &mut pages).unwrap();
        let leaf = 1001;
        let old = tree.set(700, TableEntry::EMPTY, &mut pages).unwrap();
        assert_eq!(old.page, 9);
        assert!(pages.released.contains(&leaf));
        let (_, written) = sealed(&mut tree);
        assert!(decode_node(&written[&1]).unwrap().iter().all(|e| !e.is_present()));
        let before = pages.next;
        tree.set(701, TableEntry::EMPTY, &mut pages).unwrap();
        assert_eq!(pages.next, before, "clearing an unmapped page shadows nothing");
    }
}
