//! Traffic protection for the HTTP services: a rate limit shared by every
//! instance of a service (in Redis), load shedding on in-flight requests,
//! per-request deadlines, and per-route request metrics.
//!
//! # Middleware order
//!
//! For one service, outermost first:
//!
//! ```text
//! RequestMetrics → InFlightLimit → Deadline → [per scope: auth → RateLimit] → handler
//! ```
//!
//! - [`RequestMetrics`] is outermost so that every answer is counted, including
//!   the 503s the layers below produce when they shed, time out or cannot
//!   reach the rate limiter, and its duration histogram shows what clients
//!   actually waited.
//! - [`InFlightLimit`] comes next so that an overloaded instance refuses work
//!   before doing any: no token verification, no Redis round trip, no handler.
//!   Its permit is held through the deadline, so a timed-out request frees it.
//! - [`Deadline`] wraps everything that can be slow — auth, the rate-limit
//!   round trip and the handler — so the time budget covers the whole request.
//! - Auth runs before [`RateLimit`] because the limit is keyed by the
//!   authenticated principal (the peer IP only for anonymous requests), and it
//!   is per scope because route classes (`commands`, `reads`, `admin`) have
//!   their own policies.
//!
//! Requests the auth layer refuses never reach [`RateLimit`]; they cost one
//! token check each, bounded by the in-flight limit. To meter them per IP as
//! well, wrap a second `RateLimit` outside auth (it then sees no principal
//! and keys by IP).
//!
//! [`Deadline`] answers an overrun as an `Err` (a problem rendered by actix)
//! rather than a response, because the request is gone with the abandoned
//! future; layers outside it see an error, which [`RequestMetrics`] counts
//! with the error's status.
//!
//! In actix-web the middleware registered *last* with `wrap` runs *first*:
//!
//! ```no_run
//! use access_control::{Authenticator, RequireScope, Scope};
//! use actix_web::{web, App, HttpResponse, HttpServer};
//! use traffic_control::*;
//!
//! async fn place_order() -> HttpResponse {
//!     HttpResponse::Accepted().finish()
//! }
//!
//! # async fn run(
//! #     authenticator: Authenticator,
//! #     redis_url: &str,
//! #     registry: &prometheus::Registry,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! let protection = ProtectionConfig::from_env()?;
//! let limits = RateLimitConfig::from_env()?;
//! let (http, shed, deadline) = (HttpMetrics::new()?, ShedMetrics::new()?, DeadlineMetrics::new()?);
//! http.register(registry)?;
//! shed.register(registry)?;
//! deadline.register(registry)?;
//!
//! // Created once, outside `HttpServer::new`, and cloned into the factory:
//! // the in-flight semaphore and the Redis connection must be shared by all
//! // workers, not one per worker.
//! let in_flight = InFlightLimit::new(protection.max_in_flight, &shed);
//! // The application's circuit-breaker collectors: one per registry, shared
//! // by all its breakers (the limiter's is `redis-rate-limit`).
//! let breakers = service_runtime::breaker::BreakerMetrics::new();
//! breakers.register(registry)?;
//! let limiter = RateLimiter::new(redis_url, limits.redis_timeout, limits.on_redis_error)?
//!     .with_breaker(limits.breaker, &breakers);
//! limiter.metrics().register(registry)?;
//!
//! HttpServer::new(move || {
//!     let orders = web::scope("/orders")
//!         .route("", web::post().to(place_order))
//!         // `None` when RATE_LIMIT_COMMANDS=off: no limit on this scope.
//!         .wrap(RateLimit::optional(limiter.clone(), limits.commands))
//!         // Registered after the limit, so it runs before it.
//!         .wrap(RequireScope::new(authenticator.clone(), Scope::Write));
//!     App::new()
//!         .service(orders)
//!         .wrap(Deadline::new(protection.request_timeout, &deadline))
//!         .wrap(in_flight.clone())
//!         .wrap(RequestMetrics::new(&http))
//! })
//! .bind(("0.0.0.0", 8080))?
//! .run()
//! .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Every collector lives in a struct with `register(&prometheus::Registry)`
//! ([`HttpMetrics`], [`ShedMetrics`], [`DeadlineMetrics`],
//! [`RateLimitMetrics`]), so each service — and each app a test builds —
//! registers into its own registry instead of a process-global one.

pub mod api;
pub mod config;
pub mod deadline;
pub mod http_metrics;
pub mod rate_limit;
pub mod shed;
pub mod trace;

mod problem;

#[cfg(test)]
mod testing;

pub use api::{ApiProtection, ProtectionError, RouteClass};
pub use config::ProtectionConfig;
pub use deadline::{Deadline, DeadlineMetrics};
pub use http_metrics::{HttpMetrics, RequestMetrics};
pub use rate_limit::{
    Decision, LimiterUnavailable, OnRedisError, RateLimit, RateLimitConfig, RateLimitError,
    RateLimitMetrics, RateLimitPolicy, RateLimiter,
};
pub use shed::{InFlightLimit, ShedMetrics};
pub use trace::{RequestTrace, TraceRootSpan};
