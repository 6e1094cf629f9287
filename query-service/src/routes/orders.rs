//! `GET /orders/{id}`: an order summary, from the caches or a database.

use actix_web::{web, HttpRequest, HttpResponse};
use schema::views::order_summary_key;
use uuid::Uuid;

use crate::cache::Caches;
use crate::cache::Document;
use crate::conditional::{self, PRIVATE_REVALIDATE};
use crate::consistency::{Aggregate, Requirement};
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
    let read = DocumentRead {
        key: order_summary_key(order_id),
        aggregate: Aggregate::Order,
        id: order_id,
        use_cache: !conditional::wants_no_cache(&request),
        requirement: Requirement::from_request(&request)?,
    };
    let served = reads::document(&caches.orders, &router, read, |pool| async move {
        let summary = read_model::order_summary(&pool, order_id).await?;
        summary
            .map(|summary| {
                let body = conditional::json_body(&summary)?;
                Ok(Document {
                    version: summary.version,
                    body,
                })
            })
            .transpose()
    })
    .await?
    .ok_or_else(|| QueryError::NotFound {
        resource: "order",
        id: order_id.to_string(),
    })?;
    metrics.read("orders", &served.from);
    let etag = conditional::version_etag(served.value.version);
    let served = served.map(|document| document.body);
    Ok(conditional::respond(
        &request,
        served,
        &etag,
        PRIVATE_REVALIDATE,
    ))
}
