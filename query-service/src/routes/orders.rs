//! `GET /orders/{id}`: an order summary, from the caches or a database.

use access_control::Principal;
use actix_web::{web, HttpRequest, HttpResponse};
use schema::views::order_summary_key;
use uuid::Uuid;

use crate::cache::{Caches, Document};
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
    principal: Principal,
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
    let not_found = || QueryError::NotFound {
        resource: "order",
        id: order_id.to_string(),
    };
    let served = reads::document(&caches.orders, &router, read, |db| async move {
        reads::as_document(read_model::order_summary(&db, order_id).await?, |s| {
            s.version
        })
    })
    .await?
    .ok_or_else(not_found)?;
    if !visible_to(&principal, &served.value) {
        return Err(not_found());
    }
    metrics.read("orders", &served.from);
    Ok(conditional::respond_document(
        &request,
        served,
        PRIVATE_REVALIDATE,
    ))
}

/// Object-level authorization: a customer token sees only its own orders.
/// Another customer's order is answered 404, as if it did not exist, so
/// probing ids reveals nothing. Only customer tokens pay for reading the
/// owner out of the cached body.
fn visible_to(principal: &Principal, document: &Document) -> bool {
    #[derive(serde::Deserialize)]
    struct Owner {
        customer_id: Uuid,
    }
    match principal.customer_id {
        None => true,
        Some(customer) => serde_json::from_slice::<Owner>(&document.body)
            .is_ok_and(|owner| owner.customer_id == customer),
    }
}
