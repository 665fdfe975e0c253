//! `pmvisor vm ...` without a guest: registering, listing, the QEMU command
//! line and the errors a person gets, with and without a daemon. A fake
//! `qemu-system-x86_64` of version 7.2 (`PMVISOR_QEMU`) checks that an old
//! QEMU is refused with a sentence saying what is needed and where Debian
//! 12 gets it.

mod common;

use std::os::unix::fs::PermissionsExt;

use predicates::str::contains;

use common::{http, stdout_json, Sandbox};

#[test]
fn vms_are_registered_listed_described_and_refused_with_sentences() {
    let sandbox = Sandbox::new();
    sandbox.create_pool();
    let pool = std::fs::canonicalize(sandbox.pool()).unwrap();

    // Without a daemon: the records.
    sandbox
        .on_pool(&["vm", "create", "web", "--memory", "16M", "--cpus", "2", "--kernel", "/boot/k"])
        .assert()
        .success()
        .stdout(contains("Created VM web: 16.0 MiB of RAM in memory region web.ram"));
    let list = stdout_json(&mut sandbox.on_pool(&["vm", "list"]));
    assert_eq!(list[0]["name"], "web");
    assert_eq!(
        (list[0]["state"].as_str(), list[0]["memory"].as_u64()),
        (Some("stopped"), Some(16 << 20))
    );
    let offset = list[0]["ram_offset"].as_u64().unwrap();
    let region = stdout_json(&mut sandbox.on_pool(&["region", "show", "web.ram"]));
    assert_eq!(region["kind"], "memory");
    let args = stdout_json(&mut sandbox.on_pool(&["vm", "qemu-args", "web"]));
    let args: Vec<String> = serde_json::from_value(args["args"].clone()).unwrap();
    let backend = format!(
        "memory-backend-file,id=pmvisor-ram,mem-path={},offset={offset},size=16M,share=on",
        pool.display()
    );
    assert!(args.contains(&backend), "{args:?}");
    sandbox.on_pool(&["vm", "start", "web"]).assert().failure().stderr(contains(
        "`pmvisor vm start` needs the daemon, which keeps the VMs' QEMU processes, and none is running",
    ));
    sandbox.on_pool(&["vm", "create", "web", "--memory", "16M"]).assert().failure().stderr(
        "error: a VM named web exists already; pick another name or delete it with `pmvisor vm delete web`\n",
    );
    sandbox
        .on_pool(&["vm", "create", "db", "--memory", "16M", "--disk", "./missing.qcow2"])
        .assert()
        .failure()
        .stderr(contains("cannot read the disk image"));

    // With a daemon, and a QEMU too old for persistent VMs.
    let fake = sandbox.path("qemu-7.2");
    std::fs::write(&fake, "#!/bin/sh\necho 'QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)'\n")
        .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The daemon inherits it; this binary has this one test, so no other
    // thread reads the environment meanwhile.
    std::env::set_var("PMVISOR_QEMU", &fake);
    let _daemon = sandbox.serve(&["--pool", sandbox.pool().to_str().unwrap()]);
    std::env::remove_var("PMVISOR_QEMU");
    sandbox.on_pool(&["vm", "start", "web"]).assert().failure().stderr(
        "error: QEMU 7.2.22 is too old for persistent VMs: they need QEMU 8.2.0 or newer \
         (memory-backend-file offset= and migration to file:); Debian 12 gets QEMU 10 from \
         bookworm-backports: `apt-get install -t bookworm-backports qemu-system-x86 qemu-utils` \
         (scripts/setup does it)\n",
    );
    sandbox
        .on_pool(&["vm", "resume", "web"])
        .assert()
        .failure()
        .stderr(contains("VM web has no saved state at"));
    let (status, body) = http(&sandbox.socket(), "POST", "/v1/vms/web/save", None);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "VM web is not running; start it with `pmvisor vm start web`");
    sandbox.on_pool(&["vm", "create", "db", "--memory", "8M"]).assert().success();
    let list = stdout_json(&mut sandbox.on_pool(&["vm", "list"]));
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    sandbox.on_pool(&["vm", "delete", "db"]).assert().success();
    let (status, _) = http(&sandbox.socket(), "GET", "/v1/regions/db.ram", None);
    assert_eq!(status, 404);
}
