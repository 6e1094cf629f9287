//! `GET /reports/daily-sales`: units and revenue per product per day.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::conditional::{self, PRIVATE_REVALIDATE};
use crate::consistency::Requirement;
use crate::error::QueryError;
use crate::metrics::Metrics;
use crate::params::DateRange;
use crate::read_model::{self, DailySales};
use crate::reads;
use crate::replicas::{ReadRouter, Served};

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
    request: HttpRequest,
    query: web::Query<DailySalesQuery>,
    router: web::Data<ReadRouter>,
    metrics: web::Data<Metrics>,
) -> Result<HttpResponse, QueryError> {
    let range = DateRange::new(query.from, query.to)?;
    let product_id = query.product_id;
    let requirement = Requirement::from_request(&request)?;
    let served = reads::uncached(&router, requirement, |pool| async move {
        read_model::daily_sales(&pool, range, product_id).await
    })
    .await?;
    metrics.read("daily_sales", &served.from);
    let body = conditional::json_body(&DailySalesReport {
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
