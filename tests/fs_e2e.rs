//! RvmFS end to end, with real processes and real FUSE mounts: the daemon
//! serving mounts (and restoring them after a restart), the detached server
//! without a daemon, `mount -t fuse.rvmfs` through the installed helper, and
//! a SIGKILL crash loop checking that the tree after every crash is one
//! committed prefix of the writer's operations, with every fsync kept.
//!
//! FUSE missing: the tests fail under `CI=true` and are skipped loudly
//! otherwise.

mod common;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fuse::{dir_in, fuse_available, mount_8, umount_8, wait_for, MountGuard, SystemHelper};
use common::{stdout_json, Sandbox};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustix::process::Signal;

fn mounted(dir: &Path, region: &str) -> bool {
    pmvisor::fs::mountinfo::rvmfs_at(dir).unwrap().is_some_and(|m| m.source == region)
}

fn stderr_of(cmd: &mut assert_cmd::Command) -> String {
    String::from_utf8_lossy(&cmd.assert().failure().get_output().stderr).into_owned()
}

#[test]
fn the_daemon_serves_mounts_refuses_doubles_and_restores_them_after_a_restart() {
    if !fuse_available() {
        return;
    }
    let sandbox = Sandbox::in_memory();
    sandbox.create_pool();
    let pool = sandbox.pool();
    let mut daemon = sandbox.serve(&["--pool", pool.to_str().unwrap()]);
    let (dir, _guard) = dir_in(&sandbox, "home");
    let (other, _other_guard) = dir_in(&sandbox, "other");
    sandbox.on_pool(&["fs", "create", "home", "--size", "16M"]).assert().success();
    sandbox.on_pool(&["fs", "mount", "home"]).arg(&dir).args(["-o", "commit=1"]).assert().success();
    std::fs::write(dir.join("a.txt"), b"alpha").unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/b.txt"), vec![7u8; 100_000]).unwrap();

    let list = stdout_json(&mut sandbox.on_pool(&["fs", "list"]));
    assert_eq!(list[0]["region"], "home");
    assert_eq!(list[0]["mountpoint"], dir.canonicalize().unwrap().to_str().unwrap());
    assert!(list[0]["used"].as_u64().unwrap() > 100_000, "{list}");
    let err = stderr_of(sandbox.on_pool(&["fs", "mount", "home"]).arg(&other));
    assert!(err.contains("region \"home\" is already mounted at"), "{err}");
    let err = stderr_of(&mut sandbox.on_pool(&["region", "delete", "home"]));
    assert!(err.contains("unmount it first with `pmvisor fs umount home`"), "{err}");

    sandbox.on_pool(&["fs", "umount", "home"]).assert().success();
    assert!(!dir.join("a.txt").exists());
    sandbox.on_pool(&["fs", "mount", "home"]).arg(&dir).assert().success();
    assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"alpha");

    daemon.signal(Signal::TERM);
    assert!(daemon.wait().success(), "{}", daemon.log_text());
    assert!(!mounted(&dir, "home"), "SIGTERM unmounts");
    let _daemon = sandbox.serve(&["--pool", pool.to_str().unwrap()]);
    assert!(mounted(&dir, "home"), "a restarted daemon mounts it again");
    assert_eq!(std::fs::read(dir.join("sub/b.txt")).unwrap(), vec![7u8; 100_000]);
    sandbox.on_pool(&["fs", "check", "home"]).assert().success();
    sandbox.on_pool(&["fs", "umount"]).arg(&dir).assert().success();
}

#[test]
fn a_detached_server_and_mount_t_fuse_rvmfs_work_with_and_without_a_daemon() {
    if !fuse_available() {
        return;
    }
    let sandbox = Sandbox::in_memory();
    sandbox.create_pool();
    let pool = sandbox.pool();
    let (dir, _guard) = dir_in(&sandbox, "mnt");
    let (other, _other_guard) = dir_in(&sandbox, "other");
    sandbox.on_pool(&["fs", "create", "home", "--size", "16M"]).assert().success();

    // Without a daemon: a detached server per mount.
    sandbox.on_pool(&["fs", "mount", "home"]).arg(&dir).args(["-o", "commit=2"]).assert().success();
    std::fs::write(dir.join("x"), b"detached").unwrap();
    let err = stderr_of(sandbox.on_pool(&["fs", "mount", "home"]).arg(&other));
    assert!(err.contains("region \"home\" is already mounted at"), "{err}");
    assert!(err.contains("served by PID"), "{err}");
    let list = stdout_json(&mut sandbox.on_pool(&["fs", "list"]));
    assert_eq!(list[0]["region"], "home", "{list}");
    assert_eq!(list[0]["options"], "commit=2", "the options it was mounted with: {list}");
    // A file held open keeps the mount busy past the moment `fs umount`
    // waits out; right after it is closed the unmount goes through.
    let open = File::create(dir.join("open")).unwrap();
    let err = stderr_of(&mut sandbox.on_pool(&["fs", "umount", "home"]));
    assert!(err.contains("close what is open in it"), "{err}");
    drop(open);
    sandbox.on_pool(&["fs", "umount", "home"]).assert().success();
    sandbox.on_pool(&["pool", "check"]).assert().success();

    // `pmvisor install --prefix` makes the link and is idempotent.
    let prefix = sandbox.path("prefix");
    sandbox.pmvisor().args(["install", "--prefix"]).arg(&prefix).assert().success();
    let out = sandbox.pmvisor().args(["install", "--prefix"]).arg(&prefix).assert().success();
    assert!(String::from_utf8_lossy(&out.get_output().stdout).contains("nothing to do"));

    // mount(8) looks for helpers in /sbin only.
    let _helper = SystemHelper::install(&sandbox);
    let options = format!("commit=1,pool={}", pool.display());
    let out = mount_8(&sandbox, "home", &dir, &options);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(dir.join("x")).unwrap(), b"detached");
    std::fs::write(dir.join("y"), b"via mount(8)").unwrap();
    let out = umount_8(&dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the server to commit and release the pool", || {
        sandbox.on_pool(&["pool", "check"]).output().unwrap().status.success()
    });

    // With a daemon: the helper asks the daemon to serve it.
    let _daemon = sandbox.serve(&["--pool", pool.to_str().unwrap()]);
    let mut cmd = Command::new("mount");
    sandbox.env(&mut cmd);
    cmd.env("PMVISOR_POOL", &pool);
    let out = cmd.args(["-t", "fuse.rvmfs", "home"]).arg(&dir).args(["-o", "commit=1"]).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(dir.join("y")).unwrap(), b"via mount(8)");
    let list = stdout_json(&mut sandbox.on_pool(&["fs", "list"]));
    assert_eq!(list[0]["pid"], _daemon.pid(), "the daemon serves it: {list}");
    sandbox.on_pool(&["fs", "umount"]).arg(&dir).assert().success();
}

// ---- the SIGKILL crash loop ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
}

type Tree = BTreeMap<String, Node>;

#[derive(Debug, Clone)]
enum Op {
    Create(String),
    Write(String, u64, Vec<u8>),
    Append(String, Vec<u8>),
    Rename(String, String),
    Unlink(String),
    Truncate(String, u64),
    Mkdir(String),
}

const DIRS: [&str; 3] = ["d0", "d1", "d0/e"];
const FILES: [&str; 9] = ["f0", "f1", "f2", "f3", "d0/g0", "d0/g1", "d1/h0", "d1/h1", "d0/e/k"];

fn parent_exists(tree: &Tree, path: &str) -> bool {
    path.rsplit_once('/').is_none_or(|(parent, _)| tree.get(parent) == Some(&Node::Dir))
}

fn bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let len = rng.gen_range(1..=max);
    let seed: u8 = rng.gen();
    (0..len).map(|i| seed.wrapping_add((i % 251) as u8)).collect()
}

fn generate(rng: &mut StdRng, tree: &Tree) -> Op {
    let files: Vec<&String> =
        tree.iter().filter(|(_, n)| **n != Node::Dir).map(|(p, _)| p).collect();
    let free = |tree: &Tree, list: &[&str]| -> Vec<String> {
        list.iter()
            .filter(|p| !tree.contains_key(**p) && parent_exists(tree, p))
            .map(|p| p.to_string())
            .collect()
    };
    let pick = |rng: &mut StdRng, v: &[String]| v[rng.gen_range(0..v.len())].clone();
    loop {
        let choice = rng.gen_range(0..10);
        let new_files = free(tree, &FILES);
        if choice == 0 {
            let dirs = free(tree, &DIRS);
            if !dirs.is_empty() {
                return Op::Mkdir(pick(rng, &dirs));
            }
        } else if choice <= 2 || files.is_empty() {
            if !new_files.is_empty() {
                return Op::Create(pick(rng, &new_files));
            }
        } else {
            let file = files[rng.gen_range(0..files.len())].clone();
            let Some(Node::File(data)) = tree.get(&file) else { unreachable!() };
            let len = data.len() as u64;
            return match choice {
                3 | 4 => Op::Write(file, rng.gen_range(0..=len + 3000), bytes(rng, 8000)),
                5 | 6 => Op::Append(file, bytes(rng, 20_000)),
                7 => {
                    let targets: Vec<String> = FILES
                        .iter()
                        .filter(|p| {
                            **p != file
                                && parent_exists(tree, p)
                                && tree.get(**p) != Some(&Node::Dir)
                        })
                        .map(|p| p.to_string())
                        .collect();
                    Op::Rename(file, pick(rng, &targets))
                }
                8 => Op::Unlink(file),
                _ => Op::Truncate(file, rng.gen_range(0..=len + 5000)),
            };
        }
    }
}

fn apply(tree: &mut Tree, op: &Op) {
    let file = |tree: &mut Tree, p: &str| match tree.get_mut(p) {
        Some(Node::File(data)) => std::mem::take(data),
        other => panic!("{p} is {other:?}"),
    };
    match op {
        Op::Create(p) => {
            tree.insert(p.clone(), Node::File(Vec::new()));
        }
        Op::Write(p, at, new) => {
            let mut data = file(tree, p);
            let end = *at as usize + new.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[*at as usize..end].copy_from_slice(new);
            tree.insert(p.clone(), Node::File(data));
        }
        Op::Append(p, new) => {
            let mut data = file(tree, p);
            data.extend_from_slice(new);
            tree.insert(p.clone(), Node::File(data));
        }
        Op::Rename(a, b) => {
            let node = tree.remove(a).unwrap();
            tree.insert(b.clone(), node);
        }
        Op::Unlink(p) => {
            tree.remove(p);
        }
        Op::Truncate(p, len) => {
            let mut data = file(tree, p);
            data.resize(*len as usize, 0);
            tree.insert(p.clone(), Node::File(data));
        }
        Op::Mkdir(p) => {
            tree.insert(p.clone(), Node::Dir);
        }
    }
}

/// Performs `op` under `root`, with an fsync (of the file, or of the
/// parent directory for namespace changes) when `sync`.
fn perform(root: &Path, op: &Op, sync: bool) -> std::io::Result<()> {
    let sync_parent = |p: &str| -> std::io::Result<()> {
        let parent = Path::new(p).parent().map_or(root.to_path_buf(), |d| root.join(d));
        if sync {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    };
    let finish = |f: File| if sync { f.sync_all() } else { Ok(()) };
    match op {
        Op::Create(p) => {
            finish(OpenOptions::new().write(true).create_new(true).open(root.join(p))?)
        }
        Op::Write(p, at, data) => {
            let f = OpenOptions::new().write(true).open(root.join(p))?;
            f.write_all_at(data, *at)?;
            finish(f)
        }
        Op::Append(p, data) => {
            let mut f = OpenOptions::new().append(true).open(root.join(p))?;
            std::io::Write::write_all(&mut f, data)?;
            finish(f)
        }
        Op::Truncate(p, len) => {
            let f = OpenOptions::new().write(true).open(root.join(p))?;
            f.set_len(*len)?;
            finish(f)
        }
        Op::Rename(a, b) => {
            std::fs::rename(root.join(a), root.join(b))?;
            sync_parent(b)
        }
        Op::Unlink(p) => {
            std::fs::remove_file(root.join(p))?;
            sync_parent(p)
        }
        Op::Mkdir(p) => {
            std::fs::create_dir(root.join(p))?;
            sync_parent(p)
        }
    }
}

/// What differs between an expected tree and the one found: paths with
/// the expected and found sizes (-1 for a directory, none when missing).
fn tree_diff(expected: &Tree, found: &Tree) -> String {
    let size = |n: &Node| match n {
        Node::File(d) => d.len() as i64,
        Node::Dir => -1,
    };
    let mut out = String::new();
    for (path, node) in expected.iter().filter(|(p, n)| found.get(*p) != Some(*n)) {
        out += &format!("{path} {} -> {:?}; ", size(node), found.get(path).map(size));
    }
    for path in found.keys().filter(|p| !expected.contains_key(*p)) {
        out += &format!("{path} unexpected; ");
    }
    out
}

fn read_tree(root: &Path, prefix: &str, tree: &mut Tree) {
    for entry in std::fs::read_dir(root.join(prefix)).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        if entry.file_type().unwrap().is_dir() {
            tree.insert(path.clone(), Node::Dir);
            read_tree(root, &path, tree);
        } else {
            tree.insert(path.clone(), Node::File(std::fs::read(root.join(&path)).unwrap()));
        }
    }
}

fn start_server(sandbox: &Sandbox, dir: &Path) -> Child {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("pmvisor"));
    sandbox.env(&mut cmd);
    cmd.arg("--pool").arg(sandbox.pool()).args(["fs", "serve", "home"]).arg(dir);
    let log = File::create(sandbox.path("serve.log")).unwrap();
    let mut child = cmd.args(["-o", "commit=1"]).stdin(Stdio::null()).stderr(log).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !mounted(dir, "home") {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "fs serve exited with {status}: {}",
                std::fs::read_to_string(sandbox.path("serve.log")).unwrap()
            );
        }
        assert!(Instant::now() < deadline, "fs serve never mounted");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// Kills the server if the test fails midway.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigkill_at_random_moments_leaves_a_committed_prefix_with_every_fsync() {
    if !fuse_available() {
        return;
    }
    let seed: u64 = std::env::var("FS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let rounds: usize =
        std::env::var("FS_CRASH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    println!("crash loop: {rounds} rounds, seed {seed} (FS_CRASH_SEED={seed} repeats it)");
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let sandbox = Sandbox::in_memory();
    sandbox.create_pool();
    sandbox.on_pool(&["fs", "create", "home", "--size", "32M"]).assert().success();
    let (dir, _guard) = dir_in(&sandbox, "mnt");
    let mut expected: Vec<Tree> = vec![Tree::new()];
    let mut lowest = 0usize;
    let (mut applied_total, mut fsyncs_total) = (0usize, 0usize);
    for round in 0..=rounds {
        let mut server = Server(start_server(&sandbox, &dir));
        let mut tree = Tree::new();
        read_tree(&dir, "", &mut tree);
        let matched =
            (lowest..expected.len()).find(|k| expected[*k] == tree).unwrap_or_else(|| {
                for (k, state) in expected.iter().enumerate().skip(lowest) {
                    eprintln!("  vs the state after op {k}: {}", tree_diff(state, &tree));
                }
                panic!(
                    "round {round} (seed {seed}): the tree after the crash is no state between op \
                 {lowest} and {}: {:?}",
                    expected.len() - 1,
                    tree.keys().collect::<Vec<_>>()
                )
            });
        applied_total += matched;
        if round == rounds {
            server.0.kill().unwrap();
            break;
        }
        let ops: Vec<(Op, bool)> = {
            let mut model = tree.clone();
            (0..150)
                .map(|_| {
                    let op = generate(&mut rng, &model);
                    apply(&mut model, &op);
                    (op, rng.gen_bool(0.25))
                })
                .collect()
        };
        expected = vec![tree];
        for (op, _) in &ops {
            let mut next = expected.last().unwrap().clone();
            apply(&mut next, op);
            expected.push(next);
        }
        let completed = Arc::new(AtomicUsize::new(0));
        let fsynced = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (root, completed, fsynced, ops) =
                (dir.clone(), completed.clone(), fsynced.clone(), ops.clone());
            std::thread::spawn(move || {
                for (i, (op, sync)) in ops.iter().enumerate() {
                    if perform(&root, op, *sync).is_err() {
                        return;
                    }
                    completed.store(i + 1, Ordering::SeqCst);
                    if *sync {
                        fsynced.store(i + 1, Ordering::SeqCst);
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..40_000)));
        server.0.kill().unwrap();
        server.0.wait().unwrap();
        writer.join().unwrap();
        drop(MountGuard(dir.clone()));
        lowest = fsynced.load(Ordering::SeqCst);
        fsyncs_total += ops[..lowest].iter().filter(|(_, s)| *s).count();
        expected.truncate((completed.load(Ordering::SeqCst) + 2).min(expected.len()));
        sandbox.on_pool(&["pool", "check"]).assert().success();
        sandbox.on_pool(&["fs", "check", "home"]).assert().success();
    }
    sandbox.on_pool(&["pool", "check"]).assert().success();
    println!(
        "crash loop: {rounds} rounds, seed {seed}, {applied_total} operations survived, \
         {fsyncs_total} fsyncs, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(applied_total > 0, "the writer never got an operation in before the kill");
}
