//! `GET /reports/daily-sales`: units and revenue per product per day.

use actix_web::{web, HttpResponse};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::QueryError;
use crate::params::DateRange;
use crate::read_model::{self, DailySales};

/// Query string: `from` and `to` are required `YYYY-MM-DD` dates (UTC days),
/// both included.
#[derive(Debug, Deserialize)]
pub struct DailySalesQuery {
    /// Optional so that a missing date is reported by name, as a range error.
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub product_id: Option<Uuid>,
}

/// Response body.
#[derive(Debug, Serialize)]
pub struct DailySalesReport {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub items: Vec<DailySales>,
}

/// Rows of the days `from..=to` (at most 366), optionally of one product,
/// ordered by day, product_id.
pub async fn daily_sales(
    query: web::Query<DailySalesQuery>,
    pool: web::Data<PgPool>,
) -> Result<HttpResponse, QueryError> {
    let range = DateRange::new(query.from, query.to)?;
    let items = read_model::daily_sales(&pool, range, query.product_id).await?;
    Ok(HttpResponse::Ok().json(DailySalesReport {
        from: range.from,
        to: range.to,
        items,
    }))
}
