//! `BlockRegions`: every block region of a pool, opened together so that
//! the swap tier's slot list is complete before any region takes a slot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{BlockError, BlockRegion, BlockSpec, FileSwap, SwapTier};
use crate::pool::{Pool, RegionKind};

/// The open block regions of one pool and its swap tier.
#[derive(Debug)]
pub struct BlockRegions {
    pool: Arc<Pool>,
    swap: Arc<SwapTier>,
    regions: Mutex<BTreeMap<String, Arc<BlockRegion>>>,
    /// Bytes kept allocated for resizes ([`BlockRegions::keep_warm`]).
    warm: AtomicU64,
}

/// The swap file a pool uses unless told otherwise: beside the pool, or,
/// for a pool on a device (`/dev/pmem0`, `/dev/dax0.0`), in the state
/// directory. (A pool file in `/dev/shm` is a file: its swap goes beside it.)
pub fn default_swap_path(pool: &Path) -> PathBuf {
    use std::os::unix::fs::FileTypeExt;
    let mut name = pool.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "pool".into());
    name.push(".swap");
    let device = std::fs::metadata(pool)
        .is_ok_and(|m| m.file_type().is_block_device() || m.file_type().is_char_device());
    match pool.parent() {
        Some(dir) if !device => dir.join(name),
        _ => crate::paths::state_dir().join(name),
    }
}

impl BlockRegions {
    /// Open every block region of `pool`, with the swap tier at `swap_path`
    /// (created on demand).
    pub fn open_file_swap(pool: Arc<Pool>, swap_path: &Path) -> Result<BlockRegions, BlockError> {
        let store = FileSwap::open(swap_path)
            .map_err(|source| BlockError::Swap { path: swap_path.to_path_buf(), source })?;
        Self::open(pool, SwapTier::new(Box::new(store)))
    }

    /// Open every block region of `pool` over the given swap tier.
    pub fn open(pool: Arc<Pool>, swap: Arc<SwapTier>) -> Result<BlockRegions, BlockError> {
        let mut regions = BTreeMap::new();
        for info in pool.regions().into_iter().filter(|r| r.kind == RegionKind::Block) {
            let tier = BlockRegion::wants_swap(&info.attrs).then(|| swap.clone());
            let region = BlockRegion::open(pool.clone(), &info.name, tier)?;
            regions.insert(info.name, Arc::new(region));
        }
        Ok(BlockRegions { pool, swap, regions: Mutex::new(regions), warm: AtomicU64::new(0) })
    }

    /// Keep `bytes` allocated for resizes, in the pool and in the swap
    /// tier, so that shrinking or growing a region by up to that much does
    /// not wait for the host kernel to allocate pages (what a daemon does;
    /// a short-lived command leaves it at 0): freed pool pages up to it stay
    /// allocated ([`Pool::keep_freed`]), and once a region has a swap tier,
    /// the swap file keeps that much free space allocated ahead of use.
    pub fn keep_warm(&self, bytes: u64) {
        self.warm.store(bytes, Ordering::Relaxed);
        self.pool.keep_freed(bytes);
        if self.lock().values().any(|region| region.has_swap()) {
            self.swap.store.keep_ready(bytes);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<BlockRegion>>> {
        self.regions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Create and open a block region.
    pub fn create(&self, name: &str, spec: BlockSpec) -> Result<Arc<BlockRegion>, BlockError> {
        let mut regions = self.lock();
        BlockRegion::create(&self.pool, name, spec)?;
        let tier = spec.swap.then(|| self.swap.clone());
        let region = Arc::new(BlockRegion::open(self.pool.clone(), name, tier)?);
        regions.insert(name.to_string(), region.clone());
        let warm = self.warm.load(Ordering::Relaxed);
        if spec.swap && warm > 0 {
            self.swap.store.keep_ready(warm);
        }
        Ok(region)
    }

    /// The open block region `name`.
    pub fn get(&self, name: &str) -> Option<Arc<BlockRegion>> {
        self.lock().get(name).cloned()
    }

    /// Names of the open block regions.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Delete block region `name`: its swap slots are freed with it.
    pub fn delete(&self, name: &str) -> Result<(), BlockError> {
        let mut regions = self.lock();
        let region = regions.remove(name);
        self.pool.delete_region(name)?;
        if let Some(region) = region {
            region.release_swap();
        }
        Ok(())
    }
}

#[cfg(test)]
mod default_swap_tests {
    use super::*;

    #[test]
    fn the_swap_goes_beside_a_pool_file_even_under_dev_and_not_beside_a_device() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let pool = dir.path().join("test.pool");
        std::fs::write(&pool, b"").unwrap();
        assert_eq!(default_swap_path(&pool), dir.path().join("test.pool.swap"));
        let device = default_swap_path(Path::new("/dev/null"));
        assert_eq!(device, crate::paths::state_dir().join("null.swap"));
    }
}
