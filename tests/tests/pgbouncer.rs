//! The command path through PgBouncer in transaction mode (Debian 12's 1.18,
//! started by `deploy/local/stack` with `PGBOUNCER=1`, configured as in
//! production: `server_reset_query_always = 1`, `DEALLOCATE ALL`).
//!
//! - A plain sqlx pool fails there: sqlx prepares a statement in one
//!   protocol exchange and executes it in the next, and PgBouncer ends the
//!   server connection's transaction (and deallocates) in between. This is
//!   the control that shows the other tests would fail without
//!   `service_runtime::postgres::Primary`.
//! - command-service configured with `PRIMARY_TRANSACTION_POOLER=true`
//!   accepts concurrent commands through it with nothing lost or doubled,
//!   replays Idempotency-Keys, and still relays: the relay's leadership is a
//!   session-level advisory lock, held over `PRIMARY_SESSION_DATABASE_URL`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use e2e_tests::{
    client, create_product, relay_role, repo_root, stack_without_relay, wait_for_relay_to_drain,
    workspace_binary, CommandService, Stack,
};
use serde_json::json;
use service_runtime::postgres::{pool_options, Primary};
use sqlx::postgres::PgPoolOptions;

/// Transactions PgBouncer has carried to the `app` database so far
/// (`SHOW STATS` on its admin console, which speaks only the simple protocol:
/// psql).
fn pgbouncer_transactions(stack: &Stack) -> u64 {
    let port = stack
        .pgbouncer_url
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split('/').next())
        .expect("a port in the PgBouncer URL");
    let output = Command::new("psql")
        .args(["-qtAX", "-F", "|", "-h", "127.0.0.1", "-p", port])
        .args(["-U", "app", "-d", "pgbouncer", "-c", "SHOW STATS"])
        .env("PGPASSWORD", "app")
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "SHOW STATS: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Columns: database, total_xact_count, ...
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let mut columns = line.split('|');
            (columns.next() == Some("app")).then(|| columns.next())?
        })
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_outside_a_transaction_fails_through_pgbouncer_and_works_through_primary(
) {
    let stack = stack_without_relay();

    let plain = PgPoolOptions::new()
        .max_connections(1)
        .connect(&stack.pgbouncer_url)
        .await
        .expect("PgBouncer accepts the connection");
    let error = sqlx::query_scalar::<_, i32>("SELECT $1::int4")
        .bind(7)
        .fetch_one(&plain)
        .await
        .expect_err("a plain pool's prepared statement does not survive PgBouncer");
    assert!(
        error.to_string().contains("prepared statement"),
        "unexpected error: {error}"
    );

    // The same statement, 8 connections × 50 at once, through Primary.
    let primary = Primary::connect(
        &stack.pgbouncer_url,
        true,
        pool_options(8, Duration::from_secs(10)),
    )
    .await
    .expect("connect through PgBouncer");
    let workers = (0..8).map(|worker| {
        let primary = primary.clone();
        tokio::spawn(async move {
            for i in 0..50 {
                let value = worker * 1000 + i;
                let mut connection = primary.acquire().await.expect("acquire");
                let answer: i32 = sqlx::query_scalar("SELECT $1::int4")
                    .bind(value)
                    .fetch_one(&mut *connection)
                    .await
                    .expect("a statement inside the transaction Primary opened");
                connection.finish().await.expect("commit");
                assert_eq!(answer, value);
            }
        })
    });
    for worker in workers {
        worker.await.expect("worker");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_through_pgbouncer_are_all_stored_once_replayed_by_key_and_relayed() {
    let stack = stack_without_relay();
    let direct = PgPoolOptions::new()
        .max_connections(2)
        .connect(&stack.primary_url)
        .await
        .unwrap();
    // The only relay of this stack (stack_without_relay): if its leadership
    // lock went through PgBouncer, it would be lost at the end of the
    // statement's transaction and nothing would be published.
    let service = CommandService::start(|config| {
        config.database_url = stack.pgbouncer_url.clone();
        config.transaction_pooler = true;
        config.session_database_url = stack.primary_url.clone();
        config.relay.enabled = true;
        config.pool_size = 8;
    })
    .await;
    let before = pgbouncer_transactions(stack);

    // 16 clients, each with a product of its own and 15 renames; every
    // rename is sent twice with the same Idempotency-Key.
    const CLIENTS: usize = 16;
    const RENAMES: usize = 15;
    let http = client();
    let clients = (0..CLIENTS).map(|c| {
        let http = http.clone();
        let url = service.url.clone();
        tokio::spawn(async move {
            let created = create_product(&http, &url, &format!("pgbouncer {c}")).await;
            let id = created["aggregate_id"].as_str().unwrap().to_owned();
            for r in 0..RENAMES {
                let key = uuid::Uuid::new_v4().to_string();
                let mut replies = Vec::new();
                for _ in 0..2 {
                    let response = http
                        .post(format!("{url}/products/{id}/rename"))
                        .header("Idempotency-Key", &key)
                        .json(&json!({ "name": format!("pgbouncer {c}.{r}") }))
                        .send()
                        .await
                        .expect("POST rename");
                    let status = response.status().as_u16();
                    let body = response.text().await.expect("body");
                    assert_eq!(status, 202, "rename {c}.{r} through PgBouncer: {body}");
                    replies.push(body);
                }
                assert_eq!(replies[0], replies[1], "the replay of {key} differs");
            }
            id
        })
    });
    let mut ids = Vec::new();
    for handle in clients {
        ids.push(handle.await.expect("client"));
    }

    // Stored exactly once each: versions 1 (created) ..= 1 + RENAMES, no gaps.
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, sequence FROM events \
          WHERE aggregate_type = 'Product' AND aggregate_id = ANY($1) \
          ORDER BY aggregate_id, sequence",
    )
    .bind(&ids)
    .fetch_all(&direct)
    .await
    .unwrap();
    let mut sequences: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (id, sequence) in rows {
        sequences.entry(id).or_default().push(sequence);
    }
    let expected: Vec<i64> = (1..=(1 + RENAMES as i64)).collect();
    assert_eq!(sequences.len(), CLIENTS);
    for (id, found) in &sequences {
        assert_eq!(found, &expected, "events of {id}");
    }

    let carried = pgbouncer_transactions(stack) - before;
    let commands = (CLIENTS * (1 + RENAMES)) as u64;
    assert!(
        carried >= commands,
        "PgBouncer carried {carried} transactions for {commands} commands: \
         the commands did not go through it"
    );

    assert_eq!(
        relay_role(&service.url).await.as_deref(),
        Some("leader"),
        "the relay leads over its direct session"
    );
    wait_for_relay_to_drain(&direct, Duration::from_secs(60)).await;
}

/// `command-service migrate` (the compose and Kubernetes migration job)
/// applies every migration to an empty database over the direct URL and
/// exits 0; a second run finds nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migrate_command_applies_every_migration_and_exits() {
    let stack = stack_without_relay();
    let server = stack
        .primary_url
        .strip_suffix("/app")
        .expect("the stack's URL names database app");
    let superuser_url = format!("{}/postgres", server.replacen("app:app@", "postgres@", 1));
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&superuser_url)
        .await
        .expect("the stack trusts local connections");
    sqlx::query("DROP DATABASE IF EXISTS migrate_check")
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE migrate_check OWNER app")
        .execute(&admin)
        .await
        .unwrap();
    let url = format!("{server}/migrate_check");

    for run in 1..=2 {
        let output = Command::new(workspace_binary("command-service"))
            .arg("migrate")
            .env_clear()
            .env("PRIMARY_DATABASE_URL", &url)
            .output()
            .expect("run command-service migrate");
        assert!(
            output.status.success(),
            "migrate run {run}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let files = std::fs::read_dir(repo_root().join("schema/migrations"))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    let checked = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&checked)
        .await
        .unwrap();
    assert_eq!(applied, files as i64, "migrations applied by `migrate`");
    checked.close().await;
    sqlx::query("DROP DATABASE migrate_check WITH (FORCE)")
        .execute(&admin)
        .await
        .unwrap();
}
