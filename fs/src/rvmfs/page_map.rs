//! The page map: a radix tree from a 64-bit index to a logical RVM page.
//!
//! Regular files map file block `i` (bytes `i*4096..`) to the logical page
//! holding it, and the inode table maps `ino / 16` to the page holding 16
//! inode records. A missing entry (0; logical page 0 is RVM's own and never a
//! user page) is a hole. Each node is one logical page of 512 little-endian
//! `u64` entries, so 4 levels cover 2^36 blocks (256 TiB). The tree grows at
//! the top when an index beyond its capacity is set; it never copies data:
//! setting one entry rewrites only the nodes on its path, which RVM shadows.
//!
//! ```text
//! MapRoot { root, levels }         node page: [u64 entry; 512]   (entry 0 = none)
//!        root ─┬─ entry 0 ─ node ─┬─ entry 0 ─ data page (block 0)
//!              │                  └─ entry 511 ─ data page (block 511)
//!              └─ entry 1 ─ node ── ... (blocks 512*512 ..)
//! ```

use crate::{PageRange, PageRef, PageStore, Transaction, PAGE_SIZE};

use super::error::{FsError, FsResult};

/// Entries per node.
pub const FANOUT: u64 = 512;
/// Most levels a map may have (512^5 = 2^45 entries).
pub const MAX_LEVELS: u8 = 5;

/// Where a map's tree starts: root node page (0 = empty map) and height.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapRoot {
    /// Logical page of the root node; 0 when the map is empty.
    pub root: u64,
    /// Levels of nodes under and including the root.
    pub levels: u8,
}

/// Number of indices a tree of `levels` levels covers.
pub fn capacity(levels: u8) -> u64 {
    if levels == 0 {
        0
    } else {
        FANOUT.saturating_pow(u32::from(levels))
    }
}

fn span_of_child(level: u8) -> u64 {
    FANOUT.pow(u32::from(level))
}

fn read_node<S: PageStore>(tx: &Transaction<S>, page: u64) -> FsResult<Box<[u64; 512]>> {
    let mut bytes = vec![0u8; PAGE_SIZE];
    tx.read(PageRef::page_start(page), &mut bytes)?;
    let mut node = Box::new([0u64; 512]);
    for (entry, chunk) in node.iter_mut().zip(bytes.chunks_exact(8)) {
        *entry = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
    }
    Ok(node)
}

fn write_node<S: PageStore>(tx: &mut Transaction<S>, page: u64, node: &[u64; 512]) -> FsResult<()> {
    let bytes: Vec<u8> = node.iter().flat_map(|e| e.to_le_bytes()).collect();
    tx.write(PageRef::page_start(page), &bytes)?;
    Ok(())
}

fn read_entry<S: PageStore>(tx: &Transaction<S>, node: u64, index: u64) -> FsResult<u64> {
    let mut bytes = [0u8; 8];
    tx.read(PageRef::new(node, (index * 8) as usize), &mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

fn write_entry<S: PageStore>(
    tx: &mut Transaction<S>,
    node: u64,
    index: u64,
    value: u64,
) -> FsResult<()> {
    tx.write(PageRef::new(node, (index * 8) as usize), &value.to_le_bytes())?;
    Ok(())
}

/// Allocates one zeroed node page.
pub(crate) fn alloc_page<S: PageStore>(tx: &mut Transaction<S>) -> FsResult<u64> {
    Ok(tx.alloc_pages(1)?.start)
}

/// The entry at `index` (0 when it is a hole).
pub fn get<S: PageStore>(tx: &Transaction<S>, map: MapRoot, index: u64) -> FsResult<u64> {
    if map.root == 0 || index >= capacity(map.levels) {
        return Ok(0);
    }
    let mut node = map.root;
    for level in (0..map.levels).rev() {
        let entry = read_entry(tx, node, (index / span_of_child(level)) % FANOUT)?;
        if entry == 0 || level == 0 {
            return Ok(entry);
        }
        node = entry;
    }
    Ok(0)
}

/// The entries `first..first + count` (0 for holes), reading each leaf once.
pub fn get_run<S: PageStore>(
    tx: &Transaction<S>,
    map: MapRoot,
    first: u64,
    count: u64,
) -> FsResult<Vec<u64>> {
    let mut out = Vec::with_capacity(count.min(1 << 20) as usize);
    let cap = capacity(map.levels);
    let mut index = first;
    let end = first.saturating_add(count);
    while index < end {
        let slot = index % FANOUT;
        let n = (FANOUT - slot).min(end - index);
        let leaf = if map.root == 0 || index >= cap { 0 } else { leaf_of(tx, map, index)? };
        if leaf == 0 {
            out.extend(std::iter::repeat_n(0, n as usize));
        } else {
            let mut bytes = vec![0u8; n as usize * 8];
            tx.read(PageRef::new(leaf, (slot * 8) as usize), &mut bytes)?;
            out.extend(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8"))));
        }
        index += n;
    }
    Ok(out)
}

/// The leaf covering `index` (0 when a node on the path is missing).
fn leaf_of<S: PageStore>(tx: &Transaction<S>, map: MapRoot, index: u64) -> FsResult<u64> {
    let mut node = map.root;
    for level in (1..map.levels).rev() {
        node = read_entry(tx, node, (index / span_of_child(level)) % FANOUT)?;
        if node == 0 {
            return Ok(0);
        }
    }
    Ok(node)
}

/// Grows the tree until it covers `index`.
fn grow<S: PageStore>(tx: &mut Transaction<S>, map: &mut MapRoot, index: u64) -> FsResult<()> {
    if map.root == 0 {
        map.levels = 1;
        while capacity(map.levels) <= index {
            map.levels += 1;
        }
        if map.levels > MAX_LEVELS {
            return Err(super::error::posix(libc::EFBIG));
        }
        map.root = alloc_page(tx)?;
        return Ok(());
    }
    while capacity(map.levels) <= index {
        if map.levels >= MAX_LEVELS {
            return Err(super::error::posix(libc::EFBIG));
        }
        let root = alloc_page(tx)?;
        write_entry(tx, root, 0, map.root)?;
        map.root = root;
        map.levels += 1;
    }
    Ok(())
}

/// Sets `values.len()` consecutive entries from `first` (0 clears an entry;
/// cleared entries leave their nodes in place). Each leaf is written once.
pub fn set_run<S: PageStore>(
    tx: &mut Transaction<S>,
    map: &mut MapRoot,
    first: u64,
    values: &[u64],
) -> FsResult<()> {
    if values.is_empty() {
        return Ok(());
    }
    grow(tx, map, first + values.len() as u64 - 1)?;
    let mut done = 0usize;
    while done < values.len() {
        let index = first + done as u64;
        let leaf = leaf_for(tx, map, index)?;
        let slot = index % FANOUT;
        let count = ((FANOUT - slot) as usize).min(values.len() - done);
        let bytes: Vec<u8> =
            values[done..done + count].iter().flat_map(|v| v.to_le_bytes()).collect();
        tx.write(PageRef::new(leaf, (slot * 8) as usize), &bytes)?;
        done += count;
    }
    Ok(())
}

/// Sets one entry.
pub fn set<S: PageStore>(
    tx: &mut Transaction<S>,
    map: &mut MapRoot,
    index: u64,
    value: u64,
) -> FsResult<()> {
    set_run(tx, map, index, &[value])
}

/// The leaf node covering `index`, creating the nodes on the way.
fn leaf_for<S: PageStore>(tx: &mut Transaction<S>, map: &MapRoot, index: u64) -> FsResult<u64> {
    let mut node = map.root;
    for level in (1..map.levels).rev() {
        let slot = (index / span_of_child(level)) % FANOUT;
        let mut child = read_entry(tx, node, slot)?;
        if child == 0 {
            child = alloc_page(tx)?;
            write_entry(tx, node, slot, child)?;
        }
        node = child;
    }
    Ok(node)
}

/// The first index at or after `from` with an entry.
pub fn next_present<S: PageStore>(
    tx: &Transaction<S>,
    map: MapRoot,
    from: u64,
) -> FsResult<Option<u64>> {
    if map.root == 0 || from >= capacity(map.levels) {
        return Ok(None);
    }
    scan(tx, map.root, map.levels - 1, 0, from, true)
}

/// The first index at or after `from` without an entry.
pub fn next_absent<S: PageStore>(tx: &Transaction<S>, map: MapRoot, from: u64) -> FsResult<u64> {
    if map.root == 0 || from >= capacity(map.levels) {
        return Ok(from);
    }
    Ok(scan(tx, map.root, map.levels - 1, 0, from, false)?
        .unwrap_or_else(|| capacity(map.levels).max(from)))
}

fn scan<S: PageStore>(
    tx: &Transaction<S>,
    node: u64,
    level: u8,
    base: u64,
    from: u64,
    present: bool,
) -> FsResult<Option<u64>> {
    let entries = read_node(tx, node)?;
    let span = span_of_child(level);
    let start = from.saturating_sub(base) / span;
    for slot in start..FANOUT {
        let child_base = base + slot * span;
        let entry = entries[slot as usize];
        if level == 0 {
            if (entry != 0) == present {
                return Ok(Some(child_base.max(from)));
            }
            continue;
        }
        if entry == 0 {
            if !present {
                return Ok(Some(child_base.max(from)));
            }
            continue;
        }
        if let Some(found) = scan(tx, entry, level - 1, child_base, from.max(child_base), present)?
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Clears the entries in `from..end`, handing each present value to
/// `removed`, and frees the nodes that become empty (the root too).
pub fn clear_range<S: PageStore>(
    tx: &mut Transaction<S>,
    map: &mut MapRoot,
    from: u64,
    end: u64,
    removed: &mut dyn FnMut(u64),
) -> FsResult<()> {
    let end = end.min(capacity(map.levels));
    if map.root == 0 || from >= end {
        return Ok(());
    }
    if clear_node(tx, map.root, map.levels - 1, 0, from, end, removed)? {
        tx.free_pages(PageRange { start: map.root, count: 1 })?;
        *map = MapRoot::default();
    }
    Ok(())
}

/// Clears `from..end` under `node`; returns whether the node is now empty.
fn clear_node<S: PageStore>(
    tx: &mut Transaction<S>,
    node: u64,
    level: u8,
    base: u64,
    from: u64,
    end: u64,
    removed: &mut dyn FnMut(u64),
) -> FsResult<bool> {
    let mut entries = read_node(tx, node)?;
    let span = span_of_child(level);
    let mut changed = false;
    for slot in 0..FANOUT {
        let child_base = base + slot * span;
        let child_end = child_base + span;
        let entry = entries[slot as usize];
        if entry == 0 || child_end <= from || child_base >= end {
            continue;
        }
        if level == 0 {
            removed(entry);
            entries[slot as usize] = 0;
            changed = true;
            continue;
        }
        if clear_node(tx, entry, level - 1, child_base, from, end, removed)? {
            tx.free_pages(PageRange { start: entry, count: 1 })?;
            entries[slot as usize] = 0;
            changed = true;
        }
    }
    let empty = entries.iter().all(|&e| e == 0);
    if changed && !empty {
        write_node(tx, node, &entries)?;
    }
    Ok(empty)
}

/// Checks that a map root read from media is plausible.
pub fn check_root(map: MapRoot, structure: &'static str, page: u64) -> FsResult<()> {
    if map.levels > MAX_LEVELS || (map.root == 0) != (map.levels == 0) {
        let reason = format!("map root {} with {} levels", map.root, map.levels);
        return Err(FsError::corrupt(structure, page, reason));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FormatOptions, MemStore, Rvm};

    fn rvm() -> Rvm<MemStore> {
        Rvm::format(MemStore::new(4096), FormatOptions::default()).unwrap()
    }

    #[test]
    fn entries_far_apart_cost_only_the_nodes_on_their_paths() {
        let rvm = rvm();
        let mut tx = rvm.begin().unwrap();
        let mut map = MapRoot::default();
        set(&mut tx, &mut map, 3, 100).unwrap();
        assert_eq!(map.levels, 1);
        set(&mut tx, &mut map, (1 << 28) - 1, 200).unwrap();
        assert_eq!(map.levels, 4);
        assert_eq!(get(&tx, map, 3).unwrap(), 100);
        assert_eq!(get(&tx, map, (1 << 28) - 1).unwrap(), 200);
        assert_eq!(get(&tx, map, 4).unwrap(), 0);
        assert_eq!(get(&tx, map, u64::MAX).unwrap(), 0);
        assert_eq!(next_present(&tx, map, 4).unwrap(), Some((1 << 28) - 1));
        assert_eq!(next_absent(&tx, map, 3).unwrap(), 4);
        assert_eq!(next_absent(&tx, map, (1 << 28) - 1).unwrap(), 1 << 28);
        assert_eq!(next_present(&tx, map, 1 << 28).unwrap(), None);
        tx.commit().unwrap();
    }

    #[test]
    fn clearing_a_range_reports_values_and_frees_empty_nodes() {
        let rvm = rvm();
        let mut tx = rvm.begin().unwrap();
        let mut map = MapRoot::default();
        let values: Vec<u64> = (1000..2000).collect();
        set_run(&mut tx, &mut map, 100, &values).unwrap();
        assert_eq!(get(&tx, map, 1099).unwrap(), 1999);
        let mut removed = Vec::new();
        clear_range(&mut tx, &mut map, 600, u64::MAX, &mut |v| removed.push(v)).unwrap();
        assert_eq!(removed.len(), 500);
        assert_eq!(next_present(&tx, map, 600).unwrap(), None);
        assert_eq!(get(&tx, map, 599).unwrap(), 1499);
        clear_range(&mut tx, &mut map, 0, u64::MAX, &mut |v| removed.push(v)).unwrap();
        assert_eq!(map, MapRoot::default());
        assert_eq!(removed.len(), 1000);
        tx.commit().unwrap();
        assert!(rvm.check().unwrap().is_clean());
    }

    #[test]
    fn a_map_beyond_the_maximum_height_is_efbig() {
        let rvm = rvm();
        let mut tx = rvm.begin().unwrap();
        let mut map = MapRoot::default();
        let error = set(&mut tx, &mut map, capacity(MAX_LEVELS), 1).unwrap_err();
        assert_eq!(error.errno(), libc::EFBIG);
        assert!(check_root(MapRoot { root: 0, levels: 2 }, "file map", 9).is_err());
    }
}
