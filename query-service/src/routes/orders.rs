//! `GET /orders/{id}`: Redis first, the replica on a miss.

use actix_web::{web, HttpResponse};
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
/// `replica`; 404 if neither has it.
pub async fn get_order(
    path: web::Path<Uuid>,
    cache: web::Data<OrderCache>,
    pool: web::Data<PgPool>,
) -> Result<HttpResponse, QueryError> {
    let order_id = path.into_inner();
    let (summary, source) = find_order(&cache, &pool, order_id).await?;
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
) -> Result<(OrderSummary, ReadSource), QueryError> {
    if let Some(summary) = cache.order_summary(order_id).await {
        return Ok((summary, ReadSource::Redis));
    }
    read_model::order_summary(pool, order_id)
        .await?
        .map(|summary| (summary, ReadSource::Replica))
        .ok_or_else(|| QueryError::NotFound {
            resource: "order",
            id: order_id.to_string(),
        })
}
