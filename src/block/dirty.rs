//! `DirtyFrames`: the frames of a block region written since its last
//! flush.
//!
//! A write marks its frame on every request, so marking must cost next to
//! nothing; a flush walks and clears what was marked, so that must cost in
//! proportion to the dirty frames, not to the region. Two bits per frame
//! (grown on demand): "dirty", and "listed" in a list of frames marked
//! since the last clear. Unmarking clears only the dirty bit; walking the
//! list skips frames that are no longer dirty. (A hash set paid a hash and
//! a probe per write; a plain bitmap would pay a scan of the whole region
//! per flush.)

/// Frames written since the last flush. See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct DirtyFrames {
    dirty: Vec<u64>,
    listed: Vec<u64>,
    list: Vec<u64>,
}

fn bit(frame: u64) -> (usize, u64) {
    ((frame / 64) as usize, 1u64 << (frame % 64))
}

impl DirtyFrames {
    /// Note that `frame` was written.
    pub fn insert(&mut self, frame: u64) {
        let (word, bit) = bit(frame);
        if word >= self.dirty.len() {
            self.dirty.resize(word + 1, 0);
            self.listed.resize(word + 1, 0);
        }
        self.dirty[word] |= bit;
        if self.listed[word] & bit == 0 {
            self.listed[word] |= bit;
            self.list.push(frame);
        }
    }

    /// `frame` need not be flushed any more (it was freed or moved).
    pub fn remove(&mut self, frame: u64) {
        let (word, bit) = bit(frame);
        if let Some(word) = self.dirty.get_mut(word) {
            *word &= !bit;
        }
    }

    /// The dirty frames, each once.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.list.iter().copied().filter(|&frame| {
            let (word, bit) = bit(frame);
            self.dirty[word] & bit != 0
        })
    }

    /// Forget every frame (after a flush).
    pub fn clear(&mut self) {
        for frame in self.list.drain(..) {
            let (word, _) = bit(frame);
            self.dirty[word] = 0;
            self.listed[word] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn it_holds_what_a_set_holds(ops in proptest::collection::vec((0u8..3, 0u64..300), 0..200)) {
            let (mut dirty, mut model) = (DirtyFrames::default(), BTreeSet::new());
            for (op, frame) in ops {
                match op {
                    0 => {
                        dirty.insert(frame);
                        model.insert(frame);
                    }
                    1 => {
                        dirty.remove(frame);
                        model.remove(&frame);
                    }
                    _ => {
                        dirty.clear();
                        model.clear();
                    }
                }
                let mut seen: Vec<u64> = dirty.iter().collect();
                seen.sort_unstable();
                prop_assert_eq!(seen, model.iter().copied().collect::<Vec<_>>());
            }
        }
    }
}
