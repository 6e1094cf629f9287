//! RFC 9457 "Problem Details for HTTP APIs" as actix-web responses.
//!
//! Every error either HTTP service returns is a [`Problem`] with the media type
//! `application/problem+json`. The extractor configs here turn actix's own
//! rejections (bad JSON, bad path, bad query, oversize body) into problems too,
//! so no error leaves a service as plain text.

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
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

/// One invalid field of a request, listed under the `errors` extension.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    /// JSON pointer-ish path of the field, e.g. `lines[0].quantity`.
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
        .error_handler(|err, _req| {
            let problem = match &err {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => {
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
            };
            problem.into()
        })
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
}
