//! Directories: an on-RVM B+tree of entries keyed by a 62-bit name hash.
//!
//! Each node is one logical page. Leaves hold entries sorted by (hash, name);
//! entries whose names collide on the hash sit next to each other and are
//! told apart by name, and a leaf is never split inside such a run. Interior
//! nodes hold `(first key, child page)` pairs; the first pair's key is 0. A
//! directory of 100,000 entries is 3 levels, so lookup, insert and remove
//! touch 3 pages. Leaves emptied by removals are freed (no merging).
//! The hash is also the stable `readdir` cookie: an entry's position does not
//! move when others come and go, so offsets survive concurrent changes.
//!
//! ```text
//! node header (16 bytes): 0 magic u16 | 2 kind u8 (1 leaf, 2 interior) | 3 pad
//!                         4 count u16 | 6 bytes used after header u16 | 8..16 reserved
//! leaf record:    0 hash u64 | 8 ino u64 | 16 type u8 (DT_*) | 17 name len u8 | 18 name
//! interior entry: 0 first key u64 | 8 child page u64
//! ```
//! RVM checksums every page it persists, so nodes carry no checksum of their own.

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{PageRange, PageRef, PageStore, Transaction, PAGE_SIZE};

use super::error::{FsError, FsResult};
use super::page_map::alloc_page;

const NODE_MAGIC: u16 = 0xD1E5;
const LEAF: u8 = 1;
const INTERIOR: u8 = 2;
const HEADER_SIZE: usize = 16;
const BODY_SIZE: usize = PAGE_SIZE - HEADER_SIZE;
const RECORD_HEADER: usize = 18;
const MAX_CHILDREN: usize = BODY_SIZE / 16;
/// Longest name (bytes), as Linux's `NAME_MAX`.
pub const NAME_MAX: usize = 255;
/// Smallest entry hash: cookies 0 and 1 are `.` and `..`.
pub const FIRST_HASH: u64 = 2;

/// The node header.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct NodeHeader {
    magic: U16,
    kind: u8,
    pad: u8,
    count: U16,
    used: U16,
    reserved: [U32; 2],
}

const _: () = assert!(size_of::<NodeHeader>() == HEADER_SIZE);

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Hash of the name: the sort key and the readdir cookie.
    pub hash: u64,
    /// Inode the name links to.
    pub ino: u64,
    /// File type (`DT_*`).
    pub kind: u8,
    /// The name (1..=255 bytes, no `/` or NUL).
    pub name: Vec<u8>,
}

impl DirEntry {
    /// An entry for `name`.
    pub fn new(name: &[u8], ino: u64, kind: u8) -> DirEntry {
        DirEntry { hash: name_hash(name), ino, kind, name: name.to_vec() }
    }

    fn encoded_len(&self) -> usize {
        RECORD_HEADER + self.name.len()
    }
}

/// The 62-bit FNV-1a hash of a name, at least [`FIRST_HASH`].
pub fn name_hash(name: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in name {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash >> 2).max(FIRST_HASH)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Leaf(Vec<DirEntry>),
    Interior(Vec<(u64, u64)>),
}

fn corrupt(page: u64, reason: impl Into<String>) -> FsError {
    FsError::corrupt("directory node", page, reason)
}

fn decode(bytes: &[u8], page: u64) -> FsResult<Node> {
    let header = NodeHeader::read_from_bytes(&bytes[..HEADER_SIZE]).expect("16 bytes");
    if header.magic.get() != NODE_MAGIC {
        return Err(corrupt(page, format!("bad magic {:#06x}", header.magic.get())));
    }
    let count = usize::from(header.count.get());
    let used = usize::from(header.used.get());
    if used > BODY_SIZE {
        return Err(corrupt(page, format!("{used} bytes used")));
    }
    let body = &bytes[HEADER_SIZE..HEADER_SIZE + used];
    let word = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    match header.kind {
        LEAF => {
            let mut entries = Vec::with_capacity(count.min(BODY_SIZE / RECORD_HEADER));
            let mut at = 0;
            for _ in 0..count {
                if at + RECORD_HEADER > used {
                    return Err(corrupt(page, "entry runs past the node"));
                }
                let len = usize::from(body[at + 17]);
                if len == 0 || at + RECORD_HEADER + len > used {
                    return Err(corrupt(page, format!("entry name of {len} bytes")));
                }
                let name = body[at + RECORD_HEADER..at + RECORD_HEADER + len].to_vec();
                entries.push(DirEntry {
                    hash: word(at),
                    ino: word(at + 8),
                    kind: body[at + 16],
                    name,
                });
                at += RECORD_HEADER + len;
            }
            Ok(Node::Leaf(entries))
        }
        INTERIOR => {
            if count * 16 != used || count == 0 {
                return Err(corrupt(page, format!("{count} children in {used} bytes")));
            }
            Ok(Node::Interior((0..count).map(|i| (word(i * 16), word(i * 16 + 8))).collect()))
        }
        kind => Err(corrupt(page, format!("node kind {kind}"))),
    }
}

fn encode(node: &Node) -> Vec<u8> {
    let mut body = Vec::with_capacity(BODY_SIZE);
    let (kind, count) = match node {
        Node::Leaf(entries) => {
            for e in entries {
                body.extend_from_slice(&e.hash.to_le_bytes());
                body.extend_from_slice(&e.ino.to_le_bytes());
                body.push(e.kind);
                body.push(e.name.len() as u8);
                body.extend_from_slice(&e.name);
            }
            (LEAF, entries.len())
        }
        Node::Interior(children) => {
            for (key, child) in children {
                body.extend_from_slice(&key.to_le_bytes());
                body.extend_from_slice(&child.to_le_bytes());
            }
            (INTERIOR, children.len())
        }
    };
    let header = NodeHeader {
        magic: NODE_MAGIC.into(),
        kind,
        pad: 0,
        count: (count as u16).into(),
        used: (body.len() as u16).into(),
        reserved: [0.into(); 2],
    };
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn body_len(node: &Node) -> usize {
    match node {
        Node::Leaf(entries) => entries.iter().map(DirEntry::encoded_len).sum(),
        Node::Interior(children) => children.len() * 16,
    }
}

fn read_node<S: PageStore>(tx: &Transaction<S>, page: u64) -> FsResult<Node> {
    let mut bytes = vec![0u8; PAGE_SIZE];
    tx.read(PageRef::page_start(page), &mut bytes)?;
    decode(&bytes, page)
}

fn write_node<S: PageStore>(tx: &mut Transaction<S>, page: u64, node: &Node) -> FsResult<()> {
    tx.write(PageRef::page_start(page), &encode(node))?;
    Ok(())
}

/// Creates an empty directory tree; returns its root page.
pub fn create<S: PageStore>(tx: &mut Transaction<S>) -> FsResult<u64> {
    let page = alloc_page(tx)?;
    write_node(tx, page, &Node::Leaf(Vec::new()))?;
    Ok(page)
}

/// The child of an interior node that covers `hash`.
fn child_index(children: &[(u64, u64)], hash: u64) -> usize {
    children.partition_point(|&(key, _)| key <= hash).saturating_sub(1)
}

/// Finds `name`: its inode and type.
pub fn lookup<S: PageStore>(
    tx: &Transaction<S>,
    root: u64,
    name: &[u8],
) -> FsResult<Option<(u64, u8)>> {
    let hash = name_hash(name);
    let mut page = root;
    for _ in 0..64 {
        match read_node(tx, page)? {
            Node::Interior(children) => page = children[child_index(&children, hash)].1,
            Node::Leaf(entries) => {
                return Ok(entries
                    .iter()
                    .find(|e| e.hash == hash && e.name == name)
                    .map(|e| (e.ino, e.kind)));
            }
        }
    }
    Err(corrupt(root, "the tree is deeper than 64 levels"))
}

/// Inserts an entry whose name is not present yet. Returns the new root page
/// if the root split.
pub fn insert<S: PageStore>(tx: &mut Transaction<S>, root: u64, entry: DirEntry) -> FsResult<u64> {
    match insert_into(tx, root, entry, 0)? {
        None => Ok(root),
        Some((key, right)) => {
            let new_root = alloc_page(tx)?;
            write_node(tx, new_root, &Node::Interior(vec![(0, root), (key, right)]))?;
            Ok(new_root)
        }
    }
}

/// Inserts below `page`; returns `(first key, page)` of a new right sibling on a split.
fn insert_into<S: PageStore>(
    tx: &mut Transaction<S>,
    page: u64,
    entry: DirEntry,
    depth: usize,
) -> FsResult<Option<(u64, u64)>> {
    if depth > 64 {
        return Err(corrupt(page, "the tree is deeper than 64 levels"));
    }
    let mut node = read_node(tx, page)?;
    match &mut node {
        Node::Leaf(entries) => {
            let at = entries.partition_point(|e| (e.hash, &e.name) < (entry.hash, &entry.name));
            entries.insert(at, entry);
        }
        Node::Interior(children) => {
            let index = child_index(children, entry.hash);
            if let Some(split) = insert_into(tx, children[index].1, entry, depth + 1)? {
                children.insert(index + 1, split);
            }
        }
    }
    let fits = match &node {
        Node::Leaf(_) => body_len(&node) <= BODY_SIZE,
        Node::Interior(children) => children.len() <= MAX_CHILDREN,
    };
    if fits {
        write_node(tx, page, &node)?;
        return Ok(None);
    }
    let (left, right, key) = split(node)?;
    let right_page = alloc_page(tx)?;
    write_node(tx, page, &left)?;
    write_node(tx, right_page, &right)?;
    Ok(Some((key, right_page)))
}

/// Splits an overfull node near its middle; never between equal hashes.
fn split(node: Node) -> FsResult<(Node, Node, u64)> {
    match node {
        Node::Interior(mut children) => {
            let right = children.split_off(children.len() / 2);
            let key = right[0].0;
            Ok((Node::Interior(children), Node::Interior(right), key))
        }
        Node::Leaf(mut entries) => {
            let total: usize = entries.iter().map(DirEntry::encoded_len).sum();
            let mut acc = 0;
            let mut middle = 0;
            for (i, e) in entries.iter().enumerate() {
                if acc >= total / 2 {
                    middle = i;
                    break;
                }
                acc += e.encoded_len();
            }
            let boundary =
                |i: usize| i > 0 && i < entries.len() && entries[i - 1].hash != entries[i].hash;
            let at = (0..entries.len())
                .flat_map(|d| [middle + d, middle.wrapping_sub(d)])
                .find(|&i| boundary(i))
                .ok_or(FsError::Posix(super::error::Errno(libc::ENOSPC)))?;
            let right = entries.split_off(at);
            let key = right[0].hash;
            Ok((Node::Leaf(entries), Node::Leaf(right), key))
        }
    }
}

/// Removes `name`; returns the removed entry.
pub fn remove<S: PageStore>(
    tx: &mut Transaction<S>,
    root: u64,
    name: &[u8],
) -> FsResult<Option<DirEntry>> {
    let hash = name_hash(name);
    Ok(remove_from(tx, root, hash, name, true, 0)?.0)
}

/// Removes below `page`; returns the entry and whether `page` is now empty
/// (and freed, unless it is the root).
fn remove_from<S: PageStore>(
    tx: &mut Transaction<S>,
    page: u64,
    hash: u64,
    name: &[u8],
    is_root: bool,
    depth: usize,
) -> FsResult<(Option<DirEntry>, bool)> {
    if depth > 64 {
        return Err(corrupt(page, "the tree is deeper than 64 levels"));
    }
    let mut node = read_node(tx, page)?;
    let removed = match &mut node {
        Node::Leaf(entries) => {
            match entries.iter().position(|e| e.hash == hash && e.name == name) {
                Some(at) => Some(entries.remove(at)),
                None => return Ok((None, false)),
            }
        }
        Node::Interior(children) => {
            let index = child_index(children, hash);
            let (removed, empty) =
                remove_from(tx, children[index].1, hash, name, false, depth + 1)?;
            if !empty {
                return Ok((removed, false));
            }
            children.remove(index);
            if let Some(first) = children.first_mut() {
                // The first child covers everything below the second key.
                first.0 = 0;
            }
            removed
        }
    };
    let empty = match &node {
        Node::Leaf(entries) => entries.is_empty(),
        Node::Interior(children) => children.is_empty(),
    };
    if empty && !is_root {
        tx.free_pages(PageRange { start: page, count: 1 })?;
        return Ok((removed, true));
    }
    if empty {
        node = Node::Leaf(Vec::new());
    }
    write_node(tx, page, &node)?;
    Ok((removed, false))
}

/// Whether the directory has no entries.
pub fn is_empty<S: PageStore>(tx: &Transaction<S>, root: u64) -> FsResult<bool> {
    Ok(matches!(read_node(tx, root)?, Node::Leaf(entries) if entries.is_empty()))
}

/// Frees the tree of an empty directory.
pub fn destroy<S: PageStore>(tx: &mut Transaction<S>, root: u64) -> FsResult<()> {
    tx.free_pages(PageRange { start: root, count: 1 })?;
    Ok(())
}

/// Entries with hash at or after `cookie`, in hash order: at least `max`
/// unless the directory ends first, and never ending inside a run of equal
/// hashes (so `last hash + 1` is a safe cookie to resume from).
pub fn list_from<S: PageStore>(
    tx: &Transaction<S>,
    root: u64,
    cookie: u64,
    max: usize,
) -> FsResult<Vec<DirEntry>> {
    let mut out = Vec::new();
    collect(tx, root, cookie, max, &mut out, 0)?;
    Ok(out)
}

/// Returns true when enough entries were collected.
fn collect<S: PageStore>(
    tx: &Transaction<S>,
    page: u64,
    cookie: u64,
    max: usize,
    out: &mut Vec<DirEntry>,
    depth: usize,
) -> FsResult<bool> {
    if depth > 64 {
        return Err(corrupt(page, "the tree is deeper than 64 levels"));
    }
    match read_node(tx, page)? {
        Node::Leaf(entries) => {
            for e in entries.into_iter().filter(|e| e.hash >= cookie) {
                if out.len() >= max && out.last().is_some_and(|last| last.hash != e.hash) {
                    return Ok(true);
                }
                out.push(e);
            }
            Ok(false)
        }
        Node::Interior(children) => {
            for &(_, child) in &children[child_index(&children, cookie)..] {
                if collect(tx, child, cookie, max, out, depth + 1)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FormatOptions, MemStore, Rvm};

    #[test]
    fn nodes_survive_encode_and_decode_and_bad_lengths_are_corruption() {
        let leaf = Node::Leaf(vec![DirEntry::new(b"a", 5, 8), DirEntry::new(b"bcd", 6, 4)]);
        let mut bytes = encode(&leaf);
        bytes.resize(PAGE_SIZE, 0);
        assert_eq!(decode(&bytes, 1).unwrap(), leaf);
        bytes[HEADER_SIZE + 17] = 200;
        assert!(decode(&bytes, 1).is_err());
        let interior = Node::Interior(vec![(0, 9), (77, 10)]);
        let mut bytes = encode(&interior);
        bytes.resize(PAGE_SIZE, 0);
        assert_eq!(decode(&bytes, 1).unwrap(), interior);
        assert!(decode(&[0; PAGE_SIZE], 1).is_err());
    }

    #[test]
    fn ten_thousand_entries_insert_look_up_list_and_remove() {
        let rvm = Rvm::format(MemStore::new(8192), FormatOptions::default()).unwrap();
        let mut tx = rvm.begin().unwrap();
        let mut root = create(&mut tx).unwrap();
        let names: Vec<Vec<u8>> = (0..10_000).map(|i| format!("entry-{i}").into_bytes()).collect();
        for (i, name) in names.iter().enumerate() {
            root = insert(&mut tx, root, DirEntry::new(name, i as u64 + 10, 8)).unwrap();
        }
        for (i, name) in names.iter().enumerate().step_by(97) {
            assert_eq!(lookup(&tx, root, name).unwrap(), Some((i as u64 + 10, 8)));
        }
        assert_eq!(lookup(&tx, root, b"missing").unwrap(), None);
        let (mut cookie, mut seen) = (FIRST_HASH, 0);
        loop {
            let batch = list_from(&tx, root, cookie, 300).unwrap();
            let Some(last) = batch.last() else { break };
            cookie = last.hash + 1;
            seen += batch.len();
        }
        assert_eq!(seen, names.len());
        for name in &names {
            assert!(remove(&mut tx, root, name).unwrap().is_some(), "{name:?}");
        }
        assert!(is_empty(&tx, root).unwrap());
        destroy(&mut tx, root).unwrap();
        tx.commit().unwrap();
        assert!(rvm.check().unwrap().is_clean());
        assert_eq!(rvm.allocated_ranges(), vec![]);
    }

    #[test]
    fn names_with_equal_hashes_are_told_apart() {
        let rvm = Rvm::format(MemStore::new(512), FormatOptions::default()).unwrap();
        let mut tx = rvm.begin().unwrap();
        let root = create(&mut tx).unwrap();
        let mut a = DirEntry::new(b"one", 3, 8);
        let mut b = DirEntry::new(b"two", 4, 8);
        a.hash = 1000;
        b.hash = 1000;
        let root = insert(&mut tx, root, a).unwrap();
        let root = insert(&mut tx, root, b).unwrap();
        let listed = list_from(&tx, root, 0, 1).unwrap();
        assert_eq!(listed.len(), 2, "a batch does not end inside a collision run");
        tx.commit().unwrap();
    }
}
