//! `CrashMedia`: an in-memory medium that keeps *live* and *durable* bytes
//! apart, to show what a crash at any persist point could leave behind.
//!
//! Writes change the live image and mark their range dirty. `flush` notes a
//! range; `barrier` makes every flushed range durable and is a *persist
//! point*. A medium built with [`CrashMedia::crash_at`]`(k)` dies at persist
//! point `k`, before the barrier takes effect: from then on every call fails,
//! and [`CrashMedia::crash_images`] gives the images a real crash could have
//! left, SQLite-crash-VFS style: every unpersisted byte dropped, every one
//! kept, and torn mixes at the medium's atomic granularity (8 bytes for
//! NVRAM, 512 for files). Tests reopen the pool on each image.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

use rand::{Rng, SeedableRng};

use super::media::{check_bounds, Media, MediaKind};

/// The size of what a crash cannot tear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TearGranularity {
    /// NVRAM: 8-byte stores are atomic.
    Nvram,
    /// Files on a disk: 512-byte sectors are atomic.
    Sector,
}

impl TearGranularity {
    fn bytes(self) -> u64 {
        match self {
            TearGranularity::Nvram => 8,
            TearGranularity::Sector => 512,
        }
    }
}

/// Byte ranges, kept merged.
#[derive(Debug, Default, Clone)]
struct RangeSet(BTreeMap<u64, u64>);

impl RangeSet {
    fn insert(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (mut s, mut e) = (start, start + len);
        let overlapping: Vec<(u64, u64)> = self
            .0
            .range(..=e)
            .rev()
            .take_while(|(&rs, &rl)| rs + rl >= s)
            .map(|(&rs, &rl)| (rs, rl))
            .collect();
        for (rs, rl) in overlapping {
            self.0.remove(&rs);
            s = s.min(rs);
            e = e.max(rs + rl);
        }
        self.0.insert(s, e - s);
    }

    fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(&s, &l)| (s, l))
    }
}

#[derive(Debug)]
struct State {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Written since last made durable.
    dirty: RangeSet,
    /// Flushed, waiting for a barrier.
    flushed: RangeSet,
    persist_points: usize,
    crash_at: Option<usize>,
    crashed: bool,
    /// Fenced: writes are refused.
    protected: bool,
}

/// The crash-simulating medium.
#[derive(Debug)]
pub struct CrashMedia {
    state: Mutex<State>,
    granularity: TearGranularity,
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash: the medium is gone")
}

impl CrashMedia {
    /// A zeroed medium of `len` bytes that never crashes.
    pub fn new(len: u64, granularity: TearGranularity) -> CrashMedia {
        Self::from_image(vec![0; len as usize], granularity)
    }

    /// A medium whose live and durable bytes are both `image`.
    pub fn from_image(image: Vec<u8>, granularity: TearGranularity) -> CrashMedia {
        CrashMedia {
            state: Mutex::new(State {
                durable: image.clone(),
                live: image,
                dirty: RangeSet::default(),
                flushed: RangeSet::default(),
                persist_points: 0,
                crash_at: None,
                crashed: false,
                protected: false,
            }),
            granularity,
        }
    }

    /// Make the medium die at persist point `point` (0-based).
    pub fn crash_at(self, point: usize) -> CrashMedia {
        self.state.lock().expect("crash media lock").crash_at = Some(point);
        self
    }

    /// How many persist points have passed.
    pub fn persist_points(&self) -> usize {
        self.state.lock().expect("crash media lock").persist_points
    }

    /// Whether the simulated crash has happened.
    pub fn has_crashed(&self) -> bool {
        self.state.lock().expect("crash media lock").crashed
    }

    /// Kill the medium now, as if power failed between persist points.
    pub fn crash_now(&self) {
        self.state.lock().expect("crash media lock").crashed = true;
    }

    /// The durable image only (every unpersisted byte lost).
    pub fn durable_image(&self) -> Vec<u8> {
        self.state.lock().expect("crash media lock").durable.clone()
    }

    /// The images a crash now could leave: unpersisted bytes all dropped,
    /// all kept, and `torn` random mixes at the tear granularity.
    pub fn crash_images(&self, torn: usize, seed: u64) -> Vec<Vec<u8>> {
        let st = self.state.lock().expect("crash media lock");
        let mut images = vec![st.durable.clone()];
        let mut unpersisted = st.dirty.clone();
        for (s, l) in st.flushed.iter() {
            unpersisted.insert(s, l);
        }
        if unpersisted.0.is_empty() {
            return images;
        }
        let mut kept = st.durable.clone();
        for (s, l) in unpersisted.iter() {
            kept[s as usize..(s + l) as usize]
                .copy_from_slice(&st.live[s as usize..(s + l) as usize]);
        }
        images.push(kept);
        let g = self.granularity.bytes();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..torn {
            let mut img = st.durable.clone();
            for (s, l) in unpersisted.iter() {
                let mut unit = s / g * g;
                while unit < s + l {
                    let a = unit.max(s) as usize;
                    let b = (unit + g).min(s + l) as usize;
                    if rng.gen_bool(0.5) {
                        img[a..b].copy_from_slice(&st.live[a..b]);
                    }
                    unit += g;
                }
            }
            images.push(img);
        }
        images
    }
}

impl Media for CrashMedia {
    fn len(&self) -> u64 {
        self.state.lock().expect("crash media lock").live.len() as u64
    }

    fn kind(&self) -> MediaKind {
        MediaKind::Memory
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let st = self.state.lock().expect("crash media lock");
        if st.crashed {
            return Err(crashed());
        }
        check_bounds(st.live.len() as u64, offset, buf.len() as u64)?;
        buf.copy_from_slice(&st.live[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock().expect("crash media lock");
        if st.crashed {
            return Err(crashed());
        }
        check_bounds(st.live.len() as u64, offset, data.len() as u64)?;
        if st.protected {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the medium is fenced"));
        }
        st.live[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        st.dirty.insert(offset, data.len() as u64);
        Ok(())
    }

    fn flush(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut st = self.state.lock().expect("crash media lock");
        if st.crashed {
            return Err(crashed());
        }
        check_bounds(st.live.len() as u64, offset, len)?;
        st.flushed.insert(offset, len);
        Ok(())
    }

    fn barrier(&self) -> io::Result<()> {
        let mut st = self.state.lock().expect("crash media lock");
        if st.crashed {
            return Err(crashed());
        }
        if st.crash_at == Some(st.persist_points) {
            st.crashed = true;
            return Err(crashed());
        }
        st.persist_points += 1;
        let flushed = std::mem::take(&mut st.flushed);
        let mut still_dirty = RangeSet::default();
        for (s, l) in flushed.iter() {
            let (a, b) = (s as usize, (s + l) as usize);
            let State { live, durable, .. } = &mut *st;
            durable[a..b].copy_from_slice(&live[a..b]);
        }
        // Keep only the dirty parts no flush covered.
        for (ds, dl) in st.dirty.iter() {
            let mut cursor = ds;
            let end = ds + dl;
            for (fs, fl) in flushed.iter() {
                let fe = fs + fl;
                if fe <= cursor || fs >= end {
                    continue;
                }
                if fs > cursor {
                    still_dirty.insert(cursor, fs - cursor);
                }
                cursor = cursor.max(fe);
            }
            if cursor < end {
                still_dirty.insert(cursor, end - cursor);
            }
        }
        st.dirty = still_dirty;
        Ok(())
    }

    fn flush_dirty(&self) -> io::Result<u64> {
        let mut st = self.state.lock().expect("crash media lock");
        if st.crashed {
            return Err(crashed());
        }
        let dirty: Vec<(u64, u64)> = st.dirty.iter().collect();
        let mut bytes = 0;
        for (s, l) in dirty {
            st.flushed.insert(s, l);
            bytes += l;
        }
        Ok(bytes)
    }

    fn protect(&self, read_only: bool) -> io::Result<()> {
        let mut st = self.state.lock().expect("crash media lock");
        if st.crashed {
            return Err(crashed());
        }
        st.protected = read_only;
        Ok(())
    }

    fn zero(&self, offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 16;
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            self.write(offset + done, &zeros[..n as usize])?;
            done += n;
        }
        self.persist(offset, len)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let st = self.state.lock().expect("crash media lock");
        if st.crashed {
            return Err(crashed());
        }
        if st.protected {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the medium is fenced"));
        }
        check_bounds(st.live.len() as u64, offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpersisted_writes_can_be_dropped_kept_or_torn() {
        let m = CrashMedia::new(4096, TearGranularity::Nvram);
        m.write(0, &[1; 64]).unwrap();
        m.persist(0, 64).unwrap();
        m.write(64, &[2; 64]).unwrap();
        let images = m.crash_images(4, 7);
        assert_eq!(&images[0][64..128], &[0; 64], "dropped image keeps old bytes");
        assert_eq!(&images[1][64..128], &[2; 64], "kept image has new bytes");
        assert!(images.iter().all(|i| i[..64] == [1; 64]), "persisted bytes survive");
        let torn = &images[2][64..128];
        assert!(torn.chunks(8).all(|c| c == [0; 8] || c == [2; 8]), "tears at 8 bytes");
    }

    #[test]
    fn crash_point_stops_the_barrier_and_everything_after() {
        let m = CrashMedia::new(4096, TearGranularity::Sector).crash_at(1);
        m.write(0, &[1; 8]).unwrap();
        m.persist(0, 8).unwrap();
        m.write(8, &[2; 8]).unwrap();
        assert!(m.persist(8, 8).is_err());
        assert!(m.write(16, &[3; 8]).is_err());
        assert_eq!(&m.durable_image()[..16], &[1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn range_set_merges_overlaps_and_neighbours() {
        let mut r = RangeSet::default();
        r.insert(10, 5);
        r.insert(20, 5);
        r.insert(14, 7);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(10, 15)]);
        r.insert(0, 10);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(0, 25)]);
    }
}
