//! `Idempotency-Key` on commands: retries replay the original answer byte for
//! byte and append nothing; a reused key with another request is refused; an
//! expired key is forgotten. (A binary of its own: it sends 30k requests.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use e2e_tests::stack;

const COMMANDS: usize = 10_000;

/// Status, the headers a client acts on, and the raw body.
type Reply = (StatusCode, Vec<Option<String>>, Vec<u8>);

async fn send(client: &reqwest::Client, path: &str, key: &str, body: &Value) -> Reply {
    let response = client
        .post(format!("{}{path}", stack().command_url))
        .header("Idempotency-Key", format!("\"{key}\""))
        .json(body)
        .send()
        .await
        .unwrap();
    let headers = ["location", "etag", "consistency-token", "content-type"]
        .iter()
        .map(|h| {
            response
                .headers()
                .get(*h)
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect();
    (
        response.status(),
        headers,
        response.bytes().await.unwrap().to_vec(),
    )
}

fn product(sku: &str) -> Value {
    json!({"sku": sku, "name": "idempotent", "price": {"amount_minor": 100, "currency": "EUR"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_sent_three_times_with_two_in_flight_executes_once() {
    let client = e2e_tests::client();
    let keys: Vec<String> = futures::stream::iter(0..COMMANDS)
        .map(|i| {
            let client = client.clone();
            async move {
                let key = Uuid::new_v4().to_string();
                let body = product(&format!("IDEM-{i}-{}", Uuid::new_v4().simple()));
                let (first, second) = tokio::join!(
                    send(&client, "/products", &key, &body),
                    send(&client, "/products", &key, &body)
                );
                let third = send(&client, "/products", &key, &body).await;
                assert_eq!(
                    first.0,
                    StatusCode::ACCEPTED,
                    "{}",
                    String::from_utf8_lossy(&first.2)
                );
                assert_eq!(
                    first, second,
                    "the two copies in flight got different replies"
                );
                assert_eq!(first, third, "the retry got a different reply");
                key
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    let pool = PgPoolOptions::new()
        .connect(&stack().primary_url)
        .await
        .unwrap();
    let (events, aggregates): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT aggregate_id) FROM events \
          WHERE metadata ->> 'idempotency_key' = ANY($1)",
    )
    .bind(&keys)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((events, aggregates), (COMMANDS as i64, COMMANDS as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_key_with_another_request_is_refused_and_an_expired_key_is_forgotten() {
    let client = e2e_tests::client();
    let pool = PgPoolOptions::new()
        .connect(&stack().primary_url)
        .await
        .unwrap();
    let key = Uuid::new_v4().to_string();
    let first = send(&client, "/products", &key, &product("REUSE-1")).await;
    assert_eq!(first.0, StatusCode::ACCEPTED);

    // Same key, different body or different command: 422, nothing appended.
    let appended_with_key = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM events WHERE metadata ->> 'idempotency_key' = $1",
        )
        .bind(&key)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(appended_with_key().await, 1);
    let other = send(&client, "/products", &key, &product("REUSE-2")).await;
    assert_eq!(other.0, StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = serde_json::from_slice(&other.2).unwrap();
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
    let created: Value = serde_json::from_slice(&first.2).unwrap();
    let rename = format!(
        "/products/{}/rename",
        created["aggregate_id"].as_str().unwrap()
    );
    let other = send(&client, &rename, &key, &json!({"name": "x"})).await;
    assert_eq!(other.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        appended_with_key().await,
        1,
        "a refused request appended events"
    );

    // A malformed key is a 400.
    let response = client
        .post(format!("{}/products", stack().command_url))
        .header("Idempotency-Key", "has spaces")
        .json(&product("BADKEY"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Once expired, the key is free: the same request executes again.
    sqlx::query(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = $1",
    )
    .bind(&key)
    .execute(&pool)
    .await
    .unwrap();
    let again = send(&client, "/products", &key, &product("REUSE-1")).await;
    assert_eq!(again.0, StatusCode::ACCEPTED);
    let again: Value = serde_json::from_slice(&again.2).unwrap();
    assert_ne!(
        again["aggregate_id"], created["aggregate_id"],
        "an expired key must not replay"
    );
}
