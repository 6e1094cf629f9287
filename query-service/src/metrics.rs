//! Prometheus metrics of query-service, served at `GET /metrics`.
//!
//! Counters are bumped by the handlers; the per-database gauges (health,
//! lag, checkpoint lag) and the cache state are read from the router and
//! the caches at scrape time, so they are never older than the last check.
//!
//! Circuit breakers ([`service_runtime::breaker`]): `redis-cache` in front
//! of Redis and `db-<database>` (`db-replica-1`, ..., `db-primary`) in front
//! of each database report `circuit_breaker_state{breaker}` (0 closed,
//! 1 open, 2 half-open), `circuit_breaker_transitions_total{breaker, to}`
//! and `circuit_breaker_rejected_calls_total{breaker}`. The counters count
//! only for breakers built with [`Metrics::breakers`]; the state gauge is
//! also refreshed from every breaker at scrape time.

use actix_web::{web, HttpResponse};
use prometheus::{
    Encoder, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use service_runtime::breaker::BreakerMetrics;
use service_runtime::postgres::PoolMetrics;

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
    breakers: BreakerMetrics,
    pools: PoolMetrics,
}

impl Metrics {
    /// The registry `/metrics` serves, for layers that bring their own
    /// collectors (the HTTP protection layer).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

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
        let breakers = BreakerMetrics::new();
        registry.register(Box::new(reads.clone()))?;
        registry.register(Box::new(database_healthy.clone()))?;
        registry.register(Box::new(database_lag_seconds.clone()))?;
        registry.register(Box::new(database_checkpoint_lag.clone()))?;
        registry.register(Box::new(feed_up.clone()))?;
        breakers.register(&registry)?;
        let pools = PoolMetrics::new()?;
        pools.register(&registry)?;
        Ok(Self {
            registry,
            reads,
            database_healthy,
            database_lag_seconds,
            database_checkpoint_lag,
            feed_up,
            breakers,
            pools,
        })
    }

    /// The circuit breaker collectors of this registry, for
    /// [`ReadRouter::with_breaker_metrics`] and [`RedisTier::with_breaker`].
    pub fn breakers(&self) -> &BreakerMetrics {
        &self.breakers
    }

    /// One read of `endpoint` answered from `source`.
    pub fn read(&self, endpoint: &str, source: &str) {
        self.reads.with_label_values(&[endpoint, source]).inc();
    }

    fn refresh(&self, router: &ReadRouter, feed: &Feed, redis: &RedisTier) {
        for database in router.databases() {
            let name = database.name().as_ref();
            let health = database.health();
            self.breakers.observe(database.breaker());
            self.pools.observe(name, database.pool());
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
        self.breakers.observe(redis.breaker());
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
