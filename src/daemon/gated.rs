//! `GatedRegion`: a block region as the transports see it, behind the gate.
//!
//! Every request a transport (NBD, ublk) hands to a block region enters the
//! daemon's [`Gate`] first and leaves it when the region has answered, so
//! that shutting the gate stops block I/O and waits for the requests in
//! flight. A request that finds the gate held by a power-outage fence
//! waits (on the transport's thread) until the fence is cancelled: the
//! client sees a slow disk, not an error. A request that finds the gate
//! closed for shutdown fails with [`DeviceError::ShuttingDown`] (ESHUTDOWN
//! on the wire) without touching the pool.

use std::sync::Arc;

use pmvisor_blk::{BlockDevice, DeviceError, Extent, ReadRun};

use crate::block::BlockRegion;
use crate::gate::{Gate, GateGuard};

/// A block region whose every request passes through a gate.
#[derive(Debug, Clone)]
pub struct GatedRegion {
    region: Arc<BlockRegion>,
    gate: Gate,
}

impl GatedRegion {
    /// Serve `region` through `gate`.
    pub fn new(region: Arc<BlockRegion>, gate: Gate) -> GatedRegion {
        GatedRegion { region, gate }
    }

    /// The region behind the gate.
    pub fn region(&self) -> &Arc<BlockRegion> {
        &self.region
    }

    fn enter(&self) -> Result<GateGuard, DeviceError> {
        self.gate.enter_or_wait_as(self.region.name()).map_err(|_| DeviceError::ShuttingDown)
    }
}

impl BlockDevice for GatedRegion {
    fn size(&self) -> u64 {
        self.region.size()
    }

    fn block_size(&self) -> u32 {
        self.region.block_size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let _inside = self.enter()?;
        self.region.read_at(offset, buf)
    }

    fn read_in_place(
        &self,
        offset: u64,
        len: u64,
        serve: &mut dyn FnMut(&[ReadRun<'_>]),
    ) -> Result<bool, DeviceError> {
        let _inside = self.enter()?;
        self.region.read_in_place(offset, len, serve)
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
        let _inside = self.enter()?;
        self.region.write_at(offset, data, fua)
    }

    fn flush(&self) -> Result<(), DeviceError> {
        let _inside = self.enter()?;
        self.region.flush()
    }

    fn trim(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        let _inside = self.enter()?;
        self.region.trim(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> Result<(), DeviceError> {
        let _inside = self.enter()?;
        self.region.write_zeroes(offset, len, may_trim)
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DeviceError> {
        let _inside = self.enter()?;
        self.region.block_status(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockRegions, BlockSpec};
    use crate::pool::{CreateOptions, Pool};
    use std::time::Duration;

    #[test]
    fn requests_pass_while_open_and_fail_with_shutting_down_once_closed() {
        let dir = tempfile::tempdir().unwrap();
        let options = CreateOptions { size: 16 << 20, ..CreateOptions::default() };
        let pool = Arc::new(Pool::create(&dir.path().join("p"), &options).unwrap());
        let blocks = BlockRegions::open_file_swap(pool, &dir.path().join("p.swap")).unwrap();
        let spec = BlockSpec { size: 1 << 20, resident: 1 << 20, swap: false };
        let region = blocks.create("disk", spec).unwrap();
        let gate = Gate::new();
        let device = GatedRegion::new(region, gate.clone());

        device.write_at(4096, &[7u8; 4096], false).unwrap();
        let mut back = [0u8; 4096];
        device.read_at(4096, &mut back).unwrap();
        assert_eq!(back, [7u8; 4096]);
        assert_eq!(gate.in_flight(), 0, "every request left the gate");

        gate.close(Duration::from_secs(1)).unwrap();
        assert!(matches!(device.read_at(0, &mut back), Err(DeviceError::ShuttingDown)));
        assert!(matches!(device.write_at(0, &back, true), Err(DeviceError::ShuttingDown)));
        assert!(matches!(device.flush(), Err(DeviceError::ShuttingDown)));
        assert!(matches!(device.trim(0, 4096), Err(DeviceError::ShuttingDown)));
        assert!(matches!(device.block_status(0, 4096), Err(DeviceError::ShuttingDown)));
        assert_eq!(device.size(), 1 << 20, "the size needs no gate");
    }

    #[test]
    fn requests_wait_at_a_fence_and_complete_when_it_is_lifted() {
        let dir = tempfile::tempdir().unwrap();
        let options = CreateOptions { size: 16 << 20, ..CreateOptions::default() };
        let pool = Arc::new(Pool::create(&dir.path().join("p"), &options).unwrap());
        let blocks = BlockRegions::open_file_swap(pool, &dir.path().join("p.swap")).unwrap();
        let spec = BlockSpec { size: 1 << 20, resident: 1 << 20, swap: false };
        let gate = Gate::new();
        let device = GatedRegion::new(blocks.create("disk", spec).unwrap(), gate.clone());
        gate.hold(Duration::from_secs(1)).unwrap();
        let writer = {
            let device = device.clone();
            std::thread::spawn(move || device.write_at(0, &[9u8; 4096], true))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!writer.is_finished(), "the write waits at the fence");
        gate.open();
        writer.join().unwrap().unwrap();
        let mut back = [0u8; 4096];
        device.read_at(0, &mut back).unwrap();
        assert_eq!(back, [9u8; 4096]);
    }
}
