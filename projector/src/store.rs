//! Applies a batch of events to the Postgres read models in one transaction.
//!
//! Idempotency: every aggregate's row keeps the sequence of the last event it
//! reflects (`version`). An event whose sequence is not newer is skipped; one
//! that is more than one ahead means an event is missing, which is an error
//! (the batch is retried) rather than a silently wrong read model.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schema::envelope::{AnyEvent, EventHeaders};
use schema::money::Currency;
use schema::order::OrderEvent;
use schema::product::ProductEvent;
use schema::views::{OrderStatus, OrderSummary};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::order_summary::{self, FoldError};

/// One decoded message of the stream.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    pub headers: EventHeaders,
    pub event: AnyEvent,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("aggregate id {0:?} is not a UUID")]
    BadAggregateId(String),
    #[error("{aggregate_type} {id}: event {sequence} arrived but the read model is at {current}; an event is missing")]
    Gap {
        aggregate_type: &'static str,
        id: Uuid,
        sequence: i64,
        current: i64,
    },
    #[error("order {id}: {source}")]
    Fold {
        id: Uuid,
        #[source]
        source: FoldError,
    },
    #[error("stored order summary of {id} is unreadable: {reason}")]
    StoredSummary { id: Uuid, reason: String },
}

/// What to do with an event given the read model's current version.
fn decide(
    aggregate_type: &'static str,
    id: Uuid,
    current: i64,
    sequence: i64,
) -> Result<bool, ApplyError> {
    if sequence <= current {
        Ok(false)
    } else if sequence == current + 1 {
        Ok(true)
    } else {
        Err(ApplyError::Gap {
            aggregate_type,
            id,
            sequence,
            current,
        })
    }
}

/// Applies `events` (in stream order) in one transaction and returns the
/// order summaries as committed, for every order the batch touched, applied
/// or skipped: Redis is brought up to them, so a replay also repairs Redis.
pub async fn apply_batch(
    pool: &PgPool,
    events: &[StreamEvent],
) -> Result<Vec<OrderSummary>, ApplyError> {
    let mut tx = pool.begin().await?;
    let mut touched: BTreeMap<Uuid, OrderSummary> = BTreeMap::new();
    for StreamEvent { headers, event } in events {
        let id = Uuid::parse_str(&headers.aggregate_id)
            .map_err(|_| ApplyError::BadAggregateId(headers.aggregate_id.clone()))?;
        match event {
            AnyEvent::Product(event) => apply_product(&mut tx, id, headers, event).await?,
            AnyEvent::Order(event) => {
                if let Some(summary) = apply_order(&mut tx, id, headers, event).await? {
                    touched.insert(id, summary);
                }
            }
        }
    }
    tx.commit().await?;
    Ok(touched.into_values().collect())
}

async fn apply_product(
    conn: &mut PgConnection,
    id: Uuid,
    headers: &EventHeaders,
    event: &ProductEvent,
) -> Result<(), ApplyError> {
    let current = sqlx::query_scalar!(
        "SELECT version FROM product_catalog WHERE product_id = $1 FOR UPDATE",
        id
    )
    .fetch_optional(&mut *conn)
    .await?
    .unwrap_or(0);
    if !decide("Product", id, current, headers.sequence)? {
        return Ok(());
    }
    let (seq, at) = (headers.sequence, headers.occurred_at);
    match event {
        ProductEvent::ProductCreated { sku, name, price } => {
            sqlx::query!(
                r#"INSERT INTO product_catalog
                       (product_id, sku, name, price_minor, currency, discontinued, version, updated_at)
                   VALUES ($1, $2, $3, $4, $5, false, $6, $7)"#,
                id,
                sku,
                name,
                price.amount_minor,
                price.currency.as_str(),
                seq,
                at
            )
            .execute(&mut *conn)
            .await?;
        }
        ProductEvent::ProductRenamed { name } => {
            sqlx::query!(
                "UPDATE product_catalog SET name = $2, version = $3, updated_at = $4 WHERE product_id = $1",
                id, name, seq, at
            )
            .execute(&mut *conn)
            .await?;
        }
        ProductEvent::ProductPriceChanged { price } => {
            sqlx::query!(
                r#"UPDATE product_catalog
                      SET price_minor = $2, currency = $3, version = $4, updated_at = $5
                    WHERE product_id = $1"#,
                id,
                price.amount_minor,
                price.currency.as_str(),
                seq,
                at
            )
            .execute(&mut *conn)
            .await?;
        }
        ProductEvent::ProductDiscontinued {} => {
            sqlx::query!(
                "UPDATE product_catalog SET discontinued = true, version = $2, updated_at = $3 WHERE product_id = $1",
                id, seq, at
            )
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// Applies one order event; returns the summary as it now stands (None only
/// if the order does not exist and the event was skipped, which cannot happen
/// for a well-formed stream).
async fn apply_order(
    conn: &mut PgConnection,
    id: Uuid,
    headers: &EventHeaders,
    event: &OrderEvent,
) -> Result<Option<OrderSummary>, ApplyError> {
    let current = load_summary(conn, id).await?;
    let version = current.as_ref().map_or(0, |s| s.version);
    if !decide("Order", id, version, headers.sequence)? {
        return Ok(current);
    }
    let sales_sign = order_summary::sales_sign(current.as_ref(), event);
    let summary = order_summary::fold(current, id, event, headers.occurred_at, headers.sequence)
        .map_err(|source| ApplyError::Fold { id, source })?;
    save_summary(conn, &summary).await?;
    record_history(
        conn,
        &summary,
        order_summary::history_kind(event),
        headers.occurred_at,
    )
    .await?;
    if sales_sign != 0 {
        book_sales(conn, &summary, sales_sign, headers).await?;
    }
    Ok(Some(summary))
}

async fn load_summary(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<OrderSummary>, ApplyError> {
    let row = sqlx::query!(
        r#"SELECT customer_id, status, lines, total_minor, currency, placed_at, updated_at, version
             FROM order_summary WHERE order_id = $1 FOR UPDATE"#,
        id
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let unreadable = |reason: String| ApplyError::StoredSummary { id, reason };
    let lines = serde_json::from_value(row.lines).map_err(|e| unreadable(e.to_string()))?;
    let status: OrderStatus = row.status.parse().map_err(unreadable)?;
    let currency = Currency::try_from(row.currency).map_err(|e| unreadable(e.to_string()))?;
    Ok(Some(OrderSummary {
        order_id: id,
        customer_id: row.customer_id,
        status,
        lines,
        total: schema::money::Money::new(row.total_minor, currency),
        placed_at: row.placed_at,
        updated_at: row.updated_at,
        version: row.version,
    }))
}

async fn save_summary(conn: &mut PgConnection, s: &OrderSummary) -> Result<(), ApplyError> {
    let lines = serde_json::to_value(&s.lines).map_err(|e| ApplyError::StoredSummary {
        id: s.order_id,
        reason: e.to_string(),
    })?;
    sqlx::query!(
        r#"INSERT INTO order_summary
               (order_id, customer_id, status, lines, total_minor, currency, placed_at, updated_at, version)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (order_id) DO UPDATE
              SET status = EXCLUDED.status, lines = EXCLUDED.lines,
                  total_minor = EXCLUDED.total_minor, currency = EXCLUDED.currency,
                  updated_at = EXCLUDED.updated_at, version = EXCLUDED.version"#,
        s.order_id,
        s.customer_id,
        s.status.as_str(),
        lines,
        s.total.amount_minor,
        s.total.currency.as_str(),
        s.placed_at,
        s.updated_at,
        s.version
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn record_history(
    conn: &mut PgConnection,
    s: &OrderSummary,
    kind: &str,
    at: DateTime<Utc>,
) -> Result<(), ApplyError> {
    sqlx::query!(
        r#"INSERT INTO customer_order_history
               (customer_id, occurred_at, order_id, version, kind, amount_minor, currency)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT DO NOTHING"#,
        s.customer_id,
        at,
        s.order_id,
        s.version,
        kind,
        s.total.amount_minor,
        s.total.currency.as_str()
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Adds (sign = 1) or reverses (sign = -1) the order's lines in `daily_sales`
/// on the event's UTC day, in one statement.
async fn book_sales(
    conn: &mut PgConnection,
    s: &OrderSummary,
    sign: i64,
    headers: &EventHeaders,
) -> Result<(), ApplyError> {
    let day = headers.occurred_at.date_naive();
    let products: Vec<Uuid> = s.lines.iter().map(|l| l.product_id).collect();
    let units: Vec<i64> = s
        .lines
        .iter()
        .map(|l| sign * i64::from(l.quantity))
        .collect();
    let revenue: Vec<i64> = s
        .lines
        .iter()
        .map(|l| sign * l.amount.amount_minor)
        .collect();
    sqlx::query!(
        r#"INSERT INTO daily_sales (day, product_id, currency, units, revenue_minor, last_position)
           SELECT $1, p, $2, u, r, $3
             FROM UNNEST($4::uuid[], $5::bigint[], $6::bigint[]) AS t(p, u, r)
           ON CONFLICT (day, product_id, currency) DO UPDATE
              SET units = daily_sales.units + EXCLUDED.units,
                  revenue_minor = daily_sales.revenue_minor + EXCLUDED.revenue_minor,
                  last_position = GREATEST(daily_sales.last_position, EXCLUDED.last_position)"#,
        day,
        s.total.currency.as_str(),
        headers.position,
        &products,
        &units,
        &revenue
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_skipped_next_is_applied_gaps_are_errors() {
        let id = Uuid::from_u128(1);
        assert!(!decide("Order", id, 3, 2).expect("dup"));
        assert!(!decide("Order", id, 3, 3).expect("dup"));
        assert!(decide("Order", id, 3, 4).expect("next"));
        assert!(decide("Order", id, 0, 1).expect("first"));
        assert!(matches!(
            decide("Order", id, 3, 5),
            Err(ApplyError::Gap { .. })
        ));
    }
}
