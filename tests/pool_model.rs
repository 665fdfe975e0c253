//! Property tests: random region workloads against a reference model, on
//! crash media, with a crash at a random persist point and a real pool file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use pmvisor::pool::crash::{CrashMedia, TearGranularity};
use pmvisor::pool::{CreateOptions, ErrorKind, OpenMode, Pool, RegionKind};
use proptest::prelude::*;

const PAGE: u64 = 4096;
const POOL_SIZE: u64 = 1 << 20;

type Model = BTreeMap<String, (RegionKind, u64, Option<String>)>;

#[derive(Debug, Clone)]
enum Op {
    Create(u8, RegionKind, u64),
    Delete(u8),
    Rename(u8, u8),
    Resize(u8, u64),
    Tag(u8, Option<u8>),
}

fn name(i: u8) -> String {
    format!("r{i}")
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![Just(RegionKind::Block), Just(RegionKind::Fs), Just(RegionKind::Memory)];
    prop_oneof![
        3 => (0..6u8, kind, 1..40u64).prop_map(|(n, k, p)| Op::Create(n, k, p)),
        1 => (0..6u8).prop_map(Op::Delete),
        1 => (0..6u8, 0..6u8).prop_map(|(a, b)| Op::Rename(a, b)),
        2 => (0..6u8, 1..60u64).prop_map(|(n, p)| Op::Resize(n, p)),
        1 => (0..6u8, proptest::option::of(0..4u8)).prop_map(|(n, v)| Op::Tag(n, v)),
    ]
}

/// Run `op` on the pool and, when it succeeds, on the model. Errors must be
/// the ones the model predicts (or lack of space, which the model does not
/// track page by page).
fn step(pool: &Pool, model: &mut Model, op: &Op) -> Result<(), String> {
    let result = match op {
        Op::Create(n, k, p) => pool.create_region(&name(*n), *k, p * PAGE).map(drop),
        Op::Delete(n) => pool.delete_region(&name(*n)),
        Op::Rename(a, b) => pool.rename_region(&name(*a), &name(*b)),
        Op::Resize(n, p) => pool.resize_region(&name(*n), p * PAGE).map(drop),
        Op::Tag(n, v) => {
            pool.set_region_attr(&name(*n), "tag", v.map(|v| v.to_string()).as_deref())
        }
    };
    let expected_err = match op {
        Op::Create(n, ..) if model.contains_key(&name(*n)) => Some(ErrorKind::AlreadyExists),
        Op::Rename(a, b)
            if model.contains_key(&name(*a)) && a != b && model.contains_key(&name(*b)) =>
        {
            Some(ErrorKind::AlreadyExists)
        }
        Op::Delete(n) | Op::Rename(n, _) | Op::Resize(n, _) | Op::Tag(n, _)
            if !model.contains_key(&name(*n)) =>
        {
            Some(ErrorKind::NotFound)
        }
        _ => None,
    };
    match (result, expected_err) {
        (Ok(()), None) => {}
        (Err(e), Some(kind)) if e.kind() == kind => return Ok(()),
        (Err(e), None) if e.kind() == ErrorKind::NoSpace => return Ok(()),
        (got, want) => return Err(format!("{op:?}: got {got:?}, model expected {want:?}")),
    }
    match op {
        Op::Create(n, k, p) => {
            model.insert(name(*n), (*k, *p, None));
        }
        Op::Delete(n) => {
            model.remove(&name(*n));
        }
        Op::Rename(a, b) => {
            let r = model.remove(&name(*a)).expect("exists");
            model.insert(name(*b), r);
        }
        Op::Resize(n, p) => model.get_mut(&name(*n)).expect("exists").1 = *p,
        Op::Tag(n, v) => model.get_mut(&name(*n)).expect("exists").2 = v.map(|v| v.to_string()),
    }
    Ok(())
}

fn observed(pool: &Pool) -> Model {
    pool.regions()
        .into_iter()
        .map(|r| {
            let tag = r.attrs.get("tag").cloned();
            (r.name, (r.kind, r.size / PAGE, tag))
        })
        .collect()
}

fn reopen(image: Vec<u8>) -> Pool {
    let media = Arc::new(CrashMedia::from_image(image, TearGranularity::Nvram));
    Pool::open_media(media, Path::new("model.pool"), OpenMode::ReadWrite).expect("reopen")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_workloads_match_the_model_and_survive_reopen(ops in prop::collection::vec(op(), 1..60)) {
        let media = Arc::new(CrashMedia::new(POOL_SIZE, TearGranularity::Nvram));
        let pool = Pool::format(media.clone(), Path::new("model.pool"), POOL_SIZE, Some(16 << 10)).unwrap();
        let mut model = Model::new();
        for op in &ops {
            step(&pool, &mut model, op).map_err(TestCaseError::fail)?;
            prop_assert_eq!(&observed(&pool), &model);
        }
        prop_assert!(pool.check().is_clean());
        let info = pool.info();
        drop(pool);
        let reopened = reopen(media.durable_image());
        prop_assert_eq!(observed(&reopened), model);
        prop_assert!(reopened.check().is_clean());
        prop_assert_eq!(reopened.info().free_pages, info.free_pages);
    }

    #[test]
    fn a_crash_at_a_random_point_keeps_a_prefix_of_the_workload(
        ops in prop::collection::vec(op(), 1..40),
        point in 0usize..200,
        seed in any::<u64>(),
    ) {
        let clean = Arc::new(CrashMedia::new(POOL_SIZE, TearGranularity::Nvram));
        Pool::format(clean.clone(), Path::new("model.pool"), POOL_SIZE, Some(16 << 10)).unwrap();
        let image = clean.durable_image();
        let media = Arc::new(CrashMedia::from_image(image, TearGranularity::Nvram).crash_at(point));
        let pool = Pool::open_media(media.clone(), Path::new("model.pool"), OpenMode::ReadWrite).unwrap();
        let mut models = vec![Model::new()];
        for op in &ops {
            let mut model = models.last().unwrap().clone();
            if step(&pool, &mut model, op).is_err() {
                prop_assert!(media.has_crashed(), "an operation failed without a crash");
                break;
            }
            models.push(model);
        }
        if !media.has_crashed() {
            media.crash_now();
        }
        drop(pool);
        let last = models.len() - 1;
        for image in media.crash_images(2, seed) {
            let reopened = reopen(image);
            let got = observed(&reopened);
            // Before or after the interrupted operation: the last finished
            // model, or the one after it (which the pool may have reached).
            let ok = got == models[last]
                || ops.get(last).is_some_and(|op| {
                    let mut after = models[last].clone();
                    step_model_only(&mut after, op);
                    got == after
                });
            prop_assert!(ok, "state {:?} is not a prefix state", got);
            prop_assert!(reopened.check().is_clean());
        }
    }
}

/// Apply an operation to the model alone (for the state just after a crash).
fn step_model_only(model: &mut Model, op: &Op) {
    match op {
        Op::Create(n, k, p) if !model.contains_key(&name(*n)) => {
            model.insert(name(*n), (*k, *p, None));
        }
        Op::Delete(n) => {
            model.remove(&name(*n));
        }
        Op::Rename(a, b) if !model.contains_key(&name(*b)) => {
            if let Some(r) = model.remove(&name(*a)) {
                model.insert(name(*b), r);
            }
        }
        Op::Resize(n, p) => {
            if let Some(r) = model.get_mut(&name(*n)) {
                r.1 = *p;
            }
        }
        Op::Tag(n, v) => {
            if let Some(r) = model.get_mut(&name(*n)) {
                r.2 = v.map(|v| v.to_string());
            }
        }
        _ => {}
    }
}

#[test]
fn a_pool_file_keeps_its_regions_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.pool");
    let pool =
        Pool::create(&path, &CreateOptions { size: 64 << 20, ..Default::default() }).unwrap();
    let r = pool.create_region("vm-ram", RegionKind::Memory, 8 << 20).unwrap();
    pool.create_region("disk", RegionKind::Block, 1 << 20).unwrap();
    pool.write_region("disk", 4090, b"hello across a page boundary").unwrap();
    pool.persist_region("disk", 4090, 28).unwrap();
    drop(pool);
    let pool = Pool::open(&path, OpenMode::ReadOnly).unwrap();
    assert_eq!(pool.region("vm-ram").unwrap().offset, r.offset);
    let mut buf = [0u8; 28];
    pool.read_region("disk", 4090, &mut buf).unwrap();
    assert_eq!(&buf, b"hello across a page boundary");
    let mut zeros = [1u8; 64];
    pool.read_region("vm-ram", 0, &mut zeros).unwrap();
    assert_eq!(zeros, [0; 64], "a new region reads as zeros");
}

#[test]
fn a_second_open_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.pool");
    let _pool =
        Pool::create(&path, &CreateOptions { size: 8 << 20, ..Default::default() }).unwrap();
    let err = Pool::open(&path, OpenMode::ReadWrite).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "pool {} is in use by process {}; stop that process or send the command to it",
            path.display(),
            std::process::id()
        )
    );
    assert!(Pool::open(&path, OpenMode::ReadOnly).is_err(), "readers wait for the writer too");
}

#[test]
fn bad_pools_get_errors_that_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pool");
    assert!(Pool::open(&missing, OpenMode::ReadOnly)
        .unwrap_err()
        .to_string()
        .contains("does not exist; create it with `pmvisor pool create --size SIZE"));
    let err =
        Pool::create(&missing, &CreateOptions { size: 8192, ..Default::default() }).unwrap_err();
    assert!(err.to_string().starts_with("a pool of 8192 bytes is too small"), "{err}");
    assert!(!missing.exists(), "a failed create leaves nothing behind");
    let err = Pool::open(dir.path(), OpenMode::ReadOnly).unwrap_err();
    assert!(err.to_string().contains("is a directory, not a pool"), "{err}");
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![7u8; 1 << 20]).unwrap();
    let err = Pool::open(&junk, OpenMode::ReadOnly).unwrap_err();
    assert!(err.to_string().contains("is not a pmvisor pool"), "{err}");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(Pool::open(&empty, OpenMode::ReadOnly).unwrap_err().kind(), ErrorKind::Corrupt);
}

#[test]
fn corrupt_superblocks_are_survived_or_reported() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.pool");
    let pool = Pool::create(&path, &CreateOptions { size: 8 << 20, ..Default::default() }).unwrap();
    pool.create_region("keep", RegionKind::Fs, 1 << 20).unwrap();
    drop(pool);
    let clobber = |offset: u64| {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&[0x5a; 100]).unwrap();
    };
    clobber(0);
    let report = Pool::check_path(&path, false).unwrap();
    assert_eq!(report.problems.len(), 1);
    assert!(report.problems[0].message.starts_with("superblock copy A is damaged"));
    assert_eq!(
        Pool::open(&path, OpenMode::ReadOnly).unwrap().region("keep").unwrap().size,
        1 << 20
    );
    let repaired = Pool::check_path(&path, true).unwrap();
    assert!(repaired.is_clean() && !repaired.repaired.is_empty(), "{repaired:?}");
    assert!(Pool::check_path(&path, false).unwrap().is_clean());
    clobber(0);
    clobber(4096);
    let err = Pool::open(&path, OpenMode::ReadOnly).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("both superblock copies"), "{err}");
}

#[test]
fn a_newer_format_is_refused_with_the_versions() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.pool");
    drop(Pool::create(&path, &CreateOptions { size: 8 << 20, ..Default::default() }).unwrap());
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(8)).unwrap();
    f.write_all(&7u32.to_le_bytes()).unwrap();
    drop(f);
    let err = Pool::open(&path, OpenMode::ReadOnly).unwrap_err();
    assert!(err.to_string().contains("has format version 7, newer than this pmvisor supports (1)"));
}

#[test]
fn bad_region_requests_change_nothing() {
    let media = Arc::new(CrashMedia::new(4 << 20, TearGranularity::Nvram));
    let pool = Pool::format(media, Path::new("p"), 4 << 20, Some(64 << 10)).unwrap();
    pool.create_region("a", RegionKind::Block, 1).unwrap();
    let before = (pool.regions(), pool.info().free_pages);
    for (name, why) in [
        ("", "a name cannot be empty"),
        ("a/b", "a name cannot contain '/'"),
        ("a\0b", "a name cannot contain NUL"),
    ] {
        let err = pool.create_region(name, RegionKind::Block, PAGE).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "invalid region name {name:?}: {why}; names are 1 to 64 letters, digits and \
                 . _ - : @ +"
            )
        );
    }
    let long = "x".repeat(65);
    assert_eq!(
        pool.create_region(&long, RegionKind::Block, 1).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        pool.create_region("a", RegionKind::Fs, 1).unwrap_err().to_string(),
        "region \"a\" already exists; pick another name or delete it first"
    );
    assert_eq!(
        pool.create_region("b", RegionKind::Fs, 0).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let err = pool.create_region("huge", RegionKind::Block, 1 << 40).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("region \"huge\" needs 268435456 pages but the pool has only"));
    assert_eq!(pool.delete_region("zz").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(pool.rename_region("a", "a/b").unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!((pool.regions(), pool.info().free_pages), before);
    assert!(pool.check().is_clean());
}
