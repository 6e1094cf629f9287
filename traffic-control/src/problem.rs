//! The problem+json answers the middleware produce themselves.

use actix_web::http::StatusCode;
use problem_details::Problem;

/// 503 with `Retry-After: 1`: the condition (overload, a slow request, the
/// limiter's Redis) is expected to be short-lived, and a longer hint would
/// leave capacity idle once it clears.
pub(crate) fn service_unavailable(
    type_uri: &str,
    title: &str,
    detail: impl Into<String>,
) -> Problem {
    Problem::typed(StatusCode::SERVICE_UNAVAILABLE, type_uri, title)
        .with_detail(detail)
        .with_retry_after(1)
}
