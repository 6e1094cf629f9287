//! The actix-web middleware applying one [`RateLimitPolicy`] to a scope.

use std::future::{ready, Ready};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::error::InternalError;
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpMessage;
use futures::future::LocalBoxFuture;
use problem_details::Problem;

use super::{Decision, OnRedisError, RateLimitPolicy, RateLimiter};
use crate::problem::service_unavailable;

/// Problem type of a request over its client's limit (429).
pub const RATE_LIMITED_PROBLEM: &str = "/problems/rate-limited";
/// Problem type of a request refused because the limiter's Redis could not
/// answer and the policy is [`OnRedisError::Closed`] (503).
pub const RATE_LIMITER_UNAVAILABLE_PROBLEM: &str = "/problems/rate-limiter-unavailable";

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): the quota.
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers): what is left of it.
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Finds the authenticated subject of a request, if any.
pub type ClientKeyFn = Arc<dyn Fn(&ServiceRequest) -> Option<String> + Send + Sync>;

/// Middleware limiting each client of a scope to a [`RateLimitPolicy`].
///
/// The client is the authenticated principal's subject, which the auth
/// middleware (wrapped *outside* this one, so it runs first) puts in the
/// request extensions; requests without one are limited per peer IP (IPv6
/// per /64, since one host commonly holds a whole /64). Subjects and IPs
/// are prefixed (`sub:` / `ip:`) so a subject spelled like an IP cannot
/// share its bucket.
///
/// Every response it lets through, and every 429, carries
/// `RateLimit-Policy: "<class>";q=<burst>;w=<secs>` and
/// `RateLimit: "<class>";r=<remaining>;t=<secs until the full burst is back>`.
/// Over the limit the answer is 429 `/problems/rate-limited` with
/// `Retry-After` (seconds, rounded up, at least 1). When Redis cannot answer
/// it admits the request or answers 503, as the limiter's [`OnRedisError`]
/// says.
///
/// The peer IP is the TCP peer: behind a proxy every anonymous client shares
/// the proxy's address. Pass [`RateLimit::with_client_key`] a function that
/// reads a trusted forwarding header if that matters.
#[derive(Clone)]
pub struct RateLimit {
    limiter: RateLimiter,
    /// `None`: the class is switched off and requests pass untouched.
    policy: Option<RateLimitPolicy>,
    subject: ClientKeyFn,
}

impl RateLimit {
    /// Limits by `policy`, keyed by [`principal_subject`] or the peer IP.
    pub fn new(limiter: RateLimiter, policy: RateLimitPolicy) -> Self {
        Self::optional(limiter, Some(policy))
    }

    /// Like [`RateLimit::new`], for a class that may be switched off
    /// ([`crate::RateLimitConfig`] fields are `None` for `off`): with `None`
    /// requests pass untouched, without rate-limit headers, so the scope's
    /// middleware stack has the same type either way.
    pub fn optional(limiter: RateLimiter, policy: Option<RateLimitPolicy>) -> Self {
        Self {
            limiter,
            policy,
            subject: Arc::new(principal_subject),
        }
    }

    /// Replaces how the client is identified: `subject` returns the client's
    /// identity, or `None` to fall back to the peer IP.
    pub fn with_client_key(
        mut self,
        subject: impl Fn(&ServiceRequest) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.subject = Arc::new(subject);
        self
    }
}

/// The default client identity: the subject of the [`access_control::Principal`]
/// that the auth middleware (`access_control::RequireScope`) stored in the
/// request extensions.
pub fn principal_subject(req: &ServiceRequest) -> Option<String> {
    req.extensions()
        .get::<access_control::Principal>()
        .map(|principal| principal.subject.clone())
}

/// The key a request is limited under: `sub:<subject>`, else `ip:<peer>`.
pub fn client_key(req: &ServiceRequest, subject: Option<String>) -> String {
    match subject {
        Some(subject) => format!("sub:{subject}"),
        None => match req.peer_addr() {
            Some(peer) => format!("ip:{}", ip_bucket(peer.ip())),
            // Only in-process test requests have no peer.
            None => "ip:unknown".to_owned(),
        },
    }
}

/// IPv4 as is; IPv6 by its /64 (one host commonly owns a whole /64 and could
/// otherwise rotate through it), IPv4-mapped IPv6 as the IPv4 it is.
fn ip_bucket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

impl<S, B> Transform<S, ServiceRequest> for RateLimit
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = RateLimitService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RateLimitService {
            service: Rc::new(service),
            limit: self.clone(),
        }))
    }
}

/// The service [`RateLimit`] wraps around the inner one.
pub struct RateLimitService<S> {
    service: Rc<S>,
    limit: RateLimit,
}

impl<S, B> Service<ServiceRequest> for RateLimitService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let RateLimit {
            limiter,
            policy,
            subject,
        } = self.limit.clone();
        let Some(policy) = policy else {
            let response = service.call(req);
            return Box::pin(
                async move { response.await.map(ServiceResponse::map_into_left_body) },
            );
        };
        Box::pin(async move {
            let key = client_key(&req, subject(&req));
            let decision = limiter.check(&policy, &key).await;
            let metrics = limiter.metrics();
            let headers = match decision {
                Decision::Allowed { remaining, reset } => {
                    metrics.count(policy.class, "allowed");
                    Some((remaining, reset))
                }
                Decision::Limited { retry_after, reset } => {
                    metrics.count(policy.class, "limited");
                    tracing::debug!(class = policy.class, client = %key, "rate limited");
                    let mut response = Problem::typed(
                        StatusCode::TOO_MANY_REQUESTS,
                        RATE_LIMITED_PROBLEM,
                        "Too many requests",
                    )
                    .with_detail(format!(
                        "the {} rate limit is exhausted; retry after the Retry-After delay",
                        policy.class
                    ))
                    .with_retry_after(whole_seconds(retry_after))
                    .to_response();
                    insert_headers(response.headers_mut(), &policy, Some((0, reset)));
                    return Ok(req.into_response(response).map_into_right_body());
                }
                Decision::Unavailable(_) => match limiter.on_error() {
                    OnRedisError::Open => {
                        metrics.count(policy.class, "unavailable_admitted");
                        None
                    }
                    OnRedisError::Closed => {
                        metrics.count(policy.class, "unavailable_rejected");
                        let response = service_unavailable(
                            RATE_LIMITER_UNAVAILABLE_PROBLEM,
                            "Rate limiter unavailable",
                            "the rate limit cannot be checked right now; retry shortly",
                        )
                        .to_response();
                        return Ok(req.into_response(response).map_into_right_body());
                    }
                },
            };

            match service.call(req).await {
                Ok(mut response) => {
                    insert_headers(response.headers_mut(), &policy, headers);
                    Ok(response.map_into_left_body())
                }
                // actix renders an error into a response further out, where
                // this layer cannot add headers; render it here instead. (The
                // request cannot be kept to build a ServiceResponse: a clone
                // held across the call breaks the inner router.)
                Err(error) => {
                    let mut response = error.error_response();
                    insert_headers(response.headers_mut(), &policy, headers);
                    Err(InternalError::from_response(error, response).into())
                }
            }
        })
    }
}

/// `RateLimit-Policy` always; `RateLimit` when the state is known (not when
/// the request was admitted without reaching Redis).
fn insert_headers(
    headers: &mut HeaderMap,
    policy: &RateLimitPolicy,
    state: Option<(u32, Duration)>,
) {
    let quota = format!(
        "\"{}\";q={};w={}",
        policy.class,
        policy.burst(),
        whole_seconds(policy.window())
    );
    if let Ok(value) = HeaderValue::from_str(&quota) {
        headers.insert(RATELIMIT_POLICY, value);
    }
    if let Some((remaining, reset)) = state {
        let current = format!(
            "\"{}\";r={};t={}",
            policy.class,
            remaining,
            reset.as_millis().div_ceil(1000)
        );
        if let Ok(value) = HeaderValue::from_str(&current) {
            headers.insert(RATELIMIT, value);
        }
    }
}

/// Seconds rounded up, at least 1: `Retry-After: 0` would invite an
/// immediate retry that is still too early.
fn whole_seconds(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests;
