//! Opening a pool: choosing the superblock copy, reading the active
//! checkpoint, replaying the journal and rebuilding the catalog. Costs one
//! pass over the metadata; never touches the data pages.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::catalog::Catalog;
use super::discard::Discards;
use super::fence;
use super::journal::{self, Tail};
use super::superblock::{self, Superblock, SuperblockFault, SUPERBLOCK_SIZE};
use super::{checkpoint, Media, OpenMode, Pool, PoolError, Result, State, PAGE_SIZE};

impl Pool {
    pub(super) fn open_inner(
        media: Arc<dyn Media>,
        path: &Path,
        mode: OpenMode,
        strict: bool,
    ) -> Result<Pool> {
        let path = path.to_path_buf();
        let (sb, faults, differ) = read_superblocks(media.as_ref(), &path)?;
        for (copy, fault) in ["A", "B"].iter().zip(&faults) {
            if let Some(fault) = fault {
                tracing::warn!(pool = %path.display(), "superblock copy {copy} is damaged: {fault}");
            }
        }
        if media.len() < sb.pool_size {
            return Err(PoolError::Truncated { path, expected: sb.pool_size, actual: media.len() });
        }
        // A crash while the two copies were written leaves one damaged or
        // older; a read-write open finishes that update. (`check` opens
        // leniently and reports it instead.)
        let heal =
            strict && mode == OpenMode::ReadWrite && (differ || faults.iter().any(Option::is_some));
        let corrupt = |detail: String| PoolError::CorruptMetadata { path: path.clone(), detail };
        let ckpt = read_checkpoint(media.as_ref(), &sb).map_err(corrupt)?;
        if ckpt.generation != sb.generation {
            return Err(corrupt(format!(
                "the active checkpoint is of generation {} but the superblock of {}",
                ckpt.generation, sb.generation
            )));
        }
        let source = MediaLog { media: media.as_ref(), base: sb.log_offset(), len: sb.log_bytes() };
        let (changes, cursor, tail) = journal::replay(source, sb.generation, &sb.uuid);
        if let Tail::Torn(why) = &tail {
            tracing::info!(pool = %path.display(), "ignoring a torn journal record left by a crash: {why}");
        }
        let data_end = sb.data_start + sb.data_pages;
        let (catalog, problems) =
            Catalog::rebuild(sb.data_start, data_end, ckpt.next_region_id, ckpt.regions, changes);
        if strict && !problems.is_empty() {
            return Err(corrupt(problems.join("; ")));
        }
        if heal {
            write_superblocks(media.as_ref(), &sb).map_err(|source| PoolError::Io {
                path: path.clone(),
                operation: "rewriting the superblock copies",
                source,
            })?;
            tracing::warn!(pool = %path.display(), "rewrote both superblock copies from the newest valid one");
        }
        let fence = fence::Fence::from_open(fence::at_open(media.as_ref(), &sb, cursor.offset));
        Ok(Pool {
            path,
            discards: Discards::new(Arc::clone(&media)),
            media,
            writable: mode == OpenMode::ReadWrite,
            state: Mutex::new(State { fence, sb, catalog, cursor, failed: false }),
            open_problems: problems,
        })
    }
}

/// Write both superblock copies: A, durable, then B, durable.
pub(super) fn write_superblocks(media: &dyn Media, sb: &Superblock) -> std::io::Result<()> {
    let bytes = sb.encode();
    for copy in [0, PAGE_SIZE] {
        media.write(copy, &bytes)?;
        media.persist(copy, bytes.len() as u64)?;
    }
    Ok(())
}

/// Decode both copies; the newest valid one wins. Also says why each copy
/// was refused, and whether two valid copies differ.
fn read_superblocks(
    media: &dyn Media,
    path: &Path,
) -> Result<(Superblock, [Option<SuperblockFault>; 2], bool)> {
    let mut copies = [None, None];
    let mut faults = [None, None];
    for (i, off) in [0, PAGE_SIZE].into_iter().enumerate() {
        let mut buf = [0u8; SUPERBLOCK_SIZE];
        if media.len() < off + SUPERBLOCK_SIZE as u64 {
            faults[i] = Some(SuperblockFault::NoMagic);
            continue;
        }
        media.read(off, &mut buf).map_err(|source| PoolError::Io {
            path: path.to_path_buf(),
            operation: "reading the superblock",
            source,
        })?;
        match Superblock::decode(&buf) {
            Ok(sb) => copies[i] = Some(sb),
            Err(SuperblockFault::NewerFormat(found)) => {
                return Err(PoolError::NewerFormat {
                    path: path.to_path_buf(),
                    found,
                    supported: superblock::FORMAT_VERSION,
                })
            }
            Err(fault) => faults[i] = Some(fault),
        }
    }
    match copies {
        [Some(a), Some(b)] => Ok((if b.generation > a.generation { b } else { a }, faults, a != b)),
        [Some(sb), None] | [None, Some(sb)] => Ok((sb, faults, false)),
        [None, None] => {
            // Without any superblock magic, the first checkpoint slot (page 2
            // in every layout) tells a destroyed pool from something else.
            let mut head = [0u8; 8];
            let was_pool =
                media.read(2 * PAGE_SIZE, &mut head).is_ok() && checkpoint::has_magic(&head);
            if !was_pool && faults.iter().all(|f| f == &Some(SuperblockFault::NoMagic)) {
                return Err(PoolError::NotAPool { path: path.to_path_buf() });
            }
            let detail = format!(
                "copy A: {}; copy B: {}",
                faults[0].as_ref().expect("fault recorded"),
                faults[1].as_ref().expect("fault recorded")
            );
            Err(PoolError::BothSuperblocksBad { path: path.to_path_buf(), detail })
        }
    }
}

pub(super) fn read_checkpoint(
    media: &dyn Media,
    sb: &Superblock,
) -> std::result::Result<checkpoint::Checkpoint, String> {
    let at = sb.checkpoint_offset(sb.active_checkpoint);
    let mut head = vec![0u8; checkpoint::HEADER_SIZE];
    media.read(at, &mut head).map_err(|e| format!("the checkpoint cannot be read ({e})"))?;
    let len = checkpoint::payload_len(&head, sb.checkpoint_bytes())?;
    head.resize(checkpoint::HEADER_SIZE + len, 0);
    media
        .read(at + checkpoint::HEADER_SIZE as u64, &mut head[checkpoint::HEADER_SIZE..])
        .map_err(|e| format!("the checkpoint cannot be read ({e})"))?;
    checkpoint::decode(&head)
}

/// The journal as `replay` reads it: straight from the medium.
struct MediaLog<'a> {
    media: &'a dyn Media,
    base: u64,
    len: u64,
}

impl journal::LogSource for MediaLog<'_> {
    fn read_log(&mut self, offset: u64, buf: &mut [u8]) -> bool {
        offset.checked_add(buf.len() as u64).is_some_and(|end| end <= self.len)
            && self.media.read(self.base + offset, buf).is_ok()
    }
}
