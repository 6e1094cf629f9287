//! Every service through PgBouncer in transaction mode (Debian 12's 1.18,
//! started by `deploy/local/stack` with `PGBOUNCER=1`, configured as in
//! production: `server_reset_query_always = 1`, `DEALLOCATE ALL`).
//!
//! - A plain sqlx pool fails there: sqlx prepares a statement in one
//!   protocol exchange and executes it in the next, and PgBouncer ends the
//!   server connection's transaction (and deallocates) in between. This is
//!   the control that shows the other tests would fail without
//!   `service_runtime::postgres::DbPool`.
//! - `Limits` (statement timeout, read-only) hold behind it, although
//!   PgBouncer drops the startup parameters that carry them directly.
//! - command-service configured with `PRIMARY_TRANSACTION_POOLER=true`
//!   accepts concurrent commands through it with nothing lost or doubled,
//!   replays Idempotency-Keys, and still relays: the relay's leadership is a
//!   session-level advisory lock, held over `PRIMARY_SESSION_DATABASE_URL`.
//! - The projector and query-service do their work through it too, and
//!   fail without the flag.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use e2e_tests::{
    client, create_product, relay_role, repo_root, stack_without_relay, wait_for_relay_to_drain,
    workspace_binary, CommandService, Stack,
};
use serde_json::json;
use service_runtime::postgres::{pool_options, DbPool, Limits};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

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

    // The same statement, 8 connections × 50 at once, through DbPool.
    let primary = DbPool::connect(
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
                    .expect("a statement inside the transaction DbPool opened");
                connection.finish().await.expect("commit");
                assert_eq!(answer, value);
            }
        })
    });
    for worker in workers {
        worker.await.expect("worker");
    }
}

/// `Limits` hold whichever way a pool is connected: directly they are
/// startup parameters, which PgBouncer drops (`ignore_startup_parameters`),
/// so there they are set per transaction, and must not leak to the next
/// client of the same server connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_directly_and_through_pgbouncer_without_leaking_to_other_clients() {
    let stack = stack_without_relay();
    let limits = Limits {
        statement_timeout: Some(Duration::from_millis(200)),
        read_only: true,
    };
    for (url, pooler) in [(&stack.primary_url, false), (&stack.pgbouncer_url, true)] {
        let limited = DbPool::connect_lazy(
            PgConnectOptions::from_str(url).unwrap(),
            pooler,
            limits,
            pool_options(2, Duration::from_secs(10)),
        );
        assert_eq!(
            limits_in_force(&limited).await,
            ("200ms".to_owned(), "on".to_owned()),
            "pooler: {pooler}"
        );

        let mut connection = limited.acquire().await.unwrap();
        let error = sqlx::query("SELECT pg_sleep(2)")
            .execute(&mut *connection)
            .await
            .expect_err("cancelled by the statement timeout");
        assert_eq!(sql_state(&error), "57014", "pooler: {pooler}: {error}");
        drop(connection);

        let mut transaction = limited.begin().await.unwrap();
        let error = sqlx::query("CREATE TABLE limits_must_refuse_this (x int)")
            .execute(&mut *transaction)
            .await
            .expect_err("refused: read only");
        assert_eq!(sql_state(&error), "25006", "pooler: {pooler}: {error}");
        drop(transaction);
        limited.pool().close().await;
    }

    // Another client of PgBouncer, possibly on the very server connections
    // the limited pool used, runs with the server's defaults.
    let unlimited = DbPool::connect(
        &stack.pgbouncer_url,
        true,
        pool_options(2, Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert_eq!(
        limits_in_force(&unlimited).await,
        ("0".to_owned(), "off".to_owned())
    );
}

/// `statement_timeout` and `transaction_read_only` as a statement on `db`
/// sees them.
async fn limits_in_force(db: &DbPool) -> (String, String) {
    let mut connection = db.acquire().await.unwrap();
    let settings = sqlx::query_as(
        "SELECT current_setting('statement_timeout'), current_setting('transaction_read_only')",
    )
    .fetch_one(&mut *connection)
    .await
    .unwrap();
    connection.finish().await.unwrap();
    settings
}

/// A small pool straight to the primary, for what a test checks behind
/// PgBouncer's back.
async fn direct_pool(stack: &Stack) -> sqlx::PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&stack.primary_url)
        .await
        .unwrap()
}

/// Places an order of `product` for `customer` through the stack's
/// command-service; returns the 202 body.
async fn place_order(
    http: &reqwest::Client,
    stack: &Stack,
    product: &str,
    customer: uuid::Uuid,
) -> serde_json::Value {
    let response = http
        .post(format!("{}/orders", stack.command_url))
        .json(&json!({"customer_id": customer, "lines": [
            {"product_id": product, "quantity": 2,
             "unit_price": {"amount_minor": 100, "currency": "EUR"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}

fn sql_state(error: &sqlx::Error) -> String {
    error
        .as_database_error()
        .and_then(|error| error.code())
        .map(|code| code.into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_through_pgbouncer_are_all_stored_once_replayed_by_key_and_relayed() {
    let stack = stack_without_relay();
    let direct = direct_pool(stack).await;
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

/// The projector with `PRIMARY_TRANSACTION_POOLER=true` becomes ready
/// through PgBouncer, reads its stored offsets, applies batches, runs its
/// partition maintenance and answers `/metrics` there, migrating over its
/// direct session URL; `projector dlq list` works through it too. The same
/// process without the flag does not get that far: its statements run
/// outside transactions, which PgBouncer does not keep prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_consumes_through_pgbouncer_and_fails_there_without_the_pooler_flag() {
    let stack = stack_without_relay();
    let direct = direct_pool(stack).await;
    // Groups of their own: the stack's in-process projector (group
    // `projector`) writes the same read models.
    let group = format!("pgbouncer-{}", uuid::Uuid::new_v4().simple());
    let pooled = [
        ("PRIMARY_DATABASE_URL", stack.pgbouncer_url.as_str()),
        ("PRIMARY_TRANSACTION_POOLER", "true"),
        ("PRIMARY_SESSION_DATABASE_URL", stack.primary_url.as_str()),
        ("PROJECTOR_GROUP_ID", group.as_str()),
    ];

    // Control: the flag is what makes it work.
    let control_group = format!("pgbouncer-control-{}", uuid::Uuid::new_v4().simple());
    let mut control = e2e_tests::ProjectorProcess::spawn_with(
        "pgbouncer-control",
        &[
            ("PRIMARY_DATABASE_URL", stack.pgbouncer_url.as_str()),
            ("PROJECTOR_GROUP_ID", control_group.as_str()),
        ],
    );
    let status = e2e_tests::eventually(
        "the projector without the pooler flag to give up",
        Duration::from_secs(60),
        || {
            let exited = control.exited();
            async move { exited }
        },
    )
    .await;
    let log = std::fs::read_to_string(control.log_path()).unwrap();
    assert!(!status.success(), "{status}: {log}");
    assert!(log.contains("prepared statement"), "{log}");
    let output = Command::new(workspace_binary("projector"))
        .args(["dlq", "list"])
        .envs(e2e_tests::protection_env())
        .env("PRIMARY_DATABASE_URL", &stack.pgbouncer_url)
        .env("REDIS_URL", &stack.redis_url)
        .env("PROJECTOR_GROUP_ID", &control_group)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "dlq list without the flag: {stderr}"
    );
    assert!(stderr.contains("prepared statement"), "{stderr}");

    // Partitions further ahead than the stack's projector keeps (3 months),
    // so that this one's maintenance has something to create, and a
    // maintenance run every second after the one at start.
    let mut environment = pooled.to_vec();
    environment.extend([
        ("PARTITIONS_AHEAD_MONTHS", "5"),
        ("PARTITION_MAINTENANCE_INTERVAL_S", "1"),
        ("RUST_LOG", "info,projector::partitions=debug"),
    ]);
    let projector = e2e_tests::ProjectorProcess::spawn_with("pgbouncer", &environment);
    let ready = format!("http://127.0.0.1:{}/health/ready", projector.port);
    e2e_tests::eventually(
        "the projector behind PgBouncer to be ready",
        Duration::from_secs(60),
        || {
            let ready = ready.clone();
            async move {
                let response = reqwest::get(ready).await.ok()?;
                (response.status() == 200).then_some(())
            }
        },
    )
    .await;

    // A product and an order through the stack's command-service, published
    // as the relay would.
    let http = client();
    let product = create_product(&http, &stack.command_url, "pgbouncer projector").await;
    let product_id = product["aggregate_id"].as_str().unwrap().to_owned();
    let order = place_order(&http, stack, &product_id, uuid::Uuid::new_v4()).await;
    let order_id = order["aggregate_id"].as_str().unwrap().to_owned();
    let published = publish_like_the_relay(stack, &direct, &[product_id, order_id]).await;
    assert!(published.len() >= 2, "{published:?}");

    // The group's offsets (written by its batches through PgBouncer) reach
    // the ends of every partition, past the events published here.
    let ends = topic_ends(stack).await;
    for (topic, partition, offset) in &published {
        assert!(
            ends.get(&(topic.clone(), *partition))
                .is_some_and(|end| end > offset),
            "{topic}/{partition}@{offset} beyond the ends {ends:?}"
        );
    }
    e2e_tests::eventually(
        "the group's offsets to reach the topic ends",
        Duration::from_secs(60),
        || {
            let (direct, group, ends) = (&direct, &group, &ends);
            async move {
                let stored: BTreeMap<(String, i32), i64> = sqlx::query_as(
                    "SELECT topic, partition, next_offset FROM projector_offsets \
                      WHERE consumer_group = $1",
                )
                .bind(group)
                .fetch_all(direct)
                .await
                .unwrap()
                .into_iter()
                .map(|(topic, partition, next): (String, i32, i64)| ((topic, partition), next))
                .collect();
                ends.iter()
                    .all(|(key, end)| stored.get(key).is_some_and(|next| next >= end))
                    .then_some(())
            }
        },
    )
    .await;
    let dead: i64 =
        sqlx::query_scalar("SELECT count(*) FROM projector_dead_letters WHERE consumer_group = $1")
            .bind(&group)
            .fetch_one(&direct)
            .await
            .unwrap();
    assert_eq!(dead, 0, "dead letters of {group}");

    let metrics = projector.metrics().await.expect("/metrics answers");
    let applied: f64 = metric(&metrics, "projector_applied_events_total");
    assert!(applied >= published.len() as f64, "{metrics}");
    assert_eq!(metric(&metrics, "projector_dead_letters"), 0.0, "{metrics}");

    let listed = e2e_tests::projector_cli(&["dlq", "list"], &pooled);
    assert!(listed.contains("0 dead letter(s)"), "{listed}");

    // Maintenance created the months the stack's projector does not keep,
    // and keeps running (every second) without failing.
    let furthest = projector::partitions::Month::of(chrono::Utc::now())
        .plus(5)
        .unwrap()
        .partition_name();
    let attached: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
          WHERE i.inhparent = 'customer_order_history'::regclass AND c.relname = $1)",
    )
    .bind(&furthest)
    .fetch_one(&direct)
    .await
    .unwrap();
    assert!(attached, "{furthest} was not created");
    let log = e2e_tests::eventually(
        "a periodic partition maintenance run",
        Duration::from_secs(30),
        || {
            let log = std::fs::read_to_string(projector.log_path()).unwrap();
            async move { log.contains("history partitions up to date").then_some(log) }
        },
    )
    .await;
    for failure in [
        "prepared statement",
        "partition maintenance at start failed",
        "history partition maintenance failed",
        "cannot read stored offsets",
        "applying batch failed",
        "cannot count dead letters",
        "cannot read rebuild progress",
    ] {
        assert!(!log.contains(failure), "{failure} in the log:\n{log}");
    }
}

/// Publishes the stored events of `aggregate_ids` with the relay's headers,
/// key and payload: this binary's stack runs no relay, and one started here
/// would compete for the lease the command-path test expects its own relay
/// to hold. Returns (topic, partition, offset) of each.
async fn publish_like_the_relay(
    stack: &Stack,
    direct: &sqlx::PgPool,
    aggregate_ids: &[String],
) -> Vec<(String, i32, i64)> {
    type Row = (String, String, i64, i64, String, String, String, String);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence, position, event_type, event_version, \
                payload::text, metadata ->> 'occurred_at' \
           FROM events WHERE aggregate_id = ANY($1) ORDER BY transaction_id, position",
    )
    .bind(aggregate_ids)
    .fetch_all(direct)
    .await
    .unwrap();
    let mut published = Vec::new();
    for (
        aggregate_type,
        aggregate_id,
        sequence,
        position,
        event_type,
        event_version,
        payload,
        at,
    ) in rows
    {
        let headers = schema::envelope::EventHeaders {
            aggregate_type,
            aggregate_id,
            sequence,
            position,
            event_type,
            event_version,
            occurred_at: chrono::DateTime::parse_from_rfc3339(&at)
                .unwrap()
                .with_timezone(&chrono::Utc),
        };
        let topic = schema::envelope::topic_for(&stack.topic_prefix, &headers.aggregate_type);
        let (partition, offset) = e2e_tests::produce_raw(&headers, &payload).await;
        published.push((topic, partition, offset));
    }
    published
}

/// The end (high watermark) of every partition of every event topic that
/// holds messages.
async fn topic_ends(stack: &Stack) -> BTreeMap<(String, i32), i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let settings = e2e_tests::command_service_config(stack).topics;
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = settings.client_config().create().unwrap();
        let mut ends = BTreeMap::new();
        for topic in settings.topics() {
            for partition in 0..settings.partitions {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                    .unwrap();
                if high > 0 {
                    ends.insert((topic.clone(), partition), high);
                }
            }
        }
        ends
    })
    .await
    .unwrap()
}

/// The value of the unlabelled metric `name` in a Prometheus text page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {page}"))
}

/// query-service with its primary behind PgBouncer
/// (`PRIMARY_TRANSACTION_POOLER=true`) and no replicas, so that every read
/// and every health check goes through the pooler: documents, lists and
/// read-your-writes come back from the primary, and a miss is a 404 problem.
/// The control, the same configuration without the flag, serves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_service_reads_through_pgbouncer_and_fails_there_without_the_pooler_flag() {
    let stack = stack_without_relay();
    let direct = direct_pool(stack).await;
    let behind_pgbouncer = |pooler: bool| {
        move |config: &mut query_service::config::Config| {
            config.primary_database_url = stack.pgbouncer_url.clone();
            config.primary_transaction_pooler = pooler;
            config.replica_database_urls = Vec::new();
            // Long enough for the projection to land while a read with a
            // token waits (polling the primary through PgBouncer), within
            // the request timeout (5 s).
            config.consistent_read_timeout = Duration::from_secs(3);
        }
    };
    let query = e2e_tests::QueryService::start(behind_pgbouncer(true)).await;

    // A product and an order through the stack's command-service, published
    // as the relay would; the stack's projector writes the read models.
    let http = client();
    let product = create_product(&http, &stack.command_url, "pgbouncer query").await;
    let product_id = product["aggregate_id"].as_str().unwrap().to_owned();
    let product_token = product["consistency_token"].as_str().unwrap().to_owned();
    let customer = uuid::Uuid::new_v4();
    let order = place_order(&http, stack, &product_id, customer).await;
    let order_id = order["aggregate_id"].as_str().unwrap().to_owned();
    let order_token = order["consistency_token"].as_str().unwrap().to_owned();
    publish_like_the_relay(stack, &direct, &[product_id.clone(), order_id.clone()]).await;

    let get = |path: String, headers: Vec<(&'static str, String)>| {
        let request = headers.into_iter().fold(
            http.get(format!("{}{path}", query.url)),
            |request, (name, value)| request.header(name, value),
        );
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .map(|value| value.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            let (source, content_type) = (header("x-read-source"), header("content-type"));
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (status, source, content_type, body)
        }
    };
    let no_cache = || ("cache-control", "no-cache".to_owned());

    // Read-your-writes: with its token, each document is served once the
    // primary has it (503 not-yet-consistent until then, never stale). The
    // caches are skipped: the projector puts order summaries in Redis.
    for (path, token) in [
        (format!("/products/{product_id}"), &product_token),
        (format!("/orders/{order_id}"), &order_token),
        (format!("/customers/{customer}/orders"), &order_token),
    ] {
        let body = e2e_tests::eventually(
            &format!("{path} with its consistency token"),
            Duration::from_secs(60),
            || {
                let read = get(
                    path.clone(),
                    vec![("consistency-token", token.clone()), no_cache()],
                );
                let path = &path;
                async move {
                    let (status, source, _, body) = read.await;
                    if status == 503 && body["type"] == "/problems/not-yet-consistent" {
                        return None;
                    }
                    assert_eq!(
                        (status, source.as_str()),
                        (200, "primary"),
                        "{path}: {body}"
                    );
                    Some(body)
                }
            },
        )
        .await;
        assert!(body.is_object(), "{path}: {body}");
    }

    // Plain reads, caches skipped: the primary answers through PgBouncer.
    for path in [
        format!("/products/{product_id}"),
        format!("/orders/{order_id}"),
        format!("/customers/{customer}/orders"),
        "/products?limit=5".to_owned(),
    ] {
        let (status, source, _, body) = get(path.clone(), vec![no_cache()]).await;
        assert_eq!(
            (status, source.as_str()),
            (200, "primary"),
            "{path}: {body}"
        );
    }
    let (_, _, _, summary) = get(format!("/orders/{order_id}"), vec![no_cache()]).await;
    assert_eq!(summary["customer_id"], customer.to_string());
    let (_, _, _, history) = get(format!("/customers/{customer}/orders"), vec![]).await;
    assert_eq!(
        history["items"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );

    // A miss is the database answering: 404, not an error of the pooler.
    for path in [
        format!("/products/{}", uuid::Uuid::new_v4()),
        format!("/orders/{}", uuid::Uuid::new_v4()),
    ] {
        let (status, _, content_type, body) = get(path.clone(), vec![no_cache()]).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(content_type, "application/problem+json", "{path}");
    }

    // Control: without the flag the same reads fail (the health checks and
    // reads prepare statements outside a transaction).
    let control = e2e_tests::QueryService::start(behind_pgbouncer(false)).await;
    for path in [
        format!("/products/{product_id}"),
        format!("/customers/{customer}/orders"),
    ] {
        let response = http
            .get(format!("{}{path}", control.url))
            .header("cache-control", "no-cache")
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(
            status.is_server_error(),
            "{path} without the pooler flag: {status} {body}"
        );
    }
}
