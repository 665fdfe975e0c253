//! Maps from disjoint half-open `u64` spans to a value, the agent's
//! representation of hint sets and given-away blocks. A span is stored
//! once however long it is, so a hint for a whole disk costs one entry.
//!
//! Invariants: spans are non-empty and disjoint, and two touching spans
//! never carry the same value (they are merged).

use std::collections::BTreeMap;

/// Disjoint spans `[start, end)`, each with a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpanMap<V> {
    /// start -> (end, value)
    spans: BTreeMap<u64, (u64, V)>,
}

impl<V> Default for SpanMap<V> {
    fn default() -> Self {
        SpanMap { spans: BTreeMap::new() }
    }
}

/// A set of disjoint spans.
pub(crate) type SpanSet = SpanMap<()>;

impl<V: Copy + Eq> SpanMap<V> {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        SpanMap { spans: BTreeMap::new() }
    }

    /// Gives `[start, end)` the value `value`, or removes it from the map
    /// with `None`. What was there before is overwritten.
    pub(crate) fn set(&mut self, start: u64, end: u64, value: Option<V>) {
        if start >= end {
            return;
        }
        // Cut the span that straddles `start`.
        if let Some((&s, &(e, v))) = self.spans.range(..start).next_back() {
            if e > start {
                self.spans.insert(s, (start, v));
                if e > end {
                    self.spans.insert(end, (e, v));
                }
            }
        }
        // Remove the spans that start inside, keeping what sticks out.
        while let Some((&s, &(e, v))) = self.spans.range(start..end).next() {
            self.spans.remove(&s);
            if e > end {
                self.spans.insert(end, (e, v));
            }
        }
        let Some(value) = value else { return };
        let mut start = start;
        let mut end = end;
        if let Some((&s, &(e, v))) = self.spans.range(..start).next_back() {
            if e == start && v == value {
                self.spans.remove(&s);
                start = s;
            }
        }
        if let Some(&(e, v)) = self.spans.get(&end) {
            if v == value {
                self.spans.remove(&end);
                end = e;
            }
        }
        self.spans.insert(start, (end, value));
    }

    /// All spans in order, as `(start, end, value)`.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, u64, V)> + '_ {
        self.spans.iter().map(|(&s, &(e, v))| (s, e, v))
    }

    /// The spans that meet `[lo, hi)`, clipped to it, in order.
    pub(crate) fn overlapping(&self, lo: u64, hi: u64) -> impl Iterator<Item = (u64, u64, V)> + '_ {
        let straddling =
            self.spans.range(..lo).next_back().filter(|(_, &(e, _))| e > lo && lo < hi);
        let inside = self.spans.range(lo..hi.max(lo));
        straddling.into_iter().chain(inside).map(move |(&s, &(e, v))| (s.max(lo), e.min(hi), v))
    }

    /// Total length of the spans whose value satisfies `pick`.
    pub(crate) fn total(&self, pick: impl Fn(V) -> bool) -> u64 {
        self.iter().filter(|&(_, _, v)| pick(v)).map(|(s, e, _)| e - s).sum()
    }

    /// Number of spans.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }
}

impl SpanSet {
    /// The union of `spans` (in any order, possibly overlapping; empty
    /// ones are ignored), built in one pass after a sort: much cheaper than
    /// inserting them one by one.
    pub(crate) fn from_spans(mut spans: Vec<(u64, u64)>) -> Self {
        spans.retain(|&(s, e)| s < e);
        spans.sort_unstable();
        let mut merged: Vec<(u64, (u64, ()))> = Vec::with_capacity(spans.len());
        for (s, e) in spans {
            match merged.last_mut() {
                Some((_, (end, ()))) if s <= *end => *end = (*end).max(e),
                _ => merged.push((s, (e, ()))),
            }
        }
        SpanMap { spans: merged.into_iter().collect() }
    }

    /// Adds `[start, end)`.
    pub(crate) fn insert(&mut self, start: u64, end: u64) {
        self.set(start, end, Some(()));
    }

    /// Removes `[start, end)`.
    pub(crate) fn remove(&mut self, start: u64, end: u64) {
        self.set(start, end, None);
    }

    /// The maximal uncovered spans inside `[lo, hi)`, lowest first.
    pub(crate) fn gaps(&self, lo: u64, hi: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut cursor = lo;
        if let Some((_, &(e, ()))) = self.spans.range(..lo).next_back() {
            cursor = cursor.max(e);
        }
        let mut inside = self.spans.range(lo..hi.max(lo));
        std::iter::from_fn(move || loop {
            if cursor >= hi {
                return None;
            }
            match inside.next() {
                Some((&s, &(e, ()))) => {
                    let gap = (cursor, s);
                    cursor = cursor.max(e);
                    if gap.0 < gap.1 {
                        return Some(gap);
                    }
                }
                None => {
                    let gap = (cursor, hi);
                    cursor = hi;
                    return Some(gap);
                }
            }
        })
    }

    /// The maximal uncovered spans inside `[lo, hi)`, highest first.
    pub(crate) fn gaps_rev(&self, lo: u64, hi: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut cursor = hi;
        let mut below = self.spans.range(..hi).rev();
        std::iter::from_fn(move || loop {
            if cursor <= lo {
                return None;
            }
            match below.next() {
                Some((&s, &(e, ()))) => {
                    let gap = (e.max(lo), cursor);
                    cursor = cursor.min(s);
                    if gap.0 < gap.1 {
                        return Some(gap);
                    }
                }
                None => {
                    let gap = (lo, cursor);
                    cursor = lo;
                    return Some(gap);
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reference model: one optional value per unit.
    fn model_of(ops: &[(u64, u64, Option<u8>)], size: u64) -> Vec<Option<u8>> {
        let mut m = vec![None; size as usize];
        for &(s, e, v) in ops {
            for x in s..e {
                m[x as usize] = v;
            }
        }
        m
    }

    fn ops() -> impl Strategy<Value = Vec<(u64, u64, Option<u8>)>> {
        proptest::collection::vec(
            (0u64..64, 0u64..16, proptest::option::of(0u8..3)).prop_map(|(s, l, v)| (s, s + l, v)),
            0..40,
        )
    }

    #[test]
    fn setting_splits_overwrites_and_merges() {
        let mut m = SpanMap::new();
        m.set(0, 100, Some('c'));
        m.set(40, 60, Some('h'));
        m.set(60, 70, Some('h'));
        assert_eq!(m.iter().collect::<Vec<_>>(), [(0, 40, 'c'), (40, 70, 'h'), (70, 100, 'c')]);
        m.set(30, 80, Some('c'));
        assert_eq!(m.iter().collect::<Vec<_>>(), [(0, 100, 'c')]);
        m.set(10, 20, None);
        assert_eq!(m.iter().collect::<Vec<_>>(), [(0, 10, 'c'), (20, 100, 'c')]);
    }

    proptest! {
        #[test]
        fn span_map_matches_a_per_unit_model(ops in ops()) {
            let size = 80;
            let mut map = SpanMap::new();
            for &(s, e, v) in &ops {
                map.set(s, e, v);
            }
            let mut got = vec![None; size as usize];
            let mut prev: Option<(u64, u8)> = None;
            for (s, e, v) in map.iter() {
                prop_assert!(s < e);
                if let Some((pe, pv)) = prev {
                    prop_assert!(pe <= s, "spans overlap");
                    prop_assert!(!(pe == s && pv == v), "touching spans of one value not merged");
                }
                prev = Some((e, v));
                for x in s..e {
                    got[x as usize] = Some(v);
                }
            }
            prop_assert_eq!(got, model_of(&ops, size));
        }

        #[test]
        fn a_set_built_at_once_equals_one_built_by_inserts(ops in ops()) {
            let spans: Vec<(u64, u64)> = ops.iter().map(|&(s, e, _)| (s, e)).collect();
            let mut inserted = SpanSet::new();
            for &(s, e) in &spans {
                inserted.insert(s, e);
            }
            prop_assert_eq!(SpanSet::from_spans(spans), inserted);
        }

        #[test]
        fn gaps_and_overlaps_match_the_model(ops in ops(), lo in 0u64..80, len in 0u64..80) {
            let hi = (lo + len).min(80);
            let mut set = SpanSet::new();
            for &(s, e, v) in &ops {
                set.set(s, e, v.map(|_| ()));
            }
            let model = model_of(&ops, 80);
            let free: Vec<u64> = (lo..hi).filter(|&x| model[x as usize].is_none()).collect();
            let gaps: Vec<u64> = set.gaps(lo, hi).flat_map(|(s, e)| s..e).collect();
            prop_assert_eq!(&gaps, &free);
            let mut rev: Vec<(u64, u64)> = set.gaps_rev(lo, hi).collect();
            rev.reverse();
            prop_assert_eq!(rev, set.gaps(lo, hi).collect::<Vec<_>>());
            let used: Vec<u64> = (lo..hi).filter(|&x| model[x as usize].is_some()).collect();
            let over: Vec<u64> = set.overlapping(lo, hi).flat_map(|(s, e, ())| s..e).collect();
            prop_assert_eq!(over, used);
        }
    }
}
