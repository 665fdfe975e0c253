//! Eviction and fault-in throughput of block regions, with the swap file
//! on /dev/shm and on the disk (issue: elastic block devices). Writes
//! `benches/results/block.md`.
//!
//! Eviction: a fully resident region of 64 MiB is shrunk to 4 MiB of
//! quota, so 60 MiB move to swap. Fault-in: every block is then read back
//! in order, so the 60 MiB come back through a 4 MiB window (each fault
//! also evicts a block).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use pmvisor::block::{BlockRegions, BlockSpec};
use pmvisor::pool::{CreateOptions, Pool};
use pmvisor_blk::BlockDevice;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;
const SMALL: u64 = 4 * MIB;

fn run(pool_dir: &Path, swap_dir: &Path) -> (f64, f64) {
    let pool_path = pool_dir.join("bench-block.pool");
    let swap_path = swap_dir.join("bench-block.swap");
    let _ = std::fs::remove_file(&pool_path);
    let _ = std::fs::remove_file(&swap_path);
    let pool = Arc::new(
        Pool::create(&pool_path, &CreateOptions { size: 256 * MIB, ..Default::default() })
            .expect("pool"),
    );
    let regions = BlockRegions::open_file_swap(pool, &swap_path).expect("regions");
    let disk = regions
        .create("bench", BlockSpec { size: SIZE, resident: SIZE, swap: true })
        .expect("region");
    let chunk = vec![0x5au8; MIB as usize];
    for i in 0..SIZE / MIB {
        disk.write_at(i * MIB, &chunk, false).expect("write");
    }
    disk.flush().expect("flush");

    let start = Instant::now();
    disk.set_resident_quota(SMALL).expect("shrink");
    let evict = (SIZE - SMALL) as f64 / MIB as f64 / start.elapsed().as_secs_f64();

    let before = disk.stats().faults;
    let mut buf = vec![0u8; 4096];
    let start = Instant::now();
    for b in 0..SIZE / 4096 {
        disk.read_at(b * 4096, &mut buf).expect("read");
    }
    let faults = disk.stats().faults - before;
    let fault = (faults * 4096) as f64 / MIB as f64 / start.elapsed().as_secs_f64();
    assert!(faults * 4096 >= SIZE - SMALL, "every swapped block faulted in");
    drop(disk);
    drop(regions);
    let _ = std::fs::remove_file(&pool_path);
    let _ = std::fs::remove_file(&swap_path);
    (evict, fault)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let shm = PathBuf::from("/dev/shm");
    let disk = std::env::var_os("PMVISOR_BENCH_DISK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let mut md = String::from("# Block region eviction and fault-in\n\n");
    writeln!(md, "Pool on /dev/shm; 60 MiB evicted by a quota shrink, then faulted back in.\n")
        .unwrap();
    writeln!(md, "| swap file on | eviction MB/s | fault-in MB/s |\n|---|---:|---:|").unwrap();
    for (label, dir) in [("/dev/shm", &shm), ("disk", &disk)] {
        let (evict, fault) = run(&shm, dir);
        writeln!(md, "| {label} | {evict:.0} | {fault:.0} |").unwrap();
    }
    print!("{md}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/block.md");
    std::fs::write(&out, &md).expect("write results");
    eprintln!("wrote {}", out.display());
}
