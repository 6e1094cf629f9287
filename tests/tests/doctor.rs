//! `doctor` (make doctor) against four injected bottlenecks while `loadgen
//! mix` runs: a dropped index on the customer-history read path, a
//! query-service with pools of one connection, a stopped projector and a
//! replica with `recovery_min_apply_delay`. The report must name each one
//! first (kind and subject); a healthy stack under the same load shows none
//! of the four.
//!
//! One scenario at a time on this binary's stack (they share it and each
//! breaks it on purpose): every test takes [`SERIAL`] and starts by undoing
//! whatever an earlier, failed test may have left broken.
//!
//! Needs `target/debug/{doctor,loadgen,projector}` (`make test` builds
//! every binary first).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_tests::{
    eventually, protection_env, stack_without_projector as stack, workspace_binary,
    ProjectorProcess, QueryService,
};
use serde_json::Value;
use sqlx::PgPool;

/// One scenario at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The projector of this binary (a process, so it can be stopped).
static PROJECTOR: Mutex<Option<ProjectorProcess>> = Mutex::new(None);

/// Rows seeded into `customer_order_history`: enough that a sequential scan
/// is real work (tens of milliseconds), not a page or two.
const HISTORY_ROWS: i64 = 200_000;

/// The doctor's window: long enough for several gauge samples on a slow
/// machine, short enough for five scenarios in the time budget.
const WINDOW_SECS: &str = "5";

/// The four injected kinds: none of them may show on a healthy stack.
const INJECTED_KINDS: [&str; 5] = [
    "missing_index",
    "pool_saturated",
    "projector_stalled",
    "projector_behind",
    "replica_lag",
];

async fn primary() -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&stack().primary_url)
        .await
        .expect("connect to the primary")
}

/// Puts the stack back to healthy (whatever an earlier failed test left)
/// and seeds the history rows once. Returns a pool on the primary.
async fn healthy() -> PgPool {
    let stack = stack();
    let pool = primary().await;
    {
        let mut projector = PROJECTOR.lock().unwrap();
        let running = projector.as_mut().is_some_and(|p| p.exited().is_none());
        match projector.as_ref() {
            // A projector an earlier test left stopped resumes.
            Some(p) if running => p.signal("CONT"),
            _ => *projector = Some(ProjectorProcess::spawn("doctor")),
        }
    }
    stack.set_replica_apply_delay(0, None);
    restore_history_key(&pool).await;
    let seeded: i64 = sqlx::query_scalar("SELECT count(*) FROM customer_order_history")
        .fetch_one(&pool)
        .await
        .unwrap();
    if seeded < HISTORY_ROWS {
        // Recent rows of random customers: inside the range a history read
        // covers by default (the last 90 days), so a read without its index
        // scans all of them.
        sqlx::query(
            "INSERT INTO customer_order_history
                    (customer_id, occurred_at, order_id, version, kind, amount_minor, currency)
             SELECT gen_random_uuid(), now() - random() * interval '2 days',
                    gen_random_uuid(), 1, 'OrderPlaced', 100, 'EUR'
               FROM generate_series(1, $1)",
        )
        .bind(HISTORY_ROWS)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("ANALYZE customer_order_history")
            .execute(&pool)
            .await
            .unwrap();
    }
    // The replicas have the rows (and the key) before anything is measured.
    for url in &stack.replica_urls {
        let replica = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .unwrap();
        eventually(
            "the seeded history reaches the replica",
            Duration::from_secs(30),
            || {
                let replica = replica.clone();
                async move {
                    let rows: i64 =
                        sqlx::query_scalar("SELECT count(*) FROM customer_order_history")
                            .fetch_one(&replica)
                            .await
                            .ok()?;
                    let keyed: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM pg_constraint \
                      WHERE conname = 'customer_order_history_pkey')",
                    )
                    .fetch_one(&replica)
                    .await
                    .ok()?;
                    (rows >= HISTORY_ROWS && keyed).then_some(())
                }
            },
        )
        .await;
        replica.close().await;
    }
    eventually("the projector answers", Duration::from_secs(30), || async {
        let port = PROJECTOR.lock().unwrap().as_ref().map(|p| p.port)?;
        reqwest::get(format!("http://127.0.0.1:{port}/health/ready"))
            .await
            .ok()?
            .status()
            .is_success()
            .then_some(())
    })
    .await;
    pool
}

/// The history table's primary key, the index its reads use: back if gone.
async fn restore_history_key(pool: &PgPool) {
    sqlx::query(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'customer_order_history_pkey')
           THEN ALTER TABLE customer_order_history
                  ADD PRIMARY KEY (customer_id, occurred_at, order_id, version);
           END IF;
         END $$",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// `loadgen mix` running in the background; stopped (SIGTERM, then KILL)
/// when dropped.
struct Load {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Load {
    /// Starts `loadgen mix` against `query_url` with `args` and waits until
    /// its seeding is done and the measured load runs.
    async fn start(query_url: &str, args: &[&str]) -> Self {
        let stack = stack();
        let mut child = Command::new(workspace_binary("loadgen"))
            .arg("mix")
            .args(["--command-url", &stack.command_url])
            .args(["--query-url", query_url])
            .args([
                "--products",
                "20",
                "--customers",
                "200",
                "--seed-orders",
                "40",
            ])
            .args(["--duration", "120"])
            .args(args)
            .envs(protection_env())
            .env_remove("JWT_SECRET_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn loadgen mix");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stderr);
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let mut load = Self { child, stderr };
        let started = Instant::now();
        loop {
            if load.stderr().contains("; running") {
                break;
            }
            if let Some(status) = load.child.try_wait().unwrap() {
                panic!(
                    "loadgen mix exited ({status}) before running:\n{}",
                    load.stderr()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "loadgen mix did not start its load within 90 s:\n{}",
                load.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A moment of steady load before anything is injected or measured.
        tokio::time::sleep(Duration::from_secs(2)).await;
        load
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open-loop load with the default mix: commands, cached and uncached
/// reads, customer histories; modest, so a slow machine keeps up with it.
const MIX_AT_A_RATE: [&str; 2] = ["--rate", "60"];

/// Runs `doctor --json` against the stack (query-service at `query_url`);
/// returns its findings.
async fn doctor(query_url: &str) -> Vec<Value> {
    doctor_with_notes(query_url).await.0
}

/// [`doctor`], with the report's notes.
async fn doctor_with_notes(query_url: &str) -> (Vec<Value>, Vec<String>) {
    let stack = stack();
    let projector_url = {
        let projector = PROJECTOR.lock().unwrap();
        format!("http://127.0.0.1:{}", projector.as_ref().unwrap().port)
    };
    let mut command = Command::new(workspace_binary("doctor"));
    command
        .args(["--primary-url", &stack.primary_url])
        .args(["--replica-urls", &stack.replica_urls.join(",")])
        .args(["--redis-url", &stack.redis_url])
        .args(["--brokers", &stack.brokers])
        .args(["--topic-prefix", &stack.topic_prefix])
        .args(["--group", "projector"])
        .args(["--command-url", &stack.command_url])
        .args(["--query-url", query_url])
        .args(["--projector-url", &projector_url])
        .args(["--window", WINDOW_SECS, "--json"])
        .stdin(Stdio::null());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run doctor");
    assert!(
        output.status.success(),
        "doctor failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("doctor --json");
    let findings = report["findings"].as_array().cloned().unwrap_or_default();
    eprintln!("doctor findings:");
    for f in &findings {
        eprintln!(
            "  {}. {} [{}] {} (score {}): {}",
            f["rank"], f["kind"], f["severity"], f["subject"], f["score"], f["why"]
        );
    }
    // What the findings were drawn from, so a failed scenario explains itself.
    let observations = &report["observations"];
    eprintln!("doctor notes: {}", observations["notes"]);
    eprintln!(
        "doctor consumer samples: {}",
        observations["consumer"]["samples"]
    );
    let notes = observations["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    (findings, notes)
}

/// Asserts the first finding is of `kind` about a subject containing
/// `subject`.
fn assert_first(findings: &[Value], kind: &str, subject: &str) -> Value {
    let all = serde_json::to_string_pretty(findings).unwrap();
    let first = findings
        .first()
        .unwrap_or_else(|| panic!("no finding at all; expected {kind} {subject}"));
    assert_eq!(first["kind"], kind, "first finding is not {kind}:\n{all}");
    assert!(
        first["subject"]
            .as_str()
            .unwrap_or_default()
            .contains(subject),
        "first finding is about {}, not {subject}:\n{all}",
        first["subject"]
    );
    first.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_stack_under_load_shows_none_of_the_four() {
    let _serial = SERIAL.lock().await;
    let _primary = healthy().await;
    let load = Load::start(&stack().query_url, &MIX_AT_A_RATE).await;
    let findings = doctor(&stack().query_url).await;
    let injected: Vec<&Value> = findings
        .iter()
        .filter(|f| INJECTED_KINDS.contains(&f["kind"].as_str().unwrap_or_default()))
        .collect();
    assert!(
        injected.is_empty(),
        "a healthy stack reported {}\n(loadgen: {})",
        serde_json::to_string_pretty(&injected).unwrap(),
        load.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_index_on_the_history_read_path_is_named_first() {
    let _serial = SERIAL.lock().await;
    let primary = healthy().await;
    let _load = Load::start(&stack().query_url, &MIX_AT_A_RATE).await;
    sqlx::query("ALTER TABLE customer_order_history DROP CONSTRAINT customer_order_history_pkey")
        .execute(&primary)
        .await
        .unwrap();
    // Replicas replay the drop, then history reads scan.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let findings = doctor(&stack().query_url).await;
    restore_history_key(&primary).await;
    let first = assert_first(&findings, "missing_index", "customer_order_history");
    let lever = first["lever"].as_str().unwrap_or_default();
    assert!(
        lever.contains("CREATE INDEX") && lever.contains("customer_id"),
        "the lever names the index to add: {lever}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_one_connection_is_named_first() {
    let _serial = SERIAL.lock().await;
    let _primary = healthy().await;
    let query = QueryService::start(|c| {
        c.replica_pool_size = 1;
        c.primary_pool_size = 1;
    })
    .await;
    // Closed loop, reads that need a database: the clients always have a
    // read waiting for a connection, as a busy service would.
    let _load = Load::start(
        &query.url,
        &[
            "--concurrency",
            "32",
            "--mix",
            "get_order_uncached=1,customer_orders=1,list_products=1,get_product=1",
        ],
    )
    .await;
    let findings = doctor(&query.url).await;
    let first = assert_first(&findings, "pool_saturated", "query-service pool");
    assert!(
        first["lever"]
            .as_str()
            .unwrap_or_default()
            .contains("resize the pool"),
        "{first}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_projector_is_named_first() {
    let _serial = SERIAL.lock().await;
    let _primary = healthy().await;
    let _load = Load::start(&stack().query_url, &MIX_AT_A_RATE).await;
    PROJECTOR.lock().unwrap().as_ref().unwrap().signal("STOP");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let findings = doctor(&stack().query_url).await;
    PROJECTOR.lock().unwrap().as_ref().unwrap().signal("CONT");
    let first = assert_first(&findings, "projector_stalled", "projector");
    assert!(
        first["lever"]
            .as_str()
            .unwrap_or_default()
            .contains("more projector instances"),
        "{first}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_projector_is_named_first_when_its_offsets_are_unreadable_for_a_while() {
    let _serial = SERIAL.lock().await;
    let primary = healthy().await;
    let _load = Load::start(&stack().query_url, &MIX_AT_A_RATE).await;
    PROJECTOR.lock().unwrap().as_ref().unwrap().signal("STOP");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The projector's record of its offsets cannot be read during the first
    // half of the window: those rounds must not be judged by Kafka's hint.
    let mut lock = primary.begin().await.unwrap();
    sqlx::query("LOCK TABLE projector_offsets IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        lock.rollback().await.unwrap();
    });
    let (findings, notes) = doctor_with_notes(&stack().query_url).await;
    release.await.unwrap();
    PROJECTOR.lock().unwrap().as_ref().unwrap().signal("CONT");
    assert_first(&findings, "projector_stalled", "projector");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("projector_offsets") && n.contains("calls failed")),
        "the unreadable rounds are a note: {notes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_an_apply_delay_is_named_first() {
    let _serial = SERIAL.lock().await;
    let _primary = healthy().await;
    let _load = Load::start(&stack().query_url, &MIX_AT_A_RATE).await;
    stack().set_replica_apply_delay(0, Some(Duration::from_secs(3)));
    // The lag builds up to the delay over the delay.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let findings = doctor(&stack().query_url).await;
    stack().set_replica_apply_delay(0, None);
    let first = assert_first(&findings, "replica_lag", "replica-1");
    assert!(
        first["why"]
            .as_str()
            .unwrap_or_default()
            .contains("recovery_min_apply_delay"),
        "{first}"
    );
}
