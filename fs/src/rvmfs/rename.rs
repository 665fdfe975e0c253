//! `rename` with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`, with Linux's rules.
//!
//! Refusals, in the order the VFS and ext4 make them: bad flags `EINVAL`;
//! missing source `ENOENT`; `EEXIST` for `NOREPLACE` over an existing name;
//! `ENOENT` for `EXCHANGE` without a target; sticky directories `EPERM`;
//! moving a directory into itself `EINVAL`; directory over non-directory
//! `ENOTDIR`, non-directory over directory `EISDIR`, over a non-empty
//! directory `ENOTEMPTY`. Renaming a name onto another name of the same
//! inode does nothing, as POSIX requires.

use crate::PageStore;

use super::directory::{self, DirEntry, NAME_MAX};
use super::error::{posix, FsError, FsResult};
use super::inode::{Inode, Timestamp, ROOT_INO};
use super::namespace::{dirent_type, touch, LINK_MAX};
use super::permission::{check, check_sticky, Caller, MAY_EXEC, MAY_WRITE};
use super::{load, save, Ctx, RvmFs};

/// `RENAME_NOREPLACE`.
pub const RENAME_NOREPLACE: u32 = 1;
/// `RENAME_EXCHANGE`.
pub const RENAME_EXCHANGE: u32 = 2;

/// Whether `ancestor` is `dir` or one of its ancestors.
fn is_ancestor<S: PageStore>(ctx: &Ctx<'_, S>, ancestor: u64, mut dir: u64) -> FsResult<bool> {
    for _ in 0..=ctx.sb.inode_count {
        if dir == ancestor {
            return Ok(true);
        }
        if dir == ROOT_INO {
            return Ok(false);
        }
        dir = load(ctx, dir)?.parent;
    }
    Err(FsError::corrupt("directory tree", 0, format!("a parent loop above inode {dir}")))
}

fn replace_entry<S: PageStore>(
    ctx: &mut Ctx<'_, S>,
    dir_ino: u64,
    name: &[u8],
    target: &Inode,
) -> FsResult<()> {
    let mut dir = load(ctx, dir_ino)?;
    directory::remove(ctx.tx, dir.map.root, name)?;
    dir.map.root = directory::insert(
        ctx.tx,
        dir.map.root,
        DirEntry::new(name, target.ino, dirent_type(target.mode)),
    )?;
    save(ctx, &dir)
}

fn touch_dir<S: PageStore>(
    ctx: &mut Ctx<'_, S>,
    ino: u64,
    nlink_delta: i32,
    now: Timestamp,
) -> FsResult<()> {
    let mut dir = load(ctx, ino)?;
    touch(&mut dir, nlink_delta, now);
    save(ctx, &dir)
}

/// Moves directory `moved` under `new_parent` (updates its `..`).
fn reparent<S: PageStore>(
    ctx: &mut Ctx<'_, S>,
    moved: u64,
    new_parent: u64,
    now: Timestamp,
) -> FsResult<()> {
    let mut inode = load(ctx, moved)?;
    inode.parent = new_parent;
    inode.ctime = now;
    save(ctx, &inode)
}

impl<S: PageStore + 'static> RvmFs<S> {
    /// `renameat2(parent/name, new_parent/new_name, flags)`.
    pub fn rename(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        self.refuse_if_read_only()?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(posix(libc::EINVAL));
        }
        if name.len() > NAME_MAX || new_name.len() > NAME_MAX {
            return Err(posix(libc::ENAMETOOLONG));
        }
        if [name, new_name].iter().any(|n| n.is_empty() || *n == b"." || *n == b"..") {
            return Err(posix(libc::EINVAL));
        }
        self.ensure_space(32)?;
        let checks = self.shared.options.check_permissions;
        self.with_ctx(|ctx| {
            let old_dir = load(ctx, parent)?;
            let new_dir = load(ctx, new_parent)?;
            if !old_dir.is_dir() || !new_dir.is_dir() {
                return Err(posix(libc::ENOTDIR));
            }
            if checks {
                check(caller, &old_dir, MAY_WRITE | MAY_EXEC)?;
                check(caller, &new_dir, MAY_WRITE | MAY_EXEC)?;
            }
            let source_ino =
                directory::lookup(ctx.tx, old_dir.map.root, name)?.ok_or(posix(libc::ENOENT))?.0;
            let source = load(ctx, source_ino)?;
            let target = match directory::lookup(ctx.tx, new_dir.map.root, new_name)? {
                Some((ino, _)) => Some(load(ctx, ino)?),
                None => None,
            };
            if flags & RENAME_EXCHANGE != 0 && target.is_none() {
                return Err(posix(libc::ENOENT));
            }
            if flags & RENAME_NOREPLACE != 0 && target.is_some() {
                return Err(posix(libc::EEXIST));
            }
            if target.as_ref().is_some_and(|t| t.ino == source.ino) {
                return Ok(());
            }
            if checks {
                check_sticky(caller, &old_dir, &source)?;
                if let Some(target) = &target {
                    check_sticky(caller, &new_dir, target)?;
                }
                if source.is_dir() && parent != new_parent {
                    check(caller, &source, MAY_WRITE)?;
                }
            }
            if source.is_dir() && is_ancestor(ctx, source.ino, new_parent)? {
                return Err(posix(libc::EINVAL));
            }
            let now = Timestamp::now();
            match target {
                Some(target) if flags & RENAME_EXCHANGE != 0 => {
                    if target.is_dir() && is_ancestor(ctx, target.ino, parent)? {
                        return Err(posix(libc::EINVAL));
                    }
                    if checks && target.is_dir() && parent != new_parent {
                        check(caller, &target, MAY_WRITE)?;
                    }
                    self.exchange(ctx, parent, name, &source, new_parent, new_name, &target, now)
                }
                Some(target) => {
                    match (source.is_dir(), target.is_dir()) {
                        (true, false) => return Err(posix(libc::ENOTDIR)),
                        (false, true) => return Err(posix(libc::EISDIR)),
                        (true, true) if !directory::is_empty(ctx.tx, target.map.root)? => {
                            return Err(posix(libc::ENOTEMPTY));
                        }
                        _ => {}
                    }
                    self.replace(ctx, parent, name, &source, new_parent, new_name, target, now)
                }
                None => {
                    if source.is_dir() && parent != new_parent && new_dir.nlink >= LINK_MAX {
                        return Err(posix(libc::EMLINK));
                    }
                    self.move_entry(ctx, parent, name, &source, new_parent, new_name, now)
                }
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn move_entry(
        &self,
        ctx: &mut Ctx<'_, S>,
        parent: u64,
        name: &[u8],
        source: &Inode,
        new_parent: u64,
        new_name: &[u8],
        now: Timestamp,
    ) -> FsResult<()> {
        let mut old_dir = load(ctx, parent)?;
        directory::remove(ctx.tx, old_dir.map.root, name)?;
        save(ctx, &old_dir)?;
        let mut new_dir = load(ctx, new_parent)?;
        let entry = DirEntry::new(new_name, source.ino, dirent_type(source.mode));
        new_dir.map.root = directory::insert(ctx.tx, new_dir.map.root, entry)?;
        save(ctx, &new_dir)?;
        let moves_dir = source.is_dir() && parent != new_parent;
        touch_dir(ctx, parent, if moves_dir { -1 } else { 0 }, now)?;
        touch_dir(ctx, new_parent, if moves_dir { 1 } else { 0 }, now)?;
        old_dir = load(ctx, source.ino)?;
        old_dir.ctime = now;
        if source.is_dir() {
            old_dir.parent = new_parent;
        }
        save(ctx, &old_dir)
    }

    #[allow(clippy::too_many_arguments)]
    fn replace(
        &self,
        ctx: &mut Ctx<'_, S>,
        parent: u64,
        name: &[u8],
        source: &Inode,
        new_parent: u64,
        new_name: &[u8],
        target: Inode,
        now: Timestamp,
    ) -> FsResult<()> {
        let mut old_dir = load(ctx, parent)?;
        directory::remove(ctx.tx, old_dir.map.root, name)?;
        save(ctx, &old_dir)?;
        replace_entry(ctx, new_parent, new_name, source)?;
        // The replaced directory's ".." no longer counts towards new_parent.
        let target_dir_link = if target.is_dir() { -1 } else { 0 };
        let moves_dir = if source.is_dir() && parent != new_parent { 1 } else { 0 };
        touch_dir(ctx, parent, -moves_dir, now)?;
        touch_dir(ctx, new_parent, moves_dir + target_dir_link, now)?;
        old_dir = load(ctx, source.ino)?;
        old_dir.ctime = now;
        if source.is_dir() {
            old_dir.parent = new_parent;
        }
        save(ctx, &old_dir)?;
        self.drop_replaced(ctx, target, now)
    }

    fn drop_replaced(&self, ctx: &mut Ctx<'_, S>, target: Inode, now: Timestamp) -> FsResult<()> {
        super::namespace::drop_link(ctx, target, now)
    }

    #[allow(clippy::too_many_arguments)]
    fn exchange(
        &self,
        ctx: &mut Ctx<'_, S>,
        parent: u64,
        name: &[u8],
        source: &Inode,
        new_parent: u64,
        new_name: &[u8],
        target: &Inode,
        now: Timestamp,
    ) -> FsResult<()> {
        replace_entry(ctx, parent, name, target)?;
        replace_entry(ctx, new_parent, new_name, source)?;
        if parent != new_parent {
            let delta = i32::from(source.is_dir()) - i32::from(target.is_dir());
            touch_dir(ctx, parent, -delta, now)?;
            touch_dir(ctx, new_parent, delta, now)?;
            if source.is_dir() {
                reparent(ctx, source.ino, new_parent, now)?;
            }
            if target.is_dir() {
                reparent(ctx, target.ino, parent, now)?;
            }
        } else {
            touch_dir(ctx, parent, 0, now)?;
        }
        for ino in [source.ino, target.ino] {
            let mut inode = load(ctx, ino)?;
            inode.ctime = now;
            save(ctx, &inode)?;
        }
        Ok(())
    }
}
