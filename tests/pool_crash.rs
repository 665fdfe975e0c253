//! Crash tests of the pool's metadata: scripted workloads are stopped at
//! every persist point, and every image a crash there could leave (all
//! unpersisted bytes dropped, all kept, and torn mixes at the medium's
//! granularity) must open, hold exactly the state before or after the
//! interrupted operation, and check clean.
//!
//! A custom harness, so that the number of crash states checked is always
//! printed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use pmvisor::pool::crash::{CrashMedia, TearGranularity};
use pmvisor::pool::{OpenMode, Pool, RegionKind};

/// A region as the reference model sees it.
type Model = BTreeMap<String, (RegionKind, u64, BTreeMap<String, String>)>;

#[derive(Debug, Clone)]
enum Op {
    Create(&'static str, RegionKind, u64),
    Delete(&'static str),
    Rename(&'static str, &'static str),
    Resize(&'static str, u64),
    SetAttr(&'static str, &'static str, Option<&'static str>),
}

const PAGE: u64 = 4096;

impl Op {
    fn run(&self, pool: &Pool) -> pmvisor::pool::Result<()> {
        match *self {
            Op::Create(n, k, pages) => pool.create_region(n, k, pages * PAGE).map(drop),
            Op::Delete(n) => pool.delete_region(n),
            Op::Rename(a, b) => pool.rename_region(a, b),
            Op::Resize(n, pages) => pool.resize_region(n, pages * PAGE).map(drop),
            Op::SetAttr(n, k, v) => pool.set_region_attr(n, k, v),
        }
    }

    fn apply(&self, model: &mut Model) {
        match *self {
            Op::Create(n, k, pages) => {
                model.insert(n.into(), (k, pages, BTreeMap::new()));
            }
            Op::Delete(n) => {
                model.remove(n);
            }
            Op::Rename(a, b) => {
                let r = model.remove(a).expect("renamed region exists");
                model.insert(b.into(), r);
            }
            Op::Resize(n, pages) => model.get_mut(n).expect("resized region exists").1 = pages,
            Op::SetAttr(n, k, v) => {
                let attrs = &mut model.get_mut(n).expect("region exists").2;
                match v {
                    Some(v) => attrs.insert(k.into(), v.into()),
                    None => attrs.remove(k),
                };
            }
        }
    }
}

fn observed(pool: &Pool) -> Model {
    pool.regions().into_iter().map(|r| (r.name, (r.kind, r.size / PAGE, r.attrs))).collect()
}

fn workload() -> Vec<Op> {
    use RegionKind::*;
    let mut ops = vec![
        Op::Create("vm1-ram", Memory, 16),
        Op::Resize("vm1-ram", 20),
        Op::Create("vm1-disk", Block, 8),
        Op::Create("home", Fs, 5),
        Op::SetAttr("vm1-disk", "quota", Some("4")),
        Op::Rename("home", "home2"),
        Op::Resize("vm1-disk", 20),
        Op::Resize("vm1-ram", 12),
        Op::Delete("home2"),
        Op::Create("scratch", Block, 30),
        Op::Resize("vm1-disk", 3),
        Op::SetAttr("vm1-disk", "quota", None),
        Op::Create("logs", Fs, 7),
        Op::Rename("scratch", "scratch-b"),
        Op::Delete("vm1-ram"),
    ];
    // Enough small changes to fill the journal and force checkpoints.
    // Long attribute values fill the journal quickly.
    let revs: Vec<&'static str> = ["first", "second", "third", "fourth"]
        .iter()
        .map(|r| &*format!("{r} revision {}", "x".repeat(400)).leak())
        .collect();
    for i in 0..40 {
        ops.push(Op::SetAttr("logs", "rev", Some(revs[i % 4])));
        ops.push(Op::Resize("scratch-b", 10 + (i as u64 * 7) % 23));
    }
    ops.push(Op::Create("last", Memory, 9));
    ops.push(Op::Delete("logs"));
    ops
}

const POOL_SIZE: u64 = 1 << 20;
/// A tiny metadata area (one page per checkpoint slot, two journal pages)
/// so the workload crosses several checkpoints.
const METADATA: u64 = 16 << 10;

fn fresh_image() -> Vec<u8> {
    let media = Arc::new(CrashMedia::new(POOL_SIZE, TearGranularity::Nvram));
    Pool::format(media.clone(), Path::new("crash.pool"), POOL_SIZE, Some(METADATA))
        .expect("format");
    media.durable_image()
}

/// Run the workload on `media`; returns the index of the operation that
/// failed (the crash), or `None` if it ran to the end.
fn run_until_crash(media: Arc<CrashMedia>, ops: &[Op]) -> Option<usize> {
    let pool = Pool::open_media(media, Path::new("crash.pool"), OpenMode::ReadWrite).ok()?;
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = op.run(&pool) {
            if !pool_media_crashed(&e) {
                panic!("{op:?} failed without a crash: {e}");
            }
            return Some(i);
        }
    }
    None
}

fn pool_media_crashed(e: &pmvisor::pool::PoolError) -> bool {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = src {
        if err.to_string().contains("simulated crash") {
            return true;
        }
        src = err.source();
    }
    false
}

fn crash_every_persist_point(granularity: TearGranularity) -> usize {
    let ops = workload();
    let mut models = vec![Model::new()];
    for op in &ops {
        let mut next = models.last().expect("model").clone();
        op.apply(&mut next);
        models.push(next);
    }
    let image = fresh_image();

    let dry = Arc::new(CrashMedia::from_image(image.clone(), granularity));
    assert_eq!(run_until_crash(dry.clone(), &ops), None, "the workload runs cleanly");
    let points = dry.persist_points();
    assert!(points > ops.len(), "every operation persists at least once");

    let mut states = 0;
    let mut checkpoints_seen = std::collections::BTreeSet::new();
    for point in 0..points {
        let media = Arc::new(CrashMedia::from_image(image.clone(), granularity).crash_at(point));
        let failed = run_until_crash(media.clone(), &ops)
            .unwrap_or_else(|| panic!("persist point {point} never came"));
        assert!(media.has_crashed());
        let (before, after) = (&models[failed], &models[failed + 1]);
        for (n, crashed) in media.crash_images(3, point as u64).into_iter().enumerate() {
            let reopened = Pool::open_media(
                Arc::new(CrashMedia::from_image(crashed, granularity)),
                Path::new("crash.pool"),
                OpenMode::ReadWrite,
            )
            .unwrap_or_else(|e| panic!("point {point} image {n}: open failed: {e}"));
            let got = observed(&reopened);
            assert!(
                &got == before || &got == after,
                "point {point} image {n} during {:?}: state is neither before nor after\n\
                 got    {got:?}\nbefore {before:?}\nafter  {after:?}",
                ops[failed]
            );
            let report = reopened.check();
            assert!(report.is_clean(), "point {point} image {n}: {:?}", report.problems);
            checkpoints_seen.insert(reopened.info().generation);
            // The recovered pool takes changes again.
            reopened.create_region("after-crash", RegionKind::Block, PAGE).expect("create");
            reopened.delete_region("after-crash").expect("delete");
            assert!(reopened.check().is_clean());
            states += 1;
        }
    }
    assert!(
        checkpoints_seen.len() > 2,
        "the workload crossed several checkpoints: saw generations {checkpoints_seen:?} \
         over {points} persist points"
    );
    println!(
        "{granularity:?}: {points} persist points, {states} crash states checked, \
         {} checkpoint generations seen",
        checkpoints_seen.len()
    );
    states
}

fn main() {
    let mut total = 0;
    let mut passed = 0;
    for g in [TearGranularity::Nvram, TearGranularity::Sector] {
        total += crash_every_persist_point(g);
        passed += 1;
    }
    println!("pool crash tests: {total} crash states checked");
    println!("{passed} passed, 0 failed");
}
