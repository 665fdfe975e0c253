//! One ublk I/O descriptor, decoded and carried out on a [`BlockDevice`].
//!
//! The driver describes each request as `op_flags` (operation in the low
//! byte, `UBLK_IO_F_*` flags above it), a start sector and a sector count,
//! always in 512-byte sectors whatever the logical block size. The answer is
//! the number of bytes done for reads and writes (anything short makes the
//! block layer resubmit the rest), zero for the other operations, or a
//! negative errno.

use libublk::sys;

use crate::device::BlockDevice;

const SECTOR_SHIFT: u32 = 9;
const EINVAL: i32 = 22;
const EOPNOTSUPP: i32 = 95;

/// What the driver asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    Read { offset: u64, len: usize },
    Write { offset: u64, len: usize, fua: bool },
    Flush,
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64, may_trim: bool },
}

impl Request {
    /// Decode a descriptor, or the negative errno to answer with.
    /// The sector of a FLUSH means nothing (the driver sends all ones).
    pub(crate) fn decode(op_flags: u32, start_sector: u64, nr_sectors: u32) -> Result<Self, i32> {
        let offset = || start_sector.checked_mul(1 << SECTOR_SHIFT).ok_or(-EINVAL);
        let len = u64::from(nr_sectors) << SECTOR_SHIFT;
        let buf_len = || usize::try_from(len).map_err(|_| -EINVAL);
        match op_flags & 0xff {
            sys::UBLK_IO_OP_READ => Ok(Request::Read { offset: offset()?, len: buf_len()? }),
            sys::UBLK_IO_OP_WRITE => Ok(Request::Write {
                offset: offset()?,
                len: buf_len()?,
                fua: op_flags & sys::UBLK_IO_F_FUA != 0,
            }),
            sys::UBLK_IO_OP_FLUSH => Ok(Request::Flush),
            sys::UBLK_IO_OP_DISCARD => Ok(Request::Discard { offset: offset()?, len }),
            sys::UBLK_IO_OP_WRITE_ZEROES => Ok(Request::WriteZeroes {
                offset: offset()?,
                len,
                may_trim: op_flags & sys::UBLK_IO_F_NOUNMAP == 0,
            }),
            _ => Err(-EOPNOTSUPP),
        }
    }

    /// Carry the request out on `dev`, with `buf` as the request's data
    /// buffer (filled for reads, read from for writes). Returns the result
    /// to commit to the driver.
    pub(crate) fn execute(self, dev: &dyn BlockDevice, buf: &mut [u8]) -> i32 {
        let done = match self {
            Request::Read { offset, len } => match buf.get_mut(..len) {
                Some(dst) => dev.read_at(offset, dst).map(|()| len),
                None => return -EINVAL,
            },
            Request::Write { offset, len, fua } => match buf.get(..len) {
                Some(src) => dev.write_at(offset, src, fua).map(|()| len),
                None => return -EINVAL,
            },
            Request::Flush => dev.flush().map(|()| 0),
            Request::Discard { offset, len } => dev.trim(offset, len).map(|()| 0),
            Request::WriteZeroes { offset, len, may_trim } => {
                dev.write_zeroes(offset, len, may_trim).map(|()| 0)
            }
        };
        match done {
            // The buffer, and so `len`, is bounded by the device's
            // max_io_buf_bytes, far below i32::MAX.
            Ok(n) => i32::try_from(n).unwrap_or(-EINVAL),
            Err(e) => -i32::try_from(e.errno()).unwrap_or(EINVAL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemDevice;

    const OP_READ: u32 = sys::UBLK_IO_OP_READ;
    const OP_WRITE: u32 = sys::UBLK_IO_OP_WRITE;

    #[test]
    fn sectors_become_byte_ranges() {
        assert_eq!(Request::decode(OP_READ, 8, 16), Ok(Request::Read { offset: 4096, len: 8192 }));
        assert_eq!(
            Request::decode(OP_WRITE | sys::UBLK_IO_F_FUA, 1, 1),
            Ok(Request::Write { offset: 512, len: 512, fua: true })
        );
        assert_eq!(Request::decode(sys::UBLK_IO_OP_FLUSH, 0, 0), Ok(Request::Flush));
        // What the 6.12 driver really sends for a flush.
        assert_eq!(Request::decode(sys::UBLK_IO_OP_FLUSH, u64::MAX, 0), Ok(Request::Flush));
    }

    #[test]
    fn nounmap_forbids_trimming_write_zeroes() {
        let op = sys::UBLK_IO_OP_WRITE_ZEROES;
        assert_eq!(
            Request::decode(op, 0, 8),
            Ok(Request::WriteZeroes { offset: 0, len: 4096, may_trim: true })
        );
        assert_eq!(
            Request::decode(op | sys::UBLK_IO_F_NOUNMAP, 0, 8),
            Ok(Request::WriteZeroes { offset: 0, len: 4096, may_trim: false })
        );
    }

    #[test]
    fn unknown_operations_and_overflowing_sectors_are_refused() {
        assert_eq!(Request::decode(sys::UBLK_IO_OP_ZONE_APPEND, 0, 8), Err(-EOPNOTSUPP));
        assert_eq!(Request::decode(OP_READ, u64::MAX, 8), Err(-EINVAL));
    }

    #[test]
    fn writes_and_reads_go_through_the_device() {
        let dev = MemDevice::new(1 << 20);
        let mut buf = vec![7u8; 8192];
        let write = Request::decode(OP_WRITE | sys::UBLK_IO_F_FUA, 8, 16).unwrap();
        assert_eq!(write.execute(&dev, &mut buf), 8192);
        assert_eq!(dev.fua_write_count(), 1);
        let mut back = vec![0u8; 8192];
        assert_eq!(Request::decode(OP_READ, 8, 16).unwrap().execute(&dev, &mut back), 8192);
        assert_eq!(back, buf);
    }

    #[test]
    fn discard_and_write_zeroes_unmap_and_zero() {
        let dev = MemDevice::new(1 << 20);
        dev.write_at(0, &[1u8; 16384], false).unwrap();
        let discard = Request::decode(sys::UBLK_IO_OP_DISCARD, 0, 8).unwrap();
        assert_eq!(discard.execute(&dev, &mut []), 0);
        assert_eq!(dev.mapped_blocks(), 3);
        let zero = Request::decode(sys::UBLK_IO_OP_WRITE_ZEROES | sys::UBLK_IO_F_NOUNMAP, 8, 8);
        assert_eq!(zero.unwrap().execute(&dev, &mut []), 0);
        assert_eq!(dev.mapped_blocks(), 3, "NOUNMAP keeps the block provisioned");
        let mut back = vec![1u8; 8192];
        dev.read_at(0, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        assert_eq!(Request::Flush.execute(&dev, &mut []), 0);
        assert_eq!(dev.flush_count(), 1);
    }

    #[test]
    fn device_errors_become_negative_errnos() {
        let dev = MemDevice::new(4096);
        let mut buf = vec![0u8; 8192];
        let past_end = Request::decode(OP_READ, 0, 16).unwrap();
        assert_eq!(past_end.execute(&dev, &mut buf), -EINVAL);
        let too_big_for_buffer = Request::decode(OP_WRITE, 0, 32).unwrap();
        assert_eq!(too_big_for_buffer.execute(&dev, &mut buf), -EINVAL);
    }
}
