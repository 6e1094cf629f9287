//! `GET /orders/{id}`: an order summary, from the caches or a database.

use actix_web::{web, HttpRequest, HttpResponse};
use schema::views::order_summary_key;
use uuid::Uuid;

use crate::cache::Caches;
use crate::conditional::{self, PRIVATE_REVALIDATE};
use crate::consistency::Aggregate;
use crate::error::QueryError;
use crate::metrics::Metrics;
use crate::read_model;
use crate::reads::{self, DocumentRead};
use crate::replicas::ReadRouter;

/// The [`schema::views::OrderSummary`] of an order; 404 if it does not exist
/// (yet). Honours `Cache-Control: no-cache`, `If-None-Match` and
/// `consistency-token` (see [`reads::document`]).
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
