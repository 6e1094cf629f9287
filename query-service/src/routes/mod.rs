//! HTTP handlers, one module per resource. Each handler extracts and
//! validates the request, makes one call, and shapes the response.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use problem_details::Problem;

pub mod customers;
pub mod health;
pub mod orders;
pub mod products;
pub mod reports;

/// Registers the read API (behind the protection layer: a `read` token,
/// rate limits, shedding). The app must also hold the shared state
/// ([`crate::startup::State::register`]).
pub fn api(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/orders/{id}", orders::get_order))
        .service(get("/customers/{id}/orders", customers::list_orders))
        .service(get("/products", products::list_products))
        .service(get("/products/{id}", products::get_product))
        .service(get("/reports/daily-sales", reports::daily_sales));
}

/// Registers what must answer without a token and under load: probes,
/// metrics and the API document.
pub fn public(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/health/live", health::live))
        .service(get("/health/ready", health::ready))
        .service(get("/metrics", crate::metrics::scrape))
        .service(get("/openapi.json", crate::openapi::serve));
}

// Documentation shared by the `#[utoipa::path]` annotations of the handlers.
// Each handler lists every status it can answer;
// `crate::openapi::SECURITY_ADDON` adds 401, 403, 429, 500 and 503.

/// The request headers of a document read (`GET /orders/{id}`,
/// `GET /products/{id}`), as documented: the handlers read them from the
/// request. Never constructed.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct DocumentReadHeaders {
    /// Entity tags of copies the client holds (or `*`): 304 without a body
    /// when one matches the current `ETag` (weak comparison).
    #[param(rename = "If-None-Match", value_type = String, required = false)]
    pub if_none_match: Option<String>,
    /// `no-cache` or `no-store` skips the server's caches: the document is read
    /// from a database. Other directives are ignored.
    #[param(rename = "Cache-Control", value_type = String, required = false)]
    pub cache_control: Option<String>,
    /// The token of a command's 202: answer only with data that reflects that
    /// command, waiting up to `CONSISTENT_READ_TIMEOUT_MS` for it (then 503
    /// `/problems/not-yet-consistent`). 400 if it is not a token of this
    /// system.
    #[param(
        rename = "consistency-token",
        value_type = String,
        required = false,
        pattern = r"^ct1\.[A-Za-z0-9_-]+$"
    )]
    pub consistency_token: Option<String>,
}

/// The request headers of a list or report read, as documented. Never
/// constructed.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct ListReadHeaders {
    /// Entity tags of copies the client holds (or `*`): 304 without a body
    /// when one matches the current `ETag` (weak comparison).
    #[param(rename = "If-None-Match", value_type = String, required = false)]
    pub if_none_match: Option<String>,
    /// The token of a command's 202: answer only from a database that
    /// reflects that command, waiting up to `CONSISTENT_READ_TIMEOUT_MS` for
    /// one (then 503 `/problems/not-yet-consistent`). 400 if it is not a
    /// token of this system.
    #[param(
        rename = "consistency-token",
        value_type = String,
        required = false,
        pattern = r"^ct1\.[A-Za-z0-9_-]+$"
    )]
    pub consistency_token: Option<String>,
}

/// 304 of every read.
pub(crate) const NOT_MODIFIED: &str = "Not modified: `If-None-Match` matches the current \
`ETag`. No body.";
/// 400 of a document read.
pub(crate) const BAD_DOCUMENT_READ: &str = "An id that is not a UUID \
(`/problems/invalid-path`), or a `consistency-token` that is not a token of this system \
(`/problems/invalid-consistency-token`).";

/// A GET-only resource. Its default service answers other methods with a 405
/// problem; without it actix would send an empty 405 body.
fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(web::to(method_not_allowed))
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    let mut response = Problem::new(StatusCode::METHOD_NOT_ALLOWED)
        .with_detail(format!("{} is not allowed on {}", req.method(), req.path()))
        .to_response();
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
    response
}

#[cfg(test)]
mod tests {
    //! Routing, validation and failure paths, against a replica and a Redis
    //! that are not there (nothing listens on port 1). Reads that succeed are
    //! covered by the end-to-end suite, which runs the real stack.

    use actix_web::http::header::HeaderMap;
    use actix_web::http::{header, StatusCode};
    use actix_web::{test, web, App, HttpMessage};
    use serde_json::Value;

    use crate::config::Config;
    use crate::startup::State;

    async fn call(method: &str, uri: &str) -> (StatusCode, HeaderMap, Value) {
        let config = Config {
            // sqlx retries a refused connection until this budget runs out.
            read_attempt_timeout: std::time::Duration::from_millis(50),
            ..Config::new(
                "postgres://app:app@127.0.0.1:1/app",
                vec!["postgres://app:app@127.0.0.1:1/app".to_owned()],
                "redis://127.0.0.1:1/",
                crate::config::test_auth(),
            )
        };
        let state = State::new(&config).expect("state");
        // What the monitor would find: nothing answers.
        state.router.check_all().await;
        let app = test::init_service(
            App::new()
                .app_data(problem_details::path_config())
                .app_data(problem_details::query_config())
                .configure(|cfg| state.register(cfg))
                .configure(super::public)
                .configure(super::api)
                .default_service(web::to(problem_details::route_not_found)),
        )
        .await;
        let req = test::TestRequest::default()
            .method(method.parse().expect("method"))
            .uri(uri)
            .to_request();
        // What the auth layer (not built here) leaves for the handlers: a
        // back-office token, not limited to one customer.
        req.extensions_mut().insert(access_control::Principal {
            subject: "tests".to_owned(),
            scopes: access_control::Scope::ALL.into_iter().collect(),
            customer_id: None,
        });
        let response = test::call_service(&app, req).await;
        let (status, headers) = (response.status(), response.headers().clone());
        let body = test::read_body(response).await;
        (
            status,
            headers,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    fn is_problem(headers: &HeaderMap) -> bool {
        headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == problem_details::CONTENT_TYPE.as_bytes())
    }

    const ORDER: &str = "/orders/00000000-0000-0000-0000-000000000001";
    const CUSTOMER: &str = "/customers/00000000-0000-0000-0000-000000000002/orders";

    #[actix_web::test]
    async fn client_errors_are_problems() {
        let cases = [
            ("GET", "/nowhere", StatusCode::NOT_FOUND),
            ("POST", ORDER, StatusCode::METHOD_NOT_ALLOWED),
            ("GET", "/orders/not-a-uuid", StatusCode::BAD_REQUEST),
            ("GET", "/products?limit=-1", StatusCode::BAD_REQUEST),
            ("GET", "/products?limit=0", StatusCode::BAD_REQUEST),
            ("GET", "/products?limit=201", StatusCode::BAD_REQUEST),
            (
                "GET",
                &format!("{CUSTOMER}?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z"),
                StatusCode::BAD_REQUEST,
            ),
            (
                "GET",
                &format!("{CUSTOMER}?from=2024-01-01T00:00:00Z&to=2026-01-01T00:00:00Z"),
                StatusCode::BAD_REQUEST,
            ),
            (
                "GET",
                &format!("{CUSTOMER}?from=yesterday"),
                StatusCode::BAD_REQUEST,
            ),
            (
                "GET",
                "/reports/daily-sales?to=2026-01-01",
                StatusCode::BAD_REQUEST,
            ),
            (
                "GET",
                "/reports/daily-sales?from=2024-01-01&to=2025-01-01",
                StatusCode::BAD_REQUEST,
            ),
            (
                "GET",
                &format!("{CUSTOMER}?limit=0"),
                StatusCode::BAD_REQUEST,
            ),
            (
                "GET",
                &format!("{CUSTOMER}?limit=-1"),
                StatusCode::BAD_REQUEST,
            ),
            ("GET", &format!("{CUSTOMER}?after="), StatusCode::BAD_REQUEST),
            (
                "GET",
                &format!("{CUSTOMER}?after=not%20a%20cursor"),
                StatusCode::BAD_REQUEST,
            ),
            // base64url of "x|y|z": three fields, none of them valid.
            (
                "GET",
                &format!("{CUSTOMER}?after=eHx5fHo"),
                StatusCode::BAD_REQUEST,
            ),
            // A daily-sales cursor is not one of the order history.
            (
                "GET",
                &format!(
                    "{CUSTOMER}?after=MjAyNi0wMS0wMnwwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMGFiY2R8RVVS"
                ),
                StatusCode::BAD_REQUEST,
            ),
            // A valid history cursor, padded: not the canonical spelling.
            (
                "GET",
                &format!(
                    "{CUSTOMER}?after=MjAyNi0wMS0wMlQwMzowNDowNS4xMjM0NTZafDAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMTIzNHw3%3D"
                ),
                StatusCode::BAD_REQUEST,
            ),
            (
                "GET",
                &format!("{CUSTOMER}?after={}", "A".repeat(300)),
                StatusCode::BAD_REQUEST,
            ),
            (
                "GET",
                "/reports/daily-sales?from=2026-01-01&to=2026-01-31&limit=0",
                StatusCode::BAD_REQUEST,
            ),
            (
                "GET",
                "/reports/daily-sales?from=2026-01-01&to=2026-01-31&limit=many",
                StatusCode::BAD_REQUEST,
            ),
            (
                "GET",
                "/reports/daily-sales?from=2026-01-01&to=2026-01-31&after=",
                StatusCode::BAD_REQUEST,
            ),
            (
                "GET",
                "/reports/daily-sales?from=2026-01-01&to=2026-01-31&after=eHx5fHo",
                StatusCode::BAD_REQUEST,
            ),
            // An order-history cursor is not one of the report.
            (
                "GET",
                "/reports/daily-sales?from=2026-01-01&to=2026-01-31&after=MjAyNi0wMS0wMlQwMzowNDowNS4xMjM0NTZafDAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMTIzNHw3",
                StatusCode::BAD_REQUEST,
            ),
            (
                "GET",
                &format!(
                    "/reports/daily-sales?from=2026-01-01&to=2026-01-31&after={}",
                    "A".repeat(300)
                ),
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (method, uri, status) in cases {
            let (actual, headers, body) = call(method, uri).await;
            assert_eq!(actual, status, "{method} {uri}: {body}");
            assert!(is_problem(&headers), "{method} {uri}");
            assert_eq!(body["status"], status.as_u16(), "{method} {uri}");
        }
    }

    #[actix_web::test]
    async fn liveness_does_not_need_a_database() {
        let (status, _, body) = call("GET", "/health/live").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ok");
    }

    #[actix_web::test]
    async fn unreachable_databases_are_503_with_retry_after() {
        for uri in ["/health/ready", ORDER, "/products", CUSTOMER] {
            let (status, headers, body) = call("GET", uri).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {body}");
            assert!(is_problem(&headers), "{uri}");
            assert_eq!(
                headers.get(header::RETRY_AFTER).map(|v| v.as_bytes()),
                Some(&b"1"[..]),
                "{uri}"
            );
        }
    }
}
