//! The `Product` aggregate: a sellable item with a SKU, a name and a price.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schema::money::Money;
use schema::product::{self, ProductEvent};
use serde::{Deserialize, Serialize};

use super::guard::{check_version, Guarded, VersionMismatch};
use super::{emit, RuleKind, Stored};

/// Longest accepted SKU, in characters.
pub const MAX_SKU_LEN: usize = 64;
/// Longest accepted product name, in characters.
pub const MAX_NAME_LEN: usize = 200;

/// What a client can ask of a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductCommand {
    /// Create the product. Only valid for an id that has no events yet.
    CreateProduct {
        /// Stock-keeping unit: ASCII letters, digits, `-`, `_` and `.`.
        sku: String,
        /// Display name, stored exactly as given.
        name: String,
        /// List price; must not be negative.
        price: Money,
    },
    /// Give the product a new name.
    RenameProduct {
        /// The new display name, stored exactly as given.
        name: String,
    },
    /// Change the list price (the currency may change too).
    ChangeProductPrice {
        /// The new list price; must not be negative.
        price: Money,
    },
    /// Take the product off sale for good.
    DiscontinueProduct,
}

/// Why a product command was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    /// The client's `If-Match` version is stale.
    #[error("expected version {expected}, but the product is at version {actual}")]
    VersionMismatch {
        /// The version the client sent.
        expected: u64,
        /// The version the product is at.
        actual: u64,
    },
    /// The command needs an existing product and there is none with this id.
    #[error("product not found")]
    NotFound,
    /// A customer token tried to change the catalog.
    #[error("customer tokens cannot change the catalog")]
    ForbiddenCustomer,
    /// `CreateProduct` was sent for an id that already has a product.
    #[error("a product with this id already exists")]
    AlreadyExists,
    /// A field of the command is invalid; `field` is its name in the command
    /// (`sku`, `name`, `price.amount_minor`).
    #[error("{field} {reason}")]
    InvalidField {
        /// The offending field, as named in the command.
        field: &'static str,
        /// What is wrong with it, phrased to follow the field name.
        reason: String,
    },
    /// A discontinued product can no longer be renamed or repriced.
    #[error("the product is discontinued")]
    Discontinued,
    /// `RenameProduct` carried the name the product already has.
    #[error("the product already has this name")]
    NameUnchanged,
    /// `ChangeProductPrice` carried the price the product already has.
    #[error("the product already has this price")]
    PriceUnchanged,
    /// `DiscontinueProduct` was sent for an already discontinued product.
    #[error("the product is already discontinued")]
    AlreadyDiscontinued,
}

impl ProductError {
    /// How the rejection should be reported (404 / 409 / 422 over HTTP).
    pub fn kind(&self) -> RuleKind {
        match self {
            Self::NotFound => RuleKind::NotFound,
            Self::VersionMismatch { .. } => RuleKind::StaleVersion,
            Self::AlreadyExists => RuleKind::Conflict,
            Self::ForbiddenCustomer => RuleKind::Forbidden,
            Self::InvalidField { .. }
            | Self::Discontinued
            | Self::NameUnchanged
            | Self::PriceUnchanged
            | Self::AlreadyDiscontinued => RuleKind::Violation,
        }
    }

    /// Name of the command field the error is about, if it is about one field.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::InvalidField { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl From<VersionMismatch> for ProductError {
    fn from(VersionMismatch { expected, actual }: VersionMismatch) -> Self {
        Self::VersionMismatch { expected, actual }
    }
}

/// A [`ProductEvent`] as cqrs-es stores it.
pub type StoredProductEvent = Stored<ProductEvent>;

/// The state of a product, rebuilt from its events.
///
/// Serializable because cqrs-es stores aggregates as snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    version: u64,
    state: Option<ProductState>,
}

/// What exists once the product has been created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ProductState {
    sku: String,
    name: String,
    price: Money,
    discontinued: bool,
}

impl Product {
    /// Number of events applied so far; the value clients send back in `If-Match`.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the product has been created.
    pub fn exists(&self) -> bool {
        self.state.is_some()
    }

    /// The SKU, once created.
    pub fn sku(&self) -> Option<&str> {
        self.state.as_ref().map(|s| s.sku.as_str())
    }

    /// The current name, once created.
    pub fn name(&self) -> Option<&str> {
        self.state.as_ref().map(|s| s.name.as_str())
    }

    /// The current price, once created.
    pub fn price(&self) -> Option<&Money> {
        self.state.as_ref().map(|s| &s.price)
    }

    /// Whether the product has been discontinued (`false` if it does not exist).
    pub fn is_discontinued(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.discontinued)
    }

    /// Applies the business rules to `command` and returns the one event it causes.
    ///
    /// Kept synchronous and separate from `handle` so every rule is plain code.
    fn decide(&self, command: ProductCommand) -> Result<ProductEvent, ProductError> {
        match command {
            ProductCommand::CreateProduct { sku, name, price } => {
                if self.state.is_some() {
                    return Err(ProductError::AlreadyExists);
                }
                validate_sku(&sku)?;
                validate_name(&name)?;
                validate_price(&price)?;
                Ok(ProductEvent::ProductCreated { sku, name, price })
            }
            ProductCommand::RenameProduct { name } => {
                let state = self.existing()?;
                if state.discontinued {
                    return Err(ProductError::Discontinued);
                }
                validate_name(&name)?;
                if name == state.name {
                    return Err(ProductError::NameUnchanged);
                }
                Ok(ProductEvent::ProductRenamed { name })
            }
            ProductCommand::ChangeProductPrice { price } => {
                let state = self.existing()?;
                if state.discontinued {
                    return Err(ProductError::Discontinued);
                }
                validate_price(&price)?;
                if price == state.price {
                    return Err(ProductError::PriceUnchanged);
                }
                Ok(ProductEvent::ProductPriceChanged { price })
            }
            ProductCommand::DiscontinueProduct => {
                if self.existing()?.discontinued {
                    return Err(ProductError::AlreadyDiscontinued);
                }
                Ok(ProductEvent::ProductDiscontinued {})
            }
        }
    }

    fn existing(&self) -> Result<&ProductState, ProductError> {
        self.state.as_ref().ok_or(ProductError::NotFound)
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ProductError {
    ProductError::InvalidField {
        field,
        reason: reason.into(),
    }
}

fn validate_sku(sku: &str) -> Result<(), ProductError> {
    if sku.trim().is_empty() {
        return Err(invalid("sku", "must not be blank"));
    }
    if sku.chars().count() > MAX_SKU_LEN {
        return Err(invalid(
            "sku",
            format!("must be at most {MAX_SKU_LEN} characters"),
        ));
    }
    // Checked on the value as given, not trimmed: a SKU is an identifier, so
    // surrounding whitespace is a client bug to reject, not to store.
    if !sku
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            "sku",
            "may only contain ASCII letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), ProductError> {
    if name.trim().is_empty() {
        return Err(invalid("name", "must not be blank"));
    }
    // The limit applies to what is stored (the name as given), so padding
    // cannot smuggle an arbitrarily long value into the event store.
    if name.contains('\0') {
        // Postgres text cannot hold U+0000: the read model could never store
        // the event (it would become a dead letter).
        return Err(invalid("name", "must not contain U+0000 (NUL)"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(invalid(
            "name",
            format!("must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    Ok(())
}

fn validate_price(price: &Money) -> Result<(), ProductError> {
    if price.amount_minor < 0 {
        return Err(invalid("price.amount_minor", "must not be negative"));
    }
    Ok(())
}

impl Aggregate for Product {
    const TYPE: &'static str = product::AGGREGATE_TYPE;
    type Command = Guarded<ProductCommand>;
    type Event = StoredProductEvent;
    type Error = ProductError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        check_version(command.expected_version, self.version)?;
        // The catalog is the merchant's: no customer acts on it.
        if command.acting_for.is_some() {
            return Err(ProductError::ForbiddenCustomer);
        }
        let event = self.decide(command.command)?;
        emit(sink, self, event).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        match event.0 {
            ProductEvent::ProductCreated { sku, name, price } => {
                self.state = Some(ProductState {
                    sku,
                    name,
                    price,
                    discontinued: false,
                });
            }
            ProductEvent::ProductRenamed { name } => {
                if let Some(state) = &mut self.state {
                    state.name = name;
                }
            }
            ProductEvent::ProductPriceChanged { price } => {
                if let Some(state) = &mut self.state {
                    state.price = price;
                }
            }
            ProductEvent::ProductDiscontinued {} => {
                if let Some(state) = &mut self.state {
                    state.discontinued = true;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use cqrs_es::test::TestFramework;
    use schema::money::Currency;

    use super::*;

    type Fixture = TestFramework<Product>;

    fn money(amount_minor: i64, currency: &str) -> Money {
        Money::new(amount_minor, Currency::try_from(currency).unwrap())
    }

    fn eur(amount_minor: i64) -> Money {
        money(amount_minor, "EUR")
    }

    fn ev(event: ProductEvent) -> StoredProductEvent {
        Stored(event)
    }

    fn created() -> StoredProductEvent {
        ev(ProductEvent::ProductCreated {
            sku: "SKU-1".into(),
            name: "Espresso beans".into(),
            price: eur(2_450),
        })
    }

    fn discontinued() -> StoredProductEvent {
        ev(ProductEvent::ProductDiscontinued {})
    }

    fn create(sku: &str, name: &str, price: Money) -> ProductCommand {
        ProductCommand::CreateProduct {
            sku: sku.into(),
            name: name.into(),
            price,
        }
    }

    fn rename(name: &str) -> ProductCommand {
        ProductCommand::RenameProduct { name: name.into() }
    }

    fn reprice(price: Money) -> ProductCommand {
        ProductCommand::ChangeProductPrice { price }
    }

    fn invalid_field(field: &'static str, reason: &str) -> ProductError {
        ProductError::InvalidField {
            field,
            reason: reason.into(),
        }
    }

    fn expect_invalid(given: Vec<StoredProductEvent>, command: ProductCommand, field: &str) {
        let result = Fixture::with(())
            .given(given)
            .when(command.into())
            .inspect_result();
        match result {
            Err(ProductError::InvalidField { field: actual, .. }) => assert_eq!(actual, field),
            other => panic!("expected InvalidField on {field}, got {other:?}"),
        }
    }

    // --- wire format of the newtype -------------------------------------

    fn all_events() -> Vec<ProductEvent> {
        vec![
            ProductEvent::ProductCreated {
                sku: "SKU-0001".into(),
                name: "Espresso beans 1kg".into(),
                price: eur(2_450),
            },
            ProductEvent::ProductRenamed {
                name: "Espresso beans, 1 kg".into(),
            },
            ProductEvent::ProductPriceChanged { price: eur(2_590) },
            ProductEvent::ProductDiscontinued {},
        ]
    }

    #[test]
    fn stored_event_serializes_byte_identically_to_the_schema_event() {
        for event in all_events() {
            let schema_json = serde_json::to_vec(&event).unwrap();
            let stored_json = serde_json::to_vec(&Stored(event.clone())).unwrap();
            assert_eq!(stored_json, schema_json, "{event:?}");
            let decoded: StoredProductEvent = serde_json::from_slice(&schema_json).unwrap();
            assert_eq!(decoded.0, event);
        }
    }

    #[test]
    fn stored_event_decodes_the_golden_fixtures() {
        let fixtures = [
            include_str!("../../../schema/fixtures/events/ProductCreated.v1.json"),
            include_str!("../../../schema/fixtures/events/ProductRenamed.v1.json"),
            include_str!("../../../schema/fixtures/events/ProductPriceChanged.v1.json"),
            include_str!("../../../schema/fixtures/events/ProductDiscontinued.v1.json"),
        ];
        for (fixture, expected) in fixtures.iter().zip(all_events()) {
            let decoded: StoredProductEvent = serde_json::from_str(fixture).unwrap();
            assert_eq!(decoded.0, expected);
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
        assert_eq!(Product::TYPE, "Product");
        assert_eq!(Product::TYPE, schema::product::AGGREGATE_TYPE);
    }

    // --- create ------------------------------------------------------------

    #[test]
    fn create_emits_created() {
        Fixture::with(())
            .given_no_previous_events()
            .when(create("SKU-1", "Espresso beans", eur(2_450)).into())
            .then_expect_events(vec![created()]);
    }

    #[test]
    fn create_on_existing_product_is_rejected() {
        Fixture::with(())
            .given(vec![created()])
            .when(create("SKU-2", "Other", eur(1)).into())
            .then_expect_error(ProductError::AlreadyExists);
    }

    #[test]
    fn create_on_discontinued_product_is_rejected() {
        Fixture::with(())
            .given(vec![created(), discontinued()])
            .when(create("SKU-2", "Other", eur(1)).into())
            .then_expect_error(ProductError::AlreadyExists);
    }

    #[test]
    fn create_accepts_every_allowed_sku_character_and_the_maximum_length() {
        let sku = "aZ09-_.".to_owned() + &"x".repeat(MAX_SKU_LEN - 7);
        Fixture::with(())
            .given_no_previous_events()
            .when(create(&sku, "n", eur(1)).into())
            .then_expect_events(vec![ev(ProductEvent::ProductCreated {
                sku,
                name: "n".into(),
                price: eur(1),
            })]);
    }

    #[test]
    fn create_rejects_blank_sku() {
        for sku in ["", "   ", "\t"] {
            Fixture::with(())
                .given_no_previous_events()
                .when(create(sku, "n", eur(1)).into())
                .then_expect_error(invalid_field("sku", "must not be blank"));
        }
    }

    #[test]
    fn create_rejects_too_long_sku() {
        Fixture::with(())
            .given_no_previous_events()
            .when(create(&"x".repeat(MAX_SKU_LEN + 1), "n", eur(1)).into())
            .then_expect_error(invalid_field("sku", "must be at most 64 characters"));
    }

    #[test]
    fn create_rejects_sku_with_other_characters() {
        for sku in ["SKU 1", " SKU-1", "SKU-1 ", "SKU/1", "SKÜ", "SKU#1"] {
            Fixture::with(())
                .given_no_previous_events()
                .when(create(sku, "n", eur(1)).into())
                .then_expect_error(invalid_field(
                    "sku",
                    "may only contain ASCII letters, digits, '-', '_' and '.'",
                ));
        }
    }

    #[test]
    fn create_rejects_blank_name() {
        for name in ["", "  ", "\n\t"] {
            Fixture::with(())
                .given_no_previous_events()
                .when(create("SKU-1", name, eur(1)).into())
                .then_expect_error(invalid_field("name", "must not be blank"));
        }
    }

    #[test]
    fn create_rejects_too_long_name() {
        Fixture::with(())
            .given_no_previous_events()
            .when(create("SKU-1", &"n".repeat(MAX_NAME_LEN + 1), eur(1)).into())
            .then_expect_error(invalid_field("name", "must be at most 200 characters"));
    }

    #[test]
    fn name_length_counts_characters_not_bytes() {
        // 200 three-byte characters: 600 bytes, but within the limit.
        let name = "€".repeat(MAX_NAME_LEN);
        Fixture::with(())
            .given_no_previous_events()
            .when(create("SKU-1", &name, eur(1)).into())
            .then_expect_events(vec![ev(ProductEvent::ProductCreated {
                sku: "SKU-1".into(),
                name,
                price: eur(1),
            })]);
    }

    #[test]
    fn create_stores_the_name_as_given() {
        Fixture::with(())
            .given_no_previous_events()
            .when(create("SKU-1", "  Espresso  ", eur(1)).into())
            .then_expect_events(vec![ev(ProductEvent::ProductCreated {
                sku: "SKU-1".into(),
                name: "  Espresso  ".into(),
                price: eur(1),
            })]);
    }

    #[test]
    fn create_rejects_negative_price_and_accepts_zero() {
        Fixture::with(())
            .given_no_previous_events()
            .when(create("SKU-1", "n", eur(-1)).into())
            .then_expect_error(invalid_field("price.amount_minor", "must not be negative"));
        Fixture::with(())
            .given_no_previous_events()
            .when(create("SKU-1", "n", eur(0)).into())
            .then_expect_events(vec![ev(ProductEvent::ProductCreated {
                sku: "SKU-1".into(),
                name: "n".into(),
                price: eur(0),
            })]);
    }

    // --- commands on a product that does not exist -------------------------

    #[test]
    fn commands_other_than_create_need_an_existing_product() {
        for command in [
            rename("x"),
            reprice(eur(1)),
            ProductCommand::DiscontinueProduct,
        ] {
            Fixture::with(())
                .given_no_previous_events()
                .when(command.into())
                .then_expect_error(ProductError::NotFound);
        }
    }

    // --- rename ------------------------------------------------------------

    #[test]
    fn customers_cannot_change_the_catalog() {
        Fixture::with(())
            .given(vec![created()])
            .when(Guarded::from(rename("Mine now")).acting_for(Some(uuid::Uuid::from_u128(7))))
            .then_expect_error(ProductError::ForbiddenCustomer);
    }

    #[test]
    fn a_name_with_nul_is_rejected() {
        Fixture::with(())
            .given(vec![created()])
            .when(rename("nul\0byte").into())
            .then_expect_error(invalid_field("name", "must not contain U+0000 (NUL)"));
    }

    #[test]
    fn rename_emits_renamed() {
        Fixture::with(())
            .given(vec![created()])
            .when(rename("Espresso beans, 1 kg").into())
            .then_expect_events(vec![ev(ProductEvent::ProductRenamed {
                name: "Espresso beans, 1 kg".into(),
            })]);
    }

    #[test]
    fn rename_to_the_same_name_is_rejected() {
        Fixture::with(())
            .given(vec![created()])
            .when(rename("Espresso beans").into())
            .then_expect_error(ProductError::NameUnchanged);
    }

    #[test]
    fn rename_validates_the_name() {
        expect_invalid(vec![created()], rename(" "), "name");
        expect_invalid(vec![created()], rename(&"n".repeat(201)), "name");
    }

    #[test]
    fn rename_of_discontinued_product_is_rejected() {
        Fixture::with(())
            .given(vec![created(), discontinued()])
            .when(rename("New").into())
            .then_expect_error(ProductError::Discontinued);
    }

    // --- change price ------------------------------------------------------

    #[test]
    fn change_price_emits_price_changed() {
        Fixture::with(())
            .given(vec![created()])
            .when(reprice(eur(2_590)).into())
            .then_expect_events(vec![ev(ProductEvent::ProductPriceChanged {
                price: eur(2_590),
            })]);
    }

    #[test]
    fn change_price_to_the_same_amount_in_another_currency_is_a_change() {
        Fixture::with(())
            .given(vec![created()])
            .when(reprice(money(2_450, "USD")).into())
            .then_expect_events(vec![ev(ProductEvent::ProductPriceChanged {
                price: money(2_450, "USD"),
            })]);
    }

    #[test]
    fn change_price_to_the_same_price_is_rejected() {
        Fixture::with(())
            .given(vec![created()])
            .when(reprice(eur(2_450)).into())
            .then_expect_error(ProductError::PriceUnchanged);
    }

    #[test]
    fn change_price_rejects_negative_price() {
        Fixture::with(())
            .given(vec![created()])
            .when(reprice(eur(-5)).into())
            .then_expect_error(invalid_field("price.amount_minor", "must not be negative"));
    }

    #[test]
    fn change_price_of_discontinued_product_is_rejected() {
        Fixture::with(())
            .given(vec![created(), discontinued()])
            .when(reprice(eur(1)).into())
            .then_expect_error(ProductError::Discontinued);
    }

    // --- discontinue -------------------------------------------------------

    #[test]
    fn discontinue_emits_discontinued() {
        Fixture::with(())
            .given(vec![created()])
            .when(ProductCommand::DiscontinueProduct.into())
            .then_expect_events(vec![discontinued()]);
    }

    #[test]
    fn discontinue_twice_is_rejected() {
        Fixture::with(())
            .given(vec![created(), discontinued()])
            .when(ProductCommand::DiscontinueProduct.into())
            .then_expect_error(ProductError::AlreadyDiscontinued);
    }

    // --- version guard -----------------------------------------------------

    #[test]
    fn matching_expected_version_is_accepted() {
        Fixture::with(())
            .given(vec![created()])
            .when(Guarded::expecting(1, rename("New")))
            .then_expect_events(vec![ev(ProductEvent::ProductRenamed {
                name: "New".into(),
            })]);
        Fixture::with(())
            .given_no_previous_events()
            .when(Guarded::expecting(
                0,
                create("SKU-1", "Espresso beans", eur(2_450)),
            ))
            .then_expect_events(vec![created()]);
    }

    #[test]
    fn mismatching_expected_version_is_rejected_before_any_rule() {
        Fixture::with(())
            .given(vec![
                created(),
                ev(ProductEvent::ProductRenamed { name: "B".into() }),
            ])
            .when(Guarded::expecting(1, rename("C")))
            .then_expect_error(ProductError::VersionMismatch {
                expected: 1,
                actual: 2,
            });
        // The stale client learns about the conflict, not about a rule it
        // evaluated against state it never saw.
        Fixture::with(())
            .given(vec![created(), discontinued()])
            .when(Guarded::expecting(1, ProductCommand::DiscontinueProduct))
            .then_expect_error(ProductError::VersionMismatch {
                expected: 1,
                actual: 2,
            });
    }

    // --- state and classification ------------------------------------------

    #[test]
    fn apply_counts_versions_and_exposes_state() {
        let mut product = Product::default();
        assert_eq!(product.version(), 0);
        assert!(!product.exists());
        assert_eq!(product.name(), None);
        for event in [
            created(),
            ev(ProductEvent::ProductRenamed { name: "B".into() }),
            ev(ProductEvent::ProductPriceChanged { price: eur(9) }),
            discontinued(),
        ] {
            product.apply(event);
        }
        assert_eq!(product.version(), 4);
        assert!(product.exists());
        assert_eq!(product.sku(), Some("SKU-1"));
        assert_eq!(product.name(), Some("B"));
        assert_eq!(product.price(), Some(&eur(9)));
        assert!(product.is_discontinued());
    }

    #[test]
    fn snapshot_round_trips() {
        let mut product = Product::default();
        product.apply(created());
        let json = serde_json::to_string(&product).unwrap();
        assert_eq!(serde_json::from_str::<Product>(&json).unwrap(), product);
    }

    #[test]
    fn errors_are_classified_for_http() {
        assert_eq!(ProductError::NotFound.kind(), RuleKind::NotFound);
        assert_eq!(ProductError::AlreadyExists.kind(), RuleKind::Conflict);
        assert_eq!(
            ProductError::VersionMismatch {
                expected: 1,
                actual: 2
            }
            .kind(),
            RuleKind::StaleVersion
        );
        for violation in [
            invalid_field("sku", "x"),
            ProductError::Discontinued,
            ProductError::NameUnchanged,
            ProductError::PriceUnchanged,
            ProductError::AlreadyDiscontinued,
        ] {
            assert_eq!(violation.kind(), RuleKind::Violation, "{violation:?}");
        }
    }

    #[test]
    fn error_messages_name_the_field() {
        assert_eq!(
            invalid_field("sku", "must not be blank").to_string(),
            "sku must not be blank"
        );
        assert_eq!(
            ProductError::VersionMismatch {
                expected: 1,
                actual: 2
            }
            .to_string(),
            "expected version 1, but the product is at version 2"
        );
    }
}
