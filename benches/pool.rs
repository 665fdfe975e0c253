//! Pool benchmarks (issue: foundation): open time by region count and pool
//! size, region create + delete latency, and `persist` cost on /dev/shm and
//! on the disk. Prints a markdown table and writes it to
//! `benches/results/pool.md`.
//!
//! Run with `cargo bench --bench pool`. Set `PMVISOR_BENCH_DISK_DIR` to
//! choose the on-disk directory (default: the target directory).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pmvisor::pool::{CreateOptions, OpenMode, Pool, RegionKind};

const GIB: u64 = 1 << 30;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn shm_dir() -> PathBuf {
    let dir = PathBuf::from("/dev/shm").join(format!("pmvisor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create /dev/shm bench dir");
    dir
}

fn disk_dir() -> PathBuf {
    let base = std::env::var_os("PMVISOR_BENCH_DISK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = base.join(format!("pmvisor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create disk bench dir");
    dir
}

/// Median time to open a pool holding `regions` regions.
fn open_time(dir: &Path, pool_size: u64, regions: usize) -> Duration {
    let path = dir.join(format!("open-{pool_size}-{regions}.pool"));
    let pool = Pool::create(&path, &CreateOptions { size: pool_size, ..Default::default() })
        .expect("create pool");
    for i in 0..regions {
        pool.create_region(&format!("region-{i:05}"), RegionKind::Block, 4096).expect("region");
    }
    drop(pool);
    let mut times = Vec::new();
    for _ in 0..15 {
        let start = Instant::now();
        let pool = Pool::open(&path, OpenMode::ReadWrite).expect("open");
        times.push(start.elapsed());
        assert_eq!(pool.regions().len(), regions);
    }
    std::fs::remove_file(&path).ok();
    median(times)
}

fn create_delete(dir: &Path) -> (Duration, Duration) {
    let path = dir.join("create-delete.pool");
    let pool =
        Pool::create(&path, &CreateOptions { size: GIB, ..Default::default() }).expect("create");
    for i in 0..100 {
        pool.create_region(&format!("neighbour-{i}"), RegionKind::Fs, 1 << 20).expect("region");
    }
    let mut times = Vec::new();
    for _ in 0..3000 {
        let start = Instant::now();
        pool.create_region("bench", RegionKind::Block, 64 << 10).expect("create");
        pool.delete_region("bench").expect("delete");
        times.push(start.elapsed());
    }
    drop(pool);
    std::fs::remove_file(&path).ok();
    (median(times.clone()), percentile(times, 0.99))
}

fn persist_time(dir: &Path, len: usize) -> Duration {
    let path = dir.join(format!("persist-{len}.pool"));
    let pool = Pool::create(&path, &CreateOptions { size: 256 << 20, ..Default::default() })
        .expect("create");
    pool.create_region("data", RegionKind::Block, 64 << 20).expect("region");
    let data = vec![0xa5u8; len];
    let mut times = Vec::new();
    for i in 0..200u64 {
        let offset = (i * len as u64) % ((64 << 20) - len as u64);
        pool.write_region("data", offset, &data).expect("write");
        let start = Instant::now();
        pool.persist_region("data", offset, len as u64).expect("persist");
        times.push(start.elapsed());
    }
    drop(pool);
    std::fs::remove_file(&path).ok();
    median(times)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let shm = shm_dir();
    let disk = disk_dir();
    let mut md = String::new();
    writeln!(md, "# Pool benchmarks\n").unwrap();
    writeln!(md, "Pool files on /dev/shm unless the row says disk ({}).\n", disk.display())
        .unwrap();

    writeln!(md, "## Open time (median of 15 opens, journal replay included)\n").unwrap();
    writeln!(md, "| regions | 1 GiB pool | 64 GiB pool | target |").unwrap();
    writeln!(md, "|---:|---:|---:|---|").unwrap();
    for regions in [1, 1_000, 10_000] {
        let small = open_time(&shm, GIB, regions);
        let large = open_time(&shm, 64 * GIB, regions);
        let target = if regions == 10_000 { "≤ 20 ms, no growth with pool size" } else { "" };
        writeln!(md, "| {regions} | {} | {} | {target} |", millis(small), millis(large)).unwrap();
        eprintln!("open: {regions} regions done");
    }

    let (med, p99) = create_delete(&shm);
    writeln!(md, "\n## Region create + delete (64 KiB block region, 3,000 pairs)\n").unwrap();
    writeln!(md, "| median | p99 | target |\n|---:|---:|---|").unwrap();
    writeln!(md, "| {} | {} | median ≤ 50 µs |", micros(med), micros(p99)).unwrap();

    writeln!(md, "\n## persist (median of 200)\n").unwrap();
    writeln!(md, "| size | /dev/shm | disk |\n|---:|---:|---:|").unwrap();
    for (label, len) in [("4 KiB", 4096usize), ("1 MiB", 1 << 20)] {
        let a = persist_time(&shm, len);
        let b = persist_time(&disk, len);
        writeln!(md, "| {label} | {} | {} |", micros(a), micros(b)).unwrap();
    }
    std::fs::remove_dir_all(&shm).ok();
    std::fs::remove_dir_all(&disk).ok();

    print!("{md}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/pool.md");
    std::fs::create_dir_all(out.parent().expect("results dir")).ok();
    std::fs::write(&out, &md).expect("write results");
    eprintln!("wrote {}", out.display());
}
