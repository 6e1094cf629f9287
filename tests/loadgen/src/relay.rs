//! Relay publish rate: how fast the outbox relay drains a backlog, read off
//! command-service's own `/metrics` (`relay_published_events_total`,
//! `outbox_lag_events`).

use std::future::Future;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Name of the measurement in reports.
pub const NAME: &str = "relay_publish";

/// A drained backlog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    pub name: String,
    /// Events published between the first and the last sample.
    pub events: u64,
    pub seconds: f64,
    pub events_per_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("reading {url}: {source}")]
    Scrape { url: String, source: reqwest::Error },
    #[error("{url} has no {metric} sample")]
    MissingMetric { url: String, metric: &'static str },
    #[error("the backlog was not drained within {0:?}")]
    Timeout(Duration),
    #[error("the relay published too little to measure ({0} events)")]
    TooLittle(u64),
}

/// Samples `base_url/metrics` every `every` until the outbox lag is zero.
/// The rate is taken between the first sample that shows published events
/// and the first that shows no lag, so the relay's start-up (lease, broker
/// connection) is not counted.
pub async fn measure_drain(
    base_url: &str,
    every: Duration,
    timeout: Duration,
) -> Result<Drain, DrainError> {
    let (drain, (), ()) = measure_drain_observed(base_url, every, timeout, || async {}).await?;
    Ok(drain)
}

/// [`measure_drain`], awaiting `observe` right after the window's first and
/// last samples and returning both observations with the drain: what the
/// drain cost (CPU, database counters) over the same window.
pub async fn measure_drain_observed<T, F, Fut>(
    base_url: &str,
    every: Duration,
    timeout: Duration,
    mut observe: F,
) -> Result<(Drain, T, T), DrainError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let url = format!("{}/metrics", base_url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    let mut first: Option<(Instant, u64, T)> = None;
    loop {
        let sampled = Instant::now();
        let text = client
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|source| DrainError::Scrape {
                url: url.clone(),
                source,
            })?
            .text()
            .await
            .map_err(|source| DrainError::Scrape {
                url: url.clone(),
                source,
            })?;
        let metric = |metric: &'static str| {
            sample(&text, metric).ok_or_else(|| DrainError::MissingMetric {
                url: url.clone(),
                metric,
            })
        };
        let published = metric("relay_published_events_total")? as u64;
        let lag = metric("outbox_lag_events")? as u64;
        match first.take() {
            None if published > 0 => first = Some((sampled, published, observe().await)),
            Some((t0, p0, start)) if lag == 0 => {
                let events = published - p0;
                if events == 0 {
                    return Err(DrainError::TooLittle(published));
                }
                let end = observe().await;
                let seconds = sampled.duration_since(t0).as_secs_f64();
                let drain = Drain {
                    name: NAME.to_owned(),
                    events,
                    seconds,
                    events_per_s: events as f64 / seconds,
                };
                return Ok((drain, start, end));
            }
            unchanged => first = unchanged,
        }
        if Instant::now() >= deadline {
            return Err(DrainError::Timeout(timeout));
        }
        tokio::time::sleep(every.saturating_sub(sampled.elapsed())).await;
    }
}

/// The value of an unlabelled sample in the Prometheus text format.
pub(crate) fn sample(text: &str, metric: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.split_once(' ')?;
            (name == metric).then(|| value.trim().parse().ok())?
        })
}

/// Every sample of a labelled metric: (the labels as written, value).
pub(crate) fn labelled_samples(text: &str, metric: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once("} ")?;
            Some((labels.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unlabelled_samples() {
        let text = "# HELP outbox_lag_events x\n# TYPE outbox_lag_events gauge\noutbox_lag_events 42\nrelay_published_events_total 1e3\n";
        assert_eq!(sample(text, "outbox_lag_events"), Some(42.0));
        assert_eq!(sample(text, "relay_published_events_total"), Some(1000.0));
        assert_eq!(sample(text, "outbox_lag"), None);
    }

    #[test]
    fn reads_labelled_samples() {
        let text = "# TYPE projector_lag_events gauge\nprojector_lag_events{partition=\"0\",topic=\"e.order\"} 12\nprojector_lag_events{partition=\"1\",topic=\"e.order\"} 0\nprojector_lag_events_other 5\n";
        assert_eq!(
            labelled_samples(text, "projector_lag_events"),
            vec![
                ("partition=\"0\",topic=\"e.order\"".to_owned(), 12.0),
                ("partition=\"1\",topic=\"e.order\"".to_owned(), 0.0)
            ]
        );
        assert_eq!(sample(text, "projector_lag_events"), None);
    }
}
