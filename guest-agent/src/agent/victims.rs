//! The victim choice: which blocks the agent offers for an `EvictRequest`,
//! and which hot blocks it asks back after a `GrowNotice`.
//!
//! Hints are kept in bytes; a request counts blocks of its own size `B`.
//! Each `B`-block of the device (a trailing partial block is never offered)
//! falls in one tier, and the answer takes whole tiers in this order:
//!
//! 1. *disposable*: every byte hinted disposable → `Drop`, lowest first;
//! 2. *cold*: every byte hinted cold or disposable → `Keep`, lowest first;
//! 3. *unhinted*: no byte hinted hot, some byte without a hint → `Keep`,
//!    from the end of the device backwards: file systems fill devices from
//!    the start, so the end is the least likely to hold data in use;
//! 4. *hot*: some byte hinted hot → `Keep`, from the end backwards, only
//!    when nothing else is left.
//!
//! A block with any byte given away in an earlier answer is never offered,
//! nor one the request says is not resident (when it lists them).
//! The answer never names more than `count` blocks nor more than
//! [`MAX_RANGES`] ranges, and it stops short at the deadline.

use std::time::Instant;

use crate::protocol::{
    normalize_evict_ranges, BlockRange, Disposition, EvictRange, HintKind, MAX_RANGES,
};

use super::span::{SpanMap, SpanSet};

/// What a victim search looks at.
pub(crate) struct Victims<'a> {
    /// Hints, in bytes.
    pub hints: &'a SpanMap<HintKind>,
    /// Given-away bytes.
    pub given: &'a SpanSet,
    /// Device size in bytes.
    pub size_bytes: u64,
    /// Block size of the request (a power of two).
    pub block_size: u64,
    /// The blocks the host says are resident (in request blocks), if it
    /// said: no other block is offered.
    pub resident: Option<&'a [BlockRange]>,
}

impl Victims<'_> {
    fn device_blocks(&self) -> u64 {
        self.size_bytes / self.block_size
    }

    /// `[start, end)` bytes rounded inward to whole blocks, inside the device.
    fn inward(&self, start: u64, end: u64) -> (u64, u64) {
        let b = self.block_size;
        (start.div_ceil(b), (end / b).min(self.device_blocks()))
    }

    /// `[start, end)` bytes rounded outward to whole blocks, inside the device.
    fn outward(&self, start: u64, end: u64) -> (u64, u64) {
        let b = self.block_size;
        (start / b, end.div_ceil(b).min(self.device_blocks()))
    }

    /// Blocks with any byte given away.
    fn given_blocks(&self) -> SpanSet {
        SpanSet::from_spans(self.given.iter().map(|(s, e, ())| self.outward(s, e)).collect())
    }

    /// Blocks never to offer: those given away, and those the host says are
    /// not resident.
    fn excluded_blocks(&self) -> SpanSet {
        let given = self.given.iter().map(|(s, e, ())| self.outward(s, e));
        let Some(resident) = self.resident else {
            return SpanSet::from_spans(given.collect());
        };
        let n = self.device_blocks();
        let resident = SpanSet::from_spans(
            resident.iter().map(|r| (r.start.min(n), r.end().unwrap_or(u64::MAX).min(n))).collect(),
        );
        SpanSet::from_spans(given.chain(resident.gaps(0, n)).collect())
    }

    /// Blocks with any byte hinted hot.
    fn hot_blocks(&self) -> SpanSet {
        let hot = self.hints.iter().filter(|&(_, _, kind)| kind == HintKind::Hot);
        SpanSet::from_spans(hot.map(|(s, e, _)| self.outward(s, e)).collect())
    }

    /// Maximal runs of touching spans hinted cold or disposable, in bytes.
    fn cold_runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut spans = self.hints.iter().filter(|&(_, _, k)| k != HintKind::Hot).peekable();
        std::iter::from_fn(move || {
            let (start, mut end, _) = spans.next()?;
            while let Some(&(s, e, _)) = spans.peek() {
                if s != end {
                    break;
                }
                end = e;
                spans.next();
            }
            Some((start, end))
        })
    }

    /// Chooses at most `count` blocks to evict, sorted and merged.
    ///
    /// Tiers 1 and 2 pick without recording their picks: a tier-2 run
    /// skips the blocks tier 1 took (its wholly disposable blocks), and
    /// later tiers run only when the first two were taken whole, so what
    /// they exclude is known without a per-pick record.
    pub(crate) fn choose(&self, count: u64, deadline: Instant) -> Vec<EvictRange> {
        let n = self.device_blocks();
        let mut pick = Picker::new(count.min(n), deadline);
        let given = self.excluded_blocks();

        // Tier 1: disposable. Touching disposable spans are one span, so a
        // block is wholly disposable exactly when it lies inside one.
        for (s, e, kind) in self.hints.iter() {
            if kind == HintKind::Disposable {
                let (b0, b1) = self.inward(s, e);
                if !pick.pick_free(&given, b0, b1, &[], Disposition::Drop) {
                    return pick.finish();
                }
            }
        }

        // Tier 2: cold, i.e. runs of touching cold or disposable spans,
        // less the wholly disposable blocks tier 1 took.
        let mut spans = self.hints.iter().filter(|&(_, _, k)| k != HintKind::Hot).peekable();
        let mut skip = Vec::new();
        while let Some((start, mut end, kind)) = spans.next() {
            skip.clear();
            self.note_disposable(start, end, kind, &mut skip);
            while let Some(&(s, e, k)) = spans.peek() {
                if s != end {
                    break;
                }
                self.note_disposable(s, e, k, &mut skip);
                end = e;
                spans.next();
            }
            let (b0, b1) = self.inward(start, end);
            if !pick.pick_free(&given, b0, b1, &skip, Disposition::Keep) {
                return pick.finish();
            }
        }

        // Tier 3: unhinted, from the end; tiers 1 and 2 are all taken now.
        let hot = self.hot_blocks();
        let mut excluded: Vec<(u64, u64)> = given.iter().map(|(s, e, ())| (s, e)).collect();
        excluded.extend(hot.iter().map(|(s, e, ())| (s, e)));
        excluded.extend(self.cold_runs().map(|(s, e)| self.inward(s, e)));
        let excluded = SpanSet::from_spans(excluded);
        if !pick.tick() {
            return pick.finish();
        }
        for (s, e) in excluded.gaps_rev(0, n) {
            if !pick.take(s, e, Disposition::Keep, true) {
                return pick.finish();
            }
        }

        // Tier 4: hot, from the end; every other block is taken now.
        for (hs, he, ()) in hot.iter().rev() {
            for (s, e) in given.gaps_rev(hs, he) {
                if !pick.take(s, e, Disposition::Keep, true) {
                    return pick.finish();
                }
            }
        }
        pick.finish()
    }

    /// Adds the blocks of a disposable span `[s, e)` (bytes) to `skip`.
    fn note_disposable(&self, s: u64, e: u64, kind: HintKind, skip: &mut Vec<(u64, u64)>) {
        if kind == HintKind::Disposable {
            let (b0, b1) = self.inward(s, e);
            if b0 < b1 {
                skip.push((b0, b1));
            }
        }
    }

    /// The hot blocks to ask back after the quota grew by `count` blocks:
    /// first those given away, then the others, each group lowest first;
    /// at most `count` blocks and [`MAX_RANGES`] ranges.
    pub(crate) fn wanted_back(&self, count: u64) -> Vec<BlockRange> {
        let hot = self.hot_blocks();
        let given = self.given_blocks();
        let mut remaining = count;
        let mut out: Vec<BlockRange> = Vec::new();
        let mut push = |s: u64, e: u64| {
            let len = (e - s).min(remaining);
            if len == 0 || out.len() == MAX_RANGES {
                return false;
            }
            out.push(BlockRange { start: s, count: len });
            remaining -= len;
            remaining > 0
        };
        'given: for (hs, he, ()) in hot.iter() {
            for (s, e, ()) in given.overlapping(hs, he) {
                if !push(s, e) {
                    break 'given;
                }
            }
        }
        'rest: for (hs, he, ()) in hot.iter() {
            for (s, e) in given.gaps(hs, he) {
                if !push(s, e) {
                    break 'rest;
                }
            }
        }
        out
    }
}

/// Collects picks up to a count, a range bound and a deadline.
struct Picker {
    remaining: u64,
    ranges: Vec<EvictRange>,
    deadline: Instant,
    steps: u32,
}

impl Picker {
    fn new(count: u64, deadline: Instant) -> Self {
        Picker { remaining: count, ranges: Vec::new(), deadline, steps: 0 }
    }

    /// Picks the blocks of `[b0, b1)` that are neither in `given` nor in
    /// `skip` (sorted, disjoint), lowest first. Returns whether to go on.
    fn pick_free(
        &mut self,
        given: &SpanSet,
        b0: u64,
        b1: u64,
        skip: &[(u64, u64)],
        disposition: Disposition,
    ) -> bool {
        if b0 >= b1 {
            return self.tick();
        }
        let mut k = 0;
        for (gs, ge) in given.gaps(b0, b1) {
            let mut cursor = gs;
            loop {
                while k < skip.len() && skip[k].1 <= cursor {
                    k += 1;
                }
                if cursor >= ge {
                    break;
                }
                let stop = match skip.get(k) {
                    Some(&(ss, se)) if ss <= cursor => {
                        // Not past `ge`: the skip may cover the next gap too.
                        cursor = se.min(ge);
                        continue;
                    }
                    Some(&(ss, _)) if ss < ge => ss,
                    _ => ge,
                };
                if !self.take(cursor, stop, disposition, false) {
                    return false;
                }
                cursor = stop;
            }
        }
        true
    }

    /// Picks from `[s, e)` (from its end if `from_end`). Returns whether to
    /// go on.
    fn take(&mut self, s: u64, e: u64, disposition: Disposition, from_end: bool) -> bool {
        if !self.tick() {
            return false;
        }
        let len = (e - s).min(self.remaining);
        if len == 0 {
            return true;
        }
        let start = if from_end { e - len } else { s };
        let piece = EvictRange { start, count: len, disposition };
        let full = self.ranges.len() == MAX_RANGES;
        match self.ranges.last_mut() {
            Some(last) if last.disposition == disposition && last.start + last.count == start => {
                last.count += len;
            }
            Some(last) if last.disposition == disposition && start + len == last.start => {
                last.start = start;
                last.count += len;
            }
            _ if full => {
                self.remaining = 0;
                return false;
            }
            _ => self.ranges.push(piece),
        }
        self.remaining -= len;
        self.remaining > 0
    }

    /// Counts a step; every so often checks the deadline. Returns whether
    /// to go on.
    fn tick(&mut self) -> bool {
        if self.remaining == 0 {
            return false;
        }
        self.steps = self.steps.wrapping_add(1);
        if self.steps & 15 == 0 && Instant::now() >= self.deadline {
            self.remaining = 0;
            return false;
        }
        true
    }

    fn finish(self) -> Vec<EvictRange> {
        // Picks never overlap (each comes from blocks no earlier tier
        // took), so normalizing only sorts and merges. Should that break,
        // an empty answer is safe: the host completes it.
        match normalize_evict_ranges(self.ranges) {
            Ok(ranges) => ranges,
            Err(e) if cfg!(debug_assertions) => panic!("the victim choice overlaps itself: {e}"),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
