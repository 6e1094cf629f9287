//! Typed environment variables. Each service's `Config::from_env` reads its
//! variables through these two functions, so every misconfiguration is
//! reported the same way: which variable, which value, why.

use std::str::FromStr;

/// A variable that is missing or does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name} is required")]
    Missing { name: &'static str },
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// The variable `name` parsed as `T`, or an error if it is unset.
pub fn required<T>(name: &'static str) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) => parse(name, value),
        Err(_) => Err(ConfigError::Missing { name }),
    }
}

/// The variable `name` parsed as `T`, or `default` if it is unset.
pub fn optional<T>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) => parse(name, value),
        Err(_) => Ok(default),
    }
}

fn parse<T>(name: &'static str, value: String) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| ConfigError::Invalid {
        name,
        reason: e.to_string(),
        value,
    })
}
