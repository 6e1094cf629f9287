//! A rate limit shared by every instance of a service, kept in Redis.
//!
//! The algorithm is GCRA (the generic cell rate algorithm, a leaky bucket
//! that stores one timestamp per client instead of a counter): each client
//! has a *theoretical arrival time* (TAT); a request is admitted when the TAT
//! is less than `burst` emission intervals ahead of now, and admitting it
//! pushes the TAT one interval further. The check-and-update is one Lua
//! script, so it is atomic across instances, and it reads the clock of Redis,
//! so the instances' clocks do not matter. See [`RateLimiter`].
//!
//! [`RateLimit`] is the actix-web middleware applying one
//! [`RateLimitPolicy`] to a scope; [`RateLimitConfig`] reads the policies of
//! the three route classes from the environment.

mod config;
mod limiter;
mod middleware;

use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};

pub use config::{OnRedisError, RateLimitConfig};
pub use limiter::RateLimiter;
pub use middleware::{
    client_key, principal_subject, ClientKeyFn, RateLimit, RateLimitService, RATE_LIMITED_PROBLEM,
    RATE_LIMITER_UNAVAILABLE_PROBLEM,
};

/// The limit of one route class: `rate` requests per `period` sustained, and
/// at most `burst` admitted at once.
///
/// With `rate = 100`, `period = 1 s`, `burst = 200`, a client may send 200
/// requests at once, then one every 10 ms; after 2 s of silence it has its
/// full burst again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// Route class, part of the Redis key and of the headers and metrics:
    /// `"commands"`, `"reads"` or `"admin"`.
    pub class: &'static str,
    /// Requests per `period`, sustained. Zero is treated as one.
    pub rate: u32,
    /// The period `rate` is counted over.
    pub period: Duration,
    /// Requests admitted at once after a quiet spell. Zero is treated as one.
    pub burst: u32,
}

impl RateLimitPolicy {
    /// Time between two requests at the sustained rate (`period / rate`),
    /// rounded up to a whole microsecond and at least one: rounding up keeps
    /// the limit from admitting more than configured.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_micros(self.interval_micros())
    }

    /// Time for an exhausted burst to refill completely (`burst` emission
    /// intervals); the `w` of the `RateLimit-Policy` header.
    pub fn window(&self) -> Duration {
        Duration::from_micros(
            self.interval_micros()
                .saturating_mul(u64::from(self.burst())),
        )
    }

    pub(crate) fn interval_micros(&self) -> u64 {
        let period = u64::try_from(self.period.as_micros()).unwrap_or(u64::MAX);
        period.div_ceil(u64::from(self.rate.max(1))).max(1)
    }

    pub(crate) fn burst(&self) -> u32 {
        self.burst.max(1)
    }
}

/// The outcome of [`RateLimiter::check`].
#[derive(Debug)]
pub enum Decision {
    /// Admitted and counted.
    Allowed {
        /// Requests the client may still send at once.
        remaining: u32,
        /// Until the client's full burst is available again.
        reset: Duration,
    },
    /// Over the limit; not counted.
    Limited {
        /// Until the next request would be admitted.
        retry_after: Duration,
        /// Until the client's full burst is available again.
        reset: Duration,
    },
    /// Redis could not answer in time; whether the request goes through is
    /// the limiter's [`OnRedisError`] policy ([`RateLimiter::on_error`]).
    Unavailable(LimiterUnavailable),
}

/// Why the limiter could not decide.
#[derive(Debug, thiserror::Error)]
pub enum LimiterUnavailable {
    /// Redis (or the connection to it) took longer than the limiter's timeout.
    #[error("redis did not answer within {} ms", .after.as_millis())]
    Timeout {
        /// The limiter's timeout.
        after: Duration,
    },
    /// No connection to Redis could be established.
    #[error("cannot connect to redis")]
    NotConnected,
    /// Redis answered with an error, or the connection failed mid-call.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The limiter's circuit breaker (`redis-rate-limit`) is open: recent
    /// checks failed, so Redis is not asked for a moment. An outage costs one
    /// probe per open period per instance (1 s by default), not a timeout
    /// per request.
    #[error("redis recently unreachable; not retried yet")]
    CircuitOpen,
}

/// Errors creating a [`RateLimiter`].
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// The Redis URL does not parse.
    #[error("invalid redis url for the rate limiter: {0}")]
    InvalidRedisUrl(#[source] redis::RedisError),
    /// The limiter's collectors could not be created.
    #[error("creating the rate-limit metrics: {0}")]
    Metrics(#[source] prometheus::Error),
}

/// Rate-limit collectors: `rate_limit_decisions_total{class, decision}` with
/// decision `allowed`, `limited`, `unavailable_admitted` or
/// `unavailable_rejected`. Cloning shares them.
#[derive(Clone)]
pub struct RateLimitMetrics {
    decisions: IntCounterVec,
}

impl RateLimitMetrics {
    /// Creates the collectors, not registered anywhere yet.
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            decisions: IntCounterVec::new(
                Opts::new(
                    "rate_limit_decisions_total",
                    "Rate-limit decisions by route class",
                ),
                &["class", "decision"],
            )?,
        })
    }

    /// Registers the collectors in the service's registry.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.decisions.clone()))
    }

    pub(crate) fn count(&self, class: &str, decision: &str) {
        self.decisions.with_label_values(&[class, decision]).inc();
    }

    #[cfg(test)]
    pub(crate) fn get(&self, class: &str, decision: &str) -> u64 {
        self.decisions.with_label_values(&[class, decision]).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_windows() {
        let commands = RateLimitPolicy {
            class: "commands",
            rate: 100,
            period: Duration::from_secs(1),
            burst: 200,
        };
        assert_eq!(commands.emission_interval(), Duration::from_millis(10));
        assert_eq!(commands.window(), Duration::from_secs(2));

        let thirds = RateLimitPolicy {
            class: "admin",
            rate: 3,
            period: Duration::from_secs(1),
            burst: 3,
        };
        // Rounded up, never admitting more than configured.
        assert_eq!(thirds.emission_interval(), Duration::from_micros(333_334));

        let degenerate = RateLimitPolicy {
            class: "reads",
            rate: 0,
            period: Duration::ZERO,
            burst: 0,
        };
        assert_eq!(degenerate.emission_interval(), Duration::from_micros(1));
        assert_eq!(degenerate.burst(), 1);
    }
}
