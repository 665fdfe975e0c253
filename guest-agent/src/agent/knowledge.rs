//! The agent's knowledge (SPEC §6): per device, the hints guest
//! applications gave and the blocks already given away in answers; and the
//! answers computed from it.
//!
//! Everything is kept in bytes, so hints (4 KiB blocks) and requests (any
//! power-of-two block size) mix freely. A block given away in an answer is
//! not offered again until the agent asks for it back after a grow or a
//! `Forget` hint names it: the host already evicted it, so offering it again
//! would only make the host complete the answer with its own choice.
//!
//! Blocks the guest discards are not learned here: the host sees every
//! discard itself and unmaps those blocks at once (SPEC §5), so they hold
//! no resident page and are no victims; and the agent cannot see the
//! guest's later writes to them, so a "discarded" mark would go stale and
//! make the agent drop live data. Applications that free space they will
//! rewrite later say so with a `Disposable` hint instead.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::protocol::{
    normalize_ranges, total_blocks, BlockRange, Device, DeviceStats, EvictAnswer, EvictRequest,
    GrowNotice, Hint, HintKind, HotRanges, Overlaps, RangeError, Stats, HINT_BLOCK_SIZE,
};

use super::span::{SpanMap, SpanSet};
use super::victims::Victims;

/// The part of a request's deadline the agent spends choosing; the rest is
/// left for encoding, the transport and the host's clock.
const DEADLINE_SHARE: (u32, u32) = (3, 4);

/// A request or hint the agent cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KnowledgeError {
    /// No device with this serial.
    #[error("no device with serial {serial:?} in this guest")]
    UnknownDevice {
        /// The serial asked for.
        serial: String,
    },
    /// A request's block size is not a power of two of at least 512.
    #[error("block size {block_size} is not a power of two of at least 512")]
    BadBlockSize {
        /// The block size asked for.
        block_size: u32,
    },
    /// A hint's ranges break a range rule.
    #[error("the hint's ranges are invalid")]
    BadRanges(#[source] RangeError),
    /// A hint names blocks past the end of the device.
    #[error("hinted range {range} ends past the device's {device_blocks} blocks of 4 KiB")]
    HintOutsideDevice {
        /// The range.
        range: BlockRange,
        /// Size of the device in 4 KiB blocks (a partial last block counts).
        device_blocks: u64,
    },
}

/// What the agent knows about every device it serves.
#[derive(Debug, Default)]
pub struct Knowledge {
    devices: BTreeMap<String, DeviceKnowledge>,
}

#[derive(Debug, Default)]
struct DeviceKnowledge {
    size_bytes: u64,
    hints: SpanMap<HintKind>,
    given: SpanSet,
    evict_requests_answered: u64,
    grow_notices_answered: u64,
    last_answer: Option<Duration>,
}

impl Knowledge {
    /// Knows nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a device, or updates its size. Hints and given-away blocks
    /// past a smaller new size are forgotten.
    pub fn add_device(&mut self, device: &Device) {
        let known = self.devices.entry(device.serial.clone()).or_default();
        if device.size_bytes < known.size_bytes {
            known.hints.set(device.size_bytes, u64::MAX, None);
            known.given.remove(device.size_bytes, u64::MAX);
        }
        known.size_bytes = device.size_bytes;
    }

    /// Whether a device with this serial is known.
    pub fn has_device(&self, serial: &str) -> bool {
        self.devices.contains_key(serial)
    }

    /// The known devices, by serial.
    pub fn devices(&self) -> Vec<Device> {
        self.devices
            .iter()
            .map(|(serial, d)| Device { serial: serial.clone(), size_bytes: d.size_bytes })
            .collect()
    }

    /// Applies a hint; the latest hint for a block wins. Returns the
    /// number of 4 KiB blocks it covered.
    pub fn apply_hint(&mut self, hint: &Hint) -> Result<u64, KnowledgeError> {
        let device = self.device_mut(&hint.serial)?;
        let ranges = normalize_ranges(hint.ranges.iter().copied(), Overlaps::Merge)
            .map_err(KnowledgeError::BadRanges)?;
        let block = u64::from(HINT_BLOCK_SIZE);
        let device_blocks = device.size_bytes.div_ceil(block);
        if let Some(&last) = ranges.last() {
            if last.start + last.count > device_blocks {
                return Err(KnowledgeError::HintOutsideDevice { range: last, device_blocks });
            }
        }
        for r in &ranges {
            // Inside the device, so the products fit; the last block may be
            // partial.
            let start = r.start * block;
            let end = ((r.start + r.count) * block).min(device.size_bytes);
            match hint.kind {
                HintKind::Forget => {
                    device.hints.set(start, end, None);
                    device.given.remove(start, end);
                }
                kind => device.hints.set(start, end, Some(kind)),
            }
        }
        Ok(total_blocks(ranges))
    }

    /// Chooses the victims for `request`, received at `received`, and
    /// records them as given away.
    pub fn answer_evict(
        &mut self,
        request: &EvictRequest,
        received: Instant,
    ) -> Result<EvictAnswer, KnowledgeError> {
        let block_size = checked_block_size(request.block_size)?;
        let device = self.device_mut(&request.serial)?;
        let (num, den) = DEADLINE_SHARE;
        let budget = Duration::from_millis(u64::from(request.deadline_ms) * u64::from(num)) / den;
        let ranges = Victims {
            hints: &device.hints,
            given: &device.given,
            size_bytes: device.size_bytes,
            block_size,
            resident: request.resident.as_deref(),
        }
        .choose(request.count, received + budget);
        for r in &ranges {
            // Inside the device (the choice never leaves it), so no overflow.
            device.given.insert(r.start * block_size, (r.start + r.count) * block_size);
        }
        device.evict_requests_answered += 1;
        device.last_answer = Some(received.elapsed());
        Ok(EvictAnswer { id: request.id, serial: request.serial.clone(), ranges })
    }

    /// The hinted-hot blocks to bring back after a grow. They count as
    /// returned from then on.
    pub fn answer_grow(&mut self, notice: &GrowNotice) -> Result<HotRanges, KnowledgeError> {
        let block_size = checked_block_size(notice.block_size)?;
        let device = self.device_mut(&notice.serial)?;
        let ranges = Victims {
            hints: &device.hints,
            given: &device.given,
            size_bytes: device.size_bytes,
            block_size,
            resident: None,
        }
        .wanted_back(notice.count);
        for r in &ranges {
            device.given.remove(r.start * block_size, (r.start + r.count) * block_size);
        }
        device.grow_notices_answered += 1;
        Ok(HotRanges { id: notice.id, serial: notice.serial.clone(), ranges })
    }

    /// What the agent knows, per device.
    pub fn stats(&self) -> Stats {
        let block = u64::from(HINT_BLOCK_SIZE);
        let blocks = |bytes: u64| bytes.div_ceil(block);
        let devices = self
            .devices
            .iter()
            .map(|(serial, d)| DeviceStats {
                serial: serial.clone(),
                size_bytes: d.size_bytes,
                hot_blocks: blocks(d.hints.total(|k| k == HintKind::Hot)),
                cold_blocks: blocks(d.hints.total(|k| k == HintKind::Cold)),
                disposable_blocks: blocks(d.hints.total(|k| k == HintKind::Disposable)),
                given_away_blocks: blocks(d.given.total(|()| true)),
                evict_requests_answered: d.evict_requests_answered,
                grow_notices_answered: d.grow_notices_answered,
                last_answer_micros: d
                    .last_answer
                    .map(|t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX)),
            })
            .collect();
        Stats { devices }
    }

    fn device_mut(&mut self, serial: &str) -> Result<&mut DeviceKnowledge, KnowledgeError> {
        self.devices
            .get_mut(serial)
            .ok_or_else(|| KnowledgeError::UnknownDevice { serial: serial.to_owned() })
    }
}

fn checked_block_size(block_size: u32) -> Result<u64, KnowledgeError> {
    if block_size.is_power_of_two() && block_size >= 512 {
        Ok(u64::from(block_size))
    } else {
        Err(KnowledgeError::BadBlockSize { block_size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Disposition, EvictRange};

    const MIB: u64 = 1 << 20;

    fn knowledge() -> Knowledge {
        let mut k = Knowledge::new();
        k.add_device(&Device { serial: "vdb".into(), size_bytes: MIB });
        k
    }

    fn hint(kind: HintKind, ranges: &[(u64, u64)]) -> Hint {
        Hint {
            serial: "vdb".into(),
            kind,
            ranges: ranges.iter().map(|&(start, count)| BlockRange { start, count }).collect(),
        }
    }

    fn request(id: u64, count: u64, block_size: u32) -> EvictRequest {
        EvictRequest {
            id,
            serial: "vdb".into(),
            count,
            block_size,
            deadline_ms: 200,
            resident: None,
        }
    }

    #[test]
    fn answers_are_in_the_request_block_size_and_never_repeat() {
        let mut k = knowledge();
        assert_eq!(k.apply_hint(&hint(HintKind::Disposable, &[(0, 2)])), Ok(2));
        // 4 KiB blocks 0-1 are 512-byte blocks 0-15.
        let a = k.answer_evict(&request(1, 20, 512), Instant::now()).unwrap();
        assert_eq!(a.ranges[0], EvictRange { start: 0, count: 16, disposition: Disposition::Drop });
        assert_eq!(total_blocks(a.ranges.iter().map(EvictRange::blocks)), 20);
        // Given away once: the next answer goes elsewhere.
        let b = k.answer_evict(&request(2, 4, 4096), Instant::now()).unwrap();
        assert!(b.ranges.iter().all(|r| r.start >= 3), "{b:?}");
        assert_eq!(k.stats().devices[0].given_away_blocks, 3 + 4);
    }

    #[test]
    fn grow_asks_back_given_away_hot_blocks_once() {
        let mut k = knowledge();
        k.apply_hint(&hint(HintKind::Hot, &[(0, 256)])).unwrap();
        // Only hot blocks are left, so the answer gives some away.
        let a = k.answer_evict(&request(1, 10, 4096), Instant::now()).unwrap();
        assert_eq!(total_blocks(a.ranges.iter().map(EvictRange::blocks)), 10);
        let back = k
            .answer_grow(&GrowNotice { id: 2, serial: "vdb".into(), count: 10, block_size: 4096 })
            .unwrap();
        assert_eq!(back.ranges, a.ranges.iter().map(EvictRange::blocks).collect::<Vec<_>>());
        assert_eq!(k.stats().devices[0].given_away_blocks, 0);
    }

    #[test]
    fn bad_hints_and_requests_say_what_is_wrong() {
        let mut k = knowledge();
        let err = k.apply_hint(&hint(HintKind::Cold, &[(250, 10)])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "hinted range 250+10 ends past the device's 256 blocks of 4 KiB"
        );
        let err = k.apply_hint(&hint(HintKind::Cold, &[(1, 0)])).unwrap_err();
        assert_eq!(err.to_string(), "the hint's ranges are invalid");
        let err = k.answer_evict(&request(1, 1, 1000), Instant::now()).unwrap_err();
        assert_eq!(err.to_string(), "block size 1000 is not a power of two of at least 512");
        let other = EvictRequest { serial: "vdz".into(), ..request(1, 1, 4096) };
        let err = k.answer_evict(&other, Instant::now()).unwrap_err();
        assert_eq!(err.to_string(), "no device with serial \"vdz\" in this guest");
    }

    #[test]
    fn a_smaller_device_forgets_what_lay_past_its_end() {
        let mut k = knowledge();
        k.apply_hint(&hint(HintKind::Cold, &[(0, 256)])).unwrap();
        k.add_device(&Device { serial: "vdb".into(), size_bytes: MIB / 2 });
        assert_eq!(k.stats().devices[0].cold_blocks, 128);
    }
}
