//! [`FsError`]: why a filesystem operation failed, and the errno FUSE returns.
//!
//! POSIX outcomes (`ENOENT`, `EEXIST`, ...) are [`FsError::Posix`]; failures of
//! the RVM layer and corrupt on-RVM structures carry their cause and turn into
//! `EIO` (or `ENOSPC` when RVM ran out of pages), never into a panic.

use crate::RvmError;

/// A Linux errno value, displayed as the C library describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

/// Why a filesystem operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The operation is refused with this errno, as ext4 would refuse it.
    #[error("{0}")]
    Posix(Errno),
    /// The RVM layer failed.
    #[error("the RVM transaction layer failed")]
    Rvm(#[source] RvmError),
    /// An on-RVM structure does not decode.
    #[error("corrupt {structure} in logical page {page}: {reason}")]
    Corrupt {
        /// Which structure (superblock, inode, directory node, ...).
        structure: &'static str,
        /// Logical page it was read from.
        page: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The store holds no RvmFS (the root slot does not point to a superblock).
    #[error("the store holds no RvmFS superblock (root slot magic {magic:#018x})")]
    NotFormatted {
        /// Magic found in the root slot.
        magic: u64,
    },
    /// The filesystem was mounted read-only.
    #[error("the filesystem is mounted read-only")]
    ReadOnly,
    /// Mounting failed.
    #[error("cannot mount at {mountpoint}")]
    Mount {
        /// The mount point.
        mountpoint: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A mount option is malformed or unknown.
    #[error("invalid mount option {option:?}: {reason}")]
    MountOption {
        /// The option as given.
        option: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl FsError {
    /// The errno to report to the kernel.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Posix(errno) => errno.0,
            FsError::Rvm(RvmError::NoPhysicalSpace { .. } | RvmError::NoLogicalSpace { .. }) => {
                libc::ENOSPC
            }
            FsError::ReadOnly => libc::EROFS,
            FsError::MountOption { .. } => libc::EINVAL,
            _ => libc::EIO,
        }
    }

    /// A corrupt-structure error.
    pub(crate) fn corrupt(structure: &'static str, page: u64, reason: impl Into<String>) -> Self {
        FsError::Corrupt { structure, page, reason: reason.into() }
    }
}

impl From<RvmError> for FsError {
    fn from(error: RvmError) -> Self {
        FsError::Rvm(error)
    }
}

/// Shorthand for a POSIX refusal.
pub(crate) fn posix(errno: i32) -> FsError {
    FsError::Posix(Errno(errno))
}

/// Result of a filesystem operation.
pub type FsResult<T> = Result<T, FsError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix_errors_display_the_c_library_message_and_keep_their_errno() {
        let error = posix(libc::ENOENT);
        assert_eq!(error.errno(), libc::ENOENT);
        assert!(error.to_string().starts_with("No such file or directory"), "{error}");
    }

    #[test]
    fn running_out_of_rvm_pages_is_enospc_and_corruption_is_eio() {
        let full = FsError::Rvm(RvmError::NoPhysicalSpace { requested: 3, free: 1 });
        assert_eq!(full.errno(), libc::ENOSPC);
        let corrupt = FsError::corrupt("inode", 7, "bad checksum");
        assert_eq!(corrupt.errno(), libc::EIO);
        assert_eq!(corrupt.to_string(), "corrupt inode in logical page 7: bad checksum");
    }
}
