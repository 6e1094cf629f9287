//! The actix-web middleware that guards a scope of routes.

use std::future::{ready, Future, Ready};
use std::pin::Pin;

use actix_web::body::EitherBody;
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header;
use actix_web::HttpMessage;

use crate::{AuthError, Authenticator, Principal, Scope};

/// Middleware that lets a request through only with a valid bearer token that
/// grants one scope, and hands the [`Principal`] to the handlers.
///
/// ```no_run
/// use access_control::{AuthConfig, Authenticator, RequireScope, Scope};
/// use actix_web::{web, App, HttpResponse};
///
/// # fn app(config: &AuthConfig) {
/// let authenticator = Authenticator::new(config);
/// let app = App::new().service(
///     web::scope("")
///         .wrap(RequireScope::new(authenticator.clone(), Scope::Write))
///         .route("/orders", web::post().to(|| async { HttpResponse::Accepted().finish() })),
/// );
/// # }
/// ```
///
/// A refused request gets the [`AuthError`] problem response and never
/// reaches the wrapped service. Nested guards reuse the principal an outer
/// one stored, so the token is verified once per request.
#[derive(Debug, Clone)]
pub struct RequireScope {
    authenticator: Authenticator,
    scope: Scope,
}

impl RequireScope {
    /// Requires a token that `authenticator` accepts and that grants `scope`.
    pub fn new(authenticator: Authenticator, scope: Scope) -> Self {
        Self {
            authenticator,
            scope,
        }
    }
}

impl<S, B> Transform<S, ServiceRequest> for RequireScope
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = RequireScopeMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequireScopeMiddleware {
            service,
            guard: self.clone(),
        }))
    }
}

/// The service [`RequireScope`] wraps around the inner one.
#[derive(Debug)]
pub struct RequireScopeMiddleware<S> {
    service: S,
    guard: RequireScope,
}

impl<S> RequireScopeMiddleware<S> {
    fn principal(&self, req: &ServiceRequest) -> Result<Principal, AuthError> {
        let existing = req.extensions().get::<Principal>().cloned();
        let principal = match existing {
            Some(principal) => principal,
            None => {
                let mut values = req.headers().get_all(header::AUTHORIZATION);
                let header = match (values.next(), values.next()) {
                    (None, _) => None,
                    (Some(value), None) => {
                        Some(value.to_str().map_err(|_| AuthError::MalformedHeader)?)
                    }
                    // Two credentials are ambiguous; picking one could let a
                    // proxy-added header be bypassed.
                    (Some(_), Some(_)) => return Err(AuthError::MalformedHeader),
                };
                self.guard.authenticator.authenticate(header)?
            }
        };
        principal.require(self.guard.scope)?;
        Ok(principal)
    }
}

impl<S, B> Service<ServiceRequest> for RequireScopeMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        match self.principal(&req) {
            Ok(principal) => {
                req.extensions_mut().insert(principal);
                let response = self.service.call(req);
                Box::pin(async move { response.await.map(ServiceResponse::map_into_left_body) })
            }
            Err(err) => {
                // The reason only: the header itself is a credential.
                tracing::debug!(
                    reason = %err,
                    method = %req.method(),
                    path = req.path(),
                    "request refused"
                );
                let response = req.error_response(err).map_into_right_body();
                Box::pin(ready(Ok(response)))
            }
        }
    }
}
