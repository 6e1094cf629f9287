//! The OpenAPI 3.1 document of command-service, generated from the code: the
//! `#[utoipa::path]` annotations of the handlers in [`crate::http`], the
//! request types there, the shared types of the `schema` crate, and the
//! additions of [`SECURITY_ADDON`] for what the protection layer answers.
//! The schemas of [`Problem`] and [`FieldError`] and the [`SecurityAddon`]
//! modifier are the `problem_details` crate's, shared with query-service.
//!
//! Served at `GET /openapi.json` and checked in as
//! `docs/openapi/command-service.json`; the test
//! `openapi::tests::checked_in_copy_is_current` fails when the two differ.
//! Regenerate the checked-in copy with
//! `UPDATE_OPENAPI=1 cargo test -p command-service --lib openapi`.
//!
//! A few types here are *mirrors*: documentation-only copies of types that
//! live in files this module does not own ([`Accepted`] of
//! [`crate::commands::Accepted`], [`RelayStatus`] of the `/health/relay`
//! body). Each has a unit test that serializes the real value and compares
//! its fields with the mirror's schema, so they cannot drift silently.

use problem_details::openapi::{header, string_matching, SecurityAddon};
use utoipa::openapi::header::Header;
use utoipa::openapi::{ObjectBuilder, Type};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

/// The error body of every response that is not a success, as the
/// annotations of the handlers name it (`body = crate::openapi::Problem`).
pub use problem_details::{FieldError, Problem};

/// Media type of every error body.
pub const PROBLEM_JSON: &str = problem_details::CONTENT_TYPE;

/// Paths without authentication, rate limiting or load shedding: probes,
/// metrics and this document. Every other path is an API operation.
pub const PUBLIC_PATHS: [&str; 5] = [
    "/health/live",
    "/health/ready",
    "/health/relay",
    "/metrics",
    "/openapi.json",
];

/// The scope a bearer token needs for every API operation of this service.
pub const REQUIRED_SCOPE: &str = "write";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "command-service",
        version = env!("CARGO_PKG_VERSION"),
        description = "The write side: validates commands against the `Product` and `Order` \
aggregates, appends their events to Postgres and relays them to Kafka. A command is answered \
`202 Accepted` as soon as its events are stored; read the result back from query-service \
(`Location`), sending the `consistency-token` header to see your own write.\n\n\
Errors are RFC 9457 problems (`application/problem+json`). Send `Idempotency-Key` to make a \
retry safe and `If-Match` (a version from an earlier `ETag`) to act only on the state you saw. \
Integers in bodies must be written as JSON integers: `1.0` or `1e3` is refused (400).",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0")
    ),
    paths(
        crate::http::create_product,
        crate::http::rename_product,
        crate::http::change_product_price,
        crate::http::discontinue_product,
        crate::http::place_order,
        crate::http::add_order_line,
        crate::http::remove_order_line,
        crate::http::confirm_order,
        crate::http::cancel_order,
        crate::http::ship_order,
        live,
        ready,
        relay_role,
        metrics,
        serve,
    ),
    components(schemas(
        Accepted,
        Problem,
        FieldError,
        RelayStatus,
        crate::http::CreateProduct,
        crate::http::RenameProduct,
        crate::http::ChangeProductPrice,
        crate::http::PlaceOrder,
        crate::http::CancelOrder,
        schema::money::Money,
        schema::order::OrderLine,
        schema::order::CancelledBy,
    )),
    modifiers(&SECURITY_ADDON),
    tags(
        (name = "products", description = "Commands on the `Product` aggregate."),
        (name = "orders", description = "Commands on the `Order` aggregate."),
        (name = "operations", description = "Probes, metrics and this document: no authentication."),
    )
)]
pub struct ApiDoc;

// `CHECKED_IN`, `document_json()` and `serve`, the handler of
// `GET /openapi.json` listed in `paths` above.
problem_details::openapi_document!(ApiDoc, "docs/openapi/command-service.json");

// Documentation of the routes whose handlers live in `startup.rs` and
// `metrics.rs`; these functions are never called.

/// Liveness probe
///
/// 200 as long as the process serves HTTP.
#[utoipa::path(
    get,
    path = "/health/live",
    operation_id = "live",
    tag = "operations",
    responses((status = 200, description = "Alive. Empty body."))
)]
#[allow(dead_code)]
fn live() {}

/// Readiness probe
///
/// Ready when the primary database answers.
#[utoipa::path(
    get,
    path = "/health/ready",
    operation_id = "ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: the primary database answers. Empty body."),
        (status = 503, description = "The primary database does not answer.",
            body = Problem, content_type = PROBLEM_JSON, headers(("Retry-After"))),
    )
)]
#[allow(dead_code)]
fn ready() {}

/// Outbox relay role
///
/// Which instance relays committed events to Kafka.
#[utoipa::path(
    get,
    path = "/health/relay",
    operation_id = "relayRole",
    tag = "operations",
    responses((status = 200, description = "This instance's relay role.", body = RelayStatus))
)]
#[allow(dead_code)]
fn relay_role() {}

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
        (status = 500, description = "The metrics could not be encoded."),
    )
)]
#[allow(dead_code)]
fn metrics() {}

// Mirror of `crate::commands::Accepted`.
/// What a successful command appended.
#[derive(ToSchema)]
pub struct Accepted {
    #[schema(inline)]
    pub aggregate_type: AggregateType,
    pub aggregate_id: Uuid,
    /// The aggregate's version after the command: the number of its events.
    /// Send it as `If-Match` to make the next command conditional.
    #[schema(minimum = 1)]
    pub version: i64,
    /// Global position of the command's last event in the event store.
    #[schema(minimum = 1)]
    pub position: i64,
    /// Opaque; send it as the `consistency-token` header of a read to see
    /// this write (same value as the response header).
    #[schema(pattern = r"^ct1\.[A-Za-z0-9_-]+$")]
    pub consistency_token: String,
}

/// The aggregate a command acted on.
#[derive(ToSchema)]
pub enum AggregateType {
    Product,
    Order,
}

// Mirror of the `{"role": ...}` JSON of `startup::relay_role`.
/// Which instance relays committed events to Kafka.
#[derive(ToSchema)]
pub struct RelayStatus {
    // No doc comment here: utoipa would wrap the inlined enum in an `allOf`.
    #[schema(inline)]
    pub role: RelayRole,
}

// Mirror of `crate::relay::RelayRole`.
/// `leader`: this instance relays; `standby`: another one holds the lease;
/// `disabled`: not configured to relay.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum RelayRole {
    Disabled,
    Standby,
    Leader,
}

/// What the protection layer answers on every API operation, the shared
/// responses and the response headers (see
/// [`problem_details::openapi::SecurityAddon`]). The 500 and 503 are also
/// what the handlers answer when the event store fails.
pub const SECURITY_ADDON: SecurityAddon = SecurityAddon {
    public_paths: &PUBLIC_PATHS,
    required_scope: REQUIRED_SCOPE,
    internal_server_error:
        "An unexpected failure of the event store or a bug; the problem says no more.",
    service_unavailable: "Try again later: the event store is unavailable, or the protection \
        layer refused the request (`/problems/overloaded`, `/problems/deadline-exceeded`, \
        `/problems/rate-limiter-unavailable`). A command abandoned at its deadline may still \
        have been committed: retry it with the same `Idempotency-Key`.",
    headers,
};

/// The response headers of this service's own operations (the protection
/// layer's are shared).
fn headers() -> Vec<(&'static str, Header)> {
    vec![
        (
            "Location",
            header(
                "Where the aggregate can be read: `{QUERY_PUBLIC_URL}/products/{id}` or \
                 `{QUERY_PUBLIC_URL}/orders/{id}` on query-service.",
                ObjectBuilder::new().schema_type(Type::String).format(Some(
                    utoipa::openapi::SchemaFormat::Custom("uri-reference".to_owned()),
                )),
            ),
        ),
        (
            "ETag",
            header(
                "The aggregate's version after the command, as a strong entity tag. \
                 Send it back as `If-Match` (with or without the quotes).",
                string_matching(r#"^"[0-9]+"$"#),
            ),
        ),
        (
            schema::consistency::HEADER,
            header(
                "Opaque token naming this write; send it as the `consistency-token` \
                 request header of a query-service read to see it.",
                string_matching(r"^ct1\.[A-Za-z0-9_-]+$"),
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use actix_web::test::{call_service, init_service, read_body, TestRequest};
    use actix_web::{web, App};
    use problem_details::openapi::testing::{
        check_checked_in_copy, check_operations_are_named, check_protection, check_references,
        keys, operations,
    };
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
            "UPDATE_OPENAPI=1 cargo test -p command-service --lib openapi",
        );
    }

    #[actix_web::test]
    async fn serves_the_generated_document_as_json() {
        let app = init_service(App::new().route("/openapi.json", web::get().to(serve))).await;
        let response =
            call_service(&app, TestRequest::get().uri("/openapi.json").to_request()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers().get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        let body = read_body(response).await;
        assert_eq!(body, document_json().as_bytes());
        assert_eq!(
            serde_json::from_slice::<Value>(&body).ok(),
            Some(generated())
        );
    }

    #[test]
    fn every_route_is_documented_once_with_an_id_and_summary() {
        let doc = generated();
        assert_eq!(doc["openapi"], "3.1.0");
        let routes: BTreeSet<(String, String)> = operations(&doc)
            .into_iter()
            .map(|(path, method, _)| (path, method))
            .collect();
        let expected: BTreeSet<(String, String)> = [
            ("/products", "post"),
            ("/products/{id}/rename", "post"),
            ("/products/{id}/change-price", "post"),
            ("/products/{id}/discontinue", "post"),
            ("/orders", "post"),
            ("/orders/{id}/lines", "post"),
            ("/orders/{id}/lines/{product_id}", "delete"),
            ("/orders/{id}/confirm", "post"),
            ("/orders/{id}/cancel", "post"),
            ("/orders/{id}/ship", "post"),
            ("/health/live", "get"),
            ("/health/ready", "get"),
            ("/health/relay", "get"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
        ]
        .into_iter()
        .map(|(p, m)| (p.to_owned(), m.to_owned()))
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
            "write",
            &["202", "400", "401", "403", "422", "429", "500", "503"],
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["bearerAuth"],
            serde_json::json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"]})
        );
    }

    #[test]
    fn every_reference_resolves_and_every_header_is_defined_once() {
        check_references(&generated());
    }

    #[test]
    fn command_bodies_refuse_unknown_fields_and_carry_the_domain_limits() {
        use crate::domain::order::{MAX_LINES, MAX_QUANTITY, MAX_REASON_LEN};
        use crate::domain::product::{MAX_NAME_LEN, MAX_SKU_LEN};

        let doc = generated();
        let schemas = &doc["components"]["schemas"];
        for name in [
            "CreateProduct",
            "RenameProduct",
            "ChangeProductPrice",
            "PlaceOrder",
            "CancelOrder",
        ] {
            assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
        }
        assert_eq!(
            schemas["CreateProduct"]["properties"]["sku"]["maxLength"],
            MAX_SKU_LEN
        );
        for name in ["CreateProduct", "RenameProduct"] {
            assert_eq!(
                schemas[name]["properties"]["name"]["maxLength"], MAX_NAME_LEN,
                "{name}"
            );
        }
        assert_eq!(
            schemas["PlaceOrder"]["properties"]["lines"]["maxItems"],
            MAX_LINES
        );
        assert_eq!(
            schemas["CancelOrder"]["properties"]["reason"]["maxLength"],
            MAX_REASON_LEN
        );
        assert_eq!(
            schemas["OrderLine"]["properties"]["quantity"]["maximum"],
            MAX_QUANTITY
        );
        assert_eq!(schemas["Money"]["properties"]["amount_minor"]["minimum"], 0);
    }

    /// The property names of a component schema.
    fn properties(doc: &Value, schema: &str) -> BTreeSet<String> {
        keys(&doc["components"]["schemas"][schema]["properties"])
    }

    #[test]
    fn accepted_mirror_matches_the_real_type() {
        let doc = generated();
        let schema = &doc["components"]["schemas"]["Accepted"];
        for (aggregate_type, version) in [
            (schema::product::AGGREGATE_TYPE, 1),
            (schema::order::AGGREGATE_TYPE, 7),
        ] {
            let real = crate::commands::Accepted::new(aggregate_type, Uuid::nil(), version, 42);
            let json = serde_json::to_value(&real).expect("json");
            assert_eq!(keys(&json), properties(&doc, "Accepted"));
            let required: BTreeSet<String> =
                serde_json::from_value(schema["required"].clone()).expect("required");
            assert_eq!(required, keys(&json));
            let types = schema["properties"]["aggregate_type"]["enum"]
                .as_array()
                .expect("enum");
            assert!(types.contains(&json["aggregate_type"]), "{json}");
        }
    }

    #[test]
    fn relay_status_mirror_matches_the_real_role() {
        use crate::relay::RelayRole as Real;

        let doc = generated();
        let schema = &doc["components"]["schemas"]["RelayStatus"]["properties"]["role"];
        let documented: BTreeSet<String> =
            serde_json::from_value(schema["enum"].clone()).expect("enum");
        let real: BTreeSet<String> = [Real::Disabled, Real::Standby, Real::Leader]
            .into_iter()
            .map(|role| serde_json::to_value(role).expect("json"))
            .map(|value| value.as_str().expect("a string").to_owned())
            .collect();
        assert_eq!(documented, real);
    }
}
