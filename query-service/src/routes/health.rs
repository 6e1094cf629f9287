//! Liveness and readiness probes.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use problem_details::Problem;
use serde_json::{json, Value};

use crate::cache::Feed;
use crate::replicas::ReadRouter;

/// Liveness probe
///
/// 200 as long as the process serves HTTP.
#[utoipa::path(
    get,
    path = "/health/live",
    operation_id = "live",
    tag = "operations",
    responses((status = 200, description = "Alive.", body = crate::openapi::Liveness))
)]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Readiness probe
///
/// 200 if a read would find a database now (a healthy replica within the
/// lag bound, or the primary if fallback is allowed), else a 503 problem.
/// Either body lists what the monitor knows of each database. Redis is not a
/// condition: without it reads are slower, not wrong.
#[utoipa::path(
    get,
    path = "/health/ready",
    operation_id = "ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = crate::openapi::Readiness),
        (status = 503, description = "No read database is healthy and within the lag bound \
(`/problems/not-ready`).", body = crate::openapi::NotReady,
            content_type = crate::openapi::PROBLEM_JSON, headers(("Retry-After"))),
    )
)]
pub async fn ready(router: web::Data<ReadRouter>, feed: web::Data<Feed>) -> HttpResponse {
    let databases: Vec<Value> = router
        .databases()
        .map(|database| {
            let health = database.health();
            json!({
                "name": database.name().as_ref(),
                "healthy": health.healthy,
                "lag_ms": health.lag.map(|lag| lag.as_millis()),
                "checkpoint_lag": health.checkpoint_lag,
            })
        })
        .collect();
    if router.can_serve() {
        return HttpResponse::Ok().json(json!({
            "status": "ready",
            "databases": databases,
            "invalidation_feed_up": feed.is_up(),
        }));
    }
    tracing::warn!(?databases, "not ready: no database qualifies for reads");
    Problem::typed(
        StatusCode::SERVICE_UNAVAILABLE,
        "/problems/not-ready",
        "Not ready",
    )
    .with_detail("no read database is healthy and within the lag bound")
    .with_extension("databases", databases)
    .with_retry_after(1)
    .to_response()
}
