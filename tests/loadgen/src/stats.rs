//! What one measurement produced, in the one shape every workload and every
//! baseline reports, so that the report can put them side by side.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, from 1 µs to 60 s, at 3
/// significant digits (0.1 % error), the usual HDR setting.
pub fn latency_histogram() -> Histogram<u64> {
    // Constant bounds that HDR accepts: a failure here is a bug, not input.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid HDR histogram bounds")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn from_histogram(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p95_ms: ms(histogram.value_at_quantile(0.95)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// One run of one workload (or baseline) at one concurrency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// What was measured, e.g. `command_append` or `pgbench_single_insert`.
    pub name: String,
    pub clients: usize,
    /// Length of the measured window (warm-up excluded).
    pub seconds: f64,
    /// Successful operations in the window.
    pub ops: u64,
    pub ops_per_s: f64,
    pub latency: Latency,
    /// Failed operations by cause (`"409"`, `"io"`, ...). Not in `ops`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, u64>,
}

/// The median of `values` (the mean of the middle two for an even count);
/// None when empty. Medians, not means: this machine is shared and noisy.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median([]), None);
        assert_eq!(median([f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn percentiles_come_from_the_histogram_in_milliseconds() {
        let mut h = latency_histogram();
        for micros in 1..=1000 {
            h.record(micros * 10).unwrap();
        }
        let latency = Latency::from_histogram(&h);
        assert!((latency.p50_ms - 5.0).abs() < 0.01, "{latency:?}");
        assert!((latency.p99_ms - 9.9).abs() < 0.01, "{latency:?}");
        assert!((latency.max_ms - 10.0).abs() < 0.01, "{latency:?}");
    }
}
