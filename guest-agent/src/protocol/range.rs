//! Block ranges and the checks both sides run on them: normalizing (sort,
//! merge, detect overlaps) and validating an untrusted evict answer.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::message::{EvictAnswer, EvictRange, EvictRequest};
use super::RangeError;

/// `count` blocks from block `start`. Displayed as `start+count`, the
/// agent CLI's syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockRange {
    /// First block.
    pub start: u64,
    /// Number of blocks.
    pub count: u64,
}

impl BlockRange {
    /// One past the last block, or `None` if that does not fit in a u64.
    pub fn end(&self) -> Option<u64> {
        self.start.checked_add(self.count)
    }
}

impl fmt::Display for BlockRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.start, self.count)
    }
}

/// What [`normalize_ranges`] does with ranges that share blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlaps {
    /// Take the union (hints: the same block named twice is fine).
    Merge,
    /// Fail with [`RangeError::Overlap`] (answers: a block named twice is
    /// a wrong answer).
    Reject,
}

/// Sorts `ranges` by start and merges touching ones (and overlapping ones
/// with [`Overlaps::Merge`]). Fails on an empty range, a range whose end
/// overflows, or (with [`Overlaps::Reject`]) two ranges sharing a block.
pub fn normalize_ranges(
    ranges: impl IntoIterator<Item = BlockRange>,
    overlaps: Overlaps,
) -> Result<Vec<BlockRange>, RangeError> {
    let mut ranges: Vec<BlockRange> = ranges.into_iter().collect();
    for r in &ranges {
        check_range(r)?;
    }
    ranges.sort_unstable();
    let mut out: Vec<BlockRange> = Vec::with_capacity(ranges.len());
    let mut out_end = 0;
    for r in ranges {
        let end = r.start + r.count; // checked above
        match out.last_mut() {
            Some(last) if r.start <= out_end => {
                if r.start < out_end && overlaps == Overlaps::Reject {
                    return Err(RangeError::Overlap { first: *last, second: r });
                }
                out_end = out_end.max(end);
                last.count = out_end - last.start;
            }
            _ => {
                out.push(r);
                out_end = end;
            }
        }
    }
    Ok(out)
}

/// Sorts evict ranges by start and merges touching ones of the same
/// disposition. Fails on an empty range, an overflowing one, or two ranges
/// sharing a block.
pub fn normalize_evict_ranges(
    ranges: impl IntoIterator<Item = EvictRange>,
) -> Result<Vec<EvictRange>, RangeError> {
    let mut ranges: Vec<EvictRange> = ranges.into_iter().collect();
    for r in &ranges {
        check_range(&r.blocks())?;
    }
    ranges.sort_unstable_by_key(|r| (r.start, r.count));
    let mut out: Vec<EvictRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        if let Some(last) = out.last_mut() {
            let last_end = last.start + last.count;
            if r.start < last_end {
                return Err(RangeError::Overlap { first: last.blocks(), second: r.blocks() });
            }
            if r.start == last_end && r.disposition == last.disposition {
                last.count += r.count;
                continue;
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// Total blocks of `ranges`, saturating at `u64::MAX`.
pub fn total_blocks(ranges: impl IntoIterator<Item = BlockRange>) -> u64 {
    ranges.into_iter().fold(0u64, |sum, r| sum.saturating_add(r.count))
}

/// The host's check of an untrusted answer: it must carry the request's id
/// and serial, and its ranges must be non-empty, disjoint, inside a device
/// of `device_blocks` blocks (of the request's block size) and add up to at
/// most the request's `count`. Returns the ranges normalized.
pub fn validate_answer(
    request: &EvictRequest,
    device_blocks: u64,
    answer: &EvictAnswer,
) -> Result<Vec<EvictRange>, RangeError> {
    if answer.id != request.id || answer.serial != request.serial {
        return Err(RangeError::WrongRequest {
            got_id: answer.id,
            got_serial: answer.serial.clone(),
            want_id: request.id,
            want_serial: request.serial.clone(),
        });
    }
    let ranges = normalize_evict_ranges(answer.ranges.iter().copied())?;
    if let Some(r) = ranges.last() {
        if r.start + r.count > device_blocks {
            return Err(RangeError::OutOfDevice { range: r.blocks(), device_blocks });
        }
    }
    let total = total_blocks(ranges.iter().map(EvictRange::blocks));
    if total > request.count {
        return Err(RangeError::TooMany { total, count: request.count });
    }
    Ok(ranges)
}

fn check_range(r: &BlockRange) -> Result<(), RangeError> {
    if r.count == 0 {
        return Err(RangeError::Empty { start: r.start });
    }
    if r.end().is_none() {
        return Err(RangeError::Overflow { range: *r });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Disposition::{Drop, Keep};
    use proptest::prelude::*;

    fn br(start: u64, count: u64) -> BlockRange {
        BlockRange { start, count }
    }

    fn er(start: u64, count: u64, disposition: crate::protocol::Disposition) -> EvictRange {
        EvictRange { start, count, disposition }
    }

    #[test]
    fn normalizing_sorts_and_merges_touching_ranges() {
        let got = normalize_ranges([br(10, 5), br(0, 4), br(4, 2), br(15, 1)], Overlaps::Reject);
        assert_eq!(got, Ok(vec![br(0, 6), br(10, 6)]));
    }

    #[test]
    fn normalizing_merges_or_rejects_overlaps_as_asked() {
        let input = [br(0, 10), br(5, 10), br(2, 1)];
        assert_eq!(normalize_ranges(input, Overlaps::Merge), Ok(vec![br(0, 15)]));
        let err = normalize_ranges(input, Overlaps::Reject).unwrap_err();
        assert_eq!(err.to_string(), "ranges 0+10 and 2+1 overlap");
    }

    #[test]
    fn normalizing_rejects_empty_and_overflowing_ranges() {
        let empty = normalize_ranges([br(7, 0)], Overlaps::Merge).unwrap_err();
        assert_eq!(empty.to_string(), "range at block 7 is empty");
        let huge = normalize_ranges([br(u64::MAX, 2)], Overlaps::Merge).unwrap_err();
        assert_eq!(
            huge.to_string(),
            format!("range {}+2 runs past the largest block number", u64::MAX)
        );
    }

    #[test]
    fn evict_ranges_merge_only_with_the_same_disposition() {
        let got = normalize_evict_ranges([
            er(4, 4, Keep),
            er(0, 2, Drop),
            er(2, 2, Drop),
            er(8, 1, Keep),
        ]);
        assert_eq!(got, Ok(vec![er(0, 4, Drop), er(4, 5, Keep)]));
        let got = normalize_evict_ranges([er(0, 2, Drop), er(2, 2, Keep)]);
        assert_eq!(got, Ok(vec![er(0, 2, Drop), er(2, 2, Keep)]));
        assert!(normalize_evict_ranges([er(0, 3, Drop), er(2, 2, Drop)]).is_err());
    }

    fn request() -> EvictRequest {
        EvictRequest {
            id: 7,
            serial: "vdb".into(),
            count: 10,
            block_size: 4096,
            deadline_ms: 50,
            resident: None,
        }
    }

    fn answer(ranges: Vec<EvictRange>) -> EvictAnswer {
        EvictAnswer { id: 7, serial: "vdb".into(), ranges }
    }

    #[test]
    fn validating_an_answer_checks_request_device_and_count() {
        let req = request();
        assert_eq!(
            validate_answer(&req, 100, &answer(vec![er(90, 4, Keep), er(0, 6, Drop)])),
            Ok(vec![er(0, 6, Drop), er(90, 4, Keep)])
        );
        let far = validate_answer(&req, 100, &answer(vec![er(95, 6, Keep)])).unwrap_err();
        assert_eq!(far.to_string(), "range 95+6 ends past the device's 100 blocks");
        let many = validate_answer(&req, 100, &answer(vec![er(0, 11, Keep)])).unwrap_err();
        assert_eq!(many.to_string(), "11 blocks offered for a request of 10");
        let other = EvictAnswer { id: 8, ..answer(vec![]) };
        assert_eq!(
            validate_answer(&req, 100, &other).unwrap_err().to_string(),
            "answer for request 8 on \"vdb\", expected 7 on \"vdb\""
        );
    }

    proptest! {
        #[test]
        fn merged_ranges_cover_exactly_the_input_blocks(
            input in proptest::collection::vec((0u64..200, 1u64..20), 0..30)
        ) {
            let input: Vec<BlockRange> = input.into_iter().map(|(s, c)| br(s, c)).collect();
            let out = normalize_ranges(input.iter().copied(), Overlaps::Merge).unwrap();
            let mut want = std::collections::BTreeSet::new();
            for r in &input { want.extend(r.start..r.start + r.count); }
            let mut got = std::collections::BTreeSet::new();
            for r in &out { got.extend(r.start..r.start + r.count); }
            prop_assert_eq!(got, want);
            for w in out.windows(2) {
                prop_assert!(w[0].start + w[0].count < w[1].start, "not merged: {:?}", w);
            }
        }
    }
}
