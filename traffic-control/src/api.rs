//! The one way a service puts its API behind the protection layers.
//!
//! A service builds one [`ApiProtection`] at start-up (outside
//! `HttpServer::new`, so every worker shares one semaphore and one Redis
//! connection) and wraps each group of routes with [`ApiProtection::guard`],
//! naming the scope the routes need and their rate-limit class:
//!
//! ```text
//! in-flight limit → deadline → auth (scope) → rate limit → handlers
//! ```
//!
//! Health, metrics and the OpenAPI document stay outside the guard: probes
//! and scrapes must answer even when the API sheds load.

use std::time::Duration;

use access_control::{AuthConfig, Authenticator, RequireScope};
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use prometheus::Registry;
use service_runtime::breaker::BreakerMetrics;

use crate::{
    Deadline, DeadlineMetrics, HttpMetrics, InFlightLimit, ProtectionConfig, RateLimit,
    RateLimitConfig, RateLimitError, RateLimitPolicy, RateLimiter, RequestMetrics, ShedMetrics,
};

/// Which rate-limit policy of [`RateLimitConfig`] a group of routes uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    Commands,
    Reads,
    Admin,
}

/// Why the protection layer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ProtectionError {
    #[error("registering protection metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("rate limiter: {0}")]
    RateLimiter(#[from] RateLimitError),
}

/// Everything a service's API is guarded by, shared by all workers.
#[derive(Clone)]
pub struct ApiProtection {
    http_metrics: HttpMetrics,
    in_flight: InFlightLimit,
    deadline: Duration,
    deadline_metrics: DeadlineMetrics,
    authenticator: Authenticator,
    limiter: RateLimiter,
    limits: RateLimitConfig,
}

impl ApiProtection {
    /// Builds the layers and registers their metrics in `registry`; the
    /// limiter's circuit breaker (`redis-rate-limit`) reports through the
    /// application's `breakers`. Redis is connected lazily by the limiter,
    /// so this does no I/O.
    pub fn new(
        protection: &ProtectionConfig,
        limits: &RateLimitConfig,
        redis_url: &str,
        auth: &AuthConfig,
        registry: &Registry,
        breakers: &BreakerMetrics,
    ) -> Result<Self, ProtectionError> {
        let http_metrics = HttpMetrics::new()?;
        http_metrics.register(registry)?;
        let shed_metrics = ShedMetrics::new()?;
        shed_metrics.register(registry)?;
        let deadline_metrics = DeadlineMetrics::new()?;
        deadline_metrics.register(registry)?;
        let limiter = RateLimiter::new(redis_url, limits.redis_timeout, limits.on_redis_error)?
            .with_breaker(limits.breaker, breakers);
        limiter.metrics().register(registry)?;
        Ok(Self {
            http_metrics,
            in_flight: InFlightLimit::new(protection.max_in_flight, &shed_metrics),
            deadline: protection.request_timeout,
            deadline_metrics,
            authenticator: Authenticator::new(auth),
            limiter,
            limits: limits.clone(),
        })
    }

    /// Per-route request counts and latency histograms; wrap the whole app
    /// with it (outermost), so shed and timed-out requests are counted too.
    pub fn request_metrics(&self) -> RequestMetrics {
        RequestMetrics::new(&self.http_metrics)
    }

    /// `routes` behind the in-flight limit, the deadline, a token with
    /// `needs`, and the rate limit of `class`.
    pub fn guard<T, B>(
        &self,
        routes: actix_web::Scope<T>,
        needs: access_control::Scope,
        class: RouteClass,
    ) -> actix_web::Scope<
        impl ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<impl MessageBody>,
            Error = actix_web::Error,
            InitError = (),
        >,
    >
    where
        T: ServiceFactory<
                ServiceRequest,
                Config = (),
                Response = ServiceResponse<B>,
                Error = actix_web::Error,
                InitError = (),
            > + 'static,
        B: MessageBody + 'static,
    {
        // `wrap` order: the last one added runs first.
        routes
            .wrap(RateLimit::optional(
                self.limiter.clone(),
                self.policy(class),
            ))
            .wrap(RequireScope::new(self.authenticator.clone(), needs))
            .wrap(Deadline::new(self.deadline, &self.deadline_metrics))
            .wrap(self.in_flight.clone())
    }

    fn policy(&self, class: RouteClass) -> Option<RateLimitPolicy> {
        match class {
            RouteClass::Commands => self.limits.commands,
            RouteClass::Reads => self.limits.reads,
            RouteClass::Admin => self.limits.admin,
        }
    }
}
