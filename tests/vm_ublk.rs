//! The ublk target and `pmvisor serve` against the real ublk driver, in a
//! VM.
//!
//! Boots Debian's 6.12 cloud kernel under `qemu-system-x86_64 -accel tcg`
//! with a busybox initramfs (tests/vm/) holding the `ublk_memdev` example,
//! our `pmvisor` binary, e2fsprogs, dmsetup and util-linux's blkdiscard, and
//! runs two guest scripts in one boot:
//!
//! - tests/vm/guest_ublk.sh, the target alone: load ublk_drv, serve a
//!   file-backed device over ublk, queue limits, refusals (recovering a
//!   served device, an unknown id, a start timeout that leaves no device),
//!   O_DIRECT I/O, exact discard and write-zeroes ranges, ext4, SIGKILL of
//!   the server and recovery with I/O pending, dm-cache with the ublk device
//!   as cache, and a clean stop whose request counts show flushes arrived;
//! - tests/vm/guest_pmvisor.sh, the daemon: `pmvisor serve` exports a
//!   96 MiB block region with a 32 MiB resident quota and swap as
//!   `/dev/ublkbN`; O_DIRECT I/O, ext4, SIGKILL of the daemon while mounted
//!   and a restart that recovers the device with an fsync'd write pending,
//!   five more kill-and-recover cycles with a read pending,
//!   a working set larger than the quota (evictions and faults under ublk),
//!   discard freeing blocks, dm-cache on the device, SIGTERM, and a restart
//!   after a clean stop followed by `export remove`.
//!
//! One boot, not two: under TCG booting the kernel and unpacking the
//! initramfs is a good part of a run on a 2-core machine, and the two
//! scripts do not share state (the target steps delete their device before
//! the daemon steps start). The target steps stay because they cover what
//! the daemon cannot be made to do: the refusals, the start timeout, and
//! per-operation counts from a server that counts.
//!
//! Each guest step prints `STEP name PASS|FAIL detail` on the serial
//! console; this test asserts every expected step passed and prints the
//! guest log when one did not.
//!
//! Prerequisites come from `scripts/setup`. When they are missing the test
//! fails under `CI=true` and skips loudly otherwise.

mod common;

use std::time::{Duration, Instant};

use common::vm::{self, which, Vm};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The guest steps, in order; every one must report PASS.
const STEPS: [&str; 21] = [
    "load_modules",
    "ublk_drv",
    "ublk_start",
    "ublk_limits",
    "ublk_refusals",
    "direct_io",
    "discard",
    "ext4",
    "recovery",
    "dm_cache",
    "ublk_stop",
    "pmv_serve",
    "pmv_direct_io",
    "pmv_ext4",
    "pmv_recovery",
    "pmv_recovery_repeated",
    "pmv_working_set",
    "pmv_discard",
    "pmv_dm_cache",
    "pmv_sigterm",
    "pmv_restart",
];

/// Host programs this test copies into the guest, besides the VM's own
/// ([`vm::VM_TOOLS`]), with the Debian package that has them.
const GUEST_TOOLS: [(&str, &str); 4] = [
    ("mkfs.ext4", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("dmsetup", "dmsetup"),
    ("blkdiscard", "util-linux"),
];

#[test]
fn ublk_target_and_daemon_pass_the_guest_workload_in_a_vm() {
    if let Err(why) = vm::check_tools(&vm::VM_TOOLS).and(vm::check_tools(&GUEST_TOOLS)) {
        return vm::skip("ublk", &why);
    }
    let kernel = match vm::kernel() {
        Ok(kernel) => kernel,
        Err(why) => return vm::skip("ublk", &why),
    };

    let server = vm::cargo_build("pmvisor-blk", "example", "ublk_memdev");
    let work = tempfile::tempdir().expect("temporary directory");
    let initrd = work.path().join("initrd.gz");
    let tool = |name: &str| which(name).unwrap().display().to_string();
    let mut bins = vec![server.display().to_string(), env!("CARGO_BIN_EXE_pmvisor").to_string()];
    bins.extend(["mkfs.ext4", "e2fsck", "dmsetup", "blkdiscard"].map(tool));
    vm::initramfs(
        &kernel,
        &["tests/vm/guest_ublk.sh", "tests/vm/guest_pmvisor.sh"],
        &initrd,
        &bins,
        &["ublk_drv", "loop", "dm-cache", "dm-cache-smq"],
    );

    let started = Instant::now();
    let vm = Vm::boot(&kernel.join("vmlinuz"), &initrd, "", "1G", &[]);
    let log = vm.finish(started + BOOT_TIMEOUT);
    eprintln!("VM ran for {:.1} s", started.elapsed().as_secs_f64());
    let results = vm::parse_steps(&log);
    vm::print_steps(&results);
    let problems = vm::step_problems(&results, &STEPS);
    assert!(problems.is_empty(), "{}\n--- guest console ---\n{log}", problems.join("\n"));
}

#[test]
fn step_lines_are_parsed_and_missing_steps_reported() {
    let log = "noise\r\n[ 1.0] STEP ext4 PASS made it\nSTEP recovery FAIL exit 1: oops\n";
    let results = vm::parse_steps(log);
    assert_eq!(
        results,
        vec![
            ("ext4".to_string(), true, "made it".to_string()),
            ("recovery".to_string(), false, "exit 1: oops".to_string()),
        ]
    );
    let problems = vm::step_problems(&results, &STEPS);
    assert_eq!(problems[0], "guest step recovery failed: exit 1: oops");
    assert!(problems.contains(&"guest step dm_cache did not run".to_string()));
    assert_eq!(problems.len(), 1 + STEPS.len() - 2, "one failure, the other steps missing");
}
