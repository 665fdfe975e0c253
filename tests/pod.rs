//! The power-outage sequence end to end: a real daemon, real NBD clients
//! and a real RvmFS mount; SIGPWR, the API and a watched file trigger it;
//! then the daemon is SIGKILLed (the power is gone) and started again.

mod common;

use std::io::Write;
use std::process::Command as StdCommand;
use std::time::{Duration, Instant};

use common::fuse::{dir_in, fuse_available};
use common::{stdout_json, Sandbox};
use rustix::process::Signal;
use serde_json::Value;

fn pod_status(sandbox: &Sandbox) -> Value {
    stdout_json(&mut sandbox.on_pool(&["pod", "status"]))
}

fn wait_for_state(sandbox: &Sandbox, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = pod_status(sandbox);
        if status["state"] == state {
            return status;
        }
        assert!(Instant::now() < deadline, "never {state}: {status}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr_of(cmd: &mut assert_cmd::Command) -> String {
    String::from_utf8_lossy(&cmd.assert().failure().get_output().stderr).into_owned()
}

fn qemu_io_available() -> bool {
    let ok = StdCommand::new("qemu-io").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "qemu-io is missing under CI=true");
        eprintln!("SKIPPED: qemu-io (Debian package qemu-utils) is not installed");
    }
    ok
}

fn qemu_io(uri: &str, commands: &[&str]) -> String {
    let mut cmd = StdCommand::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd.arg(uri).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !stdout.contains("failed"),
        "qemu-io {commands:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn phase_names(report: &Value) -> Vec<String> {
    report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap().into())
        .collect()
}

#[test]
fn sigpwr_fences_nbd_and_rvmfs_writes_and_a_restart_opens_from_the_fence() {
    if !qemu_io_available() || !fuse_available() {
        return;
    }
    let sandbox = Sandbox::in_memory();
    sandbox.create_pool_of("128M");
    sandbox.on_pool(&["region", "create", "disk", "--size", "32M"]).assert().success();
    let pool = sandbox.pool();
    let mut daemon = sandbox.serve(&["--pool", pool.to_str().unwrap()]);
    sandbox.on_pool(&["fs", "create", "home", "--size", "16M"]).assert().success();
    let (dir, guard) = dir_in(&sandbox, "home");
    // No periodic commit: only the POD commits what the writer wrote.
    sandbox
        .on_pool(&["fs", "mount", "home"])
        .arg(&dir)
        .args(["-o", "commit=3600"])
        .assert()
        .success();
    stdout_json(&mut sandbox.on_pool(&["export", "add", "disk", "--nbd"]));
    let uri = format!("nbd+unix:///disk?socket={}", sandbox.path("nbd/disk.sock").display());

    // Acknowledged NBD writes, no flush asked for by us.
    qemu_io(&uri, &["write -P 0xab 0 4M", "write -P 0xcd 8M 1M"]);
    // A writer that never closes nor fsyncs its file.
    let mut open = std::fs::File::create(dir.join("log")).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    open.write_all(&data).unwrap();

    daemon.signal(Signal::POWER);
    let status = wait_for_state(&sandbox, "fenced");
    let last = &status["last"];
    assert_eq!(last["source"], "SIGPWR");
    assert_eq!(last["fenced"], true);
    assert_eq!(last["protected"], true);
    assert_eq!(
        phase_names(last),
        ["quiesce", "save-vms", "commit", "flush", "fence-record", "protect"]
    );
    assert!(last["phases"][2]["detail"].as_str().unwrap().contains("1 filesystems committed"));
    let err = stderr_of(&mut sandbox.on_pool(&["region", "create", "late", "--size", "1M"]));
    assert!(err.contains("gate is closed"), "{err}");
    let (code, metrics) = common::try_http(&sandbox.socket(), "GET", "/metrics", None).unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("pmvisor_pod_fenced 1"), "{metrics}");

    // SIGPWR while fenced changes nothing.
    daemon.signal(Signal::POWER);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(pod_status(&sandbox)["last"]["sequence"], 1);

    // The power is gone.
    daemon.kill();
    drop(open);
    drop(guard);
    let info = stdout_json(&mut sandbox.on_pool(&["pool", "info"]));
    assert_eq!(
        (&info["fence"]["state"], &info["fence"]["sequence"]),
        (&"fenced".into(), &1.into())
    );
    let text = sandbox.on_pool(&["pool", "info"]).assert().success().get_output().stdout.clone();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("FENCED by power outage #1 at "), "{text}");

    let _daemon = sandbox.serve(&["--pool", pool.to_str().unwrap()]);
    let info = stdout_json(&mut sandbox.on_pool(&["pool", "info"]));
    assert_eq!(info["fence"]["state"], "lifted", "{info}");
    let status = pod_status(&sandbox);
    assert_eq!(status["state"], "serving");
    assert_eq!(status["start"]["opened_from"], "fence", "{status}");
    assert_eq!(status["start"]["fence"]["sequence"], 1);
    qemu_io(&uri, &["read -P 0xab 0 4M", "read -P 0xcd 8M 1M", "read -P 0 4M 4M"]);
    common::fuse::wait_for("the mount to come back", || dir.join("log").exists());
    assert!(std::fs::read(dir.join("log")).unwrap() == data, "the unsynced file is whole");
    sandbox.on_pool(&["fs", "umount", "home"]).assert().success();
}

#[test]
fn block_io_during_a_fence_waits_and_completes_when_it_is_cancelled() {
    if !qemu_io_available() {
        return;
    }
    let sandbox = Sandbox::in_memory();
    sandbox.create_pool();
    let pool = sandbox.pool();
    let _daemon = sandbox.serve(&["--pool", pool.to_str().unwrap()]);
    sandbox.on_pool(&["region", "create", "disk", "--size", "8M"]).assert().success();
    stdout_json(&mut sandbox.on_pool(&["export", "add", "disk", "--nbd"]));
    let uri = format!("nbd+unix:///disk?socket={}", sandbox.path("nbd/disk.sock").display());
    qemu_io(&uri, &["write -P 0x11 0 1M"]);
    stdout_json(&mut sandbox.on_pool(&["pod", "trigger"]));

    // A client writing while fenced is held, not failed.
    let writer = StdCommand::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x22 0 1M", &uri])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut writer = writer;
    assert!(writer.try_wait().unwrap().is_none(), "the write waits at the fence");

    stdout_json(&mut sandbox.on_pool(&["pod", "cancel"]));
    let out = writer.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !stdout.contains("failed"), "{stdout}");
    qemu_io(&uri, &["read -P 0x22 0 1M"]);
}

#[test]
fn cancel_lifts_the_fence_and_the_next_pod_fences_again() {
    let sandbox = Sandbox::in_memory();
    sandbox.create_pool();
    let pool = sandbox.pool();
    let _daemon =
        sandbox.serve_with(&["--pool", pool.to_str().unwrap()], &["--pod-budget", "40ms"]);
    sandbox.on_pool(&["region", "create", "a", "--size", "4M"]).assert().success();
    let err = stderr_of(&mut sandbox.on_pool(&["pod", "cancel"]));
    assert!(err.contains("the pool is not fenced; there is nothing to cancel"), "{err}");

    let first = stdout_json(&mut sandbox.on_pool(&["pod", "trigger"]));
    assert_eq!((first["sequence"].as_u64(), first["budget_us"].as_u64()), (Some(1), Some(40_000)));
    assert_eq!(first["fenced"], true);
    assert_eq!(first["source"], "api");
    let detail = first["phases"][1]["detail"].as_str().unwrap();
    assert!(detail.starts_with("no participants registered; everything held"), "{detail}");
    let again = stdout_json(&mut sandbox.on_pool(&["pod", "trigger"]));
    assert_eq!(again, first, "a trigger while fenced returns the fence's report");

    let cancel = stdout_json(&mut sandbox.on_pool(&["pod", "cancel"]));
    assert_eq!(cancel["sequence"], 1);
    sandbox.on_pool(&["region", "create", "b", "--size", "4M"]).assert().success();
    let second = stdout_json(&mut sandbox.on_pool(&["pod", "trigger"]));
    assert_eq!(second["sequence"], 2);
    assert_eq!(second["fenced"], true);
    let text = sandbox.on_pool(&["pod", "status"]).assert().success().get_output().stdout.clone();
    let text = String::from_utf8(text).unwrap();
    assert!(text.starts_with("state: fenced; budget 40.0 ms"), "{text}");
    assert!(text.contains("POD #2 from api: fenced in"), "{text}");
    stdout_json(&mut sandbox.on_pool(&["pod", "cancel"]));
    let regions = stdout_json(&mut sandbox.on_pool(&["region", "list"]));
    assert_eq!(regions.as_array().unwrap().len(), 2, "nothing lost: {regions}");
}

#[test]
fn a_watched_power_good_file_fires_and_pod_during_resizes_leaves_a_clean_pool() {
    let sandbox = Sandbox::in_memory();
    sandbox.create_pool();
    let pool = sandbox.pool();
    let online = sandbox.path("online");
    std::fs::write(&online, "1\n").unwrap();
    let source = format!("file:{}", online.display());
    let mut daemon =
        sandbox.serve_with(&["--pool", pool.to_str().unwrap()], &["--pod-source", &source]);
    sandbox.on_pool(&["region", "create", "r", "--size", "1M"]).assert().success();
    // Resizes keep coming while the power fails.
    let resizer = {
        let pool = pool.clone();
        let socket = sandbox.socket();
        std::thread::spawn(move || {
            let mut ok = 0;
            for i in 0..400u64 {
                let size = format!("{}K", 64 * (1 + i % 8));
                let status = assert_cmd::Command::cargo_bin("pmvisor")
                    .unwrap()
                    .env("PMVISOR_POOL", &pool)
                    .env("PMVISOR_SOCKET", &socket)
                    .args(["region", "resize", "r", "--size", &size])
                    .output()
                    .unwrap()
                    .status;
                if !status.success() {
                    return ok;
                }
                ok += 1;
            }
            ok
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&online, "0\n").unwrap();
    let status = wait_for_state(&sandbox, "fenced");
    assert_eq!(status["last"]["source"], source.as_str());
    assert!(status["sources"].as_array().unwrap().contains(&Value::from(source.as_str())));
    let done = resizer.join().unwrap();
    assert!(done < 400, "resizes stop at the fence");
    let size_at_fence = stdout_json(&mut sandbox.on_pool(&["region", "show", "r"]))["size"].clone();
    daemon.kill();

    let check = sandbox.on_pool(&["pool", "check"]).assert().success().get_output().stdout.clone();
    let check = String::from_utf8_lossy(&check);
    assert!(check.contains("No problems found."), "{check}");
    std::fs::write(&online, "1\n").unwrap();
    let _daemon = sandbox.serve(&["--pool", pool.to_str().unwrap()]);
    assert_eq!(pod_status(&sandbox)["start"]["opened_from"], "fence");
    let shown = stdout_json(&mut sandbox.on_pool(&["region", "show", "r"]));
    assert_eq!(shown["size"], size_at_fence, "the fence holds the last resize it let through");
}
