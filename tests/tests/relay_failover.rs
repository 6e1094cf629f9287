//! One active relay among several command-service instances: exactly one
//! holds the lease; when it is killed (SIGKILL), another takes over within
//! 10 s, and every committed event still reaches Kafka.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_tests::{
    committed_events, eventually, relay_cursor, relay_published_through,
    stack_without_relay as stack, wait_for_relay_to_drain, CommandServiceProcess as Instance,
    TopicReader,
};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

async fn leaders(instances: &[Instance]) -> Vec<usize> {
    let mut leaders = Vec::new();
    for (i, instance) in instances.iter().enumerate() {
        if instance.role().await.as_deref() == Some("leader") {
            leaders.push(i);
        }
    }
    leaders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_within_10s_of_the_leader_being_killed_and_nothing_is_lost() {
    stack(); // the instances join this binary's stack
    let mut instances: Vec<Instance> = (0..3)
        .map(|n| Instance::spawn(&format!("failover-{n}")))
        .collect();
    let leader = eventually(
        "exactly one leader among 3 instances",
        Duration::from_secs(60),
        || async {
            let leaders = leaders(&instances).await;
            (leaders.len() == 1).then(|| leaders[0])
        },
    )
    .await;

    // Keep commands flowing through the whole failover.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let client = e2e_tests::client();
            let mut accepted = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let response = client
                    .post(format!("{}/products", stack().command_url))
                    .json(
                        &json!({"sku": format!("F-{}", Uuid::new_v4().simple()), "name": "failover",
                                  "price": {"amount_minor": 1, "currency": "EUR"}}),
                    )
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                accepted += 1;
            }
            accepted
        })
    };
    let pool = PgPoolOptions::new()
        .connect(&stack().primary_url)
        .await
        .unwrap();
    eventually("the leader publishes", Duration::from_secs(30), || async {
        relay_published_through(&pool, 50).await.then_some(())
    })
    .await;
    // Exactly one leader while all are healthy.
    for _ in 0..5 {
        assert_eq!(leaders(&instances).await.len(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let killed_at = Instant::now();
    drop(instances.remove(leader)); // SIGKILL
    let new_leader = eventually("a standby takes over", Duration::from_secs(10), || async {
        let leaders = leaders(&instances).await;
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await;
    eprintln!(
        "failover took {:?} (new leader: instance {new_leader})",
        killed_at.elapsed()
    );
    let taken_over_at = relay_cursor(&pool).await;
    eventually(
        "the new leader publishes",
        Duration::from_secs(30),
        || async { (relay_cursor(&pool).await > taken_over_at).then_some(()) },
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    let accepted = writer.await.unwrap();
    wait_for_relay_to_drain(&pool, Duration::from_secs(60)).await;

    // Jepsen-style: every committed event is readable from Kafka.
    let committed = committed_events(&pool, "Product").await;
    let mut missing = committed.clone();
    let topic = TopicReader::new("Product");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !missing.is_empty() {
        let Some(message) = topic.next(deadline).await else {
            break;
        };
        missing.remove(&(message.headers.aggregate_id, message.headers.sequence));
    }
    assert!(
        missing.is_empty(),
        "{} of {} committed events never reached Kafka ({accepted} commands accepted), e.g. {:?}",
        missing.len(),
        committed.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
}
