//! `MemDevice`: a sparse, thin-provisioned block device in memory.
//!
//! It is the reference implementation of [`BlockDevice`]: a map from block
//! index to 4 KiB block, where a missing entry is a hole. Trim and
//! write-zeroes really unmap (or provision zeroed blocks for `NO_HOLE`), and
//! `block_status` reports exactly what is mapped. Memory is the medium, so
//! flush and FUA have nothing to persist; they are counted so that tests can
//! see them arrive. The crate's tests serve it over NBD; the root crate's
//! block regions must behave the same way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::device::{
    check_range, BlockDevice, DeviceError, Extent, ReadRun, BLOCK_SIZE, MAX_EXTENTS,
};

const BS: u64 = BLOCK_SIZE as u64;

/// One mapped block.
#[derive(Debug)]
enum Block {
    /// Provisioned by write-zeroes without trim: allocated, reads as zeroes.
    Zeroed,
    /// Written data.
    Data(Box<[u8]>),
}

/// A sparse in-memory block device. See the module documentation.
#[derive(Debug)]
pub struct MemDevice {
    size: u64,
    blocks: RwLock<BTreeMap<u64, Block>>,
    flushes: AtomicU64,
    fua_writes: AtomicU64,
}

impl MemDevice {
    /// An empty (fully unmapped) device of `size` bytes.
    pub fn new(size: u64) -> Self {
        MemDevice {
            size,
            blocks: RwLock::new(BTreeMap::new()),
            flushes: AtomicU64::new(0),
            fua_writes: AtomicU64::new(0),
        }
    }

    /// How many blocks are mapped (data or provisioned zeroes).
    pub fn mapped_blocks(&self) -> usize {
        self.read_map().len()
    }

    /// How many `flush` calls the device has served.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// How many writes asked for FUA.
    pub fn fua_write_count(&self) -> u64 {
        self.fua_writes.load(Ordering::Relaxed)
    }

    fn read_map(&self) -> RwLockReadGuard<'_, BTreeMap<u64, Block>> {
        self.blocks.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_map(&self) -> RwLockWriteGuard<'_, BTreeMap<u64, Block>> {
        self.blocks.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Zero (or provision, or unmap) `offset..offset + len`.
    fn zero_range(&self, offset: u64, len: u64, may_trim: bool) -> Result<(), DeviceError> {
        check_range(offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let first_full = offset.div_ceil(BS);
        let end_full = end / BS; // exclusive
        let mut map = self.write_map();
        // Partial blocks at the head and tail (possibly the same block, or
        // two neighbours when the range covers no whole block).
        let head_end = end.min(first_full.saturating_mul(BS));
        zero_partial(&mut map, offset, head_end, may_trim);
        zero_partial(&mut map, offset.max(end_full * BS).max(head_end), end, may_trim);
        if first_full >= end_full {
            return Ok(());
        }
        if may_trim {
            let mut middle = map.split_off(&first_full);
            let mut tail = middle.split_off(&end_full);
            map.append(&mut tail);
        } else {
            for idx in first_full..end_full {
                map.insert(idx, Block::Zeroed);
            }
        }
        Ok(())
    }
}

/// Zero `start..end`, which lies within one block. A hole stays a hole when
/// trimming is allowed and becomes a provisioned block otherwise.
fn zero_partial(map: &mut BTreeMap<u64, Block>, start: u64, end: u64, may_trim: bool) {
    if start >= end {
        return;
    }
    let idx = start / BS;
    let from = (start - idx * BS) as usize;
    let to = (end - idx * BS) as usize;
    match map.get_mut(&idx) {
        Some(Block::Data(bytes)) => bytes[from..to].fill(0),
        Some(Block::Zeroed) => {}
        None if !may_trim => {
            map.insert(idx, Block::Zeroed);
        }
        None => {}
    }
}

/// Builds a bounded, merged extent list.
struct ExtentList {
    extents: Vec<Extent>,
}

impl ExtentList {
    /// Append `len` bytes of the given state; false once the list is full
    /// and the bytes could not be merged into the last extent.
    fn push(&mut self, len: u64, hole: bool, zero: bool) -> bool {
        if len == 0 {
            return true;
        }
        if let Some(last) = self.extents.last_mut() {
            if last.hole == hole && last.zero == zero {
                last.len += len;
                return true;
            }
        }
        if self.extents.len() == MAX_EXTENTS {
            return false;
        }
        self.extents.push(Extent { len, hole, zero });
        true
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let len = buf.len() as u64;
        check_range(offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let map = self.read_map();
        let mut pos = offset;
        for (&idx, block) in map.range(offset / BS..=(end - 1) / BS) {
            let block_start = idx * BS;
            let from = pos.max(block_start);
            let to = end.min(block_start + BS);
            buf[(pos - offset) as usize..(from - offset) as usize].fill(0);
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match block {
                Block::Zeroed => dst.fill(0),
                Block::Data(bytes) => dst.copy_from_slice(
                    &bytes[(from - block_start) as usize..(to - block_start) as usize],
                ),
            }
            pos = to;
        }
        buf[(pos - offset) as usize..].fill(0);
        Ok(())
    }

    fn read_in_place(
        &self,
        offset: u64,
        len: u64,
        serve: &mut dyn FnMut(&[ReadRun<'_>]),
    ) -> Result<bool, DeviceError> {
        check_range(offset, len, self.size)?;
        let end = offset + len;
        let map = self.read_map();
        let mut runs: Vec<ReadRun<'_>> = Vec::new();
        let zeroes = |runs: &mut Vec<ReadRun<'_>>, n: u64| match runs.last_mut() {
            _ if n == 0 => {}
            Some(ReadRun::Zeroes(before)) => *before += n as usize,
            _ => runs.push(ReadRun::Zeroes(n as usize)),
        };
        let mut pos = offset;
        if len > 0 {
            for (&idx, block) in map.range(offset / BS..=(end - 1) / BS) {
                let block_start = idx * BS;
                let from = pos.max(block_start);
                let to = end.min(block_start + BS);
                zeroes(&mut runs, from - pos);
                match block {
                    Block::Zeroed => zeroes(&mut runs, to - from),
                    Block::Data(bytes) => runs.push(ReadRun::Data(
                        &bytes[(from - block_start) as usize..(to - block_start) as usize],
                    )),
                }
                pos = to;
            }
        }
        zeroes(&mut runs, end - pos);
        serve(&runs);
        Ok(true)
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
        let len = data.len() as u64;
        check_range(offset, len, self.size)?;
        if fua {
            self.fua_writes.fetch_add(1, Ordering::Relaxed);
        }
        let end = offset + len;
        let mut map = self.write_map();
        let mut pos = offset;
        while pos < end {
            let idx = pos / BS;
            let block_start = idx * BS;
            let to = end.min(block_start + BS);
            let src = &data[(pos - offset) as usize..(to - offset) as usize];
            let block = map.entry(idx).or_insert(Block::Zeroed);
            if let Block::Zeroed = block {
                *block = Block::Data(vec![0u8; BLOCK_SIZE as usize].into_boxed_slice());
            }
            if let Block::Data(bytes) = block {
                bytes[(pos - block_start) as usize..(to - block_start) as usize]
                    .copy_from_slice(src);
            }
            pos = to;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), DeviceError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        self.zero_range(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> Result<(), DeviceError> {
        self.zero_range(offset, len, may_trim)
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DeviceError> {
        check_range(offset, len, self.size)?;
        let mut list = ExtentList { extents: Vec::new() };
        if len == 0 {
            return Ok(list.extents);
        }
        let end = offset + len;
        let map = self.read_map();
        let mut pos = offset;
        for (&idx, block) in map.range(offset / BS..=(end - 1) / BS) {
            let block_start = idx * BS;
            let from = pos.max(block_start);
            let to = end.min(block_start + BS);
            if !list.push(from - pos, true, true) {
                return Ok(list.extents);
            }
            let zero = matches!(block, Block::Zeroed);
            if !list.push(to - from, false, zero) {
                return Ok(list.extents);
            }
            pos = to;
        }
        list.push(end - pos, true, true);
        Ok(list.extents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hole(len: u64) -> Extent {
        Extent { len, hole: true, zero: true }
    }

    fn data(len: u64) -> Extent {
        Extent { len, hole: false, zero: false }
    }

    #[test]
    fn a_new_device_reads_zeroes_and_is_one_hole() {
        let dev = MemDevice::new(1 << 20);
        let mut buf = vec![0xffu8; 8192];
        dev.read_at(4000, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(dev.block_status(0, 1 << 20).unwrap(), vec![hole(1 << 20)]);
        assert_eq!(dev.mapped_blocks(), 0);
    }

    #[test]
    fn an_unaligned_write_maps_every_block_it_touches() {
        let dev = MemDevice::new(1 << 20);
        dev.write_at(4000, &[7u8; 200], false).unwrap();
        assert_eq!(dev.mapped_blocks(), 2);
        let mut buf = vec![0u8; 300];
        dev.read_at(3950, &mut buf).unwrap();
        assert!(buf[..50].iter().all(|&b| b == 0));
        assert!(buf[50..250].iter().all(|&b| b == 7));
        assert!(buf[250..].iter().all(|&b| b == 0));
        assert_eq!(dev.block_status(0, 3 * BS).unwrap(), vec![data(2 * BS), hole(BS)]);
    }

    #[test]
    fn trim_unmaps_whole_blocks_and_zeroes_partial_ones() {
        let dev = MemDevice::new(16 * BS);
        dev.write_at(0, &vec![1u8; 4 * BS as usize], false).unwrap();
        dev.trim(BS / 2, 2 * BS).unwrap();
        assert_eq!(dev.mapped_blocks(), 3, "block 1 is unmapped, 0 and 2 are partial");
        let mut buf = vec![0u8; 4 * BS as usize];
        dev.read_at(0, &mut buf).unwrap();
        let half = (BS / 2) as usize;
        assert!(buf[..half].iter().all(|&b| b == 1));
        assert!(buf[half..2 * BS as usize + half].iter().all(|&b| b == 0));
        assert!(buf[2 * BS as usize + half..].iter().all(|&b| b == 1));
        assert_eq!(dev.block_status(0, 4 * BS).unwrap(), vec![data(BS), hole(BS), data(2 * BS)]);
    }

    #[test]
    fn write_zeroes_without_trim_provisions_zeroed_blocks() {
        let dev = MemDevice::new(16 * BS);
        dev.write_at(0, &[9u8; 100], false).unwrap();
        dev.write_zeroes(0, 4 * BS, false).unwrap();
        assert_eq!(dev.mapped_blocks(), 4);
        assert_eq!(
            dev.block_status(0, 8 * BS).unwrap(),
            vec![Extent { len: 4 * BS, hole: false, zero: true }, hole(4 * BS)]
        );
        let mut buf = vec![1u8; 100];
        dev.read_at(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        dev.write_zeroes(0, 4 * BS, true).unwrap();
        assert_eq!(dev.mapped_blocks(), 0);
    }

    #[test]
    fn block_status_stops_after_max_extents() {
        let dev = MemDevice::new(4 * MAX_EXTENTS as u64 * BS);
        for i in 0..(2 * MAX_EXTENTS as u64) {
            dev.write_at(2 * i * BS, &[1], false).unwrap();
        }
        let extents = dev.block_status(0, dev.size()).unwrap();
        assert_eq!(extents.len(), MAX_EXTENTS);
        assert_eq!(extents.iter().map(|e| e.len).sum::<u64>(), MAX_EXTENTS as u64 * BS);
    }

    #[test]
    fn every_operation_rejects_ranges_past_the_end() {
        let dev = MemDevice::new(8 * BS);
        let mut buf = [0u8; 2];
        assert!(dev.read_at(8 * BS - 1, &mut buf).is_err());
        assert!(dev.write_at(8 * BS - 1, &buf, false).is_err());
        assert!(dev.trim(u64::MAX, 2).is_err());
        assert!(dev.write_zeroes(0, 8 * BS + 1, false).is_err());
        assert!(dev.block_status(8 * BS, 1).is_err());
        assert_eq!(dev.mapped_blocks(), 0);
    }

    #[test]
    fn flush_and_fua_are_counted() {
        let dev = MemDevice::new(BS);
        dev.write_at(0, &[1], true).unwrap();
        dev.write_at(0, &[1], false).unwrap();
        dev.flush().unwrap();
        assert_eq!((dev.fua_write_count(), dev.flush_count()), (1, 1));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        Trim(u64, u64),
        Zero(u64, u64, bool),
    }

    const MODEL_SIZE: u64 = 16 * BS;

    fn op() -> impl Strategy<Value = Op> {
        let range = (0..MODEL_SIZE).prop_flat_map(|o| (Just(o), 0..=(MODEL_SIZE - o).min(3 * BS)));
        prop_oneof![
            (0..MODEL_SIZE, 1usize..6000).prop_map(|(o, n)| {
                let n = n.min((MODEL_SIZE - o) as usize);
                Op::Write(o, (0..n).map(|i| (i % 251) as u8 + 1).collect())
            }),
            range.clone().prop_map(|(o, l)| Op::Trim(o, l)),
            (range, any::<bool>()).prop_map(|((o, l), t)| Op::Zero(o, l, t)),
        ]
    }

    proptest! {
        #[test]
        fn reads_and_block_status_agree_with_a_flat_model(ops in proptest::collection::vec(op(), 1..40)) {
            let dev = MemDevice::new(MODEL_SIZE);
            let mut model = vec![0u8; MODEL_SIZE as usize];
            for op in &ops {
                match op {
                    Op::Write(o, d) => {
                        dev.write_at(*o, d, false).unwrap();
                        model[*o as usize..*o as usize + d.len()].copy_from_slice(d);
                    }
                    Op::Trim(o, l) => {
                        dev.trim(*o, *l).unwrap();
                        model[*o as usize..(*o + *l) as usize].fill(0);
                    }
                    Op::Zero(o, l, t) => {
                        dev.write_zeroes(*o, *l, *t).unwrap();
                        model[*o as usize..(*o + *l) as usize].fill(0);
                    }
                }
            }
            let mut buf = vec![0u8; MODEL_SIZE as usize];
            dev.read_at(0, &mut buf).unwrap();
            prop_assert_eq!(&buf, &model);
            // Every extent claiming zeroes really reads as zeroes, and the
            // extents tile the device.
            let extents = dev.block_status(0, MODEL_SIZE).unwrap();
            let mut pos = 0usize;
            for e in &extents {
                prop_assert!(e.len > 0);
                if e.zero {
                    prop_assert!(model[pos..pos + e.len as usize].iter().all(|&b| b == 0));
                }
                pos += e.len as usize;
            }
            prop_assert_eq!(pos as u64, MODEL_SIZE);
            // Reads in place hand out the same bytes, from any offset.
            for (offset, len) in [(0, MODEL_SIZE), (1, MODEL_SIZE - 2), (4095, 2), (7, 0)] {
                let (mut bytes, mut empty_runs) = (Vec::new(), 0);
                let served = dev.read_in_place(offset, len, &mut |runs| {
                    for run in runs {
                        empty_runs += usize::from(run.is_empty());
                        match run {
                            ReadRun::Data(data) => bytes.extend_from_slice(data),
                            ReadRun::Zeroes(n) => bytes.resize(bytes.len() + n, 0),
                        }
                    }
                });
                prop_assert!(served.unwrap());
                prop_assert_eq!(empty_runs, 0);
                prop_assert_eq!(&bytes[..], &model[offset as usize..(offset + len) as usize]);
            }
        }
    }
}
