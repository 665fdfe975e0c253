//! Names: lookup, create, link, unlink, rename, readdir, and inode lifetimes.
//!
//! Every check that can refuse an operation (names, types, permissions,
//! existence, space) runs before the first change, so a refused operation
//! leaves the running transaction as it was. Timestamps change where POSIX
//! says: a directory's mtime and ctime when its entries change, an inode's
//! ctime when its link count or name changes. An inode whose last link goes
//! while the kernel or a handle still uses it is put on the orphan list and
//! freed when the last use ends (or at the next mount after a crash).

use crate::{PageRange, PageRef, PageStore};

use super::commit::Durability;
use super::directory::{self, DirEntry, NAME_MAX};
use super::error::{posix, FsError, FsResult};
use super::inode::{self, Inode, Timestamp, INLINE_TARGET_MAX};
use super::page_map::{self, MapRoot};
use super::permission::{check, check_sticky, Caller, MAY_EXEC, MAY_WRITE};
use super::{load, save, Ctx, Handle, RvmFs};

/// Most hard links to one inode (as ext4).
pub const LINK_MAX: u32 = 65_000;
/// Longest symlink target.
pub const SYMLINK_MAX: usize = 4095;
/// Free physical pages an operation that creates something needs at least.
const CREATE_RESERVE: u64 = 32;

/// One entry as `readdir` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntryOut {
    /// Offset to resume after this entry.
    pub next: u64,
    /// Inode number.
    pub ino: u64,
    /// `DT_*` type.
    pub kind: u8,
    /// Name.
    pub name: Vec<u8>,
}

/// The `DT_*` directory entry type of a mode.
pub(crate) fn dirent_type(mode: u32) -> u8 {
    ((mode & libc::S_IFMT) >> 12) as u8
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(posix(libc::ENAMETOOLONG));
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(posix(libc::EINVAL));
    }
    Ok(())
}

/// Loads a directory that may be searched (and changed, with `MAY_WRITE`).
fn load_dir<S: PageStore>(
    ctx: &Ctx<'_, S>,
    caller: &Caller,
    ino: u64,
    mask: u32,
    checks: bool,
) -> FsResult<Inode> {
    let dir = load(ctx, ino)?;
    if !dir.is_dir() {
        return Err(posix(libc::ENOTDIR));
    }
    if checks {
        check(caller, &dir, mask)?;
    }
    Ok(dir)
}

fn find<S: PageStore>(ctx: &Ctx<'_, S>, dir: &Inode, name: &[u8]) -> FsResult<Option<u64>> {
    if dir.map.root == 0 {
        return Ok(None);
    }
    Ok(directory::lookup(ctx.tx, dir.map.root, name)?.map(|(ino, _)| ino))
}

/// Adds `name -> ino` to directory `dir_ino`, touching its times.
fn link_entry<S: PageStore>(
    ctx: &mut Ctx<'_, S>,
    dir_ino: u64,
    name: &[u8],
    ino: u64,
    kind: u8,
    nlink_delta: i32,
    now: Timestamp,
) -> FsResult<()> {
    let mut dir = load(ctx, dir_ino)?;
    dir.map.root = directory::insert(ctx.tx, dir.map.root, DirEntry::new(name, ino, kind))?;
    touch(&mut dir, nlink_delta, now);
    save(ctx, &dir)
}

/// Removes `name` from directory `dir_ino`, touching its times.
fn unlink_entry<S: PageStore>(
    ctx: &mut Ctx<'_, S>,
    dir_ino: u64,
    name: &[u8],
    nlink_delta: i32,
    now: Timestamp,
) -> FsResult<()> {
    let mut dir = load(ctx, dir_ino)?;
    directory::remove(ctx.tx, dir.map.root, name)?
        .ok_or_else(|| FsError::corrupt("directory node", dir.map.root, "entry vanished"))?;
    touch(&mut dir, nlink_delta, now);
    save(ctx, &dir)
}

/// A directory's entries changed: its link count moves by `nlink_delta`
/// (subdirectories' `..`) and its mtime and ctime become `now`.
pub(crate) fn touch(dir: &mut Inode, nlink_delta: i32, now: Timestamp) {
    dir.nlink = dir.nlink.saturating_add_signed(nlink_delta);
    dir.mtime = now;
    dir.ctime = now;
}

/// Drops one link of `inode` (already saved by the caller otherwise); frees
/// it when no link and no use remains, else orphans it.
pub(crate) fn drop_link<S: PageStore>(
    ctx: &mut Ctx<'_, S>,
    mut inode: Inode,
    now: Timestamp,
) -> FsResult<()> {
    inode.nlink = if inode.is_dir() { 0 } else { inode.nlink.saturating_sub(1) };
    inode.ctime = now;
    if inode.is_dir() && inode.map.root != 0 {
        directory::destroy(ctx.tx, inode.map.root)?;
        inode.map = MapRoot::default();
    }
    if inode.nlink > 0 {
        return save(ctx, &inode);
    }
    if ctx.is_pinned(inode.ino) {
        inode.next_orphan = ctx.sb.orphan_head;
        ctx.sb.orphan_head = inode.ino;
        return save(ctx, &inode);
    }
    free_inode(ctx, inode)
}

/// Frees an inode's data, attributes and record.
pub(crate) fn free_inode<S: PageStore>(ctx: &mut Ctx<'_, S>, mut inode: Inode) -> FsResult<()> {
    if !inode.is_dir() {
        free_blocks(ctx, &mut inode, 0)?;
    }
    if inode.xattr_page != 0 {
        ctx.tx.free_pages(PageRange { start: inode.xattr_page, count: 1 })?;
    }
    inode::release(ctx.tx, ctx.sb, inode.ino)
}

/// Frees the data pages of blocks `from..` of a file (or long symlink).
pub(crate) fn free_blocks<S: PageStore>(
    ctx: &mut Ctx<'_, S>,
    inode: &mut Inode,
    from: u64,
) -> FsResult<()> {
    let mut pages = Vec::new();
    page_map::clear_range(ctx.tx, &mut inode.map, from, u64::MAX, &mut |page| pages.push(page))?;
    inode.blocks -= pages.len() as u64;
    free_page_list(ctx, pages)
}

/// Frees logical pages, coalescing consecutive ones.
pub(crate) fn free_page_list<S: PageStore>(
    ctx: &mut Ctx<'_, S>,
    mut pages: Vec<u64>,
) -> FsResult<()> {
    pages.sort_unstable();
    let mut run: Option<PageRange> = None;
    for page in pages {
        match &mut run {
            Some(r) if r.end() == page => r.count += 1,
            _ => {
                if let Some(r) = run.take() {
                    ctx.tx.free_pages(r)?;
                }
                run = Some(PageRange { start: page, count: 1 });
            }
        }
    }
    if let Some(r) = run {
        ctx.tx.free_pages(r)?;
    }
    Ok(())
}

/// Removes `ino` from the orphan list and frees it.
fn reap_orphan<S: PageStore>(ctx: &mut Ctx<'_, S>, ino: u64) -> FsResult<()> {
    let inode = load(ctx, ino)?;
    if ctx.sb.orphan_head == ino {
        ctx.sb.orphan_head = inode.next_orphan;
    } else {
        let mut at = ctx.sb.orphan_head;
        for _ in 0..ctx.sb.inode_count + 1 {
            if at == 0 {
                break;
            }
            let mut prev = load(ctx, at)?;
            if prev.next_orphan == ino {
                prev.next_orphan = inode.next_orphan;
                save(ctx, &prev)?;
                break;
            }
            at = prev.next_orphan;
        }
    }
    free_inode(ctx, inode)
}

/// Frees every orphan (at mount, after a crash left some).
pub(crate) fn free_orphans<S: PageStore>(ctx: &mut Ctx<'_, S>) -> FsResult<()> {
    let mut budget = ctx.sb.inode_count + 1;
    while ctx.sb.orphan_head != 0 && budget > 0 {
        let ino = ctx.sb.orphan_head;
        let inode = load(ctx, ino)?;
        ctx.sb.orphan_head = inode.next_orphan;
        free_inode(ctx, inode)?;
        budget -= 1;
    }
    Ok(())
}

/// What a new inode is.
pub(crate) struct NewNode<'a> {
    pub mode: u32,
    pub rdev: u32,
    pub target: Option<&'a [u8]>,
}

impl<S: PageStore + 'static> RvmFs<S> {
    fn checks(&self) -> bool {
        self.shared.options.check_permissions
    }

    /// Finds `name` in directory `parent`.
    pub fn lookup(&self, caller: &Caller, parent: u64, name: &[u8]) -> FsResult<Inode> {
        if name.len() > NAME_MAX {
            return Err(posix(libc::ENAMETOOLONG));
        }
        self.with_read(|ctx| {
            let dir = load_dir(ctx, caller, parent, MAY_EXEC, self.checks())?;
            let ino = match name {
                b"." => parent,
                b".." => dir.parent,
                _ => find(ctx, &dir, name)?.ok_or(posix(libc::ENOENT))?,
            };
            load(ctx, ino)
        })
    }

    /// Records that the kernel holds one more lookup of `ino`.
    pub fn remember(&self, ino: u64) {
        self.lock().pins.entry(ino).or_default().lookups += 1;
    }

    /// The kernel dropped `count` lookups of `ino`; frees it if it was unlinked.
    pub fn forget(&self, ino: u64, count: u64) -> FsResult<()> {
        self.unpin(ino, |pins| pins.lookups = pins.lookups.saturating_sub(count))
    }

    fn unpin(&self, ino: u64, change: impl FnOnce(&mut super::Pins)) -> FsResult<()> {
        let orphaned = {
            let mut running = self.lock();
            let Some(pins) = running.pins.get_mut(&ino) else { return Ok(()) };
            change(pins);
            if pins.lookups > 0 || pins.opens > 0 {
                return Ok(());
            }
            running.pins.remove(&ino);
            true
        };
        if orphaned && !self.shared.options.read_only {
            self.with_ctx(|ctx| match inode::read(ctx.tx, ctx.sb, ino)? {
                Some(inode) if inode.nlink == 0 => reap_orphan(ctx, ino),
                _ => Ok(()),
            })?;
        }
        Ok(())
    }

    /// Creates a node of any type in `parent`.
    pub(crate) fn create_node(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        node: NewNode<'_>,
    ) -> FsResult<Inode> {
        self.refuse_if_read_only()?;
        check_name(name)?;
        if let Some(target) = node.target {
            if target.len() > SYMLINK_MAX {
                return Err(posix(libc::ENAMETOOLONG));
            }
        }
        self.ensure_space(CREATE_RESERVE)?;
        self.with_ctx(|ctx| {
            let dir = load_dir(ctx, caller, parent, MAY_WRITE | MAY_EXEC, self.checks())?;
            if dir.nlink == 0 {
                return Err(posix(libc::ENOENT));
            }
            if find(ctx, &dir, name)?.is_some() {
                return Err(posix(libc::EEXIST));
            }
            let is_dir = node.mode & libc::S_IFMT == libc::S_IFDIR;
            if is_dir && dir.nlink >= LINK_MAX {
                return Err(posix(libc::EMLINK));
            }
            let now = Timestamp::now();
            let mut mode = node.mode;
            let gid = if dir.mode & libc::S_ISGID != 0 {
                if is_dir {
                    mode |= libc::S_ISGID;
                }
                dir.gid
            } else {
                caller.gid
            };
            if !is_dir && mode & libc::S_ISGID != 0 && !caller.is_root() && !caller.in_group(gid) {
                mode &= !libc::S_ISGID;
            }
            let mut inode = Inode::new(0, 0, mode, caller.uid, gid, now);
            inode.rdev = node.rdev;
            if is_dir {
                inode.nlink = 2;
                inode.size = crate::PAGE_SIZE as u64;
                inode.parent = parent;
                inode.map = MapRoot { root: directory::create(ctx.tx)?, levels: 1 };
            }
            inode::allocate(ctx.tx, ctx.sb, &mut inode)?;
            if let Some(target) = node.target {
                inode.size = target.len() as u64;
                if target.len() <= INLINE_TARGET_MAX {
                    inode.inline = target.to_vec();
                } else {
                    let page = ctx.tx.alloc_pages(1)?.start;
                    ctx.tx.write(PageRef::page_start(page), target)?;
                    page_map::set(ctx.tx, &mut inode.map, 0, page)?;
                    inode.blocks = 1;
                }
                save(ctx, &inode)?;
            }
            let delta = if is_dir { 1 } else { 0 };
            link_entry(ctx, parent, name, inode.ino, dirent_type(mode), delta, now)?;
            Ok(inode)
        })
    }

    /// Fails with `ENOSPC` unless `pages` physical pages are free.
    pub(crate) fn ensure_space(&self, pages: u64) -> FsResult<()> {
        if self.shared.rvm.space().free_physical_pages < pages {
            return Err(posix(libc::ENOSPC));
        }
        Ok(())
    }

    /// `mknod`: regular files, FIFOs, sockets, character and block devices.
    /// A regular file created here is a commit point, like `create`.
    pub fn mknod(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> FsResult<Inode> {
        let kind = mode & libc::S_IFMT;
        let kind = if kind == 0 { libc::S_IFREG } else { kind };
        if ![libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK, libc::S_IFCHR, libc::S_IFBLK]
            .contains(&kind)
        {
            return Err(posix(libc::EINVAL));
        }
        if (kind == libc::S_IFCHR || kind == libc::S_IFBLK) && !caller.is_root() && self.checks() {
            return Err(posix(libc::EPERM));
        }
        let mode = kind | (mode & 0o7777 & !umask);
        let inode = self.create_node(caller, parent, name, NewNode { mode, rdev, target: None })?;
        if kind == libc::S_IFREG {
            self.commit_point(Durability::Background)?;
        }
        Ok(inode)
    }

    /// `mkdir`.
    pub fn mkdir(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> FsResult<Inode> {
        let mode = libc::S_IFDIR | (mode & 0o7777 & !umask);
        self.create_node(caller, parent, name, NewNode { mode, rdev: 0, target: None })
    }

    /// `symlink`: `name` in `parent` pointing to `target`.
    pub fn symlink(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<Inode> {
        if target.is_empty() {
            return Err(posix(libc::ENOENT));
        }
        let mode = libc::S_IFLNK | 0o777;
        self.create_node(caller, parent, name, NewNode { mode, rdev: 0, target: Some(target) })
    }

    /// `readlink`.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.with_read(|ctx| {
            let inode = load(ctx, ino)?;
            if inode.kind() != libc::S_IFLNK {
                return Err(posix(libc::EINVAL));
            }
            if !inode.inline.is_empty() || inode.size == 0 {
                return Ok(inode.inline);
            }
            let page = page_map::get(ctx.tx, inode.map, 0)?;
            let len = (inode.size as usize).min(SYMLINK_MAX);
            let mut target = vec![0u8; len];
            if page != 0 {
                ctx.tx.read(PageRef::page_start(page), &mut target)?;
            }
            Ok(target)
        })
    }

    /// `link`: a new name for `ino`.
    pub fn link(&self, caller: &Caller, ino: u64, parent: u64, name: &[u8]) -> FsResult<Inode> {
        self.refuse_if_read_only()?;
        check_name(name)?;
        self.ensure_space(CREATE_RESERVE)?;
        self.with_ctx(|ctx| {
            let mut inode = load(ctx, ino)?;
            let dir = load_dir(ctx, caller, parent, MAY_WRITE | MAY_EXEC, self.checks())?;
            if inode.is_dir() {
                return Err(posix(libc::EPERM));
            }
            if find(ctx, &dir, name)?.is_some() {
                return Err(posix(libc::EEXIST));
            }
            if inode.nlink >= LINK_MAX {
                return Err(posix(libc::EMLINK));
            }
            if inode.nlink == 0 || dir.nlink == 0 {
                return Err(posix(libc::ENOENT));
            }
            let now = Timestamp::now();
            inode.nlink += 1;
            inode.ctime = now;
            save(ctx, &inode)?;
            link_entry(ctx, parent, name, ino, dirent_type(inode.mode), 0, now)?;
            Ok(inode)
        })
    }

    /// `unlink`.
    pub fn unlink(&self, caller: &Caller, parent: u64, name: &[u8]) -> FsResult<()> {
        self.remove_name(caller, parent, name, false)
    }

    /// `rmdir`.
    pub fn rmdir(&self, caller: &Caller, parent: u64, name: &[u8]) -> FsResult<()> {
        match name {
            b"." => return Err(posix(libc::EINVAL)),
            b".." => return Err(posix(libc::ENOTEMPTY)),
            _ => {}
        }
        self.remove_name(caller, parent, name, true)
    }

    fn remove_name(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        want_dir: bool,
    ) -> FsResult<()> {
        self.refuse_if_read_only()?;
        if name.len() > NAME_MAX {
            return Err(posix(libc::ENAMETOOLONG));
        }
        self.with_ctx(|ctx| {
            let dir = load_dir(ctx, caller, parent, MAY_WRITE | MAY_EXEC, self.checks())?;
            let ino = find(ctx, &dir, name)?.ok_or(posix(libc::ENOENT))?;
            let inode = load(ctx, ino)?;
            match (want_dir, inode.is_dir()) {
                (false, true) => return Err(posix(libc::EISDIR)),
                (true, false) => return Err(posix(libc::ENOTDIR)),
                _ => {}
            }
            if self.checks() {
                check_sticky(caller, &dir, &inode)?;
            }
            if want_dir && !directory::is_empty(ctx.tx, inode.map.root)? {
                return Err(posix(libc::ENOTEMPTY));
            }
            let now = Timestamp::now();
            unlink_entry(ctx, parent, name, if want_dir { -1 } else { 0 }, now)?;
            drop_link(ctx, inode, now)
        })
    }

    /// Lists directory `ino` from `offset` (0 starts; each entry's `next`
    /// resumes after it): `.`, `..`, then entries in hash order.
    pub fn readdir(&self, ino: u64, offset: u64, max: usize) -> FsResult<Vec<DirEntryOut>> {
        self.with_read(|ctx| {
            let dir = load(ctx, ino)?;
            if !dir.is_dir() {
                return Err(posix(libc::ENOTDIR));
            }
            let mut out = Vec::new();
            let dt_dir = libc::DT_DIR;
            if offset == 0 {
                out.push(DirEntryOut { next: 1, ino, kind: dt_dir, name: b".".to_vec() });
            }
            if offset <= 1 {
                out.push(DirEntryOut {
                    next: 2,
                    ino: dir.parent,
                    kind: dt_dir,
                    name: b"..".to_vec(),
                });
            }
            if dir.map.root == 0 {
                return Ok(out);
            }
            let from = offset.max(directory::FIRST_HASH);
            for e in directory::list_from(ctx.tx, dir.map.root, from, max)? {
                out.push(DirEntryOut { next: e.hash + 1, ino: e.ino, kind: e.kind, name: e.name });
            }
            Ok(out)
        })
    }

    /// Opens `ino`; `flags` as `open(2)`. Returns a handle.
    pub fn open_file(&self, caller: &Caller, ino: u64, flags: i32) -> FsResult<u64> {
        let accmode = flags & libc::O_ACCMODE;
        let writes = accmode != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if writes && self.shared.options.read_only {
            return Err(posix(libc::EROFS));
        }
        let inode = self.with_read(|ctx| load(ctx, ino))?;
        if writes && inode.is_dir() {
            return Err(posix(libc::EISDIR));
        }
        if self.checks() {
            let mut mask = 0;
            if accmode != libc::O_WRONLY {
                mask |= super::MAY_READ;
            }
            if writes {
                mask |= MAY_WRITE;
            }
            check(caller, &inode, mask)?;
        }
        Ok(self.add_handle(ino))
    }

    pub(crate) fn add_handle(&self, ino: u64) -> u64 {
        let mut running = self.lock();
        let fh = running.next_handle;
        running.next_handle += 1;
        running.handles.insert(fh, Handle { ino, written: false });
        running.pins.entry(ino).or_default().opens += 1;
        fh
    }

    /// `create`: makes a regular file and opens it (a commit point).
    pub fn create(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> FsResult<(Inode, u64)> {
        let mode = libc::S_IFREG | (mode & 0o7777 & !umask);
        let inode =
            self.create_node(caller, parent, name, NewNode { mode, rdev: 0, target: None })?;
        let fh = self.add_handle(inode.ino);
        self.commit_point(Durability::Background)?;
        Ok((inode, fh))
    }

    /// Releases a handle; if it wrote, commits and waits until durable.
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let handle = self.lock().handles.remove(&fh);
        let Some(handle) = handle else { return Err(posix(libc::EBADF)) };
        if handle.written {
            self.commit_point(Durability::Wait)?;
        }
        self.unpin(handle.ino, |pins| pins.opens = pins.opens.saturating_sub(1))
    }

    /// `flush` (every `close` of the handle): a handle that wrote since its
    /// last flush is a commit point, and the close waits for it to be
    /// durable (SPEC §7: a close of a written file asks for durability).
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        let written = match self.lock().handles.get_mut(&fh) {
            Some(handle) => std::mem::take(&mut handle.written),
            None => return Err(posix(libc::EBADF)),
        };
        if written {
            self.commit_point(Durability::Wait)?;
        }
        Ok(())
    }

    /// Marks a handle as having written.
    pub(crate) fn mark_written(&self, fh: Option<u64>) {
        if let Some(fh) = fh {
            if let Some(handle) = self.lock().handles.get_mut(&fh) {
                handle.written = true;
            }
        }
    }

    /// `fsync` / `fsyncdir`: everything done so far becomes durable.
    pub fn fsync(&self) -> FsResult<()> {
        self.commit_point(Durability::Wait)
    }
}
