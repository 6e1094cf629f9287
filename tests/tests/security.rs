//! The API's defences end to end, against the real services: bearer-token
//! authentication (every way a token can be bad), scopes per route class,
//! object-level authorization of customer tokens (no cross-customer reads,
//! no existence oracle), input limits (size, nesting, syntax, field rules)
//! that leave the event store untouched, and hostile text stored verbatim.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use access_control::Scope;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use e2e_tests::{client, eventually, stack, token, JWT_AUDIENCE, JWT_ISSUER, JWT_SECRET};
use futures::StreamExt;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

const CONSISTENCY: Duration = Duration::from_secs(30);
const PROBLEM_JSON: &str = "application/problem+json";

/// A client that sends no credentials of its own.
fn anonymous() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// What a request got back.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: impl reqwest::header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Asserts an RFC 9457 problem with `status` and `type`.
    fn assert_problem(&self, status: StatusCode, type_uri: &str, what: &str) {
        assert_eq!(self.status, status, "{what}: {self:?}");
        assert_eq!(
            self.header(CONTENT_TYPE),
            Some(PROBLEM_JSON),
            "{what}: {self:?}"
        );
        assert_eq!(self.body["status"], status.as_u16(), "{what}: {self:?}");
        assert_eq!(self.body["type"], type_uri, "{what}: {self:?}");
    }
}

async fn send(request: RequestBuilder) -> Answer {
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn sku() -> String {
    format!("SKU-{}", Uuid::new_v4().simple())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims every service accepts (all scopes, valid for an hour).
fn good_claims() -> Value {
    let now = now();
    json!({
        "sub": "e2e-security",
        "scope": "read write admin",
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "iat": now,
        "exp": now + 3600,
    })
}

fn claims_with(changes: Value) -> Value {
    let mut claims = good_claims();
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = value.clone();
        }
    }
    claims
}

fn sign(algorithm: jsonwebtoken::Algorithm, secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A compact JWS assembled by hand: `header` and `claims` as given, and
/// `signature` (already base64url) as the third part.
fn handmade(header: &Value, claims: &Value, signature: &str) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    format!("{}.{}.{signature}", part(header), part(claims))
}

async fn primary() -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&stack().primary_url)
        .await
        .unwrap()
}

/// Events whose payload holds the string `value` (a unique SKU or customer
/// id): how a test tells whether a refused command appended anything.
async fn events_with(pool: &PgPool, value: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE strpos(payload::text, $1) > 0")
        .bind(format!("\"{value}\""))
        .fetch_one(pool)
        .await
        .unwrap()
}

fn product_body(sku: &str) -> Value {
    json!({"sku": sku, "name": "Security probe", "price": {"amount_minor": 100, "currency": "EUR"}})
}

/// One route of each class, as a request builder that takes the
/// `Authorization` header value (None: no header).
#[derive(Debug, Clone, Copy)]
enum Route {
    /// `POST /products` on command-service (`write`).
    Command,
    /// `GET /products/{id}` on query-service (`read`).
    Read,
    /// `GET /admin/dead-letters` on the projector (`admin`).
    Admin,
}

impl Route {
    const ALL: [Route; 3] = [Route::Command, Route::Read, Route::Admin];

    /// The request; a command carries a fresh SKU, returned so the caller
    /// can check whether it was stored.
    fn request(self, authorization: Option<&str>) -> (RequestBuilder, Option<String>) {
        let client = anonymous();
        let (request, sku) = match self {
            Route::Command => {
                let sku = sku();
                (
                    client
                        .post(format!("{}/products", stack().command_url))
                        .json(&product_body(&sku)),
                    Some(sku),
                )
            }
            Route::Read => (
                client.get(format!("{}/products/{}", stack().query_url, Uuid::new_v4())),
                None,
            ),
            Route::Admin => (
                client.get(format!(
                    "{}/admin/dead-letters",
                    stack().projector_url.as_ref().unwrap()
                )),
                None,
            ),
        };
        match authorization {
            Some(value) => (request.header(AUTHORIZATION, value), sku),
            None => (request, sku),
        }
    }

    /// What a token with every scope gets: proof that the route is reachable
    /// and that a refusal below is the token's fault.
    fn authorized_status(self) -> StatusCode {
        match self {
            Route::Command => StatusCode::ACCEPTED,
            // A random id: authorized, but no such product.
            Route::Read => StatusCode::NOT_FOUND,
            Route::Admin => StatusCode::OK,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_with_401_on_commands_reads_and_admin() {
    let pool = primary().await;
    let secret = JWT_SECRET.as_bytes();
    let hs256 = jsonwebtoken::Algorithm::HS256;
    let now = now();
    let bad: Vec<(&str, String)> = vec![
        (
            "expired beyond the leeway",
            bearer(&sign(
                hs256,
                secret,
                &claims_with(json!({"iat": now - 3600, "exp": now - 60})),
            )),
        ),
        (
            "not valid before a minute from now",
            bearer(&sign(hs256, secret, &claims_with(json!({"nbf": now + 60})))),
        ),
        (
            "wrong audience",
            bearer(&sign(
                hs256,
                secret,
                &claims_with(json!({"aud": "someone-else"})),
            )),
        ),
        (
            "wrong issuer",
            bearer(&sign(
                hs256,
                secret,
                &claims_with(json!({"iss": "evil-issuer"})),
            )),
        ),
        (
            "no exp",
            bearer(&sign(hs256, secret, &claims_with(json!({"exp": null})))),
        ),
        (
            "no sub",
            bearer(&sign(hs256, secret, &claims_with(json!({"sub": null})))),
        ),
        (
            "customer_id not a UUID",
            bearer(&sign(
                hs256,
                secret,
                &claims_with(json!({"customer_id": "not-a-uuid"})),
            )),
        ),
        ("customer_id null", {
            // Read as "no customer", it would unrestrict a customer token.
            let mut claims = good_claims();
            claims["customer_id"] = Value::Null;
            bearer(&sign(hs256, secret, &claims))
        }),
        (
            "scope not a string",
            bearer(&sign(
                hs256,
                secret,
                &claims_with(json!({"scope": ["read", "write", "admin"]})),
            )),
        ),
        (
            "alg none, empty signature",
            bearer(&handmade(
                &json!({"alg": "none", "typ": "JWT"}),
                &good_claims(),
                "",
            )),
        ),
        ("alg none, signature of the right token", {
            let real = sign(hs256, secret, &good_claims());
            let signature = real.rsplit('.').next().unwrap().to_owned();
            bearer(&handmade(
                &json!({"alg": "none", "typ": "JWT"}),
                &good_claims(),
                &signature,
            ))
        }),
        (
            "signed with another secret",
            bearer(&sign(
                hs256,
                b"another-secret-another-secret-0123456789",
                &good_claims(),
            )),
        ),
        (
            "HS512 with the right secret (HS256 is pinned)",
            bearer(&sign(
                jsonwebtoken::Algorithm::HS512,
                secret,
                &good_claims(),
            )),
        ),
        ("claims changed after signing", {
            let real = sign(hs256, secret, &claims_with(json!({"scope": "read"})));
            let mut parts: Vec<String> = real.split('.').map(str::to_owned).collect();
            parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&good_claims()).unwrap());
            bearer(&parts.join("."))
        }),
        ("garbage", bearer("not-a-jwt")),
        ("three garbage parts", bearer("a.b.c")),
        ("empty bearer", "Bearer ".to_owned()),
        (
            "another scheme",
            format!(
                "Basic {}",
                URL_SAFE_NO_PAD.encode(format!("e2e:{JWT_SECRET}"))
            ),
        ),
    ];

    let valid = bearer(&token(
        "e2e-security",
        &[Scope::Read, Scope::Write, Scope::Admin],
        None,
    ));
    let mut refused_skus = Vec::new();
    for route in Route::ALL {
        // The control: the same request with a good token goes through.
        let (request, sku) = route.request(Some(&valid));
        let answer = send(request).await;
        assert_eq!(
            answer.status,
            route.authorized_status(),
            "{route:?} with a valid token: {answer:?}"
        );
        if let Some(sku) = sku {
            assert_eq!(events_with(&pool, &sku).await, 1, "control stored");
        }

        // No credentials: a challenge without an error code (RFC 6750 §3.1).
        let (request, sku) = route.request(None);
        refused_skus.extend(sku);
        let answer = send(request).await;
        answer.assert_problem(
            StatusCode::UNAUTHORIZED,
            "/problems/unauthenticated",
            &format!("{route:?} without a token"),
        );
        let challenge = answer.header(WWW_AUTHENTICATE).unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer") && challenge.contains(r#"realm="api""#),
            "{route:?} without a token: {challenge:?}"
        );
        assert!(
            !challenge.contains("error="),
            "{route:?}: no error code without credentials: {challenge:?}"
        );

        for (what, authorization) in &bad {
            let (request, sku) = route.request(Some(authorization));
            refused_skus.extend(sku);
            let answer = send(request).await;
            let what = format!("{route:?} with a token that is {what}");
            answer.assert_problem(StatusCode::UNAUTHORIZED, "/problems/unauthenticated", &what);
            let challenge = answer.header(WWW_AUTHENTICATE).unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer") && challenge.contains(r#"error="invalid_token""#),
                "{what}: {challenge:?}"
            );
            // The detail names the reason, never the credential.
            let detail = answer.body["detail"].as_str().unwrap_or_default();
            let token_part = authorization.split_once(' ').map_or("", |(_, t)| t);
            assert!(
                token_part.len() < 8 || !detail.contains(token_part),
                "{what}: the token leaks into the detail: {detail}"
            );
        }

        // Two credentials are ambiguous, even when both are valid.
        let (request, sku) = route.request(Some(&valid));
        refused_skus.extend(sku);
        let answer = send(request.header(AUTHORIZATION, valid.as_str())).await;
        answer.assert_problem(
            StatusCode::UNAUTHORIZED,
            "/problems/unauthenticated",
            &format!("{route:?} with two Authorization headers"),
        );
    }

    // Nothing a refused command carried reached the event store.
    assert_eq!(
        refused_skus.len(),
        bad.len() + 2,
        "one refused command per bad token, no token and two tokens"
    );
    for sku in refused_skus {
        assert_eq!(
            events_with(&pool, &sku).await,
            0,
            "a refused command stored {sku}"
        );
    }

    // What stays public.
    for url in [
        format!("{}/health/live", stack().command_url),
        format!("{}/openapi.json", stack().command_url),
        format!("{}/metrics", stack().command_url),
        format!("{}/health/live", stack().query_url),
        format!("{}/openapi.json", stack().query_url),
        format!("{}/metrics", stack().query_url),
        format!("{}/health/live", stack().projector_url.as_ref().unwrap()),
        format!("{}/metrics", stack().projector_url.as_ref().unwrap()),
    ] {
        let status = anonymous().get(&url).send().await.unwrap().status();
        assert_eq!(status, StatusCode::OK, "{url} without a token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_class_needs_its_own_scope() {
    let pool = primary().await;
    let with = |scopes: &[Scope]| bearer(&token("e2e-scopes", scopes, None));

    let cases: [(Route, &[Scope], bool); 10] = [
        (Route::Command, &[Scope::Read], false),
        (Route::Command, &[Scope::Admin], false),
        (Route::Command, &[Scope::Read, Scope::Admin], false),
        (Route::Command, &[Scope::Write], true),
        (Route::Read, &[Scope::Write], false),
        (Route::Read, &[Scope::Admin, Scope::Write], false),
        (Route::Read, &[Scope::Read], true),
        (Route::Admin, &[Scope::Read, Scope::Write], false),
        (Route::Admin, &[], false),
        (Route::Admin, &[Scope::Admin], true),
    ];
    for (route, scopes, allowed) in cases {
        let (request, sku) = route.request(Some(&with(scopes)));
        let answer = send(request).await;
        let what = format!("{route:?} with scopes {scopes:?}");
        if allowed {
            assert_eq!(
                answer.status,
                route.authorized_status(),
                "{what}: {answer:?}"
            );
        } else {
            answer.assert_problem(StatusCode::FORBIDDEN, "/problems/insufficient-scope", &what);
            let needed = match route {
                Route::Command => "write",
                Route::Read => "read",
                Route::Admin => "admin",
            };
            let challenge = answer.header(WWW_AUTHENTICATE).unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer")
                    && challenge.contains(r#"error="insufficient_scope""#)
                    && challenge.contains(&format!(r#"scope="{needed}""#)),
                "{what}: {challenge:?}"
            );
        }
        if let Some(sku) = sku {
            assert_eq!(
                events_with(&pool, &sku).await,
                i64::from(allowed),
                "{what}: stored iff allowed"
            );
        }
    }
}

/// Places an order of `product` for `customer` with the all-scope client.
async fn place_order(product: &str, customer: Uuid) -> Uuid {
    let answer = send(
        client()
            .post(format!("{}/orders", stack().command_url))
            .json(&json!({"customer_id": customer, "lines": [
                {"product_id": product, "quantity": 1,
                 "unit_price": {"amount_minor": 100, "currency": "EUR"}}
            ]})),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    answer.body["aggregate_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Waits until query-service serves `path` (to the all-scope client) with a
/// body satisfying `ready`.
async fn read_until(path: &str, ready: impl Fn(&Value) -> bool) -> Value {
    eventually(path, CONSISTENCY, || async {
        let answer = send(client().get(format!("{}{path}", stack().query_url))).await;
        (answer.status == StatusCode::OK && ready(&answer.body)).then_some(answer.body)
    })
    .await
}

async fn read_as(token: &str, path: &str) -> Answer {
    send(
        anonymous()
            .get(format!("{}{path}", stack().query_url))
            .header(AUTHORIZATION, bearer(token)),
    )
    .await
}

/// Header names of a response, without the ones that differ per response.
fn header_names(headers: &HeaderMap) -> BTreeSet<String> {
    headers
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k != "date")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_token_never_reads_another_customers_orders() {
    let product = e2e_tests::create_product(&client(), &stack().command_url, "Probe cup").await;
    let product = product["aggregate_id"].as_str().unwrap().to_owned();
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let mut alice_orders = Vec::new();
    for _ in 0..3 {
        alice_orders.push(place_order(&product, alice).await);
    }
    let bob_order = place_order(&product, bob).await;
    for order in alice_orders.iter().chain([&bob_order]) {
        read_until(&format!("/orders/{order}"), |_| true).await;
    }
    read_until(&format!("/customers/{alice}/orders"), |b| {
        b["items"].as_array().is_some_and(|i| i.len() == 3)
    })
    .await;

    let alice_token = token("alice", &[Scope::Read], Some(alice));
    let bob_token = token("bob", &[Scope::Read], Some(bob));

    // Each sees its own.
    for order in &alice_orders {
        let answer = read_as(&alice_token, &format!("/orders/{order}")).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "alice's own order: {answer:?}"
        );
        assert_eq!(answer.body["customer_id"], alice.to_string());
    }
    let answer = read_as(&alice_token, &format!("/customers/{alice}/orders")).await;
    assert_eq!(answer.status, StatusCode::OK, "alice's history: {answer:?}");
    assert_eq!(answer.body["items"].as_array().unwrap().len(), 3);
    let answer = read_as(&bob_token, &format!("/orders/{bob_order}")).await;
    assert_eq!(answer.status, StatusCode::OK, "bob's own order: {answer:?}");
    assert_eq!(answer.body["customer_id"], bob.to_string());
    let answer = read_as(&bob_token, &format!("/customers/{bob}/orders")).await;
    assert_eq!(answer.status, StatusCode::OK, "bob's history: {answer:?}");
    assert_eq!(answer.body["items"].as_array().unwrap().len(), 1);

    // What an order that does not exist looks like to bob: a foreign one
    // must look the same (no existence oracle).
    let missing = Uuid::new_v4();
    let nothing = read_as(&bob_token, &format!("/orders/{missing}")).await;
    assert_eq!(nothing.status, StatusCode::NOT_FOUND, "{nothing:?}");
    let nothing_detail = nothing.body["detail"]
        .as_str()
        .unwrap()
        .replace(&missing.to_string(), "<id>");
    let nothing_headers = header_names(&nothing.headers);

    // 1,000 probes of alice's data with bob's token, 16 at a time, through
    // every read path: caches (local, Redis), replicas (no-cache), the 304
    // path (If-None-Match), and ids spelled in upper case.
    let prober = anonymous();
    let probes = futures::stream::iter(0..1_000_usize)
        .map(|i| {
            let bob_token = &bob_token;
            let alice_orders = &alice_orders;
            let prober = &prober;
            async move {
                let history = i % 4 == 0;
                let id = if history {
                    alice.to_string()
                } else {
                    alice_orders[i % alice_orders.len()].to_string()
                };
                let id = if i % 3 == 0 { id.to_uppercase() } else { id };
                let path = if history {
                    format!("/customers/{id}/orders")
                } else {
                    format!("/orders/{id}")
                };
                let mut request = prober
                    .get(format!("{}{path}", stack().query_url))
                    .header(AUTHORIZATION, bearer(bob_token));
                if i % 5 == 1 {
                    request = request.header("Cache-Control", "no-cache");
                }
                if i % 7 == 2 {
                    request = request.header("If-None-Match", "*");
                } else if i % 7 == 3 {
                    request = request.header("If-None-Match", "\"v1\"");
                }
                (i, history, path, send(request).await)
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    assert_eq!(probes.len(), 1_000);
    let mut refused = (0, 0);
    for (i, history, path, answer) in &probes {
        let what = format!("probe {i} {path} with bob's token");
        assert_ne!(answer.status, StatusCode::OK, "LEAK: {what}: {answer:?}");
        if *history {
            answer.assert_problem(StatusCode::FORBIDDEN, "/problems/forbidden", &what);
            refused.0 += 1;
        } else {
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{what}: {answer:?}");
            // Exactly what a missing order gets.
            assert_eq!(answer.body["type"], nothing.body["type"], "{what}");
            assert_eq!(answer.body["title"], nothing.body["title"], "{what}");
            let id = path.trim_start_matches("/orders/").to_lowercase();
            assert_eq!(
                answer.body["detail"].as_str().unwrap().replace(&id, "<id>"),
                nothing_detail,
                "{what}"
            );
            assert_eq!(
                header_names(&answer.headers),
                nothing_headers,
                "{what}: headers differ from a missing order's"
            );
            refused.1 += 1;
        }
    }
    assert_eq!(refused, (250, 750), "every probe refused");

    // Alice's token still reads her orders; bob's still reads his.
    let answer = read_as(&alice_token, &format!("/orders/{}", alice_orders[0])).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let answer = read_as(&alice_token, &format!("/orders/{bob_order}")).await;
    assert_eq!(
        answer.status,
        StatusCode::NOT_FOUND,
        "alice probing bob: {answer:?}"
    );
}

/// POSTs `body` (raw bytes) as JSON to `path` on command-service with the
/// all-scope client.
async fn post_raw(path: &str, body: Vec<u8>) -> Answer {
    send(
        client()
            .post(format!("{}{path}", stack().command_url))
            .header(CONTENT_TYPE, "application/json")
            .body(body),
    )
    .await
}

async fn post_json(path: &str, body: &Value) -> Answer {
    post_raw(path, serde_json::to_vec(body).unwrap()).await
}

/// Sends `body` with chunked transfer encoding (no `Content-Length`, so the
/// service can only find out the size by reading), over a plain socket:
/// returns the status code of the answer.
fn post_chunked(path: &str, body: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let address = stack().command_url.trim_start_matches("http://").to_owned();
    let mut socket = std::net::TcpStream::connect(&address).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let all = bearer(&token(
        "e2e-security",
        &[Scope::Read, Scope::Write, Scope::Admin],
        None,
    ));
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: {all}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(4096) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The service may answer (and close) before it has read everything.
    let _ = socket.write_all(&request);
    let mut answer = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        match socket.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .unwrap_or_else(|| panic!("no HTTP answer to a chunked POST: {text:?}"));
    status.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_deep_malformed_and_invalid_commands_are_refused_without_a_trace() {
    let pool = primary().await;
    let mut refused_skus = Vec::new();

    // Over the 64 KiB body limit: 413, whether the size is declared...
    let big_sku = sku();
    let big = json!({"sku": big_sku, "name": "x".repeat(70 * 1024),
                     "price": {"amount_minor": 100, "currency": "EUR"}});
    let answer = post_json("/products", &big).await;
    answer.assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "about:blank", "70 KiB body");
    refused_skus.push(big_sku);
    // ... or only found out while reading a chunked body.
    let chunked_sku = sku();
    let chunked = serde_json::to_vec(&json!({"sku": chunked_sku, "name": "x".repeat(70 * 1024),
                     "price": {"amount_minor": 100, "currency": "EUR"}}))
    .unwrap();
    let status = tokio::task::spawn_blocking(move || post_chunked("/products", &chunked))
        .await
        .unwrap();
    assert_eq!(status, 413, "70 KiB chunked body");
    refused_skus.push(chunked_sku);
    // Just under the limit is not refused for its size (a 200-character
    // name limit refuses it later, as a field rule).
    let under_sku = sku();
    let under = json!({"sku": under_sku, "name": "y".repeat(60 * 1024),
                       "price": {"amount_minor": 100, "currency": "EUR"}});
    let answer = post_json("/products", &under).await;
    answer.assert_problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/validation",
        "60 KiB name",
    );
    assert_eq!(answer.body["errors"][0]["field"], "name", "{answer:?}");
    refused_skus.push(under_sku);

    // Nesting: 1,000 levels (a few KiB) is refused before it is parsed.
    let deep = format!("{}{}", "[".repeat(1_000), "]".repeat(1_000));
    let answer = post_raw("/products", deep.into_bytes()).await;
    answer.assert_problem(
        StatusCode::BAD_REQUEST,
        "/problems/json-too-deep",
        "1,000 levels",
    );
    // Inside a real command's field too; and the limit is 32 levels: 33 is
    // too deep, 32 reaches the parser (which refuses a list as a name).
    for (levels, expected) in [
        (1_000, "/problems/json-too-deep"),
        (33, "/problems/json-too-deep"),
        (32, "/problems/malformed-body"),
    ] {
        let deep_sku = sku();
        // The body object itself is one level.
        let nested = format!("{}{}", "[".repeat(levels - 1), "]".repeat(levels - 1));
        let body = format!(
            r#"{{"sku":"{deep_sku}","name":{nested},"price":{{"amount_minor":100,"currency":"EUR"}}}}"#
        );
        let answer = post_raw("/products", body.into_bytes()).await;
        answer.assert_problem(
            StatusCode::BAD_REQUEST,
            expected,
            &format!("{levels} levels in a command"),
        );
        refused_skus.push(deep_sku);
    }
    // Brackets inside strings are text, not nesting.
    let text_sku = sku();
    let answer = post_json(
        "/products",
        &json!({"sku": text_sku, "name": format!("{}{}", "[{".repeat(40), "}]".repeat(40)),
                "price": {"amount_minor": 100, "currency": "EUR"}}),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::ACCEPTED,
        "brackets in a name: {answer:?}"
    );
    assert_eq!(events_with(&pool, &text_sku).await, 1);

    // Malformed JSON, wrong types, unknown fields: 400 malformed-body.
    let malformed_sku = sku();
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        (
            "truncated",
            format!(r#"{{"sku":"{malformed_sku}","name":"n","price":{{"amount_minor":1"#)
                .into_bytes(),
        ),
        (
            "not JSON",
            format!("sku={malformed_sku}&name=n").into_bytes(),
        ),
        (
            "price as a string",
            serde_json::to_vec(&json!({"sku": malformed_sku, "name": "n", "price": "1.00 EUR"}))
                .unwrap(),
        ),
        (
            "an unknown field",
            serde_json::to_vec(&json!({"sku": malformed_sku, "name": "n", "admin": true,
                                       "price": {"amount_minor": 1, "currency": "EUR"}}))
            .unwrap(),
        ),
        (
            "a lower-case currency",
            serde_json::to_vec(&json!({"sku": malformed_sku, "name": "n",
                                       "price": {"amount_minor": 1, "currency": "eur"}}))
            .unwrap(),
        ),
        ("invalid UTF-8", {
            let mut body = format!(r#"{{"sku":"{malformed_sku}","name":""#).into_bytes();
            body.extend_from_slice(&[0xff, 0xfe]);
            body.extend_from_slice(br#"","price":{"amount_minor":1,"currency":"EUR"}}"#);
            body
        }),
    ];
    for (what, body) in malformed {
        let answer = post_raw("/products", body).await;
        answer.assert_problem(StatusCode::BAD_REQUEST, "/problems/malformed-body", what);
    }
    refused_skus.push(malformed_sku.clone());
    // Not JSON at all: 415.
    let answer = send(
        client()
            .post(format!("{}/products", stack().command_url))
            .header(CONTENT_TYPE, "text/plain")
            .body(serde_json::to_vec(&product_body(&malformed_sku)).unwrap()),
    )
    .await;
    answer.assert_problem(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "about:blank",
        "text/plain",
    );

    // Field rules: 422 naming the field.
    let product_cases = [
        ("blank name", json!({"name": "   "}), "name"),
        (
            "201-character name",
            json!({"name": "n".repeat(201)}),
            "name",
        ),
        (
            "negative price",
            json!({"price": {"amount_minor": -1, "currency": "EUR"}}),
            "price.amount_minor",
        ),
    ];
    for (what, change, field) in product_cases {
        let sku = sku();
        let mut body = product_body(&sku);
        for (key, value) in change.as_object().unwrap() {
            body[key] = value.clone();
        }
        let answer = post_json("/products", &body).await;
        answer.assert_problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation",
            what,
        );
        let fields: Vec<&Value> = answer.body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no errors: {answer:?}"))
            .iter()
            .map(|e| &e["field"])
            .collect();
        assert_eq!(fields, [field], "{what}: {answer:?}");
        assert!(
            answer.body["errors"][0]["detail"].is_string(),
            "{what}: {answer:?}"
        );
        refused_skus.push(sku);
    }
    for (what, bad_sku) in [
        ("a SKU with spaces", format!("{} X", sku())),
        ("a SKU with a quote", format!("{}'", sku())),
        ("a 65-character SKU", format!("S{}", "K".repeat(64))),
    ] {
        let answer = post_json("/products", &product_body(&bad_sku)).await;
        answer.assert_problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation",
            what,
        );
        assert_eq!(
            answer.body["errors"][0]["field"], "sku",
            "{what}: {answer:?}"
        );
        refused_skus.push(bad_sku);
    }

    let product = e2e_tests::create_product(&client(), &stack().command_url, "Limits").await;
    let product = product["aggregate_id"].as_str().unwrap().to_owned();
    let line = |quantity: i64, amount: i64, currency: &str| {
        json!({"product_id": product, "quantity": quantity,
               "unit_price": {"amount_minor": amount, "currency": currency}})
    };
    let order_cases = [
        ("no lines", vec![], "lines"),
        ("quantity 0", vec![line(0, 100, "EUR")], "lines[0].quantity"),
        (
            "quantity 10,001",
            vec![line(10_001, 100, "EUR")],
            "lines[0].quantity",
        ),
        (
            "a negative unit price",
            vec![line(1, -5, "EUR")],
            "lines[0].unit_price.amount_minor",
        ),
        (
            "two currencies",
            vec![
                line(1, 100, "EUR"),
                json!({"product_id": Uuid::new_v4(), "quantity": 1,
                       "unit_price": {"amount_minor": 100, "currency": "USD"}}),
            ],
            "lines[1].unit_price.currency",
        ),
        (
            "101 lines",
            (0..101)
                .map(|_| {
                    json!({"product_id": Uuid::new_v4(), "quantity": 1,
                           "unit_price": {"amount_minor": 1, "currency": "EUR"}})
                })
                .collect(),
            "lines",
        ),
    ];
    let mut refused_customers = Vec::new();
    for (what, lines, field) in order_cases {
        let customer = Uuid::new_v4();
        let answer = post_json("/orders", &json!({"customer_id": customer, "lines": lines})).await;
        answer.assert_problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation",
            what,
        );
        let fields: Vec<&Value> = answer.body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no errors: {answer:?}"))
            .iter()
            .map(|e| &e["field"])
            .collect();
        assert_eq!(fields, [field], "{what}: {answer:?}");
        refused_customers.push(customer);
    }
    // A negative quantity is not even a quantity: the body is malformed.
    let customer = Uuid::new_v4();
    let answer = post_json(
        "/orders",
        &json!({"customer_id": customer, "lines": [line(-1, 100, "EUR")]}),
    )
    .await;
    answer.assert_problem(
        StatusCode::BAD_REQUEST,
        "/problems/malformed-body",
        "quantity -1",
    );
    refused_customers.push(customer);

    // None of it reached the event store; the queries do find what did.
    for sku in &refused_skus {
        assert_eq!(events_with(&pool, sku).await, 0, "stored {sku:?}");
    }
    for customer in &refused_customers {
        assert_eq!(
            events_with(&pool, &customer.to_string()).await,
            0,
            "stored an order of {customer}"
        );
    }
    let control = Uuid::new_v4();
    let answer = post_json(
        "/orders",
        &json!({"customer_id": control, "lines": [line(1, 100, "EUR")]}),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::ACCEPTED,
        "control order: {answer:?}"
    );
    assert_eq!(events_with(&pool, &control.to_string()).await, 1);

    // And the service is still well.
    let ready = anonymous()
        .get(format!("{}/health/ready", stack().command_url))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(ready, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_is_stored_and_served_verbatim() {
    let pool = primary().await;
    let name = "Robert'); DROP TABLE events;--  ☃ \u{1F600} <script>alert(1)</script> \
                \\\" %s %n ${jndi:x} \u{202E}txt.exe \u{0301}e\u{FEFF}";
    assert!(name.chars().count() <= 200);
    let created = e2e_tests::create_product(&client(), &stack().command_url, name).await;
    let id = created["aggregate_id"].as_str().unwrap();

    // In the event store, as given.
    let stored: String = sqlx::query_scalar(
        "SELECT payload -> 'ProductCreated' ->> 'name' FROM events \
          WHERE aggregate_id = $1 AND sequence = 1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored.as_bytes(), name.as_bytes());

    // Through the projector, the replicas and the caches, as given.
    let body = read_until(&format!("/products/{id}"), |_| true).await;
    assert_eq!(body["name"].as_str().unwrap().as_bytes(), name.as_bytes());
    let response = client()
        .get(format!("{}/products/{id}", stack().query_url))
        .header("Cache-Control", "no-cache")
        .send()
        .await
        .unwrap();
    let content_type = response.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["name"].as_str().unwrap().as_bytes(), name.as_bytes());

    // A rename with the same kind of text.
    let renamed = format!("{name} v2 '; DELETE FROM products; --");
    let answer = post_json(&format!("/products/{id}/rename"), &json!({"name": renamed})).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:?}");
    let body = read_until(&format!("/products/{id}"), |b| b["version"] == 2).await;
    assert_eq!(
        body["name"].as_str().unwrap().as_bytes(),
        renamed.as_bytes()
    );

    // Nothing was executed.
    let events_table: Option<String> = sqlx::query_scalar("SELECT to_regclass('events')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events_table.as_deref(), Some("events"));
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 2);
}

/// A NUL character is valid JSON (`\u0000`) and a valid Rust string, but
/// Postgres `text` cannot hold it: accepted, it would be parked by the
/// projector forever. Either refusal (422 naming the field) or verbatim
/// storage is acceptable; acceptance followed by a dead letter is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_a_nul_character_is_refused_or_served_verbatim() {
    let pool = primary().await;
    let sku = sku();
    let name = "nul\u{0}byte";
    let mut body = product_body(&sku);
    body["name"] = json!(name);
    let answer = post_json("/products", &body).await;
    if answer.status != StatusCode::ACCEPTED {
        answer.assert_problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation",
            "NUL",
        );
        assert_eq!(answer.body["errors"][0]["field"], "name", "{answer:?}");
        assert_eq!(events_with(&pool, &sku).await, 0);
        return;
    }
    let id = answer.body["aggregate_id"].as_str().unwrap().to_owned();
    let dead_letters = format!(
        "{}/admin/dead-letters",
        stack().projector_url.as_ref().unwrap()
    );
    let read = eventually(
        "the product is readable or dead-lettered",
        CONSISTENCY,
        || async {
            let parked = send(client().get(&dead_letters)).await;
            if parked
                .body
                .as_array()
                .is_some_and(|letters| letters.iter().any(|l| l["aggregate_id"] == id.as_str()))
            {
                return Some(Err(parked.body));
            }
            let answer = send(client().get(format!("{}/products/{id}", stack().query_url))).await;
            (answer.status == StatusCode::OK).then_some(Ok(answer.body))
        },
    )
    .await;
    let body = read.unwrap_or_else(|letters| panic!("accepted, then dead-lettered: {letters}"));
    assert_eq!(body["name"].as_str().unwrap().as_bytes(), name.as_bytes());
}

/// A customer token with `write` acts only for its own customer: it places
/// orders for itself (not for others), acts on its own orders, finds other
/// customers' orders missing (404, as on the read side), and cannot change
/// the catalog (403). Nothing refused is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_token_writes_only_for_its_own_customer() {
    let pool = primary().await;
    let product = e2e_tests::create_product(&client(), &stack().command_url, "Own cup").await;
    let product = product["aggregate_id"].as_str().unwrap().to_owned();
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let alice_order = place_order(&product, alice).await;
    let bob_token = token("bob", &[Scope::Read, Scope::Write], Some(bob));
    let as_bob = |path: &str| {
        client()
            .post(format!("{}{path}", stack().command_url))
            .header(AUTHORIZATION, bearer(&bob_token))
    };
    let order_body = |customer: Uuid| {
        json!({"customer_id": customer, "lines": [
            {"product_id": product, "quantity": 1,
             "unit_price": {"amount_minor": 100, "currency": "EUR"}}
        ]})
    };

    let events_of = |order: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE aggregate_id = $1")
                .bind(order.to_string())
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // For someone else: refused, nothing stored for alice's order.
    let placed_for_alice = events_with(&pool, &alice.to_string()).await;
    send(as_bob("/orders").json(&order_body(alice)))
        .await
        .assert_problem(
            StatusCode::FORBIDDEN,
            "/problems/forbidden",
            "order for alice",
        );
    for path in [
        format!("/orders/{alice_order}/confirm"),
        format!("/orders/{alice_order}/ship"),
    ] {
        let answer = send(as_bob(&path)).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}: {answer:?}");
    }
    let answer = send(
        as_bob(&format!("/orders/{alice_order}/cancel"))
            .json(&json!({"reason": "not mine", "cancelled_by": "customer"})),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "cancel: {answer:?}");
    assert_eq!(
        events_with(&pool, &alice.to_string()).await,
        placed_for_alice
    );
    assert_eq!(events_of(alice_order).await, 1, "only alice's OrderPlaced");
    send(as_bob(&format!("/products/{product}/rename")).json(&json!({"name": "Bob's cup"})))
        .await
        .assert_problem(StatusCode::FORBIDDEN, "/problems/forbidden", "rename");

    // For himself: accepted, and he can act on it.
    let answer = send(as_bob("/orders").json(&order_body(bob))).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "own order: {answer:?}");
    let own = answer.body["aggregate_id"].as_str().unwrap().to_owned();
    let answer = send(as_bob(&format!("/orders/{own}/confirm"))).await;
    assert_eq!(
        answer.status,
        StatusCode::ACCEPTED,
        "confirm own: {answer:?}"
    );
}
