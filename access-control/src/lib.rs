//! JWT bearer authentication and scope checks for the HTTP services.
//!
//! # The token contract
//!
//! A request carries `Authorization: Bearer <jwt>` (the scheme is
//! case-insensitive). The JWT is a compact JWS that services accept only if:
//!
//! * its header `alg` is **exactly** the configured algorithm
//!   (`JWT_ALGORITHM`, default `HS256`). The algorithm is pinned: `none`, or
//!   another algorithm even of the same family, is refused;
//! * its signature verifies with the configured key (the HS* shared secret, or
//!   the public key for RS*/PS*/ES*/EdDSA);
//! * its claims hold:
//!
//! | claim | type | rule |
//! | --- | --- | --- |
//! | `iss` | string | required, equals `JWT_ISSUER` |
//! | `aud` | string or array | required, contains `JWT_AUDIENCE` |
//! | `exp` | NumericDate | required, in the future (± `JWT_LEEWAY_SECS`, default 5) |
//! | `nbf` | NumericDate | optional; if present, in the past (± leeway) |
//! | `sub` | string | required, non-empty; becomes [`Principal::subject`] |
//! | `scope` | string | optional; space-separated scope words (RFC 8693 §4.2) |
//! | `customer_id` | UUID string | optional; present = *customer token* |
//!
//! Other claims (`iat`, `jti`, …) are ignored.
//!
//! ## Scopes
//!
//! The known scope words are `read`, `write` and `admin` ([`Scope`]). They are
//! independent: `admin` does not imply `write`, nor `write` `read`. Unknown
//! words are ignored, so one issuer can serve several audiences. A route
//! states the scope it needs with [`RequireScope`]; a token without it gets
//! 403 `insufficient_scope`.
//!
//! ## Customer tokens
//!
//! A token with `customer_id` acts for one customer only. Scopes still apply;
//! on top of them, handlers must check every customer-owned object with
//! [`Principal::may_access_customer`] (or [`Principal::require_customer`]).
//! A token without `customer_id` is a staff or service token and may touch
//! every customer. A `customer_id` that is not a UUID string (`null`
//! included) makes the whole token invalid rather than unrestricted.
//!
//! ## Refusals
//!
//! Every refusal is an RFC 9457 problem (see [`AuthError`]): 401
//! `/problems/unauthenticated` with a `WWW-Authenticate: Bearer` challenge
//! for token problems, 403 `/problems/insufficient-scope` for a missing
//! scope, 403 `/problems/forbidden` for another customer's data. Tokens are
//! never logged nor echoed; refusals are logged at debug level with the reason.
//!
//! # Wiring
//!
//! ```no_run
//! use access_control::{AuthConfig, Authenticator, Principal, RequireScope, Scope};
//! use actix_web::{web, App, HttpResponse, HttpServer};
//!
//! async fn place_order(principal: Principal) -> HttpResponse {
//!     HttpResponse::Accepted().body(principal.subject)
//! }
//!
//! # async fn run() -> anyhow::Result<()> {
//! let authenticator = Authenticator::new(&AuthConfig::from_env()?);
//! HttpServer::new(move || {
//!     App::new().service(
//!         web::scope("")
//!             .wrap(RequireScope::new(authenticator.clone(), Scope::Write))
//!             .route("/orders", web::post().to(place_order)),
//!     )
//! })
//! .bind(("0.0.0.0", 8080))?
//! .run()
//! .await?;
//! # Ok(())
//! # }
//! ```
//!
//! For the local stack, [`issue_token`] and the `dev-token` binary mint HS*
//! tokens from the same environment the services read.

mod authenticator;
mod config;
mod error;
mod issue;
mod middleware;
mod principal;
mod scope;

pub use authenticator::Authenticator;
pub use config::{AuthConfig, AuthConfigError, MIN_SECRET_BYTES};
pub use error::AuthError;
pub use issue::{issue_token, IssueTokenError, TokenRequest};
pub use jsonwebtoken::Algorithm;
pub use middleware::{RequireScope, RequireScopeMiddleware};
pub use principal::Principal;
pub use scope::{Scope, Scopes, UnknownScope};

#[cfg(test)]
mod tests;
