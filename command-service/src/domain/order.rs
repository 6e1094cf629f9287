//! The `Order` aggregate: a customer's order of product lines, all priced in
//! one currency, moving through `Placed → Confirmed → Shipped` or ending
//! `Cancelled`.

use std::collections::HashSet;
use std::fmt;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schema::money::Currency;
use schema::order::{self, CancelledBy, OrderEvent, OrderLine};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::guard::{check_version, Guarded, VersionMismatch};
use super::{emit, RuleKind, Stored};

/// Most lines one order may have.
pub const MAX_LINES: usize = 100;
/// Largest quantity of one line.
pub const MAX_QUANTITY: u32 = 10_000;
/// Longest accepted cancellation reason, in characters.
pub const MAX_REASON_LEN: usize = 500;

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Placed and still editable: lines may be added and removed.
    Placed,
    /// Accepted for fulfilment; the lines are final.
    Confirmed,
    /// Handed to the carrier. Final.
    Shipped,
    /// Called off before shipping. Final.
    Cancelled,
}

impl OrderStatus {
    /// Lower-case name, as used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Confirmed => "confirmed",
            Self::Shipped => "shipped",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a client can ask of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    /// Place the order. Only valid for an id that has no events yet.
    PlaceOrder {
        /// Who orders.
        customer_id: Uuid,
        /// 1 to [`MAX_LINES`] lines, one per product, all in one currency.
        lines: Vec<OrderLine>,
    },
    /// Add a line for a product not yet in the order, while it is placed.
    AddOrderLine {
        /// The new line; priced in the order's currency.
        line: OrderLine,
    },
    /// Remove the line of a product, while the order is placed.
    RemoveOrderLine {
        /// The product whose line to remove.
        product_id: Uuid,
    },
    /// Accept a placed order for fulfilment.
    ConfirmOrder,
    /// Call off a placed or confirmed order.
    CancelOrder {
        /// Free text, up to [`MAX_REASON_LEN`] characters; may be empty.
        reason: String,
        /// Who calls it off; [`CancelledBy::Unknown`] when the caller does
        /// not say. Recorded in the event, not in the aggregate's state.
        cancelled_by: CancelledBy,
    },
    /// Record that a confirmed order left the warehouse.
    ShipOrder,
}

/// Why an order command was rejected.
///
/// Variants about one field carry its path within the command, e.g. `lines`,
/// `lines[2].quantity`, `line.unit_price.amount_minor` or `reason`, so the
/// HTTP layer can point at it (see [`OrderError::field`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The client's `If-Match` version is stale.
    #[error("expected version {expected}, but the order is at version {actual}")]
    VersionMismatch {
        /// The version the client sent.
        expected: u64,
        /// The version the order is at.
        actual: u64,
    },
    /// The command needs an existing order and there is none with this id.
    #[error("order not found")]
    NotFound,
    /// A customer token placed an order for another customer.
    #[error("a customer token may place orders only for its own customer")]
    ForbiddenCustomer,
    /// `PlaceOrder` was sent for an id that already has an order.
    #[error("an order with this id has already been placed")]
    AlreadyPlaced,
    /// A field of the command is invalid.
    #[error("{field} {reason}")]
    InvalidField {
        /// Path of the offending field within the command.
        field: String,
        /// What is wrong with it, phrased to follow the field path.
        reason: String,
    },
    /// A line is priced in another currency than the order.
    #[error("{field} must be {expected}, the currency of the order, not {actual}")]
    CurrencyMismatch {
        /// Path of the offending currency within the command.
        field: String,
        /// The order's currency.
        expected: Currency,
        /// The line's currency.
        actual: Currency,
    },
    /// The product already has a line in the order (or earlier in `PlaceOrder`'s lines).
    #[error("product {product_id} already has a line in the order")]
    DuplicateLine {
        /// The product that would appear twice.
        product_id: Uuid,
    },
    /// The order already has the maximum number of lines.
    #[error("an order may have at most {max} lines")]
    TooManyLines {
        /// The maximum.
        max: usize,
    },
    /// The order total (sum of quantity × unit price) would not fit in an `i64`.
    #[error("the order total is too large to represent")]
    TotalOverflow,
    /// Lines can only be changed while the order is placed.
    #[error("the lines of a {status} order cannot be changed")]
    NotEditable {
        /// The order's status.
        status: OrderStatus,
    },
    /// `RemoveOrderLine` named a product the order has no line for.
    #[error("the order has no line for product {product_id}")]
    LineNotFound {
        /// The product named in the command.
        product_id: Uuid,
    },
    /// Removing the only line would leave an empty order; cancel it instead.
    #[error("the last line of an order cannot be removed; cancel the order instead")]
    LastLine,
    /// `ConfirmOrder` on an order that is already confirmed.
    #[error("the order is already confirmed")]
    AlreadyConfirmed,
    /// `CancelOrder` on an order that is already cancelled.
    #[error("the order is already cancelled")]
    AlreadyCancelled,
    /// `ShipOrder` on an order that is already shipped.
    #[error("the order is already shipped")]
    AlreadyShipped,
    /// The order's status does not allow the action (e.g. shipping a placed
    /// or cancelled order, cancelling a shipped one).
    #[error("cannot {action} an order that is {status}")]
    InvalidTransition {
        /// The attempted action: `confirm`, `cancel` or `ship`.
        action: &'static str,
        /// The order's status.
        status: OrderStatus,
    },
}

impl OrderError {
    /// How the rejection should be reported (404 / 409 / 422 over HTTP).
    pub fn kind(&self) -> RuleKind {
        match self {
            Self::NotFound => RuleKind::NotFound,
            Self::VersionMismatch { .. } => RuleKind::StaleVersion,
            Self::AlreadyPlaced => RuleKind::Conflict,
            Self::ForbiddenCustomer => RuleKind::Forbidden,
            Self::InvalidField { .. }
            | Self::CurrencyMismatch { .. }
            | Self::DuplicateLine { .. }
            | Self::TooManyLines { .. }
            | Self::TotalOverflow
            | Self::NotEditable { .. }
            | Self::LineNotFound { .. }
            | Self::LastLine
            | Self::AlreadyConfirmed
            | Self::AlreadyCancelled
            | Self::AlreadyShipped
            | Self::InvalidTransition { .. } => RuleKind::Violation,
        }
    }

    /// Path of the command field the error is about, if it is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::InvalidField { field, .. } | Self::CurrencyMismatch { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl From<VersionMismatch> for OrderError {
    fn from(VersionMismatch { expected, actual }: VersionMismatch) -> Self {
        Self::VersionMismatch { expected, actual }
    }
}

/// An [`OrderEvent`] as cqrs-es stores it.
pub type StoredOrderEvent = Stored<OrderEvent>;

/// The state of an order, rebuilt from its events.
///
/// Serializable because cqrs-es stores aggregates as snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    version: u64,
    state: Option<OrderState>,
}

/// What exists once the order has been placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OrderState {
    customer_id: Uuid,
    status: OrderStatus,
    lines: Vec<OrderLine>,
}

impl OrderState {
    /// The order's currency. Every line shares it and an order always has at
    /// least one line, so the first line is authoritative.
    fn currency(&self) -> Option<&Currency> {
        self.lines.first().map(|line| &line.unit_price.currency)
    }
}

impl Order {
    /// Number of events applied so far; the value clients send back in `If-Match`.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the order has been placed.
    pub fn exists(&self) -> bool {
        self.state.is_some()
    }

    /// The current status, once placed.
    pub fn status(&self) -> Option<OrderStatus> {
        self.state.as_ref().map(|s| s.status)
    }

    /// Who placed the order, once placed.
    /// What a caller limited to `customer` may do: place orders for that
    /// customer and act on that customer's orders. Another customer's order
    /// is answered as missing, so ids cannot be probed for existence.
    fn authorize(&self, customer: Uuid, command: &OrderCommand) -> Result<(), OrderError> {
        match (self.customer_id(), command) {
            (Some(owner), _) if owner != customer => Err(OrderError::NotFound),
            (None, OrderCommand::PlaceOrder { customer_id, .. }) if *customer_id != customer => {
                Err(OrderError::ForbiddenCustomer)
            }
            _ => Ok(()),
        }
    }

    pub fn customer_id(&self) -> Option<Uuid> {
        self.state.as_ref().map(|s| s.customer_id)
    }

    /// The currency every line is priced in, once placed.
    pub fn currency(&self) -> Option<&Currency> {
        self.state.as_ref().and_then(OrderState::currency)
    }

    /// The current lines, in the order they were added (empty before placing).
    pub fn lines(&self) -> &[OrderLine] {
        self.state.as_ref().map_or(&[], |s| s.lines.as_slice())
    }

    /// Sum of quantity × unit price in minor units, once placed. The rules
    /// keep it within `i64`, so `None` only means "not placed".
    pub fn total_minor(&self) -> Option<i64> {
        self.state.as_ref().and_then(|s| total_minor(&s.lines))
    }

    /// Applies the business rules to `command` and returns the one event it causes.
    ///
    /// Kept synchronous and separate from `handle` so every rule is plain code.
    fn decide(&self, command: OrderCommand) -> Result<OrderEvent, OrderError> {
        match command {
            OrderCommand::PlaceOrder { customer_id, lines } => {
                if self.state.is_some() {
                    return Err(OrderError::AlreadyPlaced);
                }
                validate_new_lines(&lines)?;
                Ok(OrderEvent::OrderPlaced { customer_id, lines })
            }
            OrderCommand::AddOrderLine { line } => {
                let order = self.editable()?;
                validate_line(&line, "line")?;
                if let Some(currency) = order.currency() {
                    check_currency(&line, currency, "line")?;
                }
                if order.lines.iter().any(|l| l.product_id == line.product_id) {
                    return Err(OrderError::DuplicateLine {
                        product_id: line.product_id,
                    });
                }
                if order.lines.len() >= MAX_LINES {
                    return Err(OrderError::TooManyLines { max: MAX_LINES });
                }
                if total_minor(order.lines.iter().chain([&line])).is_none() {
                    return Err(OrderError::TotalOverflow);
                }
                Ok(OrderEvent::OrderLineAdded { line })
            }
            OrderCommand::RemoveOrderLine { product_id } => {
                let order = self.editable()?;
                if !order.lines.iter().any(|l| l.product_id == product_id) {
                    return Err(OrderError::LineNotFound { product_id });
                }
                if order.lines.len() == 1 {
                    return Err(OrderError::LastLine);
                }
                Ok(OrderEvent::OrderLineRemoved { product_id })
            }
            OrderCommand::ConfirmOrder => match self.existing()?.status {
                OrderStatus::Placed => Ok(OrderEvent::OrderConfirmed {}),
                OrderStatus::Confirmed => Err(OrderError::AlreadyConfirmed),
                status @ (OrderStatus::Shipped | OrderStatus::Cancelled) => {
                    Err(OrderError::InvalidTransition {
                        action: "confirm",
                        status,
                    })
                }
            },
            OrderCommand::CancelOrder {
                reason,
                cancelled_by,
            } => {
                match self.existing()?.status {
                    OrderStatus::Placed | OrderStatus::Confirmed => {}
                    OrderStatus::Cancelled => return Err(OrderError::AlreadyCancelled),
                    status @ OrderStatus::Shipped => {
                        return Err(OrderError::InvalidTransition {
                            action: "cancel",
                            status,
                        })
                    }
                }
                if reason.contains('\0') {
                    // Postgres text cannot hold U+0000: the read model could
                    // never store the event (it would become a dead letter).
                    return Err(invalid(
                        "reason".to_owned(),
                        "must not contain U+0000 (NUL)",
                    ));
                }
                if reason.chars().count() > MAX_REASON_LEN {
                    return Err(invalid(
                        "reason".to_owned(),
                        format!("must be at most {MAX_REASON_LEN} characters"),
                    ));
                }
                Ok(OrderEvent::OrderCancelled {
                    reason,
                    cancelled_by,
                })
            }
            OrderCommand::ShipOrder => match self.existing()?.status {
                OrderStatus::Confirmed => Ok(OrderEvent::OrderShipped {}),
                OrderStatus::Shipped => Err(OrderError::AlreadyShipped),
                status @ (OrderStatus::Placed | OrderStatus::Cancelled) => {
                    Err(OrderError::InvalidTransition {
                        action: "ship",
                        status,
                    })
                }
            },
        }
    }

    fn existing(&self) -> Result<&OrderState, OrderError> {
        self.state.as_ref().ok_or(OrderError::NotFound)
    }

    fn editable(&self) -> Result<&OrderState, OrderError> {
        let order = self.existing()?;
        match order.status {
            OrderStatus::Placed => Ok(order),
            status => Err(OrderError::NotEditable { status }),
        }
    }
}

fn invalid(field: String, reason: impl Into<String>) -> OrderError {
    OrderError::InvalidField {
        field,
        reason: reason.into(),
    }
}

/// `None` if the sum (or one line's amount) overflows `i64`.
fn total_minor<'a>(lines: impl IntoIterator<Item = &'a OrderLine>) -> Option<i64> {
    lines
        .into_iter()
        .try_fold(0_i64, |total, line| total.checked_add(line.amount_minor()?))
}

/// Rules for one line on its own; `path` is where it sits in the command.
fn validate_line(line: &OrderLine, path: &str) -> Result<(), OrderError> {
    if line.quantity == 0 {
        return Err(invalid(
            format!("{path}.quantity"),
            "must be greater than 0",
        ));
    }
    if line.quantity > MAX_QUANTITY {
        return Err(invalid(
            format!("{path}.quantity"),
            format!("must be at most {MAX_QUANTITY}"),
        ));
    }
    if line.unit_price.amount_minor < 0 {
        return Err(invalid(
            format!("{path}.unit_price.amount_minor"),
            "must not be negative",
        ));
    }
    Ok(())
}

fn check_currency(line: &OrderLine, expected: &Currency, path: &str) -> Result<(), OrderError> {
    if line.unit_price.currency == *expected {
        return Ok(());
    }
    Err(OrderError::CurrencyMismatch {
        field: format!("{path}.unit_price.currency"),
        expected: expected.clone(),
        actual: line.unit_price.currency.clone(),
    })
}

/// Rules for the lines of `PlaceOrder`; the first line fixes the currency.
fn validate_new_lines(lines: &[OrderLine]) -> Result<(), OrderError> {
    let Some(first) = lines.first() else {
        return Err(invalid(
            "lines".to_owned(),
            "must contain at least one line",
        ));
    };
    if lines.len() > MAX_LINES {
        return Err(invalid(
            "lines".to_owned(),
            format!("must contain at most {MAX_LINES} lines"),
        ));
    }
    let currency = &first.unit_price.currency;
    let mut products = HashSet::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        let path = format!("lines[{index}]");
        validate_line(line, &path)?;
        check_currency(line, currency, &path)?;
        if !products.insert(line.product_id) {
            return Err(OrderError::DuplicateLine {
                product_id: line.product_id,
            });
        }
    }
    if total_minor(lines).is_none() {
        return Err(OrderError::TotalOverflow);
    }
    Ok(())
}

impl Aggregate for Order {
    const TYPE: &'static str = order::AGGREGATE_TYPE;
    type Command = Guarded<OrderCommand>;
    type Event = StoredOrderEvent;
    type Error = OrderError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        check_version(command.expected_version, self.version)?;
        if let Some(customer) = command.acting_for {
            self.authorize(customer, &command.command)?;
        }
        let event = self.decide(command.command)?;
        emit(sink, self, event).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        if let OrderEvent::OrderPlaced { customer_id, lines } = event.0 {
            self.state = Some(OrderState {
                customer_id,
                status: OrderStatus::Placed,
                lines,
            });
            return;
        }
        // Every other event follows OrderPlaced; without it there is nothing to change.
        let Some(state) = &mut self.state else {
            return;
        };
        match event.0 {
            OrderEvent::OrderPlaced { .. } => {}
            OrderEvent::OrderLineAdded { line } => state.lines.push(line),
            OrderEvent::OrderLineRemoved { product_id } => {
                state.lines.retain(|line| line.product_id != product_id);
            }
            OrderEvent::OrderConfirmed {} => state.status = OrderStatus::Confirmed,
            OrderEvent::OrderCancelled { .. } => state.status = OrderStatus::Cancelled,
            OrderEvent::OrderShipped {} => state.status = OrderStatus::Shipped,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use cqrs_es::test::TestFramework;
    use schema::money::Money;

    use super::*;

    type Fixture = TestFramework<Order>;

    fn money(amount_minor: i64, currency: &str) -> Money {
        Money::new(amount_minor, Currency::try_from(currency).unwrap())
    }

    fn eur(amount_minor: i64) -> Money {
        money(amount_minor, "EUR")
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(0x0193_a1c2_0000_7000_8000_0000_0000_0000 | n)
    }

    fn customer() -> Uuid {
        id(0xc)
    }

    fn line(product: u128, quantity: u32, unit_price: Money) -> OrderLine {
        OrderLine {
            product_id: id(product),
            quantity,
            unit_price,
        }
    }

    fn ev(event: OrderEvent) -> StoredOrderEvent {
        Stored(event)
    }

    fn place(lines: Vec<OrderLine>) -> OrderCommand {
        OrderCommand::PlaceOrder {
            customer_id: customer(),
            lines,
        }
    }

    fn placed_with(lines: Vec<OrderLine>) -> StoredOrderEvent {
        ev(OrderEvent::OrderPlaced {
            customer_id: customer(),
            lines,
        })
    }

    /// A placed order with lines for products 1 and 2.
    fn placed() -> StoredOrderEvent {
        placed_with(vec![line(1, 2, eur(2_450)), line(2, 1, eur(990))])
    }

    fn confirmed() -> StoredOrderEvent {
        ev(OrderEvent::OrderConfirmed {})
    }

    fn shipped() -> StoredOrderEvent {
        ev(OrderEvent::OrderShipped {})
    }

    fn cancelled() -> StoredOrderEvent {
        ev(OrderEvent::OrderCancelled {
            reason: "changed my mind".into(),
            cancelled_by: CancelledBy::Customer,
        })
    }

    fn add(line: OrderLine) -> OrderCommand {
        OrderCommand::AddOrderLine { line }
    }

    fn remove(product: u128) -> OrderCommand {
        OrderCommand::RemoveOrderLine {
            product_id: id(product),
        }
    }

    /// A cancellation by the customer.
    fn cancel(reason: &str) -> OrderCommand {
        OrderCommand::CancelOrder {
            reason: reason.into(),
            cancelled_by: CancelledBy::Customer,
        }
    }

    fn invalid_field(field: &str, reason: &str) -> OrderError {
        OrderError::InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn transition(action: &'static str, status: OrderStatus) -> OrderError {
        OrderError::InvalidTransition { action, status }
    }

    // --- wire format of the newtype -------------------------------------

    fn all_events() -> Vec<OrderEvent> {
        vec![
            OrderEvent::OrderPlaced {
                customer_id: id(9),
                lines: vec![line(1, 2, eur(2_450))],
            },
            OrderEvent::OrderLineAdded {
                line: line(2, 1, eur(990)),
            },
            OrderEvent::OrderLineRemoved { product_id: id(1) },
            OrderEvent::OrderConfirmed {},
            OrderEvent::OrderCancelled {
                reason: "customer request".into(),
                cancelled_by: CancelledBy::Customer,
            },
            OrderEvent::OrderShipped {},
        ]
    }

    #[test]
    fn stored_event_serializes_byte_identically_to_the_schema_event() {
        for event in all_events() {
            let schema_json = serde_json::to_vec(&event).unwrap();
            let stored_json = serde_json::to_vec(&Stored(event.clone())).unwrap();
            assert_eq!(stored_json, schema_json, "{event:?}");
            let decoded: StoredOrderEvent = serde_json::from_slice(&schema_json).unwrap();
            assert_eq!(decoded.0, event);
        }
    }

    #[test]
    fn stored_event_decodes_the_golden_fixtures() {
        let fixtures = [
            include_str!("../../../schema/fixtures/events/OrderPlaced.v1.json"),
            include_str!("../../../schema/fixtures/events/OrderLineAdded.v1.json"),
            include_str!("../../../schema/fixtures/events/OrderLineRemoved.v1.json"),
            include_str!("../../../schema/fixtures/events/OrderConfirmed.v1.json"),
            include_str!("../../../schema/fixtures/events/OrderCancelled.v2.json"),
            include_str!("../../../schema/fixtures/events/OrderShipped.v1.json"),
        ];
        for fixture in fixtures {
            let stored: StoredOrderEvent = serde_json::from_str(fixture).unwrap();
            let schema: OrderEvent = serde_json::from_str(fixture).unwrap();
            assert_eq!(stored.0, schema);
            assert_eq!(
                serde_json::to_vec(&stored).unwrap(),
                serde_json::to_vec(&schema).unwrap()
            );
        }
    }

    #[test]
    fn stored_event_reports_the_schema_type_and_version() {
        for event in all_events() {
            let stored = Stored(event.clone());
            assert_eq!(
                cqrs_es::DomainEvent::event_type(&stored),
                schema::VersionedEvent::event_type(&event)
            );
            assert_eq!(
                cqrs_es::DomainEvent::event_version(&stored),
                schema::VersionedEvent::event_version(&event)
            );
        }
    }

    #[test]
    fn aggregate_type_is_the_schema_one() {
        assert_eq!(Order::TYPE, "Order");
        assert_eq!(Order::TYPE, schema::order::AGGREGATE_TYPE);
    }

    // --- place -------------------------------------------------------------

    #[test]
    fn place_emits_placed() {
        Fixture::with(())
            .given_no_previous_events()
            .when(place(vec![line(1, 2, eur(2_450)), line(2, 1, eur(990))]).into())
            .then_expect_events(vec![placed()]);
    }

    #[test]
    fn place_on_existing_order_is_rejected() {
        for history in [
            vec![placed()],
            vec![placed(), confirmed()],
            vec![placed(), cancelled()],
        ] {
            Fixture::with(())
                .given(history)
                .when(place(vec![line(1, 1, eur(1))]).into())
                .then_expect_error(OrderError::AlreadyPlaced);
        }
    }

    #[test]
    fn place_needs_at_least_one_line() {
        Fixture::with(())
            .given_no_previous_events()
            .when(place(vec![]).into())
            .then_expect_error(invalid_field("lines", "must contain at least one line"));
    }

    #[test]
    fn place_accepts_max_lines_and_rejects_more() {
        let lines: Vec<_> = (1..=MAX_LINES as u128)
            .map(|p| line(p, 1, eur(1)))
            .collect();
        Fixture::with(())
            .given_no_previous_events()
            .when(place(lines.clone()).into())
            .then_expect_events(vec![placed_with(lines.clone())]);

        let mut too_many = lines;
        too_many.push(line(1_000, 1, eur(1)));
        Fixture::with(())
            .given_no_previous_events()
            .when(place(too_many).into())
            .then_expect_error(invalid_field("lines", "must contain at most 100 lines"));
    }

    #[test]
    fn place_rejects_zero_quantity_naming_the_line() {
        Fixture::with(())
            .given_no_previous_events()
            .when(place(vec![line(1, 1, eur(1)), line(2, 0, eur(1))]).into())
            .then_expect_error(invalid_field("lines[1].quantity", "must be greater than 0"));
    }

    #[test]
    fn place_accepts_max_quantity_and_rejects_more() {
        let ok = vec![line(1, MAX_QUANTITY, eur(1))];
        Fixture::with(())
            .given_no_previous_events()
            .when(place(ok.clone()).into())
            .then_expect_events(vec![placed_with(ok)]);
        Fixture::with(())
            .given_no_previous_events()
            .when(place(vec![line(1, MAX_QUANTITY + 1, eur(1))]).into())
            .then_expect_error(invalid_field("lines[0].quantity", "must be at most 10000"));
    }

    #[test]
    fn place_rejects_negative_unit_price_and_accepts_zero() {
        Fixture::with(())
            .given_no_previous_events()
            .when(place(vec![line(1, 1, eur(-1))]).into())
            .then_expect_error(invalid_field(
                "lines[0].unit_price.amount_minor",
                "must not be negative",
            ));
        let free = vec![line(1, 1, eur(0))];
        Fixture::with(())
            .given_no_previous_events()
            .when(place(free.clone()).into())
            .then_expect_events(vec![placed_with(free)]);
    }

    #[test]
    fn place_rejects_mixed_currencies() {
        Fixture::with(())
            .given_no_previous_events()
            .when(place(vec![line(1, 1, eur(1)), line(2, 1, money(1, "USD"))]).into())
            .then_expect_error(OrderError::CurrencyMismatch {
                field: "lines[1].unit_price.currency".into(),
                expected: Currency::try_from("EUR").unwrap(),
                actual: Currency::try_from("USD").unwrap(),
            });
    }

    #[test]
    fn place_accepts_any_single_currency() {
        let lines = vec![line(1, 1, money(5, "JPY")), line(2, 3, money(7, "JPY"))];
        Fixture::with(())
            .given_no_previous_events()
            .when(place(lines.clone()).into())
            .then_expect_events(vec![placed_with(lines)]);
    }

    #[test]
    fn place_rejects_duplicate_products() {
        Fixture::with(())
            .given_no_previous_events()
            .when(
                place(vec![
                    line(1, 1, eur(1)),
                    line(2, 1, eur(1)),
                    line(1, 3, eur(1)),
                ])
                .into(),
            )
            .then_expect_error(OrderError::DuplicateLine { product_id: id(1) });
    }

    #[test]
    fn place_rejects_a_total_that_overflows() {
        // Two lines that fit on their own but not together.
        Fixture::with(())
            .given_no_previous_events()
            .when(place(vec![line(1, 1, eur(i64::MAX)), line(2, 1, eur(1))]).into())
            .then_expect_error(OrderError::TotalOverflow);
        // One line whose quantity × unit price overflows.
        Fixture::with(())
            .given_no_previous_events()
            .when(place(vec![line(1, 2, eur(i64::MAX / 2 + 1))]).into())
            .then_expect_error(OrderError::TotalOverflow);
        // Exactly i64::MAX still fits.
        let max = vec![line(1, 1, eur(i64::MAX - 1)), line(2, 1, eur(1))];
        Fixture::with(())
            .given_no_previous_events()
            .when(place(max.clone()).into())
            .then_expect_events(vec![placed_with(max)]);
    }

    // --- commands on an order that does not exist --------------------------

    #[test]
    fn commands_other_than_place_need_an_existing_order() {
        for command in [
            add(line(3, 1, eur(1))),
            remove(1),
            OrderCommand::ConfirmOrder,
            cancel(""),
            OrderCommand::ShipOrder,
        ] {
            Fixture::with(())
                .given_no_previous_events()
                .when(command.into())
                .then_expect_error(OrderError::NotFound);
        }
    }

    // --- add line ----------------------------------------------------------

    #[test]
    fn add_line_emits_line_added() {
        Fixture::with(())
            .given(vec![placed()])
            .when(add(line(3, 4, eur(100))).into())
            .then_expect_events(vec![ev(OrderEvent::OrderLineAdded {
                line: line(3, 4, eur(100)),
            })]);
    }

    #[test]
    fn add_line_is_only_allowed_while_placed() {
        for (history, status) in [
            (vec![placed(), confirmed()], OrderStatus::Confirmed),
            (vec![placed(), confirmed(), shipped()], OrderStatus::Shipped),
            (vec![placed(), cancelled()], OrderStatus::Cancelled),
        ] {
            Fixture::with(())
                .given(history)
                .when(add(line(3, 1, eur(1))).into())
                .then_expect_error(OrderError::NotEditable { status });
        }
    }

    #[test]
    fn add_line_validates_the_line() {
        Fixture::with(())
            .given(vec![placed()])
            .when(add(line(3, 0, eur(1))).into())
            .then_expect_error(invalid_field("line.quantity", "must be greater than 0"));
        Fixture::with(())
            .given(vec![placed()])
            .when(add(line(3, MAX_QUANTITY + 1, eur(1))).into())
            .then_expect_error(invalid_field("line.quantity", "must be at most 10000"));
        Fixture::with(())
            .given(vec![placed()])
            .when(add(line(3, 1, eur(-1))).into())
            .then_expect_error(invalid_field(
                "line.unit_price.amount_minor",
                "must not be negative",
            ));
    }

    #[test]
    fn add_line_must_use_the_order_currency() {
        Fixture::with(())
            .given(vec![placed()])
            .when(add(line(3, 1, money(1, "USD"))).into())
            .then_expect_error(OrderError::CurrencyMismatch {
                field: "line.unit_price.currency".into(),
                expected: Currency::try_from("EUR").unwrap(),
                actual: Currency::try_from("USD").unwrap(),
            });
    }

    #[test]
    fn add_line_rejects_a_product_already_in_the_order() {
        Fixture::with(())
            .given(vec![placed()])
            .when(add(line(2, 5, eur(990))).into())
            .then_expect_error(OrderError::DuplicateLine { product_id: id(2) });
    }

    #[test]
    fn add_line_of_a_removed_product_is_accepted() {
        Fixture::with(())
            .given(vec![
                placed(),
                ev(OrderEvent::OrderLineRemoved { product_id: id(2) }),
            ])
            .when(add(line(2, 5, eur(990))).into())
            .then_expect_events(vec![ev(OrderEvent::OrderLineAdded {
                line: line(2, 5, eur(990)),
            })]);
    }

    #[test]
    fn add_line_beyond_max_lines_is_rejected() {
        let full: Vec<_> = (1..=MAX_LINES as u128)
            .map(|p| line(p, 1, eur(1)))
            .collect();
        Fixture::with(())
            .given(vec![placed_with(full)])
            .when(add(line(1_000, 1, eur(1))).into())
            .then_expect_error(OrderError::TooManyLines { max: MAX_LINES });
    }

    #[test]
    fn add_line_that_overflows_the_total_is_rejected() {
        Fixture::with(())
            .given(vec![placed_with(vec![line(1, 1, eur(i64::MAX))])])
            .when(add(line(2, 1, eur(1))).into())
            .then_expect_error(OrderError::TotalOverflow);
    }

    // --- remove line -------------------------------------------------------

    #[test]
    fn remove_line_emits_line_removed() {
        Fixture::with(())
            .given(vec![placed()])
            .when(remove(1).into())
            .then_expect_events(vec![ev(OrderEvent::OrderLineRemoved { product_id: id(1) })]);
    }

    #[test]
    fn remove_line_is_only_allowed_while_placed() {
        for (history, status) in [
            (vec![placed(), confirmed()], OrderStatus::Confirmed),
            (vec![placed(), confirmed(), shipped()], OrderStatus::Shipped),
            (vec![placed(), cancelled()], OrderStatus::Cancelled),
        ] {
            Fixture::with(())
                .given(history)
                .when(remove(1).into())
                .then_expect_error(OrderError::NotEditable { status });
        }
    }

    #[test]
    fn remove_line_needs_the_line_to_exist() {
        Fixture::with(())
            .given(vec![placed()])
            .when(remove(3).into())
            .then_expect_error(OrderError::LineNotFound { product_id: id(3) });
        Fixture::with(())
            .given(vec![
                placed(),
                ev(OrderEvent::OrderLineRemoved { product_id: id(1) }),
            ])
            .when(remove(1).into())
            .then_expect_error(OrderError::LineNotFound { product_id: id(1) });
    }

    #[test]
    fn remove_of_the_last_line_is_rejected() {
        Fixture::with(())
            .given(vec![
                placed(),
                ev(OrderEvent::OrderLineRemoved { product_id: id(1) }),
            ])
            .when(remove(2).into())
            .then_expect_error(OrderError::LastLine);
    }

    // --- confirm -----------------------------------------------------------

    #[test]
    fn confirm_emits_confirmed() {
        Fixture::with(())
            .given(vec![placed()])
            .when(OrderCommand::ConfirmOrder.into())
            .then_expect_events(vec![confirmed()]);
    }

    #[test]
    fn confirm_is_only_allowed_from_placed() {
        Fixture::with(())
            .given(vec![placed(), confirmed()])
            .when(OrderCommand::ConfirmOrder.into())
            .then_expect_error(OrderError::AlreadyConfirmed);
        Fixture::with(())
            .given(vec![placed(), confirmed(), shipped()])
            .when(OrderCommand::ConfirmOrder.into())
            .then_expect_error(transition("confirm", OrderStatus::Shipped));
        Fixture::with(())
            .given(vec![placed(), cancelled()])
            .when(OrderCommand::ConfirmOrder.into())
            .then_expect_error(transition("confirm", OrderStatus::Cancelled));
    }

    // --- cancel ------------------------------------------------------------

    #[test]
    fn cancel_emits_cancelled_from_placed_and_confirmed() {
        for history in [vec![placed()], vec![placed(), confirmed()]] {
            Fixture::with(())
                .given(history)
                .when(cancel("changed my mind").into())
                .then_expect_events(vec![cancelled()]);
        }
    }

    #[test]
    fn cancel_accepts_an_empty_reason_and_the_maximum_length() {
        Fixture::with(())
            .given(vec![placed()])
            .when(cancel("").into())
            .then_expect_events(vec![ev(OrderEvent::OrderCancelled {
                reason: String::new(),
                cancelled_by: CancelledBy::Customer,
            })]);
        let longest = "ü".repeat(MAX_REASON_LEN);
        Fixture::with(())
            .given(vec![placed()])
            .when(cancel(&longest).into())
            .then_expect_events(vec![ev(OrderEvent::OrderCancelled {
                reason: longest,
                cancelled_by: CancelledBy::Customer,
            })]);
    }

    #[test]
    fn cancel_records_who_cancelled() {
        for cancelled_by in [
            CancelledBy::Customer,
            CancelledBy::Merchant,
            CancelledBy::System,
            CancelledBy::Unknown,
        ] {
            Fixture::with(())
                .given(vec![placed(), confirmed()])
                .when(
                    OrderCommand::CancelOrder {
                        reason: "r".into(),
                        cancelled_by,
                    }
                    .into(),
                )
                .then_expect_events(vec![ev(OrderEvent::OrderCancelled {
                    reason: "r".into(),
                    cancelled_by,
                })]);
        }
    }

    #[test]
    fn cancelled_orders_state_is_the_same_whoever_cancelled() {
        // The originator lives in the event only: snapshots keep their shape.
        let cancelled_by = |cancelled_by| {
            let mut order = Order::default();
            order.apply(placed());
            order.apply(ev(OrderEvent::OrderCancelled {
                reason: "r".into(),
                cancelled_by,
            }));
            order
        };
        assert_eq!(
            cancelled_by(CancelledBy::Unknown),
            cancelled_by(CancelledBy::Merchant)
        );
    }

    #[test]
    fn cancel_rejects_a_too_long_reason() {
        Fixture::with(())
            .given(vec![placed()])
            .when(cancel(&"r".repeat(MAX_REASON_LEN + 1)).into())
            .then_expect_error(invalid_field("reason", "must be at most 500 characters"));
    }

    #[test]
    fn cancel_of_shipped_order_is_rejected() {
        Fixture::with(())
            .given(vec![placed(), confirmed(), shipped()])
            .when(cancel("too late").into())
            .then_expect_error(transition("cancel", OrderStatus::Shipped));
    }

    #[test]
    fn cancel_twice_is_rejected() {
        Fixture::with(())
            .given(vec![placed(), cancelled()])
            .when(cancel("again").into())
            .then_expect_error(OrderError::AlreadyCancelled);
    }

    // --- ship --------------------------------------------------------------

    #[test]
    fn ship_emits_shipped_from_confirmed() {
        Fixture::with(())
            .given(vec![placed(), confirmed()])
            .when(OrderCommand::ShipOrder.into())
            .then_expect_events(vec![shipped()]);
    }

    #[test]
    fn ship_of_unconfirmed_order_is_rejected() {
        Fixture::with(())
            .given(vec![placed()])
            .when(OrderCommand::ShipOrder.into())
            .then_expect_error(transition("ship", OrderStatus::Placed));
    }

    #[test]
    fn ship_of_cancelled_order_is_rejected() {
        for history in [
            vec![placed(), cancelled()],
            vec![placed(), confirmed(), cancelled()],
        ] {
            Fixture::with(())
                .given(history)
                .when(OrderCommand::ShipOrder.into())
                .then_expect_error(transition("ship", OrderStatus::Cancelled));
        }
    }

    #[test]
    fn ship_twice_is_rejected() {
        Fixture::with(())
            .given(vec![placed(), confirmed(), shipped()])
            .when(OrderCommand::ShipOrder.into())
            .then_expect_error(OrderError::AlreadyShipped);
    }

    // --- version guard -----------------------------------------------------

    #[test]
    fn matching_expected_version_is_accepted() {
        Fixture::with(())
            .given(vec![placed()])
            .when(Guarded::expecting(1, OrderCommand::ConfirmOrder))
            .then_expect_events(vec![confirmed()]);
        Fixture::with(())
            .given(vec![placed(), confirmed()])
            .when(Guarded::new(OrderCommand::ShipOrder, Some(2)))
            .then_expect_events(vec![shipped()]);
    }

    #[test]
    fn a_customer_acts_on_its_own_orders() {
        Fixture::with(())
            .given_no_previous_events()
            .when(Guarded::from(place(vec![line(1, 1, eur(1))])).acting_for(Some(customer())))
            .then_expect_events(vec![placed_with(vec![line(1, 1, eur(1))])]);
        Fixture::with(())
            .given(vec![placed()])
            .when(Guarded::from(OrderCommand::ConfirmOrder).acting_for(Some(customer())))
            .then_expect_events(vec![confirmed()]);
    }

    #[test]
    fn a_customer_cannot_place_for_another_customer() {
        Fixture::with(())
            .given_no_previous_events()
            .when(
                Guarded::from(place(vec![line(1, 1, eur(1))]))
                    .acting_for(Some(Uuid::from_u128(999))),
            )
            .then_expect_error(OrderError::ForbiddenCustomer);
    }

    #[test]
    fn another_customers_order_looks_missing() {
        for command in [
            OrderCommand::ConfirmOrder,
            OrderCommand::CancelOrder {
                reason: String::new(),
                cancelled_by: CancelledBy::Customer,
            },
            place(vec![line(1, 1, eur(1))]),
        ] {
            Fixture::with(())
                .given(vec![placed()])
                .when(Guarded::from(command).acting_for(Some(Uuid::from_u128(999))))
                .then_expect_error(OrderError::NotFound);
        }
    }

    #[test]
    fn a_reason_with_nul_is_rejected() {
        Fixture::with(())
            .given(vec![placed()])
            .when(
                OrderCommand::CancelOrder {
                    reason: "nul\0byte".into(),
                    cancelled_by: CancelledBy::Customer,
                }
                .into(),
            )
            .then_expect_error(invalid("reason".into(), "must not contain U+0000 (NUL)"));
    }

    #[test]
    fn mismatching_expected_version_is_rejected_before_any_rule() {
        Fixture::with(())
            .given(vec![placed(), confirmed()])
            .when(Guarded::expecting(1, OrderCommand::ShipOrder))
            .then_expect_error(OrderError::VersionMismatch {
                expected: 1,
                actual: 2,
            });
        // Even a command that would break a rule reports the stale version first.
        Fixture::with(())
            .given(vec![placed(), confirmed()])
            .when(Guarded::expecting(1, OrderCommand::ConfirmOrder))
            .then_expect_error(OrderError::VersionMismatch {
                expected: 1,
                actual: 2,
            });
        Fixture::with(())
            .given_no_previous_events()
            .when(Guarded::expecting(3, place(vec![line(1, 1, eur(1))])))
            .then_expect_error(OrderError::VersionMismatch {
                expected: 3,
                actual: 0,
            });
    }

    // --- state and classification ------------------------------------------

    #[test]
    fn apply_counts_versions_and_exposes_state() {
        let mut order = Order::default();
        assert_eq!(order.version(), 0);
        assert!(!order.exists());
        assert_eq!(order.status(), None);
        assert_eq!(order.currency(), None);
        assert!(order.lines().is_empty());

        for event in [
            placed(),
            ev(OrderEvent::OrderLineAdded {
                line: line(3, 2, eur(5)),
            }),
            ev(OrderEvent::OrderLineRemoved { product_id: id(1) }),
            confirmed(),
        ] {
            order.apply(event);
        }
        assert_eq!(order.version(), 4);
        assert!(order.exists());
        assert_eq!(order.status(), Some(OrderStatus::Confirmed));
        assert_eq!(order.customer_id(), Some(customer()));
        assert_eq!(order.currency().map(Currency::as_str), Some("EUR"));
        assert_eq!(order.lines(), &[line(2, 1, eur(990)), line(3, 2, eur(5))]);
        assert_eq!(order.total_minor(), Some(1_000));

        order.apply(shipped());
        assert_eq!(order.status(), Some(OrderStatus::Shipped));
        assert_eq!(order.version(), 5);
    }

    #[test]
    fn snapshot_round_trips() {
        let mut order = Order::default();
        order.apply(placed());
        order.apply(cancelled());
        let json = serde_json::to_string(&order).unwrap();
        assert_eq!(serde_json::from_str::<Order>(&json).unwrap(), order);
    }

    #[test]
    fn errors_are_classified_for_http() {
        assert_eq!(OrderError::NotFound.kind(), RuleKind::NotFound);
        assert_eq!(OrderError::AlreadyPlaced.kind(), RuleKind::Conflict);
        assert_eq!(
            OrderError::VersionMismatch {
                expected: 0,
                actual: 1
            }
            .kind(),
            RuleKind::StaleVersion
        );
        for violation in [
            invalid_field("reason", "x"),
            OrderError::CurrencyMismatch {
                field: "line.unit_price.currency".into(),
                expected: Currency::try_from("EUR").unwrap(),
                actual: Currency::try_from("USD").unwrap(),
            },
            OrderError::DuplicateLine { product_id: id(1) },
            OrderError::TooManyLines { max: MAX_LINES },
            OrderError::TotalOverflow,
            OrderError::NotEditable {
                status: OrderStatus::Confirmed,
            },
            OrderError::LineNotFound { product_id: id(1) },
            OrderError::LastLine,
            OrderError::AlreadyConfirmed,
            OrderError::AlreadyCancelled,
            OrderError::AlreadyShipped,
            transition("ship", OrderStatus::Placed),
        ] {
            assert_eq!(violation.kind(), RuleKind::Violation, "{violation:?}");
        }
    }

    #[test]
    fn field_errors_expose_their_path() {
        assert_eq!(
            invalid_field("lines[1].quantity", "x").field(),
            Some("lines[1].quantity")
        );
        assert_eq!(OrderError::LastLine.field(), None);
    }

    #[test]
    fn error_messages_read_well() {
        assert_eq!(
            invalid_field("lines[1].quantity", "must be greater than 0").to_string(),
            "lines[1].quantity must be greater than 0"
        );
        assert_eq!(
            transition("ship", OrderStatus::Cancelled).to_string(),
            "cannot ship an order that is cancelled"
        );
        assert_eq!(
            OrderError::NotEditable {
                status: OrderStatus::Confirmed
            }
            .to_string(),
            "the lines of a confirmed order cannot be changed"
        );
    }
}
