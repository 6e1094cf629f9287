//! The GCRA check in Redis, and the limiter's own connection to it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use service_runtime::breaker::{Breaker, BreakerMetrics, BreakerSettings, BreakerState};
use tokio::sync::Notify;

use super::{
    Decision, LimiterUnavailable, OnRedisError, RateLimitConfig, RateLimitError, RateLimitMetrics,
    RateLimitPolicy,
};

/// GCRA, check and update in one step (a script runs alone, so two instances
/// checking the same client cannot both take the last slot).
///
/// KEYS[1] holds the client's theoretical arrival time (TAT) in microseconds
/// of Redis' clock. ARGV[1] is the emission interval (µs), ARGV[2] the burst.
/// Returns {allowed 0/1, remaining, reset-after ms, retry-after ms}.
///
/// - `TIME` rather than a timestamp from the caller: instances' clocks drift,
///   Redis' clock is the one all of them share. Effect replication (the
///   default since Redis 5) replicates the SET, not the script, so replicas
///   agree; `replicate_commands` turns it on for older servers and is a no-op
///   where it still exists.
/// - The key expires when the TAT is reached: by then the client has its full
///   burst back, which is exactly what a missing key means, so idle clients
///   cost no memory.
/// - A limited request leaves the TAT alone: rejected requests do not push
///   the client's next slot further out, so a client hammering while limited
///   is admitted again at the configured rate rather than never.
/// - Integers only: µs timestamps (~2^51) are exact in Lua's doubles, and the
///   interval is a whole number of µs.
const GCRA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])

local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval

if now < allow_at then
  return {0, 0, math.ceil((tat - now) / 1000), math.ceil((allow_at - now) / 1000)}
end

local ttl_ms = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', ttl_ms)
return {1, math.floor((now - allow_at) / interval), ttl_ms, 0}
";

/// Prefix of the limiter's keys: `ratelimit:{class}:{client}`.
pub(crate) const KEY_PREFIX: &str = "ratelimit";

/// Budget of one connection attempt. Attempts run in the background, so
/// this may exceed the per-check timeout; a check never waits longer than that.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A rate limiter shared by all instances of a service: GCRA in Redis.
///
/// It owns its Redis connection, separate from any other component's, so a
/// slow Redis (or a flood of limited clients) cannot take connections the
/// read path needs. The connection is made lazily, in the background, on the
/// first check, and re-made in the background after a failure
/// ([`redis::aio::ConnectionManager`]); a check waits at most the timeout
/// given to [`RateLimiter::new`], connection included, and answers
/// [`Decision::Unavailable`] past it.
///
/// Checks go through a circuit breaker ([`service_runtime::breaker`]) named
/// [`RateLimiter::BREAKER_NAME`]: after a few failed checks in a row
/// (`RATE_LIMIT_BREAKER_FAILURES`, default 3) Redis is not asked for a while
/// (`RATE_LIMIT_BREAKER_OPEN_MS`, default 1 s) and checks answer
/// [`LimiterUnavailable::CircuitOpen`] at once; then one check probes Redis,
/// and its outcome closes the breaker or opens it again. So an outage does
/// not add the timeout to every request. A check cancelled before Redis
/// answers counts neither way.
///
/// Create it once per process and clone it: clones share the connection and
/// the breaker.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
    breaker: Breaker,
}

struct Inner {
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    /// Set once by the first successful connection; the manager reconnects
    /// by itself after that.
    manager: OnceLock<ConnectionManager>,
    /// A connection attempt is running: later checks wait for it instead of
    /// starting their own, so an outage does not turn into a connection storm.
    connecting: AtomicBool,
    connect_done: Notify,
    script: Script,
    timeout: Duration,
    on_error: OnRedisError,
    metrics: RateLimitMetrics,
}

impl RateLimiter {
    /// The `breaker` label of the limiter's circuit breaker in the
    /// `circuit_breaker_*` metrics.
    pub const BREAKER_NAME: &'static str = "redis-rate-limit";

    /// A limiter on the Redis at `redis_url`. Does no I/O: an unreachable
    /// Redis shows in [`RateLimiter::check`], not here. `timeout` bounds each
    /// check; `on_error` is what [`crate::RateLimit`] does when a check
    /// cannot complete.
    ///
    /// Its breaker has the default settings
    /// ([`RateLimitConfig::DEFAULT_BREAKER`]) and reports to metrics no
    /// registry holds; [`with_breaker`](Self::with_breaker) configures it
    /// and puts it in the service's registry.
    pub fn new(
        redis_url: &str,
        timeout: Duration,
        on_error: OnRedisError,
    ) -> Result<Self, RateLimitError> {
        let client = redis::Client::open(redis_url).map_err(RateLimitError::InvalidRedisUrl)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(timeout)
            // Reconnects are retried on demand by the next command anyway;
            // a short schedule keeps a recovered Redis from waiting on a long
            // backoff.
            .set_number_of_retries(2)
            .set_factor(100)
            .set_max_delay(1000);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                manager_config,
                manager: OnceLock::new(),
                connecting: AtomicBool::new(false),
                connect_done: Notify::new(),
                script: Script::new(GCRA),
                timeout,
                on_error,
                metrics: RateLimitMetrics::new().map_err(RateLimitError::Metrics)?,
            }),
            breaker: Breaker::new(
                Self::BREAKER_NAME,
                RateLimitConfig::DEFAULT_BREAKER,
                &BreakerMetrics::new(),
            ),
        })
    }

    /// This limiter with a new breaker configured by `settings` (e.g.
    /// [`RateLimitConfig::breaker`]) and reporting to `metrics`, the
    /// application's (`circuit_breaker_state{breaker="redis-rate-limit"}`
    /// and the other `circuit_breaker_*` series).
    ///
    /// Call it before cloning the limiter: clones made earlier keep the
    /// breaker they were made with.
    pub fn with_breaker(mut self, settings: BreakerSettings, metrics: &BreakerMetrics) -> Self {
        self.breaker = Breaker::new(Self::BREAKER_NAME, settings, metrics);
        self
    }

    /// The circuit breaker in front of Redis.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// What happens to a request when a check answers
    /// [`Decision::Unavailable`].
    pub fn on_error(&self) -> OnRedisError {
        self.inner.on_error
    }

    /// The limiter's collectors, to register in the service's registry.
    pub fn metrics(&self) -> &RateLimitMetrics {
        &self.inner.metrics
    }

    /// Checks one request of `client_key` against `policy` and counts it if
    /// admitted. The key is `ratelimit:{class}:{client_key}`.
    ///
    /// Never takes much longer than the limiter's timeout; a Redis error or
    /// timeout is [`Decision::Unavailable`] (and logged), never an `Err`,
    /// because the caller's only choice then is [`OnRedisError`].
    pub async fn check(&self, policy: &RateLimitPolicy, client_key: &str) -> Decision {
        let inner = &self.inner;
        // Dropped without a verdict if this future is cancelled (say, at the
        // request's deadline): that says nothing about Redis.
        let Some(permit) = self.breaker.try_acquire() else {
            return Decision::Unavailable(LimiterUnavailable::CircuitOpen);
        };
        let key = format!("{KEY_PREFIX}:{}:{client_key}", policy.class);
        let outcome = tokio::time::timeout(inner.timeout, self.evaluate(&key, policy)).await;
        let failure = match outcome {
            Ok(Ok(reply)) => {
                permit.success();
                return reply.into_decision();
            }
            Ok(Err(error)) => error,
            Err(_elapsed) => LimiterUnavailable::Timeout {
                after: inner.timeout,
            },
        };
        // Debug only: during an outage this would be one line per request;
        // the breaker logs its transitions, and the failure that opens it is
        // logged below.
        tracing::debug!(error = %failure, class = policy.class, "rate-limit check failed");
        let before = self.breaker.state();
        permit.failure();
        if before == BreakerState::Closed && self.breaker.state() == BreakerState::Open {
            tracing::warn!(
                error = %failure,
                breaker = Self::BREAKER_NAME,
                "rate limiter cannot reach redis; checks skip it while the breaker is open"
            );
        }
        Decision::Unavailable(failure)
    }

    async fn evaluate(
        &self,
        key: &str,
        policy: &RateLimitPolicy,
    ) -> Result<Reply, LimiterUnavailable> {
        let mut connection = self.connection().await?;
        let (allowed, remaining, reset_ms, retry_ms): (i64, i64, i64, i64) = self
            .inner
            .script
            .key(key)
            .arg(policy.interval_micros())
            .arg(policy.burst())
            .invoke_async(&mut connection)
            .await?;
        Ok(Reply {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            reset: millis(reset_ms),
            retry_after: millis(retry_ms),
        })
    }

    /// The connection, starting an attempt if there is none and none running.
    async fn connection(&self) -> Result<ConnectionManager, LimiterUnavailable> {
        let inner = &self.inner;
        if let Some(manager) = inner.manager.get() {
            return Ok(manager.clone());
        }
        // Registered before looking at the state, so an attempt finishing in
        // between still wakes this check.
        let done = inner.connect_done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if let Some(manager) = inner.manager.get() {
            return Ok(manager.clone());
        }
        if !inner.connecting.swap(true, Ordering::AcqRel) {
            self.spawn_connect();
        }
        done.await;
        inner
            .manager
            .get()
            .cloned()
            .ok_or(LimiterUnavailable::NotConnected)
    }

    /// One connection attempt as its own task, so that it completes even when
    /// the check that started it gives up at its timeout. The task ends with
    /// the attempt: there is no loop to stop at shutdown.
    fn spawn_connect(&self) {
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let attempt = ConnectionManager::new_with_config(
                inner.client.clone(),
                inner.manager_config.clone(),
            )
            .await;
            match attempt {
                Ok(manager) => {
                    // Only this task sets it (guarded by `connecting`).
                    let _ = inner.manager.set(manager);
                    tracing::info!("rate limiter connected to redis");
                }
                Err(error) => tracing::warn!(%error, "rate limiter cannot connect to redis"),
            }
            inner.connecting.store(false, Ordering::Release);
            inner.connect_done.notify_waiters();
        });
    }
}

/// The script's answer.
struct Reply {
    allowed: bool,
    remaining: u32,
    reset: Duration,
    retry_after: Duration,
}

impl Reply {
    fn into_decision(self) -> Decision {
        if self.allowed {
            Decision::Allowed {
                remaining: self.remaining,
                reset: self.reset,
            }
        } else {
            Decision::Limited {
                retry_after: self.retry_after,
                reset: self.reset,
            }
        }
    }
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests;
