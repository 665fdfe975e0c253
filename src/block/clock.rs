//! Victim choice: which resident blocks leave the pool when room is needed.
//!
//! [`VictimPolicy`] is the one interface every chooser implements; the host
//! uses [`Clock`] (the CLOCK approximation of LRU over observed accesses).
//! The guest-directed chooser of a later release plugs in behind the same
//! interface.

/// Chooses frames to evict.
pub trait VictimPolicy: Send + std::fmt::Debug {
    /// Note an access to `frame`.
    fn touch(&mut self, frame: u64);
    /// Forget `frame` (it became free).
    fn forget(&mut self, frame: u64);
    /// Pick one occupied frame to evict, given which frames are occupied.
    fn choose(&mut self, occupied: &dyn Fn(u64) -> bool, frames: u64) -> Option<u64>;
    /// The number of frames changed (quota resize).
    fn resize(&mut self, frames: u64);
    /// Look at `frame` and those after it first (a hint): a shrink empties
    /// the frames past its new quota anyway, so a victim there saves
    /// moving a block out of the way.
    fn look_from(&mut self, frame: u64) {
        let _ = frame;
    }
}

/// CLOCK: a reference bit per frame and a hand sweeping over them; a frame
/// with its bit set gets a second chance.
#[derive(Debug, Default)]
pub struct Clock {
    referenced: Vec<bool>,
    hand: u64,
}

impl Clock {
    /// A clock over `frames` frames, none referenced.
    pub fn new(frames: u64) -> Clock {
        Clock { referenced: vec![false; frames as usize], hand: 0 }
    }
}

impl VictimPolicy for Clock {
    fn touch(&mut self, frame: u64) {
        if let Some(bit) = self.referenced.get_mut(frame as usize) {
            *bit = true;
        }
    }

    fn forget(&mut self, frame: u64) {
        if let Some(bit) = self.referenced.get_mut(frame as usize) {
            *bit = false;
        }
    }

    fn choose(&mut self, occupied: &dyn Fn(u64) -> bool, frames: u64) -> Option<u64> {
        if frames == 0 {
            return None;
        }
        // Two sweeps suffice: the first clears every bit it passes.
        for _ in 0..2 * frames {
            let frame = self.hand % frames;
            self.hand = (frame + 1) % frames;
            if !occupied(frame) {
                continue;
            }
            let bit = &mut self.referenced[frame as usize];
            if *bit {
                *bit = false;
            } else {
                return Some(frame);
            }
        }
        None
    }

    fn resize(&mut self, frames: u64) {
        self.referenced.resize(frames as usize, false);
        if self.hand >= frames {
            self.hand = 0;
        }
    }

    /// Move the hand: a sweep that starts at the shrink's tail gives the
    /// blocks there their second chance first, and so takes its victims
    /// there when they are as cold as the rest.
    fn look_from(&mut self, frame: u64) {
        if (frame as usize) < self.referenced.len() {
            self.hand = frame;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_gives_referenced_frames_a_second_chance() {
        let mut c = Clock::new(4);
        c.touch(0);
        c.touch(1);
        assert_eq!(c.choose(&|_| true, 4), Some(2));
        assert_eq!(c.choose(&|_| true, 4), Some(3));
        // 0 and 1 lost their bits on the first sweep.
        assert_eq!(c.choose(&|_| true, 4), Some(0));
    }

    #[test]
    fn a_sweep_from_the_tail_takes_equally_cold_victims_there_and_still_spares_the_hot() {
        let mut c = Clock::new(8);
        (0..8).for_each(|f| c.touch(f));
        c.look_from(6);
        // Every frame is referenced: the sweep clears 6, 7, 0..5, then
        // takes 6 and 7 rather than the head.
        assert_eq!(c.choose(&|_| true, 8), Some(6));
        assert_eq!(c.choose(&|_| true, 8), Some(7));
        // A tail touched again keeps its second chance; a cold head frame
        // goes first.
        let mut c = Clock::new(8);
        c.touch(6);
        c.touch(7);
        c.look_from(6);
        assert_eq!(c.choose(&|_| true, 8), Some(0));
    }

    #[test]
    fn clock_skips_free_frames_and_finds_none_when_all_are_free() {
        let mut c = Clock::new(3);
        assert_eq!(c.choose(&|f| f == 2, 3), Some(2));
        assert_eq!(c.choose(&|_| false, 3), None);
    }
}
