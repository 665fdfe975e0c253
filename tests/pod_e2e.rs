//! A power outage end to end, through the product (issue 6): the real
//! `pmvisor serve`, an RvmFS filesystem it mounts with a writer process
//! writing files into it, an NBD export written by fio and by qemu-io, and
//! a QEMU TCG VM whose RAM is a memory region of the pool and whose disk
//! is a qcow2 image on the RvmFS mount, running the counter guest
//! (tests/vm/guest_counter.sh; it writes each count to its disk and checks
//! the disk holds the last one). SIGPWR to the daemon saves the VM and
//! fences the pool; SIGKILL to the daemon and QEMU cuts the power; `pmvisor
//! serve --resume-vms` brings the VM back, and the test checks the guest
//! counts on with no boot output, every acknowledged file and NBD write is
//! there, the image passes `qemu-img check` and `pmvisor pod status`
//! reports the fence.
//!
//! Two shorter tests use VMs with no kernel (the firmware idles): one whose
//! QEMU is dead and one whose QEMU is hung at POD time (the pool is still
//! fenced within its budget and the report names them and why), and two
//! POD triggers in a row (the second changes nothing and says so).
//!
//! The tests run one at a time (QEMU under TCG on a small machine, and POD
//! budgets are measured) and print the timings they measure. They need
//! root, /dev/fuse and QEMU 8.2 or newer (`scripts/setup`): without them
//! they fail under `CI=true` and skip with a message otherwise.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pmvisor::vm::{self, VmPaths};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;

use common::counter::{assert_counts_on, Console, Qemus};
use common::fuse::{dir_in, wait_for};
use common::vm as harness;
use common::{http, stdout_json, Sandbox};

/// The VM of the end-to-end test (unique names tell its QEMU from others).
const VM: &str = "pmvtest-pod-e2e";
/// How long the guest may take to boot and count to [`BOOTED_AT`].
const BOOT_DEADLINE: Duration = Duration::from_secs(60);
/// The count at which the guest is considered booted.
const BOOTED_AT: u64 = 5;
/// Each qemu-io write of the NBD writer, in the second half of the region.
const NBD_CHUNK: u64 = 256 << 10;
/// Where the NBD writer writes; fio writes the 8 MiB before it.
const NBD_WRITER_AT: u64 = 8 << 20;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

#[test]
fn after_sigpwr_and_a_power_cut_serve_resume_vms_brings_back_the_vm_the_files_and_the_nbd_writes() {
    let _one = one_at_a_time();
    let Some((kernel, initrd, sandbox)) = guest_prerequisites() else { return };
    let help = command_stdout(sandbox.pmvisor().args(["serve", "--help"]));
    assert!(help.contains("--resume-vms  ") && help.contains("resume every VM that outage"));
    let pool = sandbox.pool();
    sandbox.create_pool_of("320M");
    sandbox.on_pool(&["region", "create", "disk", "--size", "16M"]).assert().success();
    let pool_arg = ["--pool", pool.to_str().unwrap()];
    let mut daemon = sandbox.serve(&pool_arg);

    // RvmFS through the daemon, with no periodic commit: what the writer
    // left in open files is committed by the POD.
    sandbox.on_pool(&["fs", "create", "home", "--size", "64M"]).assert().success();
    let (home, guard) = dir_in(&sandbox, "home");
    sandbox
        .on_pool(&["fs", "mount", "home"])
        .arg(&home)
        .args(["-o", "commit=3600"])
        .assert()
        .success();

    // NBD: fio writes the first 8 MiB and reads them back before the POD.
    stdout_json(&mut sandbox.on_pool(&["export", "add", "disk", "--nbd"]));
    let uri = format!("nbd+unix:///disk?socket={}", sandbox.path("nbd/disk.sock").display());
    fio(&uri, false);

    // The VM: RAM in the pool, its disk a qcow2 image on the RvmFS mount.
    let image = home.join("vm.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", image.to_str().unwrap(), "16M"]);
    let vmlinuz = kernel.join("vmlinuz");
    sandbox
        .on_pool(&["vm", "create", VM, "--memory", "128M", "--disk", image.to_str().unwrap()])
        .args(["--kernel", vmlinuz.to_str().unwrap(), "--initrd", initrd.to_str().unwrap()])
        .args(["--append", "console=ttyS0 quiet panic=-1", "--qemu-arg=-no-reboot"])
        .assert()
        .success();
    let started = Instant::now();
    sandbox.on_pool(&["vm", "start", VM]).assert().success();
    let mut qemus = Qemus(vec![vm_pid(&sandbox, VM)]);
    let paths = VmPaths::for_daemon(&sandbox.socket(), &sandbox.path("state"));
    let console = Console(paths.console(VM));
    let booted = console.wait_for(|c| c.last_count() >= Some(BOOTED_AT), started + BOOT_DEADLINE);
    assert!(booted, "the guest did not count to {BOOTED_AT}:\n{}", console.tail());
    eprintln!("booted and counting after {:.1} s", started.elapsed().as_secs_f64());

    // Writers at work while the power fails.
    let acks = sandbox.path("writer.acks");
    let mut writer = FileWriter::start(&home, &acks);
    let nbd = NbdWriter::start(&uri);
    wait_for("the writers to get going", || writer.acked() >= 100 && nbd.acked() >= 10);

    daemon.signal(Signal::POWER);
    let status = wait_for_state(&sandbox, "fenced");
    let last = &status["last"];
    assert_eq!((last["fenced"].as_bool(), last["source"].as_str()), (Some(true), Some("SIGPWR")));
    let saved = &last["participants"][0];
    assert_eq!(saved["name"], VM, "{last}");
    assert!(saved["saved_to"].is_string(), "the VM was not saved: {last}");
    eprintln!(
        "POD: VM saved in {:.1} ms, fenced {:.1} ms after SIGPWR, done in {:.1} ms (budget {} ms)",
        ms(&saved["micros"]),
        ms(&last["fenced_us"]),
        ms(&last["total_us"]),
        ms(&last["budget_us"])
    );
    std::thread::sleep(Duration::from_millis(300));
    let saved_at = console.last_count().expect("the guest counted");

    // The power is gone.
    daemon.kill();
    qemus.kill();
    let acked_files = writer.stop();
    let acked_blocks = nbd.stop();
    drop(guard);
    eprintln!(
        "before the cut: the guest counted to {saved_at}, the writer wrote {acked_files} files, \
         qemu-io {} chunks",
        acked_blocks.acked.len()
    );
    let resumed_from = console.len();

    // The power is back.
    let restarted = Instant::now();
    let daemon = sandbox.serve_with(&pool_arg, &["--resume-vms"]);
    let wanted = saved_at + 10;
    let counted = console.wait_for(|c| c.last_count() > Some(saved_at), restarted + BOOT_DEADLINE);
    let first_count = restarted.elapsed();
    let counted = counted
        && console
            .wait_for(|c| c.last_count() >= Some(wanted), Instant::now() + Duration::from_secs(60));
    let after = console.text_from(resumed_from);
    assert!(
        counted,
        "the resumed guest did not count on to {wanted}:\n{after}\n{}",
        daemon.log_text()
    );
    assert_counts_on(&after, saved_at);
    qemus.0.push(vm_pid(&sandbox, VM));
    let log = daemon.log_text();
    let line =
        log.lines().find(|l| l.contains("resumed the VM saved by POD #1")).unwrap_or_else(|| {
            panic!("the daemon did not log the resume:\n{log}");
        });
    eprintln!(
        "serve --resume-vms: the guest counted again {:.0} ms after the daemon started; {}",
        first_count.as_secs_f64() * 1000.0,
        line.split("INFO").nth(1).unwrap_or(line).trim()
    );

    // `pod status` reports the fence the daemon started from.
    let status = pod_status(&sandbox);
    assert_eq!(
        (status["state"].as_str(), status["start"]["opened_from"].as_str()),
        (Some("serving"), Some("fence")),
        "{status}"
    );
    assert_eq!(status["start"]["fence"]["sequence"], 1, "{status}");
    let text = command_stdout(&mut sandbox.on_pool(&["pod", "status"]));
    assert!(text.contains("started from the fence of POD #1 (SIGPWR): no recovery work"), "{text}");

    // Every acknowledged write is there.
    wait_for("the mount to come back", || home.join("journal").exists());
    assert_files_written(&home, acked_files);
    fio(&uri, true);
    acked_blocks.assert_read_back(&uri);

    // The image holds what the guest wrote last and is consistent.
    sandbox.on_pool(&["vm", "stop", VM]).assert().success();
    qemus.0.clear();
    let stopped_at = console.last_count().unwrap();
    let check = run("qemu-img", &["check", image.to_str().unwrap()]);
    eprintln!("qemu-img check: {}", check.lines().next().unwrap_or_default());
    let on_disk = disk_count(&sandbox, &image);
    assert!(
        on_disk == stopped_at || on_disk == stopped_at + 1,
        "the image holds COUNT {on_disk} but the guest printed COUNT {stopped_at} last"
    );
    sandbox.on_pool(&["fs", "umount", "home"]).assert().success();
}

#[test]
fn a_vm_whose_qemu_is_dead_or_hung_at_pod_time_is_reported_and_the_pool_fences_within_its_budget() {
    let _one = one_at_a_time();
    if !qemu_usable("power outage with a dead VM", &[]) {
        return;
    }
    let sandbox = Sandbox::in_memory();
    sandbox.create_pool_of("192M");
    let pool = sandbox.pool();
    let pool_arg = ["--pool", pool.to_str().unwrap()];
    let mut daemon = sandbox.serve(&pool_arg);
    let [live, dead, hung] = ["pmvtest-live", "pmvtest-dead", "pmvtest-hung"];
    let mut qemus = Qemus::default();
    for name in [live, dead, hung] {
        idle_vm(&sandbox, name);
        qemus.0.push(vm_pid(&sandbox, name));
    }
    let pid = |name: &str| Pid::from_raw(vm_pid(&sandbox, name) as i32).unwrap();
    let (dead_pid, hung_pid) = (pid(dead), pid(hung));
    kill_process(dead_pid, Signal::KILL).unwrap();
    kill_process(hung_pid, Signal::STOP).unwrap();
    wait_for("the dead QEMU to be gone", || vm_view(&sandbox, dead)["state"] == "exited");

    daemon.signal(Signal::POWER);
    let status = wait_for_state(&sandbox, "fenced");
    let last = &status["last"];
    eprintln!("{}", command_stdout(&mut sandbox.on_pool(&["pod", "status"])));
    assert_eq!((last["fenced"].as_bool(), last["protected"].as_bool()), (Some(true), Some(true)));
    assert!(last["overran"].as_array().unwrap().is_empty(), "a phase overran: {last}");
    assert!(last["total_us"].as_u64() <= last["budget_us"].as_u64(), "{last}");
    let participant = |name: &str| {
        let list = last["participants"].as_array().unwrap();
        list.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{name} not in {last}"))
    };
    assert!(participant(live)["saved_to"].is_string(), "{last}");
    let why_dead = participant(dead)["error"].as_str().unwrap_or_default().to_string();
    // QEMU is gone: the QMP connection fails (closed, or a broken pipe).
    assert!(why_dead.starts_with(&format!("QMP of VM {dead}: ")), "{why_dead}");
    let why_hung = participant(hung)["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(why_hung, format!("VM {hung} was not saved before the deadline"));
    let text = command_stdout(&mut sandbox.on_pool(&["pod", "status"]));
    assert!(text.contains(&format!("did not save {dead}: {why_dead}")), "{text}");
    assert!(text.contains(&format!("did not save {hung}: {why_hung}")), "{text}");
    eprintln!(
        "POD with a dead and a hung VM: fenced in {:.1} ms of a {:.0} ms budget",
        ms(&last["fenced_us"]),
        ms(&last["budget_us"])
    );

    // After the cut, the VM that saved resumes; the others are logged.
    daemon.kill();
    qemus.kill();
    let daemon = sandbox.serve_with(&pool_arg, &["--resume-vms"]);
    wait_for("the saved VM to resume", || vm_view(&sandbox, live)["state"] == "running");
    qemus.0.push(vm_pid(&sandbox, live));
    wait_for("the resume to be logged", || daemon.log_text().contains("--resume-vms: 1 of 1"));
    let log = daemon.log_text();
    for name in [dead, hung] {
        let said = format!("VM {name} was not saved by POD #1 (");
        assert!(log.contains(&said), "no {said:?} in:\n{log}");
        assert_eq!(vm_view(&sandbox, name)["state"], "stopped");
    }
    assert!(log.contains("resumed the VM saved by POD #1"), "{log}");
}

#[test]
fn a_second_pod_trigger_while_fenced_changes_nothing_and_says_so() {
    let _one = one_at_a_time();
    if !qemu_usable("two power outages in a row", &[]) {
        return;
    }
    let sandbox = Sandbox::in_memory();
    sandbox.create_pool_of("128M");
    let pool = sandbox.pool();
    let pool_arg = ["--pool", pool.to_str().unwrap()];
    let mut daemon = sandbox.serve(&pool_arg);
    let name = "pmvtest-twice";
    idle_vm(&sandbox, name);
    let mut qemus = Qemus(vec![vm_pid(&sandbox, name)]);

    daemon.signal(Signal::POWER);
    let first = wait_for_state(&sandbox, "fenced")["last"].clone();
    let state = VmPaths::for_daemon(&sandbox.socket(), &sandbox.path("state")).state(name);
    let saved = saved_state(&state, &first);
    let paused = vm_view(&sandbox, name)["state"].clone();
    assert_ne!(paused, "running");

    // Again, through the API and through SIGPWR.
    let text = command_stdout(&mut sandbox.on_pool(&["pod", "trigger"]));
    assert!(
        text.starts_with(
            "The pool is already fenced by POD #1 from SIGPWR; this trigger changed nothing \
             (`pmvisor pod cancel` lifts the fence)."
        ),
        "{text}"
    );
    assert_eq!(stdout_json(&mut sandbox.on_pool(&["pod", "trigger"])), first);
    daemon.signal(Signal::POWER);
    let said = "POD trigger from SIGPWR while the pool is fenced by POD #1: nothing to do";
    wait_for("the second SIGPWR to be logged", || daemon.log_text().contains(said));
    assert!(daemon.log_text().contains("POD trigger from api while the pool is fenced by POD #1"));
    let status = pod_status(&sandbox);
    assert_eq!((&status["state"], &status["last"]), (&Value::from("fenced"), &first));
    let (_, metrics) = common::try_http(&sandbox.socket(), "GET", "/metrics", None).unwrap();
    assert!(metrics.contains("pmvisor_pod_triggers_total 1\n"), "{metrics}");
    let now = saved_state(&state, &first);
    assert!(now == saved, "a trigger while fenced rewrote the saved state");
    assert_eq!(vm_view(&sandbox, name)["state"], paused);

    // The fence and the state are the first POD's: the VM resumes from them.
    daemon.kill();
    qemus.kill();
    let _daemon = sandbox.serve_with(&pool_arg, &["--resume-vms"]);
    wait_for("the VM to resume", || vm_view(&sandbox, name)["state"] == "running");
    qemus.0.push(vm_pid(&sandbox, name));
    // The record holds the report of the phases before it (it is their proof).
    let fence = pod_status(&sandbox)["start"]["fence"].clone();
    for field in ["sequence", "triggered_unix_ns", "participants"] {
        assert_eq!(fence[field], first[field], "{field} of the fence record");
    }
}

#[test]
fn a_vm_whose_disk_is_an_nbd_export_saves_while_the_rest_of_the_host_io_is_held() {
    let _one = one_at_a_time();
    let Some((kernel, initrd, sandbox)) = guest_prerequisites() else { return };
    let pool = sandbox.pool();
    sandbox.create_pool_of("256M");
    let pool_arg = ["--pool", pool.to_str().unwrap()];
    let _daemon = sandbox.serve(&pool_arg);
    for region in ["vmdisk", "scratch"] {
        sandbox.on_pool(&["region", "create", region, "--size", "16M"]).assert().success();
        stdout_json(&mut sandbox.on_pool(&["export", "add", region, "--nbd"]));
    }
    let name = "pmvtest-nbd-disk";
    let vmlinuz = kernel.join("vmlinuz");
    sandbox
        .on_pool(&["vm", "create", name, "--memory", "96M", "--disk", "vmdisk"])
        .args(["--kernel", vmlinuz.to_str().unwrap(), "--initrd", initrd.to_str().unwrap()])
        .args(["--append", "console=ttyS0 quiet panic=-1", "--qemu-arg=-no-reboot"])
        .assert()
        .success();
    let started = Instant::now();
    sandbox.on_pool(&["vm", "start", name]).assert().success();
    let _qemus = Qemus(vec![vm_pid(&sandbox, name)]);
    let console =
        Console(VmPaths::for_daemon(&sandbox.socket(), &sandbox.path("state")).console(name));
    let booted = console.wait_for(|c| c.last_count() >= Some(BOOTED_AT), started + BOOT_DEADLINE);
    assert!(booted, "the guest did not count to {BOOTED_AT}:\n{}", console.tail());

    // The host writes to another export meanwhile.
    let scratch =
        format!("nbd+unix:///scratch?socket={}", sandbox.path("nbd/scratch.sock").display());
    let nbd = NbdWriter::start(&scratch);
    wait_for("the host writer to get going", || nbd.acked() >= 5);

    let report = stdout_json(&mut sandbox.on_pool(&["pod", "trigger"]));
    let quiesce = report["phases"][0]["detail"].as_str().unwrap_or_default();
    assert!(quiesce.contains("1 guest disks open until their VMs are saved"), "{report}");
    let saved = &report["participants"][0];
    assert!(saved["saved_to"].is_string(), "the VM with an NBD disk was not saved: {report}");
    eprintln!(
        "POD with an NBD-disk VM: saved in {:.1} ms, fenced {:.1} ms after the trigger",
        ms(&saved["micros"]),
        ms(&report["fenced_us"])
    );
    let paused_at = console.last_count().unwrap();
    let paused_from = console.len();

    // Power back: the guest counts on, its disk holding its last count
    // (the guest checks and would print otherwise).
    stdout_json(&mut sandbox.on_pool(&["pod", "cancel"]));
    let counted = console.wait_for(
        |c| c.last_count() >= Some(paused_at + 5),
        Instant::now() + Duration::from_secs(60),
    );
    assert!(counted, "the guest did not count on after the cancel:\n{}", console.tail());
    assert_counts_on(&console.text_from(paused_from), paused_at);
    nbd.stop().assert_read_back(&scratch);
}

/// The bytes and modification time of the saved state `path`, which the
/// sequence that reported `pod` saved.
fn saved_state(path: &Path, pod: &Value) -> (Vec<u8>, std::time::SystemTime) {
    let read = std::fs::read(path).and_then(|bytes| Ok((bytes, path.metadata()?.modified()?)));
    read.unwrap_or_else(|err| panic!("cannot read {}: {err}; POD: {pod}", path.display()))
}

/// Everything the end-to-end test needs: the kernel, the counter
/// initramfs (with virtio_blk, so the guest writes its disk) and a sandbox
/// in memory; `None` (skipped, or a failure under CI) when something is
/// missing.
fn guest_prerequisites() -> Option<(PathBuf, PathBuf, Sandbox)> {
    let test = "power-outage end-to-end";
    let tools = [
        harness::VM_TOOLS.as_slice(),
        &[("qemu-img", "qemu-utils"), ("qemu-io", "qemu-utils"), ("fio", "fio")],
        &[("fusermount3", "fuse3")],
    ]
    .concat();
    if !qemu_usable(test, &tools) {
        return None;
    }
    let fio_nbd = StdCommand::new("fio").arg("--enghelp=nbd").output();
    if !fio_nbd.is_ok_and(|out| out.status.success()) {
        harness::skip(test, "this fio has no nbd engine; install Debian's fio (`scripts/setup`)");
        return None;
    }
    if !rustix::process::geteuid().is_root() {
        harness::skip(test, "it mounts RvmFS through FUSE for QEMU; run it as root");
        return None;
    }
    if !Path::new("/dev/fuse").exists() {
        harness::skip(test, "/dev/fuse is missing; load the fuse module (`modprobe fuse`)");
        return None;
    }
    let kernel = match harness::kernel() {
        Ok(kernel) => kernel,
        Err(why) => {
            harness::skip(test, &why);
            return None;
        }
    };
    let sandbox = Sandbox::in_memory();
    let initrd = sandbox.path("initrd.gz");
    let script = ["tests/vm/guest_counter.sh"];
    harness::initramfs(&kernel, &script, &initrd, &[], &["virtio_blk"]);
    Some((kernel, initrd, sandbox))
}

/// Whether QEMU (8.2 or newer) and `tools` are here; says why not.
fn qemu_usable(test: &str, tools: &[(&str, &str)]) -> bool {
    let tools = [&[("qemu-system-x86_64", "qemu-system-x86")], tools].concat();
    if let Err(why) = harness::check_tools(&tools) {
        harness::skip(test, &why);
        return false;
    }
    let qemu = harness::which("qemu-system-x86_64").expect("checked above");
    if let Err(err) = vm::version::check_binary(&qemu) {
        harness::skip(test, &err.to_string());
        return false;
    }
    true
}

/// Create and start VM `name` with 32 MiB and no kernel: the firmware
/// finds nothing to boot and idles, which is all a POD needs of it.
fn idle_vm(sandbox: &Sandbox, name: &str) {
    sandbox.on_pool(&["vm", "create", name, "--memory", "32M"]).assert().success();
    sandbox.on_pool(&["vm", "start", name]).assert().success();
}

fn vm_view(sandbox: &Sandbox, name: &str) -> Value {
    let (status, view) = http(&sandbox.socket(), "GET", &format!("/v1/vms/{name}"), None);
    assert_eq!(status, 200, "{view}");
    view
}

fn vm_pid(sandbox: &Sandbox, name: &str) -> u32 {
    let view = vm_view(sandbox, name);
    view["pid"].as_u64().unwrap_or_else(|| panic!("the daemon launched no QEMU: {view}")) as u32
}

fn pod_status(sandbox: &Sandbox) -> Value {
    stdout_json(&mut sandbox.on_pool(&["pod", "status"]))
}

fn wait_for_state(sandbox: &Sandbox, state: &str) -> Value {
    let mut status = Value::Null;
    wait_for(&format!("the pod to be {state}"), || {
        status = pod_status(sandbox);
        status["state"] == state
    });
    status
}

fn command_stdout(cmd: &mut assert_cmd::Command) -> String {
    String::from_utf8_lossy(&cmd.assert().success().get_output().stdout).into_owned()
}

/// Microseconds in a JSON number, as milliseconds.
fn ms(us: &Value) -> f64 {
    us.as_u64().unwrap_or(0) as f64 / 1000.0
}

/// Run `program` with `args`; panics with its output when it fails.
fn run(program: &str, args: &[&str]) -> String {
    let out = StdCommand::new(program).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// fio over NBD: write the first 8 MiB with checksummed blocks and read
/// them back, or (`verify_only`) only read and check them.
fn fio(uri: &str, verify_only: bool) {
    let mut args = vec![
        "--name=acked".to_string(),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        "--rw=write".into(),
        "--bs=64k".into(),
        "--size=8M".into(),
        "--verify=crc32c".into(),
        "--verify_fatal=1".into(),
        // No state file in the working directory.
        "--verify_state_save=0".into(),
    ];
    if verify_only {
        args.push("--verify_only".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("fio", &args);
    assert!(out.contains("err= 0"), "fio: {out}");
}

/// The first sector of the VM's disk, as the guest wrote it: `COUNT n`.
fn disk_count(sandbox: &Sandbox, image: &Path) -> u64 {
    let raw = sandbox.path("sector0.raw");
    let (input, output) = (format!("if={}", image.display()), format!("of={}", raw.display()));
    run("qemu-img", &["dd", "-f", "qcow2", "-O", "raw", "bs=512", "count=1", &input, &output]);
    let sector = std::fs::read(&raw).unwrap();
    let text = String::from_utf8_lossy(&sector);
    let count = text.trim_end_matches('\0').trim().strip_prefix("COUNT ").map(str::parse);
    match count {
        Some(Ok(n)) => n,
        _ => panic!("the image's first sector holds {text:?}"),
    }
}

/// A process writing into the RvmFS mount: each round appends a line to
/// `journal` (opened once, never closed nor synced) and creates `f<i>`,
/// then records `i` in an acknowledgement file outside the mount.
struct FileWriter {
    child: Child,
    acks: PathBuf,
}

const WRITER: &str = r#"
dir=$1 acks=$2
exec 3>>"$dir/journal"
i=0
while :; do
  i=$((i + 1))
  echo "line $i" >&3 || exit 1
  seq "$i" "$((i + i * 37 % 2000))" >"$dir/f$i" || exit 1
  echo "$i" >>"$acks"
done
"#;

impl FileWriter {
    fn start(dir: &Path, acks: &Path) -> FileWriter {
        let child = StdCommand::new("sh")
            .args(["-c", WRITER, "writer"])
            .arg(dir)
            .arg(acks)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        FileWriter { child, acks: acks.to_path_buf() }
    }

    /// The last round acknowledged.
    fn acked(&self) -> u64 {
        let acks = std::fs::read_to_string(&self.acks).unwrap_or_default();
        acks.lines().rev().find_map(|l| l.parse().ok()).unwrap_or(0)
    }

    /// Wait for the writer to fail (its filesystem is gone), or kill it.
    fn stop(&mut self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.acked()
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the writer wrote into `f<i>`.
fn file_contents(i: u64) -> String {
    (i..=i + i * 37 % 2000).map(|n| format!("{n}\n")).collect()
}

/// The files of rounds 1 to `acked` are whole, and the journal holds
/// their lines (and perhaps one more, written but not acknowledged).
fn assert_files_written(dir: &Path, acked: u64) {
    for i in 1..=acked {
        let held = std::fs::read_to_string(dir.join(format!("f{i}"))).unwrap_or_default();
        assert!(held == file_contents(i), "f{i} lost acknowledged data: {} bytes", held.len());
    }
    let journal = std::fs::read_to_string(dir.join("journal")).unwrap();
    let lines: Vec<&str> = journal.lines().collect();
    assert!(lines.len() as u64 >= acked, "the journal has {} lines of {acked}", lines.len());
    for (n, line) in (1..).zip(&lines) {
        assert_eq!(*line, format!("line {n}"), "journal line {n}");
    }
    eprintln!("RvmFS: {acked} acknowledged files and {} journal lines are intact", lines.len());
}

/// qemu-io writing 256 KiB chunks over NBD in a loop, each with its own
/// pattern, until one fails (the pool is fenced).
struct NbdWriter {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    thread: JoinHandle<NbdWrites>,
}

/// Per offset, the pattern of its last acknowledged write and of a write
/// that was never acknowledged (it may or may not have landed).
#[derive(Debug, Default)]
struct NbdWrites {
    acked: BTreeMap<u64, u8>,
    unacked: Option<(u64, u8)>,
}

impl NbdWriter {
    fn start(uri: &str) -> NbdWriter {
        let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (uri, stopping, counter) = (uri.to_string(), Arc::clone(&stop), Arc::clone(&acked));
        let thread = std::thread::spawn(move || {
            let mut writes = NbdWrites::default();
            for k in 0u64.. {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let offset = NBD_WRITER_AT + k % 32 * NBD_CHUNK;
                let pattern = (k % 250 + 1) as u8;
                let out = StdCommand::new("qemu-io")
                    .args(["-f", "raw", "-c", &format!("write -P {pattern} {offset} 256k"), &uri])
                    .output()
                    .unwrap();
                if !out.status.success() || String::from_utf8_lossy(&out.stdout).contains("failed")
                {
                    writes.unacked = Some((offset, pattern));
                    break;
                }
                writes.acked.insert(offset, pattern);
                counter.fetch_add(1, Ordering::Relaxed);
            }
            writes
        });
        NbdWriter { stop, acked, thread }
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    fn stop(self) -> NbdWrites {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

impl NbdWrites {
    /// Read every chunk back: it holds its last acknowledged pattern (or
    /// the unacknowledged one written after it).
    fn assert_read_back(&self, uri: &str) {
        for (&offset, &pattern) in &self.acked {
            let read = |p: u8| {
                let command = format!("read -P {p} {offset} 256k");
                let args = ["-f", "raw", "-c", &command, uri];
                let out = StdCommand::new("qemu-io").args(args).output().unwrap();
                out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("fail")
            };
            let later = self.unacked.filter(|&(at, _)| at == offset).map(|(_, p)| p);
            assert!(
                read(pattern) || later.is_some_and(read),
                "the NBD chunk at {offset} lost its acknowledged pattern {pattern}"
            );
        }
        eprintln!(
            "NBD: fio's 8 MiB and {} acknowledged qemu-io chunks read back",
            self.acked.len()
        );
    }
}
