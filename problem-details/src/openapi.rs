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
//!
//! `FieldError`'s schema is derived from the type itself. `Problem`'s is
//! derived from a private documentation-only struct: utoipa documents the
//! flattened `extensions` map only as `additionalProperties`, and clients
//! need to see `errors`. A unit test serializes real problems and compares
//! their members with that schema, so the two cannot drift apart.

use std::borrow::Cow;

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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use actix_web::http::StatusCode;
    use serde_json::Value;
    use utoipa::OpenApi as _;

    use super::*;

    fn keys(value: &Value) -> BTreeSet<String> {
        value
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {value}"))
            .keys()
            .cloned()
            .collect()
    }

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
