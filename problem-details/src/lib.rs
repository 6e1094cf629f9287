//! RFC 9457 "Problem Details for HTTP APIs" as actix-web responses.
//!
//! Every error either HTTP service returns is a [`Problem`] with the media type
//! `application/problem+json`. The extractor configs here turn actix's own
//! rejections (bad JSON, bad path, bad query, oversize body) into problems too,
//! so no error leaves a service as plain text.
//!
//! [`openapi`] holds the OpenAPI parts the services' documents share: the
//! schemas of [`Problem`] and [`FieldError`], the modifier documenting
//! what the protection layer answers, and [`openapi_document!`], how a
//! service serves its document (with [`openapi::testing`], how its tests
//! check it).

pub mod openapi;

use std::future::Future;
use std::pin::Pin;

use actix_web::body::{self, BodyStream};
use actix_web::dev::{Decompress, Payload};
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::header::{ContentLength, Header};
use actix_web::http::{header, StatusCode};
use actix_web::{mime, web, FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

/// The media type of every error body.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// One RFC 9457 problem. `type` defaults to `about:blank`, in which case the
/// title is the HTTP reason phrase; services set a specific `type` URI and
/// title when the client can act on the distinction.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Extension members (e.g. `errors` for per-field validation failures).
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
    #[serde(skip)]
    retry_after_secs: Option<u64>,
}

/// One invalid field of a request.
// Listed under the `errors` extension (`Problem::with_field_errors`). The
// doc comments are also the OpenAPI schema's descriptions.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    /// Path of the field in the request body, e.g. `lines[0].quantity`.
    pub field: String,
    pub detail: String,
}

impl Problem {
    /// A problem of type `about:blank` whose title is the status' reason phrase.
    pub fn new(status: StatusCode) -> Self {
        Self {
            type_uri: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: None,
            extensions: Map::new(),
            retry_after_secs: None,
        }
    }

    /// A problem with its own `type` URI (relative URIs are fine) and title.
    pub fn typed(status: StatusCode, type_uri: &str, title: &str) -> Self {
        Self {
            type_uri: type_uri.to_owned(),
            title: title.to_owned(),
            ..Self::new(status)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_extension(mut self, name: &str, value: impl Serialize) -> Self {
        // Serializing plain data into a Value cannot fail; a failure would be a
        // programming error in the caller's type, so it degrades to null.
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        self.extensions.insert(name.to_owned(), value);
        self
    }

    /// Per-field validation failures, under the `errors` extension.
    pub fn with_field_errors(self, errors: Vec<FieldError>) -> Self {
        self.with_extension("errors", errors)
    }

    /// Adds a `Retry-After` header (seconds) to the response.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_secs = Some(seconds);
        self
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn to_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, CONTENT_TYPE));
        if let Some(seconds) = self.retry_after_secs {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.json(self)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{} ({}): {detail}", self.title, self.status),
            None => write!(f, "{} ({})", self.title, self.status),
        }
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        Problem::status_code(self)
    }

    fn error_response(&self) -> HttpResponse {
        self.to_response()
    }
}

/// JSON body extractor settings: size limit and problem+json rejections
/// (413 for oversize bodies, 415 for a wrong content type, 400 otherwise).
pub fn json_config(limit_bytes: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit_bytes)
        .error_handler(|err, _req| json_payload_problem(&err).into())
}

// Shared by `json_config` and the `Json` extractor so that swapping one for the
// other cannot change how a bad body is answered.
fn json_payload_problem(err: &JsonPayloadError) -> Problem {
    match err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE).with_detail(err.to_string())
        }
        JsonPayloadError::ContentType => Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .with_detail("expected Content-Type: application/json"),
        JsonPayloadError::Deserialize(e) => Problem::typed(
            StatusCode::BAD_REQUEST,
            "/problems/malformed-body",
            "Malformed request body",
        )
        .with_detail(e.to_string()),
        _ => Problem::typed(
            StatusCode::BAD_REQUEST,
            "/problems/malformed-body",
            "Malformed request body",
        )
        .with_detail(err.to_string()),
    }
}

/// Deepest nesting of arrays and objects the [`Json`] extractor accepts by
/// default. Real payloads of these services nest a few levels; the bound keeps
/// a small body from costing deep recursion in the parser.
pub const MAX_JSON_DEPTH: usize = 32;

/// Rejects `body` with a 400 problem of type `/problems/json-too-deep` when its
/// arrays and objects nest deeper than `max_depth`.
///
/// This is a byte scan, not a parse: it only counts `[`/`{` against `]`/`}`
/// outside string literals, so it runs before (and is much cheaper than)
/// deserialization. Malformed JSON that is not too deep passes and is left
/// for the parser to reject.
pub fn check_json_depth(body: &[u8], max_depth: usize) -> Result<(), Problem> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(Problem::typed(
                        StatusCode::BAD_REQUEST,
                        "/problems/json-too-deep",
                        "JSON nested too deeply",
                    )
                    .with_detail(format!(
                        "arrays and objects may nest at most {max_depth} levels deep"
                    )));
                }
            }
            // Unbalanced closers are a syntax error for the parser to report.
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Limits of the [`Json`] extractor, registered with `App::app_data` (or
/// `web::Data`). Without it the extractor uses actix's default 2 MiB body
/// limit and [`MAX_JSON_DEPTH`].
///
/// `web::JsonConfig` keeps its limit private, so [`json_config`] cannot tell
/// [`Json`] about it: register both with the same byte limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    max_bytes: usize,
    max_depth: usize,
}

impl JsonLimits {
    /// actix-web's own default for `web::Json`.
    const DEFAULT_MAX_BYTES: usize = 2_097_152;

    /// At most `max_bytes` of (decompressed) body and [`MAX_JSON_DEPTH`] levels.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            max_depth: MAX_JSON_DEPTH,
        }
    }

    /// Overrides the nesting limit.
    pub fn with_max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }

    fn from_req(req: &HttpRequest) -> Self {
        req.app_data::<Self>()
            .copied()
            .or_else(|| req.app_data::<web::Data<Self>>().map(|d| *d.get_ref()))
            .unwrap_or_default()
    }
}

impl Default for JsonLimits {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_BYTES)
    }
}

/// Drop-in replacement for `web::Json<T>` as an extractor that also bounds the
/// nesting depth of the body (see [`check_json_depth`]).
///
/// Rejections are the same problems [`json_config`] produces: 415 without a
/// JSON `Content-Type`, 413 over the [`JsonLimits`] byte limit, 400
/// `/problems/malformed-body` for bodies that do not deserialize; plus 400
/// `/problems/json-too-deep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    /// The deserialized body.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limits = JsonLimits::from_req(req);
        // Same order of checks as actix's `JsonBody`: content type, declared
        // length, then the bytes actually received.
        if let Err(err) = check_json_head(req, limits.max_bytes) {
            return Box::pin(std::future::ready(Err(json_payload_problem(&err).into())));
        }
        let stream = Decompress::from_headers(payload.take(), req.headers());
        Box::pin(async move {
            let body = match body::to_bytes_limited(BodyStream::new(stream), limits.max_bytes).await
            {
                Ok(Ok(body)) => body,
                Ok(Err(err)) => {
                    return Err(json_payload_problem(&JsonPayloadError::Payload(err)).into())
                }
                Err(_) => {
                    let err = JsonPayloadError::Overflow {
                        limit: limits.max_bytes,
                    };
                    return Err(json_payload_problem(&err).into());
                }
            };
            check_json_depth(&body, limits.max_depth)?;
            serde_json::from_slice(&body)
                .map(Json)
                .map_err(|e| json_payload_problem(&JsonPayloadError::Deserialize(e)).into())
        })
    }
}

fn check_json_head(req: &HttpRequest, limit: usize) -> Result<(), JsonPayloadError> {
    let is_json = match req.mime_type() {
        Ok(Some(mime)) => mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON),
        _ => false,
    };
    if !is_json {
        return Err(JsonPayloadError::ContentType);
    }
    if let Ok(length) = ContentLength::parse(req) {
        let length = length.into_inner();
        if length > limit {
            return Err(JsonPayloadError::OverflowKnownLength { length, limit });
        }
    }
    Ok(())
}

/// Path extractor settings: a path segment that does not parse (e.g. an id
/// that is not a UUID) is a 400 problem.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err: PathError, _req| {
        Problem::typed(
            StatusCode::BAD_REQUEST,
            "/problems/invalid-path",
            "Invalid path parameter",
        )
        .with_detail(err.to_string())
        .into()
    })
}

/// Query-string extractor settings: unparsable parameters are a 400 problem.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err: QueryPayloadError, _req| {
        Problem::typed(
            StatusCode::BAD_REQUEST,
            "/problems/invalid-query",
            "Invalid query parameter",
        )
        .with_detail(err.to_string())
        .into()
    })
}

/// Default service for unknown routes: 404 as problem+json instead of an empty body.
pub async fn route_not_found(req: HttpRequest) -> HttpResponse {
    Problem::new(StatusCode::NOT_FOUND)
        .with_detail(format!("no route for {} {}", req.method(), req.path()))
        .to_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_rfc_9457_with_extensions() {
        let problem = Problem::typed(StatusCode::UNPROCESSABLE_ENTITY, "/problems/x", "X")
            .with_detail("d")
            .with_field_errors(vec![FieldError {
                field: "lines[0].quantity".into(),
                detail: "must be > 0".into(),
            }]);
        let json = serde_json::to_value(&problem).expect("json");
        assert_eq!(json["type"], "/problems/x");
        assert_eq!(json["status"], 422);
        assert_eq!(json["errors"][0]["field"], "lines[0].quantity");
    }

    #[test]
    fn response_has_problem_media_type_and_retry_after() {
        let response = Problem::new(StatusCode::SERVICE_UNAVAILABLE)
            .with_retry_after(2)
            .to_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(CONTENT_TYPE.as_bytes())
        );
        assert_eq!(
            response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"2"[..])
        );
    }

    #[test]
    fn depth_check_counts_brackets_outside_strings_only() {
        assert!(check_json_depth(br#"{"a":[1,{"b":[]}]}"#, 4).is_ok());
        assert!(check_json_depth(br#"{"a":[1,{"b":[]}]}"#, 3).is_err());
        // Brackets and escaped quotes inside strings are text, not nesting.
        assert!(check_json_depth(br#"{"a":"[[[{{{\"[[[["}"#, 1).is_ok());
        assert!(check_json_depth(br#"["\\",[[]]]"#, 2).is_err());
        // Depth is the maximum reached, not the total count of brackets.
        assert!(check_json_depth(b"[[],[],[],[]]", 2).is_ok());
        let problem = check_json_depth(&[b'['; 33], MAX_JSON_DEPTH).expect_err("too deep");
        assert_eq!(problem.status, 400);
        assert_eq!(problem.type_uri, "/problems/json-too-deep");
    }

    mod json_extractor {
        use actix_web::{test, web, App, HttpResponse};
        use serde::Deserialize;

        use super::super::{json_config, Json, JsonLimits, MAX_JSON_DEPTH};

        #[derive(Deserialize)]
        struct Body {
            #[allow(dead_code)]
            value: serde_json::Value,
        }

        async fn handler(body: Json<Body>) -> HttpResponse {
            let _ = body.into_inner();
            HttpResponse::NoContent().finish()
        }

        async fn call(
            content_type: &str,
            body: impl Into<actix_web::web::Bytes>,
        ) -> (u16, serde_json::Value) {
            let app = test::init_service(
                App::new()
                    .app_data(json_config(100))
                    .app_data(JsonLimits::new(100))
                    .route("/", web::post().to(handler)),
            )
            .await;
            let req = test::TestRequest::post()
                .uri("/")
                .insert_header(("content-type", content_type))
                .set_payload(body)
                .to_request();
            let response = test::call_service(&app, req).await;
            let status = response.status().as_u16();
            let bytes = test::read_body(response).await;
            let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            (status, json)
        }

        fn nested(depth: usize) -> String {
            format!(
                r#"{{"value":{}1{}}}"#,
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            )
        }

        async fn actix_json_handler(body: web::Json<Body>) -> HttpResponse {
            let _ = body.into_inner();
            HttpResponse::NoContent().finish()
        }

        #[actix_web::test]
        async fn answers_like_web_json_with_json_config() {
            let app = test::init_service(
                App::new()
                    .app_data(json_config(100))
                    .app_data(JsonLimits::new(100))
                    .route("/ours", web::post().to(handler))
                    .route("/actix", web::post().to(actix_json_handler)),
            )
            .await;
            let cases: [(Option<&str>, String); 6] = [
                (Some("application/json"), r#"{"value":1}"#.to_owned()),
                (Some("application/json"), r#"{"value":"#.to_owned()),
                (Some("application/json"), r#"{"nope":1}"#.to_owned()),
                (Some("application/json"), "x".repeat(101)),
                (Some("text/plain"), r#"{"value":1}"#.to_owned()),
                (None, r#"{"value":1}"#.to_owned()),
            ];
            for (content_type, body) in cases {
                let mut answers = Vec::new();
                for uri in ["/ours", "/actix"] {
                    let mut req = test::TestRequest::post().uri(uri);
                    if let Some(content_type) = content_type {
                        req = req.insert_header(("content-type", content_type));
                    }
                    let response =
                        test::call_service(&app, req.set_payload(body.clone()).to_request()).await;
                    let status = response.status();
                    answers.push((status, test::read_body(response).await));
                }
                assert_eq!(answers[0], answers[1], "{content_type:?} {body}");
            }
        }

        #[actix_web::test]
        async fn accepts_a_good_body() {
            let (status, _) = call("application/json", r#"{"value":[1,{"a":2}]}"#).await;
            assert_eq!(status, 204);
            let (status, _) = call("application/merge-patch+json", r#"{"value":1}"#).await;
            assert_eq!(status, 204);
        }

        #[actix_web::test]
        async fn rejects_a_too_deep_body_with_400() {
            let (status, _) = call("application/json", nested(MAX_JSON_DEPTH)).await;
            assert_eq!(status, 204);
            let (status, json) = call("application/json", nested(MAX_JSON_DEPTH + 1)).await;
            assert_eq!(status, 400);
            assert_eq!(json["type"], "/problems/json-too-deep");
        }

        #[actix_web::test]
        async fn rejects_an_oversize_body_with_413_like_json_config() {
            let body = format!(r#"{{"value":"{}"}}"#, "x".repeat(200));
            let (status, json) = call("application/json", body).await;
            assert_eq!(status, 413);
            assert_eq!(json["type"], "about:blank");
            assert_eq!(json["status"], 413);
        }

        #[actix_web::test]
        async fn rejects_other_content_types_with_415() {
            let (status, json) = call("text/plain", r#"{"value":1}"#).await;
            assert_eq!(status, 415);
            assert_eq!(json["detail"], "expected Content-Type: application/json");
        }

        #[actix_web::test]
        async fn maps_syntax_and_shape_errors_to_malformed_body() {
            for body in [r#"{"value":"#, r#"{"other":1}"#] {
                let (status, json) = call("application/json", body).await;
                assert_eq!(status, 400, "{body}");
                assert_eq!(json["type"], "/problems/malformed-body");
                assert!(json["detail"].as_str().is_some_and(|d| !d.is_empty()));
            }
        }
    }
}
