//! RvmFS in the pool: `fs` regions as RVM page stores, and the mounts a
//! process (the daemon, or the mount helper without one) serves.

mod mounts;
mod region_store;

pub use mounts::{
    create_filesystem, FsMounts, MountError, MountInfo, ATTR_MOUNTPOINT, ATTR_OPTIONS,
};
pub use region_store::RegionStore;
