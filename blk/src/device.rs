//! The `BlockDevice` trait: everything a block transport (NBD, ublk) needs
//! from a block region, and nothing more.
//!
//! A device is a range of `size()` bytes addressed by byte offset. Calls are
//! synchronous and may block (a region may fault a block in from its swap
//! tier, or persist a range), so transports run them off their async
//! executors. Every method takes `&self`: a device is shared by all queues and
//! connections of all transports at once, and must serialise internally.
//!
//! Durability contract: a `write_at` with `fua == true` is durable when it
//! returns; `flush` makes every write that completed before it was called
//! durable, whichever connection or queue issued it. This is what lets the
//! NBD server advertise multi-conn.

use std::io;

/// The block size every pmvisor device reports: one pool page.
pub const BLOCK_SIZE: u32 = 4096;

/// The most extents one `block_status` call may return. Transports truncate
/// longer answers, so a device gains nothing by exceeding it.
pub const MAX_EXTENTS: usize = 1024;

/// One run of bytes with the same allocation state, as `block_status`
/// reports it. Extents are contiguous: the first starts at the queried
/// offset and each starts where the previous one ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes; never zero.
    pub len: u64,
    /// No storage backs this range (unmapped); writing it may need space.
    pub hole: bool,
    /// The range reads as zeroes.
    pub zero: bool,
}

/// A run of the bytes of a read served in place
/// ([`BlockDevice::read_in_place`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadRun<'a> {
    /// Bytes as the device holds them.
    Data(&'a [u8]),
    /// This many bytes that read as zeroes and are stored nowhere (a hole).
    Zeroes(usize),
}

impl ReadRun<'_> {
    /// Bytes this run stands for.
    pub fn len(&self) -> usize {
        match self {
            ReadRun::Data(bytes) => bytes.len(),
            ReadRun::Zeroes(n) => *n,
        }
    }

    /// Whether the run stands for no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a device operation failed. Each variant maps to one errno value that
/// both NBD (whose error values are the Linux errnos) and ublk understand.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The medium or the swap tier failed.
    #[error("I/O error on the device")]
    Io(#[source] io::Error),
    /// A write needed a page and none could be had within the quota.
    #[error("no space left for this write")]
    NoSpace,
    /// The range does not lie within the device.
    #[error("range {offset}+{len} is outside the device of {size} bytes")]
    OutOfRange {
        /// First byte of the rejected range.
        offset: u64,
        /// Length of the rejected range.
        len: u64,
        /// Size of the device.
        size: u64,
    },
    /// The device refuses writes (for example, the pool is fenced).
    #[error("the device is read-only")]
    ReadOnly,
    /// The device is being shut down (its I/O gate is closed).
    #[error("the device is shutting down")]
    ShuttingDown,
}

impl DeviceError {
    /// The Linux errno value that reports this error to a client.
    pub fn errno(&self) -> u32 {
        match self {
            DeviceError::Io(_) => 5,              // EIO
            DeviceError::NoSpace => 28,           // ENOSPC
            DeviceError::OutOfRange { .. } => 22, // EINVAL
            DeviceError::ReadOnly => 1,           // EPERM
            DeviceError::ShuttingDown => 108,     // ESHUTDOWN
        }
    }
}

/// A block region as transports see it. See the module documentation for
/// the sharing and durability contract.
pub trait BlockDevice: Send + Sync {
    /// Size in bytes, fixed for the life of the device.
    fn size(&self) -> u64;

    /// The allocation granularity: I/O aligned to it avoids read-modify-write.
    fn block_size(&self) -> u32 {
        BLOCK_SIZE
    }

    /// Fill `buf` with the bytes at `offset..offset + buf.len()`.
    /// Unmapped ranges read as zeroes.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError>;

    /// Store `data` at `offset`; when `fua` is set the data is durable on
    /// return.
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DeviceError>;

    /// Make every write completed before this call durable.
    fn flush(&self) -> Result<(), DeviceError>;

    /// Discard `offset..offset + len`: whole blocks are unmapped and their
    /// storage freed; the partial blocks at either end read back as zeroes.
    fn trim(&self, offset: u64, len: u64) -> Result<(), DeviceError>;

    /// Make `offset..offset + len` read as zeroes. With `may_trim` whole
    /// blocks may be unmapped; without it they stay allocated.
    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> Result<(), DeviceError>;

    /// The allocation state of `offset..offset + len` as contiguous extents
    /// starting at `offset`. The answer may stop short of `len` (at most
    /// [`MAX_EXTENTS`] extents) but covers at least one byte when `len > 0`,
    /// and never extends past `offset + len`.
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DeviceError>;

    /// Serve a read of `offset..offset + len` without copying it through a
    /// buffer: call `serve` once with runs that cover the range in order,
    /// while the bytes cannot change. `serve` runs with the device's lock
    /// held, so it must not block (a transport sends what the socket takes
    /// at once and copies the rest). A device whose bytes are not
    /// addressable memory, or that cannot hold the whole range at once,
    /// returns `Ok(false)` without calling `serve`, and the caller uses
    /// [`read_at`](BlockDevice::read_at).
    fn read_in_place(
        &self,
        offset: u64,
        len: u64,
        serve: &mut dyn FnMut(&[ReadRun<'_>]),
    ) -> Result<bool, DeviceError> {
        let _ = (offset, len, serve);
        Ok(false)
    }
}

/// Check that `offset..offset + len` lies within a device of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), DeviceError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DeviceError::OutOfRange { offset, len, size }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_errno_values_nbd_defines() {
        assert_eq!(DeviceError::Io(io::Error::other("x")).errno(), 5);
        assert_eq!(DeviceError::NoSpace.errno(), 28);
        assert_eq!(DeviceError::OutOfRange { offset: 0, len: 1, size: 0 }.errno(), 22);
        assert_eq!(DeviceError::ReadOnly.errno(), 1);
        assert_eq!(DeviceError::ShuttingDown.errno(), 108);
    }

    #[test]
    fn range_check_rejects_overflow_and_the_end_of_the_device() {
        assert!(check_range(0, 4096, 4096).is_ok());
        assert!(check_range(4096, 0, 4096).is_ok());
        assert!(check_range(1, 4096, 4096).is_err());
        assert!(check_range(u64::MAX, 2, u64::MAX).is_err());
    }

    #[test]
    fn out_of_range_message_names_the_range_and_size() {
        let err = DeviceError::OutOfRange { offset: 10, len: 5, size: 12 };
        assert_eq!(err.to_string(), "range 10+5 is outside the device of 12 bytes");
    }
}
