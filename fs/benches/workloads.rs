//! The Nephele report's three file workloads on RvmFS, tmpfs and ext4.
//!
//! RvmFS is mounted over a `MemStore`; tmpfs is `/dev/shm`; ext4 sits on a
//! loop device over a file in `/dev/shm` (created, mounted and removed here).
//! Workloads: one file created then 1,024 appends of 1 MiB (closed at the
//! end, which commits on RvmFS); 8 KiB random reads from a 1 MiB file;
//! open/close over 500 files. Prints a markdown table with ratios against
//! ext4 and writes it to `benches/results/rvmfs-workloads.md` in the workspace.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rvmfs::{mount, MemStore, MountOptions, RvmFs};

struct Results {
    append: Duration,
    read: Duration,
    open_close: Duration,
}

const READS: u32 = 20_000;
const OPEN_ROUNDS: u32 = 20;

fn run_workloads(dir: &Path) -> Results {
    let chunk = vec![0xA5u8; 1 << 20];
    let path = dir.join("append");
    let started = Instant::now();
    let mut file = fs::File::create(&path).expect("create");
    for _ in 0..1024 {
        file.write_all(&chunk).expect("append");
    }
    drop(file);
    let append = started.elapsed() / 1024;
    fs::remove_file(&path).expect("remove");

    let path = dir.join("reads");
    fs::write(&path, vec![3u8; 1 << 20]).expect("write");
    let file = fs::File::open(&path).expect("open");
    let mut buf = vec![0u8; 8192];
    let mut seed: u64 = 0x1234_5678;
    let started = Instant::now();
    for _ in 0..READS {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let offset = (seed >> 33) % 128 * 8192;
        file.read_exact_at(&mut buf, offset).expect("read");
    }
    let read = started.elapsed() / READS;
    drop(file);

    let files: Vec<PathBuf> = (0..500).map(|i| dir.join(format!("f{i}"))).collect();
    for path in &files {
        fs::write(path, b"x").expect("create");
    }
    let started = Instant::now();
    for _ in 0..OPEN_ROUNDS {
        for path in &files {
            drop(fs::File::open(path).expect("open"));
        }
    }
    let open_close = started.elapsed() / (OPEN_ROUNDS * 500);
    Results { append, read, open_close }
}

/// An ext4 filesystem on a loop device over a file in /dev/shm; removed on drop.
struct Ext4 {
    image: PathBuf,
    device: String,
    mountpoint: tempfile::TempDir,
}

impl Ext4 {
    fn create() -> Option<Ext4> {
        let image = PathBuf::from(format!("/dev/shm/rvmfs-bench-ext4-{}.img", std::process::id()));
        let ok = |cmd: &mut Command| cmd.status().map(|s| s.success()).unwrap_or(false);
        if !ok(Command::new("truncate").args(["-s", "3G"]).arg(&image))
            || !ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))
        {
            let _ = fs::remove_file(&image);
            return None;
        }
        let output = Command::new("losetup").args(["-f", "--show"]).arg(&image).output().ok()?;
        let device = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let mountpoint = tempfile::tempdir().ok()?;
        let ext4 = Ext4 { image, device, mountpoint };
        if ext4.device.is_empty()
            || !ok(Command::new("mount").arg(&ext4.device).arg(ext4.mountpoint.path()))
        {
            return None;
        }
        Some(ext4)
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mountpoint.path()).status();
        if !self.device.is_empty() {
            let _ = Command::new("losetup").args(["-d", &self.device]).status();
        }
        let _ = fs::remove_file(&self.image);
    }
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let store = Arc::new(MemStore::new(320_000));
    store.set_discard_poison(false);
    let options = MountOptions::default();
    let fs = RvmFs::format(Arc::clone(&store), options.fs_options()).expect("format");
    let dir = tempfile::tempdir().expect("temp dir");
    let handle = mount(fs, dir.path(), &options).expect("mount RvmFS");
    let rvmfs = run_workloads(dir.path());
    handle.unmount().expect("unmount");

    let shm = tempfile::tempdir_in("/dev/shm").expect("tmpfs dir");
    let tmpfs = run_workloads(shm.path());
    drop(shm);

    let ext4_fs = Ext4::create().expect("ext4 on a loop device (needs root, mkfs.ext4, losetup)");
    let ext4 = run_workloads(ext4_fs.mountpoint.path());
    drop(ext4_fs);

    let throughput = |d: Duration| (1u64 << 20) as f64 / d.as_secs_f64() / 1e6;
    let mut table = String::new();
    table.push_str(
        "| workload | RvmFS | tmpfs | ext4 (loop on /dev/shm) | RvmFS vs ext4 | target |\n",
    );
    table.push_str("|---|---|---|---|---|---|\n");
    table.push_str(&format!(
        "| 1,024 appends of 1 MiB (per append) | {} ({:.0} MB/s) | {} ({:.0} MB/s) | {} ({:.0} MB/s) | {:.2}× ext4 throughput | ≥ 0.5× |\n",
        micros(rvmfs.append), throughput(rvmfs.append),
        micros(tmpfs.append), throughput(tmpfs.append),
        micros(ext4.append), throughput(ext4.append),
        ext4.append.as_secs_f64() / rvmfs.append.as_secs_f64(),
    ));
    table.push_str(&format!(
        "| 8 KiB random read from a 1 MiB file | {} | {} | {} | {:.2}× ext4 latency | ≤ 3× |\n",
        micros(rvmfs.read),
        micros(tmpfs.read),
        micros(ext4.read),
        rvmfs.read.as_secs_f64() / ext4.read.as_secs_f64(),
    ));
    table.push_str(&format!(
        "| open/close over 500 files | {} | {} | {} | {:.2}× ext4 latency | ≤ 3× |\n",
        micros(rvmfs.open_close),
        micros(tmpfs.open_close),
        micros(ext4.open_close),
        rvmfs.open_close.as_secs_f64() / ext4.open_close.as_secs_f64(),
    ));
    let report = format!(
        "# RvmFS workloads (Nephele report §3.7)\n\nRvmFS over a MemStore via FUSE (4 threads, max_write 1 MiB, no writeback cache, no OPEN/FLUSH/RELEASE requests: closes watched with fanotify).\nReport's ext4-on-SSD column: 292 µs, 25 µs, 590 µs.\n\n{table}"
    );
    println!("{report}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/results/rvmfs-workloads.md");
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent).expect("results dir");
    }
    fs::write(&out, report).expect("write results");
}
