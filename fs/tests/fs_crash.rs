//! Crash tests of RvmFS: every persist point of a filesystem workload, four ways.
//!
//! A dry run applies the workload step by step (create, write, append,
//! rename, truncate, unlink, symlink, xattr), committing durably after each
//! step (`commit_now`, as fsync does), and records the tree after each
//! commit. Then, for every persist point and crash mode, the workload runs on
//! a fresh `CrashStore` that crashes there; the recovered store must open,
//! pass both the RVM check and the filesystem check, and hold exactly the
//! tree of the last completed commit or of the one in flight: fsync'd data
//! is never lost and nothing half-done is ever visible.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rvmfs::{Caller, CrashMode, CrashStore, FsOptions, FsResult, RvmFs, ROOT_INO};

type Fs = RvmFs<Arc<CrashStore>>;

const PAGES: u64 = 1024;

fn options() -> FsOptions {
    FsOptions { commit_interval: Duration::ZERO, ..FsOptions::default() }
}

/// Path -> what is there (file bytes, symlink target, or a directory).
type Tree = BTreeMap<String, String>;

fn snapshot(fs: &Fs) -> Tree {
    let mut tree = Tree::new();
    let mut stack = vec![(ROOT_INO, String::new())];
    while let Some((ino, path)) = stack.pop() {
        for entry in fs.readdir(ino, 2, usize::MAX).expect("readdir") {
            let name = format!("{path}/{}", String::from_utf8_lossy(&entry.name));
            let inode = fs.getattr(entry.ino).expect("getattr");
            let value = if inode.is_dir() {
                stack.push((entry.ino, name.clone()));
                "dir".to_string()
            } else if inode.is_file() {
                let data = fs.read(entry.ino, 0, u32::MAX).expect("read");
                let xattr =
                    fs.getxattr(&Caller::root(), entry.ino, b"user.tag").unwrap_or_default();
                format!("file {} bytes crc {:08x} xattr {:?}", data.len(), crc(&data), xattr)
            } else {
                format!("link {:?}", fs.readlink(entry.ino).expect("readlink"))
            };
            tree.insert(name, value);
        }
    }
    tree
}

fn crc(data: &[u8]) -> u32 {
    data.iter().fold(0u32, |acc, &b| acc.rotate_left(5) ^ u32::from(b))
}

fn file_ino(fs: &Fs, parent: u64, name: &str) -> FsResult<u64> {
    Ok(fs.lookup(&Caller::root(), parent, name.as_bytes())?.ino)
}

/// The workload: each step is followed by a durable commit.
fn step(fs: &Fs, index: usize) -> FsResult<()> {
    let root = Caller::root();
    match index {
        0 => {
            let d = fs.mkdir(&root, ROOT_INO, b"d", 0o755, 0)?;
            let (a, fh) = fs.create(&root, d.ino, b"a", 0o644, 0)?;
            fs.write(&root, a.ino, Some(fh), 0, b"alpha")?;
            fs.release(fh)
        }
        1 => {
            let d = file_ino(fs, ROOT_INO, "d")?;
            let a = file_ino(fs, d, "a")?;
            fs.write(&root, a, None, 5, &[b'x'; 9000])?;
            fs.setxattr(&root, a, b"user.tag", b"appended", 0)
        }
        2 => {
            let d = file_ino(fs, ROOT_INO, "d")?;
            fs.rename(&root, d, b"a", ROOT_INO, b"b", 0)
        }
        3 => {
            let d = file_ino(fs, ROOT_INO, "d")?;
            let (c, fh) = fs.create(&root, d, b"c", 0o600, 0)?;
            fs.write(&root, c.ino, Some(fh), 0, &[7; 20_000])?;
            fs.setattr(&root, c.ino, &rvmfs::SetAttr { size: Some(3000), ..Default::default() })?;
            fs.release(fh)
        }
        4 => {
            fs.unlink(&root, ROOT_INO, b"b")?;
            fs.symlink(&root, ROOT_INO, b"s", b"d/c")?;
            fs.mkdir(&root, ROOT_INO, b"e", 0o700, 0).map(|_| ())
        }
        5 => {
            let d = file_ino(fs, ROOT_INO, "d")?;
            let e = file_ino(fs, ROOT_INO, "e")?;
            fs.rename(&root, d, b"c", e, b"c2", 0)?;
            fs.rmdir(&root, ROOT_INO, b"d")
        }
        _ => unreachable!("six steps"),
    }
}

const STEPS: usize = 6;

fn formatted() -> Arc<CrashStore> {
    let store = Arc::new(CrashStore::new(PAGES));
    let fs = RvmFs::format(Arc::clone(&store), options()).expect("format");
    drop(fs);
    store
}

/// Runs the workload, committing after each step; returns how many commits completed.
fn run(fs: &Fs) -> usize {
    for index in 0..STEPS {
        if step(fs, index).is_err() || fs.commit_now().is_err() {
            return index;
        }
    }
    STEPS
}

#[test]
fn every_crash_point_of_a_workload_recovers_to_a_committed_tree() {
    let dry = formatted();
    let fs = RvmFs::open(Arc::clone(&dry), options()).expect("open");
    let base = dry.persist_points();
    let mut states = vec![snapshot(&fs)];
    for index in 0..STEPS {
        step(&fs, index).expect("dry run step");
        fs.commit_now().expect("dry run commit");
        states.push(snapshot(&fs));
    }
    let points = dry.persist_points() - base;
    assert!(fs.check().unwrap().is_clean());
    drop(fs);
    let mut crash_states = 0;
    for point in 0..points {
        for mode in [
            CrashMode::Drop,
            CrashMode::Keep,
            CrashMode::Tear { seed: point },
            CrashMode::Reorder { seed: point },
        ] {
            let context = format!("crash at persist point {point} of {points} ({mode:?})");
            let store = formatted();
            let fs = RvmFs::open(Arc::clone(&store), options()).expect("open");
            store.arm(point, mode);
            let completed = run(&fs);
            assert!(store.has_crashed(), "{context}: the crash happened");
            drop(fs);
            let recovered = Arc::new(store.recovered());
            let fs = RvmFs::open(Arc::clone(&recovered), options())
                .unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
            let check = fs.check().expect("fs check");
            assert!(check.is_clean(), "{context}: {:?}", check.problems);
            let rvm_check = fs.check_rvm().expect("rvm check");
            assert!(rvm_check.is_clean(), "{context}: {rvm_check}");
            let tree = snapshot(&fs);
            let matches_last = tree == states[completed];
            let matches_next = completed < STEPS && tree == states[completed + 1];
            assert!(
                matches_last || matches_next,
                "{context}: {completed} commits completed; recovered tree {tree:#?}"
            );
            crash_states += 1;
        }
    }
    println!("RvmFS crash states checked: {crash_states} ({points} persist points x 4 modes)");
    assert!(crash_states >= 40);
}
