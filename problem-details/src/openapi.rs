//! The parts of an OpenAPI document (utoipa) that every HTTP service shares.
//!
//! - The schemas of [`Problem`] and [`FieldError`]: both implement
//!   [`ToSchema`], so `#[utoipa::path]` annotations name the real types
//!   (`body = problem_details::Problem`) and a document lists them in
//!   `components(schemas(Problem, FieldError))`.
//! - [`SecurityAddon`], the modifier that adds what the protection layer
//!   (bearer authentication, rate limiting, load shedding, deadlines)
//!   answers on every API operation, the shared responses and one
//!   definition of every response header.
//! - [`header`] and [`string_matching`], to define a service's own response
//!   headers the same way as the shared ones.
//! - [`openapi_document!`](crate::openapi_document), built on
//!   [`pretty_json`] and [`document_response`]: the document as a service
//!   serves it at `GET /openapi.json` and checks it in.
//! - [`testing`]: the checks every service's document tests make, among them
//!   that the checked-in copy is current.
//!
//! `FieldError`'s schema is derived from the type itself. `Problem`'s is
//! derived from a private documentation-only struct: utoipa documents the
//! flattened `extensions` map only as `additionalProperties`, and clients
//! need to see `errors`. A unit test serializes real problems and compares
//! their members with that schema, so the two cannot drift apart.

use std::borrow::Cow;

use actix_web::HttpResponse;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder, Type,
};
use utoipa::{Modify, PartialSchema, ToSchema};

use crate::{FieldError, Problem, CONTENT_TYPE};

/// Name of the security scheme in `components.securitySchemes`.
pub const BEARER_AUTH: &str = "bearerAuth";

/// An RFC 9457 problem. It may carry further extension members.
// The documented shape of `Problem` (see the module documentation); never
// constructed.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ProblemSchema {
    /// A URI reference naming the problem type; `about:blank` when the
    /// status says it all.
    #[schema(
        rename = "type",
        format = "uri-reference",
        example = "/problems/rate-limited"
    )]
    type_uri: String,
    /// Short summary of the problem type (the reason phrase for `about:blank`).
    title: String,
    /// The HTTP status code.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// What went wrong with this request.
    #[schema(required = false)]
    detail: String,
    /// Invalid fields of the request, when the problem is about fields.
    #[schema(required = false)]
    errors: Vec<FieldError>,
}

impl PartialSchema for Problem {
    fn schema() -> RefOr<Schema> {
        ProblemSchema::schema()
    }
}

impl ToSchema for Problem {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Problem")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        ProblemSchema::schemas(schemas);
    }
}

/// Adds what the protection layer (bearer authentication, rate limiting,
/// load shedding, deadlines) answers on every API operation of a service,
/// the shared responses, and one definition of every response header.
///
/// Every operation whose path is not in `public_paths` gets
/// `security: [{bearerAuth: [<required_scope>]}]` and the responses 401,
/// 403, 429, 500 and 503 (unless the operation documents that status
/// itself), as references to `components.responses`. A response header
/// named in a `#[utoipa::path]` annotation is replaced by a reference to its
/// definition in `components.headers`: the shared ones (`Retry-After`,
/// `WWW-Authenticate`, `RateLimit`, `RateLimit-Policy`) and the service's
/// own (`headers`).
///
/// Built as a constant in each service and named in
/// `#[openapi(modifiers(&...))]`.
#[derive(Debug, Clone, Copy)]
pub struct SecurityAddon {
    /// Paths without authentication, rate limiting or load shedding (probes,
    /// metrics, the document itself).
    pub public_paths: &'static [&'static str],
    /// The scope a bearer token needs for every other path.
    pub required_scope: &'static str,
    /// Description of the shared 500 response: what fails in this service.
    pub internal_server_error: &'static str,
    /// Description of the shared 503 response: why this service (or its
    /// protection layer) asks the client to come back later.
    pub service_unavailable: &'static str,
    /// The service's own response headers, defined next to the shared ones.
    pub headers: fn() -> Vec<(&'static str, Header)>,
}

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.security_schemes.insert(
            BEARER_AUTH.to_owned(),
            RefOr::T(SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(format!(
                        "A JWT whose `scope` claim includes `{}`. Without a valid token the \
                         answer is 401, without the scope 403.",
                        self.required_scope
                    )))
                    .build(),
            )),
        );
        for (name, header) in self.shared_headers().into_iter().chain((self.headers)()) {
            components.headers.insert(name.to_owned(), RefOr::T(header));
        }
        for (name, response) in self.shared_responses() {
            components
                .responses
                .insert(name.to_owned(), RefOr::T(response));
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            let public = self.public_paths.contains(&path.as_str());
            for operation in operations_mut(item) {
                if !public {
                    self.protect(operation);
                }
                for response in operation.responses.responses.values_mut() {
                    if let RefOr::T(response) = response {
                        link_headers(response);
                    }
                }
            }
        }
    }
}

impl SecurityAddon {
    fn protect(&self, operation: &mut Operation) {
        operation.security = Some(vec![SecurityRequirement::new(
            BEARER_AUTH,
            [self.required_scope],
        )]);
        for (status, name) in [
            ("401", "Unauthorized"),
            ("403", "Forbidden"),
            ("429", "TooManyRequests"),
            ("500", "InternalServerError"),
            ("503", "ServiceUnavailable"),
        ] {
            operation
                .responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
        }
    }

    /// The headers the protection layer sends, whichever the service.
    fn shared_headers(&self) -> Vec<(&'static str, Header)> {
        vec![
            (
                "Retry-After",
                header(
                    "Seconds to wait before retrying.",
                    string_matching("^[0-9]+$"),
                ),
            ),
            (
                "WWW-Authenticate",
                header(
                    &format!(
                        "The bearer challenge (RFC 6750), e.g. `Bearer error=\"invalid_token\"` \
                         or `Bearer error=\"insufficient_scope\", scope=\"{}\"`.",
                        self.required_scope
                    ),
                    string_matching("^Bearer"),
                ),
            ),
            (
                "RateLimit",
                header(
                    "What is left of the quota (draft-ietf-httpapi-ratelimit-headers): \
                     `\"<class>\";r=<remaining>;t=<seconds until the full burst is back>`.",
                    string_matching(r#"^"[^"]+";r=[0-9]+;t=[0-9]+$"#),
                ),
            ),
            (
                "RateLimit-Policy",
                header(
                    "The quota (draft-ietf-httpapi-ratelimit-headers): \
                     `\"<class>\";q=<burst>;w=<window seconds>`.",
                    string_matching(r#"^"[^"]+";q=[0-9]+;w=[0-9]+$"#),
                ),
            ),
        ]
    }

    /// The responses every API operation shares.
    fn shared_responses(&self) -> Vec<(&'static str, Response)> {
        vec![
            (
                "Unauthorized",
                problem_response(
                    "No bearer token, or one that is malformed, expired, not yet valid or not \
                     signed by a trusted key.",
                )
                .header_ref("WWW-Authenticate", header_ref("WWW-Authenticate"))
                .build(),
            ),
            (
                "Forbidden",
                problem_response(&format!(
                    "The token is valid but lacks the `{}` scope.",
                    self.required_scope
                ))
                .header_ref("WWW-Authenticate", header_ref("WWW-Authenticate"))
                .build(),
            ),
            (
                "TooManyRequests",
                problem_response(
                    "The client's rate limit is exhausted (`/problems/rate-limited`).",
                )
                .header_ref("Retry-After", header_ref("Retry-After"))
                .header_ref("RateLimit", header_ref("RateLimit"))
                .header_ref("RateLimit-Policy", header_ref("RateLimit-Policy"))
                .build(),
            ),
            (
                "InternalServerError",
                problem_response(self.internal_server_error).build(),
            ),
            (
                "ServiceUnavailable",
                problem_response(self.service_unavailable)
                    .header_ref("Retry-After", header_ref("Retry-After"))
                    .build(),
            ),
        ]
    }
}

/// Every operation of a path item.
fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Replaces each header of `response` by a reference to its definition.
fn link_headers(response: &mut Response) {
    for (name, header) in response.headers.iter_mut() {
        *header = RefOr::Ref(header_ref(name));
    }
}

fn header_ref(name: &str) -> Ref {
    Ref::new(format!("#/components/headers/{name}"))
}

/// A response whose body is a [`Problem`].
fn problem_response(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        CONTENT_TYPE,
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(Problem::name())))
            .build(),
    )
}

/// One response header, for `components.headers`: always sent with the
/// responses that list it.
pub fn header(description: &str, schema: ObjectBuilder) -> Header {
    let mut header = HeaderBuilder::new()
        .description(Some(description))
        .schema(Some(schema.build()))
        .build();
    // utoipa's `Header` has no `required` field, OpenAPI 3.1's Header Object has.
    header
        .extensions
        .get_or_insert_with(Default::default)
        .insert("required".to_owned(), true.into());
    header
}

/// A string schema matching the regular expression `pattern`.
pub fn string_matching(pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
}

/// `api` as a service serves it at `GET /openapi.json` and checks it in:
/// pretty-printed JSON with a trailing newline.
pub fn pretty_json(api: &OpenApi) -> String {
    // Serializing a tree of plain structs and maps cannot fail.
    let mut json = api
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    json.push('\n');
    json
}

/// The answer to `GET /openapi.json`: `document` (see [`pretty_json`]) as
/// `application/json`.
pub fn document_response(document: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document)
}

/// Defines, in the module that invokes it, what every service needs to serve
/// its document `$api` (a type deriving `utoipa::OpenApi`):
///
/// - `CHECKED_IN`: `$checked_in`, where the checked-in copy lives, relative
///   to the workspace (see [`testing::check_checked_in_copy`]);
/// - `document_json()`: the document as [`pretty_json`] renders it, built
///   once;
/// - `serve`: the handler of `GET /openapi.json` ([`document_response`]),
///   with its `#[utoipa::path]`, so that `$api` lists it in `paths(..)`.
///
/// The invoking crate depends on `actix-web`, `serde_json` and `utoipa`.
///
/// ```ignore
/// problem_details::openapi_document!(ApiDoc, "docs/openapi/command-service.json");
/// ```
#[macro_export]
macro_rules! openapi_document {
    ($api:ty, $checked_in:literal) => {
        /// Where the checked-in copy of the document lives, relative to the
        /// workspace.
        pub const CHECKED_IN: &str = $checked_in;

        /// The document, as served and checked in (see
        /// [`problem_details::openapi::pretty_json`]).
        pub fn document_json() -> &'static str {
            static JSON: ::std::sync::LazyLock<String> = ::std::sync::LazyLock::new(|| {
                $crate::openapi::pretty_json(&<$api as ::utoipa::OpenApi>::openapi())
            });
            &JSON
        }

        /// This OpenAPI document, as `application/json`.
        #[::utoipa::path(
            get,
            path = "/openapi.json",
            operation_id = "openapi",
            tag = "operations",
            summary = "This OpenAPI document",
            description = concat!("The same JSON as `", $checked_in, "` in the repository."),
            responses((status = 200, description = "The OpenAPI 3.1 document of this service.",
                body = serde_json::Value, content_type = "application/json"))
        )]
        pub async fn serve() -> ::actix_web::HttpResponse {
            $crate::openapi::document_response(document_json())
        }
    };
}

/// What the tests of every service's document check the same way. Each
/// function panics, like an assertion, with a message naming what is wrong.
pub mod testing {
    use std::collections::BTreeSet;
    use std::path::Path;

    use serde_json::Value;

    /// Compares `generated` (the document as served) with the checked-in copy
    /// at `path`, as JSON values. With `UPDATE_OPENAPI` set, writes
    /// `generated` to `path` instead; the failure message names
    /// `regenerate_command`, the command that does so.
    pub fn check_checked_in_copy(generated: &str, path: &Path, regenerate_command: &str) {
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, generated).expect("write the checked-in copy");
            return;
        }
        let checked_in: Option<Value> = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        let generated: Value = serde_json::from_str(generated).expect("the document is JSON");
        assert!(
            checked_in == Some(generated),
            "{} is not what the code generates. If the API change is intended, regenerate it \
             with `{regenerate_command}` and commit it.",
            path.display()
        );
    }

    /// Every operation in the document, as (path, method, operation).
    pub fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut found = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                found.push((path.clone(), method.clone(), operation.clone()));
            }
        }
        found
    }

    /// The member names of the JSON object `value`.
    pub fn keys(value: &Value) -> BTreeSet<String> {
        value
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {value}"))
            .keys()
            .cloned()
            .collect()
    }

    /// Every operation has an `operationId` no other one has, and a summary.
    pub fn check_operations_are_named(doc: &Value) {
        let mut ids = BTreeSet::new();
        for (path, method, operation) in operations(doc) {
            let id = operation["operationId"].as_str().expect("operationId");
            assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
            assert!(
                operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{method} {path} has no summary"
            );
        }
    }

    /// The operations of `public_paths` have neither security nor a 401;
    /// every other one requires a bearer token with `required_scope` and
    /// documents each status of `statuses`.
    pub fn check_protection(
        doc: &Value,
        public_paths: &[&str],
        required_scope: &str,
        statuses: &[&str],
    ) {
        for (path, method, operation) in operations(doc) {
            if public_paths.contains(&path.as_str()) {
                assert!(operation.get("security").is_none(), "{method} {path}");
                assert!(
                    operation["responses"].get("401").is_none(),
                    "{method} {path}"
                );
                continue;
            }
            assert_eq!(
                operation["security"],
                serde_json::json!([{ (super::BEARER_AUTH): [required_scope] }]),
                "{method} {path}"
            );
            for status in statuses {
                assert!(
                    operation["responses"].get(*status).is_some(),
                    "{method} {path} lacks {status}"
                );
            }
        }
    }

    /// Every `$ref` of the document resolves, and every response header of
    /// an operation is a reference to its one definition in
    /// `components.headers`.
    pub fn check_references(doc: &Value) {
        let mut found = Vec::new();
        refs(doc, &mut found);
        assert!(!found.is_empty());
        for target in found {
            let pointer = target.strip_prefix('#').expect("local reference");
            assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
        }
        for (path, method, operation) in operations(doc) {
            for (status, response) in operation["responses"].as_object().expect("responses") {
                for (name, header) in response["headers"].as_object().into_iter().flatten() {
                    assert_eq!(
                        header["$ref"],
                        format!("#/components/headers/{name}"),
                        "{method} {path} {status} {name}"
                    );
                }
            }
        }
    }

    /// Every `$ref` in `value`.
    fn refs(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", Value::String(target)) => found.push(target.clone()),
                        _ => refs(value, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use actix_web::http::StatusCode;
    use serde_json::Value;
    use utoipa::OpenApi as _;

    use super::testing::keys;
    use super::*;

    fn schema_json<T: PartialSchema>() -> Value {
        serde_json::to_value(T::schema()).expect("json")
    }

    fn strings(value: &Value) -> BTreeSet<String> {
        serde_json::from_value(value.clone()).expect("an array of strings")
    }

    #[test]
    fn problem_schema_matches_what_problems_serialize_to() {
        let schema = schema_json::<Problem>();
        let full = Problem::typed(StatusCode::UNPROCESSABLE_ENTITY, "/problems/x", "X")
            .with_detail("sku must not be blank")
            .with_field_errors(vec![FieldError {
                field: "sku".to_owned(),
                detail: "must not be blank".to_owned(),
            }])
            .with_retry_after(1);
        let json = serde_json::to_value(&full).expect("json");
        assert_eq!(keys(&json), keys(&schema["properties"]));
        let minimal = serde_json::to_value(Problem::new(StatusCode::NOT_FOUND)).expect("json");
        assert_eq!(keys(&minimal), strings(&schema["required"]));

        let field_error = schema_json::<FieldError>();
        assert_eq!(keys(&json["errors"][0]), keys(&field_error["properties"]));
        assert_eq!(keys(&json["errors"][0]), strings(&field_error["required"]));
    }

    #[derive(utoipa::OpenApi)]
    #[openapi(
        paths(public, protected),
        components(schemas(Problem, FieldError)),
        modifiers(&ADDON)
    )]
    struct Doc;

    const ADDON: SecurityAddon = SecurityAddon {
        public_paths: &["/public"],
        required_scope: "read",
        internal_server_error: "A bug.",
        service_unavailable: "Later.",
        headers: || {
            vec![(
                "ETag",
                header("A version.", string_matching("^\"[0-9]+\"$")),
            )]
        },
    };

    #[utoipa::path(get, path = "/public", responses((status = 200, description = "Ok")))]
    #[allow(dead_code)]
    fn public() {}

    #[utoipa::path(
        get,
        path = "/protected",
        responses(
            (status = 200, description = "Ok", headers(("ETag"))),
            (status = 503, description = "Own 503.", body = Problem,
                content_type = CONTENT_TYPE, headers(("Retry-After"))),
        )
    )]
    #[allow(dead_code)]
    fn protected() {}

    #[test]
    fn the_addon_protects_api_operations_and_links_their_headers() {
        let doc = serde_json::to_value(Doc::openapi()).expect("json");
        let public = &doc["paths"]["/public"]["get"];
        assert!(public.get("security").is_none());
        assert_eq!(
            keys(&public["responses"]),
            BTreeSet::from(["200".to_owned()])
        );

        let protected = &doc["paths"]["/protected"]["get"];
        assert_eq!(
            protected["security"],
            serde_json::json!([{ "bearerAuth": ["read"] }])
        );
        let responses = &protected["responses"];
        assert_eq!(
            keys(responses),
            ["200", "401", "403", "429", "500", "503"]
                .into_iter()
                .map(str::to_owned)
                .collect()
        );
        assert_eq!(
            responses["401"]["$ref"],
            "#/components/responses/Unauthorized"
        );
        // The operation's own 503 is kept, its headers become references.
        assert_eq!(responses["503"]["description"], "Own 503.");
        assert_eq!(
            responses["503"]["headers"]["Retry-After"]["$ref"],
            "#/components/headers/Retry-After"
        );
        assert_eq!(
            responses["200"]["headers"]["ETag"]["$ref"],
            "#/components/headers/ETag"
        );

        let components = &doc["components"];
        assert_eq!(
            keys(&components["headers"]),
            [
                "ETag",
                "RateLimit",
                "RateLimit-Policy",
                "Retry-After",
                "WWW-Authenticate"
            ]
            .into_iter()
            .map(str::to_owned)
            .collect()
        );
        assert_eq!(components["headers"]["ETag"]["required"], true);
        assert_eq!(
            components["responses"]["Forbidden"]["description"],
            "The token is valid but lacks the `read` scope."
        );
        assert_eq!(
            components["responses"]["InternalServerError"]["description"],
            "A bug."
        );
        assert_eq!(
            components["securitySchemes"]["bearerAuth"]["scheme"],
            "bearer"
        );
        assert_eq!(
            keys(&components["schemas"]),
            ["FieldError", "Problem"]
                .into_iter()
                .map(str::to_owned)
                .collect()
        );
        assert_eq!(
            components["schemas"]["Problem"]["properties"]["errors"]["items"]["$ref"],
            "#/components/schemas/FieldError"
        );
    }
}
