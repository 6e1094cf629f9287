//! Prometheus metrics of command-service, served at `GET /metrics`.
//!
//! Outbox lag is computed from the database when scraped, so every instance
//! (leader or standby) reports the same truth and no background task is needed.
//!
//! The relay's `kafka-producer` circuit breaker reports
//! `circuit_breaker_state{breaker}` (0 closed, 1 open, 2 half-open),
//! `circuit_breaker_transitions_total{breaker, to}` and
//! `circuit_breaker_rejected_calls_total{breaker}` here
//! ([`service_runtime::breaker::BreakerMetrics`]).

use actix_web::{web, HttpResponse};
use prometheus::{Encoder, Gauge, IntCounter, IntGauge, Registry, TextEncoder};
use service_runtime::breaker::BreakerMetrics;
use service_runtime::postgres::DbPool;
use service_runtime::postgres::PoolMetrics;

/// The relay's counters, shared with the relay task.
#[derive(Clone)]
pub struct RelayMetrics {
    pub published: IntCounter,
    pub failed_batches: IntCounter,
    pub leader: IntGauge,
    /// `circuit_breaker_*` of this application's breakers (the relay's
    /// `kafka-producer`).
    pub breakers: BreakerMetrics,
}

/// Everything `/metrics` reports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub relay: RelayMetrics,
    lag_events: IntGauge,
    lag_seconds: Gauge,
    pools: PoolMetrics,
}

impl Metrics {
    /// The registry `/metrics` serves, for layers that bring their own
    /// collectors (the HTTP protection layer).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A fresh registry per application, so several instances in one
    /// process (tests) do not collide.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let relay = RelayMetrics {
            published: IntCounter::new(
                "relay_published_events_total",
                "Events the broker acknowledged",
            )?,
            failed_batches: IntCounter::new(
                "relay_failed_batches_total",
                "Relay batches that failed and were re-read from the cursor",
            )?,
            leader: IntGauge::new(
                "relay_leader",
                "1 while this instance holds the relay lease",
            )?,
            breakers: BreakerMetrics::new(),
        };
        let lag_events = IntGauge::new(
            "outbox_lag_events",
            "Committed events not yet acknowledged by the broker",
        )?;
        let lag_seconds = Gauge::new(
            "outbox_lag_seconds",
            "Age of the oldest committed event not yet acknowledged by the broker",
        )?;
        registry.register(Box::new(relay.published.clone()))?;
        registry.register(Box::new(relay.failed_batches.clone()))?;
        registry.register(Box::new(relay.leader.clone()))?;
        relay.breakers.register(&registry)?;
        registry.register(Box::new(lag_events.clone()))?;
        registry.register(Box::new(lag_seconds.clone()))?;
        let pools = PoolMetrics::new()?;
        pools.register(&registry)?;
        Ok(Self {
            registry,
            relay,
            lag_events,
            lag_seconds,
            pools,
        })
    }

    async fn refresh_outbox_lag(&self, primary: &DbPool) -> Result<(), sqlx::Error> {
        let mut connection = primary.acquire().await?;
        let lag = sqlx::query!(
            r#"WITH cursor AS (
                   SELECT coalesce((SELECT transaction_id FROM outbox_cursor WHERE relay = $1), '0'::xid8)
                              AS transaction_id,
                          coalesce((SELECT position FROM outbox_cursor WHERE relay = $1), 0) AS position)
               SELECT count(*) AS "events!",
                      coalesce(extract(epoch FROM now() - min(e.recorded_at)), 0)::float8 AS "seconds!"
                 FROM events e, cursor c
                WHERE (e.transaction_id, e.position) > (c.transaction_id, c.position)"#,
            crate::relay::RELAY_NAME
        )
        .fetch_one(&mut *connection)
        .await?;
        connection.finish().await?;
        self.lag_events.set(lag.events);
        self.lag_seconds.set(lag.seconds);
        Ok(())
    }
}

/// `GET /metrics` in the Prometheus text format.
pub async fn metrics(metrics: web::Data<Metrics>, primary: web::Data<DbPool>) -> HttpResponse {
    // A hung primary must not hang the scrape: that is when the other
    // metrics matter most. Stale lag gauges are better than none.
    match tokio::time::timeout(
        service_runtime::postgres::SCRAPE_QUERY_TIMEOUT,
        metrics.refresh_outbox_lag(&primary),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "cannot measure outbox lag"),
        Err(_) => tracing::warn!("measuring outbox lag timed out; serving the last values"),
    }
    metrics.pools.observe("primary", primary.pool());
    let mut body = Vec::new();
    match TextEncoder::new().encode(&metrics.registry.gather(), &mut body) {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(body),
        Err(error) => HttpResponse::InternalServerError().body(error.to_string()),
    }
}
