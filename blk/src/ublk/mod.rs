//! A ublk target: serves any [`BlockDevice`] as a Linux block device,
//! `/dev/ublkbN`, through the kernel's ublk driver (Linux 6.0+,
//! `ublk_drv`) and io_uring.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use pmvisor_blk::{BlockDevice, MemDevice};
//! use pmvisor_blk::ublk::{UblkOptions, UblkTarget};
//! let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(64 << 20));
//! let handle = UblkTarget::serve(dev, UblkOptions::default())?;
//! println!("serving {}", handle.path().display());
//! handle.stop()?;
//! # Ok::<(), pmvisor_blk::ublk::UblkError>(())
//! ```
//!
//! What it promises: READ, WRITE (with FUA), FLUSH, DISCARD and
//! WRITE_ZEROES (honouring NOUNMAP) reach the device with the
//! `BlockDevice` durability contract; logical blocks are 512 bytes and
//! physical blocks 4 KiB (the `params` module explains the limits); several
//! queues, each with its own thread and io_uring. Devices are created with
//! `UBLK_F_USER_RECOVERY` (and `_REISSUE` where the driver has it): when the
//! serving process dies the kernel keeps the device and queues its I/O, and
//! a new process calling [`UblkTarget::serve`] with `recover: true` and the
//! device id takes it over (`START_USER_RECOVERY` … `END_USER_RECOVERY`),
//! so users of the device see a pause, not an I/O error.
//! [`list_devices`] finds devices to recover, by the label given at
//! creation.
//!
//! What is hand-written here, and why: libublk (0.4) does the driver's
//! commands, the per-queue io_uring and buffer registration; this module
//! adds what libublk leaves to each target. `request` decodes a descriptor
//! into a `BlockDevice` call and maps `DeviceError` to the errno the block
//! layer gets. `params` sets the queue limits (discard, FUA, block sizes),
//! which libublk's defaults lack. `target` runs a device on its own thread
//! because libublk's control ring is thread-local, waits for it with a
//! timeout (libublk blocks forever if a queue never starts), and reads the
//! existing device's geometry before recovery (libublk sizes its tables
//! from the caller's numbers). `control` opens a fresh control handle per
//! call for the same thread-local reason, waits out the driver's delay in
//! noticing a dead server, and turns a missing `/dev/ublk-control` into an
//! error that says what to load. There is no `unsafe` here: libublk owns the
//! FFI and the shared buffers.
//!
//! What it assumes: root (or `CAP_SYS_ADMIN`), and that each queue may block
//! in the device: requests of one queue are served one after another, so
//! parallelism comes from the number of queues.
//!
//! [`BlockDevice`]: crate::BlockDevice

mod control;
mod error;
mod params;
mod request;
mod ring;
mod target;

pub use control::{
    check_driver, delete_device, device_info, list_devices, stop_device, DeviceState,
    UblkDeviceInfo,
};
pub use error::{UblkError, CONTROL_PATH};
pub use params::{MAX_DISCARD_BYTES, MAX_IO_BYTES};
pub use target::{UblkHandle, UblkOptions, UblkTarget};
