//! Attributes: getattr, setattr (chmod, chown, truncate, utimens), access,
//! statfs and extended attributes, with Linux's ownership rules.
//!
//! chmod and explicit times need the owner (or root): `EPERM`; setting times
//! to now also works with write permission, else `EACCES`. chown of the
//! owner needs root; chgrp needs the owner and membership of the new group.
//! A successful chown of a non-directory clears set-user-ID, and
//! set-group-ID when group-execute is set; chmod by a non-member of the
//! file's group clears set-group-ID. Every change sets ctime.

use crate::PageStore;

use super::error::{posix, FsResult};
use super::inode::{Inode, Timestamp};
use super::permission::{check, Caller, MAY_WRITE};
use super::{load, save, xattr, RvmFs};

/// A time to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    /// The current time (`UTIME_NOW`).
    Now,
    /// A given time.
    At(Timestamp),
}

/// What `setattr` changes (`None` leaves a field alone, as `UTIME_OMIT`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (the type bits are ignored).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
    /// The change came through an open handle (ftruncate): permission was
    /// checked at open.
    pub through_handle: bool,
}

/// Space figures for `statfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks (4 KiB).
    pub blocks: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Inodes in use plus free logical pages (an upper bound of new inodes).
    pub files: u64,
    /// Free inodes.
    pub free_files: u64,
    /// Block size.
    pub block_size: u32,
    /// Longest name.
    pub name_max: u32,
}

fn clear_privileges(inode: &mut Inode) {
    inode.mode &= !libc::S_ISUID;
    if inode.mode & libc::S_IXGRP != 0 {
        inode.mode &= !libc::S_ISGID;
    }
}

impl<S: PageStore + 'static> RvmFs<S> {
    /// `getattr`.
    pub fn getattr(&self, ino: u64) -> FsResult<Inode> {
        self.with_read(|ctx| load(ctx, ino))
    }

    /// `setattr`: chmod, chown, truncate, utimens in one call.
    pub fn setattr(&self, caller: &Caller, ino: u64, change: &SetAttr) -> FsResult<Inode> {
        self.refuse_if_read_only()?;
        let checks = self.shared.options.check_permissions;
        if let Some(size) = change.size {
            if size > super::MAX_FILE_SIZE {
                return Err(posix(libc::EFBIG));
            }
        }
        self.with_ctx(|ctx| {
            let mut inode = load(ctx, ino)?;
            let now = Timestamp::now();
            // All checks first.
            if checks {
                if change.mode.is_some() && !caller.owns(&inode) {
                    return Err(posix(libc::EPERM));
                }
                if let Some(uid) = change.uid {
                    if !(caller.is_root() || caller.uid == inode.uid && uid == inode.uid) {
                        return Err(posix(libc::EPERM));
                    }
                }
                if let Some(gid) = change.gid {
                    let member = caller.in_group(gid) || gid == inode.gid;
                    if !(caller.is_root() || caller.uid == inode.uid && member) {
                        return Err(posix(libc::EPERM));
                    }
                }
                for time in [change.atime, change.mtime].into_iter().flatten() {
                    match time {
                        TimeSet::At(_) if !caller.owns(&inode) => return Err(posix(libc::EPERM)),
                        TimeSet::Now if !caller.owns(&inode) => check(caller, &inode, MAY_WRITE)?,
                        _ => {}
                    }
                }
                if change.size.is_some() && !change.through_handle {
                    check(caller, &inode, MAY_WRITE)?;
                }
            }
            if change.size.is_some() {
                if inode.is_dir() {
                    return Err(posix(libc::EISDIR));
                }
                if !inode.is_file() {
                    return Err(posix(libc::EINVAL));
                }
            }
            // Then the changes.
            if let Some(mode) = change.mode {
                inode.mode = (inode.mode & libc::S_IFMT) | (mode & 0o7777);
                let group = change.gid.unwrap_or(inode.gid);
                if checks && !caller.is_root() && !caller.in_group(group) {
                    inode.mode &= !libc::S_ISGID;
                }
            }
            if change.uid.is_some() || change.gid.is_some() {
                inode.uid = change.uid.unwrap_or(inode.uid);
                inode.gid = change.gid.unwrap_or(inode.gid);
                if !inode.is_dir() {
                    clear_privileges(&mut inode);
                }
            }
            if let Some(size) = change.size {
                super::data::resize(ctx, &mut inode, size)?;
                inode.mtime = now;
                if !caller.is_root() {
                    clear_privileges(&mut inode);
                }
            }
            let resolve = |t: TimeSet| match t {
                TimeSet::Now => now,
                TimeSet::At(t) => t,
            };
            if let Some(t) = change.atime {
                inode.atime = resolve(t);
            }
            if let Some(t) = change.mtime {
                inode.mtime = resolve(t);
            }
            inode.ctime = now;
            save(ctx, &inode)?;
            Ok(inode)
        })
    }

    /// `access(ino, mask)`: `mask` of `MAY_*` bits (0 = existence).
    pub fn access(&self, caller: &Caller, ino: u64, mask: u32) -> FsResult<()> {
        let inode = self.getattr(ino)?;
        if mask & MAY_WRITE != 0 && self.shared.options.read_only {
            return Err(posix(libc::EROFS));
        }
        check(caller, &inode, mask)
    }

    /// `statfs`: the store's real space.
    pub fn statfs(&self) -> StatFs {
        let space = self.shared.rvm.space();
        let geometry = space.geometry;
        let inodes = self.lock().sb.inode_count;
        let free_files = space.free_logical_pages.min(space.free_physical_pages) * 16;
        StatFs {
            blocks: geometry.physical_pages(),
            free_blocks: space.free_physical_pages,
            files: inodes + free_files,
            free_files,
            block_size: crate::PAGE_SIZE as u32,
            name_max: super::NAME_MAX as u32,
        }
    }

    fn xattr_allowed(
        &self,
        caller: &Caller,
        inode: &Inode,
        name: &[u8],
        write: bool,
    ) -> FsResult<()> {
        xattr::check_name(name)?;
        if name.starts_with(b"trusted.") && !caller.is_root() {
            return Err(posix(libc::EPERM));
        }
        if name.starts_with(b"user.") {
            if !inode.is_file() && !inode.is_dir() {
                return Err(posix(if write { libc::EPERM } else { libc::ENODATA }));
            }
            if self.shared.options.check_permissions {
                check(caller, inode, if write { MAY_WRITE } else { super::MAY_READ })?;
            }
        }
        if write && name.starts_with(b"security.") && !caller.owns(inode) {
            return Err(posix(libc::EPERM));
        }
        Ok(())
    }

    /// `setxattr`.
    pub fn setxattr(
        &self,
        caller: &Caller,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        self.refuse_if_read_only()?;
        self.with_ctx(|ctx| {
            let mut inode = load(ctx, ino)?;
            self.xattr_allowed(caller, &inode, name, true)?;
            let mut set = xattr::load(ctx.tx, inode.xattr_page)?;
            set.set(name, value, flags)?;
            inode.xattr_page = xattr::store(ctx.tx, inode.xattr_page, &set)?;
            inode.ctime = Timestamp::now();
            save(ctx, &inode)
        })
    }

    /// `getxattr`: the value (the FUSE layer applies the size rules).
    pub fn getxattr(&self, caller: &Caller, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        self.with_read(|ctx| {
            let inode = load(ctx, ino)?;
            self.xattr_allowed(caller, &inode, name, false)?;
            let set = xattr::load(ctx.tx, inode.xattr_page)?;
            set.get(name).map(<[u8]>::to_vec).ok_or(posix(libc::ENODATA))
        })
    }

    /// `listxattr`: NUL-terminated names (trusted ones only for root).
    pub fn listxattr(&self, caller: &Caller, ino: u64) -> FsResult<Vec<u8>> {
        self.with_read(|ctx| {
            let inode = load(ctx, ino)?;
            let mut set = xattr::load(ctx.tx, inode.xattr_page)?;
            if !caller.is_root() {
                set.entries.retain(|(name, _)| !name.starts_with(b"trusted."));
            }
            Ok(set.names())
        })
    }

    /// `removexattr`.
    pub fn removexattr(&self, caller: &Caller, ino: u64, name: &[u8]) -> FsResult<()> {
        self.refuse_if_read_only()?;
        self.with_ctx(|ctx| {
            let mut inode = load(ctx, ino)?;
            self.xattr_allowed(caller, &inode, name, true)?;
            let mut set = xattr::load(ctx.tx, inode.xattr_page)?;
            set.remove(name)?;
            inode.xattr_page = xattr::store(ctx.tx, inode.xattr_page, &set)?;
            inode.ctime = Timestamp::now();
            save(ctx, &inode)
        })
    }
}
