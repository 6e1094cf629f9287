//! `GET /customers/{id}/orders`: a customer's order history in a time range,
//! a page at a time.

use access_control::Principal;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::conditional::{self, PRIVATE_REVALIDATE};
use crate::consistency::Requirement;
use crate::error::QueryError;
use crate::metrics::Metrics;
use crate::openapi::PROBLEM_JSON;
use crate::params::{page_limit, paginate, Cursor, HistoryCursor, TimeRange};
use crate::read_model::{self, OrderHistoryItem};
use crate::reads;
use crate::replicas::ReadRouter;

/// Default number of history entries returned.
pub const DEFAULT_LIMIT: u32 = 500;
/// Most history entries one request returns.
pub const MAX_LIMIT: u32 = 1000;

/// Query string. Timestamps are RFC 3339; a `+` in an offset must be
/// percent-encoded (`%2B`), as in any query string.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Start of the range, included (default: `to` minus 90 days).
    #[param(value_type = DateTime<Utc>, required = false)]
    pub from: Option<DateTime<Utc>>,
    /// End of the range, excluded (default: one day from now). After `from`,
    /// at most 366 days later.
    #[param(value_type = DateTime<Utc>, required = false)]
    pub to: Option<DateTime<Utc>>,
    /// Page size (default 500).
    #[param(value_type = u32, required = false, minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    // An opaque `HistoryCursor`.
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

/// One page of a customer's order history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryResponse {
    pub customer_id: Uuid,
    /// The range's start as used (the default filled in), included.
    pub from: DateTime<Utc>,
    /// The range's end as used (the default filled in), excluded.
    pub to: DateTime<Utc>,
    /// In `occurred_at`, `order_id`, `version` order.
    #[schema(value_type = Vec<crate::openapi::OrderHistoryItem>)]
    pub items: Vec<OrderHistoryItem>,
    /// Pass as `after` (with the same `from` and `to`) to get the next page;
    /// `null` on the last page.
    #[schema(required = true)]
    pub next_after: Option<String>,
}

/// Lists a customer's order history
///
/// Entries with `from <= occurred_at < to` that sort after the `after`
/// cursor, ordered by occurred_at, order_id, version (keyset pagination). A
/// customer without history (or unknown) gets an empty list: a customer id is
/// not an aggregate of this system.
///
/// A cursor is a position in the sort order, not tied to one range: one
/// before `from` excludes nothing, one at or after `to` gives an empty last
/// page. So a client paging with the default range (which moves with the
/// clock) is never refused, only served the rows of the range it asked for
/// now. Clients that want a stable walk pass explicit `from` and `to`.
#[utoipa::path(
    get,
    path = "/customers/{id}/orders",
    operation_id = "listCustomerOrders",
    tag = "customers",
    params(
        ("id" = Uuid, Path, description = "The customer."),
        HistoryQuery,
        super::ListReadHeaders
    ),
    responses(
        (status = 200, description = "One page of the history; an empty one for a customer \
without orders in the range (or unknown).", body = HistoryResponse,
            headers(("ETag"), ("Cache-Control"), ("x-read-source"))),
        (status = 304, description = super::NOT_MODIFIED,
            headers(("ETag"), ("Cache-Control"), ("x-read-source"))),
        (status = 400, description = "An id that is not a UUID (`/problems/invalid-path`); \
`from` or `to` not an RFC 3339 timestamp, or `limit` not an integer \
(`/problems/invalid-query`); `from` not before `to` or more than 366 days apart \
(`/problems/invalid-range`); `limit` outside 1 to 1000 or an `after` that is not a cursor \
of this list (`/problems/invalid-query`); or a `consistency-token` that is not a token of \
this system (`/problems/invalid-consistency-token`).", body = crate::openapi::Problem,
            content_type = PROBLEM_JSON),
    )
)]
pub async fn list_orders(
    request: HttpRequest,
    principal: Principal,
    path: web::Path<Uuid>,
    query: web::Query<HistoryQuery>,
    router: web::Data<ReadRouter>,
    metrics: web::Data<Metrics>,
) -> Result<HttpResponse, QueryError> {
    let customer_id = path.into_inner();
    if !principal.may_access_customer(customer_id) {
        return Err(QueryError::ForbiddenCustomer);
    }
    // Postgres keeps microseconds; echoing finer defaults would name bounds
    // the query did not use.
    let now = Utc::now().trunc_subsecs(6);
    let range = TimeRange::resolve(query.from, query.to, now)?;
    let limit = page_limit(query.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = HistoryCursor::from_param(query.after.as_deref())?;
    let requirement = Requirement::from_request(&request)?;
    // One row more than asked tells whether another page exists.
    let served = reads::uncached(&router, requirement, |db| async move {
        read_model::customer_order_history(&db, customer_id, range, after, limit + 1).await
    })
    .await?;
    metrics.read("customer_orders", &served.from);
    let page = served.map(|rows| {
        let (items, next_after) = paginate(rows, limit, |row| cursor_of(row).encode());
        HistoryResponse {
            customer_id,
            from: range.from,
            to: range.to,
            items,
            next_after,
        }
    });
    conditional::respond_list(&request, page, PRIVATE_REVALIDATE)
}

fn cursor_of(item: &OrderHistoryItem) -> HistoryCursor {
    HistoryCursor {
        occurred_at: item.occurred_at,
        order_id: item.order_id,
        version: item.version,
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use schema::money::{Currency, Money};

    use super::*;

    fn item(n: i64) -> OrderHistoryItem {
        let start = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.000001Z")
            .expect("timestamp")
            .with_timezone(&Utc);
        OrderHistoryItem {
            occurred_at: start + TimeDelta::seconds(n),
            order_id: Uuid::from_u128(n.unsigned_abs().into()),
            version: n,
            kind: "OrderPlaced".to_owned(),
            amount: Money::new(100, Currency::try_from("EUR").expect("currency")),
        }
    }

    #[test]
    fn next_after_is_the_key_of_the_last_item_when_more_rows_exist() {
        let (items, next_after) = paginate((1..=3).map(item).collect(), 2, |row| {
            cursor_of(row).encode()
        });
        assert_eq!(items, vec![item(1), item(2)]);
        let cursor = next_after
            .as_deref()
            .map(HistoryCursor::decode)
            .transpose()
            .expect("cursor");
        assert_eq!(cursor, Some(cursor_of(&item(2))));
    }

    #[test]
    fn the_page_body_names_next_after() {
        let (items, next_after) = paginate((1..=2).map(item).collect(), 1, |row| {
            cursor_of(row).encode()
        });
        let body = HistoryResponse {
            customer_id: Uuid::nil(),
            from: item(0).occurred_at,
            to: item(9).occurred_at,
            items,
            next_after,
        };
        let json = serde_json::to_value(&body).expect("json");
        assert_eq!(json["items"].as_array().map(Vec::len), Some(1));
        assert_eq!(json["next_after"], cursor_of(&item(1)).encode());
    }
}
