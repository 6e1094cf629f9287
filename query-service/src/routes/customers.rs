//! `GET /customers/{id}/orders`: a customer's order history in a time range,
//! a page at a time.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::conditional::{self, PRIVATE_REVALIDATE};
use crate::consistency::Requirement;
use crate::error::QueryError;
use crate::metrics::Metrics;
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
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: Option<u32>,
    /// The `next_after` of the previous page (opaque; see [`HistoryCursor`]).
    pub after: Option<String>,
}

/// Response body.
#[derive(Debug, Serialize)]
pub struct HistoryResponse {
    pub customer_id: Uuid,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub items: Vec<OrderHistoryItem>,
    /// Pass as `after` (with the same `from` and `to`) to get the next page;
    /// `null` on the last page.
    pub next_after: Option<String>,
}

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
    let after = HistoryCursor::from_param(query.after.as_deref())?;
    let requirement = Requirement::from_request(&request)?;
    // One row more than asked tells whether another page exists.
    let served = reads::uncached(&router, requirement, |pool| async move {
        read_model::customer_order_history(&pool, customer_id, range, after, limit + 1).await
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
