//! Permission checks for the calling process, as the Linux VFS makes them.
//!
//! Used when the filesystem is mounted without `default_permissions` (then
//! the kernel leaves every check to us). A [`Caller`] is the requester's
//! fsuid, fsgid and supplementary groups; root (uid 0) passes read and write
//! checks and passes execute checks when any execute bit is set or the inode
//! is a directory.

use super::error::{posix, FsResult};
use super::inode::Inode;

/// Read permission bit of an access mask.
pub const MAY_READ: u32 = 4;
/// Write permission bit.
pub const MAY_WRITE: u32 = 2;
/// Execute / search permission bit.
pub const MAY_EXEC: u32 = 1;

/// Who makes a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// Filesystem user id.
    pub uid: u32,
    /// Filesystem group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Caller {
    /// The superuser.
    pub fn root() -> Caller {
        Caller::default()
    }

    /// A caller with no supplementary groups.
    pub fn new(uid: u32, gid: u32) -> Caller {
        Caller { uid, gid, groups: Vec::new() }
    }

    /// Whether the caller is the superuser.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether the caller is in group `gid`.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// Whether the caller owns `inode` or is root (may chmod, set times, ...).
    pub fn owns(&self, inode: &Inode) -> bool {
        self.is_root() || self.uid == inode.uid
    }
}

/// The permission bits (`rwx`, 0..=7) `inode` grants `caller`.
fn granted(caller: &Caller, inode: &Inode) -> u32 {
    if caller.uid == inode.uid {
        (inode.mode >> 6) & 7
    } else if caller.in_group(inode.gid) {
        (inode.mode >> 3) & 7
    } else {
        inode.mode & 7
    }
}

/// Checks that `caller` may access `inode` with `mask` (`MAY_*` bits): `EACCES` if not.
pub fn check(caller: &Caller, inode: &Inode, mask: u32) -> FsResult<()> {
    let mask = mask & 7;
    if caller.is_root() {
        let exec_ok = mask & MAY_EXEC == 0 || inode.is_dir() || inode.mode & 0o111 != 0;
        return if exec_ok { Ok(()) } else { Err(posix(libc::EACCES)) };
    }
    if granted(caller, inode) & mask == mask {
        Ok(())
    } else {
        Err(posix(libc::EACCES))
    }
}

/// The sticky-directory rule: in a sticky `dir`, only the owner of `victim`,
/// the owner of `dir` or root may remove or rename `victim` (`EPERM`).
pub fn check_sticky(caller: &Caller, dir: &Inode, victim: &Inode) -> FsResult<()> {
    if dir.mode & libc::S_ISVTX == 0
        || caller.is_root()
        || caller.uid == victim.uid
        || caller.uid == dir.uid
    {
        Ok(())
    } else {
        Err(posix(libc::EPERM))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rvmfs::inode::Timestamp;

    fn file(mode: u32, uid: u32, gid: u32) -> Inode {
        Inode::new(5, 1, libc::S_IFREG | mode, uid, gid, Timestamp::default())
    }

    #[test]
    fn owner_group_and_other_bits_apply_in_that_order() {
        let inode = file(0o640, 1000, 100);
        assert!(check(&Caller::new(1000, 5), &inode, MAY_READ | MAY_WRITE).is_ok());
        assert!(check(&Caller::new(1001, 100), &inode, MAY_READ).is_ok());
        assert!(check(&Caller::new(1001, 100), &inode, MAY_WRITE).is_err());
        let member = Caller { uid: 1001, gid: 5, groups: vec![100] };
        assert!(check(&member, &inode, MAY_READ).is_ok());
        assert_eq!(
            check(&Caller::new(1002, 5), &inode, MAY_READ).unwrap_err().errno(),
            libc::EACCES
        );
        // An owner denied by the owner bits is not rescued by the other bits.
        assert!(check(&Caller::new(1000, 5), &file(0o077, 1000, 100), MAY_READ).is_err());
    }

    #[test]
    fn root_needs_an_execute_bit_only_to_execute() {
        assert!(check(&Caller::root(), &file(0o000, 1000, 100), MAY_READ | MAY_WRITE).is_ok());
        assert!(check(&Caller::root(), &file(0o600, 1000, 100), MAY_EXEC).is_err());
        assert!(check(&Caller::root(), &file(0o601, 1000, 100), MAY_EXEC).is_ok());
    }

    #[test]
    fn sticky_directories_protect_other_users_files() {
        let mut dir = file(0o1777, 0, 0);
        dir.mode = libc::S_IFDIR | 0o1777;
        let victim = file(0o644, 1000, 100);
        assert!(check_sticky(&Caller::new(1000, 100), &dir, &victim).is_ok());
        assert_eq!(
            check_sticky(&Caller::new(1001, 100), &dir, &victim).unwrap_err().errno(),
            libc::EPERM
        );
    }
}
