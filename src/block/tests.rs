//! Block region tests: behaviour against a byte model, and crash tests that
//! stop write/evict/fault/discard/flush sequences at every persist point.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use pmvisor_blk::{BlockDevice, DeviceError};
use rand::{Rng, SeedableRng};

use super::*;
use crate::pool::crash::{CrashMedia, TearGranularity};
use crate::pool::{MediaWindow, OpenMode};

const POOL: u64 = 2 << 20;
const SWAP_SLOTS: u64 = 64;

/// A pool and a swap tier in windows of one crash medium.
fn rig(media: Arc<CrashMedia>) -> (Arc<Pool>, Arc<SwapTier>) {
    let pool_media = Arc::new(MediaWindow::new(media.clone(), 0, POOL).unwrap());
    let swap = MediaSwap::new(media, POOL, SWAP_SLOTS);
    let pool = Pool::open_media(pool_media, Path::new("block.pool"), OpenMode::ReadWrite).unwrap();
    (Arc::new(pool), SwapTier::new(Box::new(swap)))
}

fn fresh() -> Vec<u8> {
    let media = Arc::new(CrashMedia::new(POOL + SWAP_SLOTS * BLOCK, TearGranularity::Nvram));
    let window = Arc::new(MediaWindow::new(media.clone(), 0, POOL).unwrap());
    Pool::format(window, Path::new("block.pool"), POOL, Some(16 << 10)).unwrap();
    media.durable_image()
}

fn region(image: Vec<u8>, spec: Option<BlockSpec>) -> (Arc<CrashMedia>, BlockRegions) {
    let media = Arc::new(CrashMedia::from_image(image, TearGranularity::Nvram));
    let (pool, swap) = rig(media.clone());
    let regions = BlockRegions::open(pool, swap).unwrap();
    if let Some(spec) = spec {
        regions.create("disk", spec).unwrap();
    }
    (media, regions)
}

fn pattern(block: u64, version: u64) -> Vec<u8> {
    let word = (block << 32) | version;
    (0..BLOCK / 8).flat_map(|_| word.to_le_bytes()).collect()
}

#[test]
fn unmapped_blocks_read_as_zeros_and_writes_read_back() {
    let (_, regions) =
        region(fresh(), Some(BlockSpec { size: 64 * BLOCK, resident: 8 * BLOCK, swap: false }));
    let disk = regions.get("disk").unwrap();
    let mut buf = vec![1u8; 10_000];
    disk.read_at(5, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    disk.write_at(4090, b"spans two blocks", false).unwrap();
    let mut got = [0u8; 16];
    disk.read_at(4090, &mut got).unwrap();
    assert_eq!(&got, b"spans two blocks");
    assert_eq!(disk.stats().resident_blocks, 2);
}

#[test]
fn a_full_quota_without_swap_fails_with_no_space() {
    let (_, regions) =
        region(fresh(), Some(BlockSpec { size: 64 * BLOCK, resident: 2 * BLOCK, swap: false }));
    let disk = regions.get("disk").unwrap();
    disk.write_at(0, &[1; 8192], false).unwrap();
    assert!(matches!(disk.write_at(8192, &[1; 10], false), Err(DeviceError::NoSpace)));
    disk.trim(0, 4096).unwrap();
    disk.write_at(8192, &[1; 10], false).unwrap();
}

#[test]
fn a_working_set_larger_than_the_quota_swaps_and_faults_without_losing_data() {
    let (_, regions) =
        region(fresh(), Some(BlockSpec { size: 32 * BLOCK, resident: 4 * BLOCK, swap: true }));
    let disk = regions.get("disk").unwrap();
    let mut model = vec![0u8; 32 * BLOCK as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for i in 0..400u64 {
        let offset = rng.gen_range(0..32 * BLOCK - 9000);
        let len = rng.gen_range(1..9000usize);
        match i % 5 {
            0..=2 => {
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                disk.write_at(offset, &data, i % 7 == 0).unwrap();
                model[offset as usize..offset as usize + len].copy_from_slice(&data);
            }
            3 => {
                let mut got = vec![0u8; len];
                disk.read_at(offset, &mut got).unwrap();
                assert_eq!(got, &model[offset as usize..offset as usize + len], "read {i}");
            }
            _ => {
                disk.trim(offset, len as u64).unwrap();
                model[offset as usize..offset as usize + len].fill(0);
            }
        }
    }
    let stats = disk.stats();
    assert!(stats.evictions > 0 && stats.faults > 0, "{stats:?}");
    assert!(stats.resident_blocks <= 4);
    assert!(stats.mrr < 1.0);
    let mut all = vec![0u8; model.len()];
    disk.read_at(0, &mut all).unwrap();
    assert_eq!(all, model);
}

#[test]
fn block_status_reports_holes_and_data_as_they_are() {
    let (_, regions) =
        region(fresh(), Some(BlockSpec { size: 16 * BLOCK, resident: 16 * BLOCK, swap: false }));
    let disk = regions.get("disk").unwrap();
    disk.write_at(2 * BLOCK, &[7; 8192], false).unwrap();
    disk.write_at(10 * BLOCK, &[7; 10], false).unwrap();
    disk.trim(3 * BLOCK, BLOCK).unwrap();
    let got: Vec<(u64, bool)> =
        disk.block_status(0, 16 * BLOCK).unwrap().iter().map(|e| (e.len / BLOCK, e.hole)).collect();
    assert_eq!(got, vec![(2, true), (1, false), (7, true), (1, false), (5, true)]);
}

#[test]
fn quota_shrink_and_grow_keep_every_block() {
    let (_, regions) =
        region(fresh(), Some(BlockSpec { size: 32 * BLOCK, resident: 16 * BLOCK, swap: true }));
    let disk = regions.get("disk").unwrap();
    for b in 0..16 {
        disk.write_at(b * BLOCK, &pattern(b, 1), false).unwrap();
    }
    disk.set_resident_quota(5 * BLOCK).unwrap();
    assert_eq!(disk.stats().resident_blocks, 5);
    assert_eq!(disk.stats().swapped_blocks, 11);
    assert_eq!(disk.stats().resident_quota, 5 * BLOCK);
    disk.set_resident_quota(20 * BLOCK).unwrap();
    for b in 0..16 {
        let mut got = vec![0u8; BLOCK as usize];
        disk.read_at(b * BLOCK, &mut got).unwrap();
        assert_eq!(got, pattern(b, 1), "block {b}");
    }
    assert!(regions.get("disk").unwrap().stats().faults >= 11);
}

#[test]
fn quota_shrink_without_swap_is_refused_when_data_would_not_fit() {
    let (_, regions) =
        region(fresh(), Some(BlockSpec { size: 32 * BLOCK, resident: 8 * BLOCK, swap: false }));
    let disk = regions.get("disk").unwrap();
    disk.write_at(0, &vec![1u8; 6 * BLOCK as usize], false).unwrap();
    let err = disk.set_resident_quota(4 * BLOCK).unwrap_err();
    assert!(err.to_string().contains("cannot hold 6 blocks in 4 frames without a swap tier"));
    disk.set_resident_quota(6 * BLOCK).unwrap();
    let mut got = vec![0u8; 6 * BLOCK as usize];
    disk.read_at(0, &mut got).unwrap();
    assert!(got.iter().all(|&b| b == 1));
}

/// What the crash test expects of each block after a crash.
#[derive(Debug, Clone, Default)]
struct Expect {
    /// Content at the last completed flush (None: never flushed = zeros ok).
    flushed: Option<u64>,
    /// Versions written since that flush (any may have landed, torn).
    pending: BTreeSet<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Write(u64, u64),
    WriteFua(u64, u64),
    Read(u64),
    Trim(u64),
    /// Trim `count` blocks from the first, resident and swapped ones
    /// together (one batch).
    TrimRange(u64, u64),
    Flush,
    Shrink(u64),
    Grow(u64),
    /// Shrink to frames with the guest choosing: drop one block, keep one
    /// (plus an out-of-range and a duplicate victim the host must ignore).
    GuidedShrink(u64, u64, u64),
}

fn script() -> Vec<Step> {
    use Step::*;
    let mut steps = Vec::new();
    for b in 0..6 {
        steps.push(Write(b, 1));
    }
    steps.push(Flush);
    // Beyond the 4-frame quota: evictions to swap.
    for b in 6..10 {
        steps.push(Write(b, 1));
    }
    steps.extend([Read(0), Read(1), WriteFua(2, 2), Trim(3), Flush, Write(0, 3), Read(7)]);
    steps.extend([Shrink(2), Read(5), Write(11, 1), Flush, Grow(6), Trim(6), Read(9), Flush]);
    steps.extend([WriteFua(3, 4), Write(4, 4)]);
    steps.extend([Flush, GuidedShrink(3, 4, 3), Read(3), Write(12, 1), Write(13, 1), Flush]);
    steps.extend([Write(14, 1), Write(15, 1), TrimRange(8, 6), Write(10, 5), Flush]);
    steps
}

fn run_step(disk: &BlockRegion, step: Step) -> Result<(), String> {
    let e = |e: DeviceError| e.to_string();
    match step {
        Step::Write(b, v) => disk.write_at(b * BLOCK, &pattern(b, v), false).map_err(e),
        Step::WriteFua(b, v) => disk.write_at(b * BLOCK, &pattern(b, v), true).map_err(e),
        Step::Read(b) => disk.read_at(b * BLOCK, &mut vec![0u8; BLOCK as usize]).map_err(e),
        Step::Trim(b) => disk.trim(b * BLOCK, BLOCK).map_err(e),
        Step::TrimRange(b, n) => disk.trim(b * BLOCK, n * BLOCK).map_err(e),
        Step::Flush => disk.flush().map_err(e),
        Step::Shrink(f) | Step::Grow(f) => {
            disk.set_resident_quota(f * BLOCK).map_err(|e| e.to_string())
        }
        Step::GuidedShrink(f, dropped, keep) => {
            let victims = [
                GuestVictims { start: dropped, count: 1, disposition: Disposition::Drop },
                GuestVictims { start: keep, count: 1, disposition: Disposition::Keep },
                GuestVictims { start: 1000, count: 5, disposition: Disposition::Keep },
                GuestVictims { start: keep, count: 1, disposition: Disposition::Drop },
            ];
            disk.resize_resident(f * BLOCK, &victims, &[]).map(drop).map_err(|e| e.to_string())
        }
    }
}

/// Apply a step that completed to the expectations.
fn expect_after(expect: &mut BTreeMap<u64, Expect>, step: Step) {
    match step {
        Step::Write(b, v) => {
            expect.entry(b).or_default().pending.insert(v);
        }
        Step::WriteFua(b, v) => {
            // Durable on return; earlier pending writes are overwritten.
            *expect.entry(b).or_default() = Expect { flushed: Some(v), pending: BTreeSet::new() };
        }
        Step::Trim(b) | Step::GuidedShrink(_, b, _) => {
            *expect.entry(b).or_default() = Expect { flushed: Some(0), pending: BTreeSet::new() };
        }
        Step::TrimRange(first, n) => {
            for b in first..first + n {
                *expect.entry(b).or_default() =
                    Expect { flushed: Some(0), pending: BTreeSet::new() };
            }
        }
        Step::Flush => {
            for e in expect.values_mut() {
                if let Some(&last) = e.pending.last() {
                    e.flushed = Some(last);
                    e.pending.clear();
                }
            }
        }
        _ => {}
    }
}

fn verify(
    disk: &BlockRegion,
    expect: &BTreeMap<u64, Expect>,
    running: Option<Step>,
) -> Result<(), String> {
    for b in 0..16u64 {
        let mut got = vec![0u8; BLOCK as usize];
        disk.read_at(b * BLOCK, &mut got).map_err(|e| format!("read {b}: {e}"))?;
        let mut allowed: BTreeSet<u64> = BTreeSet::new();
        let e = expect.get(&b).cloned().unwrap_or_default();
        allowed.insert(e.flushed.unwrap_or(0));
        allowed.extend(e.pending.iter().copied());
        match running {
            Some(Step::Write(rb, v) | Step::WriteFua(rb, v)) if rb == b => {
                allowed.insert(v);
            }
            Some(Step::Trim(rb) | Step::GuidedShrink(_, rb, _)) if rb == b => {
                allowed.insert(0);
            }
            Some(Step::TrimRange(first, n)) if (first..first + n).contains(&b) => {
                allowed.insert(0);
            }
            _ => {}
        }
        let stable = e.pending.is_empty() && allowed.len() == 1;
        for (i, word) in got.chunks_exact(8).enumerate() {
            let w = u64::from_le_bytes(word.try_into().unwrap());
            let version = if w == 0 {
                0
            } else if w >> 32 == b {
                w & 0xffff_ffff
            } else {
                u64::MAX
            };
            if !allowed.contains(&version) {
                return Err(format!(
                    "block {b} word {i} holds {w:#x}; allowed versions {allowed:?} (stable: {stable})"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn a_long_trim_unmaps_resident_and_swapped_blocks_in_one_persist_and_frees_their_space() {
    let spec = BlockSpec { size: 128 * BLOCK, resident: 32 * BLOCK, swap: true };
    let (media, regions) = region(fresh(), Some(spec));
    let disk = regions.get("disk").unwrap();
    for b in 0..90 {
        disk.write_at(b * BLOCK, &pattern(b, 1), false).unwrap();
    }
    disk.flush().unwrap();
    let before = disk.stats();
    assert_eq!((before.resident_blocks, before.swapped_blocks), (32, 58));
    let tier = disk.swap.clone().unwrap();
    let slots_used = || tier.slots.lock().unwrap().used();
    assert_eq!(slots_used(), 58);

    let points = media.persist_points();
    disk.trim(BLOCK / 2, 100 * BLOCK).unwrap();
    // Per block this cost a persist and a punch each (about 200 µs a block
    // on a virtual machine): now the 99 whole blocks' entries are persisted
    // together (the half block at the start is a write of zeros).
    let persists = media.persist_points() - points;
    assert!(persists < 10, "{persists} persists for a trim of 99 whole blocks");
    let after = disk.stats();
    // Blocks 1..=99 are whole; block 0 keeps its first half, 100 was never written.
    assert_eq!((after.resident_blocks, after.swapped_blocks), (1, 0), "{after:?}");
    assert_eq!(slots_used(), 0, "the swapped blocks' slots are free");
    let mut got = vec![1u8; (100 * BLOCK) as usize];
    disk.read_at(BLOCK / 2, &mut got).unwrap();
    assert!(got.iter().all(|&b| b == 0));
    let mut head = vec![0u8; (BLOCK / 2) as usize];
    disk.read_at(0, &mut head).unwrap();
    assert_eq!(head, pattern(0, 1)[..(BLOCK / 2) as usize]);
}

#[test]
fn acknowledged_flushes_survive_a_crash_at_every_persist_point() {
    let spec = BlockSpec { size: 16 * BLOCK, resident: 4 * BLOCK, swap: true };
    let (base_media, _) = region(fresh(), Some(spec));
    let base = base_media.durable_image();
    let steps = script();

    let (dry, regions) = region(base.clone(), None);
    let disk = regions.get("disk").unwrap();
    for &s in &steps {
        run_step(&disk, s).unwrap();
    }
    assert!(disk.stats().evictions > 0 && disk.stats().faults > 0);
    let points = dry.persist_points();
    drop(disk);
    drop(regions);

    let mut states = 0;
    for point in 0..points {
        let media =
            Arc::new(CrashMedia::from_image(base.clone(), TearGranularity::Nvram).crash_at(point));
        let (pool, swap) = rig(media.clone());
        let regions = BlockRegions::open(pool, swap).unwrap();
        let disk = regions.get("disk").unwrap();
        let mut expect = BTreeMap::new();
        let mut running = None;
        for &s in &steps {
            if run_step(&disk, s).is_err() {
                running = Some(s);
                break;
            }
            expect_after(&mut expect, s);
        }
        assert!(media.has_crashed(), "point {point} was never reached");
        drop(disk);
        drop(regions);
        for (n, image) in media.crash_images(3, point as u64).into_iter().enumerate() {
            let (_, regions) = region(image, None);
            let disk = regions.get("disk").unwrap_or_else(|| panic!("point {point}: region lost"));
            verify(&disk, &expect, running)
                .unwrap_or_else(|e| panic!("point {point} image {n} during {running:?}: {e}"));
            let stats = disk.stats();
            assert!(stats.resident_blocks * BLOCK <= stats.resident_quota);
            states += 1;
        }
    }
    println!("block region crash test: {points} persist points, {states} crash states checked");
    assert!(states > 100);
}

#[test]
fn a_guided_shrink_applies_the_guests_choice_and_ignores_what_is_wrong() {
    let (_, regions) =
        region(fresh(), Some(BlockSpec { size: 64 * BLOCK, resident: 16 * BLOCK, swap: true }));
    let disk = regions.get("disk").unwrap();
    for b in 0..16 {
        disk.write_at(b * BLOCK, &pattern(b, 1), false).unwrap();
    }
    disk.write_at(20 * BLOCK, &pattern(20, 1), false).unwrap(); // evicts one block
    let victims = [
        GuestVictims { start: 2, count: 2, disposition: Disposition::Drop },
        GuestVictims { start: 5, count: 3, disposition: Disposition::Keep },
        GuestVictims { start: 60, count: 10, disposition: Disposition::Keep }, // 6 past the end
        GuestVictims { start: 5, count: 1, disposition: Disposition::Drop },   // duplicate
        GuestVictims { start: 40, count: 2, disposition: Disposition::Drop },  // unmapped
        GuestVictims { start: 8, count: u64::MAX, disposition: Disposition::Keep },
    ];
    // 16 resident; shrink to 8 frames frees 8: 2 dropped, 3 + 3 kept; the
    // rest of the last run is surplus.
    let report = disk.resize_resident(8 * BLOCK, &victims, &[]).unwrap();
    assert_eq!((report.guest_dropped, report.guest_kept, report.host_chosen), (2, 6, 0));
    assert_eq!(report.rejected.out_of_range, 6 + (u64::MAX - 64));
    assert_eq!(report.rejected.duplicate, 1);
    assert_eq!(report.rejected.not_resident, 4 + 2);
    assert_eq!(report.rejected.surplus, 64 - 11);
    assert_eq!(disk.block_state(2), Some(BlockState::Unmapped));
    assert!(matches!(disk.block_state(5), Some(BlockState::Swapped(_))));
    assert!(matches!(disk.block_state(10), Some(BlockState::Swapped(_))));
    assert!(matches!(disk.block_state(11), Some(BlockState::Resident(_))));
    for b in (0..16).chain([20]) {
        let mut got = vec![0u8; BLOCK as usize];
        disk.read_at(b * BLOCK, &mut got).unwrap();
        let want = if b == 2 || b == 3 { vec![0u8; BLOCK as usize] } else { pattern(b, 1) };
        assert_eq!(got, want, "block {b}");
    }
    let stats = disk.stats();
    assert!(stats.resident_blocks <= 8 && stats.resident_quota == 8 * BLOCK);
}

#[test]
fn a_shrink_the_guest_answers_short_is_completed_by_clock_and_a_grow_brings_hot_blocks_back() {
    let (_, regions) =
        region(fresh(), Some(BlockSpec { size: 64 * BLOCK, resident: 16 * BLOCK, swap: true }));
    let disk = regions.get("disk").unwrap();
    for b in 0..16 {
        disk.write_at(b * BLOCK, &pattern(b, 1), false).unwrap();
    }
    let victims = [GuestVictims { start: 0, count: 2, disposition: Disposition::Keep }];
    let report = disk.resize_resident(10 * BLOCK, &victims, &[]).unwrap();
    assert_eq!((report.guest_kept, report.host_chosen), (2, 4));
    let swapped: Vec<u64> =
        (0..16).filter(|&b| matches!(disk.block_state(b), Some(BlockState::Swapped(_)))).collect();
    assert_eq!(swapped.len(), 6);
    let report =
        disk.resize_resident(14 * BLOCK, &[], &[(0, 1), (swapped[5], 1), (100, 3)]).unwrap();
    assert_eq!(report.brought_back, 2);
    assert!(matches!(disk.block_state(0), Some(BlockState::Resident(_))));
    assert!(matches!(disk.block_state(swapped[5]), Some(BlockState::Resident(_))));
    for b in 0..16 {
        let mut got = vec![0u8; BLOCK as usize];
        disk.read_at(b * BLOCK, &mut got).unwrap();
        assert_eq!(got, pattern(b, 1), "block {b}");
    }
    // Without swap, only drops can shrink below what is resident.
    let (_, regions) =
        region(fresh(), Some(BlockSpec { size: 64 * BLOCK, resident: 8 * BLOCK, swap: false }));
    let disk = regions.get("disk").unwrap();
    for b in 0..8 {
        disk.write_at(b * BLOCK, &pattern(b, 1), false).unwrap();
    }
    let keep = [GuestVictims { start: 0, count: 2, disposition: Disposition::Keep }];
    assert!(matches!(
        disk.resize_resident(6 * BLOCK, &keep, &[]),
        Err(BlockError::QuotaTooSmall { .. })
    ));
    let drop = [GuestVictims { start: 0, count: 2, disposition: Disposition::Drop }];
    let report = disk.resize_resident(6 * BLOCK, &drop, &[]).unwrap();
    assert_eq!(report.guest_dropped, 2);
}

#[test]
fn blocks_a_grow_brings_back_are_not_faults_and_unread_go_first_at_the_next_shrink() {
    let (_, regions) =
        region(fresh(), Some(BlockSpec { size: 64 * BLOCK, resident: 16 * BLOCK, swap: true }));
    let disk = regions.get("disk").unwrap();
    for b in 0..16 {
        disk.write_at(b * BLOCK, &pattern(b, 1), false).unwrap();
    }
    let mut buf = vec![0u8; BLOCK as usize];
    let read = |b: u64, buf: &mut Vec<u8>| disk.read_at(b * BLOCK, buf).unwrap();
    let state = |b: u64| disk.block_state(b);
    // Every block was written (referenced): CLOCK takes the tail.
    let report = disk.resize_resident(8 * BLOCK, &[], &[]).unwrap();
    assert_eq!((report.host_chosen, report.compacted), (8, 0));
    assert!((8..16).all(|b| matches!(state(b), Some(BlockState::Swapped(_)))));
    let faults = disk.stats().faults;
    let report = disk.resize_resident(16 * BLOCK, &[], &[(0, 64)]).unwrap();
    assert_eq!(report.brought_back, 8);
    assert_eq!(disk.stats().faults, faults, "bringing blocks back is not a read's fault");
    // Half the old blocks are read again; the brought-back ones are not:
    // they are the coldest and go first, from the tail, so nothing moves.
    (0..4).for_each(|b| read(b, &mut buf));
    let report = disk.resize_resident(8 * BLOCK, &[], &[]).unwrap();
    assert_eq!((report.host_chosen, report.compacted), (8, 0));
    assert!((0..8).all(|b| matches!(state(b), Some(BlockState::Resident(_)))));
    assert!((8..16).all(|b| matches!(state(b), Some(BlockState::Swapped(_)))));
    for b in 0..16 {
        read(b, &mut buf);
        assert_eq!(buf, pattern(b, 1), "block {b}");
    }
}

#[test]
fn resident_runs_list_what_is_resident_unless_there_are_too_many_runs() {
    let (_, regions) =
        region(fresh(), Some(BlockSpec { size: 64 * BLOCK, resident: 16 * BLOCK, swap: true }));
    let disk = regions.get("disk").unwrap();
    for b in (0..4).chain([8]).chain(10..12) {
        disk.write_at(b * BLOCK, &pattern(b, 1), false).unwrap();
    }
    assert_eq!(disk.resident_runs(3), Some(vec![(0, 4), (8, 1), (10, 2)]));
    assert_eq!(disk.resident_runs(2), None);
    // Swapped blocks are not resident.
    let victims = [GuestVictims { start: 1, count: 2, disposition: Disposition::Keep }];
    disk.resize_resident(5 * BLOCK, &victims, &[]).unwrap();
    assert_eq!(disk.resident_runs(8), Some(vec![(0, 1), (3, 1), (8, 1), (10, 2)]));
}

#[test]
fn quotas_may_exceed_the_pool_frames_are_taken_as_written_and_a_shrink_makes_room() {
    let image = fresh();
    let (media, regions) = region(image, None);
    // Two quotas of 1.5 MiB each in a 2 MiB pool.
    let spec = BlockSpec { size: 512 * BLOCK, resident: 384 * BLOCK, swap: false };
    regions.create("a", spec).unwrap();
    regions.create("b", spec).unwrap();
    let (a, b) = (regions.get("a").unwrap(), regions.get("b").unwrap());
    assert_eq!((a.stats().allocated, a.stats().resident_quota), (0, 384 * BLOCK));
    // A takes its whole quota, a step at a time.
    for block in 0..384 {
        a.write_at(block * BLOCK, &pattern(block, 1), false).unwrap();
    }
    assert_eq!(a.stats().allocated, 384 * BLOCK);
    assert!(matches!(a.write_at(384 * BLOCK, &[1; 10], false), Err(DeviceError::NoSpace)));
    // B gets what the pool has left, then (no swap) ENOSPC below its quota.
    let mut written = 0;
    while b.write_at(written * BLOCK, &pattern(written, 2), false).is_ok() {
        written += 1;
    }
    assert!(written > 0 && written < 384, "B wrote {written} blocks");
    assert_eq!(b.stats().allocated, written * BLOCK);
    // Shrinking A (trimmed first: it has no swap) gives B room.
    a.trim(256 * BLOCK, 128 * BLOCK).unwrap();
    let report = a.resize_resident(256 * BLOCK, &[], &[]).unwrap();
    assert_eq!((report.frames_after, a.stats().allocated), (256, 256 * BLOCK));
    for block in written..written + 64 {
        b.write_at(block * BLOCK, &pattern(block, 2), false).unwrap();
    }
    // A grow only raises the quota; quotas and data survive a reopen.
    a.resize_resident(500 * BLOCK, &[], &[]).unwrap();
    assert_eq!((a.stats().resident_quota, a.stats().allocated), (500 * BLOCK, 256 * BLOCK));
    // One quota alone may not exceed the pool.
    let beyond = a.resize_resident(1024 * BLOCK, &[], &[]).unwrap_err();
    assert!(matches!(beyond, BlockError::QuotaBeyondPool { .. }), "{beyond}");
    a.flush().unwrap();
    b.flush().unwrap();
    drop((a, b, regions));
    let (_, regions) = region(media.durable_image(), None);
    let (a, b) = (regions.get("a").unwrap(), regions.get("b").unwrap());
    assert_eq!(a.stats().resident_quota, 500 * BLOCK);
    assert_eq!(b.stats().resident_quota, 384 * BLOCK);
    let mut buf = vec![0u8; BLOCK as usize];
    for block in [0, 100, 255] {
        a.read_at(block * BLOCK, &mut buf).unwrap();
        assert_eq!(buf, pattern(block, 1));
    }
    for block in [0, written + 63] {
        b.read_at(block * BLOCK, &mut buf).unwrap();
        assert_eq!(buf, pattern(block, 2));
    }
}

#[test]
fn when_the_pool_is_full_a_region_below_its_quota_evicts_its_own_blocks() {
    let (_, regions) = region(fresh(), None);
    let spec = BlockSpec { size: 512 * BLOCK, resident: 400 * BLOCK, swap: true };
    regions.create("a", spec).unwrap();
    regions.create("b", spec).unwrap();
    let (a, b) = (regions.get("a").unwrap(), regions.get("b").unwrap());
    for block in 0..400 {
        a.write_at(block * BLOCK, &pattern(block, 1), false).unwrap();
    }
    // B gets what is left of the pool, then swaps its own blocks.
    for block in 0..160 {
        b.write_at(block * BLOCK, &pattern(block, 2), false)
            .unwrap_or_else(|e| panic!("block {block}: {e}; b holds {:?}", b.stats()));
    }
    assert!(b.stats().swapped_blocks > 0);
    let mut buf = vec![0u8; BLOCK as usize];
    for block in 0..160 {
        b.read_at(block * BLOCK, &mut buf).unwrap();
        assert_eq!(buf, pattern(block, 2));
    }
}

#[test]
fn one_write_bigger_than_the_quota_goes_through_to_swap() {
    let (_, regions) =
        region(fresh(), Some(BlockSpec { size: 64 * BLOCK, resident: 8 * BLOCK, swap: true }));
    let disk = regions.get("disk").unwrap();
    let data: Vec<u8> = (0..20).flat_map(|b| pattern(b, 3)).collect();
    disk.write_at(0, &data, false).unwrap();
    let mut back = vec![0u8; data.len()];
    disk.read_at(0, &mut back[..8 * BLOCK as usize]).unwrap();
    disk.read_at(8 * BLOCK, &mut back[8 * BLOCK as usize..]).unwrap();
    assert!(back == data, "a write of 20 blocks through 8 frames reads back");
    assert_eq!(disk.stats().resident_blocks + disk.stats().swapped_blocks, 20);
}

/// Everything `read_in_place` hands out, holes as zeros; `None` when the
/// region declined.
fn read_in_place(disk: &BlockRegion, offset: u64, len: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    let served = disk
        .read_in_place(offset, len, &mut |runs| {
            for run in runs {
                match run {
                    pmvisor_blk::ReadRun::Data(data) => bytes.extend_from_slice(data),
                    pmvisor_blk::ReadRun::Zeroes(n) => bytes.resize(bytes.len() + n, 0),
                }
            }
        })
        .unwrap();
    served.then_some(bytes)
}

#[test]
fn reads_in_place_hand_out_what_buffered_reads_return() {
    let dir = tempfile::tempdir().unwrap();
    let options = crate::pool::CreateOptions { size: 16 << 20, ..Default::default() };
    let pool = Arc::new(Pool::create(&dir.path().join("p.pool"), &options).unwrap());
    let regions = BlockRegions::open_file_swap(pool, &dir.path().join("p.swap")).unwrap();
    let disk =
        regions.create("disk", BlockSpec { size: 64 * BLOCK, resident: 8 * BLOCK, swap: true });
    let disk = disk.unwrap();
    // Blocks 0-2 and 20-31 written; with 8 frames the early ones go to
    // swap. 3-19 and 32-63 stay unmapped. (A read whose faults evict
    // blocks of the same read is declined and served buffered.)
    for block in (0..3).chain(20..32) {
        disk.write_at(block * BLOCK, &pattern(block, 1), false).unwrap();
    }
    assert!(matches!(disk.block_state(0), Some(BlockState::Swapped(_))));
    // Swapped and unmapped; unmapped only; resident and unmapped.
    for (offset, len) in [(100, 3 * BLOCK), (10 * BLOCK, 4 * BLOCK), (2 * BLOCK + 5, 2 * BLOCK)] {
        let in_place = read_in_place(&disk, offset, len).expect("a mapped pool serves in place");
        let mut buffered = vec![0u8; len as usize];
        disk.read_at(offset, &mut buffered).unwrap();
        assert!(in_place == buffered, "{offset}+{len}");
    }
    // The swapped blocks were faulted in to be served.
    assert!(matches!(disk.block_state(0), Some(BlockState::Resident(_))));
    // More swapped blocks than the quota holds: declined, read as usual.
    assert!(read_in_place(&disk, 0, 32 * BLOCK).is_none());
    assert!(matches!(
        disk.read_in_place(60 * BLOCK, 8 * BLOCK, &mut |_| {}),
        Err(DeviceError::OutOfRange { .. })
    ));
}

#[test]
fn a_read_larger_than_the_quota_faults_each_block_once_in_parts() {
    let (_, regions) =
        region(fresh(), Some(BlockSpec { size: 48 * BLOCK, resident: 8 * BLOCK, swap: true }));
    let disk = regions.get("disk").unwrap();
    let model: Vec<u8> = (0..48).flat_map(|b| pattern(b, 1)).collect();
    disk.write_at(0, &model, false).unwrap();
    assert_eq!(disk.stats().swapped_blocks, 40);
    // Too big to serve in place (it would not stay resident): refused.
    assert_eq!(read_in_place(&disk, 0, 48 * BLOCK), None);
    let before = disk.stats().faults;
    let mut all = vec![0u8; model.len()];
    disk.read_at(0, &mut all).unwrap();
    assert_eq!(all, model);
    // Each block came back at most once (the 8 resident at first are
    // evicted by the earlier parts); a read used to fault the whole request
    // in, evicting its first blocks, then fault those again one by one.
    assert!(disk.stats().faults - before <= 48, "{:?}", disk.stats());
    // Unaligned, too.
    let mut part = vec![0u8; 30_000];
    disk.read_at(5_000, &mut part).unwrap();
    assert_eq!(part, model[5_000..35_000]);
}

#[test]
fn parallel_copies_do_every_item_once_and_the_first_error_stops_the_rest() {
    use std::sync::atomic::AtomicUsize;
    let items: Vec<usize> = (0..500).collect();
    let done: Vec<AtomicUsize> = items.iter().map(|_| AtomicUsize::new(0)).collect();
    in_parallel(&items, PARALLEL_FROM, |&i| {
        done[i].fetch_add(1, Ordering::Relaxed);
        Ok(())
    })
    .unwrap();
    assert!(done.iter().all(|d| d.load(Ordering::Relaxed) == 1), "each item exactly once");

    let tried = AtomicUsize::new(0);
    let err = in_parallel(&items, PARALLEL_FROM, |&i| {
        tried.fetch_add(1, Ordering::Relaxed);
        if i == 10 {
            return Err(std::io::Error::other("slot 10 is bad"));
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
        Ok(())
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "slot 10 is bad");
    assert!(tried.load(Ordering::Relaxed) < items.len(), "stopped after the error");
}
