//! The pool balancer's plan: which block regions shrink, and by how much,
//! when the pool runs short of free pages (SPEC §5).
//!
//! Block regions take frames as blocks are written, so their quotas may
//! add up to more than the pool. When the pool's free pages fall under the
//! *low* watermark, the balancer frees pages until they reach the *high*
//! one, by lowering the resident quota of block regions to below the
//! frames they hold (each shrink goes through the region's guest agent,
//! like `region resize`).
//!
//! Who gives how much: each region gives in proportion to the frames it
//! holds divided by its weight, so a region with twice the weight gives
//! half as much per frame held, and an idle region gives nothing. No
//! region goes under its floor: 1 MiB with a swap tier (its blocks can go
//! to swap), its resident blocks without one (only free frames can go).
//! What a region cannot give is shared among the others (water-filling).

use serde::{Deserialize, Serialize};

/// Region attribute: the block region's balancing weight (1 to 10,000;
/// 100 when absent).
pub const ATTR_WEIGHT: &str = "block.weight";
/// The weight of a region that has none set.
pub const DEFAULT_WEIGHT: u64 = 100;
/// Weights range from this ...
pub const MIN_WEIGHT: u64 = 1;
/// ... to this.
pub const MAX_WEIGHT: u64 = 10_000;
/// The fewest frames the balancer leaves a region with a swap tier.
pub const FLOOR_FRAMES: u64 = 256;

/// When the balancer acts, as fractions of the pool's data pages free.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Watermarks {
    /// Act when free pages fall under this fraction ...
    pub low: f64,
    /// ... and free pages until they reach this one.
    pub high: f64,
}

impl Default for Watermarks {
    fn default() -> Watermarks {
        Watermarks { low: 0.05, high: 0.10 }
    }
}

impl Watermarks {
    /// Checked watermarks: `0 <= low <= high <= 0.9`.
    pub fn new(low: f64, high: f64) -> Result<Watermarks, String> {
        let valid = |x: f64| x.is_finite() && (0.0..=0.9).contains(&x);
        if !valid(low) || !valid(high) {
            return Err(format!(
                "watermarks are fractions of the pool from 0% to 90%, not {:.1}% and {:.1}%",
                low * 100.0,
                high * 100.0
            ));
        }
        if low > high {
            return Err(format!(
                "the low watermark ({:.1}%) must not be above the high one ({:.1}%)",
                low * 100.0,
                high * 100.0
            ));
        }
        Ok(Watermarks { low, high })
    }
}

/// Parse a weight attribute or argument.
pub fn parse_weight(text: &str) -> Result<u64, String> {
    text.parse::<u64>().ok().filter(|w| (MIN_WEIGHT..=MAX_WEIGHT).contains(w)).ok_or_else(|| {
        format!("a weight is a whole number from {MIN_WEIGHT} to {MAX_WEIGHT}, not {text:?}")
    })
}

/// A block region as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub weight: u64,
    /// Frames held (taken from the pool).
    pub frames: u64,
    /// Frames holding blocks.
    pub resident: u64,
    pub swap: bool,
}

impl Candidate {
    /// The fewest frames the balancer leaves it.
    pub fn floor(&self) -> u64 {
        if self.swap {
            FLOOR_FRAMES.min(self.frames)
        } else {
            self.resident
        }
    }
}

/// One shrink of the plan: lower `name`'s quota to `frames`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shrink {
    pub name: String,
    /// Frames held before.
    pub from: u64,
    /// The new quota, in frames.
    pub frames: u64,
}

/// Pages to free now: none unless `free` is under the low watermark, else
/// up to the high one.
pub fn pages_to_free(data_pages: u64, free: u64, marks: Watermarks) -> u64 {
    let low = (data_pages as f64 * marks.low).ceil() as u64;
    if free >= low {
        return 0;
    }
    let high = (data_pages as f64 * marks.high).ceil() as u64;
    high.saturating_sub(free)
}

/// The shrinks that free `need` pages (or as many as the floors allow).
pub fn plan(need: u64, candidates: &[Candidate]) -> Vec<Shrink> {
    let mut give = vec![0u64; candidates.len()];
    let mut left = need;
    // Water-filling: share what is left among regions with room to give,
    // by frames held per weight; a region that hits its floor drops out.
    for _ in 0..candidates.len() {
        let open: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].frames - candidates[i].floor() > give[i])
            .collect();
        if left == 0 || open.is_empty() {
            break;
        }
        let share = |i: usize| candidates[i].frames as f64 / candidates[i].weight as f64;
        let total: f64 = open.iter().map(|&i| share(i)).sum();
        if total == 0.0 {
            break;
        }
        let mut given = 0;
        for &i in &open {
            let room = candidates[i].frames - candidates[i].floor() - give[i];
            let part = ((left as f64 * share(i) / total).ceil() as u64).min(room).min(left - given);
            give[i] += part;
            given += part;
        }
        left -= given;
        if given == 0 {
            break;
        }
    }
    candidates
        .iter()
        .zip(give)
        .filter(|(_, g)| *g > 0)
        .map(|(c, g)| Shrink { name: c.name.clone(), from: c.frames, frames: c.frames - g })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &str, weight: u64, frames: u64, resident: u64, swap: bool) -> Candidate {
        Candidate { name: name.into(), weight, frames, resident, swap }
    }

    fn freed(plan: &[Shrink]) -> u64 {
        plan.iter().map(|s| s.from - s.frames).sum()
    }

    #[test]
    fn nothing_happens_above_the_low_watermark_and_below_it_free_goes_up_to_the_high_one() {
        let marks = Watermarks { low: 0.05, high: 0.10 };
        assert_eq!(pages_to_free(10_000, 500, marks), 0);
        assert_eq!(pages_to_free(10_000, 499, marks), 501);
        assert_eq!(pages_to_free(10_000, 0, marks), 1000);
    }

    #[test]
    fn regions_give_by_frames_held_per_weight() {
        let regions = [
            region("a", 100, 4000, 4000, true),
            region("b", 200, 4000, 4000, true),
            region("idle", 100, 0, 0, true),
        ];
        let plan = plan(3000, &regions);
        assert_eq!(freed(&plan), 3000);
        let by = |n: &str| plan.iter().find(|s| s.name == n).map(|s| s.from - s.frames);
        assert_eq!((by("a"), by("b"), by("idle")), (Some(2000), Some(1000), None));
    }

    #[test]
    fn floors_hold_and_what_one_cannot_give_the_others_do() {
        let regions = [
            // Without swap only its 100 free frames can go.
            region("noswap", 1, 1000, 900, false),
            region("big", 100, 5000, 5000, true),
        ];
        let plan = plan(2000, &regions);
        assert_eq!(freed(&plan), 2000);
        let noswap = plan.iter().find(|s| s.name == "noswap").unwrap();
        assert_eq!(noswap.frames, 900);
        // Asking for more than there is stops at the floors.
        let plan = super::plan(1_000_000, &regions);
        assert_eq!(freed(&plan), 100 + (5000 - FLOOR_FRAMES));
    }

    #[test]
    fn watermarks_and_weights_are_checked() {
        assert!(Watermarks::new(0.1, 0.05).unwrap_err().contains("must not be above"));
        assert!(Watermarks::new(0.05, 0.95).unwrap_err().contains("from 0% to 90%"));
        assert_eq!(parse_weight("250"), Ok(250));
        assert!(parse_weight("0").unwrap_err().contains("from 1 to 10000"));
    }
}
