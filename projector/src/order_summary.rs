//! The order summary as a pure fold over order events. The store loads the
//! current summary, folds the event in, and writes the result; keeping the
//! arithmetic here makes it testable without a database.

use chrono::{DateTime, Utc};
use schema::money::Money;
use schema::order::{OrderEvent, OrderLine};
use schema::views::{OrderStatus, OrderSummary, OrderSummaryLine};
use schema::VersionedEvent;
use uuid::Uuid;

/// An order event that cannot be folded into the current summary. The
/// command side enforces these rules, so seeing one means the stream and the
/// read model disagree; it is surfaced, never papered over.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FoldError {
    #[error("{event_type} for an order that was never placed")]
    NotPlaced { event_type: &'static str },
    #[error("OrderPlaced for an order that already exists")]
    AlreadyPlaced,
    #[error("OrderPlaced without lines")]
    NoLines,
    #[error("amount overflows i64 minor units")]
    Overflow,
}

/// The summary after `event` (which has per-order `sequence`, at time `at`).
pub fn fold(
    current: Option<OrderSummary>,
    order_id: Uuid,
    event: &OrderEvent,
    at: DateTime<Utc>,
    sequence: i64,
) -> Result<OrderSummary, FoldError> {
    let mut summary = match (current, event) {
        (None, OrderEvent::OrderPlaced { customer_id, lines }) => {
            let currency = lines
                .first()
                .map(|l| l.unit_price.currency.clone())
                .ok_or(FoldError::NoLines)?;
            OrderSummary {
                order_id,
                customer_id: *customer_id,
                status: OrderStatus::Placed,
                lines: Vec::new(),
                total: Money::new(0, currency),
                placed_at: at,
                updated_at: at,
                version: 0,
            }
        }
        (Some(_), OrderEvent::OrderPlaced { .. }) => return Err(FoldError::AlreadyPlaced),
        (None, other) => {
            return Err(FoldError::NotPlaced {
                event_type: other.event_type(),
            })
        }
        (Some(summary), _) => summary,
    };
    match event {
        OrderEvent::OrderPlaced { lines, .. } => {
            for line in lines {
                summary.lines.push(summary_line(line)?);
            }
        }
        OrderEvent::OrderLineAdded { line } => summary.lines.push(summary_line(line)?),
        OrderEvent::OrderLineRemoved { product_id } => {
            summary.lines.retain(|l| l.product_id != *product_id)
        }
        OrderEvent::OrderConfirmed {} => summary.status = OrderStatus::Confirmed,
        OrderEvent::OrderCancelled { .. } => summary.status = OrderStatus::Cancelled,
        OrderEvent::OrderShipped {} => summary.status = OrderStatus::Shipped,
    }
    summary.total.amount_minor = summary
        .lines
        .iter()
        .try_fold(0i64, |sum, l| sum.checked_add(l.amount.amount_minor))
        .ok_or(FoldError::Overflow)?;
    summary.updated_at = at;
    summary.version = sequence;
    Ok(summary)
}

fn summary_line(line: &OrderLine) -> Result<OrderSummaryLine, FoldError> {
    let amount = line.amount_minor().ok_or(FoldError::Overflow)?;
    Ok(OrderSummaryLine {
        product_id: line.product_id,
        quantity: line.quantity,
        unit_price: line.unit_price.clone(),
        amount: Money::new(amount, line.unit_price.currency.clone()),
    })
}

/// The short name of an event in `customer_order_history.kind`.
pub fn history_kind(event: &OrderEvent) -> &'static str {
    match event {
        OrderEvent::OrderPlaced { .. } => "placed",
        OrderEvent::OrderLineAdded { .. } => "line_added",
        OrderEvent::OrderLineRemoved { .. } => "line_removed",
        OrderEvent::OrderConfirmed {} => "confirmed",
        OrderEvent::OrderCancelled { .. } => "cancelled",
        OrderEvent::OrderShipped {} => "shipped",
    }
}

/// How an event moves `daily_sales`: +1 when an order is confirmed, −1 when a
/// confirmed order is cancelled (booked on the day of the cancellation),
/// nothing otherwise.
pub fn sales_sign(before: Option<&OrderSummary>, event: &OrderEvent) -> i64 {
    match (before.map(|s| s.status), event) {
        (Some(OrderStatus::Placed), OrderEvent::OrderConfirmed {}) => 1,
        (Some(OrderStatus::Confirmed), OrderEvent::OrderCancelled { .. }) => -1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::money::Currency;
    use schema::order::CancelledBy;

    fn eur(amount: i64) -> Money {
        Money::new(amount, Currency::try_from("EUR").expect("valid"))
    }

    fn line(product: u128, quantity: u32, price: i64) -> OrderLine {
        OrderLine {
            product_id: Uuid::from_u128(product),
            quantity,
            unit_price: eur(price),
        }
    }

    fn at(minute: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-11-22T10:{minute:02}:00Z"))
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn placed_order_totals_its_lines() {
        let id = Uuid::from_u128(7);
        let placed = OrderEvent::OrderPlaced {
            customer_id: Uuid::from_u128(9),
            lines: vec![line(1, 2, 250), line(2, 1, 100)],
        };
        let s = fold(None, id, &placed, at(0), 1).expect("fold");
        assert_eq!(s.total, eur(600));
        assert_eq!(s.status, OrderStatus::Placed);
        assert_eq!(s.version, 1);
        assert_eq!(s.lines[0].amount, eur(500));
    }

    #[test]
    fn lines_and_status_follow_the_events() {
        let id = Uuid::from_u128(7);
        let placed = OrderEvent::OrderPlaced {
            customer_id: Uuid::from_u128(9),
            lines: vec![line(1, 2, 250)],
        };
        let s = fold(None, id, &placed, at(0), 1).expect("placed");
        let s = fold(
            Some(s),
            id,
            &OrderEvent::OrderLineAdded {
                line: line(2, 3, 10),
            },
            at(1),
            2,
        )
        .expect("added");
        assert_eq!(s.total, eur(530));
        let s = fold(
            Some(s),
            id,
            &OrderEvent::OrderLineRemoved {
                product_id: Uuid::from_u128(1),
            },
            at(2),
            3,
        )
        .expect("removed");
        assert_eq!(s.total, eur(30));
        let before = s.clone();
        let s = fold(Some(s), id, &OrderEvent::OrderConfirmed {}, at(3), 4).expect("confirmed");
        assert_eq!(sales_sign(Some(&before), &OrderEvent::OrderConfirmed {}), 1);
        assert_eq!(s.status, OrderStatus::Confirmed);
        assert_eq!(s.updated_at, at(3));
        assert_eq!(s.placed_at, at(0));
        let cancel = OrderEvent::OrderCancelled {
            reason: "x".into(),
            cancelled_by: CancelledBy::Customer,
        };
        assert_eq!(sales_sign(Some(&s), &cancel), -1);
    }

    #[test]
    fn events_out_of_lifecycle_are_errors() {
        let id = Uuid::from_u128(7);
        assert_eq!(
            fold(None, id, &OrderEvent::OrderShipped {}, at(0), 1),
            Err(FoldError::NotPlaced {
                event_type: "OrderShipped"
            })
        );
        let placed = OrderEvent::OrderPlaced {
            customer_id: Uuid::from_u128(9),
            lines: vec![line(1, 1, 1)],
        };
        let s = fold(None, id, &placed, at(0), 1).expect("placed");
        assert_eq!(
            fold(Some(s), id, &placed, at(1), 2),
            Err(FoldError::AlreadyPlaced)
        );
    }

    /// The store keeps every event in the version it was written with and the
    /// relay publishes it unchanged, so the projector receives `OrderCancelled`
    /// v1 and v2 side by side: both must fold into the same cancelled summary.
    #[test]
    fn order_cancelled_v1_and_v2_fold_into_the_same_cancelled_summary() {
        use schema::envelope::AnyEvent;

        let id = Uuid::from_u128(7);
        let placed = OrderEvent::OrderPlaced {
            customer_id: Uuid::from_u128(9),
            lines: vec![line(1, 2, 250)],
        };
        let placed = fold(None, id, &placed, at(0), 1).expect("placed");
        let confirmed =
            fold(Some(placed), id, &OrderEvent::OrderConfirmed {}, at(1), 2).expect("confirmed");
        let cancel = |version: &str, payload: &[u8]| {
            let AnyEvent::Order(event) =
                AnyEvent::decode_versioned("Order", "OrderCancelled", version, payload)
                    .expect("decodes")
            else {
                panic!("not an order event");
            };
            assert_eq!(sales_sign(Some(&confirmed), &event), -1);
            assert_eq!(history_kind(&event), "cancelled");
            fold(Some(confirmed.clone()), id, &event, at(2), 3).expect("cancelled")
        };
        let from_v1 = cancel("1", br#"{"OrderCancelled":{"reason":"customer request"}}"#);
        let from_v2 = cancel(
            "2",
            br#"{"OrderCancelled":{"reason":"customer request","cancelled_by":"merchant"}}"#,
        );
        assert_eq!(from_v1, from_v2);
        assert_eq!(from_v1.status, OrderStatus::Cancelled);
        assert_eq!(from_v1.version, 3);
        assert_eq!(from_v1.total, eur(500));
    }

    #[test]
    fn cancelling_an_unconfirmed_order_books_no_sales() {
        let placed = OrderEvent::OrderPlaced {
            customer_id: Uuid::from_u128(9),
            lines: vec![line(1, 1, 1)],
        };
        let s = fold(None, Uuid::from_u128(7), &placed, at(0), 1).expect("placed");
        let cancel = OrderEvent::OrderCancelled {
            reason: "x".into(),
            cancelled_by: CancelledBy::Customer,
        };
        assert_eq!(sales_sign(Some(&s), &cancel), 0);
    }
}
