//! Persistent VMs end to end (SPEC §8), through the library the daemon and
//! the power-outage path use: a QEMU TCG guest whose RAM is a `memory`
//! region of a pool in memory runs a counter on its console
//! (tests/vm/guest_counter.sh); [`Vms::save_all`] pauses it and saves its
//! device state (stop, `x-ignore-shared`, migrate to a file; the VM has a
//! qcow2 disk, whose device state goes along); the QEMU is
//! SIGKILLed (the power is gone); a new [`Vms`] (a restarted daemon)
//! resumes the VM in a new QEMU, and the counter goes on from where it
//! stopped with no boot output in between. Then a second save is cancelled
//! ([`Vms::cancel_all`], power back in time) and the counter goes on again.
//!
//! The test prints the timings of each save and resume.
//!
//! A second test does the same through the product: `pmvisor vm create`,
//! `pmvisor serve`, `pmvisor vm start`, SIGPWR to the daemon (the POD
//! sequence saves the VM and fences the pool), SIGKILL to the daemon and
//! QEMU, `pmvisor serve` again and `pmvisor vm resume`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pmvisor::pool::{CreateOptions, Pool};
use pmvisor::vm::{self, ResumeKind, VmPaths, VmSpec, Vms};
use rustix::process::{kill_process, Pid, Signal};

use common::counter::{assert_counts_on, Console, Qemus};
use common::vm as harness;
use common::{http, Sandbox};

/// The VM's name: unique, so its QEMU is told from others on the machine.
const VM: &str = "pmvtest-counter";
/// The VM of the daemon test.
const DAEMON_VM: &str = "pmvtest-daemon";
/// How long the guest may take to boot and count to [`BOOTED_AT`].
const BOOT_DEADLINE: Duration = Duration::from_secs(240);
/// The count at which the guest is considered booted.
const BOOTED_AT: u64 = 5;
/// How long a save may take (the budget a power outage gives is 50 ms; a
/// loaded CI machine gets slack, the timings are printed).
const SAVE_DEADLINE: Duration = Duration::from_secs(5);

#[test]
fn a_saved_vm_resumes_in_a_new_qemu_and_its_counter_goes_on_without_a_reboot() {
    let Some((kernel, initrd, sandbox)) = prerequisites() else { return };
    let pool_path = sandbox.path("vm.pool");
    let options = CreateOptions { size: 256 << 20, ..CreateOptions::default() };
    let pool = Arc::new(Pool::create(&pool_path, &options).expect("the pool is created"));
    let mut spec = VmSpec::new(128 << 20);
    spec.kernel = Some(kernel.join("vmlinuz"));
    spec.initrd = Some(initrd);
    spec.append = Some("console=ttyS0 quiet panic=-1".into());
    spec.qemu_args = vec!["-no-reboot".into()];
    let image = sandbox.path("disk.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("16M")
        .status()
        .expect("qemu-img runs");
    assert!(made.success(), "qemu-img create failed");
    spec.disks.push(vm::spec::parse_disk(image.to_str().unwrap()).unwrap());
    let record = vm::spec::create(&pool, VM, &spec).expect("the VM is registered");
    eprintln!("VM {VM}: RAM is region {} at pool offset {}", record.ram_region, record.ram_offset);
    let paths = VmPaths { run_dir: sandbox.path("run"), state_dir: sandbox.path("state") };
    let console = Console(paths.console(VM));
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // Boot and count.
    let vms = Vms::new(Arc::clone(&pool), paths.clone());
    let started = Instant::now();
    runtime.block_on(vms.start(VM)).expect("the VM starts");
    let mut qemus = Qemus::default();
    qemus.0.extend(vms.pid(VM));
    let booted = console.wait_for(|c| c.last_count() >= Some(BOOTED_AT), started + BOOT_DEADLINE);
    assert!(booted, "the guest did not count to {BOOTED_AT}:\n{}", console.tail());
    eprintln!("booted and counting after {:.1} s", started.elapsed().as_secs_f64());

    // Power fails: save, then kill QEMU.
    let reports = runtime.block_on(vms.save_all(Instant::now() + SAVE_DEADLINE));
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    eprintln!("save: {report:?}");
    assert!(report.saved, "the VM was not saved: {:?}", report.error);
    assert!(report.state_bytes > 0 && report.state_bytes < 16 << 20, "{report:?}");
    assert!(paths.state(VM).is_file());
    let saved_at = console.last_count().expect("the guest counted");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(console.last_count(), Some(saved_at), "the guest counted on after the save");
    let pid = vms.pid(VM).expect("pmvisor launched QEMU");
    kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL).unwrap();
    drop(vms);
    let resumed_from = console.len();

    // Power returns: a new process resumes the VM from its saved state.
    let vms = Vms::new(Arc::clone(&pool), paths.clone());
    let resumed = runtime.block_on(vms.resume(VM)).expect("the VM resumes");
    eprintln!("resume: {resumed:?}");
    qemus.0.extend(vms.pid(VM));
    assert_eq!(resumed.how, ResumeKind::Restore);
    assert!(!paths.state(VM).exists(), "the spent state was not removed");
    let wanted = saved_at + 10;
    let counted = console
        .wait_for(|c| c.last_count() >= Some(wanted), Instant::now() + Duration::from_secs(60));
    let after = console.text_from(resumed_from);
    assert!(
        counted,
        "the resumed guest did not count on to {wanted}; console since the resume:\n{after}"
    );
    assert_counts_on(&after, saved_at);

    // Power flickers: a save that is cancelled lets the guest go on.
    let reports = runtime.block_on(vms.save_all(Instant::now() + SAVE_DEADLINE));
    eprintln!("second save: {:?}", reports[0]);
    assert!(reports[0].saved, "{:?}", reports[0].error);
    let paused_at = console.last_count().unwrap();
    let cancelled_from = console.len();
    let cancelled = runtime.block_on(vms.cancel_all());
    eprintln!("cancel: {cancelled:?}");
    assert!(
        cancelled.len() == 1 && cancelled[0].resumed && cancelled[0].how == ResumeKind::Cont,
        "{cancelled:?}"
    );
    let wanted = paused_at + 10;
    let counted = console
        .wait_for(|c| c.last_count() >= Some(wanted), Instant::now() + Duration::from_secs(60));
    assert!(counted, "the guest did not count on after the cancel:\n{}", console.tail());
    assert_counts_on(&console.text_from(cancelled_from), paused_at);
    assert!(!paths.state(VM).exists(), "a cancelled save left its state behind");

    // The next outage saves it again (a VM left paused by a migration
    // could not migrate again).
    for round in 0..3 {
        let reports = runtime.block_on(vms.save_all(Instant::now() + SAVE_DEADLINE));
        assert!(reports[0].saved, "save after cancel #{round}: {:?}", reports[0].error);
        let cancelled = runtime.block_on(vms.cancel_all());
        assert!(cancelled[0].resumed, "cancel #{round}: {cancelled:?}");
    }
    // A save that runs out of time may leave QEMU migrating; the cancel
    // that follows must still leave the guest running and saveable.
    for wait in [Duration::ZERO, Duration::from_millis(1), Duration::from_millis(3)] {
        let late = runtime.block_on(vms.save_all(Instant::now() + wait));
        eprintln!("a save with {wait:?} to go: saved {}", late[0].saved);
        let cancelled = runtime.block_on(vms.cancel_all());
        assert!(cancelled.iter().all(|c| c.resumed), "cancel after a late save: {cancelled:?}");
        let reports = runtime.block_on(vms.save_all(Instant::now() + SAVE_DEADLINE));
        assert!(reports[0].saved, "save after a late save: {:?}", reports[0].error);
        runtime.block_on(vms.cancel_all());
    }
    let counted = console.last_count().unwrap();
    assert!(
        console.wait_for(
            |c| c.last_count() >= Some(counted + 5),
            Instant::now() + Duration::from_secs(60)
        ),
        "the guest did not count on after the last cancel:\n{}",
        console.tail()
    );

    runtime.block_on(vms.stop(VM)).expect("the VM stops");
    qemus.0.clear();
}

#[test]
fn after_sigpwr_and_a_kill_of_everything_the_daemon_resumes_the_vm_where_it_stopped() {
    let Some((kernel, initrd, sandbox)) = prerequisites() else { return };
    let pool = sandbox.pool();
    sandbox.create_pool_of("256M");
    let vmlinuz = kernel.join("vmlinuz");
    sandbox
        .on_pool(&[
            "vm",
            "create",
            DAEMON_VM,
            "--memory",
            "128M",
            "--kernel",
            vmlinuz.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--append",
            "console=ttyS0 quiet panic=-1",
            "--qemu-arg=-no-reboot",
        ])
        .assert()
        .success();
    let pool_arg = ["--pool", pool.to_str().unwrap()];
    let mut daemon = sandbox.serve(&pool_arg);
    let started = Instant::now();
    sandbox.on_pool(&["vm", "start", DAEMON_VM]).assert().success();
    let paths = VmPaths::for_daemon(&sandbox.socket(), &sandbox.path("state"));
    let console = Console(paths.console(DAEMON_VM));
    let booted = console.wait_for(|c| c.last_count() >= Some(BOOTED_AT), started + BOOT_DEADLINE);
    assert!(booted, "the guest did not count to {BOOTED_AT}:\n{}", console.tail());
    let (status, view) = http(&sandbox.socket(), "GET", &format!("/v1/vms/{DAEMON_VM}"), None);
    assert_eq!((status, view["state"].as_str()), (200, Some("running")), "{view}");
    let qemu = view["pid"].as_u64().expect("the daemon launched QEMU") as i32;
    let mut qemus = Qemus(vec![qemu as u32]);

    // The power fails: SIGPWR, then everything dies.
    daemon.signal(Signal::POWER);
    let state = paths.state(DAEMON_VM);
    let saved = console.wait_for(|_| state.is_file(), Instant::now() + Duration::from_secs(10));
    assert!(saved, "SIGPWR did not save the VM: {}", daemon.log_text());
    std::thread::sleep(Duration::from_millis(300));
    let saved_at = console.last_count().unwrap();
    daemon.kill();
    kill_process(Pid::from_raw(qemu).unwrap(), Signal::KILL).unwrap();
    let resumed_from = console.len();

    // The power returns.
    let _daemon = sandbox.serve(&pool_arg);
    let out = sandbox.on_pool(&["vm", "resume", DAEMON_VM]).assert().success();
    eprintln!("{}", String::from_utf8_lossy(&out.get_output().stdout).trim());
    let wanted = saved_at + 10;
    let counted = console
        .wait_for(|c| c.last_count() >= Some(wanted), Instant::now() + Duration::from_secs(60));
    let after = console.text_from(resumed_from);
    assert!(counted, "the resumed guest did not count on to {wanted}; console since:\n{after}");
    assert_counts_on(&after, saved_at);
    let (_, list) = http(&sandbox.socket(), "GET", "/v1/vms", None);
    assert_eq!(list[0]["state"], "running", "{list}");
    qemus.0.extend(list[0]["pid"].as_u64().map(|pid| pid as u32));
    sandbox.on_pool(&["vm", "stop", DAEMON_VM]).assert().success();
    qemus.0.clear();
}

/// The kernel, the counter initramfs and a sandbox in memory; `None` (the
/// test is skipped, or fails under CI) when a prerequisite is missing.
fn prerequisites() -> Option<(PathBuf, PathBuf, Sandbox)> {
    let tools = [harness::VM_TOOLS.as_slice(), &[("qemu-img", "qemu-utils")]].concat();
    if let Err(why) = harness::check_tools(&tools) {
        harness::skip("persistent VM", &why);
        return None;
    }
    let qemu = harness::which("qemu-system-x86_64").expect("checked above");
    if let Err(err) = vm::version::check_binary(&qemu) {
        harness::skip("persistent VM", &err.to_string());
        return None;
    }
    let kernel = match harness::kernel() {
        Ok(kernel) => kernel,
        Err(why) => {
            harness::skip("persistent VM", &why);
            return None;
        }
    };
    let sandbox = Sandbox::in_memory();
    let initrd = sandbox.path("initrd.gz");
    harness::initramfs(&kernel, &["tests/vm/guest_counter.sh"], &initrd, &[], &[]);
    Some((kernel, initrd, sandbox))
}
