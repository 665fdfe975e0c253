//! pjdfstest, the POSIX conformance suite, against RvmFS mounted the way a
//! user mounts it: `mount -t fuse.rvmfs REGION DIR` through the installed
//! helper, as root, with no option but the pool (a detached server). The
//! suite runs as root in a directory of the mount, switching to other users
//! for the permission tests, with the settings of `tests/pjdfstest.toml`.
//!
//! It runs twice: with the defaults, where the kernel checks permissions
//! from the mode bits, and with `sync_close`, where every permission check
//! is RvmFS's own. Each time the whole suite runs without remounts, then the
//! EROFS tests run on their own, remounting read-only through the helper
//! (see the config for why apart). Every test must pass but those pjdfstest
//! skips on any FUSE filesystem, and the filesystem must then check clean.
//!
//! pjdfstest (`scripts/setup` installs it in /opt/pjdfstest), root and FUSE
//! are needed: without them the test fails under `CI=true` and says
//! SKIPPED otherwise.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::fuse::{dir_in, fuse_available, mount_8, umount_8, wait_for, SystemHelper};
use common::Sandbox;

const PJDFSTEST: &str = "/opt/pjdfstest/bin/pjdfstest";
/// Longest a run may take before it is killed (a hung request hangs it).
const RUN_DEADLINE: Duration = Duration::from_secs(120);
/// Tests that pjdfstest skips on every FUSE filesystem (see the config).
const SKIPPED_ON_FUSE: [&str; 1] = ["link::link_count_max"];
/// The part of the test names of the EROFS tests, which remount.
const EROFS: &str = "erofs";

/// Whether pjdfstest can run here: fails under `CI=true` when it cannot.
fn prerequisites() -> bool {
    let missing = if !Path::new(PJDFSTEST).exists() {
        Some(format!("{PJDFSTEST} is missing (scripts/setup installs it)"))
    } else if !rustix::process::geteuid().is_root() {
        Some("it needs root (to mount with mount(8) and to switch users)".to_string())
    } else {
        None
    };
    if let Some(why) = missing {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "pjdfstest: {why} under CI=true");
        eprintln!("SKIPPED: pjdfstest against RvmFS: {why}");
        return false;
    }
    fuse_available()
}

/// The counts of pjdfstest's last line and the names of the tests it skipped.
#[derive(Debug, Default)]
struct Outcome {
    failed: usize,
    skipped: usize,
    passed: usize,
    total: usize,
    skipped_tests: Vec<String>,
}

/// Removes the terminal colour sequences (`ESC [ ... m`) pjdfstest may print.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads pjdfstest's output: `name ... ok|FAILED|skipped` lines and
/// `Summary: F failed, S skipped, P passed, E expected failures, T total`.
fn parse(output: &str) -> Option<Outcome> {
    let mut outcome = Outcome::default();
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [name, "skipped"] = words[..] {
            outcome.skipped_tests.push(name.to_string());
        }
    }
    let summary = output.lines().rev().find_map(|l| l.strip_prefix("Summary: "))?;
    for part in summary.split(", ") {
        let (count, what) = part.split_once(' ')?;
        let count: usize = count.parse().ok()?;
        match what {
            "failed" => outcome.failed = count,
            "skipped" => outcome.skipped = count,
            "passed" => outcome.passed = count,
            "total" => outcome.total = count,
            _ => {}
        }
    }
    Some(outcome)
}

/// The committed config, and a copy of it that allows remounts.
fn configs(sandbox: &Sandbox) -> (PathBuf, PathBuf) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pjdfstest.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let (off, on) = ("\nallow_remount = false\n", "\nallow_remount = true\n");
    assert!(text.contains(off), "{} no longer says{off}", config.display());
    let remounts = sandbox.path("pjdfstest-erofs.toml");
    std::fs::write(&remounts, text.replace(off, on)).unwrap();
    (config, remounts)
}

/// Runs the tests matching `pattern` (all when empty) in `dir`; returns
/// pjdfstest's output and outcome.
fn run_pjdfstest(
    sandbox: &Sandbox,
    config: &Path,
    pattern: &str,
    dir: &Path,
    other_fs: &Path,
) -> (String, Outcome) {
    let log = sandbox.path("pjdfstest.log");
    let out = File::create(&log).unwrap();
    let mut child = Command::new(PJDFSTEST)
        .arg("-c")
        .arg(config)
        .arg("-p")
        .arg(dir)
        .arg("-s")
        .arg(other_fs)
        .args((!pattern.is_empty()).then_some(pattern))
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + RUN_DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let output = plain(&std::fs::read_to_string(&log).unwrap_or_default());
            panic!("pjdfstest hung for {RUN_DEADLINE:?}; its output:\n{output}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = plain(&std::fs::read_to_string(&log).unwrap());
    let outcome = parse(&output)
        .unwrap_or_else(|| panic!("pjdfstest printed no summary; its output:\n{output}"));
    (output, outcome)
}

/// The failure reports of `output`: each FAILED line with what follows it
/// up to the next test.
fn failures(output: &str) -> String {
    let mut report = String::new();
    let mut in_failure = false;
    for line in output.lines() {
        if line.trim_end().ends_with(" FAILED") {
            in_failure = true;
        } else if !line.starts_with(['\t', ' ']) {
            in_failure = false;
        }
        if in_failure {
            report.push_str(line);
            report.push('\n');
        }
    }
    report
}

#[test]
fn rvmfs_passes_pjdfstest_with_kernel_and_with_its_own_permission_checks() {
    if !prerequisites() {
        return;
    }
    let sandbox = Sandbox::in_memory();
    // The other users pjdfstest switches to must reach the mount point.
    let root = sandbox.path(".");
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pool = sandbox.pool();
    sandbox.create_pool_of("128M");
    sandbox.on_pool(&["fs", "create", "pjd", "--size", "64M"]).assert().success();
    let _helper = SystemHelper::install(&sandbox);
    let (dir, _guard) = dir_in(&sandbox, "mnt");
    // Another filesystem (tmpfs) for the EXDEV tests of link and rename.
    let other_fs = sandbox.path("other-fs");
    std::fs::create_dir(&other_fs).unwrap();
    let (config, remounts) = configs(&sandbox);

    for (mode, extra) in
        [("kernel permission checks", ""), ("sync_close, own checks", ",sync_close")]
    {
        let options = format!("pool={}{extra}", pool.display());
        let out = mount_8(&sandbox, "pjd", &dir, &options);
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        let started = Instant::now();
        let whole = run_pjdfstest(&sandbox, &config, "", &dir, &other_fs);
        let erofs = run_pjdfstest(&sandbox, &remounts, EROFS, &dir, &other_fs);
        let took = started.elapsed();
        let out = umount_8(&dir);
        assert!(out.status.success(), "umount: {}", String::from_utf8_lossy(&out.stderr));
        wait_for("the server to commit and release the pool", || {
            sandbox.on_pool(&["pool", "check"]).output().unwrap().status.success()
        });

        let ((output, outcome), (erofs_output, erofs_outcome)) = (whole, erofs);
        let summary = output.lines().rev().find(|l| l.starts_with("Summary: ")).unwrap_or("");
        let passed = outcome.passed + erofs_outcome.passed;
        println!(
            "pjdfstest on RvmFS ({mode}): {passed} tests passed ({} + {} EROFS), {} failed, \
             skipped {:?}, in {:.1} s\n  whole suite without remounts: {summary}",
            outcome.passed,
            erofs_outcome.passed,
            outcome.failed + erofs_outcome.failed,
            SKIPPED_ON_FUSE,
            took.as_secs_f64()
        );
        assert_eq!(outcome.failed, 0, "pjdfstest ({mode}) failed:\n{}", failures(&output));
        assert_eq!(
            erofs_outcome.failed,
            0,
            "pjdfstest's EROFS tests ({mode}) failed:\n{}",
            failures(&erofs_output)
        );
        let skipped: Vec<&str> = outcome.skipped_tests.iter().map(String::as_str).collect();
        let (erofs_skipped, others): (Vec<&str>, Vec<&str>) =
            skipped.into_iter().partition(|name| name.contains(EROFS));
        assert_eq!(
            others, SKIPPED_ON_FUSE,
            "pjdfstest ({mode}) skipped other tests than it must on FUSE; its output:\n{output}"
        );
        assert_eq!(
            erofs_skipped.len(),
            erofs_outcome.passed,
            "the EROFS run ({mode}) ran other tests than the whole run skipped:\n{erofs_output}"
        );
        assert!(outcome.passed > 0 && erofs_outcome.skipped == 0);
        sandbox.on_pool(&["fs", "check", "pjd"]).assert().success();
    }
}

mod tests {
    use super::*;

    #[test]
    fn the_summary_and_skipped_tests_are_read_from_coloured_output() {
        let output = "chmod::ok_case                 \u{1b}[32mok\u{1b}[0m\n\
             link::link_count_max           \u{1b}[33mskipped\u{1b}[0m\n\
             \tCannot get value for LINK_MAX\n\
             open::bad                      \u{1b}[31mFAILED\u{1b}[0m\n\
             \tassertion failed\n\
             \n\u{1b}[1mSummary\u{1b}[0m: 1 failed, 1 skipped, 1 passed, 0 expected failures, \
             3 total\n";
        let plain = plain(output);
        let outcome = parse(&plain).unwrap();
        assert_eq!((outcome.failed, outcome.skipped, outcome.passed, outcome.total), (1, 1, 1, 3));
        assert_eq!(outcome.skipped_tests, ["link::link_count_max"]);
        assert_eq!(failures(&plain), "open::bad                      FAILED\n\tassertion failed\n");
    }
}
