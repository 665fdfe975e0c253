//! Events per second over the last few seconds (a block region's faults/s
//! in `region stats`).
//!
//! Counts go into one bucket per whole second since the window was made;
//! the rate is the sum of the current second's bucket and the ones of the
//! [`SECONDS`]` - 1` seconds before it, divided by the time they span (at
//! least a second, so that a burst just now does not read as a huge rate).
//! Buckets are brought up to date when counted or read, so no thread
//! samples anything.
//! Prometheus has the counters and computes its own rates.

use std::time::Instant;

/// Seconds the rate is taken over.
pub const SECONDS: u64 = 10;
const BUCKETS: usize = SECONDS as usize;

/// A sliding window of per-second counts.
#[derive(Debug)]
pub struct RateWindow {
    start: Instant,
    /// The second (since `start`) the newest bucket counts.
    current: u64,
    /// Counts of seconds `current - BUCKETS + 1 ..= current`, at
    /// `second % BUCKETS`.
    buckets: [u64; BUCKETS],
}

impl RateWindow {
    pub fn new(start: Instant) -> RateWindow {
        RateWindow { start, current: 0, buckets: [0; BUCKETS] }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs()
    }

    /// Move the newest bucket to `second`, emptying the ones it passes.
    fn advance(&mut self, second: u64) {
        if second <= self.current {
            return;
        }
        let passed = (second - self.current).min(BUCKETS as u64);
        for s in second + 1 - passed..=second {
            self.buckets[(s % BUCKETS as u64) as usize] = 0;
        }
        self.current = second;
    }

    /// Count `n` events at `now`.
    pub fn count(&mut self, n: u64, now: Instant) {
        let second = self.second(now);
        self.advance(second);
        self.buckets[(second % BUCKETS as u64) as usize] += n;
    }

    /// Events per second over the last [`SECONDS`] (fewer while the
    /// window is younger), the current second so far included.
    pub fn per_second(&mut self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.start);
        let second = elapsed.as_secs();
        self.advance(second);
        let first = second.saturating_sub(SECONDS - 1);
        let sum: u64 = (first..=second).map(|s| self.buckets[(s % BUCKETS as u64) as usize]).sum();
        let span = (second - first) as f64 + f64::from(elapsed.subsec_millis()) / 1000.0;
        sum as f64 / span.max(1.0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_rate_covers_the_last_ten_seconds_and_forgets_older_ones() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut window = RateWindow::new(start);
        assert_eq!(window.per_second(at(500)), 0.0);
        // A burst just now counts over at least a second.
        window.count(30, at(200));
        window.count(10, at(900));
        assert_eq!(window.per_second(at(900)), 40.0);
        // 1,040 over 2.5 s.
        window.count(1000, at(1100));
        assert_eq!(window.per_second(at(2500)), 416.0);
        // Over the ten seconds 1..=10 (9.5 s of them so far): second 0 has
        // left the window, and second 1 a second later.
        assert_eq!(window.per_second(at(10_500)), 1000.0 / 9.5);
        assert_eq!(window.per_second(at(11_000)), 0.0);
        // A long quiet spell empties every bucket.
        window.count(50, at(100_500));
        assert_eq!(window.per_second(at(101_000)), 50.0 / 9.0);
    }
}
