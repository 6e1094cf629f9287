//! Group commit against the real primary: appends queued while one is being
//! written go into the next `append_events` call together (one
//! transaction), and when that call fails for one command's conflict, every
//! other command of the batch is still appended and only the conflicting
//! one fails. The writer is held deterministically by a transaction holding
//! a lock that blocks inserts into `events`, while the batch queues up
//! behind it. (A binary of its own: it locks the events table.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use command_service::group_commit::{Append, AppendError, GroupCommit, GroupCommitSettings};
use cqrs_es::persist::SerializedEvent;
use e2e_tests::{eventually, stack_without_relay};
use serde_json::json;
use service_runtime::postgres::DbPool;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

fn renamed(aggregate_id: &str, sequence: usize) -> Append {
    Append {
        aggregate_type: schema::product::AGGREGATE_TYPE,
        events: vec![SerializedEvent {
            aggregate_id: aggregate_id.to_owned(),
            sequence,
            aggregate_type: schema::product::AGGREGATE_TYPE.to_owned(),
            event_type: "ProductRenamed".to_owned(),
            event_version: "1".to_owned(),
            payload: json!({"ProductRenamed": {"name": "group commit"}}),
            metadata: json!({"command_id": Uuid::now_v7().to_string(),
                             "occurred_at": chrono::Utc::now().to_rfc3339()}),
        }],
        snapshot: None,
        idempotency: None,
    }
}

fn fresh_id() -> String {
    format!("group-commit-{}", Uuid::new_v4())
}

/// Holds a lock that blocks every insert into `events` until the returned
/// connection's transaction ends, and waits until `appends` has a call
/// stuck behind it.
async fn hold_the_writer(pool: &PgPool, appends: &GroupCommit) -> PgConnection {
    let mut lock = PgConnection::connect(&stack_without_relay().primary_url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
    sqlx::query("LOCK TABLE events IN SHARE MODE")
        .execute(&mut lock)
        .await
        .unwrap();
    let appends = appends.clone();
    tokio::spawn(async move { appends.append(renamed(&fresh_id(), 1)).await.unwrap() });
    eventually(
        "an append waits for the lock",
        Duration::from_secs(10),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
              WHERE wait_event_type = 'Lock' AND query LIKE 'SELECT append_events(%'",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            (waiting == 1).then_some(())
        },
    )
    .await;
    lock
}

/// Queues `batch` behind the held writer, releases it, and returns each
/// append's outcome in order.
async fn queue_then_release(
    appends: &GroupCommit,
    lock: PgConnection,
    batch: Vec<Append>,
) -> Vec<Result<i64, AppendError>> {
    let tasks: Vec<_> = batch
        .into_iter()
        .map(|append| {
            let appends = appends.clone();
            tokio::spawn(async move { appends.append(append).await })
        })
        .collect();
    // Enqueueing is a channel send; give every task the time to do it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    lock.close().await.unwrap(); // ends the transaction, releasing the lock
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

async fn transaction_of(pool: &PgPool, aggregate_id: &str) -> String {
    sqlx::query_scalar(
        "SELECT transaction_id::text FROM events WHERE aggregate_type = 'Product' AND aggregate_id = $1",
    )
    .bind(aggregate_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_batch_commits_together_and_a_conflict_fails_only_its_command() {
    let pool = PgPoolOptions::new()
        .connect(&stack_without_relay().primary_url)
        .await
        .unwrap();
    let appends = GroupCommit::start(
        DbPool::direct(pool.clone()),
        GroupCommitSettings {
            max_batch: 64,
            workers: 1,
            idempotency_ttl: Duration::from_secs(60),
        },
    );

    // Nine appends queued behind a held writer: one call, one transaction.
    let ids: Vec<String> = (0..9).map(|_| fresh_id()).collect();
    let lock = hold_the_writer(&pool, &appends).await;
    let outcomes = queue_then_release(
        &appends,
        lock,
        ids.iter().map(|id| renamed(id, 1)).collect(),
    )
    .await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let first = transaction_of(&pool, &ids[0]).await;
    for id in &ids {
        assert_eq!(
            transaction_of(&pool, id).await,
            first,
            "{id} was not in the batch's transaction"
        );
    }

    // The same, with one command appending a sequence that exists: the
    // batch's call fails as a whole, and each command is appended alone.
    let taken = fresh_id();
    appends.append(renamed(&taken, 1)).await.unwrap();
    let ids: Vec<String> = (0..9).map(|_| fresh_id()).collect();
    let mut batch: Vec<Append> = ids.iter().map(|id| renamed(id, 1)).collect();
    batch.insert(4, renamed(&taken, 1));
    let lock = hold_the_writer(&pool, &appends).await;
    let mut outcomes = queue_then_release(&appends, lock, batch).await;
    match outcomes.remove(4) {
        Err(AppendError::Database(sqlx::Error::Database(e))) => {
            assert_eq!(e.code().as_deref(), Some("23505"), "{e}");
        }
        other => panic!("the conflicting append must fail with a unique violation: {other:?}"),
    }
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    for id in &ids {
        transaction_of(&pool, id).await; // appended
    }
}
