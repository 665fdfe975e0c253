//! A fixed-bucket histogram of agent answer times, lock-free to record and
//! read at scrape time (the daemon encodes it as a Prometheus histogram).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds; one more bucket holds
/// everything slower.
pub const BUCKET_MICROS: [u64; 12] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];

/// Counts of answer times per bucket, and their sum.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKET_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

/// What a [`LatencyHistogram`] held at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencySnapshot {
    /// `(upper bound in seconds, count in this bucket)`; the last bound is
    /// `f64::MAX` (+Inf). Counts are per bucket, not cumulative.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of all observations, in seconds.
    pub sum_seconds: f64,
    /// Number of observations.
    pub count: u64,
}

impl LatencyHistogram {
    /// Record one answer time.
    pub fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let index = BUCKET_MICROS.iter().position(|&b| micros <= b).unwrap_or(BUCKET_MICROS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> LatencySnapshot {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let bounds = BUCKET_MICROS.iter().map(|&b| b as f64 / 1e6).chain([f64::MAX]);
        LatencySnapshot {
            buckets: bounds.zip(counts.iter().copied()).collect(),
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: counts.iter().sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_times_land_in_their_buckets() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(90));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(5));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0001, 1));
        assert_eq!(s.buckets[5], (0.005, 1));
        assert_eq!(s.buckets.last().unwrap(), &(f64::MAX, 1));
        assert!((s.sum_seconds - 5.00309).abs() < 1e-9);
    }
}
