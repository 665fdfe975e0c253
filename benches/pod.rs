//! POD trigger to fenced: 16 block regions under write load (through the
//! gate, as NBD and ublk requests go), one RvmFS mount (real FUSE) with
//! 1,000 dirty pages nobody fsync'd, and two QEMU TCG VMs whose RAM is in
//! the pool, booted and counting (the test guest of tests/vm/), saved by
//! the sequence and resumed by the cancel. Each round triggers, is timed
//! per phase, then cancels and dirties everything again. The scenario runs
//! twice: with the pool on a tmpfs the bench mounts with `huge=always`
//! (mapped with 2 MiB pages, as a device-DAX pool is) and on /dev/shm
//! (4 KiB pages). The tables go to `benches/results/pod.md`. Target:
//! trigger to fenced ≤ 10 ms.
//!
//! Run: `cargo bench --bench pod` (as root for the FUSE mount; without
//! FUSE, or without QEMU and the test kernel that `scripts/setup` and
//! tests/vm/kernel.sh provide, that part is left out and the table says
//! so).

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
use pmvisor::vm::{self, VmParticipant, VmPaths, VmSpec, Vms};
use pmvisor_blk::BlockDevice;

const REGIONS: usize = 16;
const DIRTY_PAGES: usize = 1000;
const ROUNDS: usize = 30;
const REGION_SIZE: u64 = 16 << 20;
/// The VMs and their RAM.
const VMS: [&str; 2] = ["pmvbench-pod-a", "pmvbench-pod-b"];
const VM_MEMORY: u64 = 128 << 20;

/// Run a repository script; its stdout's last line.
fn script(path: &str, args: &[&str]) -> Result<String, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(repo.join(path))
        .args(args)
        .current_dir(repo)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {path}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{path} failed ({})", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string())
}

/// The bench's QEMUs, killed when the bench ends however it ends (they run
/// in their own process group and would outlive it).
struct Qemus(Vec<u32>);

impl Drop for Qemus {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Boot the bench's VMs, RAM in `pool`, and register them with `pod`;
/// `Err` says why there are none.
fn start_vms(
    pool: &Arc<Pool>,
    pod: &Pod,
    dir: &Path,
    runtime: &tokio::runtime::Runtime,
    qemus: &mut Qemus,
) -> Result<Arc<Vms>, String> {
    let kernel = script("tests/vm/kernel.sh", &[])?;
    let initrd = dir.join("initrd.gz");
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/guest_counter.sh");
    let (guest, out) = (guest.display().to_string(), initrd.display().to_string());
    script("tests/vm/initramfs.sh", &["--kernel", &kernel, "--script", &guest, "--out", &out])?;
    let paths = VmPaths { run_dir: dir.join("run"), state_dir: dir.join("state") };
    let vms = Arc::new(Vms::new(Arc::clone(pool), paths.clone()));
    for name in VMS {
        let mut spec = VmSpec::new(VM_MEMORY);
        spec.kernel = Some(Path::new(&kernel).join("vmlinuz"));
        spec.initrd = Some(initrd.clone());
        spec.append = Some("console=ttyS0 quiet panic=-1".into());
        spec.qemu_args = vec!["-no-reboot".into()];
        vm::spec::create(pool, name, &spec).map_err(|e| e.to_string())?;
        runtime.block_on(vms.start(name)).map_err(|e| e.to_string())?;
        qemus.0.extend(vms.pid(name));
        let participant = VmParticipant::new(Arc::clone(&vms), name, runtime.handle().clone());
        pod.participants().register(Arc::new(participant));
    }
    // Booted once each counts on its console.
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    for name in VMS {
        let console = paths.console(name);
        while !std::fs::read_to_string(&console).unwrap_or_default().contains("COUNT 3") {
            if std::time::Instant::now() > deadline {
                return Err(format!("VM {name} did not boot; see {}", console.display()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(vms)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// Where a round of the bench puts its pool.
struct Medium {
    /// For the table: what the directory is.
    label: String,
    dir: tempfile::TempDir,
    /// A tmpfs the bench mounted (unmounted on drop).
    mounted: bool,
}

impl Medium {
    /// A temporary directory on /dev/shm (or /tmp without it): a tmpfs
    /// file mapped with 4 KiB pages.
    fn small_pages() -> Medium {
        let (dir, label) = if Path::new("/dev/shm").is_dir() {
            (tempfile::tempdir_in("/dev/shm").unwrap(), "/dev/shm (tmpfs, 4 KiB pages)")
        } else {
            (tempfile::tempdir().unwrap(), "the temporary directory")
        };
        Medium { label: label.into(), dir, mounted: false }
    }

    /// A tmpfs of our own mounted with `huge=always`: the pool is mapped
    /// with 2 MiB pages, as a device-DAX pool is. `Err` says why not.
    fn huge_pages() -> Result<Medium, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "huge=always,size=2G", "pmvbench-huge"])
            .arg(dir.path())
            .status()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs -o huge=always failed ({status})"));
        }
        let label = "a tmpfs mounted with huge=always (2 MiB pages, as device-DAX maps)";
        Ok(Medium { label: label.into(), dir, mounted: true })
    }
}

impl Drop for Medium {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

fn main() {
    let mut out = String::new();
    writeln!(out, "# POD: trigger to fenced\n").unwrap();
    let mut media = vec![Medium::small_pages()];
    match Medium::huge_pages() {
        Ok(huge) => media.insert(0, huge),
        Err(why) => eprintln!("no huge-page tmpfs ({why}): benchmarking on /dev/shm only"),
    }
    for medium in &media {
        out += &run(medium);
    }
    writeln!(
        out,
        "\nReading the tables: from the moment the fence record is durable the pool holds \
         everything and refuses every write through pmvisor (the medium's fence flag is set as \
         `protect` begins); `protect` then makes the whole mapping read-only with mprotect(2), \
         whose cost grows with the page-table entries it rewrites: one per 4 KiB page of a \
         tmpfs file in /dev/shm, one per 2 MiB page of a huge-page tmpfs or a device-DAX \
         pool. Quiesce only holds the gate: the host I/O still in flight (16 CPU-bound writers \
         share 2 CPUs, so one is often preempted inside the gate) finishes while the VMs \
         save, and the save phase ends by draining it. The host's I/O is held before the VMs \
         save, except the VMs' own disks, so the saves get the CPUs."
    )
    .unwrap();
    print!("{out}");
    std::fs::create_dir_all("benches/results").unwrap();
    std::fs::write("benches/results/pod.md", out).unwrap();
}

/// The whole scenario with its pool on `medium`; its section of the table.
fn run(medium: &Medium) -> String {
    let dir = &medium.dir;
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
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut qemus = Qemus(Vec::new());
    let vms = start_vms(&pool, &pod, dir.path(), &runtime, &mut qemus);
    if let Err(why) = &vms {
        eprintln!("no VMs: {why}; benchmarking without them");
    }
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
        for failed in report.participants.iter().filter_map(|p| p.error.as_ref()) {
            eprintln!("round {round}: a VM did not save: {failed}");
        }
        reports.push(report);
        pod.cancel().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    drop(file);
    if let Ok(vms) = &vms {
        for name in VMS {
            let _ = runtime.block_on(vms.stop(name));
        }
    }

    let mut out = String::new();
    writeln!(out, "\n## Pool on {}\n", medium.label).unwrap();
    writeln!(
        out,
        "{REGIONS} block regions of {} MiB under 4 KiB write load ({} writes in all), {}, {}; \
         pool: a 1 GiB file; {ROUNDS} rounds (trigger, then cancel and dirty again); budget \
         50 ms. Target: ≤ 10 ms.\n",
        REGION_SIZE >> 20,
        writes.load(Ordering::Relaxed),
        if fs_ok {
            format!("one RvmFS mount with {DIRTY_PAGES} dirty pages (4 MiB unsynced) per round")
        } else {
            "no RvmFS mount (FUSE missing)".to_string()
        },
        match &vms {
            Ok(_) => format!(
                "{} QEMU TCG VMs with {} MiB of RAM each in the pool, saved in parallel (QMP stop, \
                 x-ignore-shared, migrate to a file) and resumed (cont) by each cancel",
                VMS.len(),
                VM_MEMORY >> 20
            ),
            Err(why) => format!("no VMs ({why})"),
        },
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
    if vms.is_ok() {
        let saved: usize = reports
            .iter()
            .map(|r| r.participants.iter().filter(|p| p.saved_to.is_some()).count())
            .sum();
        let mut each: Vec<u64> =
            reports.iter().flat_map(|r| r.participants.iter().map(|p| p.micros)).collect();
        each.sort_unstable();
        writeln!(
            out,
            "\nVM saves: {saved} of {} (median {} ms, max {} ms per VM, both VMs in parallel).",
            reports.len() * VMS.len(),
            ms(percentile(&each, 0.5)),
            ms(*each.last().unwrap()),
        )
        .unwrap();
    }
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
    mounts.shutdown();
    out
}
