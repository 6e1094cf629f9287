//! Every SQL statement query-service runs, one function per query, all
//! checked against the schema at compile time by `sqlx::query_as!`.
//!
//! The pool behind these functions is a read replica or, as a fallback,
//! the primary (see `replicas`), possibly behind PgBouncer in transaction
//! mode: each function runs its statement on [`DbPool::acquire`] and
//! finishes it, so the statement is one transaction there and a plain
//! pooled connection otherwise. The rows are written by the projector; a
//! row that does not decode is reported as
//! [`QueryError::CorruptReadModel`] rather than served half-valid.

use chrono::{DateTime, NaiveDate, Utc};
use schema::money::{Currency, Money};
use schema::views::{OrderStatus, OrderSummary, OrderSummaryLine};
use serde::Serialize;
use service_runtime::postgres::DbPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::error::QueryError;
use crate::params::{DailySalesCursor, DateRange, HistoryCursor, TimeRange};

/// One entry of a customer's order history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderHistoryItem {
    pub occurred_at: DateTime<Utc>,
    pub order_id: Uuid,
    /// Version of the order this event produced.
    pub version: i64,
    /// The event kind, as the projector recorded it.
    pub kind: String,
    /// The order total after this event.
    pub amount: Money,
}

/// A product of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Product {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub price: Money,
    pub discontinued: bool,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

/// Units and revenue of one product on one UTC day, in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DailySales {
    pub day: NaiveDate,
    pub product_id: Uuid,
    pub currency: String,
    pub units: i64,
    pub revenue_minor: i64,
}

/// The version of an order in the read model (`None` if not projected yet).
pub async fn order_version(db: &DbPool, order_id: Uuid) -> Result<Option<i64>, QueryError> {
    let mut connection = db.acquire().await?;
    let version = sqlx::query_scalar!(
        "SELECT version FROM order_summary WHERE order_id = $1",
        order_id
    )
    .fetch_optional(&mut *connection)
    .await?;
    connection.finish().await?;
    Ok(version)
}

/// The version of a product in the read model (`None` if not projected yet).
pub async fn product_version(db: &DbPool, product_id: Uuid) -> Result<Option<i64>, QueryError> {
    let mut connection = db.acquire().await?;
    let version = sqlx::query_scalar!(
        "SELECT version FROM product_catalog WHERE product_id = $1",
        product_id
    )
    .fetch_optional(&mut *connection)
    .await?;
    connection.finish().await?;
    Ok(version)
}

/// The `order_summary` row of an order, as the same document Redis holds.
pub async fn order_summary(
    db: &DbPool,
    order_id: Uuid,
) -> Result<Option<OrderSummary>, QueryError> {
    let mut connection = db.acquire().await?;
    let row = sqlx::query_as!(
        OrderSummaryRow,
        r#"
        SELECT order_id, customer_id, status,
               lines AS "lines: Json<Vec<OrderSummaryLine>>",
               total_minor, currency, placed_at, updated_at, version
        FROM order_summary
        WHERE order_id = $1
        "#,
        order_id
    )
    .fetch_optional(&mut *connection)
    .await?;
    connection.finish().await?;
    row.map(OrderSummary::try_from).transpose()
}

/// A customer's order events in `[range.from, range.to)` that sort after
/// `after` (all of them when `None`), oldest first, at most `limit`: keyset
/// pagination on (occurred_at, order_id, version), the primary key after
/// `customer_id`.
///
/// `customer_order_history` is range-partitioned by month on `occurred_at`.
/// The WHERE clause compares the bare `occurred_at` column with `>= $2` and
/// `< $3` on purpose: Postgres prunes partitions only when the partition key
/// itself is constrained, so wrapping the column in a function or cast (e.g.
/// `date_trunc`, `occurred_at::date`) would make every query scan every month.
/// With a cursor, `$2` is the cursor's `occurred_at` (the range's `from` when
/// that is later), so the months before the cursor are pruned too; the row
/// comparison then skips the rows of that instant up to the cursor.
pub async fn customer_order_history(
    db: &DbPool,
    customer_id: Uuid,
    range: TimeRange,
    after: Option<HistoryCursor>,
    limit: i64,
) -> Result<Vec<OrderHistoryItem>, QueryError> {
    // A cursor before the range excludes no row of it.
    let after = after.filter(|cursor| cursor.occurred_at >= range.from);
    let mut connection = db.acquire().await?;
    // Two statements rather than one with `$4 IS NULL OR ...`: each shape gets
    // a plan that uses the primary key's range (as in `products_after`).
    let rows = match after {
        Some(after) => {
            sqlx::query_as!(
                OrderHistoryRow,
                r#"
                SELECT occurred_at, order_id, version, kind, amount_minor, currency
                FROM customer_order_history
                WHERE customer_id = $1
                  AND occurred_at >= $2
                  AND occurred_at < $3
                  AND (occurred_at, order_id, version) > ($2, $4, $5)
                ORDER BY occurred_at, order_id, version
                LIMIT $6
                "#,
                customer_id,
                after.occurred_at,
                range.to,
                after.order_id,
                after.version,
                limit
            )
            .fetch_all(&mut *connection)
            .await?
        }
        None => {
            sqlx::query_as!(
                OrderHistoryRow,
                r#"
                SELECT occurred_at, order_id, version, kind, amount_minor, currency
                FROM customer_order_history
                WHERE customer_id = $1
                  AND occurred_at >= $2
                  AND occurred_at < $3
                ORDER BY occurred_at, order_id, version
                LIMIT $4
                "#,
                customer_id,
                range.from,
                range.to,
                limit
            )
            .fetch_all(&mut *connection)
            .await?
        }
    };
    connection.finish().await?;
    rows.into_iter().map(OrderHistoryItem::try_from).collect()
}

/// One product of the catalog.
pub async fn product(db: &DbPool, product_id: Uuid) -> Result<Option<Product>, QueryError> {
    let mut connection = db.acquire().await?;
    let row = sqlx::query_as!(
        ProductRow,
        r#"
        SELECT product_id, sku, name, price_minor, currency, discontinued, version, updated_at
        FROM product_catalog
        WHERE product_id = $1
        "#,
        product_id
    )
    .fetch_optional(&mut *connection)
    .await?;
    connection.finish().await?;
    row.map(Product::try_from).transpose()
}

/// Up to `limit` products with an id greater than `after` (all products when
/// `None`), in product_id order: keyset pagination on the primary key.
pub async fn products_after(
    db: &DbPool,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Product>, QueryError> {
    let mut connection = db.acquire().await?;
    // Two statements rather than `($1 IS NULL OR product_id > $1)`: the OR
    // form hides the index range from the planner of a prepared statement.
    let rows = match after {
        Some(after) => {
            sqlx::query_as!(
                ProductRow,
                r#"
                SELECT product_id, sku, name, price_minor, currency, discontinued, version, updated_at
                FROM product_catalog
                WHERE product_id > $1
                ORDER BY product_id
                LIMIT $2
                "#,
                after,
                limit
            )
            .fetch_all(&mut *connection)
            .await?
        }
        None => {
            sqlx::query_as!(
                ProductRow,
                r#"
                SELECT product_id, sku, name, price_minor, currency, discontinued, version, updated_at
                FROM product_catalog
                ORDER BY product_id
                LIMIT $1
                "#,
                limit
            )
            .fetch_all(&mut *connection)
            .await?
        }
    };
    connection.finish().await?;
    rows.into_iter().map(Product::try_from).collect()
}

/// `daily_sales` rows of the days in `range` (both ends included) that sort
/// after `after` (all of them when `None`), optionally of one product,
/// ordered by day, product_id, currency (the primary key, so the order is
/// total and the row comparison is an index range), at most `limit`.
///
/// The product filter stays `$3::uuid IS NULL OR product_id = $3`: no index
/// leads with product_id, so it is a filter on the primary key's range
/// either way and the OR form costs the plan nothing.
pub async fn daily_sales(
    db: &DbPool,
    range: DateRange,
    product_id: Option<Uuid>,
    after: Option<&DailySalesCursor>,
    limit: i64,
) -> Result<Vec<DailySales>, QueryError> {
    // A cursor before the range excludes no row of it.
    let after = after.filter(|cursor| cursor.day >= range.from);
    let mut connection = db.acquire().await?;
    let rows = match after {
        Some(after) => {
            sqlx::query_as!(
                DailySales,
                r#"
                SELECT day, product_id, currency, units, revenue_minor
                FROM daily_sales
                WHERE day >= $1
                  AND day <= $2
                  AND (day, product_id, currency) > ($1, $4, $5)
                  AND ($3::uuid IS NULL OR product_id = $3)
                ORDER BY day, product_id, currency
                LIMIT $6
                "#,
                after.day,
                range.to,
                product_id,
                after.product_id,
                after.currency,
                limit
            )
            .fetch_all(&mut *connection)
            .await?
        }
        None => {
            sqlx::query_as!(
                DailySales,
                r#"
                SELECT day, product_id, currency, units, revenue_minor
                FROM daily_sales
                WHERE day >= $1
                  AND day <= $2
                  AND ($3::uuid IS NULL OR product_id = $3)
                ORDER BY day, product_id, currency
                LIMIT $4
                "#,
                range.from,
                range.to,
                product_id,
                limit
            )
            .fetch_all(&mut *connection)
            .await?
        }
    };
    connection.finish().await?;
    Ok(rows)
}

/// An `order_summary` row as stored.
#[derive(Debug)]
struct OrderSummaryRow {
    order_id: Uuid,
    customer_id: Uuid,
    status: String,
    lines: Json<Vec<OrderSummaryLine>>,
    total_minor: i64,
    currency: String,
    placed_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
}

impl TryFrom<OrderSummaryRow> for OrderSummary {
    type Error = QueryError;

    fn try_from(row: OrderSummaryRow) -> Result<Self, Self::Error> {
        let status: OrderStatus = row.status.parse().map_err(|reason| {
            QueryError::CorruptReadModel(format!("order_summary {}: {reason}", row.order_id))
        })?;
        Ok(Self {
            order_id: row.order_id,
            customer_id: row.customer_id,
            status,
            lines: row.lines.0,
            total: money(row.total_minor, row.currency, "order_summary", row.order_id)?,
            placed_at: row.placed_at,
            updated_at: row.updated_at,
            version: row.version,
        })
    }
}

#[derive(Debug)]
struct OrderHistoryRow {
    occurred_at: DateTime<Utc>,
    order_id: Uuid,
    version: i64,
    kind: String,
    amount_minor: i64,
    currency: String,
}

impl TryFrom<OrderHistoryRow> for OrderHistoryItem {
    type Error = QueryError;

    fn try_from(row: OrderHistoryRow) -> Result<Self, Self::Error> {
        Ok(Self {
            amount: money(
                row.amount_minor,
                row.currency,
                "customer_order_history",
                row.order_id,
            )?,
            occurred_at: row.occurred_at,
            order_id: row.order_id,
            version: row.version,
            kind: row.kind,
        })
    }
}

#[derive(Debug)]
struct ProductRow {
    product_id: Uuid,
    sku: String,
    name: String,
    price_minor: i64,
    currency: String,
    discontinued: bool,
    version: i64,
    updated_at: DateTime<Utc>,
}

impl TryFrom<ProductRow> for Product {
    type Error = QueryError;

    fn try_from(row: ProductRow) -> Result<Self, Self::Error> {
        Ok(Self {
            price: money(
                row.price_minor,
                row.currency,
                "product_catalog",
                row.product_id,
            )?,
            product_id: row.product_id,
            sku: row.sku,
            name: row.name,
            discontinued: row.discontinued,
            version: row.version,
            updated_at: row.updated_at,
        })
    }
}

fn money(amount_minor: i64, currency: String, table: &str, id: Uuid) -> Result<Money, QueryError> {
    let currency = Currency::try_from(currency)
        .map_err(|e| QueryError::CorruptReadModel(format!("{table} {id}: {e}")))?;
    Ok(Money::new(amount_minor, currency))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order_row(status: &str, currency: &str) -> OrderSummaryRow {
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .expect("timestamp")
            .with_timezone(&Utc);
        OrderSummaryRow {
            order_id: Uuid::nil(),
            customer_id: Uuid::max(),
            status: status.to_owned(),
            lines: Json(vec![]),
            total_minor: 1234,
            currency: currency.to_owned(),
            placed_at: at,
            updated_at: at,
            version: 3,
        }
    }

    #[test]
    fn order_summary_row_becomes_the_shared_document() {
        let summary = OrderSummary::try_from(order_row("confirmed", "EUR")).expect("summary");
        assert_eq!(summary.status, OrderStatus::Confirmed);
        assert_eq!(summary.total.amount_minor, 1234);
        assert_eq!(summary.total.currency.as_str(), "EUR");
        assert_eq!(summary.version, 3);
    }

    #[test]
    fn undecodable_rows_are_corrupt_not_client_errors() {
        for row in [order_row("lost", "EUR"), order_row("placed", "eur")] {
            assert!(matches!(
                OrderSummary::try_from(row),
                Err(QueryError::CorruptReadModel(_))
            ));
        }
    }
}
