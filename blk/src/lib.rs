//! Block transports for pmvisor (SPEC §5): the [`BlockDevice`] trait that the
//! root crate implements over block regions, [`MemDevice`] (its in-memory
//! reference implementation), and an NBD server ([`nbd::NbdServer`]).
//!
//! The crate depends on nothing of the root crate: transports see a region
//! only through `BlockDevice`, and are tested here against `MemDevice`.

mod device;
mod mem_device;
pub mod nbd;
pub mod ublk;

pub use device::{check_range, BlockDevice, DeviceError, Extent, ReadRun, BLOCK_SIZE, MAX_EXTENTS};
pub use mem_device::MemDevice;
