//! `GET /customers/{id}/orders`: a customer's order history in a time range.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::conditional::{self, PRIVATE_REVALIDATE};
use crate::consistency::Requirement;
use crate::error::QueryError;
use crate::metrics::Metrics;
use crate::params::{page_limit, TimeRange};
use crate::read_model::{self, OrderHistoryItem};
use crate::reads;
use crate::replicas::{ReadRouter, Served};

/// Default number of history entries returned.
pub const DEFAULT_LIMIT: u32 = 500;
/// Most history entries one request returns.
pub const MAX_LIMIT: u32 = 1000;

/// Query string. Timestamps are RFC 3339; a `+` in an offset must be
/// percent-encoded (`%2B`), as in any query string.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: Option<u32>,
}

/// Response body.
#[derive(Debug, Serialize)]
pub struct HistoryResponse {
    pub customer_id: Uuid,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub items: Vec<OrderHistoryItem>,
}

/// Entries with `from <= occurred_at < to`, ordered by occurred_at, order_id,
/// version. A customer without history (or unknown) gets an empty list: a
/// customer id is not an aggregate of this system.
pub async fn list_orders(
    request: HttpRequest,
    path: web::Path<Uuid>,
    query: web::Query<HistoryQuery>,
    router: web::Data<ReadRouter>,
    metrics: web::Data<Metrics>,
) -> Result<HttpResponse, QueryError> {
    let customer_id = path.into_inner();
    // Postgres keeps microseconds; echoing finer defaults would name bounds
    // the query did not use.
    let now = Utc::now().trunc_subsecs(6);
    let range = TimeRange::resolve(query.from, query.to, now)?;
    let limit = page_limit(query.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let requirement = Requirement::from_request(&request)?;
    let served = reads::uncached(&router, requirement, |pool| async move {
        read_model::customer_order_history(&pool, customer_id, range, limit).await
    })
    .await?;
    metrics.read("customer_orders", &served.from);
    let body = conditional::json_body(&HistoryResponse {
        customer_id,
        from: range.from,
        to: range.to,
        items: served.value,
    })?;
    let etag = conditional::body_etag(&body);
    let served = Served {
        value: body,
        from: served.from,
    };
    Ok(conditional::respond(
        &request,
        served,
        &etag,
        PRIVATE_REVALIDATE,
    ))
}
