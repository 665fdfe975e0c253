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

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The guest steps, in order; every one must report PASS.
const STEPS: [&str; 20] = [
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
    "pmv_working_set",
    "pmv_discard",
    "pmv_dm_cache",
    "pmv_sigterm",
    "pmv_restart",
];

/// Host programs the harness needs, with the Debian package that has them.
const HOST_TOOLS: [(&str, &str); 9] = [
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("cpio", "cpio"),
    ("mkfs.ext4", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("dmsetup", "dmsetup"),
    ("blkdiscard", "util-linux"),
    ("apt-get", "apt"),
    ("xz", "xz-utils"),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The full path of `tool` on PATH or in the sbin directories.
fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// Fail under CI, skip loudly elsewhere. Returns from the test when skipping.
macro_rules! require {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            let msg = format!($($msg)+);
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("VM test prerequisites missing: {msg}");
            }
            eprintln!("\n*** SKIPPING the ublk VM test: {msg} ***\n");
            return;
        }
    };
}

#[test]
fn ublk_target_and_daemon_pass_the_guest_workload_in_a_vm() {
    let missing: Vec<String> = HOST_TOOLS
        .iter()
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(tool, pkg)| format!("{tool} (package {pkg})"))
        .collect();
    require!(missing.is_empty(), "install {} — `sudo scripts/setup` does it", missing.join(", "));

    let kernel = run_script("tests/vm/kernel.sh", &[]);
    require!(kernel.is_ok(), "no test kernel: {}", kernel.unwrap_err());
    let kernel = PathBuf::from(kernel.unwrap().lines().last().unwrap_or_default());

    let server = build_example("pmvisor-blk", "ublk_memdev");
    let work = tempfile::tempdir().expect("temporary directory");
    let initrd = work.path().join("initrd.gz");
    let tool = |name: &str| which(name).unwrap().display().to_string();
    let mut args = vec![
        "--kernel".to_string(),
        kernel.display().to_string(),
        "--script".into(),
        repo().join("tests/vm/guest_ublk.sh").display().to_string(),
        "--script".into(),
        repo().join("tests/vm/guest_pmvisor.sh").display().to_string(),
        "--out".into(),
        initrd.display().to_string(),
        "--bin".into(),
        server.display().to_string(),
        "--bin".into(),
        env!("CARGO_BIN_EXE_pmvisor").to_string(),
    ];
    for bin in ["mkfs.ext4", "e2fsck", "dmsetup", "blkdiscard"] {
        args.extend(["--bin".into(), tool(bin)]);
    }
    for module in ["ublk_drv", "loop", "dm-cache", "dm-cache-smq"] {
        args.extend(["--module".into(), module.into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if let Err(err) = run_script("tests/vm/initramfs.sh", &args) {
        panic!("building the initramfs failed: {err}");
    }

    let started = Instant::now();
    let log = boot(&kernel.join("vmlinuz"), &initrd);
    eprintln!("VM ran for {:.1} s", started.elapsed().as_secs_f64());
    let results = parse_steps(&log);
    for (name, passed, detail) in &results {
        eprintln!("STEP {name:<15} {} {detail}", if *passed { "PASS" } else { "FAIL" });
    }
    let problems = problems(&results);
    assert!(problems.is_empty(), "{}\n--- guest console ---\n{log}", problems.join("\n"));
}

/// Run a repository script; its stdout, or why it failed.
fn run_script(script: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(repo().join(script))
        .args(args)
        .current_dir(repo())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{script} failed ({})", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cargo build -p PACKAGE --example NAME`; the executable's path.
fn build_example(package: &str, name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "-p", package, "--example", name])
        .args(["--message-format", "json-render-diagnostics"])
        .current_dir(repo())
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "building the {name} example failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == name)
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no executable for the {name} example"))
}

/// Boot the VM and return its console output; kills it after the timeout.
fn boot(vmlinuz: &Path, initrd: &Path) -> String {
    let mut child = Command::new(which("qemu-system-x86_64").unwrap())
        .args(["-accel", "tcg", "-m", "1G", "-smp", "2", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu starts");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line).into_owned();
            let _ = tx.send(());
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut timed_out = false;
    while child.try_wait().expect("qemu status").is_none() {
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        let _ = rx.recv_timeout(Duration::from_millis(200));
    }
    let mut log = reader.join().expect("console reader");
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut log);
    }
    if timed_out {
        log.push_str(&format!("\n*** VM killed after {BOOT_TIMEOUT:?} ***\n"));
    }
    log
}

/// Every `STEP name PASS|FAIL detail` line, in order.
fn parse_steps(log: &str) -> Vec<(String, bool, String)> {
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find("STEP ")? + 5..];
            let mut parts = rest.splitn(3, ' ');
            let name = parts.next()?.to_string();
            let passed = match parts.next()? {
                "PASS" => true,
                "FAIL" => false,
                _ => return None,
            };
            Some((name, passed, parts.next().unwrap_or("").trim().to_string()))
        })
        .collect()
}

/// What is wrong with the reported steps: failures, and expected steps that
/// never reported.
fn problems(results: &[(String, bool, String)]) -> Vec<String> {
    let mut problems: Vec<String> = results
        .iter()
        .filter(|(_, passed, _)| !passed)
        .map(|(name, _, detail)| format!("guest step {name} failed: {detail}"))
        .collect();
    for step in STEPS {
        if !results.iter().any(|(name, _, _)| name == step) {
            problems.push(format!("guest step {step} did not run"));
        }
    }
    problems
}

#[test]
fn step_lines_are_parsed_and_missing_steps_reported() {
    let log = "noise\r\n[ 1.0] STEP ext4 PASS made it\nSTEP recovery FAIL exit 1: oops\n";
    let results = parse_steps(log);
    assert_eq!(
        results,
        vec![
            ("ext4".to_string(), true, "made it".to_string()),
            ("recovery".to_string(), false, "exit 1: oops".to_string()),
        ]
    );
    let problems = problems(&results);
    assert_eq!(problems[0], "guest step recovery failed: exit 1: oops");
    assert!(problems.contains(&"guest step dm_cache did not run".to_string()));
    assert_eq!(problems.len(), 1 + STEPS.len() - 2, "one failure, the other steps missing");
}
