//! `GET /orders/{id}`: Redis first, the replica on a miss.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use schema::views::OrderSummary;
use sqlx::PgPool;
use uuid::Uuid;

use crate::cache::OrderCache;
use crate::error::QueryError;
use crate::read_model;

/// Response header naming where the document came from.
pub const READ_SOURCE_HEADER: &str = "x-read-source";

/// Where an order summary was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSource {
    Redis,
    Replica,
}

impl ReadSource {
    /// The value of the `x-read-source` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Replica => "replica",
        }
    }
}

/// The [`OrderSummary`] of an order, with header `x-read-source: redis` or
/// `replica`; 404 if neither has it. `Cache-Control: no-cache` skips Redis
/// (RFC 9111: the client does not want a stored copy it cannot validate).
pub async fn get_order(
    request: HttpRequest,
    path: web::Path<Uuid>,
    cache: web::Data<OrderCache>,
    pool: web::Data<PgPool>,
) -> Result<HttpResponse, QueryError> {
    let order_id = path.into_inner();
    let use_cache = !wants_no_cache(&request);
    let (summary, source) = find_order(&cache, &pool, order_id, use_cache).await?;
    Ok(HttpResponse::Ok()
        .insert_header((READ_SOURCE_HEADER, source.as_str()))
        .json(summary))
}

/// Redis never turns into an error here: [`OrderCache::order_summary`] reports
/// its failures as misses.
async fn find_order(
    cache: &OrderCache,
    pool: &PgPool,
    order_id: Uuid,
    use_cache: bool,
) -> Result<(OrderSummary, ReadSource), QueryError> {
    if use_cache {
        if let Some(summary) = cache.order_summary(order_id).await {
            return Ok((summary, ReadSource::Redis));
        }
    }
    read_model::order_summary(pool, order_id)
        .await?
        .map(|summary| (summary, ReadSource::Replica))
        .ok_or_else(|| QueryError::NotFound {
            resource: "order",
            id: order_id.to_string(),
        })
}

/// True if the request carries `Cache-Control: no-cache` (or `no-store`).
fn wants_no_cache(request: &HttpRequest) -> bool {
    request
        .headers()
        .get_all(header::CACHE_CONTROL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| {
            matches!(
                d.trim().to_ascii_lowercase().as_str(),
                "no-cache" | "no-store"
            )
        })
}
