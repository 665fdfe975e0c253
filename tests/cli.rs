//! The `pmvisor` CLI without a daemon: every command run as a real process
//! on pools in temporary directories.
//!
//! Every command runs with `PMVISOR_STATE_DIR`, `PMVISOR_SOCKET` and
//! `PMVISOR_CONFIG` pointing into the test's own directory, so no test ever
//! touches `/var/lib`, `/run` or `/etc`.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::{contains, starts_with};
use serde_json::Value;
use tempfile::TempDir;

/// A private directory with a state dir, a socket path and an empty config.
struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pmvisor.toml"), "").unwrap();
        Sandbox { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// `pmvisor` with the sandbox's environment and no pool named.
    fn pmvisor(&self) -> Command {
        let mut cmd = Command::cargo_bin("pmvisor").unwrap();
        cmd.env("PMVISOR_STATE_DIR", self.state_dir())
            .env("PMVISOR_SOCKET", self.path("pmvisor.sock"))
            .env("PMVISOR_CONFIG", self.path("pmvisor.toml"))
            .env_remove("PMVISOR_POOL")
            .env_remove("PMVISOR_LOG")
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path());
        cmd
    }

    /// `pmvisor --pool <sandbox>/test.pool ARGS`.
    fn on_pool(&self, args: &[&str]) -> Command {
        let mut cmd = self.pmvisor();
        cmd.arg("--pool").arg(self.path("test.pool")).args(args);
        cmd
    }

    /// Create `test.pool` of `size`.
    fn create_pool(&self, size: &str) {
        self.pmvisor()
            .args(["pool", "create", "--size", size])
            .arg(self.path("test.pool"))
            .assert()
            .success();
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.on_pool(args).arg("--json").assert().success();
        serde_json::from_slice(&out.get_output().stdout).unwrap()
    }
}

/// Assert a one-line `error: ...` containing `fragment` and exit status 1.
fn fails_with(cmd: &mut Command, fragment: &str) {
    let out = cmd.assert().code(1).stderr(contains(fragment));
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, got: {stderr}");
}

#[test]
fn pool_create_info_and_check() {
    let sandbox = Sandbox::new();
    sandbox
        .pmvisor()
        .args(["pool", "create", "--size", "64M", "test.pool"])
        .assert()
        .success()
        .stdout(contains("Created pool test.pool: 64.0 MiB"));

    sandbox
        .on_pool(&["pool", "info"])
        .assert()
        .success()
        .stdout(contains("size:").and(contains("64.0 MiB")).and(contains("regions:")));

    let info = sandbox.json(&["pool", "info"]);
    assert_eq!(info["size"], 64 << 20);
    assert_eq!(info["page_size"], 4096);
    assert_eq!(info["regions"], 0);
    assert_eq!(info["free_pages"], info["data_pages"]);

    sandbox.on_pool(&["pool", "check"]).assert().success().stdout(contains("No problems found."));
    let check = sandbox.json(&["pool", "check"]);
    assert_eq!(check["problems"], Value::Array(vec![]));
}

#[test]
fn pool_create_honours_metadata_size_and_refuses_an_existing_file() {
    let sandbox = Sandbox::new();
    sandbox
        .pmvisor()
        .args(["pool", "create", "--size", "16M", "--metadata-size", "256K", "--json"])
        .arg(sandbox.path("test.pool"))
        .assert()
        .success();
    // The metadata area is what was asked for plus the two superblock pages.
    assert_eq!(sandbox.json(&["pool", "info"])["metadata_size"], (256 << 10) + 2 * 4096);
    fails_with(
        sandbox.pmvisor().args(["pool", "create", "--size", "16M"]).arg(sandbox.path("test.pool")),
        "already exists; choose another path or remove it first",
    );
}

#[test]
fn check_reports_damage_in_plain_words_and_repair_fixes_it() {
    let sandbox = Sandbox::new();
    sandbox.create_pool("16M");
    sandbox.on_pool(&["region", "create", "a", "--size", "1M"]).assert().success();
    // Damage superblock copy B (page 1) past its magic.
    let file = OpenOptions::new().write(true).open(sandbox.path("test.pool")).unwrap();
    file.write_all_at(&[0xee; 16], 4096 + 20).unwrap();
    drop(file);

    sandbox
        .on_pool(&["pool", "check"])
        .assert()
        .code(1)
        .stdout(contains("problem: superblock copy B is damaged"))
        .stderr(contains("error: 1 problem remains in pool"))
        .stderr(contains("run `pmvisor pool check --repair`"));

    sandbox
        .on_pool(&["pool", "check", "--repair"])
        .assert()
        .success()
        .stdout(contains("repaired: wrote a fresh checkpoint"))
        .stdout(contains("No problems found."));
    sandbox.on_pool(&["pool", "check"]).assert().success();
    assert_eq!(sandbox.json(&["region", "list"])[0]["name"], "a");
}

#[test]
fn region_lifecycle_with_tables_and_json() {
    let sandbox = Sandbox::new();
    sandbox.create_pool("64M");
    sandbox.on_pool(&["region", "list"]).assert().success().stdout(contains("No regions yet"));
    sandbox
        .on_pool(&["region", "create", "vm1", "--size", "8M"])
        .assert()
        .success()
        .stdout("Created block region vm1: 8.0 MiB, resident quota 8.0 MiB, swap off.\n");
    sandbox
        .on_pool(&["region", "create", "ram", "--size", "4MiB", "--kind", "memory"])
        .assert()
        .success();
    sandbox
        .on_pool(&["region", "create", "meta", "--size", "1.5M", "--kind", "fs"])
        .assert()
        .success();

    let table = sandbox.on_pool(&["region", "list"]).assert().success();
    let table = String::from_utf8_lossy(&table.get_output().stdout).to_string();
    let lines: Vec<_> = table.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("SIZE"), "{table}");
    assert!(
        lines.iter().any(|l| l.starts_with("vm1") && l.contains("block") && l.contains("8.0 MiB")),
        "{table}"
    );
    assert!(lines.iter().any(|l| l.starts_with("ram") && l.contains("memory")), "{table}");
    assert!(lines.iter().all(|l| l == &l.trim_end()), "trailing blanks: {table:?}");

    let list = sandbox.json(&["region", "list"]);
    let names: Vec<_> =
        list.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["meta", "ram", "vm1"]);
    assert_eq!(list[2]["block"]["size"], 8 << 20);
    assert_eq!(list[2]["block"]["resident_quota"], 8 << 20);
    // Frames are taken as blocks are written: the region holds its map.
    assert_eq!(list[2]["size"], 4 * 4096, "the block map takes 4 pages");
    assert_eq!(list[1]["block"], Value::Null);
    assert_eq!(list[1]["kind"], "memory");
    assert!(list[1]["offset"].is_u64());
    assert_eq!(list[0]["size"], 3 << 19);

    sandbox
        .on_pool(&["region", "show", "vm1"])
        .assert()
        .success()
        .stdout(contains("name:").and(contains("vm1")).and(contains("8.0 MiB (8388608 bytes)")));

    let renamed = sandbox.json(&["region", "rename", "vm1", "vm2"]);
    assert_eq!(renamed["name"], "vm2");
    sandbox
        .on_pool(&["region", "rename", "vm2", "vm3"])
        .assert()
        .success()
        .stdout("Renamed region vm2 to vm3.\n");

    sandbox
        .on_pool(&["region", "resize", "meta", "--size", "16M"])
        .assert()
        .success()
        .stdout("Resized region meta to 16.0 MiB.\n");
    assert_eq!(sandbox.json(&["region", "resize", "meta", "--size", "2M"])["size"], 2 << 20);
    assert_eq!(sandbox.json(&["region", "show", "meta"])["size"], 2 << 20);
    sandbox.on_pool(&["region", "resize", "vm3", "--resident", "2M"]).assert().success().stdout(
        starts_with("Set the resident quota of block region vm3 to 2.0 MiB.\n")
            .and(contains("freed 0 blocks"))
            .and(contains("(no agent asked)")),
    );
    assert_eq!(sandbox.json(&["region", "show", "vm3"])["block"]["resident_quota"], 2 << 20);

    sandbox
        .on_pool(&["region", "delete", "vm3"])
        .assert()
        .success()
        .stdout("Deleted region vm3.\n");
    assert_eq!(sandbox.json(&["region", "delete", "meta"])["deleted"], "meta");
    let list = sandbox.json(&["region", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(sandbox.json(&["pool", "info"])["regions"], 1);
}

#[test]
fn the_default_pool_is_created_on_demand_in_the_state_dir() {
    let sandbox = Sandbox::new();
    let default_pool = sandbox.state_dir().join("default.pool");
    sandbox
        .pmvisor()
        .args(["region", "create", "first", "--size", "1M"])
        .assert()
        .success()
        .stderr(contains("note: creating the default pool").and(contains("4.0 GiB sparse file")));
    let meta = std::fs::metadata(&default_pool).unwrap();
    assert_eq!(meta.len(), 4 << 30);
    assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 64 << 20, "not sparse");
    // The second run finds it and says nothing about creating it.
    sandbox
        .pmvisor()
        .args(["region", "list"])
        .assert()
        .success()
        .stdout(contains("first"))
        .stderr(predicate::str::is_empty());
}

#[test]
fn checking_a_default_pool_that_does_not_exist_yet_creates_it_once() {
    let sandbox = Sandbox::new();
    let out = sandbox.pmvisor().args(["pool", "check"]).assert().success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert_eq!(stderr.matches("note: creating the default pool").count(), 1, "{stderr}");
    assert!(sandbox.state_dir().join("default.pool").exists());
}

#[test]
fn the_config_file_names_the_pool_and_the_default_size() {
    let sandbox = Sandbox::new();
    std::fs::write(sandbox.path("pmvisor.toml"), "default_pool_size = \"32M\"\n").unwrap();
    sandbox.pmvisor().args(["pool", "info", "--json"]).assert().success();
    let meta = std::fs::metadata(sandbox.state_dir().join("default.pool")).unwrap();
    assert_eq!(meta.len(), 32 << 20);

    sandbox.create_pool("16M");
    std::fs::write(sandbox.path("pmvisor.toml"), "pool = \"test.pool\"\n").unwrap();
    let out = sandbox.pmvisor().args(["pool", "info", "--json"]).assert().success();
    let info: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(info["size"], 16 << 20);
}

#[test]
fn an_unknown_config_key_names_the_key_and_the_file() {
    let sandbox = Sandbox::new();
    std::fs::write(sandbox.path("pmvisor.toml"), "pool = \"a\"\ncolour = \"blue\"\n").unwrap();
    fails_with(
        sandbox.pmvisor().args(["region", "list"]),
        "pmvisor.toml, line 2: unknown field `colour`",
    );
}

#[test]
fn a_named_pool_that_does_not_exist_is_not_created() {
    let sandbox = Sandbox::new();
    let missing = sandbox.path("missing.pool");
    fails_with(
        sandbox.pmvisor().arg("--pool").arg(&missing).args(["region", "list"]),
        &format!(
            "pool {} does not exist; create it with `pmvisor pool create --size SIZE {}`",
            missing.display(),
            missing.display()
        ),
    );
    fails_with(
        sandbox.pmvisor().env("PMVISOR_POOL", &missing).args(["pool", "check"]),
        "does not exist; create it with `pmvisor pool create",
    );
    assert!(!missing.exists());
    assert!(!sandbox.state_dir().exists());
}

#[test]
fn bad_pools_are_refused_with_the_fix() {
    let sandbox = Sandbox::new();
    fails_with(
        sandbox.pmvisor().args(["pool", "create", "--size", "4096", "small.pool"]),
        "a pool of 4096 bytes is too small: it needs at least",
    );
    assert!(!sandbox.path("small.pool").exists());

    std::fs::create_dir(sandbox.path("dir")).unwrap();
    fails_with(
        sandbox.pmvisor().args(["--pool", "dir", "pool", "info"]),
        "dir is a directory, not a pool; give a regular file",
    );
    fails_with(
        sandbox.pmvisor().args(["--pool", "/dev/null", "region", "list"]),
        "/dev/null is a character device that is not device-DAX, not a pool",
    );
    std::fs::write(sandbox.path("junk.pool"), vec![7u8; 1 << 20]).unwrap();
    fails_with(
        sandbox.pmvisor().args(["--pool", "junk.pool", "pool", "info"]),
        "junk.pool is not a pmvisor pool",
    );
}

#[test]
fn bad_sizes_are_usage_errors_that_show_what_a_size_looks_like() {
    let sandbox = Sandbox::new();
    for size in ["12X", "lots", "-1G", "1.2.3G", "0.1K", "20E"] {
        sandbox
            .on_pool(&["region", "create", "r", "--size", size])
            .assert()
            .code(2)
            .stderr(contains(format!("invalid size `{size}`")))
            .stderr(contains("such as 4096, 64M, 512MiB, 1.5G or 2T"));
    }
    sandbox
        .pmvisor()
        .args(["pool", "create", "--size", "4Q", "p.pool"])
        .assert()
        .code(2)
        .stderr(contains("the unit is not one of K, M, G, T, P, E"));
}

#[test]
fn bad_region_names_are_refused() {
    let sandbox = Sandbox::new();
    sandbox.create_pool("16M");
    sandbox.on_pool(&["region", "create", "taken", "--size", "1M"]).assert().success();
    let long = "a".repeat(65);
    for (name, fragment) in [
        ("taken", "region \"taken\" already exists; pick another name or delete it first"),
        ("", "invalid region name \"\": a name cannot be empty"),
        (long.as_str(), "a name can have at most 64 bytes"),
        ("a/b", "invalid region name \"a/b\": a name cannot contain '/'"),
    ] {
        fails_with(&mut sandbox.on_pool(&["region", "create", name, "--size", "1M"]), fragment);
    }
    fails_with(
        &mut sandbox.on_pool(&["region", "rename", "taken", "a/b"]),
        "a name cannot contain '/'",
    );
    assert_eq!(sandbox.json(&["region", "list"]).as_array().unwrap().len(), 1);
}

#[test]
fn a_region_too_big_for_the_pool_is_refused_and_nothing_changes() {
    let sandbox = Sandbox::new();
    sandbox.create_pool("16M");
    let before = sandbox.json(&["pool", "info"]);
    fails_with(
        &mut sandbox.on_pool(&["region", "create", "huge", "--size", "1G", "--kind", "fs"]),
        "region \"huge\" needs 262144 pages but the pool has only",
    );
    fails_with(
        &mut sandbox.on_pool(&["region", "create", "disk", "--size", "1G"]),
        "a resident quota of 262144 pages for block region \"disk\" (with its 512-page block \
         map) is more than the whole pool's",
    );
    sandbox
        .on_pool(&["region", "create", "small", "--size", "1M", "--kind", "fs"])
        .assert()
        .success();
    fails_with(
        &mut sandbox.on_pool(&["region", "resize", "small", "--size", "2G"]),
        "delete or shrink regions, or use a larger pool",
    );
    let after = sandbox.json(&["pool", "info"]);
    assert_eq!(after["regions"], 1);
    assert_eq!(before["free_pages"].as_u64().unwrap() - after["free_pages"].as_u64().unwrap(), 256);
}

#[test]
fn an_unknown_region_says_how_to_list_regions() {
    let sandbox = Sandbox::new();
    sandbox.create_pool("16M");
    let fragment = "no region named \"ghost\"; `pmvisor region list` shows the regions";
    fails_with(&mut sandbox.on_pool(&["region", "show", "ghost"]), fragment);
    fails_with(&mut sandbox.on_pool(&["region", "delete", "ghost"]), fragment);
    fails_with(&mut sandbox.on_pool(&["region", "rename", "ghost", "x"]), fragment);
    fails_with(&mut sandbox.on_pool(&["region", "resize", "ghost", "--size", "1M"]), fragment);
}

#[test]
fn usage_errors_exit_with_status_two() {
    let sandbox = Sandbox::new();
    sandbox.pmvisor().args(["region", "create", "x"]).assert().code(2).stderr(contains("--size"));
    sandbox
        .pmvisor()
        .args(["region", "create", "x", "--size", "1M", "--kind", "disk"])
        .assert()
        .code(2);
    sandbox.pmvisor().arg("frobnicate").assert().code(2);
}

#[test]
fn block_region_options_are_checked_with_a_sentence() {
    let sandbox = Sandbox::new();
    sandbox.create_pool("32M");
    fails_with(
        &mut sandbox.on_pool(&["region", "create", "d", "--size", "4M", "--resident", "8M"]),
        "a resident quota of 8.0 MiB is larger than the virtual size 4.0 MiB of block region \
         \"d\"; give a quota of at most 4.0 MiB",
    );
    fails_with(
        &mut sandbox.on_pool(&["region", "create", "f", "--size", "1M", "--kind", "fs", "--swap"]),
        "a resident quota and swap are for block regions only; leave them out for the fs region",
    );
    sandbox
        .on_pool(&["region", "create", "d", "--size", "4M", "--resident", "1M", "--swap"])
        .assert()
        .success()
        .stdout("Created block region d: 4.0 MiB, resident quota 1.0 MiB, swap on.\n");
    sandbox.on_pool(&["region", "create", "f", "--size", "1M", "--kind", "fs"]).assert().success();

    fails_with(
        &mut sandbox.on_pool(&["region", "resize", "d", "--size", "8M"]),
        "block region \"d\" has a fixed virtual size of 4.0 MiB; change its resident quota with \
         `pmvisor region resize d --resident SIZE`",
    );
    fails_with(
        &mut sandbox.on_pool(&["region", "resize", "f", "--resident", "1M"]),
        "region \"f\" is a fs region, which has no resident quota; resize it with `pmvisor \
         region resize f --size SIZE`",
    );
    fails_with(
        &mut sandbox.on_pool(&["region", "stats", "f"]),
        "region \"f\" is a fs region; stats are kept for block regions only",
    );
    sandbox.on_pool(&["region", "resize", "d"]).assert().code(2).stderr(contains("--size"));
    sandbox
        .on_pool(&["region", "resize", "d", "--size", "1M", "--resident", "1M"])
        .assert()
        .code(2)
        .stderr(contains("cannot be used with"));

    // Without a daemon the stats are the occupancy; the counters start at zero.
    let stats = sandbox.json(&["region", "stats", "d"]);
    assert_eq!(stats["size"], 4 << 20);
    assert_eq!(stats["resident_quota"], 1 << 20);
    assert_eq!((stats["resident_blocks"].as_u64(), stats["reads"].as_u64()), (Some(0), Some(0)));
    assert_eq!(stats["mrr"], 1.0);
    sandbox
        .on_pool(&["region", "stats", "d"])
        .assert()
        .success()
        .stdout(contains("resident quota:  1.0 MiB").and(contains("MRR:             1.000")));
    let show = sandbox.on_pool(&["region", "show", "d"]).assert().success();
    let show = String::from_utf8_lossy(&show.get_output().stdout).to_string();
    let row = |key: &str| {
        let line = show.lines().find(|l| l.starts_with(key)).unwrap_or_default();
        line[key.len()..].trim().to_string()
    };
    assert_eq!(
        (row("size:"), row("resident quota:"), row("swap:")),
        ("4.0 MiB (4194304 bytes)".to_string(), "1.0 MiB".to_string(), "on".to_string())
    );
    sandbox.on_pool(&["region", "delete", "d"]).assert().success();
    assert!(sandbox.path("test.pool.swap").exists(), "the swap tier lies beside the pool");
}

#[test]
fn exports_without_a_daemon_say_to_start_one() {
    let sandbox = Sandbox::new();
    sandbox.create_pool("16M");
    sandbox.on_pool(&["region", "create", "d", "--size", "1M"]).assert().success();
    fails_with(
        &mut sandbox.on_pool(&["export", "add", "d", "--nbd"]),
        "exports are served by the daemon and none is running for pool",
    );
    fails_with(
        &mut sandbox.on_pool(&["export", "add", "ghost", "--nbd"]),
        "no region named \"ghost\"",
    );
    fails_with(
        &mut sandbox.on_pool(&["export", "remove", "d"]),
        "region \"d\" is not exported; `pmvisor export list` shows the exports",
    );
    sandbox.on_pool(&["export", "list"]).assert().success().stdout(contains("No exports"));
    sandbox.on_pool(&["export", "add", "d"]).assert().code(2).stderr(contains("--nbd"));
    sandbox
        .on_pool(&["export", "add", "d", "--nbd", "--ublk"])
        .assert()
        .code(2)
        .stderr(contains("cannot be used with"));
}

#[test]
fn an_agent_attached_without_a_daemon_is_recorded_for_it() {
    let sandbox = Sandbox::new();
    sandbox.create_pool("64M");
    sandbox.on_pool(&["region", "create", "d", "--size", "4M", "--swap"]).assert().success();
    sandbox
        .on_pool(&["region", "attach-agent", "d", "serial:/run/pmvisor/agents/d.sock"])
        .assert()
        .success()
        .stdout(
            "Recorded the agent of block region d at serial:/run/pmvisor/agents/d.sock (disk \
             serial pmv-d, deadline 200 ms); the daemon reaches it when it starts.\n",
        );
    let shown = sandbox.json(&["region", "show", "d"]);
    assert_eq!(shown["attrs"]["agent.address"], "serial:/run/pmvisor/agents/d.sock");
    fails_with(
        &mut sandbox.on_pool(&["region", "qemu-args", "d"]),
        "block region d is not exported; export it over NBD first",
    );
    sandbox
        .on_pool(&["region", "resize", "d", "--deadline", "soon", "--resident", "1M"])
        .assert()
        .code(2)
        .stderr(contains("invalid time `soon`"));
    let resized = sandbox.json(&["region", "resize", "d", "--resident", "1M"]);
    assert!(resized["resize"]["agent"].is_null(), "{resized}");
    sandbox
        .on_pool(&["region", "detach-agent", "d"])
        .assert()
        .success()
        .stdout("Detached the agent of block region d.\n");
    fails_with(
        &mut sandbox.on_pool(&["region", "detach-agent", "d"]),
        "region \"d\" has no agent; attach one with `pmvisor region attach-agent d serial:PATH`",
    );
}
