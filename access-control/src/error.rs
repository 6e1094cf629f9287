//! Why a request was refused, and how that is answered.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use problem_details::Problem;

use crate::Scope;

/// A request that is not authenticated, or not allowed to do what it asks.
///
/// As an actix `ResponseError` it answers with an RFC 9457 problem:
///
/// | variants | status | problem `type` | `WWW-Authenticate` |
/// | --- | --- | --- | --- |
/// | [`MissingToken`], [`NotAuthenticated`] | 401 | `/problems/unauthenticated` | `Bearer realm="api"` |
/// | every other token failure | 401 | `/problems/unauthenticated` | `Bearer realm="api", error="invalid_token"` |
/// | [`MissingScope`] | 403 | `/problems/insufficient-scope` | `Bearer error="insufficient_scope", scope="…"` |
/// | [`ForbiddenCustomer`] | 403 | `/problems/forbidden` | none |
///
/// The messages name the reason but never contain the token or its claims,
/// so they are safe both as the problem `detail` and in logs.
///
/// [`MissingToken`]: AuthError::MissingToken
/// [`NotAuthenticated`]: AuthError::NotAuthenticated
/// [`MissingScope`]: AuthError::MissingScope
/// [`ForbiddenCustomer`]: AuthError::ForbiddenCustomer
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("the request has no bearer token")]
    MissingToken,
    /// An `Authorization` header that is not `Bearer <token>`, or more than one.
    #[error("the Authorization header is not a single `Bearer <token>`")]
    MalformedHeader,
    /// A bearer token that is not a compact JWS (three base64url parts with
    /// JSON header and claims).
    #[error("the bearer token is not a well-formed JWT")]
    MalformedToken,
    /// The token's header names an algorithm other than the pinned one
    /// (including `none`).
    #[error("the token is not signed with the algorithm this service accepts")]
    WrongAlgorithm,
    /// The signature does not verify with the configured key.
    #[error("the token signature is invalid")]
    BadSignature,
    /// `exp` is in the past, beyond the leeway.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future, beyond the leeway.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("the token was not issued by the expected issuer")]
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    #[error("the token is not intended for this audience")]
    WrongAudience,
    /// A claim the contract requires (`exp`, `iss`, `aud`, `sub`) is absent.
    #[error("the token lacks the required `{0}` claim")]
    MissingClaim(&'static str),
    /// A claim is present with the wrong type or an unusable value (e.g. a
    /// `customer_id` that is not a UUID).
    #[error("the token's `{0}` claim is invalid")]
    InvalidClaim(&'static str),
    /// A handler extracted a [`Principal`](crate::Principal) on a route that no
    /// authenticating middleware wraps.
    #[error("the request is not authenticated")]
    NotAuthenticated,
    /// The token is valid but lacks the scope the operation needs.
    #[error("this operation requires the `{0}` scope")]
    MissingScope(Scope),
    /// A customer token asked for another customer's data. Handlers that must
    /// not reveal whether the resource exists answer 404 instead.
    #[error("this token may only access its own customer's data")]
    ForbiddenCustomer,
}

impl AuthError {
    fn www_authenticate(&self) -> Option<HeaderValue> {
        match self {
            // RFC 6750 §3.1: no error code when the client sent no credentials.
            AuthError::MissingToken | AuthError::NotAuthenticated => {
                Some(HeaderValue::from_static(r#"Bearer realm="api""#))
            }
            AuthError::MissingScope(scope) => HeaderValue::from_str(&format!(
                r#"Bearer error="insufficient_scope", scope="{}""#,
                scope.as_str()
            ))
            .ok(),
            AuthError::ForbiddenCustomer => None,
            AuthError::MalformedHeader
            | AuthError::MalformedToken
            | AuthError::WrongAlgorithm
            | AuthError::BadSignature
            | AuthError::Expired
            | AuthError::NotYetValid
            | AuthError::WrongIssuer
            | AuthError::WrongAudience
            | AuthError::MissingClaim(_)
            | AuthError::InvalidClaim(_) => Some(HeaderValue::from_static(
                r#"Bearer realm="api", error="invalid_token""#,
            )),
        }
    }

    fn problem(&self) -> Problem {
        let problem = match self {
            AuthError::MissingScope(_) => Problem::typed(
                StatusCode::FORBIDDEN,
                "/problems/insufficient-scope",
                "Insufficient scope",
            ),
            AuthError::ForbiddenCustomer => {
                Problem::typed(StatusCode::FORBIDDEN, "/problems/forbidden", "Forbidden")
            }
            _ => Problem::typed(
                StatusCode::UNAUTHORIZED,
                "/problems/unauthenticated",
                "Unauthenticated",
            ),
        };
        problem.with_detail(self.to_string())
    }
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        match self {
            AuthError::MissingScope(_) | AuthError::ForbiddenCustomer => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = self.problem().to_response();
        if let Some(challenge) = self.www_authenticate() {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}
