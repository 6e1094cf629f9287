//! Crash safety of the outbox relay, Jepsen-style: while 20,000 commands
//! commit, the relaying command-service process is killed with SIGKILL 200
//! times (between commit and publish, or mid-batch: wherever it is). Then the
//! events table is compared with a full read of the topic: nothing committed
//! is lost, each key's events arrive in order, and every redelivery carries
//! the event's identity (aggregate id + sequence) so consumers can drop it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e_tests::{
    committed_events, stack_without_relay as stack, wait_for_relay_to_drain, CommandServiceProcess,
    TopicReader,
};
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
            let client = e2e_tests::client();
            futures::stream::iter(0..PRODUCTS)
                .for_each_concurrent(16, |n| {
                    let (client, done) = (client.clone(), done.clone());
                    async move {
                        let (status, created) = command(
                            &client,
                            "/products",
                            json!({"sku": format!("C-{n}"), "name": "v0",
                                   "price": {"amount_minor": 1, "currency": "EUR"}}),
                        )
                        .await;
                        assert_eq!(status, 202, "{created}");
                        let id = created["aggregate_id"].as_str().unwrap().to_owned();
                        for r in 1..=RENAMES_PER_PRODUCT {
                            let (status, body) = command(
                                &client,
                                &format!("/products/{id}/rename"),
                                json!({"name": format!("v{r}")}),
                            )
                            .await;
                            assert_eq!(status, 202, "{body}");
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

    wait_for_relay_to_drain(&pool, Duration::from_secs(120)).await;

    // Read the whole topic, in partition order.
    let committed = committed_events(&pool, "Product").await;
    let mut missing = committed.clone();
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

/// Sends a command the way a careful client does: with an Idempotency-Key,
/// retrying the same request if the connection breaks (a loaded machine can
/// close a kept-alive connection just as it is reused). The retry cannot
/// execute the command twice, so counts stay exact.
async fn command(
    client: &reqwest::Client,
    path: &str,
    body: serde_json::Value,
) -> (reqwest::StatusCode, serde_json::Value) {
    let key = uuid::Uuid::new_v4().to_string();
    let mut attempts = 0;
    loop {
        let sent = client
            .post(format!("{}{path}", stack().command_url))
            .header("Idempotency-Key", &key)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status();
                return (status, response.json().await.unwrap());
            }
            Err(error) if attempts < 3 && (error.is_connect() || error.is_request()) => {
                attempts += 1;
                eprintln!("retrying {path} after a transport error: {error}");
            }
            Err(error) => panic!("{path}: {error}"),
        }
    }
}

async fn leader_of(relays: &[CommandServiceProcess]) -> Option<usize> {
    for (i, relay) in relays.iter().enumerate() {
        if relay.role().await.as_deref() == Some("leader") {
            return Some(i);
        }
    }
    None
}
