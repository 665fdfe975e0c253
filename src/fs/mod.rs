//! RvmFS in the pool: `fs` regions as RVM page stores, and the mounts a
//! process (the daemon, or the mount helper without one) serves.

pub mod mountinfo;
mod mounts;
mod region_store;

pub use mounts::{
    check_filesystem, create_filesystem, FsCheckReport, FsMounts, MountError, MountInfo, Usage,
    ATTR_MOUNTPOINT, ATTR_OPTIONS,
};
pub use region_store::RegionStore;
