//! Who made a request, as far as a verified token says.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use uuid::Uuid;

use crate::{AuthError, Scope, Scopes};

/// The authenticated caller of a request.
///
/// [`RequireScope`](crate::RequireScope) puts it into the request extensions;
/// handlers take it as an argument for object-level checks:
///
/// ```
/// use access_control::Principal;
/// use actix_web::{web, HttpResponse};
/// use uuid::Uuid;
///
/// async fn customer_orders(principal: Principal, customer: web::Path<Uuid>) -> HttpResponse {
///     if !principal.may_access_customer(*customer) {
///         // 404 rather than 403: do not confirm that the customer exists.
///         return HttpResponse::NotFound().finish();
///     }
///     HttpResponse::Ok().finish()
/// }
/// ```
///
/// Extracting it on a route that no authenticating middleware wraps fails
/// with [`AuthError::NotAuthenticated`] (401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The `sub` claim.
    pub subject: String,
    /// The known scopes of the `scope` claim.
    pub scopes: Scopes,
    /// The `customer_id` claim: `Some` for a customer token, which may only
    /// touch that customer's data.
    pub customer_id: Option<Uuid>,
}

impl Principal {
    /// Whether the token grants `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(scope)
    }

    /// `Ok` when the token grants `scope`, else [`AuthError::MissingScope`] (403).
    pub fn require(&self, scope: Scope) -> Result<(), AuthError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(AuthError::MissingScope(scope))
        }
    }

    /// Whether this caller may read or change data of `customer`: always for
    /// a non-customer token, only its own customer for a customer token.
    pub fn may_access_customer(&self, customer: Uuid) -> bool {
        self.customer_id.is_none_or(|own| own == customer)
    }

    /// `Ok` when [`Principal::may_access_customer`], else
    /// [`AuthError::ForbiddenCustomer`] (403).
    pub fn require_customer(&self, customer: Uuid) -> Result<(), AuthError> {
        if self.may_access_customer(customer) {
            Ok(())
        } else {
            Err(AuthError::ForbiddenCustomer)
        }
    }
}

impl FromRequest for Principal {
    type Error = AuthError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Principal>()
                .cloned()
                .ok_or(AuthError::NotAuthenticated),
        )
    }
}
