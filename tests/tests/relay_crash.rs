//! Crash safety of the outbox relay, Jepsen-style: while 20,000 commands
//! commit, the relaying command-service process is killed with SIGKILL 200
//! times (between commit and publish, or mid-batch: wherever it is). Then the
//! events table is compared with a full read of the topic: nothing committed
//! is lost, each key's events arrive in order, and every redelivery carries
//! the event's identity (aggregate id + sequence) so consumers can drop it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e_tests::{eventually, stack_without_relay as stack, CommandServiceProcess, TopicReader};
use futures::StreamExt;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

const PRODUCTS: usize = 4_000;
const RENAMES_PER_PRODUCT: usize = 4; // 4,000 creates + 16,000 renames = 20,000 commands
const KILLS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_relay_200_times_loses_and_reorders_nothing() {
    let pool = PgPoolOptions::new()
        .connect(&stack().primary_url)
        .await
        .unwrap();
    // Two relay processes: when the leader dies the other takes over, and the
    // dead one is restarted, so every kill lands on a working relay.
    let mut relays = vec![
        CommandServiceProcess::spawn("crash-a"),
        CommandServiceProcess::spawn("crash-b"),
    ];

    let done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let done = done.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            futures::stream::iter(0..PRODUCTS)
                .for_each_concurrent(16, |n| {
                    let (client, done) = (client.clone(), done.clone());
                    async move {
                        let created: serde_json::Value = client
                            .post(format!("{}/products", stack().command_url))
                            .json(&json!({"sku": format!("C-{n}"), "name": "v0",
                                          "price": {"amount_minor": 1, "currency": "EUR"}}))
                            .send()
                            .await
                            .unwrap()
                            .json()
                            .await
                            .unwrap();
                        let id = created["aggregate_id"].as_str().unwrap().to_owned();
                        for r in 1..=RENAMES_PER_PRODUCT {
                            let status = client
                                .post(format!("{}/products/{id}/rename", stack().command_url))
                                .json(&json!({"name": format!("v{r}")}))
                                .send()
                                .await
                                .unwrap()
                                .status();
                            assert_eq!(status, 202);
                        }
                        done.fetch_add(1 + RENAMES_PER_PRODUCT, Ordering::Relaxed);
                    }
                })
                .await;
        })
    };

    let total = PRODUCTS * (1 + RENAMES_PER_PRODUCT);
    let mut kills = 0;
    while kills < KILLS {
        // Kill whichever relays now; wait until it has published something
        // first, so each kill interrupts a working relay.
        let Some(leader) = leader_of(&relays).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let name = format!("crash-{kills}");
        drop(std::mem::replace(
            &mut relays[leader],
            CommandServiceProcess::spawn(&name),
        ));
        kills += 1;
        // Spread the kills over the write load.
        let pace = Duration::from_millis(if done.load(Ordering::Relaxed) < total {
            60
        } else {
            20
        });
        tokio::time::sleep(pace).await;
    }
    writer.await.unwrap();
    eprintln!(
        "{kills} kills during {} commands",
        done.load(Ordering::Relaxed)
    );
    assert_eq!(done.load(Ordering::Relaxed), total);

    let last: i64 = sqlx::query_scalar("SELECT max(position) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    eventually(
        "the relays publish the backlog",
        Duration::from_secs(120),
        || async {
            let at: i64 =
                sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM outbox_cursor")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (at >= last).then_some(())
        },
    )
    .await;

    // Read the whole topic, in partition order.
    let committed: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, sequence FROM events WHERE aggregate_type = 'Product'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut missing: HashSet<(String, i64)> = committed.iter().cloned().collect();
    let topic = TopicReader::new("Product");
    let mut highest: HashMap<String, i64> = HashMap::new();
    let (mut read, mut duplicates) = (0usize, 0usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !missing.is_empty() {
        let Some(message) = topic.next(deadline).await else {
            break;
        };
        read += 1;
        let event = message.headers;
        assert_eq!(message.key.as_deref(), Some(event.aggregate_id.as_bytes()));
        let seen = highest.entry(event.aggregate_id.clone()).or_insert(0);
        if event.sequence <= *seen {
            duplicates += 1; // a redelivery, recognisable by its identity
        } else {
            assert_eq!(
                event.sequence,
                *seen + 1,
                "{} arrived out of order: {} after {}",
                event.aggregate_id,
                event.sequence,
                seen
            );
            *seen = event.sequence;
        }
        missing.remove(&(event.aggregate_id, event.sequence));
    }
    eprintln!(
        "{} committed events, {read} messages read, {duplicates} duplicates",
        committed.len()
    );
    assert!(
        missing.is_empty(),
        "lost: {} committed events never read, e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
}

async fn leader_of(relays: &[CommandServiceProcess]) -> Option<usize> {
    for (i, relay) in relays.iter().enumerate() {
        if relay.role().await.as_deref() == Some("leader") {
            return Some(i);
        }
    }
    None
}
