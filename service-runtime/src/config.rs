//! Typed environment variables. Each service's `Config::from_env` reads its
//! variables through these two functions, so every misconfiguration is
//! reported the same way: which variable, why, and which value unless it may
//! be a secret.

use std::str::FromStr;

/// A variable that is missing, does not parse or cannot be used: the one
/// error of every service's `Config::from_env`.
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
    /// A variable that cannot be used as configured (e.g. a secret that is
    /// too short, a key file that cannot be read, a key the algorithm does
    /// not take). The value is not repeated: it may be a secret.
    #[error("environment variable {name}: {reason}")]
    Unusable { name: &'static str, reason: String },
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

/// `PRIMARY_SESSION_DATABASE_URL`: the primary itself, for what needs a
/// session (the migrator's advisory lock, command-service's relay lease),
/// which a transaction pooler does not keep. Defaults to `database_url`
/// (`PRIMARY_DATABASE_URL`) where no pooler is in between; required, and
/// different, when `transaction_pooler` (`PRIMARY_TRANSACTION_POOLER`) is set.
pub fn session_database_url(
    database_url: &str,
    transaction_pooler: bool,
) -> Result<String, ConfigError> {
    session_url_rule(
        database_url,
        transaction_pooler,
        std::env::var("PRIMARY_SESSION_DATABASE_URL").ok(),
    )
}

fn session_url_rule(
    database_url: &str,
    transaction_pooler: bool,
    session: Option<String>,
) -> Result<String, ConfigError> {
    let session = session.unwrap_or_else(|| database_url.to_owned());
    if transaction_pooler && session == database_url {
        return Err(ConfigError::Unusable {
            name: "PRIMARY_SESSION_DATABASE_URL",
            reason: "must name the primary itself when PRIMARY_TRANSACTION_POOLER=true: \
                     migrations (and command-service's relay) need a session, \
                     which a transaction pooler does not keep"
                .to_owned(),
        });
    }
    Ok(session)
}

/// `url` with its credentials replaced by `***`, for `Debug` output and logs:
/// `scheme://user:secret@host/db` → `scheme://***@host/db`.
///
/// Everything between `://` and the **last** `@` is hidden, so a password
/// containing an unescaped `@` is hidden whole (an `@` further right, e.g. in
/// a query string, hides the host too: too much rather than too little).
/// A URL without `://` or without credentials is returned unchanged.
///
/// ```
/// use service_runtime::config::redact_url;
/// assert_eq!(redact_url("postgres://app:pw@db:5432/app"), "postgres://***@db:5432/app");
/// assert_eq!(redact_url("redis://cache:6379/"), "redis://cache:6379/");
/// ```
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOLER: &str = "postgres://app:pw@pgbouncer:6432/app";
    const PRIMARY: &str = "postgres://app:pw@primary:5432/app";

    #[test]
    fn without_a_pooler_the_session_url_defaults_to_the_primary_url() {
        assert_eq!(
            session_url_rule(PRIMARY, false, None).expect("no pooler, no session URL needed"),
            PRIMARY
        );
        assert_eq!(
            session_url_rule(POOLER, true, Some(PRIMARY.to_owned()))
                .expect("a session URL to the primary"),
            PRIMARY
        );
    }

    #[test]
    fn behind_a_pooler_the_session_url_must_name_another_server() {
        for session in [None, Some(POOLER.to_owned())] {
            let error = session_url_rule(POOLER, true, session)
                .expect_err("a pooler without a session URL of its own");
            assert!(
                matches!(
                    error,
                    ConfigError::Unusable {
                        name: "PRIMARY_SESSION_DATABASE_URL",
                        ..
                    }
                ),
                "{error}"
            );
        }
    }

    #[test]
    fn redact_url_hides_user_and_password() {
        assert_eq!(
            redact_url("postgres://app:secret@db:5432/app"),
            "postgres://***@db:5432/app"
        );
        assert_eq!(
            redact_url("redis://:pw@cache:6379/"),
            "redis://***@cache:6379/"
        );
    }

    #[test]
    fn redact_url_hides_a_password_containing_at() {
        let redacted = redact_url("postgres://app:p@ss@db/app");
        assert_eq!(redacted, "postgres://***@db/app");
        assert!(!redacted.contains("ss"), "{redacted}");
    }

    #[test]
    fn redact_url_keeps_urls_without_credentials() {
        assert_eq!(redact_url("redis://cache:6379/"), "redis://cache:6379/");
        assert_eq!(redact_url("http://127.0.0.1:8081"), "http://127.0.0.1:8081");
        assert_eq!(redact_url("not a url @ all"), "not a url @ all");
        assert_eq!(redact_url(""), "");
    }
}
