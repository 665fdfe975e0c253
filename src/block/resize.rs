//! Resizing a block region's resident quota, with victims the guest chose.
//!
//! A shrink by `n` frames frees `n` resident blocks, then gives the frames
//! past the new quota back to the pool. The guest agent may name the blocks
//! (SPEC §5–§6): `Drop` ones become unmapped (the guest no longer needs
//! them; no data moves), `Keep` ones go to swap. Its answer is untrusted:
//! ranges out of the device, blocks named twice, blocks that are not
//! resident and anything beyond `n` are set aside and counted in the
//! [`ResizeReport`], and the host's CLOCK completes whatever the guest did
//! not cover (no agent, a late, short or wrong answer).
//!
//! Every step is a batch with one persist per kind of page: dropped entries
//! are persisted together before their frames are reused, kept blocks are
//! written to consecutive swap slots with one write per run and one sync,
//! and compaction (moving blocks out of the frames past the new quota)
//! copies every moved block, persists the targets once, then the entries
//! once. The two crash rules of `map.rs` hold throughout: data is durable
//! before an entry names it, and a frame or slot is reused only after the
//! entry that left it is durable.
//!
//! A grow only raises the quota: frames are taken from the pool as blocks
//! need them, so a grow costs one pool change whatever its size. It may
//! bring back swapped blocks the guest hinted hot, as far as the new quota
//! and the pool allow (never evicting to do it). A shrink lowers the quota
//! and gives back the frames past it in one atomic pool change.

use std::time::{Duration, Instant};

use pmvisor_blk::DeviceError;
use serde::Serialize;

use super::{
    in_parallel, io, BlockError, BlockRegion, BlockState, State, ATTR_RESIDENT, BATCH, BLOCK,
    COPY_RUN, NO_BLOCK,
};
use crate::pool::{PoolError, RegionLayout, PAGE_SIZE};

/// What to do with a block the guest gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Disposition {
    /// Save its data to swap.
    Keep,
    /// The guest no longer needs it: unmap it (reads return zeros).
    Drop,
}

/// A run of blocks the guest chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestVictims {
    pub start: u64,
    pub count: u64,
    pub disposition: Disposition,
}

/// Blocks of a guest's answer that were not used, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// Past the end of the device.
    pub out_of_range: u64,
    /// Named more than once.
    pub duplicate: u64,
    /// Not resident (unmapped or already swapped).
    pub not_resident: u64,
    /// Beyond the number of blocks asked for.
    pub surplus: u64,
    /// `Keep` blocks of a region without a swap tier.
    pub no_swap: u64,
}

impl Rejected {
    /// Blocks rejected for any reason.
    pub fn total(&self) -> u64 {
        self.out_of_range + self.duplicate + self.not_resident + self.surplus + self.no_swap
    }
}

/// What a resize did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResizeReport {
    /// Resident quota before and after, in frames.
    pub frames_before: u64,
    pub frames_after: u64,
    /// Blocks freed that the guest chose, by disposition.
    pub guest_kept: u64,
    pub guest_dropped: u64,
    /// Blocks freed that the host chose (CLOCK).
    pub host_chosen: u64,
    /// Hinted-hot blocks brought back from swap by a grow.
    pub brought_back: u64,
    /// Blocks moved to frames below the new quota.
    pub compacted: u64,
    pub rejected: Rejected,
    /// Time spent applying the resize (the agent's answer time excluded).
    #[serde(serialize_with = "as_micros")]
    pub elapsed: Duration,
}

fn as_micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}

impl BlockRegion {
    /// Resident blocks now, and the quota, in frames.
    pub fn resident_frames(&self) -> (u64, u64) {
        let st = self.lock();
        (st.frames - st.free.len() as u64, st.quota)
    }

    /// The runs `(first block, count)` of resident blocks, lowest first, or
    /// `None` when there are more than `max` (what a shrink tells the
    /// guest agent, so that it offers only blocks that free a frame).
    pub fn resident_runs(&self, max: usize) -> Option<Vec<(u64, u64)>> {
        let st = self.lock();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (block, &raw) in (0u64..).zip(st.map.iter()) {
            if !matches!(BlockState::decode(raw), Some(BlockState::Resident(_))) {
                continue;
            }
            if let Some((_, count)) = runs.last_mut().filter(|(s, c)| s + c == block) {
                *count += 1;
            } else if runs.len() == max {
                return None;
            } else {
                runs.push((block, 1));
            }
        }
        Some(runs)
    }

    /// Set the resident quota to `resident` bytes (whole frames). A shrink
    /// frees guest-chosen `victims` first, then the host's CLOCK choice; a
    /// grow brings back swapped blocks of the `hot` runs `(start, count)`.
    pub fn resize_resident(
        &self,
        resident: u64,
        victims: &[GuestVictims],
        hot: &[(u64, u64)],
    ) -> Result<ResizeReport, BlockError> {
        let started = Instant::now();
        let device = |source| BlockError::Device { name: self.name.clone(), source };
        let new_quota = resident.div_ceil(BLOCK);
        let mut st = self.lock();
        let mut report =
            ResizeReport { frames_before: st.quota, frames_after: new_quota, ..Default::default() };
        if new_quota >= st.quota {
            super::check_quota_fits(&self.pool, &self.name, new_quota, self.map_pages)?;
            self.set_quota(&mut st, new_quota)?;
            report.brought_back = self.bring_back(&mut st, hot).map_err(device)?;
        } else if new_quota >= st.frames {
            // The region holds no more frames than the new quota: only
            // the limit changes.
            self.set_quota(&mut st, new_quota)?;
        } else {
            self.shrink_locked(&mut st, new_quota, victims, &mut report)?;
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Record a new quota (frames are taken from the pool as needed).
    fn set_quota(&self, st: &mut State, quota: u64) -> Result<(), BlockError> {
        if quota != st.quota {
            let bytes = (quota * BLOCK).to_string();
            self.pool.set_region_attr(&self.name, ATTR_RESIDENT, Some(&bytes))?;
            st.quota = quota;
        }
        Ok(())
    }

    /// Take frames from the pool until the region holds `new_frames` (at
    /// most its quota); they start free.
    pub(super) fn allocate_frames(&self, st: &mut State, new_frames: u64) -> Result<(), PoolError> {
        let old_frames = st.frames;
        debug_assert!(new_frames <= st.quota);
        if new_frames <= old_frames {
            return Ok(());
        }
        let info =
            self.pool.resize_region(&self.name, (self.map_pages + new_frames) * PAGE_SIZE)?;
        st.layout = RegionLayout::new(&info.extents);
        st.owner.resize(new_frames as usize, NO_BLOCK);
        st.free.extend((old_frames..new_frames).rev());
        st.policy.resize(new_frames);
        st.frames = new_frames;
        Ok(())
    }

    /// Faults in the swapped blocks of `hot`, at most as many as the quota
    /// has room for without evicting (frames are taken from the pool as
    /// far as it has them).
    fn bring_back(&self, st: &mut State, hot: &[(u64, u64)]) -> Result<u64, DeviceError> {
        let blocks = self.size / BLOCK;
        let room = st.free.len() + (st.quota - st.frames) as usize;
        let mut wanted = Vec::new();
        'runs: for &(start, count) in hot {
            let end = start.saturating_add(count).min(blocks);
            for block in start.min(end)..end {
                if wanted.len() == room {
                    break 'runs;
                }
                if let Some(BlockState::Swapped(slot)) = BlockState::decode(st.map[block as usize])
                {
                    wanted.push((block, slot));
                }
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        let short = wanted.len().saturating_sub(st.free.len()) as u64;
        if short > 0 {
            if let Err(e) = self.allocate_frames(st, st.frames + short) {
                tracing::debug!(region = %self.name, "bringing back fewer hot blocks: {e}");
                wanted.truncate(st.free.len());
            }
        }
        let count = wanted.len() as u64;
        self.fault_in_blocks(st, &wanted, false)?;
        Ok(count)
    }

    fn shrink_locked(
        &self,
        st: &mut State,
        new_frames: u64,
        victims: &[GuestVictims],
        report: &mut ResizeReport,
    ) -> Result<(), BlockError> {
        let device = |source| BlockError::Device { name: self.name.clone(), source };
        let resident_now = st.frames - st.free.len() as u64;
        let need = resident_now.saturating_sub(new_frames);
        let (drops, keeps) = self.validate(st, need, victims, &mut report.rejected);
        let short = need - drops.len() as u64;
        if short > 0 && self.swap.is_none() {
            return Err(BlockError::QuotaTooSmall {
                name: self.name.clone(),
                resident: resident_now - drops.len() as u64,
                frames: new_frames,
            });
        }
        report.guest_dropped = drops.len() as u64;
        self.drop_frames(st, &drops).map_err(device)?;
        st.free.extend(&drops);
        for chunk in keeps.chunks(BATCH) {
            self.evict_frames(st, chunk.to_vec()).map_err(device)?;
            st.free.extend(chunk);
        }
        report.guest_kept = keeps.len() as u64;
        let mut left = short - keeps.len() as u64;
        if left > 0 {
            st.policy.look_from(new_frames);
        }
        while left > 0 {
            let freed = self.evict_batch(st, left.min(BATCH as u64)).map_err(device)?;
            left -= freed.len() as u64;
            report.host_chosen += freed.len() as u64;
            st.free.extend(freed);
        }
        report.compacted = self.compact(st, new_frames).map_err(device)?;
        self.flush_locked(st).map_err(device)?;
        let quota = (new_frames * BLOCK).to_string();
        let info = self.pool.resize_region_with_attr(
            &self.name,
            (self.map_pages + new_frames) * PAGE_SIZE,
            Some((ATTR_RESIDENT, Some(&quota))),
        )?;
        st.quota = new_frames;
        st.layout = RegionLayout::new(&info.extents);
        st.owner.truncate(new_frames as usize);
        st.free = (0..new_frames).rev().filter(|&f| st.owner[f as usize] == NO_BLOCK).collect();
        st.policy.resize(new_frames);
        st.frames = new_frames;
        Ok(())
    }

    /// The frames of the guest's answer that can be used, `Drop` ones and
    /// `Keep` ones, at most `need` in all; the rest is counted in `rejected`.
    fn validate(
        &self,
        st: &State,
        need: u64,
        victims: &[GuestVictims],
        rejected: &mut Rejected,
    ) -> (Vec<u64>, Vec<u64>) {
        let blocks = self.size / BLOCK;
        let mut chosen = vec![false; st.frames as usize];
        let (mut drops, mut keeps) = (Vec::new(), Vec::new());
        for v in victims {
            let end = v.start.saturating_add(v.count);
            rejected.out_of_range += end - end.min(blocks).max(v.start);
            let end = end.min(blocks);
            let mut block = v.start;
            while block < end {
                if (drops.len() + keeps.len()) as u64 == need {
                    rejected.surplus += end - block;
                    break;
                }
                match BlockState::decode(st.map[block as usize]) {
                    Some(BlockState::Resident(frame)) if chosen[frame as usize] => {
                        rejected.duplicate += 1
                    }
                    Some(BlockState::Resident(_))
                        if v.disposition == Disposition::Keep && self.swap.is_none() =>
                    {
                        rejected.no_swap += 1
                    }
                    Some(BlockState::Resident(frame)) => {
                        chosen[frame as usize] = true;
                        match v.disposition {
                            Disposition::Drop => drops.push(frame),
                            Disposition::Keep => keeps.push(frame),
                        }
                    }
                    _ => rejected.not_resident += 1,
                }
                block += 1;
            }
        }
        (drops, keeps)
    }

    /// Unmap the blocks in `frames` as one batch: their entries are written
    /// and persisted together; then the frames are unowned (not yet free).
    fn drop_frames(&self, st: &mut State, frames: &[u64]) -> Result<(), DeviceError> {
        let mut pages = Vec::with_capacity(frames.len());
        for &frame in frames {
            let block = st.owner[frame as usize];
            pages.push(self.write_entry(st, block, BlockState::Unmapped)?);
        }
        self.persist_pages(pages)?;
        for &frame in frames {
            st.owner[frame as usize] = NO_BLOCK;
            st.policy.forget(frame);
            st.dirty_frames.remove(frame);
        }
        Ok(())
    }

    /// Move every block in frames `new_frames..` into free frames below
    /// `new_frames`: copies first, one persist of the targets, then the
    /// entries and one persist of their pages. Returns the blocks moved.
    fn compact(&self, st: &mut State, new_frames: u64) -> Result<u64, DeviceError> {
        // Targets in descending order, popped ascending: both streams of
        // the copies run forwards through memory.
        let mut low_free: Vec<u64> = st.free.iter().copied().filter(|&f| f < new_frames).collect();
        low_free.sort_unstable_by(|a, b| b.cmp(a));
        let moves: Vec<(u64, u64, u64)> = (new_frames..st.frames)
            .filter(|&f| st.owner[f as usize] != NO_BLOCK)
            .map(|f| {
                let target = low_free.pop().expect("enough free frames below the new quota");
                (st.owner[f as usize], f, target)
            })
            .collect();
        for chunk in moves.chunks(BATCH) {
            let copies: Vec<(u64, u64)> = chunk
                .iter()
                .map(|&(_, from, to)| (self.frame_offset(st, from), self.frame_offset(st, to)))
                .collect();
            let pieces: Vec<&[(u64, u64)]> = copies.chunks(COPY_RUN).collect();
            in_parallel(&pieces, copies.len(), |piece| self.media.copy_many(piece, BLOCK))
                .map_err(io)?;
            self.persist_pages(
                chunk.iter().map(|&(_, _, to)| self.frame_offset(st, to)).collect(),
            )?;
            let mut pages = Vec::with_capacity(chunk.len());
            for &(block, _, to) in chunk {
                pages.push(self.write_entry(st, block, BlockState::Resident(to))?);
            }
            self.persist_pages(pages)?;
            for &(block, from, to) in chunk {
                st.owner[to as usize] = block;
                st.owner[from as usize] = NO_BLOCK;
                st.policy.forget(from);
                st.policy.touch(to);
                st.dirty_frames.remove(from);
            }
        }
        Ok(moves.len() as u64)
    }
}
