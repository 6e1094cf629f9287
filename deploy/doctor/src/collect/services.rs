//! The services' `/metrics`: scraped every round, then reduced to one
//! [`ServiceObservation`]: gauges as series over the scrapes, counters as
//! the difference between the first and the last scrape that answered.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::observations::{
    BreakerObservation, DatabaseLagView, PoolObservation, ReadSourceActivity, RouteActivity,
    ServiceObservation,
};
use crate::prometheus_text::{histogram_quantile, Scrape};

/// A failed scrape.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The request failed; `cause` is the error with its sources (reqwest's
    /// own message alone does not say timeout or refused).
    #[error("GET {url}: {cause}")]
    Request { url: String, cause: String },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
}

/// `GET {base}/metrics`, parsed.
pub async fn scrape(
    client: &reqwest::Client,
    base: &str,
    timeout: Duration,
) -> Result<Scrape, ScrapeError> {
    let url = format!("{}/metrics", base.trim_end_matches('/'));
    let request = |error: reqwest::Error| {
        let mut cause = if error.is_timeout() {
            format!("timed out after {timeout:?}")
        } else {
            error.to_string()
        };
        let mut source = std::error::Error::source(&error);
        while let Some(inner) = source {
            cause.push_str(&format!(": {inner}"));
            source = inner.source();
        }
        ScrapeError::Request {
            url: url.clone(),
            cause,
        }
    };
    let response = client
        .get(&url)
        .timeout(timeout)
        .send()
        .await
        .map_err(request)?;
    let status = response.status();
    if !status.is_success() {
        return Err(ScrapeError::Status {
            url,
            status: status.as_u16(),
        });
    }
    let body = response.text().await.map_err(request)?;
    Ok(Scrape::parse(&body))
}

/// A counter's increase from `first` to `last`; a service that restarted in
/// between (its counter went down) counts from zero.
fn increase(first: f64, last: f64) -> f64 {
    if last >= first {
        last - first
    } else {
        last
    }
}

/// Requests the doctor itself causes, or that say nothing about load.
fn is_own_route(route: &str) -> bool {
    route == "/metrics" || route.starts_with("/health")
}

/// Reduces one service's scrapes (None = that round's scrape failed).
pub fn summarize(service: &str, url: &str, scrapes: &[Option<Scrape>]) -> ServiceObservation {
    let ok: Vec<&Scrape> = scrapes.iter().flatten().collect();
    let mut observation = ServiceObservation {
        service: service.to_owned(),
        url: url.to_owned(),
        scrapes: scrapes.len(),
        failed_scrapes: scrapes.len() - ok.len(),
        ..ServiceObservation::default()
    };
    observation.pools = pools(&ok);
    observation.breakers = breakers(&ok);
    observation.database_lag = database_lag(&ok);
    observation.outbox_lag_secs = ok
        .iter()
        .filter_map(|s| s.value("outbox_lag_seconds", &[]))
        .collect();
    if let (Some(first), Some(last)) = (ok.first(), ok.last()) {
        if ok.len() >= 2 {
            observation.routes = routes(first, last);
            observation.reads = reads(first, last);
            observation.applied_events = counter(first, last, "projector_applied_events_total");
            observation.shed_requests = counter(first, last, "http_requests_shed_total");
        }
    }
    observation
}

fn counter(first: &Scrape, last: &Scrape, name: &str) -> Option<f64> {
    let end = last.value(name, &[])?;
    Some(increase(first.value(name, &[]).unwrap_or(0.0), end))
}

fn pools(scrapes: &[&Scrape]) -> Vec<PoolObservation> {
    let mut pools: BTreeMap<String, PoolObservation> = BTreeMap::new();
    for scrape in scrapes {
        for max in scrape.series("db_pool_max_connections") {
            let name = max.label("pool").to_owned();
            let in_use = scrape
                .value(
                    "db_pool_connections",
                    &[("pool", &name), ("state", "in_use")],
                )
                .unwrap_or(0.0);
            let pool = pools
                .entry(name.clone())
                .or_insert_with(|| PoolObservation {
                    pool: name,
                    max: 0,
                    in_use: Vec::new(),
                });
            pool.max = max.value as i64;
            pool.in_use.push(in_use as i64);
        }
    }
    pools.into_values().collect()
}

fn breakers(scrapes: &[&Scrape]) -> Vec<BreakerObservation> {
    let mut breakers: BTreeMap<String, BreakerObservation> = BTreeMap::new();
    for scrape in scrapes {
        for state in scrape.series("circuit_breaker_state") {
            let name = state.label("breaker").to_owned();
            let breaker = breakers
                .entry(name.clone())
                .or_insert_with(|| BreakerObservation {
                    breaker: name,
                    samples: 0,
                    open_samples: 0,
                });
            breaker.samples += 1;
            if state.value != 0.0 {
                breaker.open_samples += 1;
            }
        }
    }
    breakers.into_values().collect()
}

fn database_lag(scrapes: &[&Scrape]) -> Vec<DatabaseLagView> {
    let mut views: BTreeMap<String, DatabaseLagView> = BTreeMap::new();
    for scrape in scrapes {
        for healthy in scrape.series("query_database_healthy") {
            let name = healthy.label("database").to_owned();
            let lag = scrape.value("query_database_lag_seconds", &[("database", &name)]);
            let view = views
                .entry(name.clone())
                .or_insert_with(|| DatabaseLagView {
                    database: name,
                    lag_secs: Vec::new(),
                    healthy: Vec::new(),
                });
            view.healthy.push(healthy.value != 0.0);
            if let Some(lag) = lag {
                view.lag_secs.push(lag);
            }
        }
    }
    views.into_values().collect()
}

fn routes(first: &Scrape, last: &Scrape) -> Vec<RouteActivity> {
    // (method, route) → (requests, 5xx)
    let mut counts: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for sample in last.series("http_requests_total") {
        let (method, route, status) = (
            sample.label("method"),
            sample.label("route"),
            sample.label("status"),
        );
        if is_own_route(route) {
            continue;
        }
        let before = first
            .value(
                "http_requests_total",
                &[("method", method), ("route", route), ("status", status)],
            )
            .unwrap_or(0.0);
        let n = increase(before, sample.value);
        let entry = counts
            .entry((method.to_owned(), route.to_owned()))
            .or_default();
        entry.0 += n;
        if status.starts_with('5') {
            entry.1 += n;
        }
    }
    counts
        .into_iter()
        .filter(|(_, (requests, _))| *requests > 0.0)
        .map(|((method, route), (requests, server_errors))| {
            let buckets: Vec<(f64, f64)> = last
                .series("http_request_duration_seconds_bucket")
                .filter(|s| s.label("method") == method && s.label("route") == route)
                .filter_map(|s| {
                    let le = match s.label("le") {
                        "+Inf" => f64::INFINITY,
                        other => other.parse().ok()?,
                    };
                    let before = first
                        .value(
                            "http_request_duration_seconds_bucket",
                            &[
                                ("method", &method),
                                ("route", &route),
                                ("le", s.label("le")),
                            ],
                        )
                        .unwrap_or(0.0);
                    Some((le, increase(before, s.value)))
                })
                .collect();
            RouteActivity {
                p50_ms: histogram_quantile(0.5, &buckets).map(|s| s * 1000.0),
                p99_ms: histogram_quantile(0.99, &buckets).map(|s| s * 1000.0),
                method,
                route,
                requests,
                server_errors,
            }
        })
        .collect()
}

fn reads(first: &Scrape, last: &Scrape) -> Vec<ReadSourceActivity> {
    last.series("query_reads_total")
        .filter_map(|sample| {
            let (endpoint, source) = (sample.label("endpoint"), sample.label("source"));
            let before = first
                .value(
                    "query_reads_total",
                    &[("endpoint", endpoint), ("source", source)],
                )
                .unwrap_or(0.0);
            let reads = increase(before, sample.value);
            (reads > 0.0).then(|| ReadSourceActivity {
                endpoint: endpoint.to_owned(),
                source: source.to_owned(),
                reads,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(in_use: u32, requests: u32, fast: u32, reads_local: u32, breaker: u8) -> Scrape {
        Scrape::parse(&format!(
            r#"db_pool_connections{{pool="replica-1",state="in_use"}} {in_use}
db_pool_connections{{pool="replica-1",state="idle"}} 0
db_pool_max_connections{{pool="replica-1"}} 1
http_requests_total{{method="GET",route="/orders/{{id}}",status="200"}} {requests}
http_requests_total{{method="GET",route="/metrics",status="200"}} 999
http_request_duration_seconds_bucket{{method="GET",route="/orders/{{id}}",le="0.01"}} {fast}
http_request_duration_seconds_bucket{{method="GET",route="/orders/{{id}}",le="1"}} {requests}
http_request_duration_seconds_bucket{{method="GET",route="/orders/{{id}}",le="+Inf"}} {requests}
query_reads_total{{endpoint="orders",source="local"}} {reads_local}
circuit_breaker_state{{breaker="db-replica-1"}} {breaker}
query_database_healthy{{database="replica-1"}} 1
query_database_lag_seconds{{database="replica-1"}} 0.5
"#
        ))
    }

    #[test]
    fn gauges_become_series_and_counters_window_deltas() {
        let scrapes = vec![
            Some(scrape(1, 1000, 1000, 50, 0)),
            None,
            Some(scrape(0, 1050, 1000, 60, 1)),
            Some(scrape(1, 1100, 1000, 70, 0)),
        ];
        let o = summarize("query-service", "http://q", &scrapes);
        assert_eq!((o.scrapes, o.failed_scrapes), (4, 1));
        assert_eq!(o.pools.len(), 1);
        assert_eq!(o.pools[0].in_use, vec![1, 0, 1]);
        assert_eq!(o.pools[0].saturated_samples(), 2);
        assert_eq!(o.routes.len(), 1, "the doctor's own /metrics is left out");
        let route = &o.routes[0];
        assert_eq!(route.requests, 100.0);
        // Every request of the window was slower than 10 ms: history (1000
        // fast ones before) does not dilute the percentiles.
        assert!(route.p50_ms.expect("p50") > 10.0);
        assert_eq!(o.reads[0].reads, 20.0);
        assert_eq!(o.breakers[0].open_samples, 1);
        assert_eq!(o.database_lag[0].lag_secs, vec![0.5, 0.5, 0.5]);
    }
}
