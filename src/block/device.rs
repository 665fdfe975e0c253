//! The transports' view of a block region: [`BlockDevice`] over its block
//! map, frames and swap tier. Reads fault swapped blocks in first (in one
//! batch); writes take frames, evicting when the quota is full; a large
//! read can be served in place, from the frames, under the region's lock.

use std::sync::atomic::Ordering;

use pmvisor_blk::{
    check_range, BlockDevice, DeviceError, Extent as StatusExtent, ReadRun, MAX_EXTENTS,
};

use super::{io, BlockRegion, BlockState, BLOCK};

/// Most bytes of zeros a `write_zeroes` that must provision writes at once.
const ZERO_CHUNK: u64 = 1 << 20;

impl BlockDevice for BlockRegion {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        check_range(offset, buf.len() as u64, self.size)?;
        let mut st = self.lock();
        // A request the quota cannot hold at once is read in parts, each
        // faulted in as one batch and copied out before the next evicts it.
        let part = Self::fault_part(&st) * BLOCK;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let len = (part - at % part).min((buf.len() - done) as u64);
            let (first, last) = (at / BLOCK, (at + len - 1) / BLOCK);
            self.fault_in_range(&mut st, first, last - first + 1)?;
            for (block, within, n) in Self::pieces(at, len) {
                let piece = &mut buf[done..done + n as usize];
                // Resident now, unless faulting the others evicted it (a
                // quota of a block or two): then it faults alone.
                match self.resident_frame(&mut st, block)? {
                    Some(frame) => self
                        .media
                        .read(self.frame_offset(&st, frame) + within, piece)
                        .map_err(io)?,
                    None => piece.fill(0),
                }
                done += n as usize;
            }
        }
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn read_in_place(
        &self,
        offset: u64,
        len: u64,
        serve: &mut dyn FnMut(&[ReadRun<'_>]),
    ) -> Result<bool, DeviceError> {
        check_range(offset, len, self.size)?;
        let mut st = self.lock();
        if len > 0 {
            let first = offset / BLOCK;
            let last = (offset + len - 1) / BLOCK;
            if last - first + 1 > Self::fault_part(&st) {
                // More than the quota holds at once: `read_at` reads it in
                // parts.
                return Ok(false);
            }
            self.fault_in_range(&mut st, first, last - first + 1)?;
        }
        // Byte ranges of the medium (merged where frames are adjacent), or
        // holes: `None`.
        let mut ranges: Vec<(Option<u64>, u64)> = Vec::new();
        for (block, within, n) in Self::pieces(offset, len) {
            let at = match BlockState::decode(st.map[block as usize]) {
                Some(BlockState::Resident(frame)) => {
                    st.policy.touch(frame);
                    Some(self.frame_offset(&st, frame) + within)
                }
                Some(BlockState::Unmapped) => None,
                // A quota smaller than the request evicted part of it
                // while faulting the rest in: read it block by block.
                Some(BlockState::Swapped(_)) => return Ok(false),
                None => return Err(io(std::io::Error::other("corrupt block map entry"))),
            };
            match (ranges.last_mut(), at) {
                (Some((Some(start), run)), Some(at)) if *start + *run == at => *run += n,
                (Some((None, run)), None) => *run += n,
                _ => ranges.push((at, n)),
            }
        }
        let mut runs = Vec::with_capacity(ranges.len());
        for (at, n) in ranges {
            runs.push(match at {
                // SAFETY: frames are written only with the region's lock
                // held, and `st` holds it until `serve` has returned.
                Some(at) => match unsafe { self.media.bytes_in_place(at, n) } {
                    Some(bytes) => ReadRun::Data(bytes),
                    None => return Ok(false),
                },
                None => ReadRun::Zeroes(n as usize),
            });
        }
        serve(&runs);
        drop(st);
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
        check_range(offset, data.len() as u64, self.size)?;
        let mut st = self.lock();
        let mut placed: Vec<(u64, u64, Option<u64>)> = Vec::new();
        let mut done = 0usize;
        let mut result = Ok(());
        for (block, within, n) in Self::pieces(offset, data.len() as u64) {
            let piece = &data[done..done + n as usize];
            done += n as usize;
            let whole = n == BLOCK;
            let fresh = match BlockState::decode(st.map[block as usize]) {
                Some(BlockState::Unmapped) => Some(None),
                Some(BlockState::Swapped(slot)) if whole => Some(Some(slot)),
                _ => None,
            };
            let Some(old_slot) = fresh else {
                result = self.write_block(&mut st, block, within, piece);
                if result.is_err() {
                    break;
                }
                continue;
            };
            // A new frame: data first, the entry only after it is durable.
            let mut taken = self.take_frame(&mut st);
            if matches!(taken, Err(DeviceError::NoSpace)) && !placed.is_empty() {
                // A request bigger than the frames the region can hold: the
                // blocks placed so far become evictable once committed.
                if let Err(e) = self.commit_placements(&mut st, &placed, false) {
                    result = Err(e);
                    placed.clear();
                    break;
                }
                placed.clear();
                taken = self.take_frame(&mut st);
            }
            let frame = match taken {
                Ok(f) => f,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let at = self.frame_offset(&st, frame);
            let written = if whole {
                self.media.write(at, piece)
            } else {
                let mut full = vec![0u8; BLOCK as usize];
                full[within as usize..within as usize + piece.len()].copy_from_slice(piece);
                self.media.write(at, &full)
            };
            if let Err(e) = written {
                st.free.push(frame);
                result = Err(io(e));
                break;
            }
            placed.push((block, frame, old_slot));
        }
        // Blocks placed before a failure are still committed: their data is
        // in their frames, as the client may have partly expected.
        self.commit_placements(&mut st, &placed, fua)?;
        result?;
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        if fua {
            self.flush_locked(&mut st)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), DeviceError> {
        let mut st = self.lock();
        self.flush_locked(&mut st)
    }

    fn trim(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        check_range(offset, len, self.size)?;
        let mut st = self.lock();
        let mut whole = Vec::new();
        for (block, within, n) in Self::pieces(offset, len) {
            if n == BLOCK {
                whole.push(block);
            } else if BlockState::decode(st.map[block as usize]) != Some(BlockState::Unmapped) {
                self.write_block(&mut st, block, within, &vec![0u8; n as usize])?;
            }
        }
        self.unmap_blocks(&mut st, &whole)
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> Result<(), DeviceError> {
        if may_trim {
            return self.trim(offset, len);
        }
        check_range(offset, len, self.size)?;
        // Provisioned zeros are written as data is, a chunk at a time (with
        // batched placement and eviction).
        let zeros = vec![0u8; len.min(ZERO_CHUNK) as usize];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(ZERO_CHUNK);
            self.write_at(at, &zeros[..n as usize], false)?;
            at += n;
        }
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<StatusExtent>, DeviceError> {
        check_range(offset, len, self.size)?;
        let st = self.lock();
        let mut out: Vec<StatusExtent> = Vec::new();
        for (block, _, n) in Self::pieces(offset, len) {
            let hole = st.map[block as usize] == 0;
            if let Some(last) = out.last_mut().filter(|last| last.hole == hole) {
                last.len += n;
            } else if out.len() < MAX_EXTENTS {
                out.push(StatusExtent { len: n, hole, zero: hole });
            } else {
                break;
            }
        }
        Ok(out)
    }
}
