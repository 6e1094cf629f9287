//! The outbox relay under a stalled broker: commands keep being accepted, and
//! the relay's cursor moves only past events the broker acknowledged.
//! (A binary of its own: it freezes the broker of its stack.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use e2e_tests::{eventually, relay_cursor, relay_published_through, stack, TopicReader};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

async fn create_product() -> (Uuid, i64) {
    let body =
        e2e_tests::create_product(&e2e_tests::client(), &stack().command_url, "Relay probe").await;
    (
        body["aggregate_id"].as_str().unwrap().parse().unwrap(),
        body["position"].as_i64().unwrap(),
    )
}

/// These tests stall the relay on purpose (a frozen broker, a held
/// transaction); run one at a time so each sees only its own stall.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Resumes the broker even if the test fails half-way, so the stack's
/// tear-down does not hang on a frozen process.
struct Thaw;

impl Drop for Thaw {
    fn drop(&mut self) {
        eprintln!("resuming the broker");
        stack().signal("broker", "CONT");
    }
}

/// `outbox_lag_events` and `outbox_lag_seconds` from command-service's `/metrics`.
async fn outbox_lag() -> (f64, f64) {
    let text = reqwest::get(format!("{}/metrics", stack().command_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    };
    (value("outbox_lag_events "), value("outbox_lag_seconds "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_down_30s_commands_are_accepted_and_the_backlog_drains() {
    const DOWN: Duration = Duration::from_secs(30);
    let _serial = SERIAL.lock().await;
    let pool = PgPoolOptions::new()
        .connect(&stack().primary_url)
        .await
        .unwrap();
    let (_, warm_up) = create_product().await;
    eventually(
        "the relay publishes while the broker is up",
        Duration::from_secs(30),
        || async { relay_published_through(&pool, warm_up).await.then_some(()) },
    )
    .await;

    stack().signal("broker", "STOP");
    let thaw = Thaw;
    let stopped_at = Instant::now();
    let mut last = (Uuid::nil(), 0);
    let mut accepted = 0;
    // Commands keep being accepted (create_product asserts 202) while the
    // relay's batches fail; its cursor never passes an unacknowledged event.
    while stopped_at.elapsed() < DOWN {
        last = create_product().await;
        accepted += 1;
        assert!(
            !relay_published_through(&pool, last.1).await,
            "cursor {:?} passed unacknowledged position {}",
            relay_cursor(&pool).await,
            last.1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every unpublished event is counted, and the oldest is as old as the outage.
    let (lag_events, lag_seconds) = eventually(
        "/metrics reports the outage",
        Duration::from_secs(10),
        || async {
            let (events, seconds) = outbox_lag().await;
            (events >= f64::from(accepted) && seconds >= DOWN.as_secs_f64() - 5.0)
                .then_some((events, seconds))
        },
    )
    .await;
    eprintln!("after {DOWN:?} down: {accepted} commands accepted, lag {lag_events} events / {lag_seconds:.1} s");

    drop(thaw);
    let (product, position) = last;
    eventually(
        "the backlog drains once the broker is back",
        Duration::from_secs(60),
        || async { relay_published_through(&pool, position).await.then_some(()) },
    )
    .await;
    assert!(
        in_kafka("Product", &product.to_string()).await,
        "the last event accepted during the outage is readable"
    );
    let (lag_events, _) = outbox_lag().await;
    assert_eq!(lag_events, 0.0, "lag after draining");
}

/// Appends `count` events through the HTTP API, 16 at a time; returns the
/// highest position.
async fn append_many(count: usize) -> i64 {
    use futures::StreamExt;
    let positions: Vec<i64> = futures::stream::iter(0..count)
        .map(|_| async { create_product().await.1 })
        .buffer_unordered(16)
        .collect()
        .await;
    positions.into_iter().max().unwrap()
}

/// Holds an append transaction open for `HOLD` while 1,000 later events
/// commit, then commits or rolls it back. The relay must not move past the
/// open transaction, and must publish everything once it has ended.
async fn relay_waits_for_an_open_transaction(commit: bool) {
    let _serial = SERIAL.lock().await;
    const HOLD: Duration = Duration::from_secs(30);
    let pool = PgPoolOptions::new()
        .connect(&stack().primary_url)
        .await
        .unwrap();
    let (_, warm_up) = create_product().await;
    eventually("the relay is running", Duration::from_secs(30), || async {
        relay_published_through(&pool, warm_up).await.then_some(())
    })
    .await;

    // An append exactly as postgres-es makes it, left open.
    let held_id = Uuid::now_v7();
    let mut held = pool.begin().await.unwrap();
    let held_txid: i64 = sqlx::query_scalar(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Product', $1, 1, 'ProductCreated', '1', $2, $3)
         RETURNING transaction_id::text::bigint",
    )
    .bind(held_id.to_string())
    .bind(json!({"ProductCreated": {"sku": "HELD-1", "name": "Held", "price": {"amount_minor": 1, "currency": "EUR"}}}))
    .bind(json!({"occurred_at": chrono::Utc::now().to_rfc3339(), "command_id": Uuid::new_v4().to_string()}))
    .fetch_one(&mut *held)
    .await
    .unwrap();

    let started = Instant::now();
    let last = append_many(1_000).await;
    while started.elapsed() < HOLD {
        let (txid, position) = relay_cursor(&pool).await;
        assert!(
            txid < held_txid,
            "relay moved to txid {txid} (position {position}) past open transaction {held_txid}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    if commit {
        held.commit().await.unwrap();
    } else {
        held.rollback().await.unwrap();
    }
    eventually(
        "everything after the held transaction is published",
        Duration::from_secs(60),
        || async { relay_published_through(&pool, last).await.then_some(()) },
    )
    .await;
    if commit {
        assert!(
            in_kafka("Product", &held_id.to_string()).await,
            "held event lost"
        );
    }
}

/// Whether a message with `key` is on the topic of `aggregate_type`
/// (reads the topic from the start with a fresh group).
async fn in_kafka(aggregate_type: &str, key: &str) -> bool {
    let topic = TopicReader::new(aggregate_type);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Some(message) = topic.next(deadline).await {
        if message.key.as_deref() == Some(key.as_bytes()) {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_never_skips_an_append_that_commits_late() {
    relay_waits_for_an_open_transaction(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_moves_on_when_a_held_append_rolls_back() {
    relay_waits_for_an_open_transaction(false).await;
}
