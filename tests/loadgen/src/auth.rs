//! The bearer token every API request of a run carries.
//!
//! Every API route of the services needs `Authorization: Bearer <jwt>`
//! (health, `/metrics` and `/openapi.json` stay public). loadgen mints one
//! token per process from the same environment the services read
//! (`eval "$(deploy/local/stack env)"`: `JWT_ALGORITHM`, `JWT_SECRET` or
//! `JWT_SECRET_FILE`, `JWT_ISSUER`, `JWT_AUDIENCE`): subject [`SUBJECT`],
//! scopes read, write and admin, valid for [`TOKEN_TTL`]. The services'
//! rate limits are keyed by the subject, so all of a run's requests share one
//! client budget (see [`crate::service`] for how benchmarks lift it).

use std::sync::OnceLock;
use std::time::Duration;

use access_control::{
    issue_token, AuthConfig, AuthConfigError, IssueTokenError, Scope, TokenRequest,
};
use reqwest::header::{HeaderMap, HeaderValue, InvalidHeaderValue, AUTHORIZATION};

/// The `sub` claim of loadgen's token.
pub const SUBJECT: &str = "loadgen";

/// Lifetime of the token: longer than the longest run (a full
/// `make bench` step with its timeouts).
pub const TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);

/// Why loadgen has no token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "no usable JWT configuration to mint loadgen's bearer token ({0}); \
         run `eval \"$(deploy/local/stack env)\"` first"
    )]
    Config(#[from] AuthConfigError),
    #[error(
        "cannot mint loadgen's bearer token ({0}); loadgen signs with the stack's \
         HS256 secret: run `eval \"$(deploy/local/stack env)\"` first"
    )]
    Issue(#[from] IssueTokenError),
    #[error("the minted token is not a valid header value: {0}")]
    Header(#[from] InvalidHeaderValue),
}

static TOKEN: OnceLock<String> = OnceLock::new();

/// The run's token, minted from the environment on first use; later calls
/// return the same token.
pub fn token() -> Result<&'static str, TokenError> {
    if let Some(token) = TOKEN.get() {
        return Ok(token);
    }
    let minted = mint(&AuthConfig::from_env()?)?;
    Ok(TOKEN.get_or_init(|| minted))
}

/// The value of the `Authorization` header: `Bearer <token>`.
pub fn authorization() -> Result<String, TokenError> {
    Ok(format!("Bearer {}", token()?))
}

/// A client builder for the services' API routes: no proxy, and
/// `Authorization: Bearer <token>` on every request, idle connections
/// dropped after 30 s. Callers add their timeouts and pool settings.
pub fn authorized_client() -> Result<reqwest::ClientBuilder, TokenError> {
    let mut value = HeaderValue::from_str(&authorization()?)?;
    value.set_sensitive(true);
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value);
    Ok(reqwest::Client::builder()
        .no_proxy()
        // Idle connections are dropped before the services close them
        // (`service_runtime::http::KEEP_ALIVE`, 75 s), never in a race with
        // a request sent on one.
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .default_headers(headers))
}

fn mint(config: &AuthConfig) -> Result<String, IssueTokenError> {
    issue_token(
        config,
        &TokenRequest {
            subject: SUBJECT.to_owned(),
            scopes: vec![Scope::Read, Scope::Write, Scope::Admin],
            customer_id: None,
            ttl: TOKEN_TTL,
        },
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use access_control::Authenticator;

    use super::*;

    #[test]
    fn the_token_is_a_staff_token_with_every_scope() {
        let config = AuthConfig::hs256(
            "0123456789abcdef0123456789abcdef",
            "local-stack",
            "cqrs-skeleton",
        )
        .unwrap();
        let token = mint(&config).unwrap();
        let principal = Authenticator::new(&config)
            .authenticate(Some(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(principal.subject, SUBJECT);
        assert_eq!(principal.customer_id, None);
        for scope in [Scope::Read, Scope::Write, Scope::Admin] {
            assert!(principal.has(scope), "{scope:?}");
        }
    }
}
