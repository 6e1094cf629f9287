//! HTTP caching of responses: `ETag`, `If-None-Match` → 304, and the
//! `Cache-Control` of each endpoint's policy (RFC 9110 §13, RFC 9111).

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

use crate::cache::Document;
use crate::error::QueryError;
use crate::replicas::Served;

/// Response header naming where the body came from: `local`, `redis`,
/// `replica-N` or `primary`.
pub const READ_SOURCE_HEADER: &str = "x-read-source";

/// `Cache-Control` of per-customer data (orders, histories): any cache may
/// keep it only for that client, and must revalidate (cheap: 304) before
/// reusing it, because an order changes with every command.
pub const PRIVATE_REVALIDATE: &str = "private, no-cache";
/// `Cache-Control` of the catalog: shared caches may serve it for a few
/// seconds (a price change shows up that much later there).
pub const PUBLIC_SHORT: &str = "public, max-age=5";

/// A strong validator from a document's version: the version changes with
/// every change of the document.
pub fn version_etag(version: i64) -> String {
    format!("\"v{version}\"")
}

/// A weak validator from a body's bytes, for lists (they have no version of
/// their own). Weak because two instances may serialize equal content with
/// different bytes in theory; they compare equal here as long as they don't.
pub fn body_etag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("W/\"{hex}\"")
}

/// 304 if the request's `If-None-Match` matches `etag` (weak comparison, as
/// RFC 9110 §13.1.2 requires for GET), else 200 with the JSON `body`. Both
/// carry `ETag`, `Cache-Control` and where the data came from.
pub fn respond(
    request: &HttpRequest,
    served: Served<Bytes>,
    etag: &str,
    cache_control: &'static str,
) -> HttpResponse {
    let status = if none_match(request, etag) {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    let mut response = HttpResponse::build(status);
    response
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, cache_control))
        .insert_header((READ_SOURCE_HEADER, served.from.as_ref()));
    if status == StatusCode::NOT_MODIFIED {
        return response.finish();
    }
    response.content_type(mime_json()).body(served.value)
}

/// A document's response: [`respond`] with its version as the `ETag`.
pub fn respond_document(
    request: &HttpRequest,
    served: Served<Document>,
    cache_control: &'static str,
) -> HttpResponse {
    let etag = version_etag(served.value.version);
    respond(
        request,
        served.map(|document| document.body),
        &etag,
        cache_control,
    )
}

/// A list's (or report's) response: the value serialized once, [`respond`]
/// with a validator from the bytes (a list has no version of its own).
pub fn respond_list<T: serde::Serialize>(
    request: &HttpRequest,
    served: Served<T>,
    cache_control: &'static str,
) -> Result<HttpResponse, QueryError> {
    let body = json_body(&served.value)?;
    let etag = body_etag(&body);
    Ok(respond(request, served.map(|_| body), &etag, cache_control))
}

/// A body serialized once, for [`respond`] and the caches.
pub fn json_body<T: serde::Serialize>(value: &T) -> Result<Bytes, QueryError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| QueryError::CorruptReadModel(format!("not serializable: {e}")))
}

fn mime_json() -> HeaderValue {
    HeaderValue::from_static("application/json")
}

/// Whether any entity tag of `If-None-Match` matches `etag` weakly.
fn none_match(request: &HttpRequest, etag: &str) -> bool {
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let ours = opaque(etag);
    request
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| tag.trim() == "*" || opaque(tag) == ours)
}

/// True if the request carries `Cache-Control: no-cache` (or `no-store`):
/// the client does not want a stored copy it cannot validate (RFC 9111
/// §5.2.1.4), so the caches are skipped.
pub fn wants_no_cache(request: &HttpRequest) -> bool {
    request
        .headers()
        .get_all(header::CACHE_CONTROL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| {
            matches!(
                d.trim().to_ascii_lowercase().as_str(),
                "no-cache" | "no-store"
            )
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use actix_web::test::TestRequest;

    use super::*;

    fn served(body: &'static str) -> Served<Bytes> {
        Served {
            value: Bytes::from_static(body.as_bytes()),
            from: Arc::from("replica-1"),
        }
    }

    #[test]
    fn matching_tag_is_304_without_body() {
        let etag = version_etag(3);
        for header in [
            etag.clone(),
            format!("W/{etag}"),
            "\"x\", \"v3\"".to_owned(),
            "*".to_owned(),
        ] {
            let request = TestRequest::default()
                .insert_header((header::IF_NONE_MATCH, header.as_str()))
                .to_http_request();
            let response = respond(&request, served("{}"), &etag, PUBLIC_SHORT);
            assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{header}");
            assert_eq!(
                response.headers().get(header::ETAG).map(|v| v.as_bytes()),
                Some(etag.as_bytes())
            );
            assert_eq!(
                response
                    .headers()
                    .get(header::CACHE_CONTROL)
                    .map(|v| v.as_bytes()),
                Some(PUBLIC_SHORT.as_bytes())
            );
        }
    }

    #[test]
    fn other_tag_or_none_is_200() {
        let etag = version_etag(3);
        let stale = TestRequest::default()
            .insert_header((header::IF_NONE_MATCH, "\"v2\""))
            .to_http_request();
        assert_eq!(
            respond(&stale, served("{}"), &etag, PUBLIC_SHORT).status(),
            StatusCode::OK
        );
        let plain = TestRequest::default().to_http_request();
        let response = respond(&plain, served("{}"), &etag, PRIVATE_REVALIDATE);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response
                .headers()
                .get(READ_SOURCE_HEADER)
                .map(|v| v.as_bytes()),
            Some(&b"replica-1"[..])
        );
    }

    #[test]
    fn body_tags_are_weak_and_follow_the_content() {
        let a = body_etag(b"[1]");
        assert!(a.starts_with("W/\""));
        assert_eq!(a, body_etag(b"[1]"));
        assert_ne!(a, body_etag(b"[2]"));
    }

    #[test]
    fn no_cache_and_no_store_skip_the_caches() {
        for value in ["no-cache", "max-age=0, No-Store"] {
            let request = TestRequest::default()
                .insert_header((header::CACHE_CONTROL, value))
                .to_http_request();
            assert!(wants_no_cache(&request), "{value}");
        }
        assert!(!wants_no_cache(&TestRequest::default().to_http_request()));
    }
}
