//! Crash tests of the power-outage sequence: a scripted workload (pool
//! metadata changes, block writes some of which were never flushed) ends in
//! a POD, and the medium dies at every persist point of workload and POD.
//! Every image a crash there could leave must open; where the fence record
//! survived, the pool holds exactly what the record claims: everything
//! written before the trigger, flushed by the client or not.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pmvisor::block::{BlockRegions, BlockSpec, MediaSwap, SwapTier};
use pmvisor::gate::Gate;
use pmvisor::pod::{Pod, PodMetrics, PodReport, PodTargets, Trigger};
use pmvisor::pool::crash::{CrashMedia, TearGranularity};
use pmvisor::pool::fence::FenceState;
use pmvisor::pool::{MediaWindow, OpenMode, Pool, RegionKind};
use pmvisor_blk::BlockDevice;

const POOL: u64 = 2 << 20;
const SWAP_SLOTS: u64 = 16;
const BLOCK: u64 = 4096;

fn open(media: Arc<CrashMedia>) -> pmvisor::pool::Result<(Arc<Pool>, BlockRegions)> {
    let window = Arc::new(MediaWindow::new(media.clone(), 0, POOL).unwrap());
    let swap = SwapTier::new(Box::new(MediaSwap::new(media, POOL, SWAP_SLOTS)));
    let pool = Arc::new(Pool::open_media(window, Path::new("pod.pool"), OpenMode::ReadWrite)?);
    let blocks = BlockRegions::open(Arc::clone(&pool), swap).expect("block regions open");
    Ok((pool, blocks))
}

fn fresh() -> Vec<u8> {
    let media = Arc::new(CrashMedia::new(POOL + SWAP_SLOTS * BLOCK, TearGranularity::Nvram));
    let window = Arc::new(MediaWindow::new(media.clone(), 0, POOL).unwrap());
    Pool::format(window, Path::new("pod.pool"), POOL, Some(16 << 10)).unwrap();
    media.durable_image()
}

/// The bytes of the disk when the POD fires.
fn expected_disk() -> Vec<u8> {
    let mut disk = vec![0u8; 32 * BLOCK as usize];
    disk[..8192].fill(1);
    disk[4 * 4096..5 * 4096].fill(2);
    disk[..4096].fill(3);
    disk[9 * 4096..9 * 4096 + 100].fill(4);
    disk
}

/// The workload, then the POD; stops at the first failure (the crash).
fn run(media: Arc<CrashMedia>) -> Option<PodReport> {
    let (pool, blocks) = open(media).ok()?;
    pool.create_region("meta", RegionKind::Fs, 8192).ok()?;
    pool.set_region_attr("meta", "owner", Some("vm1")).ok()?;
    let disk = blocks
        .create("disk", BlockSpec { size: 32 * BLOCK, resident: 16 * BLOCK, swap: false })
        .ok()?;
    disk.write_at(0, &[1; 8192], false).ok()?;
    disk.write_at(4 * BLOCK, &[2; 4096], false).ok()?;
    disk.flush().ok()?;
    // Acknowledged but never flushed by the client: the POD makes them durable.
    disk.write_at(0, &[3; 4096], false).ok()?;
    disk.write_at(9 * BLOCK, &[4; 100], false).ok()?;
    let pod = Pod::new(
        PodTargets {
            pool: Arc::clone(&pool),
            gate: Gate::new(),
            mounts: None,
            blocks: Some(Arc::new(blocks)),
        },
        Duration::from_millis(50),
        PodMetrics::default(),
    );
    Some(pod.fence(Trigger::now("test")))
}

fn verify(image: Vec<u8>, label: &str) -> bool {
    let media = Arc::new(CrashMedia::from_image(image, TearGranularity::Nvram));
    let (pool, blocks) = open(media).unwrap_or_else(|e| panic!("{label}: open failed: {e}"));
    let check = pool.check();
    assert!(check.problems.is_empty(), "{label}: {:?}", check.problems);
    let Some(fence) = pool.fence_at_open() else { return false };
    assert!(fence.clean, "{label}: nothing wrote after the fence");
    assert_eq!(fence.record.state, FenceState::Fenced);
    let report: PodReport = serde_json::from_slice(&fence.record.report).unwrap();
    let phases: Vec<&str> = report.phases.iter().map(|p| p.phase.name()).collect();
    assert_eq!(phases, ["quiesce", "save-vms", "commit", "flush"], "{label}");
    assert!(report.problems.is_empty(), "{label}: {:?}", report.problems);
    // Exactly what the record claims: every change and write before the POD.
    let meta = pool.region("meta").unwrap();
    assert_eq!(meta.attrs.get("owner").map(String::as_str), Some("vm1"), "{label}");
    let disk = blocks.get("disk").unwrap_or_else(|| panic!("{label}: no disk"));
    let mut bytes = vec![0u8; 32 * BLOCK as usize];
    disk.read_at(0, &mut bytes).unwrap();
    assert!(bytes == expected_disk(), "{label}: the disk differs from what was written");
    true
}

#[test]
fn after_the_fence_every_crash_image_holds_exactly_what_the_record_claims() {
    let image = fresh();
    let whole = Arc::new(CrashMedia::from_image(image.clone(), TearGranularity::Nvram));
    let report = run(whole.clone()).expect("the workload runs without a crash");
    assert!(report.fenced && report.protected, "{report:?}");
    let points = whole.persist_points();
    assert!(verify(whole.durable_image(), "no crash"));

    let (mut fenced, mut states) = (0, 0);
    let mut fence_seen_at = None;
    for point in 0..points {
        let media =
            Arc::new(CrashMedia::from_image(image.clone(), TearGranularity::Nvram).crash_at(point));
        let report = run(media.clone());
        assert!(report.is_none_or(|r| !r.fenced), "crash at {point}: a fence on a dead medium");
        let mut any_fenced = false;
        for (i, image) in media.crash_images(6, point as u64).into_iter().enumerate() {
            let has_fence = verify(image, &format!("crash at persist point {point}, image {i}"));
            any_fenced |= has_fence;
            fenced += usize::from(has_fence);
            states += 1;
        }
        if any_fenced && fence_seen_at.is_none() {
            fence_seen_at = Some(point);
        }
    }
    // Only the last persist point (the fence record's own) can leave it.
    assert_eq!(fence_seen_at, Some(points - 1), "the fence record is the last persist point");
    assert!(fenced > 0);
    eprintln!("checked {states} crash images at {points} persist points; {fenced} fenced");
}

#[test]
fn a_fenced_pool_refuses_writes_until_cancel_and_fences_again() {
    let image = fresh();
    let media = Arc::new(CrashMedia::from_image(image, TearGranularity::Nvram));
    let (pool, blocks) = open(media.clone()).unwrap();
    let disk = blocks
        .create("disk", BlockSpec { size: 32 * BLOCK, resident: 16 * BLOCK, swap: false })
        .unwrap();
    disk.write_at(0, &[9; 4096], false).unwrap();
    let blocks = Arc::new(blocks);
    let gate = Gate::new();
    let pod = Pod::new(
        PodTargets {
            pool: Arc::clone(&pool),
            gate: gate.clone(),
            mounts: None,
            blocks: Some(Arc::clone(&blocks)),
        },
        Duration::from_millis(50),
        PodMetrics::default(),
    );
    let report = pod.fence(Trigger::now("test"));
    assert!(report.fenced, "{report:?}");
    // A window flushes its whole range; mapped media flush only dirty
    // chunks (pool::file_media tests, and the bench).
    assert!(report.flushed_bytes > 0);
    assert!(gate.enter().is_err(), "the gate stays closed");
    assert!(disk.write_at(0, &[8; 4096], false).is_err(), "the pool refuses writes");
    assert!(pool.create_region("x", RegionKind::Fs, 4096).is_err());
    let twice = pod.fence(Trigger::now("again"));
    assert_eq!(twice, report, "a trigger while fenced changes nothing");
    pod.cancel().unwrap();
    assert!(gate.enter().is_ok());
    disk.write_at(0, &[8; 4096], false).unwrap();
    pool.create_region("x", RegionKind::Fs, 4096).unwrap();
    let second = pod.fence(Trigger::now("test"));
    assert_eq!(second.sequence, 2);
    assert!(second.fenced);
    drop(pod);
    drop(blocks);
    drop(pool);
    let (pool, blocks) =
        open(Arc::new(CrashMedia::from_image(media.durable_image(), TearGranularity::Nvram)))
            .unwrap();
    assert_eq!(pool.fence_record().unwrap().sequence, 3, "fence, cancel, fence");
    let mut back = [0u8; 4096];
    blocks.get("disk").unwrap().read_at(0, &mut back).unwrap();
    assert_eq!(back, [8; 4096]);
}
