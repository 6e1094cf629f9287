//! Applies one event to the Postgres read models, inside the caller's
//! transaction ([`crate::batch`] makes one per batch).
//!
//! Idempotency: every aggregate's row keeps the sequence of the last event it
//! reflects (`version`). An event whose sequence is not newer is skipped; one
//! that is more than one ahead means an event is missing, which is an error
//! (retried, then parked as a dead letter) rather than a silently wrong read model.

use chrono::{DateTime, Utc};
use schema::envelope::{AnyEvent, EventHeaders};
use schema::money::Currency;
use schema::order::OrderEvent;
use schema::product::ProductEvent;
use schema::views::{
    customer_history_key, order_summary_key, product_key, Invalidation, OrderStatus, OrderSummary,
};
use sqlx::PgConnection;
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
pub(crate) fn decide(
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

/// What applying one event did.
#[derive(Debug, Clone, Default)]
pub struct Effect {
    /// False when the read models already reflected the event (a replay or
    /// a duplicate from the relay's at-least-once delivery).
    pub changed: bool,
    /// The order's summary as it now stands, applied or not: Redis is brought
    /// up to it, so a replay also repairs Redis.
    pub summary: Option<OrderSummary>,
    /// Cache keys the event changed, at their new versions.
    pub invalidations: Vec<Invalidation>,
}

impl ApplyError {
    /// Whether trying again later may succeed (the database is unreachable,
    /// overloaded or a transaction lost a serialization race), as opposed to
    /// an event that fails the same way every time and must be parked.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(error) => is_transient(error),
            Self::BadAggregateId(_)
            | Self::Gap { .. }
            | Self::Fold { .. }
            | Self::StoredSummary { .. } => false,
        }
    }
}

/// Connection trouble and the SQLSTATE classes that mean "not now" rather
/// than "never": 08 connection, 40 transaction rollback (serialization,
/// deadlock), 53 insufficient resources, 57 operator intervention (e.g. a
/// shutting-down server), 58 system error.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|c| code.starts_with(c))
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// Applies one event to the Postgres read models on `conn` (the caller's
/// transaction).
pub async fn apply_event(
    conn: &mut PgConnection,
    StreamEvent { headers, event }: &StreamEvent,
) -> Result<Effect, ApplyError> {
    let id = Uuid::parse_str(&headers.aggregate_id)
        .map_err(|_| ApplyError::BadAggregateId(headers.aggregate_id.clone()))?;
    match event {
        AnyEvent::Product(event) => {
            let changed = apply_product(conn, id, headers, event).await?;
            Ok(Effect {
                changed,
                summary: None,
                invalidations: if changed {
                    vec![Invalidation {
                        key: product_key(id),
                        version: headers.sequence,
                    }]
                } else {
                    Vec::new()
                },
            })
        }
        AnyEvent::Order(event) => {
            let (summary, changed) = apply_order(conn, id, headers, event).await?;
            let invalidations = match (&summary, changed) {
                (Some(s), true) => vec![
                    Invalidation {
                        key: order_summary_key(s.order_id),
                        version: s.version,
                    },
                    Invalidation {
                        key: customer_history_key(s.customer_id),
                        version: headers.position,
                    },
                ],
                _ => Vec::new(),
            };
            Ok(Effect {
                changed,
                summary,
                invalidations,
            })
        }
    }
}

/// Moves an aggregate's read-model version past `sequence` without applying
/// the event (an operator skipped it as a dead letter), so the events after
/// it are not taken for a gap. A no-op unless the model is at `sequence - 1`.
pub async fn skip_event(
    conn: &mut PgConnection,
    aggregate_type: &str,
    id: Uuid,
    sequence: i64,
) -> Result<(), sqlx::Error> {
    match aggregate_type {
        schema::product::AGGREGATE_TYPE => {
            sqlx::query!(
                "UPDATE product_catalog SET version = $2 WHERE product_id = $1 AND version + 1 = $2",
                id,
                sequence
            )
            .execute(&mut *conn)
            .await?;
        }
        schema::order::AGGREGATE_TYPE => {
            sqlx::query!(
                "UPDATE order_summary SET version = $2 WHERE order_id = $1 AND version + 1 = $2",
                id,
                sequence
            )
            .execute(&mut *conn)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

async fn apply_product(
    conn: &mut PgConnection,
    id: Uuid,
    headers: &EventHeaders,
    event: &ProductEvent,
) -> Result<bool, ApplyError> {
    let current = sqlx::query_scalar!(
        "SELECT version FROM product_catalog WHERE product_id = $1 FOR UPDATE",
        id
    )
    .fetch_optional(&mut *conn)
    .await?
    .unwrap_or(0);
    if !decide("Product", id, current, headers.sequence)? {
        return Ok(false);
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
    Ok(true)
}

/// Applies one order event; returns the summary as it now stands (None only
/// if the order does not exist and the event was skipped, which cannot happen
/// for a well-formed stream) and whether the event changed it.
async fn apply_order(
    conn: &mut PgConnection,
    id: Uuid,
    headers: &EventHeaders,
    event: &OrderEvent,
) -> Result<(Option<OrderSummary>, bool), ApplyError> {
    let current = load_summary(conn, id).await?;
    let version = current.as_ref().map_or(0, |s| s.version);
    if !decide("Order", id, version, headers.sequence)? {
        return Ok((current, false));
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
    Ok((Some(summary), true))
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
    let Some(r) = row else { return Ok(None) };
    summary_from_row(
        id,
        r.customer_id,
        &r.status,
        r.lines,
        r.total_minor,
        r.currency,
        r.placed_at,
        r.updated_at,
        r.version,
    )
    .map(Some)
}

/// An `order_summary` row back as the document it stores.
#[allow(clippy::too_many_arguments)]
pub(crate) fn summary_from_row(
    id: Uuid,
    customer_id: Uuid,
    status: &str,
    lines: serde_json::Value,
    total_minor: i64,
    currency: String,
    placed_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
) -> Result<OrderSummary, ApplyError> {
    let unreadable = |reason: String| ApplyError::StoredSummary { id, reason };
    let lines = serde_json::from_value(lines).map_err(|e| unreadable(e.to_string()))?;
    let status: OrderStatus = status.parse().map_err(unreadable)?;
    let currency = Currency::try_from(currency).map_err(|e| unreadable(e.to_string()))?;
    Ok(OrderSummary {
        order_id: id,
        customer_id,
        status,
        lines,
        total: schema::money::Money::new(total_minor, currency),
        placed_at,
        updated_at,
        version,
    })
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
