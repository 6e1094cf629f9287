use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{test as actix_test, web, App, HttpResponse, ResponseError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::*;

const SECRET: &str = "test-secret-that-is-long-enough-0123456789";
const ISSUER: &str = "https://auth.test";
const AUDIENCE: &str = "orders-api";

const RSA_PRIVATE: &[u8] = include_bytes!("../testdata/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../testdata/rsa-public.pem");
const ED_PRIVATE: &[u8] = include_bytes!("../testdata/ed25519-private.pem");
const ED_PUBLIC: &[u8] = include_bytes!("../testdata/ed25519-public.pem");

fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("fits i64")
}

fn hs256() -> Authenticator {
    Authenticator::new(&AuthConfig::hs256(SECRET, ISSUER, AUDIENCE).expect("valid config"))
}

fn claims() -> Value {
    json!({
        "sub": "user-1",
        "scope": "read write",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 300,
    })
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().expect("object").remove(name);
    claims
}

fn sign(algorithm: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).expect("signs")
}

fn hs256_token(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn check(authenticator: &Authenticator, token: &str) -> Result<Principal, AuthError> {
    authenticator.authenticate(Some(&bearer(token)))
}

#[test]
fn valid_token_yields_principal_with_scopes_and_customer() {
    let customer = Uuid::new_v4();
    let token = hs256_token(&with(claims(), "customer_id", json!(customer.to_string())));
    let principal = check(&hs256(), &token).expect("valid token");
    assert_eq!(principal.subject, "user-1");
    assert!(principal.has(Scope::Read));
    assert!(principal.has(Scope::Write));
    assert!(!principal.has(Scope::Admin));
    assert_eq!(
        principal.require(Scope::Admin),
        Err(AuthError::MissingScope(Scope::Admin))
    );
    assert_eq!(principal.customer_id, Some(customer));
}

#[test]
fn audience_may_be_an_array_and_scope_may_be_absent() {
    let token = hs256_token(&without(
        with(claims(), "aud", json!(["other-api", AUDIENCE])),
        "scope",
    ));
    let principal = check(&hs256(), &token).expect("valid token");
    assert!(principal.scopes.is_empty());
    assert_eq!(principal.customer_id, None);
}

#[test]
fn bearer_scheme_is_case_insensitive_and_other_schemes_are_refused() {
    let token = hs256_token(&claims());
    let authenticator = hs256();
    assert!(authenticator
        .authenticate(Some(&format!("bEaReR   {token}")))
        .is_ok());
    for header in [
        format!("Basic {token}"),
        format!("Bearer{token}"),
        "Bearer ".to_owned(),
        "Bearer".to_owned(),
        format!("Bearer {token} extra"),
    ] {
        let err = authenticator
            .authenticate(Some(&header))
            .expect_err("refused");
        assert!(
            matches!(err, AuthError::MalformedHeader | AuthError::MalformedToken),
            "{header}: {err:?}"
        );
    }
    assert_eq!(
        authenticator.authenticate(None),
        Err(AuthError::MissingToken)
    );
}

#[test]
fn expiry_is_checked_with_leeway() {
    let authenticator = hs256();
    let expired = hs256_token(&with(claims(), "exp", json!(now() - 60)));
    assert_eq!(check(&authenticator, &expired), Err(AuthError::Expired));
    // Within the 5 s default leeway.
    let just_expired = hs256_token(&with(claims(), "exp", json!(now() - 2)));
    assert!(check(&authenticator, &just_expired).is_ok());
    let no_exp = hs256_token(&without(claims(), "exp"));
    assert_eq!(
        check(&authenticator, &no_exp),
        Err(AuthError::MissingClaim("exp"))
    );
    let not_yet = hs256_token(&with(claims(), "nbf", json!(now() + 60)));
    assert_eq!(check(&authenticator, &not_yet), Err(AuthError::NotYetValid));
}

#[test]
fn issuer_and_audience_are_required_and_checked() {
    let authenticator = hs256();
    let cases = [
        (
            with(claims(), "aud", json!("other-api")),
            AuthError::WrongAudience,
        ),
        (
            with(claims(), "iss", json!("https://evil.test")),
            AuthError::WrongIssuer,
        ),
        (without(claims(), "aud"), AuthError::MissingClaim("aud")),
        (without(claims(), "iss"), AuthError::MissingClaim("iss")),
    ];
    for (claims, expected) in cases {
        assert_eq!(check(&authenticator, &hs256_token(&claims)), Err(expected));
    }
}

#[test]
fn subject_and_customer_claims_are_validated() {
    let authenticator = hs256();
    let cases = [
        (without(claims(), "sub"), AuthError::MissingClaim("sub")),
        (
            with(claims(), "sub", json!("")),
            AuthError::InvalidClaim("sub"),
        ),
        (
            with(claims(), "sub", json!(42)),
            AuthError::InvalidClaim("sub"),
        ),
        (
            with(claims(), "scope", json!(["read"])),
            AuthError::InvalidClaim("scope"),
        ),
        (
            with(claims(), "customer_id", json!("not-a-uuid")),
            AuthError::InvalidClaim("customer_id"),
        ),
        // `null` must not downgrade a customer token to an unrestricted one.
        (
            with(claims(), "customer_id", Value::Null),
            AuthError::InvalidClaim("customer_id"),
        ),
    ];
    for (claims, expected) in cases {
        assert_eq!(
            check(&authenticator, &hs256_token(&claims)),
            Err(expected),
            "{claims}"
        );
    }
}

#[test]
fn unsigned_alg_none_token_is_refused() {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
    let token = format!("{header}.{payload}.");
    let err = check(&hs256(), &token).expect_err("refused");
    assert_eq!(err, AuthError::WrongAlgorithm);
    assert_eq!(err.status_code(), StatusCode::UNAUTHORIZED);
    // Capitalisation tricks are just other unknown algorithms.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"None"}"#);
    assert_eq!(
        check(&hs256(), &format!("{header}.{payload}.")),
        Err(AuthError::WrongAlgorithm)
    );
}

#[test]
fn token_signed_with_another_secret_is_refused() {
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-that-is-long-enough-012345"),
        &claims(),
    );
    assert_eq!(check(&hs256(), &token), Err(AuthError::BadSignature));
    // Tampered payload, original signature.
    let good = hs256_token(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(with(claims(), "scope", json!("admin")).to_string());
    let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
    assert_eq!(check(&hs256(), &tampered), Err(AuthError::BadSignature));
}

#[test]
fn hs256_token_is_refused_when_hs512_is_pinned() {
    let config = AuthConfig::hmac(Algorithm::HS512, SECRET, ISSUER, AUDIENCE).expect("config");
    let authenticator = Authenticator::new(&config);
    assert_eq!(
        check(&authenticator, &hs256_token(&claims())),
        Err(AuthError::WrongAlgorithm)
    );
    let hs512 = sign(
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &claims(),
    );
    assert!(check(&authenticator, &hs512).is_ok());
}

#[test]
fn rs256_verifies_with_the_public_key_and_refuses_key_confusion() {
    let config =
        AuthConfig::public_key_pem(Algorithm::RS256, RSA_PUBLIC, ISSUER, AUDIENCE).expect("config");
    let authenticator = Authenticator::new(&config);
    let private = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("rsa key");
    let token = sign(Algorithm::RS256, &private, &claims());
    assert!(check(&authenticator, &token).is_ok());
    // The classic confusion attack: HS256 keyed with the (public) PEM bytes.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUBLIC),
        &claims(),
    );
    assert_eq!(
        check(&authenticator, &confused),
        Err(AuthError::WrongAlgorithm)
    );
    // Same family, other algorithm.
    let ps256 = sign(Algorithm::PS256, &private, &claims());
    assert_eq!(
        check(&authenticator, &ps256),
        Err(AuthError::WrongAlgorithm)
    );
}

#[test]
fn eddsa_verifies_with_the_public_key() {
    let config =
        AuthConfig::public_key_pem(Algorithm::EdDSA, ED_PUBLIC, ISSUER, AUDIENCE).expect("config");
    let authenticator = Authenticator::new(&config);
    let private = EncodingKey::from_ed_pem(ED_PRIVATE).expect("ed key");
    assert!(check(&authenticator, &sign(Algorithm::EdDSA, &private, &claims())).is_ok());
}

#[test]
fn config_constructors_refuse_unsafe_keys() {
    assert!(matches!(
        AuthConfig::hs256("short", ISSUER, AUDIENCE),
        Err(AuthConfigError::SecretTooShort { len: 5 })
    ));
    assert!(matches!(
        AuthConfig::hmac(Algorithm::RS256, SECRET, ISSUER, AUDIENCE),
        Err(AuthConfigError::KeyNotForAlgorithm { .. })
    ));
    assert!(matches!(
        AuthConfig::public_key_pem(Algorithm::RS256, RSA_PRIVATE, ISSUER, AUDIENCE),
        Err(AuthConfigError::PrivateKey { .. })
    ));
    assert!(matches!(
        AuthConfig::public_key_pem(Algorithm::ES256, b"not a pem", ISSUER, AUDIENCE),
        Err(AuthConfigError::InvalidPublicKey { .. })
    ));
}

#[test]
fn debug_output_does_not_contain_the_secret() {
    let config = AuthConfig::hs256(SECRET, ISSUER, AUDIENCE).expect("config");
    let debug = format!("{config:?} {:?}", Authenticator::new(&config));
    assert!(!debug.contains(SECRET), "{debug}");
    assert!(debug.contains(ISSUER));
}

#[test]
fn may_access_customer_limits_customer_tokens_only() {
    let own = Uuid::new_v4();
    let other = Uuid::new_v4();
    let staff = Principal {
        subject: "staff".into(),
        scopes: [Scope::Read].into_iter().collect(),
        customer_id: None,
    };
    let customer = Principal {
        customer_id: Some(own),
        ..staff.clone()
    };
    assert!(staff.may_access_customer(own));
    assert!(staff.may_access_customer(other));
    assert!(customer.may_access_customer(own));
    assert!(!customer.may_access_customer(other));
    assert_eq!(
        customer.require_customer(other),
        Err(AuthError::ForbiddenCustomer)
    );
    let response = AuthError::ForbiddenCustomer.error_response();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
}

#[test]
fn issued_tokens_round_trip_and_need_a_shared_secret() {
    let config = AuthConfig::hmac(Algorithm::HS384, SECRET, ISSUER, AUDIENCE).expect("config");
    let customer = Uuid::new_v4();
    let request = TokenRequest {
        subject: "dev".into(),
        scopes: vec![Scope::Write, Scope::Read, Scope::Write],
        customer_id: Some(customer),
        ttl: Duration::from_secs(60),
    };
    let token = issue_token(&config, &request).expect("issued");
    let principal = Authenticator::new(&config)
        .authenticate(Some(&bearer(&token)))
        .expect("accepted");
    assert_eq!(principal.subject, "dev");
    assert_eq!(principal.scopes.to_string(), "read write");
    assert_eq!(principal.customer_id, Some(customer));

    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&token).expect("claims");
    assert_eq!(
        claims["exp"]
            .as_u64()
            .zip(claims["iat"].as_u64())
            .map(|(e, i)| e - i),
        Some(60)
    );
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], AUDIENCE);

    let rsa =
        AuthConfig::public_key_pem(Algorithm::RS256, RSA_PUBLIC, ISSUER, AUDIENCE).expect("config");
    assert!(matches!(
        issue_token(&rsa, &request),
        Err(IssueTokenError::NotSharedSecret { .. })
    ));
}

fn challenge(response: &HttpResponse) -> Option<String> {
    response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[test]
fn error_responses_are_problems_with_bearer_challenges() {
    let missing = AuthError::MissingToken.error_response();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&missing).as_deref(),
        Some(r#"Bearer realm="api""#)
    );
    assert_eq!(
        missing
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(problem_details::CONTENT_TYPE.as_bytes())
    );

    let expired = AuthError::Expired.error_response();
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&expired).as_deref(),
        Some(r#"Bearer realm="api", error="invalid_token""#)
    );

    let scope = AuthError::MissingScope(Scope::Write).error_response();
    assert_eq!(scope.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        challenge(&scope).as_deref(),
        Some(r#"Bearer error="insufficient_scope", scope="write""#)
    );
}

// --- middleware -------------------------------------------------------------

async fn whoami(principal: Principal) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "subject": principal.subject,
        "scopes": principal.scopes.to_string(),
        "customer_id": principal.customer_id,
    }))
}

async fn call(
    scope: Scope,
    authorization: Option<&str>,
    calls: Arc<AtomicUsize>,
) -> (StatusCode, Option<String>, Value) {
    let authenticator = hs256();
    let app = actix_test::init_service(
        App::new().service(
            web::scope("")
                .wrap(RequireScope::new(authenticator.clone(), scope))
                .route(
                    "/whoami",
                    web::get().to(move |principal: Principal| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        whoami(principal)
                    }),
                ),
        ),
    )
    .await;
    let mut req = actix_test::TestRequest::get().uri("/whoami");
    if let Some(authorization) = authorization {
        req = req.insert_header((header::AUTHORIZATION, authorization));
    }
    let response = actix_test::call_service(&app, req.to_request()).await;
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = actix_test::read_body(response).await;
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, challenge, body)
}

#[actix_web::test]
async fn middleware_puts_the_principal_where_handlers_extract_it() {
    let customer = Uuid::new_v4();
    let token = hs256_token(&with(claims(), "customer_id", json!(customer.to_string())));
    let calls = Arc::new(AtomicUsize::new(0));
    let (status, _, body) = call(Scope::Write, Some(&bearer(&token)), calls.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["subject"], "user-1");
    assert_eq!(body["scopes"], "read write");
    assert_eq!(body["customer_id"], customer.to_string());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[actix_web::test]
async fn middleware_refuses_a_missing_scope_with_403() {
    let token = hs256_token(&with(claims(), "scope", json!("read")));
    let calls = Arc::new(AtomicUsize::new(0));
    let (status, challenge, body) = call(Scope::Write, Some(&bearer(&token)), calls.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        challenge.as_deref(),
        Some(r#"Bearer error="insufficient_scope", scope="write""#)
    );
    assert_eq!(body["type"], "/problems/insufficient-scope");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[actix_web::test]
async fn middleware_refuses_a_missing_token_without_error_code() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (status, challenge, body) = call(Scope::Read, None, calls.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let challenge = challenge.expect("challenge");
    assert!(challenge.starts_with("Bearer"));
    assert!(!challenge.contains("error="), "{challenge}");
    assert_eq!(body["type"], "/problems/unauthenticated");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[actix_web::test]
async fn middleware_refuses_a_bad_token_without_echoing_it() {
    let token = hs256_token(&with(claims(), "aud", json!("other-api")));
    let calls = Arc::new(AtomicUsize::new(0));
    let (status, challenge, body) = call(Scope::Read, Some(&bearer(&token)), calls.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge.as_deref(),
        Some(r#"Bearer realm="api", error="invalid_token""#)
    );
    assert_eq!(body["type"], "/problems/unauthenticated");
    assert_eq!(body["status"], 401);
    let text = body.to_string();
    assert!(!text.contains(&token));
    assert!(!text.contains(token.split('.').nth(1).expect("payload")));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[actix_web::test]
async fn principal_extractor_without_middleware_is_401() {
    let app = actix_test::init_service(App::new().route("/whoami", web::get().to(whoami))).await;
    let token = hs256_token(&claims());
    let req = actix_test::TestRequest::get()
        .uri("/whoami")
        .insert_header((header::AUTHORIZATION, bearer(&token)))
        .to_request();
    let response = actix_test::call_service(&app, req).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn nested_guards_each_check_their_scope() {
    let app = actix_test::init_service(
        App::new().service(
            web::scope("/api")
                .wrap(RequireScope::new(hs256(), Scope::Read))
                .service(
                    web::scope("/admin")
                        .wrap(RequireScope::new(hs256(), Scope::Admin))
                        .route("/whoami", web::get().to(whoami)),
                )
                .route("/whoami", web::get().to(whoami)),
        ),
    )
    .await;
    let token = hs256_token(&claims());
    for (uri, expected) in [
        ("/api/whoami", StatusCode::OK),
        ("/api/admin/whoami", StatusCode::FORBIDDEN),
    ] {
        let req = actix_test::TestRequest::get()
            .uri(uri)
            .insert_header((header::AUTHORIZATION, bearer(&token)))
            .to_request();
        assert_eq!(
            actix_test::call_service(&app, req).await.status(),
            expected,
            "{uri}"
        );
    }
}

// The only test that touches the process environment, so parallel tests
// cannot see each other's variables.
#[test]
fn from_env_reads_the_documented_variables() {
    const VARS: [&str; 7] = [
        "JWT_ALGORITHM",
        "JWT_SECRET",
        "JWT_SECRET_FILE",
        "JWT_PUBLIC_KEY_FILE",
        "JWT_ISSUER",
        "JWT_AUDIENCE",
        "JWT_LEEWAY_SECS",
    ];
    fn reset(vars: &[(&str, &str)]) {
        for name in VARS {
            std::env::remove_var(name);
        }
        for (name, value) in vars {
            std::env::set_var(name, value);
        }
    }
    let dir = std::env::temp_dir().join(format!("access-control-test-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write secret");
    let secret_path = secret_file.to_str().expect("utf-8 path");
    let public_file = dir.join("rsa.pem");
    std::fs::write(&public_file, RSA_PUBLIC).expect("write key");
    let public_path = public_file.to_str().expect("utf-8 path");
    let base = [("JWT_ISSUER", ISSUER), ("JWT_AUDIENCE", AUDIENCE)];

    reset(&[base[0], base[1], ("JWT_SECRET", SECRET)]);
    let config = AuthConfig::from_env().expect("HS256 default");
    assert_eq!(config.algorithm, Algorithm::HS256);
    assert_eq!(config.leeway, Duration::from_secs(5));
    let token = hs256_token(&claims());
    assert!(check(&Authenticator::new(&config), &token).is_ok());

    // The file's trailing newline is not part of the secret.
    reset(&[
        base[0],
        base[1],
        ("JWT_SECRET_FILE", secret_path),
        ("JWT_LEEWAY_SECS", "0"),
    ]);
    let config = AuthConfig::from_env().expect("secret file");
    assert_eq!(config.leeway, Duration::ZERO);
    assert!(check(&Authenticator::new(&config), &token).is_ok());

    reset(&[
        base[0],
        base[1],
        ("JWT_ALGORITHM", "RS256"),
        ("JWT_PUBLIC_KEY_FILE", public_path),
    ]);
    assert_eq!(
        AuthConfig::from_env().expect("rs256").algorithm,
        Algorithm::RS256
    );

    type Case<'a> = (&'a [(&'a str, &'a str)], fn(&AuthConfigError) -> bool);
    let failures: [Case; 8] = [
        (&[base[0], base[1]], |e| {
            matches!(e, AuthConfigError::MissingSecret { .. })
        }),
        (
            &[
                base[0],
                base[1],
                ("JWT_SECRET", SECRET),
                ("JWT_SECRET_FILE", "/x"),
            ],
            |e| matches!(e, AuthConfigError::ConflictingSecrets),
        ),
        (&[base[0], base[1], ("JWT_SECRET", "too-short")], |e| {
            matches!(e, AuthConfigError::SecretTooShort { len: 9 })
        }),
        (&[base[1], ("JWT_SECRET", SECRET)], |e| {
            e.to_string().contains("JWT_ISSUER")
        }),
        (
            &[base[0], ("JWT_AUDIENCE", ""), ("JWT_SECRET", SECRET)],
            |e| e.to_string().contains("JWT_AUDIENCE"),
        ),
        (
            &[
                base[0],
                base[1],
                ("JWT_SECRET", SECRET),
                ("JWT_ALGORITHM", "none"),
            ],
            |e| e.to_string().contains("JWT_ALGORITHM"),
        ),
        (
            &[
                base[0],
                base[1],
                ("JWT_SECRET", SECRET),
                ("JWT_ALGORITHM", "RS256"),
            ],
            |e| {
                matches!(
                    e,
                    AuthConfigError::KeyNotForAlgorithm {
                        name: "JWT_SECRET",
                        ..
                    }
                )
            },
        ),
        (&[base[0], base[1], ("JWT_ALGORITHM", "ES256")], |e| {
            e.to_string().contains("JWT_PUBLIC_KEY_FILE")
        }),
    ];
    for (vars, expected) in failures {
        reset(vars);
        let err = AuthConfig::from_env().expect_err("invalid config");
        assert!(expected(&err), "{vars:?}: {err}");
        assert!(!err.to_string().contains(SECRET), "{err}");
    }
    reset(&[]);
    let _ = std::fs::remove_dir_all(dir);
}
