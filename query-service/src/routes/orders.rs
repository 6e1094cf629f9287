//! `GET /orders/{id}`: an order summary, from the caches or a database.

use actix_web::{web, HttpRequest, HttpResponse};
use schema::views::order_summary_key;
use uuid::Uuid;

use crate::cache::Caches;
use crate::conditional::{self, PRIVATE_REVALIDATE};
use crate::consistency::Aggregate;
use crate::error::QueryError;
use crate::metrics::Metrics;
use crate::openapi::PROBLEM_JSON;
use crate::read_model;
use crate::reads::{self, DocumentRead};
use crate::replicas::ReadRouter;

/// Reads an order
///
/// The summary of an order: its status, lines and total. 404 until the
/// projector has seen the order. Served from the caches unless
/// `Cache-Control: no-cache`; conditional with `If-None-Match`;
/// read-your-writes with `consistency-token` (see `reads::document`).
#[utoipa::path(
    get,
    path = "/orders/{id}",
    operation_id = "getOrder",
    tag = "orders",
    params(("id" = Uuid, Path, description = "The order."), super::DocumentReadHeaders),
    responses(
        (status = 200, description = "The order summary.", body = schema::views::OrderSummary,
            headers(("ETag"), ("Cache-Control"), ("x-read-source"))),
        (status = 304, description = super::NOT_MODIFIED,
            headers(("ETag"), ("Cache-Control"), ("x-read-source"))),
        (status = 400, description = super::BAD_DOCUMENT_READ, body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
        (status = 404, description = "No order with this id in the read model (yet).",
            body = crate::openapi::Problem, content_type = PROBLEM_JSON),
    )
)]
pub async fn get_order(
    request: HttpRequest,
    path: web::Path<Uuid>,
    caches: web::Data<Caches>,
    router: web::Data<ReadRouter>,
    metrics: web::Data<Metrics>,
) -> Result<HttpResponse, QueryError> {
    let order_id = path.into_inner();
    let read = DocumentRead::from_request(
        &request,
        order_summary_key(order_id),
        Aggregate::Order,
        order_id,
    )?;
    let served = reads::document(&caches.orders, &router, read, |pool| async move {
        reads::as_document(read_model::order_summary(&pool, order_id).await?, |s| {
            s.version
        })
    })
    .await?
    .ok_or_else(|| QueryError::NotFound {
        resource: "order",
        id: order_id.to_string(),
    })?;
    metrics.read("orders", &served.from);
    Ok(conditional::respond_document(
        &request,
        served,
        PRIVATE_REVALIDATE,
    ))
}
