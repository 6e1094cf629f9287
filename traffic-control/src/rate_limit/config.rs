//! Rate-limit policies from the environment.

use std::str::FromStr;
use std::time::Duration;

use service_runtime::breaker::BreakerSettings;
use service_runtime::config::ConfigError;

use super::RateLimitPolicy;
use crate::config::{env_lookup, parsed, positive};

/// What a request gets when Redis cannot answer within the timeout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnRedisError {
    /// Admit it (counted as `unavailable_admitted`): a limiter outage must
    /// not become a service outage. The default.
    #[default]
    Open,
    /// Reject it with 503 `/problems/rate-limiter-unavailable` and
    /// `Retry-After: 1` (counted as `unavailable_rejected`), for services
    /// where unmetered traffic is worse than no traffic.
    Closed,
}

/// An `RATE_LIMIT_ON_REDIS_ERROR` value that is neither `open` nor `closed`.
#[derive(Debug, thiserror::Error)]
#[error("expected `open` or `closed`")]
pub struct InvalidOnRedisError;

impl FromStr for OnRedisError {
    type Err = InvalidOnRedisError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "open" => Ok(Self::Open),
            "closed" => Ok(Self::Closed),
            _ => Err(InvalidOnRedisError),
        }
    }
}

/// The rate limits of a service, from the environment.
///
/// | variable                      | default      | format                                   |
/// |-------------------------------|--------------|------------------------------------------|
/// | `RATE_LIMIT_COMMANDS`         | `100/s`      | `off`, or `<n>/<s\|m\|h>`: n per second, minute, hour |
/// | `RATE_LIMIT_COMMANDS_BURST`   | `200`        | requests admitted at once                |
/// | `RATE_LIMIT_READS`            | `1000/s`     | as above                                 |
/// | `RATE_LIMIT_READS_BURST`      | `2000`       |                                          |
/// | `RATE_LIMIT_ADMIN`            | `10/s`       | as above                                 |
/// | `RATE_LIMIT_ADMIN_BURST`      | `10`         |                                          |
/// | `RATE_LIMIT_ON_REDIS_ERROR`   | `open`       | `open` (admit) or `closed` (503)         |
/// | `RATE_LIMIT_REDIS_TIMEOUT_MS` | `100`        | budget of one check, connection included |
/// | `RATE_LIMIT_BREAKER_FAILURES` | `3`          | failed checks in a row that open the breaker |
/// | `RATE_LIMIT_BREAKER_OPEN_MS`  | `1000`       | how long an open breaker skips Redis     |
/// | `RATE_LIMIT_BREAKER_MAX_OPEN_MS` | the larger of `1000` and `RATE_LIMIT_BREAKER_OPEN_MS` | each failed probe doubles the open period up to this |
///
/// When `RATE_LIMIT_<CLASS>` is set and `RATE_LIMIT_<CLASS>_BURST` is not,
/// the burst is `n` (one period's worth). The defaults are per client (per
/// authenticated subject, or per IP for anonymous requests): generous enough
/// for a busy integration, low enough that one runaway client cannot occupy
/// a whole instance; commands get a smaller budget than reads because each
/// costs a Postgres transaction. With the breaker's defaults a Redis outage
/// costs one timed-out check per second per instance.
///
/// [`Default`] is the configuration with no variable set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Policy of the `commands` class; `None` when `off`.
    pub commands: Option<RateLimitPolicy>,
    /// Policy of the `reads` class; `None` when `off`.
    pub reads: Option<RateLimitPolicy>,
    /// Policy of the `admin` class; `None` when `off`.
    pub admin: Option<RateLimitPolicy>,
    /// What happens to a request when Redis cannot answer.
    pub on_redis_error: OnRedisError,
    /// Budget of one check, waiting for a connection included.
    pub redis_timeout: Duration,
    /// The limiter's circuit breaker in front of Redis; give it to
    /// [`RateLimiter::with_breaker`](super::RateLimiter::with_breaker).
    pub breaker: BreakerSettings,
}

impl RateLimitConfig {
    /// Default `commands` policy: 100/s, burst 200.
    pub const DEFAULT_COMMANDS: RateLimitPolicy = RateLimitPolicy {
        class: "commands",
        rate: 100,
        period: Duration::from_secs(1),
        burst: 200,
    };
    /// Default `reads` policy: 1000/s, burst 2000.
    pub const DEFAULT_READS: RateLimitPolicy = RateLimitPolicy {
        class: "reads",
        rate: 1000,
        period: Duration::from_secs(1),
        burst: 2000,
    };
    /// Default `admin` policy: 10/s, burst 10.
    pub const DEFAULT_ADMIN: RateLimitPolicy = RateLimitPolicy {
        class: "admin",
        rate: 10,
        period: Duration::from_secs(1),
        burst: 10,
    };
    /// Default of `RATE_LIMIT_REDIS_TIMEOUT_MS`.
    pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);
    /// Default breaker: 3 failed checks in a row open it for 1 s; then one
    /// check per second probes Redis (the open period does not grow).
    pub const DEFAULT_BREAKER: BreakerSettings = BreakerSettings {
        failures_to_open: 3,
        open_for: Duration::from_secs(1),
        max_open_for: Duration::from_secs(1),
    };

    /// Reads the variables in the table above; the breaker's with
    /// [`BreakerSettings::from_env`], like every breaker of the services.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            breaker: BreakerSettings::from_env(
                "RATE_LIMIT_BREAKER_FAILURES",
                "RATE_LIMIT_BREAKER_OPEN_MS",
                "RATE_LIMIT_BREAKER_MAX_OPEN_MS",
                Self::DEFAULT_BREAKER,
            )?,
            ..Self::from_lookup(env_lookup)?
        })
    }

    /// Like [`Self::from_env`], reading variables through `lookup` (tests pass
    /// a map instead of mutating the process environment), except the
    /// breaker's: [`BreakerSettings::from_env`] reads the process
    /// environment only, so `breaker` is [`Self::DEFAULT_BREAKER`] here.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(Self {
            commands: policy(
                &lookup,
                "RATE_LIMIT_COMMANDS",
                "RATE_LIMIT_COMMANDS_BURST",
                Self::DEFAULT_COMMANDS,
            )?,
            reads: policy(
                &lookup,
                "RATE_LIMIT_READS",
                "RATE_LIMIT_READS_BURST",
                Self::DEFAULT_READS,
            )?,
            admin: policy(
                &lookup,
                "RATE_LIMIT_ADMIN",
                "RATE_LIMIT_ADMIN_BURST",
                Self::DEFAULT_ADMIN,
            )?,
            on_redis_error: parsed(&lookup, "RATE_LIMIT_ON_REDIS_ERROR", OnRedisError::Open)?,
            redis_timeout: Duration::from_millis(positive(
                &lookup,
                "RATE_LIMIT_REDIS_TIMEOUT_MS",
                Self::DEFAULT_REDIS_TIMEOUT.as_millis() as u64,
            )?),
            breaker: Self::DEFAULT_BREAKER,
        })
    }
}

impl Default for RateLimitConfig {
    /// The documented defaults, as with no variable set.
    fn default() -> Self {
        Self {
            commands: Some(Self::DEFAULT_COMMANDS),
            reads: Some(Self::DEFAULT_READS),
            admin: Some(Self::DEFAULT_ADMIN),
            on_redis_error: OnRedisError::Open,
            redis_timeout: Self::DEFAULT_REDIS_TIMEOUT,
            breaker: Self::DEFAULT_BREAKER,
        }
    }
}

/// One class: `off`, the default, or `<n>/<unit>` with its burst.
fn policy(
    lookup: &impl Fn(&str) -> Option<String>,
    rate_name: &'static str,
    burst_name: &'static str,
    default: RateLimitPolicy,
) -> Result<Option<RateLimitPolicy>, ConfigError> {
    let (rate, period, default_burst) = match lookup(rate_name) {
        None => (default.rate, default.period, default.burst),
        Some(value) if value.trim().eq_ignore_ascii_case("off") => return Ok(None),
        Some(value) => {
            let (rate, period) = parse_rate(&value).map_err(|reason| ConfigError::Invalid {
                name: rate_name,
                value: value.clone(),
                reason: reason.to_owned(),
            })?;
            (rate, period, rate)
        }
    };
    let burst = positive(lookup, burst_name, u64::from(default_burst))?;
    let burst = u32::try_from(burst).map_err(|_| ConfigError::Invalid {
        name: burst_name,
        value: burst.to_string(),
        reason: format!("must be at most {}", u32::MAX),
    })?;
    Ok(Some(RateLimitPolicy {
        class: default.class,
        rate,
        period,
        burst,
    }))
}

/// `<n>/<s|m|h>`, n > 0.
fn parse_rate(value: &str) -> Result<(u32, Duration), &'static str> {
    const FORMAT: &str = "expected `off` or `<n>/<s|m|h>`, e.g. `100/s` or `600/m`, n > 0";
    let (count, unit) = value.trim().split_once('/').ok_or(FORMAT)?;
    let count: u32 = count.trim().parse().map_err(|_| FORMAT)?;
    if count == 0 {
        return Err(FORMAT);
    }
    let period = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(FORMAT),
    };
    Ok((count, period))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn defaults() {
        let config = RateLimitConfig::from_lookup(vars(&[])).expect("config");
        assert_eq!(config.commands, Some(RateLimitConfig::DEFAULT_COMMANDS));
        assert_eq!(config.reads, Some(RateLimitConfig::DEFAULT_READS));
        assert_eq!(config.admin, Some(RateLimitConfig::DEFAULT_ADMIN));
        assert_eq!(config.on_redis_error, OnRedisError::Open);
        assert_eq!(config.redis_timeout, Duration::from_millis(100));
        assert_eq!(config.breaker, RateLimitConfig::DEFAULT_BREAKER);
        assert_eq!(config, RateLimitConfig::default());
    }

    #[test]
    fn breaker_settings_come_from_the_environment() {
        // Variable names no other test sets; `from_env` reads the process
        // environment, so only the breaker's are set here.
        std::env::set_var("RATE_LIMIT_BREAKER_FAILURES", "5");
        std::env::set_var("RATE_LIMIT_BREAKER_OPEN_MS", "250");
        let config = RateLimitConfig::from_env();
        std::env::remove_var("RATE_LIMIT_BREAKER_FAILURES");
        std::env::remove_var("RATE_LIMIT_BREAKER_OPEN_MS");
        let breaker = config.expect("config").breaker;
        assert_eq!(
            breaker,
            BreakerSettings {
                failures_to_open: 5,
                open_for: Duration::from_millis(250),
                // The larger of the default maximum (1 s) and the open period.
                max_open_for: Duration::from_secs(1),
            }
        );
    }

    #[test]
    fn explicit_rate_defaults_burst_to_n_and_off_disables() {
        let config = RateLimitConfig::from_lookup(vars(&[
            ("RATE_LIMIT_COMMANDS", "600/m"),
            ("RATE_LIMIT_READS", "OFF"),
            ("RATE_LIMIT_ADMIN", "5/h"),
            ("RATE_LIMIT_ADMIN_BURST", "2"),
            ("RATE_LIMIT_ON_REDIS_ERROR", "closed"),
            ("RATE_LIMIT_REDIS_TIMEOUT_MS", "40"),
        ]))
        .expect("config");
        assert_eq!(
            config.commands,
            Some(RateLimitPolicy {
                class: "commands",
                rate: 600,
                period: Duration::from_secs(60),
                burst: 600,
            })
        );
        assert_eq!(config.reads, None);
        assert_eq!(
            config.admin,
            Some(RateLimitPolicy {
                class: "admin",
                rate: 5,
                period: Duration::from_secs(3600),
                burst: 2,
            })
        );
        assert_eq!(config.on_redis_error, OnRedisError::Closed);
        assert_eq!(config.redis_timeout, Duration::from_millis(40));
    }

    #[test]
    fn burst_alone_overrides_the_default_burst() {
        let config = RateLimitConfig::from_lookup(vars(&[("RATE_LIMIT_COMMANDS_BURST", "50")]))
            .expect("config");
        let commands = config.commands.expect("enabled");
        assert_eq!((commands.rate, commands.burst), (100, 50));
    }

    #[test]
    fn rejects_malformed_values_naming_the_variable() {
        for (name, value) in [
            ("RATE_LIMIT_COMMANDS", "100"),
            ("RATE_LIMIT_COMMANDS", "0/s"),
            ("RATE_LIMIT_COMMANDS", "10/d"),
            ("RATE_LIMIT_COMMANDS", "ten/s"),
            ("RATE_LIMIT_READS_BURST", "0"),
            ("RATE_LIMIT_ON_REDIS_ERROR", "maybe"),
            ("RATE_LIMIT_REDIS_TIMEOUT_MS", "0"),
        ] {
            match RateLimitConfig::from_lookup(vars(&[(name, value)])) {
                Err(ConfigError::Invalid { name: reported, .. }) => assert_eq!(reported, name),
                other => panic!("{name}={value}: expected Invalid, got {other:?}"),
            }
        }
    }
}
