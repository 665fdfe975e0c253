//! POD trigger to fenced: 16 block regions under write load (through the
//! gate, as NBD and ublk requests go) and one RvmFS mount (real FUSE) with
//! 1,000 dirty pages nobody fsync'd; no VMs yet. Each round triggers, is
//! timed per phase, then cancels and dirties everything again. The table
//! goes to `benches/results/pod.md`. Target: trigger to fenced ≤ 10 ms.
//!
//! Run: `cargo bench --bench pod` (as root for the FUSE mount; without
//! FUSE the filesystem is left out and the table says so).

use std::fmt::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pmvisor::block::{BlockRegions, BlockSpec};
use pmvisor::daemon::gated::GatedRegion;
use pmvisor::fs::{create_filesystem, FsMounts};
use pmvisor::gate::Gate;
use pmvisor::pod::{Phase, Pod, PodMetrics, PodReport, PodTargets, Trigger};
use pmvisor::pool::{CreateOptions, Pool};
use pmvisor_blk::BlockDevice;

const REGIONS: usize = 16;
const DIRTY_PAGES: usize = 1000;
const ROUNDS: usize = 30;
const REGION_SIZE: u64 = 16 << 20;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn main() {
    let dir = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let pool_path = dir.path().join("pod.pool");
    let pool = Arc::new(
        Pool::create(&pool_path, &CreateOptions { size: 1 << 30, ..Default::default() }).unwrap(),
    );
    let blocks = Arc::new(
        BlockRegions::open_file_swap(Arc::clone(&pool), &dir.path().join("pod.swap")).unwrap(),
    );
    let gate = Gate::new();
    let mut devices = Vec::new();
    for i in 0..REGIONS {
        let spec = BlockSpec { size: REGION_SIZE, resident: REGION_SIZE, swap: false };
        let region = blocks.create(&format!("disk{i}"), spec).unwrap();
        devices.push(GatedRegion::new(region, gate.clone()));
    }
    let mounts = Arc::new(FsMounts::new(Arc::clone(&pool)));
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let fs_ok = Path::new("/dev/fuse").exists()
        && create_filesystem(&pool, "home", 64 << 20).is_ok()
        && mounts.mount("home", &mountpoint, "commit=3600").is_ok();
    if !fs_ok {
        eprintln!("no FUSE here: benchmarking without the RvmFS mount");
    }

    // Writers: each keeps one region busy with 4 KiB writes.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = devices
        .into_iter()
        .enumerate()
        .map(|(i, device)| {
            let (stop, writes) = (Arc::clone(&stop), Arc::clone(&writes));
            std::thread::spawn(move || {
                let block = [i as u8; 4096];
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let offset = (n * 7919 % (REGION_SIZE / 4096)) * 4096;
                    if device.write_at(offset, &block, false).is_ok() {
                        writes.fetch_add(1, Ordering::Relaxed);
                    } else {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    n += 1;
                }
            })
        })
        .collect();

    let pod = Pod::new(
        PodTargets {
            pool: Arc::clone(&pool),
            gate: gate.clone(),
            mounts: Some(Arc::clone(&mounts)),
            blocks: Some(Arc::clone(&blocks)),
        },
        Duration::from_millis(50),
        PodMetrics::default(),
    );
    let page: Vec<u8> = (0..4096).map(|i| (i % 251) as u8).collect();
    let mut reports: Vec<PodReport> = Vec::new();
    let mut file = fs_ok.then(|| std::fs::File::create(mountpoint.join("dirty")).unwrap());
    for round in 0..ROUNDS {
        // 1,000 dirty pages in the filesystem, never fsync'd.
        if let Some(file) = file.as_mut() {
            for i in 0..DIRTY_PAGES {
                file.write_all_at(&page, (i * 4096) as u64).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(20)); // writers dirty the regions
        let report = pod.fence(Trigger::now("bench"));
        assert!(report.fenced, "round {round}: {report:?}");
        reports.push(report);
        pod.cancel().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    drop(file);

    let mut out = String::new();
    writeln!(out, "# POD: trigger to fenced\n").unwrap();
    writeln!(
        out,
        "{REGIONS} block regions of {} MiB under 4 KiB write load ({} writes in all), {}, no VMs; \
         pool: 1 GiB file in {}; {ROUNDS} rounds (trigger, then cancel and dirty again); budget \
         50 ms. Target: ≤ 10 ms.\n",
        REGION_SIZE >> 20,
        writes.load(Ordering::Relaxed),
        if fs_ok {
            format!("one RvmFS mount with {DIRTY_PAGES} dirty pages (4 MiB unsynced) per round")
        } else {
            "no RvmFS mount (FUSE missing)".to_string()
        },
        dir.path().parent().unwrap().display(),
    )
    .unwrap();
    writeln!(out, "| phase | median ms | p99 ms | max ms |\n|---|---:|---:|---:|").unwrap();
    for (i, phase) in Phase::ALL.iter().enumerate() {
        let mut v: Vec<u64> = reports.iter().map(|r| r.phases[i].micros).collect();
        v.sort_unstable();
        writeln!(
            out,
            "| {} | {} | {} | {} |",
            phase.name(),
            ms(percentile(&v, 0.5)),
            ms(percentile(&v, 0.99)),
            ms(*v.last().unwrap())
        )
        .unwrap();
    }
    let mut fenced: Vec<u64> = reports.iter().map(|r| r.fenced_us).collect();
    fenced.sort_unstable();
    writeln!(
        out,
        "| **trigger → fence record durable** | **{}** | **{}** | **{}** |",
        ms(percentile(&fenced, 0.5)),
        ms(percentile(&fenced, 0.99)),
        ms(*fenced.last().unwrap())
    )
    .unwrap();
    let mut total: Vec<u64> = reports.iter().map(|r| r.total_us).collect();
    total.sort_unstable();
    writeln!(
        out,
        "| **trigger → read-only (all phases)** | **{}** | **{}** | **{}** |",
        ms(percentile(&total, 0.5)),
        ms(percentile(&total, 0.99)),
        ms(*total.last().unwrap())
    )
    .unwrap();
    let mut flushed: Vec<u64> = reports.iter().map(|r| r.flushed_bytes).collect();
    flushed.sort_unstable();
    writeln!(
        out,
        "\nThe flush phase wrote back a median {} KiB of dirty chunks (of a 1 GiB pool). \
         Overruns of the budget: {}.",
        percentile(&flushed, 0.5) / 1024,
        reports.iter().filter(|r| !r.within_budget()).count()
    )
    .unwrap();
    print!("{out}");
    std::fs::create_dir_all("benches/results").unwrap();
    std::fs::write("benches/results/pod.md", out).unwrap();
    mounts.shutdown();
}
