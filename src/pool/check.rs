//! `pool check` and `pool check --repair`.
//!
//! Check re-reads the on-media structures of an open pool (both superblock
//! copies, the active checkpoint) and verifies every invariant of the region
//! table: valid and unique names, extents inside the data area, no page
//! owned twice, memory regions contiguous, and owned + free pages adding up
//! to the data area (a leak would break that sum). Each problem is one
//! sentence saying what is wrong and whether `--repair` fixes it.
//!
//! Repair writes a fresh checkpoint from the table in memory and both
//! superblock copies from the good one: that mends a damaged or stale
//! superblock copy, a damaged inactive checkpoint slot and a torn journal
//! tail. Free space is derived, so there is never a leak to reclaim. Two
//! regions claiming the same pages cannot be mended safely: the report says
//! which regions, so a person can copy their data out first.

use serde::Serialize;

use super::recovery::read_checkpoint;
use super::superblock::{Superblock, SUPERBLOCK_SIZE};
use super::{Pool, Result, PAGE_SIZE};

/// One problem `check` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Plain-words description.
    pub message: String,
    /// Whether `--repair` can fix it.
    pub repairable: bool,
}

/// What `check` found and what `--repair` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub problems: Vec<Problem>,
    /// What `--repair` did (empty for a plain check).
    pub repaired: Vec<String>,
    pub regions: usize,
    pub pages_owned: u64,
    pub pages_free: u64,
}

impl CheckReport {
    /// Whether nothing is wrong (after repair, when repair ran).
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

pub(super) fn run(pool: &Pool) -> CheckReport {
    let st = pool.lock();
    let mut problems = Vec::new();
    let fixable = |message: String| Problem { message, repairable: true };
    let fatal = |message: String| Problem { message, repairable: false };

    let mut copies = [None, None];
    for (i, name) in ["A", "B"].iter().enumerate() {
        let mut buf = [0u8; SUPERBLOCK_SIZE];
        let other = ["B", "A"][i];
        match pool.media.read(i as u64 * PAGE_SIZE, &mut buf) {
            Err(e) => problems.push(fatal(format!("superblock copy {name} cannot be read ({e})"))),
            Ok(()) => match Superblock::decode(&buf) {
                Ok(sb) => copies[i] = Some(sb),
                Err(fault) => problems.push(fixable(format!(
                    "superblock copy {name} is damaged: {fault}; repair rewrites it from copy {other}"
                ))),
            },
        }
    }
    if let [Some(a), Some(b)] = copies {
        if a != b {
            problems.push(fixable(
                "the two superblock copies differ (an update was interrupted); repair makes them \
                 equal to the newer one"
                    .to_string(),
            ));
        }
    }
    if let Err(why) = read_checkpoint(pool.media.as_ref(), &st.sb) {
        problems.push(Problem {
            message: format!("{why}; repair writes a new checkpoint from the table in memory"),
            repairable: pool.writable,
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in pool.open_problems.iter().chain(st.catalog.verify().iter()) {
        if seen.insert(p.clone()) {
            problems.push(fatal(format!("{p}; this cannot be repaired automatically")));
        }
    }
    CheckReport {
        problems,
        repaired: Vec::new(),
        regions: st.catalog.regions.len(),
        pages_owned: st.catalog.owned_pages(),
        pages_free: st.catalog.free.free_pages(),
    }
}

pub(super) fn repair(pool: &Pool, report: &mut CheckReport) -> Result<()> {
    if !report.problems.iter().any(|p| p.repairable) {
        return Ok(());
    }
    {
        let mut st = pool.writable_state()?;
        pool.checkpoint(&mut st)?;
        report.repaired.push(format!(
            "wrote a fresh checkpoint (generation {}) and both superblock copies",
            st.sb.generation
        ));
    }
    let after = run(pool);
    report.problems = after.problems;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::pool::crash::{CrashMedia, TearGranularity};
    use crate::pool::{Media, OpenMode, RegionKind};

    fn pool() -> (Arc<CrashMedia>, Pool) {
        let media = Arc::new(CrashMedia::new(4 << 20, TearGranularity::Nvram));
        let pool =
            Pool::format(media.clone(), Path::new("test.pool"), 4 << 20, Some(64 << 10)).unwrap();
        pool.create_region("a", RegionKind::Block, 64 << 10).unwrap();
        (media, pool)
    }

    #[test]
    fn a_fresh_pool_checks_clean() {
        let (_, pool) = pool();
        let report = pool.check();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.regions, 1);
        assert_eq!(report.pages_owned, 16);
    }

    #[test]
    fn overwritten_superblock_copy_is_reported_and_repaired() {
        let (media, pool) = pool();
        media.write(PAGE_SIZE + 20, &[0xee; 16]).unwrap();
        let report = pool.check();
        assert_eq!(report.problems.len(), 1, "{report:?}");
        assert_eq!(
            report.problems[0].message,
            "superblock copy B is damaged: its checksum does not match; repair rewrites it \
             from copy A"
        );
        let mut report = report;
        repair(&pool, &mut report).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.repaired.len(), 1);
        drop(pool);
        let image = media.durable_image();
        let reopened = Pool::open_media(
            Arc::new(CrashMedia::from_image(image, TearGranularity::Nvram)),
            Path::new("test.pool"),
            OpenMode::ReadOnly,
        )
        .unwrap();
        assert!(reopened.check().is_clean());
        assert_eq!(reopened.regions().len(), 1);
    }
}
