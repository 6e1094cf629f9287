//! The spine end to end: commands through command-service, events through the
//! outbox relay and Kafka, read models built by the projector, reads served by
//! query-service from the replica and from Redis.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use e2e_tests::{eventually, stack, TopicReader};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

const CONSISTENCY: Duration = Duration::from_secs(30);

use e2e_tests::client;

/// POSTs a command and returns (status, body, headers).
async fn command(path: &str, body: Value) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let response = client()
        .post(format!("{}{path}", stack().command_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, headers)
}

async fn accepted(path: &str, body: Value) -> Value {
    let (status, body, _) = command(path, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{path}: {body}");
    body
}

async fn create_product(sku: &str, price: i64) -> Uuid {
    let body = accepted(
        "/products",
        json!({"sku": sku, "name": format!("Product {sku}"), "price": {"amount_minor": price, "currency": "EUR"}}),
    )
    .await;
    body["aggregate_id"].as_str().unwrap().parse().unwrap()
}

async fn get_query(path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", stack().query_url))
        .send()
        .await
        .unwrap()
}

/// Waits until query-service serves `path` with a body satisfying `ready`.
async fn read_until(path: &str, ready: impl Fn(&Value, &str) -> bool) -> (Value, String) {
    eventually(path, CONSISTENCY, || async {
        let response = get_query(path).await;
        if response.status() != StatusCode::OK {
            return None;
        }
        let source = response
            .headers()
            .get("x-read-source")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body: Value = response.json().await.ok()?;
        ready(&body, &source).then_some((body, source))
    })
    .await
}

fn sku() -> String {
    format!("SKU-{}", Uuid::new_v4().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_placed_confirmed_and_read_back_from_redis_and_the_replica() {
    let espresso = create_product(&sku(), 2_450).await;
    let grinder = create_product(&sku(), 9_900).await;
    let customer = Uuid::new_v4();

    let (status, placed, headers) = command(
        "/orders",
        json!({"customer_id": customer, "lines": [
            {"product_id": espresso, "quantity": 2, "unit_price": {"amount_minor": 2_450, "currency": "EUR"}},
            {"product_id": grinder, "quantity": 1, "unit_price": {"amount_minor": 9_900, "currency": "EUR"}}
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{placed}");
    let order: Uuid = placed["aggregate_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(placed["version"], 1);
    assert!(placed["position"].as_i64().unwrap() > 0);
    let token = headers.get("consistency-token").unwrap().to_str().unwrap();
    assert_eq!(placed["consistency_token"], token);
    let token = schema::consistency::ConsistencyToken::decode(token).unwrap();
    assert_eq!(
        (token.version, token.position),
        (1, placed["position"].as_i64().unwrap())
    );
    assert_eq!(
        headers.get("location").unwrap().to_str().unwrap(),
        format!("{}/orders/{order}", stack().query_url)
    );

    let confirmed = accepted(&format!("/orders/{order}/confirm"), json!({})).await;
    assert_eq!(confirmed["version"], 2);
    assert!(confirmed["position"].as_i64() > placed["position"].as_i64());

    // From a cache: the projector materializes the summary in Redis (just
    // after its Postgres commit, so a replica may show it a moment earlier),
    // and query-service keeps it in its local tier too.
    let (summary, source) = read_until(&format!("/orders/{order}"), |b, source| {
        b["status"] == "confirmed" && (source == "redis" || source == "local")
    })
    .await;
    assert_eq!(summary["version"], 2);
    assert_eq!(summary["customer_id"], customer.to_string());
    assert_eq!(
        summary["total"],
        json!({"amount_minor": 14_800, "currency": "EUR"})
    );
    assert_eq!(summary["lines"].as_array().unwrap().len(), 2);
    let again = get_query(&format!("/orders/{order}")).await;
    assert_eq!(again.headers()["x-read-source"], "local", "after {source}");

    // Asked to skip the caches, query-service answers from a replica: the
    // same document, rebuilt from the read model's columns.
    let response = client()
        .get(format!("{}/orders/{order}", stack().query_url))
        .header("Cache-Control", "no-cache")
        .send()
        .await
        .unwrap();
    let source = response.headers()["x-read-source"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(source.starts_with("replica-"), "{source}");
    assert_eq!(response.json::<Value>().await.unwrap(), summary);

    // The replica query-service reads is a real standby.
    let replica = PgPoolOptions::new()
        .connect(&stack().replica_url)
        .await
        .unwrap();
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&replica)
        .await
        .unwrap();
    assert!(in_recovery, "query-service must read from a standby");

    // Customer history: one row per event, in the month's partition.
    let (history, _) = read_until(&format!("/customers/{customer}/orders"), |b, _| {
        b["items"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await;
    let kinds: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["placed", "confirmed"]);
    assert_eq!(history["next_after"], Value::Null, "{history}");
    // A page at a time (keyset cursor): the first page's cursor leads to the
    // second, which is the last.
    let range = format!(
        "from={}&to={}",
        history["from"].as_str().unwrap(),
        history["to"].as_str().unwrap()
    );
    let (first, _) = read_until(
        &format!("/customers/{customer}/orders?{range}&limit=1"),
        |_, _| true,
    )
    .await;
    assert_eq!(first["items"].as_array().unwrap().len(), 1, "{first}");
    assert_eq!(first["items"][0], history["items"][0]);
    let after = first["next_after"].as_str().unwrap();
    let (second, _) = read_until(
        &format!("/customers/{customer}/orders?{range}&limit=1&after={after}"),
        |_, _| true,
    )
    .await;
    assert_eq!(second["items"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second["items"][0], history["items"][1]);
    assert_eq!(second["next_after"], Value::Null, "{second}");
    let partition: String = sqlx::query_scalar(
        "SELECT tableoid::regclass::text FROM customer_order_history WHERE order_id = $1 LIMIT 1",
    )
    .bind(order)
    .fetch_one(&replica)
    .await
    .unwrap();
    let now = chrono::Utc::now();
    assert_eq!(
        partition,
        format!("customer_order_history_p{}", now.format("%Y_%m"))
    );

    // Daily sales booked on confirmation.
    let today = now.date_naive();
    let (sales, _) = read_until(
        &format!("/reports/daily-sales?from={today}&to={today}&product_id={espresso}"),
        |b, _| b["items"].as_array().is_some_and(|i| !i.is_empty()),
    )
    .await;
    assert_eq!(sales["items"][0]["units"], 2);
    assert_eq!(sales["items"][0]["revenue_minor"], 4_900);
    assert_eq!(sales["next_after"], Value::Null, "{sales}");
    // The report is paged like the history: a cursor from a one-row page
    // continues after that row (other tests book sales today as well).
    let (one, _) = read_until(
        &format!("/reports/daily-sales?from={today}&to={today}&limit=1"),
        |b, _| b["next_after"].is_string(),
    )
    .await;
    assert_eq!(one["items"].as_array().unwrap().len(), 1, "{one}");
    let after = one["next_after"].as_str().unwrap();
    let (rest, _) = read_until(
        &format!("/reports/daily-sales?from={today}&to={today}&after={after}"),
        |_, _| true,
    )
    .await;
    let rest = rest["items"].as_array().unwrap();
    assert!(!rest.is_empty());
    assert!(!rest.contains(&one["items"][0]), "{rest:?}");

    // And the catalog.
    let (product, _) = read_until(&format!("/products/{grinder}"), |_, _| true).await;
    assert_eq!(
        product["price"],
        json!({"amount_minor": 9_900, "currency": "EUR"})
    );
    assert_eq!(product["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_kafka_keyed_by_aggregate_in_order_with_metadata_headers() {
    let product = create_product(&sku(), 100).await;
    accepted(
        &format!("/products/{product}/rename"),
        json!({"name": "Renamed"}),
    )
    .await;
    accepted(&format!("/products/{product}/discontinue"), json!({})).await;

    let topic = TopicReader::new("Product");
    let mut seen: Vec<(i64, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + CONSISTENCY;
    while seen.len() < 3 {
        let message = topic
            .next(deadline)
            .await
            .expect("three events of the product within the deadline");
        if message.key.as_deref() != Some(product.to_string().as_bytes()) {
            continue;
        }
        let headers = message.headers;
        assert_eq!(headers.aggregate_id, product.to_string());
        let event =
            schema::envelope::AnyEvent::decode(&headers.aggregate_type, &message.payload).unwrap();
        assert!(matches!(event, schema::envelope::AnyEvent::Product(_)));
        seen.push((headers.sequence, headers.event_type));
    }
    assert_eq!(
        seen,
        [
            (1, "ProductCreated".to_owned()),
            (2, "ProductRenamed".to_owned()),
            (3, "ProductDiscontinued".to_owned())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_event_changes_nothing() {
    let product = create_product(&sku(), 500).await;
    let customer = Uuid::new_v4();
    let placed = accepted(
        "/orders",
        json!({"customer_id": customer, "lines": [
            {"product_id": product, "quantity": 1, "unit_price": {"amount_minor": 500, "currency": "EUR"}}
        ]}),
    )
    .await;
    let order = placed["aggregate_id"].as_str().unwrap().to_owned();
    read_until(&format!("/orders/{order}"), |b, _| b["version"] == 1).await;

    // Redeliver OrderPlaced (sequence 1) with different content, as a broken
    // producer or a replay would: it must be recognised and dropped.
    let headers = schema::envelope::EventHeaders {
        aggregate_type: "Order".into(),
        aggregate_id: order.clone(),
        sequence: 1,
        position: placed["position"].as_i64().unwrap(),
        event_type: "OrderPlaced".into(),
        event_version: "1".into(),
        occurred_at: chrono::Utc::now(),
    };
    let forged = json!({"OrderPlaced": {"customer_id": customer, "lines": [
        {"product_id": product, "quantity": 99, "unit_price": {"amount_minor": 1, "currency": "EUR"}}
    ]}})
    .to_string();
    e2e_tests::produce_raw(&headers, &forged).await;

    // A later real event on the same key lands in the same partition after the
    // duplicate, so once it is visible the duplicate has been processed.
    accepted(&format!("/orders/{order}/confirm"), json!({})).await;
    let (summary, _) = read_until(&format!("/orders/{order}"), |b, _| b["version"] == 2).await;
    assert_eq!(summary["lines"][0]["quantity"], 1);
    assert_eq!(summary["total"]["amount_minor"], 500);
    let (history, _) = read_until(&format!("/customers/{customer}/orders"), |b, _| {
        b["items"].as_array().is_some_and(|i| i.len() >= 2)
    })
    .await;
    assert_eq!(history["items"].as_array().unwrap().len(), 2, "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_get_problem_details_and_append_nothing() {
    let product = create_product(&sku(), 700).await;
    let line = json!({"product_id": product, "quantity": 1, "unit_price": {"amount_minor": 700, "currency": "EUR"}});

    let expect_problem = |status: StatusCode,
                          body: &Value,
                          headers: &reqwest::header::HeaderMap,
                          want: StatusCode| {
        assert_eq!(status, want, "{body}");
        assert_eq!(
            headers.get("content-type").unwrap(),
            "application/problem+json",
            "{body}"
        );
        assert_eq!(body["status"], want.as_u16());
        assert!(body["title"].is_string());
    };

    // 404: unknown aggregate.
    let (s, b, h) = command(&format!("/orders/{}/confirm", Uuid::new_v4()), json!({})).await;
    expect_problem(s, &b, &h, StatusCode::NOT_FOUND);

    // 422: a rule (shipping an unconfirmed order) and a field (quantity 0).
    let order = accepted(
        "/orders",
        json!({"customer_id": Uuid::new_v4(), "lines": [line]}),
    )
    .await["aggregate_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, b, h) = command(&format!("/orders/{order}/ship"), json!({})).await;
    expect_problem(s, &b, &h, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, b, h) = command(
        "/orders",
        json!({"customer_id": Uuid::new_v4(), "lines": [
            {"product_id": product, "quantity": 0, "unit_price": {"amount_minor": 700, "currency": "EUR"}}
        ]}),
    )
    .await;
    expect_problem(s, &b, &h, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        b["errors"][0]["field"]
            .as_str()
            .unwrap()
            .contains("quantity"),
        "{b}"
    );

    // 412: a stale If-Match.
    let response = client()
        .post(format!("{}/orders/{order}/confirm", stack().command_url))
        .header("If-Match", "\"7\"")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let (s, h) = (response.status(), response.headers().clone());
    let b: Value = response.json().await.unwrap();
    expect_problem(s, &b, &h, StatusCode::PRECONDITION_FAILED);

    // 400: malformed JSON, unknown fields, a bad currency, a bad id.
    let response = client()
        .post(format!("{}/orders", stack().command_url))
        .header("content-type", "application/json")
        .body("{\"customer_id\": ")
        .send()
        .await
        .unwrap();
    let (s, h) = (response.status(), response.headers().clone());
    let b: Value = response.json().await.unwrap();
    expect_problem(s, &b, &h, StatusCode::BAD_REQUEST);
    for body in [
        json!({"customer_id": Uuid::new_v4(), "lines": [line], "discount": 5}),
        json!({"customer_id": Uuid::new_v4(), "lines": [
            {"product_id": product, "quantity": 1, "unit_price": {"amount_minor": 1, "currency": "euro"}}
        ]}),
    ] {
        let (s, b, h) = command("/orders", body).await;
        expect_problem(s, &b, &h, StatusCode::BAD_REQUEST);
    }
    let (s, b, h) = command("/orders/not-a-uuid/confirm", json!({})).await;
    expect_problem(s, &b, &h, StatusCode::BAD_REQUEST);

    // None of the rejected commands appended anything: the order is still at
    // version 1 and confirming it with the right version works.
    let primary = PgPoolOptions::new()
        .connect(&stack().primary_url)
        .await
        .unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(&order)
        .fetch_one(&primary)
        .await
        .unwrap();
    assert_eq!(events, 1);
    let response = client()
        .post(format!("{}/orders/{order}/confirm", stack().command_url))
        .header("If-Match", "\"1\"")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // query-service: unknown order → 404 problem.
    let response = get_query(&format!("/orders/{}", Uuid::new_v4())).await;
    let (s, h) = (response.status(), response.headers().clone());
    let b: Value = response.json().await.unwrap();
    expect_problem(s, &b, &h, StatusCode::NOT_FOUND);
}

/// Sends `GET /health/live` on `stream` and reads the whole response (it has
/// no body); `None` if the server closed the connection instead.
async fn live_on(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: e2e\r\n\r\n")
        .await
        .ok()?;
    let mut response = Vec::new();
    let mut buffer = [0u8; 1024];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("response within 10 s")
            .ok()?;
        if read == 0 {
            return None;
        }
        response.extend_from_slice(&buffer[..read]);
    }
    Some(String::from_utf8_lossy(&response).into_owned())
}

/// An idle connection stays open longer than actix-web's default keep-alive
/// (5 s): a proxy in front with a longer idle timeout (60 s is common) must
/// never send a request on a connection the service has just closed.
#[tokio::test]
async fn services_keep_an_idle_connection_open_past_actix_defaults() {
    let stack = stack();
    let idle_then_reuse = |url: String| async move {
        let address = url.trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let first = live_on(&mut stream).await;
        assert!(
            first
                .as_deref()
                .is_some_and(|r| r.starts_with("HTTP/1.1 200")),
            "{url}: {first:?}"
        );
        tokio::time::sleep(Duration::from_secs(7)).await;
        let second = live_on(&mut stream).await;
        assert!(
            second
                .as_deref()
                .is_some_and(|r| r.starts_with("HTTP/1.1 200")),
            "{url} closed the connection after 7 s idle: {second:?}"
        );
    };
    tokio::join!(
        idle_then_reuse(stack.command_url.clone()),
        idle_then_reuse(stack.query_url.clone())
    );
}
