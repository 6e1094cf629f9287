//! Turning an `Authorization` header into a [`Principal`].

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::{algorithm_name, AuthConfig, VerificationKey};
use crate::{AuthError, Principal, Scopes};

/// Verifies bearer tokens against one [`AuthConfig`].
///
/// Cloning is cheap (the key and validation rules are shared), so every actix
/// worker and every [`RequireScope`](crate::RequireScope) can hold its own.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    /// An authenticator that accepts exactly the tokens `config` describes.
    pub fn new(config: &AuthConfig) -> Self {
        let key = match &config.key {
            VerificationKey::Shared(secret) => DecodingKey::from_secret(secret),
            VerificationKey::Public(key) => key.clone(),
        };
        // Only the configured algorithm: accepting a family or a list is what
        // makes algorithm-confusion attacks possible.
        let mut validation = Validation::new(config.algorithm);
        // `sub` is checked with the custom claims, where a non-string value
        // is reported as invalid rather than as missing.
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        Self {
            inner: Arc::new(Inner {
                algorithm: config.algorithm,
                key,
                validation,
            }),
        }
    }

    /// Authenticates the value of an `Authorization` header (`None` when the
    /// request has none).
    ///
    /// The header must be `Bearer <jwt>` (scheme case-insensitive). The JWT
    /// must carry the pinned algorithm, verify with the configured key, be
    /// unexpired, and name the configured issuer and audience; see the crate
    /// documentation for the claims.
    pub fn authenticate(&self, authorization_header: Option<&str>) -> Result<Principal, AuthError> {
        let token = bearer_token(authorization_header)?;
        self.check_algorithm(token)?;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(
            token,
            &self.inner.key,
            &self.inner.validation,
        )
        .map_err(|err| map_jwt_error(err.kind()))?
        .claims;
        principal_from_claims(&claims)
    }

    // jsonwebtoken would reject a foreign `alg` too, but `none` and names it
    // does not know surface as JSON errors there; reading `alg` first makes
    // every such token a precise `WrongAlgorithm`.
    fn check_algorithm(&self, token: &str) -> Result<(), AuthError> {
        #[derive(Deserialize)]
        struct Header {
            alg: String,
        }
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::MalformedToken);
        };
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| AuthError::MalformedToken)?;
        let header: Header =
            serde_json::from_slice(&header).map_err(|_| AuthError::MalformedToken)?;
        if header.alg != algorithm_name(self.inner.algorithm) {
            return Err(AuthError::WrongAlgorithm);
        }
        Ok(())
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithm", &self.inner.algorithm)
            .field("issuer", &self.inner.validation.iss)
            .field("audience", &self.inner.validation.aud)
            .field("leeway_secs", &self.inner.validation.leeway)
            .finish_non_exhaustive()
    }
}

fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let header = header.ok_or(AuthError::MissingToken)?;
    let (scheme, token) = header
        .trim_start()
        .split_once(' ')
        .ok_or(AuthError::MalformedHeader)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MalformedHeader);
    }
    let token = token.trim_matches(' ');
    if token.is_empty() {
        return Err(AuthError::MalformedHeader);
    }
    Ok(token)
}

fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(spec_claim(claim)),
        ErrorKind::InvalidClaimFormat(claim) => AuthError::InvalidClaim(spec_claim(claim)),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthError::MalformedToken,
        other => {
            // Key and provider errors mean the configured key cannot verify
            // this algorithm: the operator has to act, the client cannot.
            tracing::warn!(error = ?other, "token verification failed on the configured key");
            AuthError::BadSignature
        }
    }
}

// `AuthError` carries `&'static str` so that no token-controlled text reaches
// messages; jsonwebtoken only names its own spec claims here.
fn spec_claim(claim: &str) -> &'static str {
    ["exp", "nbf", "iss", "aud", "sub"]
        .into_iter()
        .find(|known| *known == claim)
        .unwrap_or("registered")
}

fn principal_from_claims(claims: &Map<String, Value>) -> Result<Principal, AuthError> {
    let subject = match claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
        Some(_) => return Err(AuthError::InvalidClaim("sub")),
        None => return Err(AuthError::MissingClaim("sub")),
    };
    let scopes = match claims.get("scope") {
        Some(Value::String(scope)) => Scopes::from_claim(scope),
        None => Scopes::empty(),
        Some(_) => return Err(AuthError::InvalidClaim("scope")),
    };
    // Anything but a UUID string is refused, `null` included: reading an
    // unusable `customer_id` as "no customer" would turn a customer token
    // into an unrestricted one.
    let customer_id = match claims.get("customer_id") {
        None => None,
        Some(Value::String(id)) => {
            Some(Uuid::parse_str(id).map_err(|_| AuthError::InvalidClaim("customer_id"))?)
        }
        Some(_) => return Err(AuthError::InvalidClaim("customer_id")),
    };
    Ok(Principal {
        subject,
        scopes,
        customer_id,
    })
}
