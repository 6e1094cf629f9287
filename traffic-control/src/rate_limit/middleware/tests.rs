//! The middleware against a real Redis, and composed with the other layers.

use std::time::{Duration, Instant};

use actix_web::dev::Service as _;
use actix_web::{test, web, App, HttpMessage, HttpResponse};
use prometheus::Registry;

use super::*;
use crate::testing::{free_port, respond, RedisServer};
use crate::{Deadline, DeadlineMetrics, HttpMetrics, InFlightLimit, RequestMetrics, ShedMetrics};

/// Generous against a live Redis, so a loaded test machine does not turn a
/// slow answer into `Unavailable`.
const LIVE_TIMEOUT: Duration = Duration::from_secs(1);

const COMMANDS: RateLimitPolicy = RateLimitPolicy {
    class: "commands",
    rate: 1,
    period: Duration::from_secs(1),
    burst: 2,
};

fn header_str<B>(response: &ServiceResponse<B>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn post(peer: &str) -> test::TestRequest {
    test::TestRequest::post()
        .uri("/orders")
        .peer_addr(peer.parse().expect("peer address"))
}

#[actix_web::test]
async fn over_the_limit_is_429_with_headers() {
    let server = RedisServer::start();
    let limiter =
        RateLimiter::new(&server.url(), LIVE_TIMEOUT, OnRedisError::Open).expect("limiter");
    let app = test::init_service(
        App::new().service(
            web::scope("")
                .wrap(RateLimit::new(limiter.clone(), COMMANDS))
                .route("/orders", web::post().to(HttpResponse::Accepted)),
        ),
    )
    .await;

    let first = test::call_service(&app, post("192.0.2.1:4000").to_request()).await;
    assert_eq!(first.status(), 202);
    assert_eq!(
        header_str(&first, "ratelimit-policy").as_deref(),
        Some("\"commands\";q=2;w=2")
    );
    assert_eq!(
        header_str(&first, "ratelimit").as_deref(),
        Some("\"commands\";r=1;t=1")
    );

    let second = test::call_service(&app, post("192.0.2.1:4001").to_request()).await;
    assert_eq!(second.status(), 202);
    assert_eq!(
        header_str(&second, "ratelimit").as_deref(),
        Some("\"commands\";r=0;t=2")
    );

    let third = test::call_service(&app, post("192.0.2.1:4002").to_request()).await;
    assert_eq!(third.status(), 429);
    assert_eq!(header_str(&third, "retry-after").as_deref(), Some("1"));
    assert_eq!(
        header_str(&third, "content-type").as_deref(),
        Some(problem_details::CONTENT_TYPE)
    );
    assert_eq!(
        header_str(&third, "ratelimit-policy").as_deref(),
        Some("\"commands\";q=2;w=2")
    );
    assert_eq!(
        header_str(&third, "ratelimit").as_deref(),
        Some("\"commands\";r=0;t=2")
    );
    let body: serde_json::Value = test::read_body_json(third).await;
    assert_eq!(body["type"], RATE_LIMITED_PROBLEM);
    assert_eq!(body["status"], 429);

    // Another client has its own bucket.
    let other = test::call_service(&app, post("198.51.100.7:4000").to_request()).await;
    assert_eq!(other.status(), 202);

    assert_eq!(limiter.metrics().get("commands", "allowed"), 3);
    assert_eq!(limiter.metrics().get("commands", "limited"), 1);
}

#[actix_web::test]
async fn keys_by_the_principal_an_outer_auth_layer_stored() {
    let server = RedisServer::start();
    let limiter =
        RateLimiter::new(&server.url(), LIVE_TIMEOUT, OnRedisError::Open).expect("limiter");
    let app = test::init_service(
        App::new().service(
            web::scope("")
                .wrap(RateLimit::new(limiter, COMMANDS))
                // Outer: runs first, and stores the principal as
                // access_control's middleware does.
                .wrap_fn(|req, srv| {
                    if let Some(user) = req.headers().get("x-test-user") {
                        let subject = user.to_str().unwrap_or_default().to_owned();
                        req.extensions_mut().insert(access_control::Principal {
                            subject,
                            scopes: access_control::Scopes::empty(),
                            customer_id: None,
                        });
                    }
                    srv.call(req)
                })
                .route("/orders", web::post().to(HttpResponse::Accepted)),
        ),
    )
    .await;

    let as_user = |peer: &str, user: &str| {
        test::TestRequest::post()
            .uri("/orders")
            .peer_addr(peer.parse().expect("peer"))
            .insert_header(("x-test-user", user))
            .to_request()
    };
    // One subject from two addresses shares one bucket...
    for peer in ["192.0.2.1:1", "192.0.2.2:1"] {
        let response = test::call_service(&app, as_user(peer, "alice")).await;
        assert_eq!(response.status(), 202);
    }
    let response = test::call_service(&app, as_user("192.0.2.3:1", "alice")).await;
    assert_eq!(response.status(), 429);
    // ...while another subject from the same address has its own, and so
    // does the anonymous address.
    let response = test::call_service(&app, as_user("192.0.2.3:1", "bob")).await;
    assert_eq!(response.status(), 202);
    let response = test::call_service(&app, post("192.0.2.3:1").to_request()).await;
    assert_eq!(response.status(), 202);
    assert_eq!(
        redis::cmd("EXISTS")
            .arg("ratelimit:commands:sub:alice")
            .query::<i64>(&mut server.connection())
            .expect("EXISTS"),
        1
    );
}

#[actix_web::test]
async fn the_client_key_can_be_replaced() {
    let server = RedisServer::start();
    let limiter =
        RateLimiter::new(&server.url(), LIVE_TIMEOUT, OnRedisError::Open).expect("limiter");
    let app = test::init_service(
        App::new().service(
            web::scope("")
                .wrap(RateLimit::new(limiter, COMMANDS).with_client_key(|req| {
                    req.headers()
                        .get("x-tenant")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                }))
                .route("/orders", web::post().to(HttpResponse::Accepted)),
        ),
    )
    .await;
    let request = || {
        post("192.0.2.1:1")
            .insert_header(("x-tenant", "acme"))
            .to_request()
    };
    test::call_service(&app, request()).await;
    assert_eq!(
        redis::cmd("EXISTS")
            .arg("ratelimit:commands:sub:acme")
            .query::<i64>(&mut server.connection())
            .expect("EXISTS"),
        1
    );
}

#[actix_web::test]
async fn handler_errors_get_the_headers_too() {
    let server = RedisServer::start();
    let limiter =
        RateLimiter::new(&server.url(), LIVE_TIMEOUT, OnRedisError::Open).expect("limiter");
    let app = test::init_service(
        App::new().service(
            web::scope("")
                .wrap(RateLimit::new(limiter, COMMANDS))
                .route(
                    "/orders",
                    web::post().to(|| async {
                        Err::<HttpResponse, _>(actix_web::error::ErrorBadRequest("no"))
                    }),
                ),
        ),
    )
    .await;
    let response = test::call_service(&app, post("192.0.2.1:1").to_request()).await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        header_str(&response, "ratelimit").as_deref(),
        Some("\"commands\";r=1;t=1")
    );
}

#[actix_web::test]
async fn errors_from_inner_layers_get_the_headers_too() {
    let server = RedisServer::start();
    let limiter =
        RateLimiter::new(&server.url(), LIVE_TIMEOUT, OnRedisError::Open).expect("limiter");
    let app = test::init_service(
        App::new().service(
            web::scope("")
                // Inner: a layer answering with an error rather than a response.
                .wrap_fn(|_req, _srv| async {
                    Err::<ServiceResponse, _>(actix_web::error::ErrorForbidden(
                        "inner layer refused",
                    ))
                })
                .wrap(RateLimit::new(limiter, COMMANDS))
                .route("/orders", web::post().to(HttpResponse::Accepted)),
        ),
    )
    .await;
    let response = respond(&app, post("192.0.2.1:1").to_request()).await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        response
            .headers()
            .get("ratelimit")
            .and_then(|v| v.to_str().ok()),
        Some("\"commands\";r=1;t=1")
    );
}

#[actix_web::test]
async fn unreachable_redis_admits_when_open() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let limiter =
        RateLimiter::new(&url, Duration::from_millis(100), OnRedisError::Open).expect("limiter");
    let app = test::init_service(
        App::new().service(
            web::scope("")
                .wrap(RateLimit::new(limiter.clone(), COMMANDS))
                .route("/orders", web::post().to(HttpResponse::Accepted)),
        ),
    )
    .await;
    for _ in 0..3 {
        let started = Instant::now();
        let response = test::call_service(&app, post("192.0.2.1:1").to_request()).await;
        assert!(started.elapsed() < Duration::from_millis(250));
        assert_eq!(response.status(), 202);
        assert!(header_str(&response, "ratelimit-policy").is_some());
        assert_eq!(header_str(&response, "ratelimit"), None, "state unknown");
    }
    assert_eq!(limiter.metrics().get("commands", "unavailable_admitted"), 3);
}

#[actix_web::test]
async fn unreachable_redis_is_503_when_closed() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let limiter =
        RateLimiter::new(&url, Duration::from_millis(100), OnRedisError::Closed).expect("limiter");
    let app = test::init_service(
        App::new().service(
            web::scope("")
                .wrap(RateLimit::new(limiter.clone(), COMMANDS))
                .route("/orders", web::post().to(HttpResponse::Accepted)),
        ),
    )
    .await;
    let started = Instant::now();
    let response = test::call_service(&app, post("192.0.2.1:1").to_request()).await;
    assert!(started.elapsed() < Duration::from_millis(250));
    assert_eq!(response.status(), 503);
    assert_eq!(header_str(&response, "retry-after").as_deref(), Some("1"));
    assert_eq!(
        header_str(&response, "content-type").as_deref(),
        Some(problem_details::CONTENT_TYPE)
    );
    let body: serde_json::Value = test::read_body_json(response).await;
    assert_eq!(body["type"], RATE_LIMITER_UNAVAILABLE_PROBLEM);
    assert_eq!(limiter.metrics().get("commands", "unavailable_rejected"), 1);
}

/// The stack in the documented order: the 429 from the innermost layer is
/// counted by the outermost, under the route pattern.
#[actix_web::test]
async fn composes_in_the_documented_order() {
    let server = RedisServer::start();
    let registry = Registry::new();
    let http = HttpMetrics::new().expect("metrics");
    let shed = ShedMetrics::new().expect("metrics");
    let deadline = DeadlineMetrics::new().expect("metrics");
    let limiter =
        RateLimiter::new(&server.url(), LIVE_TIMEOUT, OnRedisError::Open).expect("limiter");
    http.register(&registry).expect("register");
    shed.register(&registry).expect("register");
    deadline.register(&registry).expect("register");
    limiter.metrics().register(&registry).expect("register");

    let app = test::init_service(
        App::new()
            .service(
                web::scope("/orders")
                    .wrap(RateLimit::new(limiter, COMMANDS))
                    .route("/{id}/confirm", web::post().to(HttpResponse::Accepted))
                    .route(
                        "/{id}/slow",
                        web::post().to(|| async {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            HttpResponse::Accepted().finish()
                        }),
                    ),
            )
            .wrap(Deadline::new(Duration::from_millis(200), &deadline))
            .wrap(InFlightLimit::new(8, &shed))
            .wrap(RequestMetrics::new(&http)),
    )
    .await;
    let mut statuses = Vec::new();
    for id in 1..=3 {
        let req = test::TestRequest::post()
            .uri(&format!("/orders/{id}/confirm"))
            .peer_addr("192.0.2.1:1".parse().expect("peer"))
            .to_request();
        statuses.push(test::call_service(&app, req).await.status().as_u16());
    }
    assert_eq!(statuses, [202, 202, 429]);
    // Another client runs into the deadline: the error the deadline layer
    // returns is counted by the outer metrics with its status.
    let req = test::TestRequest::post()
        .uri("/orders/9/slow")
        .peer_addr("192.0.2.2:1".parse().expect("peer"))
        .to_request();
    assert_eq!(respond(&app, req).await.status(), 503);

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode");
    assert!(
        text.contains(
            r#"http_requests_total{method="POST",route="/orders/{id}/confirm",status="429"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"rate_limit_decisions_total{class="commands",decision="limited"} 1"#));
    assert!(text.contains(
        r#"http_requests_total{method="POST",route="/orders/{id}/slow",status="503"} 1"#
    ));
    assert!(text.contains(r#"http_request_deadline_exceeded_total{route="/orders/{id}/slow"} 1"#));
    assert!(text.contains("http_requests_in_flight 0"));
}

#[actix_web::test]
async fn a_class_switched_off_passes_untouched() {
    let limiter = RateLimiter::new(
        &format!("redis://127.0.0.1:{}", free_port()),
        LIVE_TIMEOUT,
        OnRedisError::Closed,
    )
    .expect("limiter");
    let app = test::init_service(
        App::new().service(
            web::scope("")
                .wrap(RateLimit::optional(limiter.clone(), None))
                .route("/orders", web::post().to(HttpResponse::Accepted)),
        ),
    )
    .await;
    // Even with Redis down and `closed`: nothing is checked.
    let response = test::call_service(&app, post("192.0.2.1:1").to_request()).await;
    assert_eq!(response.status(), 202);
    assert_eq!(header_str(&response, "ratelimit-policy"), None);
}

#[core::prelude::v1::test]
fn ipv6_clients_share_their_64() {
    let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
    let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
    let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
    assert_eq!(ip_bucket(a), ip_bucket(b));
    assert_eq!(ip_bucket(a), "2001:db8:1:2::/64");
    assert_eq!(ip_bucket(mapped), "192.0.2.1");
}

#[core::prelude::v1::test]
fn retry_after_rounds_up_to_at_least_one_second() {
    assert_eq!(whole_seconds(Duration::ZERO), 1);
    assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
    assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
}
