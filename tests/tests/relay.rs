//! The outbox relay under a stalled broker: commands keep being accepted, and
//! the relay's cursor moves only past events the broker acknowledged.
//! (A binary of its own: it freezes the broker of its stack.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e_tests::{eventually, stack, RELAY_DELIVERY_TIMEOUT};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

async fn create_product() -> (Uuid, i64) {
    let response = reqwest::Client::new()
        .post(format!("{}/products", stack().command_url))
        .json(
            &json!({"sku": format!("SKU-{}", Uuid::new_v4().simple()), "name": "Relay probe",
                      "price": {"amount_minor": 100, "currency": "EUR"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    (
        body["aggregate_id"].as_str().unwrap().parse().unwrap(),
        body["position"].as_i64().unwrap(),
    )
}

async fn cursor(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM outbox_cursor")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Resumes the broker even if the test fails half-way, so the stack's
/// tear-down does not hang on a frozen process.
struct Thaw;

impl Drop for Thaw {
    fn drop(&mut self) {
        stack().signal("broker", "CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cursor_never_passes_an_unacknowledged_event() {
    let pool = PgPoolOptions::new()
        .connect(&stack().primary_url)
        .await
        .unwrap();
    let (_, warm_up) = create_product().await;
    eventually(
        "the relay publishes while the broker is up",
        Duration::from_secs(30),
        || async { (cursor(&pool).await >= warm_up).then_some(()) },
    )
    .await;

    stack().signal("broker", "STOP");
    let thaw = Thaw;
    let (product, position) = create_product().await;

    // Several delivery timeouts pass: the relay's batches fail and are re-read,
    // but its cursor must stay before the unacknowledged event.
    let watch_until = Instant::now() + RELAY_DELIVERY_TIMEOUT * 3;
    while Instant::now() < watch_until {
        let at = cursor(&pool).await;
        assert!(
            at < position,
            "cursor {at} passed unacknowledged position {position}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    drop(thaw);
    eventually(
        "the backlog drains once the broker is back",
        Duration::from_secs(60),
        || async { (cursor(&pool).await >= position).then_some(()) },
    )
    .await;

    // And the event really is in Kafka.
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack().brokers)
        .set("group.id", format!("e2e-{}", Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&schema::envelope::topic_for(
            &stack().topic_prefix,
            "Product",
        )])
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .expect("the event published after the stall is readable")
            .unwrap();
        if message.key() == Some(product.to_string().as_bytes()) {
            break;
        }
    }
}
