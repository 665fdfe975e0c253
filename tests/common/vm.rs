//! The test VM shared by the VM tests: Debian's 6.12 cloud kernel
//! (tests/vm/kernel.sh), a busybox initramfs built for the test
//! (tests/vm/initramfs.sh) and `qemu-system-x86_64 -accel tcg` with the
//! serial console on its stdin and stdout, so a test reads the guest's
//! `STEP name PASS|FAIL detail` lines and can answer the guest.
//!
//! Prerequisites come from `scripts/setup`. When they are missing a VM test
//! fails under `CI=true` and skips loudly otherwise ([`skip`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

/// Host programs every VM test needs, with the Debian package that has them.
pub const VM_TOOLS: [(&str, &str); 5] = [
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("cpio", "cpio"),
    ("apt-get", "apt"),
    ("xz", "xz-utils"),
];

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The full path of `tool` on PATH or in the sbin directories.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// `Err` naming the missing `tools` (program, package) and how to get them.
pub fn check_tools(tools: &[(&str, &str)]) -> Result<(), String> {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(tool, pkg)| format!("{tool} (package {pkg})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("install {} — `sudo scripts/setup` does it", missing.join(", ")))
    }
}

/// A prerequisite of `test` is missing: panic under `CI=true`, else say
/// the test is skipped (the caller returns).
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("VM test prerequisites missing: {why}");
    }
    eprintln!("\n*** SKIPPING the {test} VM test: {why} ***\n");
}

/// The test kernel's directory (`vmlinuz`, `lib/modules/<version>/`).
pub fn kernel() -> Result<PathBuf, String> {
    let out = run_script("tests/vm/kernel.sh", &[]).map_err(|e| format!("no test kernel: {e}"))?;
    Ok(PathBuf::from(out.lines().last().unwrap_or_default()))
}

/// Run a repository script; its stdout, or why it failed.
pub fn run_script(script: &str, args: &[&str]) -> Result<String, String> {
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

/// Build the guest's initramfs at `out` (tests/vm/initramfs.sh): busybox,
/// the guest `scripts` (relative to the repository, run in order), `bins`
/// and their libraries, and the kernel `modules`; panics when it cannot.
pub fn initramfs(kernel: &Path, scripts: &[&str], out: &Path, bins: &[String], modules: &[&str]) {
    let mut args = vec!["--kernel".to_string(), kernel.display().to_string()];
    for script in scripts {
        args.extend(["--script".into(), repo().join(script).display().to_string()]);
    }
    args.extend(["--out".into(), out.display().to_string()]);
    for bin in bins {
        args.extend(["--bin".into(), bin.clone()]);
    }
    for module in modules {
        args.extend(["--module".into(), module.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if let Err(err) = run_script("tests/vm/initramfs.sh", &args) {
        panic!("building the initramfs failed: {err}");
    }
}

/// `cargo build -p PACKAGE --example|--bin NAME` (`kind` is `example` or
/// `bin`) in the test's own profile and target directory; the
/// executable's path. For binaries of other packages of the workspace,
/// which `env!("CARGO_BIN_EXE_...")` does not name.
pub fn cargo_build(package: &str, kind: &str, name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "-p", package, &format!("--{kind}"), name])
        .args(["--message-format", "json-render-diagnostics"])
        .current_dir(repo())
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "building {kind} {name} of {package} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == name)
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no executable for {kind} {name} of {package}"))
}

/// A running test VM: its console lines arrive on a channel as the guest
/// prints them, and lines written with [`Vm::send`] reach the guest's
/// console input. Killed when dropped.
pub struct Vm {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    log: String,
}

impl Vm {
    /// Boot `vmlinuz` with `initrd`, kernel command line `console=ttyS0
    /// quiet panic=-1 APPEND`, `memory` of RAM and `extra` QEMU arguments.
    pub fn boot(vmlinuz: &Path, initrd: &Path, append: &str, memory: &str, extra: &[String]) -> Vm {
        let mut child = Command::new(which("qemu-system-x86_64").expect("qemu is installed"))
            .args(["-accel", "tcg", "-m", memory, "-smp", "2", "-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(vmlinuz)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", &format!("console=ttyS0 quiet panic=-1 {append}")])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu starts");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        Vm { child, stdin, lines, reader: Some(reader), log: String::new() }
    }

    /// The next console line, or `None` when the console closed (the VM
    /// exited) or `deadline` passed. Every line goes to the log.
    pub fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let line = self.lines.recv_timeout(wait).ok()?;
        self.log.push_str(&line);
        self.log.push('\n');
        Some(line)
    }

    /// Type `line` on the guest's console.
    pub fn send(&mut self, line: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}").and_then(|()| stdin.flush());
        }
    }

    /// Read the console until the VM exits, killing it at `deadline`; the
    /// whole console log with QEMU's stderr.
    pub fn finish(mut self, deadline: Instant) -> String {
        while self.next_line(deadline).is_some() {}
        let timed_out =
            self.child.try_wait().expect("qemu status").is_none() && Instant::now() >= deadline;
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        while let Ok(line) = self.lines.try_recv() {
            self.log.push_str(&line);
            self.log.push('\n');
        }
        let mut log = std::mem::take(&mut self.log);
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut log);
        }
        if timed_out {
            log.push_str("\n*** VM killed at its deadline ***\n");
        }
        log
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `(name, passed, detail)` of one `STEP name PASS|FAIL detail` line.
pub fn parse_step(line: &str) -> Option<(String, bool, String)> {
    let rest = &line[line.find("STEP ")? + 5..];
    let mut parts = rest.splitn(3, ' ');
    let name = parts.next()?.to_string();
    let passed = match parts.next()? {
        "PASS" => true,
        "FAIL" => false,
        _ => return None,
    };
    Some((name, passed, parts.next().unwrap_or("").trim().to_string()))
}

/// Every `STEP name PASS|FAIL detail` line, in order.
pub fn parse_steps(log: &str) -> Vec<(String, bool, String)> {
    log.lines().filter_map(parse_step).collect()
}

/// What is wrong with the reported steps: failures, and `expected` steps
/// that never reported.
pub fn step_problems(results: &[(String, bool, String)], expected: &[&str]) -> Vec<String> {
    let mut problems: Vec<String> = results
        .iter()
        .filter(|(_, passed, _)| !passed)
        .map(|(name, _, detail)| format!("guest step {name} failed: {detail}"))
        .collect();
    for step in expected {
        if !results.iter().any(|(name, _, _)| name == step) {
            problems.push(format!("guest step {step} did not run"));
        }
    }
    problems
}

/// Print the steps, one a line, for the test's output.
pub fn print_steps(results: &[(String, bool, String)]) {
    for (name, passed, detail) in results {
        eprintln!("STEP {name:<15} {} {detail}", if *passed { "PASS" } else { "FAIL" });
    }
}
