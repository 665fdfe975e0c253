//! The queue limits a pmvisor ublk device announces to the block layer.
//!
//! Logical blocks are 512 bytes (so any sector-aligned I/O is legal, as
//! `dd` and filesystems expect), physical blocks and the optimal I/O size are
//! one pool page (4 KiB). The device has a volatile write cache and FUA, so
//! the kernel sends FLUSH for `fsync` and FUA writes for journals, and the
//! `BlockDevice` durability contract applies. Discard and write-zeroes are
//! announced with a one-page granularity: a discard of whole pages frees them.

use libublk::sys;

/// Largest data transfer of one request, and the size of each tag's buffer.
pub const MAX_IO_BYTES: u32 = 512 * 1024;

/// Largest discard or write-zeroes request. Devices serve these without
/// moving data, but a single call still holds the device's map; the block
/// layer splits bigger ones.
pub const MAX_DISCARD_BYTES: u32 = 256 * 1024 * 1024;

const SECTOR_SHIFT: u32 = 9;
const PAGE_SHIFT: u8 = 12;

/// Parameters for a device of `size` bytes (a multiple of 512).
pub(crate) fn device_params(size: u64) -> sys::ublk_params {
    sys::ublk_params {
        len: size_of::<sys::ublk_params>() as u32,
        types: sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD,
        basic: sys::ublk_param_basic {
            attrs: sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA,
            logical_bs_shift: SECTOR_SHIFT as u8,
            physical_bs_shift: PAGE_SHIFT,
            io_opt_shift: PAGE_SHIFT,
            io_min_shift: PAGE_SHIFT,
            max_sectors: MAX_IO_BYTES >> SECTOR_SHIFT,
            dev_sectors: size >> SECTOR_SHIFT,
            ..Default::default()
        },
        discard: sys::ublk_param_discard {
            discard_alignment: 0,
            discard_granularity: 1 << PAGE_SHIFT,
            max_discard_sectors: MAX_DISCARD_BYTES >> SECTOR_SHIFT,
            max_write_zeroes_sectors: MAX_DISCARD_BYTES >> SECTOR_SHIFT,
            // The driver accepts only single-range discards.
            max_discard_segments: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_describe_size_blocks_cache_and_discard() {
        let p = device_params(64 << 20);
        assert_eq!(p.basic.dev_sectors, (64 << 20) / 512);
        assert_eq!((p.basic.logical_bs_shift, p.basic.physical_bs_shift), (9, 12));
        assert_eq!(p.basic.max_sectors, 1024);
        assert_ne!(p.basic.attrs & sys::UBLK_ATTR_FUA, 0);
        assert_ne!(p.basic.attrs & sys::UBLK_ATTR_VOLATILE_CACHE, 0);
        assert_ne!(p.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
        assert_eq!(p.discard.discard_granularity, 4096);
        assert_eq!(p.discard.max_discard_segments, 1);
        assert!(p.discard.max_write_zeroes_sectors > 0);
    }
}
