//! Environment configuration of load shedding and deadlines (the rate limit
//! has its own, [`crate::RateLimitConfig`]).

use std::str::FromStr;
use std::time::Duration;

use service_runtime::config::ConfigError;

/// Limits every request of a service is held to.
///
/// | variable                 | default | meaning                                             |
/// |--------------------------|---------|-----------------------------------------------------|
/// | `MAX_IN_FLIGHT_REQUESTS` | `256`   | requests handled at once per instance; more get 503 |
/// | `REQUEST_TIMEOUT_MS`     | `5000`  | a request still running after this gets 503         |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectionConfig {
    /// Passed to [`crate::InFlightLimit::new`].
    pub max_in_flight: usize,
    /// Passed to [`crate::Deadline::new`].
    pub request_timeout: Duration,
}

impl ProtectionConfig {
    /// Default of `MAX_IN_FLIGHT_REQUESTS`.
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
    /// Default of `REQUEST_TIMEOUT_MS`.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(5000);

    /// Reads `MAX_IN_FLIGHT_REQUESTS` and `REQUEST_TIMEOUT_MS`; both must be
    /// positive when set.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(env_lookup)
    }

    /// Like [`Self::from_env`], reading variables through `lookup` (tests pass
    /// a map instead of mutating the process environment).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let max_in_flight = positive(
            &lookup,
            "MAX_IN_FLIGHT_REQUESTS",
            Self::DEFAULT_MAX_IN_FLIGHT as u64,
        )?;
        let timeout_ms = positive(
            &lookup,
            "REQUEST_TIMEOUT_MS",
            Self::DEFAULT_REQUEST_TIMEOUT.as_millis() as u64,
        )?;
        Ok(Self {
            max_in_flight: usize::try_from(max_in_flight).unwrap_or(usize::MAX),
            request_timeout: Duration::from_millis(timeout_ms),
        })
    }
}

/// The process environment; a value that is not UTF-8 counts as unset, as in
/// `service_runtime::config`.
pub(crate) fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `name` parsed as `T`, or `default` when unset.
pub(crate) fn parsed<T>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match lookup(name) {
        None => Ok(default),
        Some(value) => value
            .trim()
            .parse()
            .map_err(|e: T::Err| ConfigError::Invalid {
                name,
                reason: e.to_string(),
                value,
            }),
    }
}

/// `name` as a number above zero: zero would disable the protection it
/// configures in the most surprising way (reject everything, time out at once).
pub(crate) fn positive(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
) -> Result<u64, ConfigError> {
    let value: u64 = parsed(lookup, name, default)?;
    if value == 0 {
        return Err(ConfigError::Invalid {
            name,
            value: "0".to_owned(),
            reason: "must be greater than zero".to_owned(),
        });
    }
    Ok(value)
}

impl Default for ProtectionConfig {
    /// The documented defaults, as with no variable set.
    fn default() -> Self {
        Self {
            max_in_flight: Self::DEFAULT_MAX_IN_FLIGHT,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
        }
    }
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
    fn defaults_when_unset() {
        let config = ProtectionConfig::from_lookup(vars(&[])).expect("config");
        assert_eq!(config.max_in_flight, 256);
        assert_eq!(config.request_timeout, Duration::from_millis(5000));
    }

    #[test]
    fn reads_both_variables() {
        let config = ProtectionConfig::from_lookup(vars(&[
            ("MAX_IN_FLIGHT_REQUESTS", "32"),
            ("REQUEST_TIMEOUT_MS", "250"),
        ]))
        .expect("config");
        assert_eq!(config.max_in_flight, 32);
        assert_eq!(config.request_timeout, Duration::from_millis(250));
    }

    #[test]
    fn rejects_zero_and_garbage() {
        let zero = ProtectionConfig::from_lookup(vars(&[("MAX_IN_FLIGHT_REQUESTS", "0")]));
        assert!(matches!(
            zero,
            Err(ConfigError::Invalid {
                name: "MAX_IN_FLIGHT_REQUESTS",
                ..
            })
        ));
        let garbage = ProtectionConfig::from_lookup(vars(&[("REQUEST_TIMEOUT_MS", "5s")]));
        assert!(matches!(
            garbage,
            Err(ConfigError::Invalid {
                name: "REQUEST_TIMEOUT_MS",
                ..
            })
        ));
    }
}
