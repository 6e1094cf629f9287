//! Prometheus metrics of the projector, served at `GET /metrics`.

use actix_web::{web, HttpResponse};
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use service_runtime::breaker::BreakerMetrics;
use service_runtime::postgres::{DbPool, PoolMetrics};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Everything `/metrics` reports; cloned into the consume loop.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub applied: IntCounter,
    pub already_applied: IntCounter,
    pub parked: IntCounter,
    pub failed_batches: IntCounter,
    pub batch_seconds: Histogram,
    /// Per `topic`/`partition`: messages in the partition not yet applied.
    lag_events: IntGaugeVec,
    /// Per `topic`/`partition`: age of the oldest unapplied message (0 when
    /// caught up).
    lag_seconds: GaugeVec,
    dead_letters: IntGauge,
    pools: PoolMetrics,
    breakers: BreakerMetrics,
    /// What the lag gauges are computed from (see [`LagTracker`]); the age
    /// is recomputed at every scrape, so it grows while a batch is stuck.
    lag_state: Arc<Mutex<HashMap<(String, i32), PartitionLag>>>,
    /// Per projection: events replayed by the running (or last) rebuild.
    rebuild_done: IntGaugeVec,
    /// Per projection: events to replay, as counted when the rebuild started.
    rebuild_total: IntGaugeVec,
    /// Per projection: 1 while a rebuild runs.
    rebuild_running: IntGaugeVec,
}

impl Metrics {
    /// The registry `/metrics` serves, for layers that bring their own
    /// collectors (the HTTP protection layer).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Circuit breaker collectors of this registry (the admin API's rate
    /// limiter reports its Redis breaker here).
    pub fn breakers(&self) -> &BreakerMetrics {
        &self.breakers
    }

    /// A fresh registry per application, so several instances in one process
    /// (tests) do not collide.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let metrics = Self {
            applied: IntCounter::new(
                "projector_applied_events_total",
                "Messages applied to the read models (replays included)",
            )?,
            already_applied: IntCounter::new(
                "projector_already_applied_total",
                "Messages dropped as already applied (below the stored offset, or delivered again)",
            )?,
            parked: IntCounter::new(
                "projector_parked_events_total",
                "Messages parked as dead letters",
            )?,
            failed_batches: IntCounter::new(
                "projector_failed_batches_total",
                "Batch transactions that failed and were retried",
            )?,
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "projector_batch_seconds",
                    "Time to apply and commit one batch",
                )
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 14)?),
            )?,
            lag_events: IntGaugeVec::new(
                Opts::new(
                    "projector_lag_events",
                    "Messages in the partition not yet applied",
                ),
                &["topic", "partition"],
            )?,
            lag_seconds: GaugeVec::new(
                Opts::new(
                    "projector_lag_seconds",
                    "Age of the oldest unapplied message in the partition",
                ),
                &["topic", "partition"],
            )?,
            dead_letters: IntGauge::new(
                "projector_dead_letters",
                "Parked dead letters of this consumer group",
            )?,
            rebuild_done: IntGaugeVec::new(
                Opts::new(
                    "projector_rebuild_events_done",
                    "Events replayed by the projection's running or last rebuild",
                ),
                &["projection"],
            )?,
            rebuild_total: IntGaugeVec::new(
                Opts::new(
                    "projector_rebuild_events_total",
                    "Events the projection's rebuild has to replay (counted at its start)",
                ),
                &["projection"],
            )?,
            rebuild_running: IntGaugeVec::new(
                Opts::new(
                    "projector_rebuild_running",
                    "1 while the projection is being rebuilt",
                ),
                &["projection"],
            )?,
            lag_state: Arc::default(),
            pools: PoolMetrics::new()?,
            breakers: BreakerMetrics::new(),
            registry,
        };
        metrics.pools.register(&metrics.registry)?;
        metrics.breakers.register(&metrics.registry)?;
        metrics
            .registry
            .register(Box::new(metrics.applied.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.already_applied.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.parked.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.failed_batches.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.batch_seconds.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.lag_events.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.lag_seconds.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.dead_letters.clone()))?;
        for gauge in [
            &metrics.rebuild_done,
            &metrics.rebuild_total,
            &metrics.rebuild_running,
        ] {
            metrics.registry.register(Box::new(gauge.clone()))?;
        }
        Ok(metrics)
    }
}

impl Metrics {
    fn set_lag(&self, topic: &str, partition: i32, state: PartitionLag) {
        let (Some(high), Some(next)) = (state.high, state.next) else {
            return;
        };
        let lag = (high - next).max(0);
        let labels = [topic, &partition.to_string()];
        self.lag_events.with_label_values(&labels).set(lag);
        let age = match state.oldest_unapplied_ms {
            Some(ms) if lag > 0 => {
                (chrono::Utc::now().timestamp_millis() - ms).max(0) as f64 / 1000.0
            }
            _ => 0.0,
        };
        self.lag_seconds.with_label_values(&labels).set(age);
    }

    /// Recomputes every partition's lag gauges as of now.
    fn refresh_lag(&self) {
        let states: Vec<((String, i32), PartitionLag)> = match self.lag_state.lock() {
            Ok(states) => states.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            Err(_) => return,
        };
        for ((topic, partition), state) in states {
            self.set_lag(&topic, partition, state);
        }
    }
}

/// The consumer group whose dead letters `/metrics` counts.
pub struct Group(pub String);

/// The gauges kept in the database: parked dead letters, and the progress of
/// rebuilds (they run in another process, `projector rebuild`, and write it
/// to the `projections` table).
async fn refresh_from_database(metrics: &Metrics, pool: &DbPool, group: &str) {
    let mut connection = match pool.acquire().await {
        Ok(connection) => connection,
        // A stale gauge is better than no metrics at all.
        Err(error) => {
            tracing::warn!(%error, "cannot count dead letters or read rebuild progress");
            return;
        }
    };
    match sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM projector_dead_letters WHERE consumer_group = $1"#,
        group
    )
    .fetch_one(&mut *connection)
    .await
    {
        Ok(count) => metrics.dead_letters.set(count),
        Err(error) => tracing::warn!(%error, "cannot count dead letters"),
    }
    // Rebuilds run in another process (`projector rebuild`): their progress
    // is read from the table they write it to.
    match sqlx::query!(
        r#"SELECT name, rebuild_done, rebuild_total,
                  (rebuild_started_at IS NOT NULL AND rebuild_finished_at IS NULL) AS "running!"
             FROM projections"#
    )
    .fetch_all(&mut *connection)
    .await
    {
        Ok(rows) => {
            for row in rows {
                let labels = [row.name.as_str()];
                metrics
                    .rebuild_done
                    .with_label_values(&labels)
                    .set(row.rebuild_done);
                metrics
                    .rebuild_total
                    .with_label_values(&labels)
                    .set(row.rebuild_total);
                metrics
                    .rebuild_running
                    .with_label_values(&labels)
                    .set(i64::from(row.running));
            }
        }
        Err(error) => tracing::warn!(%error, "cannot read rebuild progress"),
    }
    // Read-only: a failed commit loses nothing.
    if let Err(error) = connection.finish().await {
        tracing::debug!(%error, "ending the metrics transaction");
    }
}

/// `GET /metrics` in the Prometheus text format.
pub async fn metrics(
    metrics: web::Data<Metrics>,
    pool: web::Data<DbPool>,
    group: web::Data<Group>,
) -> HttpResponse {
    metrics.refresh_lag();
    metrics.pools.observe("primary", pool.pool());
    // A hung primary must not hang the scrape; stale gauges beat none.
    if tokio::time::timeout(
        service_runtime::postgres::SCRAPE_QUERY_TIMEOUT,
        refresh_from_database(&metrics, &pool, &group.0),
    )
    .await
    .is_err()
    {
        tracing::warn!(
            "reading dead letters and rebuild progress timed out; serving the last values"
        );
    }
    let mut body = Vec::new();
    match TextEncoder::new().encode(&metrics.registry.gather(), &mut body) {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(body),
        Err(error) => HttpResponse::InternalServerError().body(error.to_string()),
    }
}

/// Per-partition lag: the high watermark comes from librdkafka's statistics
/// (every `statistics.interval.ms`, no extra round trip), the applied offset
/// from committed batches. Recomputed on both, so lag keeps growing while
/// the projector is stuck (e.g. Postgres down) and the broker keeps filling.
#[derive(Clone)]
pub struct LagTracker {
    metrics: Metrics,
}

#[derive(Debug, Default, Clone, Copy)]
struct PartitionLag {
    /// Offset after the newest message known to exist.
    high: Option<i64>,
    /// Next offset to apply.
    next: Option<i64>,
    /// Broker timestamp (ms) of the oldest message known to be unapplied.
    oldest_unapplied_ms: Option<i64>,
}

impl LagTracker {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }

    /// The partition's high watermark as the broker last reported it.
    pub fn observe_high(&self, topic: &str, partition: i32, high: i64) {
        self.update(topic, partition, |p| {
            p.high = Some(p.high.map_or(high, |h| h.max(high)));
            // Messages that arrived while caught up: produced since the
            // last report (statistics come every second).
            if p.oldest_unapplied_ms.is_none() && p.next.is_some_and(|n| high > n) {
                p.oldest_unapplied_ms = Some(chrono::Utc::now().timestamp_millis());
            }
        });
    }

    /// A batch with messages of the partition up to `end` (exclusive), the
    /// oldest stamped `oldest_ms`, is being applied: they are all unapplied
    /// until it commits, however long that takes.
    pub fn batch_started(&self, topic: &str, partition: i32, end: i64, oldest_ms: Option<i64>) {
        self.update(topic, partition, |p| {
            p.high = Some(p.high.map_or(end, |h| h.max(end)));
            if let Some(ms) = oldest_ms {
                p.oldest_unapplied_ms = Some(p.oldest_unapplied_ms.map_or(ms, |o| o.min(ms)));
            }
        });
    }

    /// A batch committed: `next` is the partition's next offset to apply and
    /// `newest_ms` the stamp of its newest applied message.
    pub fn applied(&self, topic: &str, partition: i32, next: i64, newest_ms: Option<i64>) {
        self.update(topic, partition, |p| {
            p.next = Some(p.next.map_or(next, |n| n.max(next)));
            let pending = p.high.is_some_and(|h| h > next);
            // What is still pending was produced after the newest applied
            // message: its age is at most that message's.
            p.oldest_unapplied_ms = if pending { newest_ms } else { None };
        });
    }

    /// The partition moved to another member of the group: its lag is
    /// theirs to report now. Without this an instance keeps exporting the
    /// lag it last saw for every partition it ever held, frozen, and a sum
    /// over instances counts those partitions twice.
    pub fn forget(&self, topic: &str, partition: i32) {
        if let Ok(mut partitions) = self.metrics.lag_state.lock() {
            partitions.remove(&(topic.to_owned(), partition));
        }
        let labels = [topic, &partition.to_string()];
        // An error only says the partition never had a gauge.
        let _ = self.metrics.lag_events.remove_label_values(&labels);
        let _ = self.metrics.lag_seconds.remove_label_values(&labels);
    }

    fn update(&self, topic: &str, partition: i32, change: impl FnOnce(&mut PartitionLag)) {
        let state = {
            let Ok(mut partitions) = self.metrics.lag_state.lock() else {
                return;
            };
            let entry = partitions.entry((topic.to_owned(), partition)).or_default();
            change(entry);
            *entry
        };
        self.metrics.set_lag(topic, partition, state);
    }
}
