//! Optimistic concurrency under contention: many writers on a few hot
//! aggregates. Every command either appends exactly the next sequence or is
//! refused with 409 (a concurrent writer won) or 412 (stale If-Match); no
//! gaps, no duplicates, no 5xx. (A binary of its own: it loads the stack.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use e2e_tests::{create_product, stack};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;

const WRITERS: usize = 64;
const COMMANDS_PER_WRITER: usize = 1_000;
const HOT_AGGREGATES: usize = 10;

#[derive(Default)]
struct Outcomes {
    accepted: AtomicU64,
    conflict: AtomicU64,
    stale: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contended_writers_leave_contiguous_sequences_and_get_409_or_412() {
    let client = e2e_tests::client_builder()
        .pool_max_idle_per_host(WRITERS)
        .build()
        .unwrap();
    let mut products = Vec::new();
    for n in 0..HOT_AGGREGATES {
        let body = create_product(&client, &stack().command_url, &format!("hot {n}")).await;
        products.push(body["aggregate_id"].as_str().unwrap().to_owned());
    }
    let products = Arc::new(products);
    let outcomes = Arc::new(Outcomes::default());

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (client, products, outcomes) = (client.clone(), products.clone(), outcomes.clone());
            tokio::spawn(async move {
                // The version this writer last saw per aggregate: half of its
                // commands assert it with If-Match, half go unguarded.
                let mut seen: HashMap<usize, i64> = HashMap::new();
                for i in 0..COMMANDS_PER_WRITER {
                    let target = (writer + i) % HOT_AGGREGATES;
                    let mut request = client
                        .post(format!(
                            "{}/products/{}/rename",
                            stack().command_url,
                            products[target]
                        ))
                        .json(&json!({"name": format!("w{writer}-c{i}")}));
                    if i % 2 == 0 {
                        if let Some(version) = seen.get(&target) {
                            request = request.header("If-Match", format!("\"{version}\""));
                        }
                    }
                    let response = request.send().await.unwrap();
                    let status = response.status();
                    let body: Value = response.json().await.unwrap();
                    match status {
                        StatusCode::ACCEPTED => {
                            outcomes.accepted.fetch_add(1, Ordering::Relaxed);
                            seen.insert(target, body["version"].as_i64().unwrap());
                        }
                        StatusCode::CONFLICT => {
                            assert_eq!(body["type"], "/problems/concurrent-write", "{body}");
                            outcomes.conflict.fetch_add(1, Ordering::Relaxed);
                        }
                        StatusCode::PRECONDITION_FAILED => {
                            assert_eq!(body["type"], "/problems/stale-version", "{body}");
                            outcomes.stale.fetch_add(1, Ordering::Relaxed);
                            seen.remove(&target);
                        }
                        other => panic!("writer {writer} command {i}: unexpected {other}: {body}"),
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }

    let accepted = outcomes.accepted.load(Ordering::Relaxed);
    let conflict = outcomes.conflict.load(Ordering::Relaxed);
    let stale = outcomes.stale.load(Ordering::Relaxed);
    eprintln!("accepted {accepted}, 409 {conflict}, 412 {stale}");
    assert_eq!(
        accepted + conflict + stale,
        (WRITERS * COMMANDS_PER_WRITER) as u64
    );
    assert!(conflict > 0 && stale > 0, "the run produced no contention");

    let pool = PgPoolOptions::new()
        .connect(&stack().primary_url)
        .await
        .unwrap();
    let mut appended = 0;
    for id in products.iter() {
        let (count, min, max): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), min(sequence), max(sequence) FROM events \
              WHERE aggregate_type = 'Product' AND aggregate_id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            (min, max),
            (1, count),
            "sequences of {id} are not 1..={count}"
        );
        appended += count - 1; // minus ProductCreated
    }
    assert_eq!(
        appended as u64, accepted,
        "every 202 appended exactly one event"
    );
}
