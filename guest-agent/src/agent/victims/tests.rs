use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const UNIT: u64 = 512;

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// The agent's state built from hint operations (in 4 KiB blocks) and
/// given-away operations (in 512-byte units).
struct Case {
    size_bytes: u64,
    hints: SpanMap<HintKind>,
    given: SpanSet,
    /// Per 512-byte unit: the hint, and whether it was given away.
    unit_hint: Vec<Option<HintKind>>,
    unit_given: Vec<bool>,
}

fn build(size_units: u64, hint_ops: &[(u64, u64, HintKind)], given_ops: &[(u64, u64)]) -> Case {
    let size_bytes = size_units * UNIT;
    let mut hints = SpanMap::new();
    let mut unit_hint = vec![None; size_units as usize];
    for &(s, e, kind) in hint_ops {
        let (bs, be) = ((s * 4096).min(size_bytes), (e * 4096).min(size_bytes));
        let value = (kind != HintKind::Forget).then_some(kind);
        hints.set(bs, be, value);
        for u in bs / UNIT..be / UNIT {
            unit_hint[u as usize] = value;
        }
    }
    let mut given = SpanSet::new();
    let mut unit_given = vec![false; size_units as usize];
    for &(s, e) in given_ops {
        let (s, e) = (s.min(size_units), e.min(size_units));
        given.insert(s * UNIT, e * UNIT);
        for u in s..e {
            unit_given[u as usize] = true;
        }
    }
    Case { size_bytes, hints, given, unit_hint, unit_given }
}

/// The reference choice: classify every block, order the tiers, take `count`.
fn model_choice(case: &Case, block_size: u64, count: u64) -> Vec<(u64, Disposition)> {
    let per = (block_size / UNIT) as usize;
    let n = case.size_bytes / block_size;
    let mut tiers: [Vec<u64>; 4] = Default::default();
    for j in 0..n {
        let units = j as usize * per..(j as usize + 1) * per;
        if case.unit_given[units.clone()].iter().any(|&g| g) {
            continue;
        }
        let kinds = &case.unit_hint[units];
        let tier = if kinds.contains(&Some(HintKind::Hot)) {
            3
        } else if kinds.iter().all(|&k| k == Some(HintKind::Disposable)) {
            0
        } else if kinds.iter().all(|&k| matches!(k, Some(HintKind::Cold | HintKind::Disposable))) {
            1
        } else {
            2
        };
        tiers[tier].push(j);
    }
    tiers[2].reverse();
    tiers[3].reverse();
    let mut out = Vec::new();
    for (tier, blocks) in tiers.iter().enumerate() {
        let disposition = if tier == 0 { Disposition::Drop } else { Disposition::Keep };
        out.extend(blocks.iter().map(|&b| (b, disposition)));
    }
    out.truncate(count as usize);
    out.sort_unstable();
    out
}

fn blocks_of(ranges: &[EvictRange]) -> Vec<(u64, Disposition)> {
    ranges
        .iter()
        .flat_map(|r| (r.start..r.start + r.count).map(move |b| (b, r.disposition)))
        .collect()
}

fn hint_kind() -> impl Strategy<Value = HintKind> {
    prop_oneof![
        Just(HintKind::Hot),
        Just(HintKind::Cold),
        Just(HintKind::Disposable),
        Just(HintKind::Forget)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn victim_choice_follows_the_tiers_and_never_exceeds_count_or_device(
        size_units in 1u64..400,
        hint_ops in proptest::collection::vec(
            (0u64..60, 0u64..12, hint_kind()).prop_map(|(s, l, k)| (s, s + l, k)), 0..12),
        given_ops in proptest::collection::vec(
            (0u64..400, 0u64..40).prop_map(|(s, l)| (s, s + l)), 0..4),
        block_size in prop_oneof![Just(512u64), Just(4096), Just(16384)],
        count in 0u64..120,
    ) {
        let case = build(size_units, &hint_ops, &given_ops);
        let victims = Victims {
            hints: &case.hints,
            given: &case.given,
            size_bytes: case.size_bytes,
            block_size,
            resident: None,
        };
        let got = victims.choose(count, far());
        // Normalized: sorted, disjoint, merged.
        prop_assert_eq!(&normalize_evict_ranges(got.iter().copied()).unwrap(), &got);
        let n = case.size_bytes / block_size;
        for r in &got {
            prop_assert!(r.count > 0 && r.start + r.count <= n, "{:?} outside {} blocks", r, n);
        }
        let blocks = blocks_of(&got);
        prop_assert!(blocks.len() as u64 <= count);
        prop_assert_eq!(blocks, model_choice(&case, block_size, count));
    }
}

/// 64 blocks of 4 KiB: 10-19 disposable, 30-33 cold, 56-63 hot.
fn three_tiers() -> Case {
    build(
        64 * 8,
        &[(10, 20, HintKind::Disposable), (30, 34, HintKind::Cold), (56, 64, HintKind::Hot)],
        &[],
    )
}

/// The victim search over `case` in 4 KiB blocks.
fn victims_of<'a>(case: &'a Case, resident: Option<&'a [BlockRange]>) -> Victims<'a> {
    Victims {
        hints: &case.hints,
        given: &case.given,
        size_bytes: case.size_bytes,
        block_size: 4096,
        resident,
    }
}

#[test]
fn disposable_goes_first_as_drop_then_cold_then_the_unhinted_end() {
    let case = three_tiers();
    let victims = victims_of(&case, None);
    let got = victims.choose(20, far());
    assert_eq!(
        got,
        [
            EvictRange { start: 10, count: 10, disposition: Disposition::Drop },
            EvictRange { start: 30, count: 4, disposition: Disposition::Keep },
            EvictRange { start: 50, count: 6, disposition: Disposition::Keep },
        ]
    );
    // Everything: hot comes last, so asking for all but 2 leaves 2 hot blocks.
    let all = victims.choose(62, far());
    assert_eq!(blocks_of(&all).len(), 62);
    assert_eq!(
        all,
        [
            EvictRange { start: 0, count: 10, disposition: Disposition::Keep },
            EvictRange { start: 10, count: 10, disposition: Disposition::Drop },
            EvictRange { start: 20, count: 36, disposition: Disposition::Keep },
            EvictRange { start: 58, count: 6, disposition: Disposition::Keep },
        ]
    );
}

#[test]
fn only_blocks_the_host_says_are_resident_are_offered() {
    let case = three_tiers();
    // Resident: 0-11 (two of the disposable blocks), 32-39 (half the cold
    // ones and some unhinted) and 60-61 (hot); the rest is unmapped or in
    // swap. A range past the device is clipped.
    let resident = [
        BlockRange { start: 0, count: 12 },
        BlockRange { start: 32, count: 8 },
        BlockRange { start: 60, count: 2 },
        BlockRange { start: 70, count: u64::MAX },
    ];
    let victims = victims_of(&case, Some(&resident));
    let got = victims.choose(20, far());
    assert_eq!(
        got,
        [
            EvictRange { start: 0, count: 10, disposition: Disposition::Keep },
            EvictRange { start: 10, count: 2, disposition: Disposition::Drop },
            EvictRange { start: 32, count: 8, disposition: Disposition::Keep },
        ]
    );
    // Asked for more than is resident: the resident blocks, hot last.
    let all = victims.choose(40, far());
    assert_eq!(blocks_of(&all).len(), 22);
    assert_eq!(
        all.last(),
        Some(&EvictRange { start: 60, count: 2, disposition: Disposition::Keep })
    );
}

#[test]
fn hot_blocks_given_away_are_asked_back_first() {
    let case =
        build(64 * 8, &[(0, 4, HintKind::Hot), (40, 48, HintKind::Hot)], &[(42 * 8, 44 * 8)]);
    let victims = Victims {
        hints: &case.hints,
        given: &case.given,
        size_bytes: case.size_bytes,
        block_size: 4096,
        resident: None,
    };
    assert_eq!(
        victims.wanted_back(7),
        [
            BlockRange { start: 42, count: 2 },
            BlockRange { start: 0, count: 4 },
            BlockRange { start: 40, count: 1 },
        ]
    );
}

#[test]
fn a_passed_deadline_cuts_the_answer_short() {
    let mut hints = SpanMap::new();
    for b in (0..20_000u64).step_by(2) {
        hints.set(b * 4096, (b + 1) * 4096, Some(HintKind::Cold));
    }
    let given = SpanSet::new();
    let victims = Victims {
        hints: &hints,
        given: &given,
        size_bytes: 20_000 * 4096,
        block_size: 4096,
        resident: None,
    };
    let got = victims.choose(10_000, Instant::now());
    assert!(total_blocks(&got) < 10_000, "{} blocks", total_blocks(&got));
}

fn total_blocks(ranges: &[EvictRange]) -> u64 {
    ranges.iter().map(|r| r.count).sum()
}

/// The worst case for the answer's size: 65,536 one-block ranges (256 MiB
/// of 4 KiB blocks), out of a hint map of 131,072 spans.
#[test]
fn answering_65536_fragmented_blocks_takes_well_under_10_ms() {
    let blocks = 1u64 << 18; // 1 GiB
    let mut hints = SpanMap::new();
    for b in (0..blocks).step_by(2) {
        hints.set(b * 4096, (b + 1) * 4096, Some(HintKind::Cold));
    }
    assert_eq!(hints.len(), 131_072);
    let given = SpanSet::new();
    let victims = Victims {
        hints: &hints,
        given: &given,
        size_bytes: blocks * 4096,
        block_size: 4096,
        resident: None,
    };
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let got = victims.choose(65_536, far());
        best = best.min(t.elapsed());
        assert_eq!(got.len(), 65_536);
        assert_eq!(total_blocks(&got), 65_536);
    }
    eprintln!("65,536 fragmented blocks chosen in {best:?}");
    assert!(best < Duration::from_millis(10), "took {best:?}");
}
