//! Inodes: the 256-byte on-RVM inode record and the inode table.
//!
//! The inode table is a page map (see `page_map`) from `ino / 16` to a
//! logical page holding 16 records; inode numbers are handed out in order and
//! never reused, and each inode gets a fresh generation number. A record
//! carries a crc32c, so a corrupt record is an `EIO`, not garbage attributes.
//! A free slot is all zeros (mode 0).
//!
//! | offset | size | field                                              |
//! |--------|------|----------------------------------------------------|
//! | 0      | 4    | mode (type and permission bits, as `st_mode`)      |
//! | 4      | 4    | uid                                                |
//! | 8      | 4    | gid                                                |
//! | 12     | 4    | nlink                                              |
//! | 16     | 8    | size in bytes                                      |
//! | 24     | 32   | atime, mtime, ctime, crtime: seconds (i64 each)    |
//! | 56     | 16   | the same four: nanoseconds (u32 each)              |
//! | 72     | 8    | generation                                         |
//! | 80     | 4    | flags                                              |
//! | 84     | 4    | rdev                                               |
//! | 88     | 8    | blocks: data pages mapped                          |
//! | 96     | 8    | map root: file page map / directory B-tree root    |
//! | 104    | 1    | map levels                                         |
//! | 105    | 1    | inline symlink length                              |
//! | 106    | 6    | reserved                                           |
//! | 112    | 8    | xattr page (0 = none)                              |
//! | 120    | 8    | next orphan (inode number, 0 = end)                |
//! | 128    | 8    | parent directory (directories only)                |
//! | 136    | 112  | inline symlink target                              |
//! | 248    | 4    | reserved                                           |
//! | 252    | 4    | crc32c of 0..252                                   |

use zerocopy::little_endian::{I64, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{PageRef, PageStore, Transaction};

use super::error::{FsError, FsResult};
use super::page_map::{self, MapRoot};
use super::superblock::Superblock;

/// Size of one inode record.
pub const INODE_SIZE: usize = 256;
/// Records per inode table page.
pub const INODES_PER_PAGE: u64 = (crate::PAGE_SIZE / INODE_SIZE) as u64;
/// Longest symlink target kept inside the inode.
pub const INLINE_TARGET_MAX: usize = 112;
/// The root directory's inode number (FUSE's root id).
pub const ROOT_INO: u64 = 1;

/// The on-RVM record.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct InodeRecord {
    mode: U32,
    uid: U32,
    gid: U32,
    nlink: U32,
    size: U64,
    seconds: [I64; 4],
    nanos: [U32; 4],
    generation: U64,
    flags: U32,
    rdev: U32,
    blocks: U64,
    map_root: U64,
    map_levels: u8,
    inline_len: u8,
    reserved0: [u8; 6],
    xattr_page: U64,
    next_orphan: U64,
    parent: U64,
    inline: [u8; INLINE_TARGET_MAX],
    reserved1: U32,
    crc: U32,
}

const _: () = assert!(size_of::<InodeRecord>() == INODE_SIZE);

/// A timestamp with nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds, below 10^9.
    pub nsec: u32,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp::from_system(std::time::SystemTime::now())
    }

    /// Converts a `SystemTime`.
    pub fn from_system(time: std::time::SystemTime) -> Timestamp {
        match time.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp { sec: d.as_secs() as i64, nsec: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                let (sec, nsec) = (d.as_secs() as i64, d.subsec_nanos());
                if nsec == 0 {
                    Timestamp { sec: -sec, nsec: 0 }
                } else {
                    Timestamp { sec: -sec - 1, nsec: 1_000_000_000 - nsec }
                }
            }
        }
    }

    /// Converts to a `SystemTime`.
    pub fn to_system(self) -> std::time::SystemTime {
        let nanos = std::time::Duration::from_nanos(u64::from(self.nsec));
        if self.sec >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.sec as u64) + nanos
        } else {
            std::time::UNIX_EPOCH - std::time::Duration::from_secs(self.sec.unsigned_abs()) + nanos
        }
    }
}

/// An inode, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// Inode number.
    pub ino: u64,
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard links (directories: 2 + subdirectories).
    pub nlink: u32,
    /// Size in bytes.
    pub size: u64,
    /// Last access.
    pub atime: Timestamp,
    /// Last data change.
    pub mtime: Timestamp,
    /// Last inode change.
    pub ctime: Timestamp,
    /// Creation.
    pub crtime: Timestamp,
    /// Generation number (never repeats for an inode number).
    pub generation: u64,
    /// Inode flags (reserved, 0).
    pub flags: u32,
    /// Device number of character and block devices.
    pub rdev: u32,
    /// Data pages mapped (regular files, long symlinks) or nodes (directories).
    pub blocks: u64,
    /// File page map or directory B-tree root.
    pub map: MapRoot,
    /// Page of the extended attributes (0 = none).
    pub xattr_page: u64,
    /// Next inode of the orphan list.
    pub next_orphan: u64,
    /// Parent directory of a directory.
    pub parent: u64,
    /// Inline symlink target (empty when the target is in data pages).
    pub inline: Vec<u8>,
}

impl Inode {
    /// The file type bits.
    pub fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }

    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.kind() == libc::S_IFREG
    }

    /// Encodes the record with its checksum.
    pub fn encode(&self) -> [u8; INODE_SIZE] {
        let times = [self.atime, self.mtime, self.ctime, self.crtime];
        let mut inline = [0u8; INLINE_TARGET_MAX];
        let inline_len = self.inline.len().min(INLINE_TARGET_MAX);
        inline[..inline_len].copy_from_slice(&self.inline[..inline_len]);
        let mut record = InodeRecord {
            mode: self.mode.into(),
            uid: self.uid.into(),
            gid: self.gid.into(),
            nlink: self.nlink.into(),
            size: self.size.into(),
            seconds: times.map(|t| t.sec.into()),
            nanos: times.map(|t| t.nsec.into()),
            generation: self.generation.into(),
            flags: self.flags.into(),
            rdev: self.rdev.into(),
            blocks: self.blocks.into(),
            map_root: self.map.root.into(),
            map_levels: self.map.levels,
            inline_len: inline_len as u8,
            reserved0: [0; 6],
            xattr_page: self.xattr_page.into(),
            next_orphan: self.next_orphan.into(),
            parent: self.parent.into(),
            inline,
            reserved1: 0.into(),
            crc: 0.into(),
        };
        record.crc = crc32c::crc32c(&record.as_bytes()[..INODE_SIZE - 4]).into();
        let mut out = [0u8; INODE_SIZE];
        out.copy_from_slice(record.as_bytes());
        out
    }

    /// Decodes the record of `ino` read from `page`; `None` for a free slot.
    pub fn decode(bytes: &[u8; INODE_SIZE], ino: u64, page: u64) -> FsResult<Option<Inode>> {
        let record = InodeRecord::read_from_bytes(bytes).expect("256 bytes");
        if bytes.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let corrupt = |reason: String| FsError::corrupt("inode", page, reason);
        if crc32c::crc32c(&bytes[..INODE_SIZE - 4]) != record.crc.get() {
            return Err(corrupt(format!("inode {ino}: checksum mismatch")));
        }
        if usize::from(record.inline_len) > INLINE_TARGET_MAX {
            return Err(corrupt(format!("inode {ino}: inline length {}", record.inline_len)));
        }
        let map = MapRoot { root: record.map_root.get(), levels: record.map_levels };
        page_map::check_root(map, "inode", page)?;
        let time = |i: usize| Timestamp {
            sec: record.seconds[i].get(),
            nsec: record.nanos[i].get().min(999_999_999),
        };
        Ok(Some(Inode {
            ino,
            mode: record.mode.get(),
            uid: record.uid.get(),
            gid: record.gid.get(),
            nlink: record.nlink.get(),
            size: record.size.get(),
            atime: time(0),
            mtime: time(1),
            ctime: time(2),
            crtime: time(3),
            generation: record.generation.get(),
            flags: record.flags.get(),
            rdev: record.rdev.get(),
            blocks: record.blocks.get(),
            map,
            xattr_page: record.xattr_page.get(),
            next_orphan: record.next_orphan.get(),
            parent: record.parent.get(),
            inline: record.inline[..usize::from(record.inline_len)].to_vec(),
        }))
    }

    /// A new inode with every time set to `now`.
    pub fn new(ino: u64, generation: u64, mode: u32, uid: u32, gid: u32, now: Timestamp) -> Inode {
        Inode {
            ino,
            mode,
            uid,
            gid,
            nlink: 1,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            generation,
            flags: 0,
            rdev: 0,
            blocks: 0,
            map: MapRoot::default(),
            xattr_page: 0,
            next_orphan: 0,
            parent: 0,
            inline: Vec::new(),
        }
    }
}

fn table(sb: &Superblock) -> MapRoot {
    MapRoot { root: sb.inode_table_root, levels: sb.inode_table_levels }
}

fn slot_of(ino: u64) -> (u64, usize) {
    (ino / INODES_PER_PAGE, (ino % INODES_PER_PAGE) as usize * INODE_SIZE)
}

/// Reads inode `ino`; `ENOENT`-free: `None` when the slot is free.
pub fn read<S: PageStore>(
    tx: &Transaction<S>,
    sb: &Superblock,
    ino: u64,
) -> FsResult<Option<Inode>> {
    if ino == 0 || ino >= sb.next_ino {
        return Ok(None);
    }
    let (index, offset) = slot_of(ino);
    let page = page_map::get(tx, table(sb), index)?;
    if page == 0 {
        return Ok(None);
    }
    let mut bytes = [0u8; INODE_SIZE];
    tx.read(PageRef::new(page, offset), &mut bytes)?;
    Inode::decode(&bytes, ino, page)
}

/// Writes an inode (its table page must exist: see [`allocate`]).
pub fn write<S: PageStore>(
    tx: &mut Transaction<S>,
    sb: &Superblock,
    inode: &Inode,
) -> FsResult<()> {
    let (index, offset) = slot_of(inode.ino);
    let page = page_map::get(tx, table(sb), index)?;
    if page == 0 {
        return Err(FsError::corrupt("inode table", 0, format!("no page for inode {}", inode.ino)));
    }
    tx.write(PageRef::new(page, offset), &inode.encode())?;
    Ok(())
}

/// Hands out the next inode number and generation, creating its table page
/// when needed, and writes `inode` (whose `ino` and `generation` it sets).
pub fn allocate<S: PageStore>(
    tx: &mut Transaction<S>,
    sb: &mut Superblock,
    inode: &mut Inode,
) -> FsResult<()> {
    let ino = sb.next_ino;
    let (index, _) = slot_of(ino);
    let mut map = table(sb);
    if page_map::get(tx, map, index)? == 0 {
        let page = page_map::alloc_page(tx)?;
        page_map::set(tx, &mut map, index, page)?;
        sb.inode_table_root = map.root;
        sb.inode_table_levels = map.levels;
    }
    inode.ino = ino;
    inode.generation = sb.next_generation;
    sb.next_ino += 1;
    sb.next_generation += 1;
    sb.inode_count += 1;
    write(tx, sb, inode)
}

/// Clears inode `ino`'s record (its data must already be freed).
pub fn release<S: PageStore>(
    tx: &mut Transaction<S>,
    sb: &mut Superblock,
    ino: u64,
) -> FsResult<()> {
    let (index, offset) = slot_of(ino);
    let page = page_map::get(tx, table(sb), index)?;
    if page != 0 {
        tx.write(PageRef::new(page, offset), &[0u8; INODE_SIZE])?;
    }
    sb.inode_count = sb.inode_count.saturating_sub(1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Inode {
        let now = Timestamp { sec: 1_700_000_000, nsec: 123_456_789 };
        let mut inode = Inode::new(42, 7, libc::S_IFLNK | 0o777, 1000, 100, now);
        inode.inline = b"target".to_vec();
        inode.map = MapRoot { root: 99, levels: 2 };
        inode.atime = Timestamp { sec: -5, nsec: 1 };
        inode
    }

    #[test]
    fn an_inode_survives_encode_and_decode() {
        let bytes = sample().encode();
        assert_eq!(Inode::decode(&bytes, 42, 3).unwrap(), Some(sample()));
        assert_eq!(Inode::decode(&[0; INODE_SIZE], 42, 3).unwrap(), None);
    }

    #[test]
    fn a_corrupt_inode_is_an_error_not_garbage() {
        let mut bytes = sample().encode();
        bytes[17] ^= 0x40;
        let error = Inode::decode(&bytes, 42, 3).unwrap_err();
        assert_eq!(
            error.to_string(),
            "corrupt inode in logical page 3: inode 42: checksum mismatch"
        );
    }

    #[test]
    fn timestamps_before_the_epoch_round_trip() {
        for t in [Timestamp { sec: -2, nsec: 500 }, Timestamp { sec: 3, nsec: 999_999_999 }] {
            assert_eq!(Timestamp::from_system(t.to_system()), t);
        }
    }
}
