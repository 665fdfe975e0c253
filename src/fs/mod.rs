//! RvmFS in the pool: `fs` regions as RVM page stores, and (next) the
//! mounts the daemon serves.

mod region_store;

pub use region_store::RegionStore;
