//! The OpenAPI 3.1 document of query-service, generated from the code: the
//! `#[utoipa::path]` annotations of the handlers in [`crate::routes`], the
//! response types there and in the `schema` crate, and the additions of
//! [`SECURITY_ADDON`] for what the protection layer answers. The schemas of
//! [`Problem`] and [`FieldError`] and the [`SecurityAddon`] modifier are the
//! `problem_details` crate's, shared with command-service.
//!
//! Served at `GET /openapi.json` and checked in as
//! `docs/openapi/query-service.json`; the test
//! `openapi::tests::checked_in_copy_is_current` fails when the two differ.
//! Regenerate the checked-in copy with
//! `UPDATE_OPENAPI=1 cargo test -p query-service --lib openapi`.
//!
//! A few types here are *mirrors*: documentation-only copies of types that
//! live in files this module does not own ([`Product`], [`OrderHistoryItem`]
//! and [`DailySales`] of [`crate::read_model`]) or of bodies built with `json!`
//! ([`Liveness`], [`Readiness`], [`DatabaseHealth`], [`NotReady`] of
//! [`crate::routes::health`]). Unit tests serialize real values and compare
//! their fields with the mirrors' schemas, so they cannot drift silently.

use chrono::{DateTime, NaiveDate, Utc};
use problem_details::openapi::{header, string_matching, SecurityAddon};
use utoipa::openapi::header::Header;
use utoipa::openapi::{ObjectBuilder, Type};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::conditional::{PRIVATE_REVALIDATE, PUBLIC_SHORT, READ_SOURCE_HEADER};

/// The error body of every response that is not a success, as the
/// annotations of the handlers name it (`body = crate::openapi::Problem`).
pub use problem_details::{FieldError, Problem};

/// Media type of every error body.
pub const PROBLEM_JSON: &str = problem_details::CONTENT_TYPE;

/// Paths without authentication, rate limiting or load shedding: probes,
/// metrics and this document. Every other path is an API operation.
pub const PUBLIC_PATHS: [&str; 4] = ["/health/live", "/health/ready", "/metrics", "/openapi.json"];

/// The scope a bearer token needs for every API operation of this service.
pub const REQUIRED_SCOPE: &str = "read";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "query-service",
        version = env!("CARGO_PKG_VERSION"),
        description = "The read side: order summaries, customer order histories, the product \
catalog and daily sales, served from Postgres read replicas behind two cache tiers. Data is \
eventually consistent with command-service; send a command's `consistency-token` to read \
your own write.\n\n\
Every `200` carries an `ETag` (send it as `If-None-Match` for a `304`), the `Cache-Control` \
policy of its resource and `x-read-source`, where the body came from. Errors are RFC 9457 \
problems (`application/problem+json`).",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0")
    ),
    paths(
        crate::routes::orders::get_order,
        crate::routes::customers::list_orders,
        crate::routes::products::list_products,
        crate::routes::products::get_product,
        crate::routes::reports::daily_sales,
        crate::routes::health::live,
        crate::routes::health::ready,
        metrics,
        serve,
    ),
    components(schemas(
        Problem,
        FieldError,
        Product,
        OrderHistoryItem,
        DailySales,
        Liveness,
        Readiness,
        DatabaseHealth,
        NotReady,
        crate::routes::products::ProductPage,
        crate::routes::customers::HistoryResponse,
        crate::routes::reports::DailySalesReport,
        schema::views::OrderSummary,
        schema::views::OrderSummaryLine,
        schema::views::OrderStatus,
        schema::money::Money,
    )),
    modifiers(&SECURITY_ADDON),
    tags(
        (name = "orders", description = "Order summaries."),
        (name = "customers", description = "Customers' order histories."),
        (name = "products", description = "The product catalog."),
        (name = "reports", description = "Sales reports."),
        (name = "operations", description = "Probes, metrics and this document: no authentication."),
    )
)]
pub struct ApiDoc;

// `CHECKED_IN`, `document_json()` and `serve`, the handler of
// `GET /openapi.json` listed in `paths` above.
problem_details::openapi_document!(ApiDoc, "docs/openapi/query-service.json");

// Documentation of the route whose handler lives in `metrics.rs`; never called.

/// Prometheus metrics
///
/// The Prometheus text exposition format (`text/plain; version=0.0.4`).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Every metric of this instance.", body = String,
            content_type = "text/plain"),
        (status = 500, description = "The metrics could not be encoded. Empty body."),
    )
)]
#[allow(dead_code)]
fn metrics() {}

// Mirror of `crate::read_model::Product`.
/// A product of the catalog.
#[derive(ToSchema)]
pub struct Product {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub price: schema::money::Money,
    /// Taken off sale for good.
    pub discontinued: bool,
    /// The number of the product's events folded in; the `ETag` is `"v{version}"`.
    #[schema(minimum = 1)]
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

// Mirror of `crate::read_model::OrderHistoryItem`.
/// One entry of a customer's order history: an event of one of their orders.
#[derive(ToSchema)]
pub struct OrderHistoryItem {
    pub occurred_at: DateTime<Utc>,
    pub order_id: Uuid,
    /// Version of the order this event produced.
    #[schema(minimum = 1)]
    pub version: i64,
    /// The event kind, as the projector recorded it (e.g. `OrderPlaced`).
    pub kind: String,
    /// The order total after this event.
    pub amount: schema::money::Money,
}

// Mirror of `crate::read_model::DailySales`.
/// Units and revenue of one product on one UTC day, in one currency. Both are
/// net of cancellations booked that day, so they can be negative.
#[derive(ToSchema)]
pub struct DailySales {
    pub day: NaiveDate,
    pub product_id: Uuid,
    /// ISO 4217 code.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    pub units: i64,
    /// Revenue in the currency's minor unit.
    pub revenue_minor: i64,
}

// Mirror of `crate::routes::health::live`'s JSON.
/// The process serves HTTP.
#[derive(ToSchema)]
pub struct Liveness {
    #[schema(pattern = "^ok$")]
    pub status: String,
}

// Mirror of the 200 JSON of `crate::routes::health::ready`.
/// A read would find a database now.
#[derive(ToSchema)]
pub struct Readiness {
    #[schema(pattern = "^ready$")]
    pub status: String,
    /// What the monitor knows of each database, replicas first.
    pub databases: Vec<DatabaseHealth>,
    /// Whether the Redis invalidation feed is connected (not a readiness
    /// condition: without it the caches expire by time only).
    pub invalidation_feed_up: bool,
}

// Mirror of the entries of `databases` in `crate::routes::health::ready`.
/// One database as the health monitor last saw it.
#[derive(ToSchema)]
pub struct DatabaseHealth {
    /// `replica-1`, `replica-2`, ... or `primary`.
    #[schema(pattern = "^(primary|replica-[0-9]+)$")]
    pub name: String,
    /// The last check (or read) succeeded.
    pub healthy: bool,
    /// Replication lag in milliseconds; `null` until measured.
    #[schema(minimum = 0, required = true)]
    pub lag_ms: Option<u64>,
    /// Projector messages the primary is ahead of this database; `null`
    /// until measured.
    #[schema(minimum = 0, required = true)]
    pub checkpoint_lag: Option<i64>,
}

// Mirror of the 503 problem of `crate::routes::health::ready`.
/// The `/problems/not-ready` problem: no read database qualifies.
#[derive(ToSchema)]
pub struct NotReady {
    #[schema(rename = "type", format = "uri-reference")]
    pub type_uri: String,
    pub title: String,
    #[schema(minimum = 503, maximum = 503)]
    pub status: u16,
    pub detail: String,
    /// What the monitor knows of each database, replicas first.
    pub databases: Vec<DatabaseHealth>,
}

/// What the protection layer answers on every API operation, the shared
/// responses and the response headers (see
/// [`problem_details::openapi::SecurityAddon`]). The 500 and 503 are also
/// what the handlers answer when the read databases fail.
pub const SECURITY_ADDON: SecurityAddon = SecurityAddon {
    public_paths: &PUBLIC_PATHS,
    required_scope: REQUIRED_SCOPE,
    internal_server_error: "The read model could not be queried (a failed query or a row that \
        does not decode); the problem says no more.",
    service_unavailable: "Try again later: no read database answered in time \
        (`/problems/read-model-unavailable`); with a `consistency-token`, none caught up with it \
        within `CONSISTENT_READ_TIMEOUT_MS` (`/problems/not-yet-consistent`); or the protection \
        layer refused the request (`/problems/overloaded`, `/problems/deadline-exceeded`, \
        `/problems/rate-limiter-unavailable`).",
    headers,
};

/// The response headers of this service's own operations (the protection
/// layer's are shared).
fn headers() -> Vec<(&'static str, Header)> {
    vec![
        (
            "ETag",
            header(
                "Validator of the body: `\"v{version}\"` (strong) for an order or a product, \
                 `W/\"{hash}\"` (weak) for a list or report. Send it as `If-None-Match`.",
                string_matching(r#"^("v[0-9]+"|W/"[0-9a-f]{24}")$"#),
            ),
        ),
        (
            "Cache-Control",
            header(
                "`private, no-cache` for orders, histories and reports (any cache must \
                 revalidate, which is a cheap 304); `public, max-age=5` for the catalog.",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some([PRIVATE_REVALIDATE, PUBLIC_SHORT])),
            ),
        ),
        (
            READ_SOURCE_HEADER,
            header(
                "Where the body came from: `local` or `redis` (a cache tier), `replica-N` or \
                 `primary` (a database).",
                string_matching("^(local|redis|primary|replica-[0-9]+)$"),
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use actix_web::test::{call_service, init_service, read_body, TestRequest};
    use actix_web::{web, App, HttpResponse};
    use problem_details::openapi::testing::{
        check_checked_in_copy, check_operations_are_named, check_protection, check_references,
        keys, operations,
    };
    use schema::money::{Currency, Money};
    use serde_json::Value;

    use super::*;

    fn generated() -> Value {
        serde_json::from_str(document_json()).expect("the document is JSON")
    }

    #[test]
    fn checked_in_copy_is_current() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the crate is in the workspace");
        check_checked_in_copy(
            document_json(),
            &workspace.join(CHECKED_IN),
            "UPDATE_OPENAPI=1 cargo test -p query-service --lib openapi",
        );
    }

    #[actix_web::test]
    async fn serves_the_generated_document_as_json() {
        let app = init_service(App::new().configure(crate::routes::public)).await;
        let response =
            call_service(&app, TestRequest::get().uri("/openapi.json").to_request()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers().get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        let body = read_body(response).await;
        assert_eq!(body, document_json().as_bytes());
        let app = init_service(App::new().route("/openapi.json", web::get().to(serve))).await;
        let response =
            call_service(&app, TestRequest::get().uri("/openapi.json").to_request()).await;
        assert_eq!(read_body(response).await, document_json().as_bytes());
    }

    #[test]
    fn every_route_is_documented_once_with_an_id_and_summary() {
        let doc = generated();
        assert_eq!(doc["openapi"], "3.1.0");
        let routes: BTreeSet<String> = operations(&doc)
            .into_iter()
            .map(|(path, method, _)| format!("{method} {path}"))
            .collect();
        let expected: BTreeSet<String> = [
            "get /orders/{id}",
            "get /customers/{id}/orders",
            "get /products",
            "get /products/{id}",
            "get /reports/daily-sales",
            "get /health/live",
            "get /health/ready",
            "get /metrics",
            "get /openapi.json",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(routes, expected);
        check_operations_are_named(&doc);
    }

    #[test]
    fn api_operations_are_protected_and_public_ones_are_not() {
        let doc = generated();
        check_protection(
            &doc,
            &PUBLIC_PATHS,
            "read",
            &["200", "304", "400", "401", "403", "429", "500", "503"],
        );
        for (path, method, operation) in operations(&doc) {
            if PUBLIC_PATHS.contains(&path.as_str()) {
                continue;
            }
            for status in ["200", "304"] {
                let headers = keys(&operation["responses"][status]["headers"]);
                let expected: BTreeSet<String> = ["ETag", "Cache-Control", READ_SOURCE_HEADER]
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                assert_eq!(headers, expected, "{method} {path} {status}");
            }
        }
    }

    #[test]
    fn every_reference_resolves_and_every_header_is_defined_once() {
        check_references(&generated());
    }

    #[test]
    fn query_parameters_carry_the_handlers_limits() {
        use crate::params::MAX_CURSOR_LEN;
        use crate::routes::{customers, products, reports};

        let doc = generated();
        let parameter = |path: &str, name: &str| -> Value {
            doc["paths"][path]["get"]["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{path} has no parameter {name}"))
                .clone()
        };
        for (path, max) in [
            ("/products", products::MAX_LIMIT),
            ("/customers/{id}/orders", customers::MAX_LIMIT),
            ("/reports/daily-sales", reports::MAX_LIMIT),
        ] {
            let limit = parameter(path, "limit");
            assert_eq!(limit["schema"]["minimum"], 1, "{path}");
            assert_eq!(limit["schema"]["maximum"], max, "{path}");
            assert_eq!(limit["required"], false, "{path}");
        }
        for path in ["/customers/{id}/orders", "/reports/daily-sales"] {
            assert_eq!(
                parameter(path, "after")["schema"]["maxLength"],
                MAX_CURSOR_LEN,
                "{path}"
            );
        }
        for name in ["from", "to"] {
            let date = parameter("/reports/daily-sales", name);
            assert_eq!(date["required"], true);
            assert_eq!(date["schema"]["format"], "date");
            let time = parameter("/customers/{id}/orders", name);
            assert_eq!(time["required"], false);
            assert_eq!(time["schema"]["format"], "date-time");
        }
        // Optional parameters are absent or valid, never `null`.
        for (path, _, operation) in operations(&doc) {
            for p in operation["parameters"].as_array().into_iter().flatten() {
                assert!(
                    !p["schema"].to_string().contains("null"),
                    "{path} {}: {}",
                    p["name"],
                    p["schema"]
                );
            }
        }
    }

    /// The property names of a component schema.
    fn properties(doc: &Value, schema: &str) -> BTreeSet<String> {
        keys(&doc["components"]["schemas"][schema]["properties"])
    }

    fn eur(amount_minor: i64) -> Money {
        Money::new(amount_minor, Currency::try_from("EUR").expect("currency"))
    }

    #[test]
    fn read_model_mirrors_match_the_real_types() {
        let doc = generated();
        let at = Utc::now();
        let product = crate::read_model::Product {
            product_id: Uuid::nil(),
            sku: "SKU-1".to_owned(),
            name: "Tea".to_owned(),
            price: eur(250),
            discontinued: false,
            version: 1,
            updated_at: at,
        };
        let item = crate::read_model::OrderHistoryItem {
            occurred_at: at,
            order_id: Uuid::nil(),
            version: 1,
            kind: "OrderPlaced".to_owned(),
            amount: eur(500),
        };
        let sales = crate::read_model::DailySales {
            day: at.date_naive(),
            product_id: Uuid::nil(),
            currency: "EUR".to_owned(),
            units: -1,
            revenue_minor: -250,
        };
        for (schema, json) in [
            ("Product", serde_json::to_value(&product)),
            ("OrderHistoryItem", serde_json::to_value(&item)),
            ("DailySales", serde_json::to_value(&sales)),
        ] {
            let json = json.expect("json");
            assert_eq!(keys(&json), properties(&doc, schema), "{schema}");
            let required: BTreeSet<String> =
                serde_json::from_value(doc["components"]["schemas"][schema]["required"].clone())
                    .expect("required");
            assert_eq!(required, keys(&json), "{schema}");
        }
    }

    #[test]
    fn page_bodies_always_name_next_after() {
        let doc = generated();
        for schema in ["ProductPage", "HistoryResponse", "DailySalesReport"] {
            let required = &doc["components"]["schemas"][schema]["required"];
            assert!(
                required
                    .as_array()
                    .is_some_and(|r| r.contains(&Value::from("next_after"))),
                "{schema}: {required}"
            );
        }
    }

    #[actix_web::test]
    async fn health_mirrors_match_the_real_bodies() {
        let doc = generated();
        let live = crate::routes::health::live().await;
        let body: Value = serde_json::from_slice(&read_body_of(live).await).expect("json");
        assert_eq!(keys(&body), properties(&doc, "Liveness"));
        assert_eq!(body["status"], "ok");

        // Nothing checked yet, so no database qualifies: the 503 problem.
        let config = crate::config::Config::new(
            "postgres://app:app@127.0.0.1:1/app",
            vec!["postgres://app:app@127.0.0.1:1/app".to_owned()],
            "redis://127.0.0.1:1/",
            access_control::AuthConfig::hs256("a secret of at least thirty-two bytes", "i", "a")
                .expect("secret"),
        );
        let state = crate::startup::State::new(&config).expect("state");
        let response = crate::routes::health::ready(
            web::Data::from(state.router.clone()),
            web::Data::from(state.feed.clone()),
        )
        .await;
        assert_eq!(response.status(), 503);
        let body: Value = serde_json::from_slice(&read_body_of(response).await).expect("json");
        assert_eq!(keys(&body), properties(&doc, "NotReady"));
        let databases = body["databases"].as_array().expect("databases");
        assert_eq!(databases.len(), 2);
        for database in databases {
            assert_eq!(keys(database), properties(&doc, "DatabaseHealth"));
        }
        // The 200 body shares the `databases` entries; its other members are
        // pinned here as the handler's `json!` names them.
        let ready: BTreeSet<String> = ["status", "databases", "invalidation_feed_up"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(properties(&doc, "Readiness"), ready);
    }

    async fn read_body_of(response: HttpResponse) -> actix_web::web::Bytes {
        actix_web::body::to_bytes(response.into_body())
            .await
            .unwrap_or_default()
    }
}
