//! The pool's one public error type.
//!
//! Every message is a sentence a person can act on: it names what is wrong
//! (the pool path, the region, the size) and, where there is one, the fix.
//! The underlying cause, when there is one, is kept in `#[source]` and not
//! repeated in the message. [`PoolError::kind`] gives the broad class that
//! the daemon maps to an HTTP status and the CLI to an exit code.

use std::io;
use std::path::PathBuf;

/// Broad classes of pool errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The pool or region does not exist.
    NotFound,
    /// A region of that name, or a pool file at that path, already exists.
    AlreadyExists,
    /// A name, size or option is not acceptable.
    InvalidInput,
    /// The pool or its metadata area has no room.
    NoSpace,
    /// Another process (or this one) holds the pool.
    Busy,
    /// On-media structures fail their checks.
    Corrupt,
    /// The medium is of a kind or version this build cannot use.
    Unsupported,
    /// An I/O operation on the medium failed.
    Io,
}

/// Everything that can go wrong with a pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(
        "pool {} does not exist; create it with `pmvisor pool create --size SIZE {}`",
        path.display(),
        path.display()
    )]
    PoolNotFound { path: PathBuf },

    #[error("{} already exists; choose another path or remove it first", path.display())]
    PoolExists { path: PathBuf },

    #[error(
        "{} already holds a pmvisor pool; formatting it would destroy its regions, so pass \
         --force if that is what you want",
        path.display()
    )]
    DeviceHoldsPool { path: PathBuf },

    #[error("cannot open pool {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "{} is a {what}, not a pool; give a regular file, a block device (/dev/pmem0) \
         or a devdax device (/dev/dax0.0)",
        path.display()
    )]
    WrongFileType { path: PathBuf, what: &'static str },

    #[error(
        "a pool of {size} bytes is too small: it needs at least {min} bytes \
         (superblocks, metadata and one data page); choose a larger --size"
    )]
    TooSmall { size: u64, min: u64 },

    #[error(
        "{} is not a pmvisor pool (no valid superblock); check the path, or create a pool \
         there with `pmvisor pool create`",
        path.display()
    )]
    NotAPool { path: PathBuf },

    #[error(
        "pool {} has format version {found}, newer than this pmvisor supports ({supported}); \
         upgrade pmvisor to open it",
        path.display()
    )]
    NewerFormat { path: PathBuf, found: u32, supported: u32 },

    #[error(
        "both superblock copies of pool {} are damaged ({detail}); the pool cannot be opened",
        path.display()
    )]
    BothSuperblocksBad { path: PathBuf, detail: String },

    #[error(
        "pool {} is {actual} bytes but its superblock says {expected}; the file was truncated \
         or is the wrong device",
        path.display()
    )]
    Truncated { path: PathBuf, expected: u64, actual: u64 },

    #[error(
        "the metadata of pool {} is damaged: {detail}; run `pmvisor pool check` for details",
        path.display()
    )]
    CorruptMetadata { path: PathBuf, detail: String },

    #[error(
        "pool {} is in use by process {pid}; stop that process or send the command to it",
        path.display()
    )]
    LockedBy { path: PathBuf, pid: i32 },

    #[error(
        "pool {} is in use by another process (its PID could not be read); stop it first",
        path.display()
    )]
    Locked { path: PathBuf },

    #[error("pool {} is open read-only; this operation changes it", path.display())]
    ReadOnly { path: PathBuf },

    #[error(
        "pool {} is fenced after a power outage; nothing may change it until `pmvisor pod \
         cancel` lifts the fence or the daemon restarts",
        path.display()
    )]
    Fenced { path: PathBuf },

    #[error(
        "invalid region name {name:?}: {reason}; names are 1 to 64 letters, digits and \
         . _ - : @ +"
    )]
    InvalidName { name: String, reason: &'static str },

    #[error("region {name:?} already exists; pick another name or delete it first")]
    RegionExists { name: String },

    #[error("no region named {name:?}; `pmvisor region list` shows the regions")]
    RegionNotFound { name: String },

    #[error("a region size must be larger than zero; give a size such as 64M or 1G")]
    ZeroSize,

    #[error(
        "region {name:?} needs {needed} pages but the pool has only {free} free; \
         delete or shrink regions, or use a larger pool"
    )]
    NoSpace { name: String, needed: u64, free: u64 },

    #[error(
        "memory region {name:?} needs {needed} contiguous pages but the largest free run \
         is {largest}; free space next to it or use a larger pool"
    )]
    NoContiguousSpace { name: String, needed: u64, largest: u64 },

    #[error(
        "memory region {name:?} can only grow in place, and the {extra} pages after it are \
         not all free; create a new memory region of the size you need instead"
    )]
    CannotGrowInPlace { name: String, extra: u64 },

    #[error(
        "region {name:?} would need more than {max} extents; the pool is too fragmented \
         for it, so create it smaller or free neighbouring space"
    )]
    TooFragmented { name: String, max: usize },

    #[error(
        "the pool's metadata area ({capacity} bytes) is full; recreate the pool with a \
         larger --metadata-size"
    )]
    MetadataFull { capacity: u64 },

    #[error("attribute {key:?} of region {name:?} is invalid: {reason}")]
    InvalidAttribute { name: String, key: String, reason: &'static str },

    #[error(
        "access to region {name:?} at offset {offset} for {len} bytes is outside its \
         {size}-byte allocation"
    )]
    OutOfRange { name: String, offset: u64, len: u64, size: u64 },

    #[error("{operation} on pool {} failed", path.display())]
    Io {
        path: PathBuf,
        operation: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("{feature} is not supported on {}: {why}", path.display())]
    Unsupported { path: PathBuf, feature: &'static str, why: String },
}

impl PoolError {
    /// The broad class of this error.
    pub fn kind(&self) -> ErrorKind {
        use PoolError::*;
        match self {
            PoolNotFound { .. } | RegionNotFound { .. } => ErrorKind::NotFound,
            PoolExists { .. } | DeviceHoldsPool { .. } | RegionExists { .. } => {
                ErrorKind::AlreadyExists
            }
            WrongFileType { .. }
            | TooSmall { .. }
            | InvalidName { .. }
            | ZeroSize
            | InvalidAttribute { .. }
            | OutOfRange { .. }
            | ReadOnly { .. } => ErrorKind::InvalidInput,
            NoSpace { .. }
            | NoContiguousSpace { .. }
            | CannotGrowInPlace { .. }
            | TooFragmented { .. }
            | MetadataFull { .. } => ErrorKind::NoSpace,
            LockedBy { .. } | Locked { .. } | Fenced { .. } => ErrorKind::Busy,
            NotAPool { .. }
            | BothSuperblocksBad { .. }
            | Truncated { .. }
            | CorruptMetadata { .. } => ErrorKind::Corrupt,
            NewerFormat { .. } | Unsupported { .. } => ErrorKind::Unsupported,
            Open { .. } | Io { .. } => ErrorKind::Io,
        }
    }
}

/// Shorthand for pool results.
pub type Result<T> = std::result::Result<T, PoolError>;
