//! Prometheus metrics of query-service, served at `GET /metrics`.
//!
//! Counters are bumped by the handlers; the per-database gauges (health,
//! lag, checkpoint lag) and the cache state are read from the router and
//! the caches at scrape time, so they are never older than the last check.

use actix_web::{web, HttpResponse};
use prometheus::{
    Encoder, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::cache::{Feed, RedisTier};
use crate::replicas::ReadRouter;

/// Everything `/metrics` reports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Per `endpoint` and `source` (`local`, `redis`, `replica-N`,
    /// `primary`): reads answered. The cache hit ratio of a tier is its
    /// share of an endpoint's reads.
    reads: IntCounterVec,
    database_healthy: IntGaugeVec,
    database_lag_seconds: GaugeVec,
    database_checkpoint_lag: IntGaugeVec,
    feed_up: IntGauge,
    redis_breaker_open: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reads = IntCounterVec::new(
            Opts::new(
                "query_reads_total",
                "Reads answered, by endpoint and source",
            ),
            &["endpoint", "source"],
        )?;
        let database_healthy = IntGaugeVec::new(
            Opts::new(
                "query_database_healthy",
                "1 if the database passed its last check",
            ),
            &["database"],
        )?;
        let database_lag_seconds = GaugeVec::new(
            Opts::new(
                "query_database_lag_seconds",
                "Age of the newest primary write the database has not replayed",
            ),
            &["database"],
        )?;
        let database_checkpoint_lag = IntGaugeVec::new(
            Opts::new(
                "query_database_checkpoint_lag_messages",
                "Projector messages the database's checkpoints trail the primary's",
            ),
            &["database"],
        )?;
        let feed_up = IntGauge::new(
            "query_invalidation_feed_up",
            "1 while subscribed to the projector's invalidation signals",
        )?;
        let redis_breaker_open = IntGauge::new(
            "query_redis_breaker_open",
            "1 while Redis calls are skipped after a failure",
        )?;
        registry.register(Box::new(reads.clone()))?;
        registry.register(Box::new(database_healthy.clone()))?;
        registry.register(Box::new(database_lag_seconds.clone()))?;
        registry.register(Box::new(database_checkpoint_lag.clone()))?;
        registry.register(Box::new(feed_up.clone()))?;
        registry.register(Box::new(redis_breaker_open.clone()))?;
        Ok(Self {
            registry,
            reads,
            database_healthy,
            database_lag_seconds,
            database_checkpoint_lag,
            feed_up,
            redis_breaker_open,
        })
    }

    /// One read of `endpoint` answered from `source`.
    pub fn read(&self, endpoint: &str, source: &str) {
        self.reads.with_label_values(&[endpoint, source]).inc();
    }

    fn refresh(&self, router: &ReadRouter, feed: &Feed, redis: &RedisTier) {
        for database in router.databases() {
            let name = database.name().as_ref();
            let health = database.health();
            self.database_healthy
                .with_label_values(&[name])
                .set(i64::from(health.healthy));
            if let Some(lag) = health.lag {
                self.database_lag_seconds
                    .with_label_values(&[name])
                    .set(lag.as_secs_f64());
            }
            if let Some(lag) = health.checkpoint_lag {
                self.database_checkpoint_lag
                    .with_label_values(&[name])
                    .set(lag);
            }
        }
        self.feed_up.set(i64::from(feed.is_up()));
        self.redis_breaker_open.set(i64::from(redis.is_open()));
    }
}

/// `GET /metrics` in the Prometheus text format.
pub async fn scrape(
    metrics: web::Data<Metrics>,
    router: web::Data<ReadRouter>,
    feed: web::Data<Feed>,
    redis: web::Data<RedisTier>,
) -> HttpResponse {
    metrics.refresh(&router, &feed, &redis);
    let mut buffer = Vec::new();
    if let Err(error) = TextEncoder::new().encode(&metrics.registry.gather(), &mut buffer) {
        tracing::error!(%error, "encoding metrics failed");
        return HttpResponse::InternalServerError().finish();
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(buffer)
}
