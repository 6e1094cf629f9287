//! Liveness and readiness probes.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use problem_details::Problem;
use serde_json::json;
use sqlx::PgPool;

use crate::read_model;

/// 200 as long as the process serves HTTP.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// 200 if the replica answers `SELECT 1`, else a 503 problem. Redis is not
/// checked: without it reads are slower, not wrong.
pub async fn ready(pool: web::Data<PgPool>) -> HttpResponse {
    match read_model::ping(&pool).await {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "ready" })),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed: replica unreachable");
            Problem::typed(
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/not-ready",
                "Not ready",
            )
            .with_detail("the read replica is not reachable")
            .with_retry_after(1)
            .to_response()
        }
    }
}
