//! `GET /reports/daily-sales`: units and revenue per product per day, a page
//! at a time.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::conditional::{self, PRIVATE_REVALIDATE};
use crate::consistency::Requirement;
use crate::error::QueryError;
use crate::metrics::Metrics;
use crate::openapi::PROBLEM_JSON;
use crate::params::{page_limit, paginate, Cursor, DailySalesCursor, DateRange};
use crate::read_model::{self, DailySales};
use crate::reads;
use crate::replicas::ReadRouter;

/// Default number of rows of one page.
pub const DEFAULT_LIMIT: u32 = 500;
/// Most rows one page holds.
pub const MAX_LIMIT: u32 = 1000;

/// Query string: `from` and `to` are required `YYYY-MM-DD` dates (UTC days),
/// both included.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DailySalesQuery {
    // Optional in Rust so that a missing date is reported by name, as a
    // range error; required for clients.
    /// First UTC day of the report, included.
    #[param(value_type = NaiveDate, required = true)]
    pub from: Option<NaiveDate>,
    /// Last UTC day of the report, included: not before `from`, at most 366
    /// days in all.
    #[param(value_type = NaiveDate, required = true)]
    pub to: Option<NaiveDate>,
    /// Only this product's rows.
    #[param(value_type = Uuid, required = false)]
    pub product_id: Option<Uuid>,
    /// Page size (default 500).
    #[param(value_type = u32, required = false, minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    // An opaque `DailySalesCursor`.
    /// The `next_after` of the previous page, passed as is (an opaque
    /// cursor); anything else is 400.
    #[param(
        value_type = String,
        required = false,
        min_length = 1,
        max_length = 256,
        pattern = "^[A-Za-z0-9_-]+$"
    )]
    pub after: Option<String>,
}

/// One page of the daily sales report.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DailySalesReport {
    /// First day of the report, included.
    pub from: NaiveDate,
    /// Last day of the report, included.
    pub to: NaiveDate,
    /// In `day`, `product_id`, `currency` order.
    #[schema(value_type = Vec<crate::openapi::DailySales>)]
    pub items: Vec<DailySales>,
    /// Pass as `after` (with the same `from`, `to` and `product_id`) to get
    /// the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_after: Option<String>,
}

/// Reports daily sales
///
/// Rows of the days `from..=to` (at most 366), optionally of one product,
/// that sort after the `after` cursor, ordered by day, product_id, currency
/// (keyset pagination), at most `limit` (default 500, at most 1000). Units
/// and revenue are net of cancellations, so a day can be negative. As with
/// the order history, a cursor before `from` excludes nothing and one after
/// `to` gives an empty last page.
#[utoipa::path(
    get,
    path = "/reports/daily-sales",
    operation_id = "dailySales",
    tag = "reports",
    params(DailySalesQuery, super::ListReadHeaders),
    responses(
        (status = 200, description = "One page of the report.", body = DailySalesReport,
            headers(("ETag"), ("Cache-Control"), ("x-read-source"))),
        (status = 304, description = super::NOT_MODIFIED,
            headers(("ETag"), ("Cache-Control"), ("x-read-source"))),
        (status = 400, description = "`from` or `to` missing or not a `YYYY-MM-DD` date, \
`product_id` not a UUID or `limit` not an integer (`/problems/invalid-query`); `from` after \
`to` or more than 366 days (`/problems/invalid-range`); `limit` outside 1 to 1000 or an \
`after` that is not a cursor of this report (`/problems/invalid-query`); or a \
`consistency-token` that is not a token of this system \
(`/problems/invalid-consistency-token`).", body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
    )
)]
pub async fn daily_sales(
    request: HttpRequest,
    query: web::Query<DailySalesQuery>,
    router: web::Data<ReadRouter>,
    metrics: web::Data<Metrics>,
) -> Result<HttpResponse, QueryError> {
    let range = DateRange::new(query.from, query.to)?;
    let product_id = query.product_id;
    let limit = page_limit(query.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = DailySalesCursor::from_param(query.after.as_deref())?;
    let after = after.as_ref();
    let requirement = Requirement::from_request(&request)?;
    // One row more than asked tells whether another page exists.
    let served = reads::uncached(&router, requirement, |db| async move {
        read_model::daily_sales(&db, range, product_id, after, limit + 1).await
    })
    .await?;
    metrics.read("daily_sales", &served.from);
    let report = served.map(|rows| {
        let (items, next_after) = paginate(rows, limit, |row| cursor_of(row).encode());
        DailySalesReport {
            from: range.from,
            to: range.to,
            items,
            next_after,
        }
    });
    conditional::respond_list(&request, report, PRIVATE_REVALIDATE)
}

fn cursor_of(row: &DailySales) -> DailySalesCursor {
    DailySalesCursor {
        day: row.day,
        product_id: row.product_id,
        currency: row.currency.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: u32) -> DailySales {
        DailySales {
            day: NaiveDate::from_ymd_opt(2026, 1, n).expect("day"),
            product_id: Uuid::from_u128(u128::from(n)),
            currency: "EUR".to_owned(),
            units: 1,
            revenue_minor: 100,
        }
    }

    #[test]
    fn next_after_is_the_key_of_the_last_row_when_more_rows_exist() {
        let (items, next_after) =
            paginate((1..=3).map(row).collect(), 2, |row| cursor_of(row).encode());
        assert_eq!(items, vec![row(1), row(2)]);
        let cursor = next_after
            .as_deref()
            .map(DailySalesCursor::decode)
            .transpose()
            .expect("cursor");
        assert_eq!(cursor, Some(cursor_of(&row(2))));
    }

    #[test]
    fn the_report_body_names_next_after() {
        let (items, next_after) =
            paginate((1..=2).map(row).collect(), 1, |row| cursor_of(row).encode());
        let body = DailySalesReport {
            from: row(1).day,
            to: row(2).day,
            items,
            next_after,
        };
        let json = serde_json::to_value(&body).expect("json");
        assert_eq!(json["items"].as_array().map(Vec::len), Some(1));
        assert_eq!(json["next_after"], cursor_of(&row(1)).encode());
    }
}
