//! Minting tokens for the local stack and tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;
use uuid::Uuid;

use crate::config::{AuthConfig, VerificationKey};
use crate::{Scope, Scopes};

/// What a dev token should say. `iss`, `aud`, `iat` and `exp` come from the
/// [`AuthConfig`] and the clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The `sub` claim; must not be empty.
    pub subject: String,
    /// The `scope` claim.
    pub scopes: Vec<Scope>,
    /// The `customer_id` claim; `Some` makes a customer token.
    pub customer_id: Option<Uuid>,
    /// Lifetime: `exp` is now plus this, in whole seconds.
    pub ttl: Duration,
}

/// Why [`issue_token`] made no token.
#[derive(Debug, thiserror::Error)]
pub enum IssueTokenError {
    /// The configuration verifies with a public key; its private half lives
    /// with the real issuer, not here.
    #[error(
        "{algorithm:?} is asymmetric: dev tokens can only be issued with an HS* shared secret"
    )]
    NotSharedSecret {
        /// The configured algorithm.
        algorithm: jsonwebtoken::Algorithm,
    },
    /// [`TokenRequest::subject`] is empty, which every service would reject.
    #[error("the token subject must not be empty")]
    EmptySubject,
    /// The system clock is before 1970.
    #[error("the system clock is before the Unix epoch")]
    Clock,
    /// The JWT library failed to sign.
    #[error("signing the token failed: {0}")]
    Signing(String),
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    customer_id: Option<Uuid>,
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// Signs a token that services configured with `config` accept.
///
/// Only for HS* configurations, i.e. the local stack's shared secret.
pub fn issue_token(config: &AuthConfig, request: &TokenRequest) -> Result<String, IssueTokenError> {
    let VerificationKey::Shared(secret) = &config.key else {
        return Err(IssueTokenError::NotSharedSecret {
            algorithm: config.algorithm,
        });
    };
    if request.subject.is_empty() {
        return Err(IssueTokenError::EmptySubject);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| IssueTokenError::Clock)?
        .as_secs();
    let claims = Claims {
        sub: &request.subject,
        scope: request
            .scopes
            .iter()
            .copied()
            .collect::<Scopes>()
            .to_string(),
        customer_id: request.customer_id,
        iss: &config.issuer,
        aud: &config.audience,
        iat: now,
        exp: now.saturating_add(request.ttl.as_secs()),
    };
    jsonwebtoken::encode(
        &Header::new(config.algorithm),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| IssueTokenError::Signing(e.to_string()))
}
