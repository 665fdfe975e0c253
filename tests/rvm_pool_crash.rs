//! RVM over a pool `fs` region, crashed at every persist point of its
//! commits (the pool's crash media): after each crash the region's RVM
//! opens at exactly the last committed version or the one being committed,
//! with every page as that version wrote it, and both RVM's and the pool's
//! checks are clean. A custom harness so the count is always printed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use pmvisor::fs::RegionStore;
use pmvisor::pool::crash::{CrashMedia, TearGranularity};
use pmvisor::pool::{OpenMode, Pool, RegionKind};
use rvmfs::{FormatOptions, PageRange, PageRef, Rvm};

const POOL: u64 = 4 << 20;

/// Logical page -> the version whose pattern it holds, per committed version.
type Model = BTreeMap<u64, u64>;

fn fill(version: u64, page: u64) -> Vec<u8> {
    let word = (version << 40) | page;
    (0..512).flat_map(|_| word.to_le_bytes()).collect()
}

/// Run the scripted transactions; returns the models of every version, and
/// stops quietly at the first failure (the crash).
fn workload(rvm: &Rvm<RegionStore>, models: &mut Vec<Model>) -> Result<(), rvmfs::RvmError> {
    let mut ranges: Vec<PageRange> = Vec::new();
    for version in 1..=8u64 {
        let mut model = models.last().cloned().unwrap_or_default();
        let mut tx = rvm.begin()?;
        if version % 3 == 0 && !ranges.is_empty() {
            let r = ranges.remove(0);
            tx.free_pages(r)?;
            for p in r.start..r.start + r.count {
                model.remove(&p);
            }
        }
        let r = tx.alloc_pages(1 + version % 4)?;
        ranges.push(r);
        for p in r.start..r.start + r.count {
            tx.write(PageRef::new(p, 0), &fill(version, p))?;
            model.insert(p, version);
        }
        // Overwrite one older page too.
        if let Some(&p) = model.keys().next() {
            tx.write(PageRef::new(p, 0), &fill(version, p))?;
            model.insert(p, version);
        }
        tx.set_root(&version.to_le_bytes())?;
        tx.commit()?;
        models.push(model);
    }
    Ok(())
}

fn open_rvm(media: Arc<CrashMedia>) -> (Pool, Rvm<RegionStore>) {
    let pool = Pool::open_media(media, Path::new("rvm.pool"), OpenMode::ReadWrite).expect("pool");
    let store = RegionStore::open(&pool, "home").expect("store");
    let rvm = Rvm::open(store).expect("rvm opens after a crash");
    (pool, rvm)
}

fn main() {
    let base = {
        let media = Arc::new(CrashMedia::new(POOL, TearGranularity::Nvram));
        let pool =
            Pool::format(media.clone(), Path::new("rvm.pool"), POOL, Some(64 << 10)).unwrap();
        pool.create_region("home", RegionKind::Fs, 512 << 10).unwrap();
        let store = RegionStore::open(&pool, "home").unwrap();
        Rvm::format(store, FormatOptions::default()).unwrap();
        media.durable_image()
    };
    let dry = Arc::new(CrashMedia::from_image(base.clone(), TearGranularity::Nvram));
    let mut models = vec![Model::new()];
    {
        let (_pool, rvm) = open_rvm(dry.clone());
        workload(&rvm, &mut models).expect("the workload runs cleanly");
    }
    let points = dry.persist_points();
    let mut states = 0;
    for point in 0..points {
        let media =
            Arc::new(CrashMedia::from_image(base.clone(), TearGranularity::Nvram).crash_at(point));
        let mut done = vec![Model::new()];
        {
            let (_pool, rvm) = open_rvm(media.clone());
            assert!(workload(&rvm, &mut done).is_err(), "point {point} was reached");
        }
        let committed = done.len() as u64 - 1;
        for (n, image) in media.crash_images(3, point as u64).into_iter().enumerate() {
            let media = Arc::new(CrashMedia::from_image(image, TearGranularity::Nvram));
            let (pool, rvm) = open_rvm(media);
            let version = u64::from_le_bytes(rvm.root()[..8].try_into().unwrap());
            assert!(
                version == committed || version == committed + 1,
                "point {point} image {n}: version {version}, committed {committed}"
            );
            for (&page, &v) in &models[version as usize] {
                let mut buf = vec![0u8; 4096];
                rvm.read(PageRef::new(page, 0), &mut buf).unwrap();
                assert_eq!(buf, fill(v, page), "point {point} image {n}: page {page}");
            }
            assert!(rvm.check().unwrap().is_clean(), "point {point} image {n}: rvm check");
            drop(rvm);
            assert!(pool.check().is_clean(), "point {point} image {n}: pool check");
            states += 1;
        }
    }
    println!("rvm over a pool region: {points} persist points, {states} crash states checked");
    println!("1 passed, 0 failed");
}
