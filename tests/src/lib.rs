//! The end-to-end harness: one real stack per test binary.
//!
//! [`stack()`] starts, on first use, Postgres primary + two streaming replicas,
//! Redis and the Kafka-protocol broker through the project's own
//! `deploy/local/stack infra-up` (free loopback ports, a fresh directory), then
//! runs command-service, projector and query-service in-process on a runtime of
//! their own (so every test, whatever its runtime, talks to them over HTTP).
//! A `stack watch-down` process tears the infrastructure down when the test
//! binary exits, however it exits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod read_models;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use service_runtime::shutdown::CancellationToken;

/// Addresses of a running stack.
#[derive(Debug, Clone)]
pub struct Stack {
    pub primary_url: String,
    /// PgBouncer (transaction mode) in front of the primary; the stack's own
    /// services do not use it (tests/tests/pgbouncer.rs does).
    pub pgbouncer_url: String,
    /// Replica 1, `replica_urls[0]`: for tests that read one replica directly.
    pub replica_url: String,
    /// Every streaming replica, replica 1 (`replica_url`) first: query-side
    /// tests need more than one to lag or fail one while the other serves.
    pub replica_urls: Vec<String>,
    pub redis_url: String,
    pub brokers: String,
    pub topic_prefix: String,
    pub command_url: String,
    pub query_url: String,
    /// The in-process projector's HTTP endpoint (health, metrics, admin);
    /// None for [`stack_without_projector`].
    pub projector_url: Option<String>,
    /// Where `deploy/local/stack` keeps data, logs and pidfiles.
    pub dir: PathBuf,
}

/// The HS256 secret the test services verify tokens with (in-process
/// services get it through [`auth_config`], spawned binaries through
/// [`protection_env`]).
pub const JWT_SECRET: &str = "e2e-test-secret-e2e-test-secret-0123456789";
pub const JWT_ISSUER: &str = "e2e-tests";
pub const JWT_AUDIENCE: &str = "cqrs-skeleton";

/// The token settings every service of the test stack uses.
pub fn auth_config() -> access_control::AuthConfig {
    access_control::AuthConfig::hs256(JWT_SECRET, JWT_ISSUER, JWT_AUDIENCE).expect("test secret")
}

/// The settings in-process services get from [`auth_config`] and
/// [`generous_rate_limits`], as environment variables for spawned service
/// binaries.
pub fn protection_env() -> [(&'static str, &'static str); 7] {
    [
        ("JWT_ALGORITHM", "HS256"),
        ("JWT_SECRET", JWT_SECRET),
        ("JWT_ISSUER", JWT_ISSUER),
        ("JWT_AUDIENCE", JWT_AUDIENCE),
        ("RATE_LIMIT_COMMANDS", "1000000/s"),
        ("RATE_LIMIT_READS", "1000000/s"),
        ("RATE_LIMIT_ADMIN", "1000000/s"),
    ]
}

/// A token for `subject` with `scopes`, limited to `customer` if given,
/// valid for an hour.
pub fn token(
    subject: &str,
    scopes: &[access_control::Scope],
    customer: Option<uuid::Uuid>,
) -> String {
    access_control::issue_token(
        &auth_config(),
        &access_control::TokenRequest {
            subject: subject.to_owned(),
            scopes: scopes.to_vec(),
            customer_id: customer,
            ttl: Duration::from_secs(3600),
        },
    )
    .expect("issue token")
}

/// Rate limits of the shared test stack: every class on (so every request
/// goes through the limiter's Redis round trip, as in production) but far
/// above what any test sends through its one token; tests of the limits
/// themselves start services of their own with low ones.
pub fn generous_rate_limits() -> traffic_control::RateLimitConfig {
    let policy = |class| traffic_control::RateLimitPolicy {
        class,
        rate: 1_000_000,
        period: Duration::from_secs(1),
        burst: 1_000_000,
    };
    traffic_control::RateLimitConfig {
        commands: Some(policy("commands")),
        reads: Some(policy("reads")),
        admin: Some(policy("admin")),
        ..traffic_control::RateLimitConfig::default()
    }
}

/// A client whose requests carry a token with every scope (a trusted
/// back-office caller), and a 10 s timeout; tests of auth itself build
/// their own requests.
pub fn client_builder() -> reqwest::ClientBuilder {
    use access_control::Scope;
    let bearer = format!(
        "Bearer {}",
        token("e2e", &[Scope::Read, Scope::Write, Scope::Admin], None)
    );
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&bearer).expect("header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(10))
        // Below the services' keep-alive, so the client, never the server,
        // drops an idle connection (no request races a server-side close).
        .pool_idle_timeout(service_runtime::http::KEEP_ALIVE / 2)
}

/// [`client_builder`], built.
pub fn client() -> reqwest::Client {
    client_builder().build().expect("reqwest client")
}

/// Relay delivery timeout of the test stack: short, so that fault tests see
/// a stalled broker turn into failed batches quickly.
pub const RELAY_DELIVERY_TIMEOUT: Duration = Duration::from_secs(3);

impl Stack {
    /// Sends `signal` (e.g. `STOP`, `CONT`) to a component started by the
    /// stack script (`broker`, `redis`, ...), found by its pidfile.
    pub fn signal(&self, component: &str, signal: &str) {
        let pidfile = self.dir.join("run").join(format!("{component}.pid"));
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap_or_else(|e| panic!("{}: {e}", pidfile.display()));
        let pid = pid
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", pidfile.display()));
        signal_pid(pid, signal);
    }

    /// Sends `signal` to the primary's postmaster and all its children:
    /// `STOP` freezes every open connection too, as a hung host would.
    pub fn signal_primary(&self, signal: &str) {
        self.signal_postgres("pg-primary", signal);
    }

    /// Sends `signal` to replica `index`'s (0 or 1, as in `replica_urls`)
    /// postmaster and all its children, like [`Stack::signal_primary`]: `STOP`
    /// hangs the pooled connections a reader already holds, not just new
    /// ones, which is what a replica that stops answering looks like.
    pub fn signal_replica(&self, index: usize, signal: &str) {
        self.signal_postgres(replica_data_dir(index), signal);
    }

    /// Sets replica `index`'s (0 or 1, as in `replica_urls`)
    /// `recovery_min_apply_delay` while it runs, through `deploy/local/stack
    /// replica-delay`: replication lag on demand, so a test can make one
    /// replica stale on purpose. `None` (or zero) turns it off, and WAL the
    /// replica was holding back is then applied at once; a change re-times
    /// WAL already held back. The delay counts from each commit on the
    /// primary, in whole milliseconds. Returns once new sessions on the
    /// replica see the value; panics with the script's output on failure.
    pub fn set_replica_apply_delay(&self, index: usize, delay: Option<Duration>) {
        let replica = replica_data_dir(index);
        let value = match delay {
            Some(delay) if delay.as_millis() > 0 => format!("{}ms", delay.as_millis()),
            _ => "off".to_owned(),
        };
        let output = Command::new(repo_root().join("deploy/local/stack"))
            .args(["replica-delay", &(index + 1).to_string(), &value])
            .env("STACK_DIR", &self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run deploy/local/stack replica-delay");
        assert!(
            output.status.success(),
            "stack replica-delay {} {value} ({replica}) failed:\n{}\n{}",
            index + 1,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Signals the postmaster of `<stack dir>/<data_dir>` (pid from its
    /// `postmaster.pid`) and its children: signalling the postmaster alone
    /// would leave the backends behind open connections running.
    fn signal_postgres(&self, data_dir: &str, signal: &str) {
        let pidfile = self.dir.join(data_dir).join("postmaster.pid");
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap_or_else(|e| panic!("{}: {e}", pidfile.display()));
        let pid = pid.lines().next().unwrap_or_default().trim().to_owned();
        // Children and postmaster; pkill fails harmlessly if there are none.
        let _ = Command::new("pkill")
            .arg(format!("-{signal}"))
            .args(["-P", &pid])
            .status();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(&pid)
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{signal} postgres {data_dir} failed"
        );
    }
}

/// The data dir (under `Stack::dir`) of replica `index` (0-based, as in
/// `Stack::replica_urls`); named by `deploy/local/stack`.
fn replica_data_dir(index: usize) -> &'static str {
    match index {
        0 => "pg-replica",
        1 => "pg-replica2",
        _ => panic!("the stack has replicas 0 and 1, not {index}"),
    }
}

static STACK: OnceLock<Stack> = OnceLock::new();

/// The stack of this test binary, started on first call.
pub fn stack() -> &'static Stack {
    STACK.get_or_init(|| {
        start(Services {
            relay: true,
            projector: true,
        })
    })
}

/// The same stack, but its in-process command-service does not relay: for a
/// test binary that runs relays of its own (as separate processes). A binary
/// uses either this or [`stack()`], never both.
pub fn stack_without_relay() -> &'static Stack {
    STACK.get_or_init(|| {
        start(Services {
            relay: false,
            projector: true,
        })
    })
}

/// The same stack without the in-process projector: for a test binary that
/// runs projectors of its own ([`ProjectorProcess`]). A binary uses only one
/// of the `stack` functions.
pub fn stack_without_projector() -> &'static Stack {
    STACK.get_or_init(|| {
        start(Services {
            relay: true,
            projector: false,
        })
    })
}

/// Which in-process services a stack runs besides query-service.
#[derive(Debug, Clone, Copy)]
struct Services {
    relay: bool,
    projector: bool,
}

/// A binary of this workspace (`command-service`, ...), built by `make test`
/// (`cargo build --bins`) next to the test binaries.
pub fn workspace_binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build --bins`; `make test` does)",
        path.display()
    );
    path
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repo")
        .to_path_buf()
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Runs `stack infra-up` on freshly picked free ports; returns them, or None
/// (after printing why and stopping what started) so the caller can retry:
/// a port picked free can be taken by someone else before the server binds it.
fn infra_up(script: &Path, dir: &Path, attempt: u32) -> Option<[(&'static str, u16); 6]> {
    let ports = [
        ("PGBOUNCER_PORT", free_port()),
        ("PG_PRIMARY_PORT", free_port()),
        ("PG_REPLICA_PORT", free_port()),
        ("PG_REPLICA2_PORT", free_port()),
        ("REDIS_PORT", free_port()),
        ("BROKER_PORT", free_port()),
    ];
    let mut up = Command::new(script);
    up.arg("infra-up")
        .env("STACK_DIR", dir)
        .env("BROKER_STORAGE", "memory")
        .env("PGBOUNCER", "1")
        .stdin(Stdio::null());
    for (name, port) in ports {
        up.env(name, port.to_string());
    }
    let output = up.output().expect("run deploy/local/stack infra-up");
    if output.status.success() {
        return Some(ports);
    }
    eprintln!(
        "e2e: stack infra-up attempt {attempt} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = Command::new(script)
        .args(["clean"])
        .env("STACK_DIR", dir)
        .stdin(Stdio::null())
        .output();
    None
}

fn start(services: Services) -> Stack {
    // Quiet by default: expected 4xx responses would otherwise flood the
    // output (tracing-actix-web logs them at WARN). RUST_LOG overrides.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn,tracing_actix_web=error");
    }
    service_runtime::telemetry::init("e2e");
    let dir = std::env::temp_dir().join(format!("cqrs-e2e-{}", std::process::id()));
    let script = repo_root().join("deploy/local/stack");

    // Tear-down is owned by a watcher outside this process, so it happens
    // even when a test panics or the binary is killed. It finds what to stop
    // by the pidfiles under STACK_DIR.
    let mut watcher = Command::new(&script);
    watcher
        .arg("watch-down")
        .arg(std::process::id().to_string())
        .env("STACK_DIR", &dir)
        .env("WATCH_DOWN_CLEAN", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Deliberately never waited for: it must outlive this process.
    #[allow(clippy::zombie_processes)]
    let _watcher = watcher.spawn().expect("spawn stack watch-down");

    let started = Instant::now();
    let ports = (1..=3)
        .find_map(|attempt| infra_up(&script, &dir, attempt))
        .expect("stack infra-up failed three times (output above)");
    eprintln!(
        "e2e: infrastructure up in {:?} at {}",
        started.elapsed(),
        dir.display()
    );

    let port = |name: &str| {
        ports
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
            .unwrap()
    };
    let primary_url = format!(
        "postgres://app:app@127.0.0.1:{}/app",
        port("PG_PRIMARY_PORT")
    );
    let pgbouncer_url = format!(
        "postgres://app:app@127.0.0.1:{}/app",
        port("PGBOUNCER_PORT")
    );
    let replica_urls: Vec<String> = ["PG_REPLICA_PORT", "PG_REPLICA2_PORT"]
        .iter()
        .map(|name| format!("postgres://app:app@127.0.0.1:{}/app", port(name)))
        .collect();
    let replica_url = replica_urls[0].clone();
    let redis_url = format!("redis://127.0.0.1:{}/", port("REDIS_PORT"));
    let brokers = format!("127.0.0.1:{}", port("BROKER_PORT"));
    let topics = event_bus::TopicSettings {
        brokers: brokers.clone(),
        prefix: "events".to_owned(),
        partitions: 4,
        replication: 1,
    };

    let (command_port, query_port, projector_port) = run_services(
        services,
        primary_url.clone(),
        replica_urls.clone(),
        redis_url.clone(),
        topics.clone(),
    );
    let stack = Stack {
        primary_url,
        pgbouncer_url,
        replica_url,
        replica_urls,
        redis_url,
        brokers,
        topic_prefix: topics.prefix,
        command_url: format!("http://127.0.0.1:{command_port}"),
        query_url: format!("http://127.0.0.1:{query_port}"),
        projector_url: projector_port.map(|port| format!("http://127.0.0.1:{port}")),
        dir,
    };
    eprintln!("e2e: services up in {:?}: {stack:?}", started.elapsed());
    stack
}

/// Builds and runs the services on a dedicated runtime thread; returns the
/// HTTP ports of command-service, query-service and the projector (if run).
fn run_services(
    services: Services,
    primary_url: String,
    replica_urls: Vec<String>,
    redis_url: String,
    topics: event_bus::TopicSettings,
) -> (u16, u16, Option<u16>) {
    let (ports_tx, ports_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("services runtime");
        runtime.block_on(async move {
            let shutdown = CancellationToken::new();
            let query = query_service::startup::Application::build(query_service_config(
                &primary_url,
                replica_urls,
                &redis_url,
            ))
            .await
            .expect("query-service builds");
            let query_port = query.port();
            let command =
                command_service::startup::Application::build(command_service::config::Config {
                    http_addr: "127.0.0.1:0".to_owned(),
                    database_url: primary_url.clone(),
                    transaction_pooler: false,
                    session_database_url: primary_url.clone(),
                    pool_size: 16,
                    acquire_timeout: Duration::from_secs(5),
                    query_public_url: format!("http://127.0.0.1:{query_port}"),
                    body_limit_bytes: 64 * 1024,
                    snapshot_every: 10,
                    cached_aggregates: 10_000,
                    append_batch_max: 64,
                    append_workers: 2,
                    idempotency_ttl: Duration::from_secs(3600),
                    topics: topics.clone(),
                    redis_url: redis_url.clone(),
                    auth: auth_config(),
                    protection: traffic_control::ProtectionConfig::default(),
                    rate_limits: generous_rate_limits(),
                    relay: command_service::config::RelayConfig {
                        enabled: services.relay,
                        batch_size: 500,
                        poll_interval: Duration::from_millis(20),
                        lease_retry: Duration::from_millis(500),
                        delivery_timeout: RELAY_DELIVERY_TIMEOUT,
                        breaker: command_service::config::RelayConfig::DEFAULT_BREAKER,
                    },
                })
                .await
                .expect("command-service builds");
            let command_port = command.port();
            let projector = if services.projector {
                Some(
                    projector::startup::Application::build(projector::config::Config {
                        http_addr: "127.0.0.1:0".to_owned(),
                        database_url: primary_url.clone(),
                        transaction_pooler: false,
                        session_database_url: primary_url,
                        pool_size: 4,
                        redis_url,
                        topics,
                        group_id: "projector".to_owned(),
                        batch_size: 500,
                        batch_timeout: Duration::from_millis(20),
                        fetch_wait: Duration::from_millis(10),
                        session_timeout: Duration::from_secs(6),
                        max_attempts: 3,
                        partitions: projector::partitions::MaintenanceSettings {
                            ahead_months: 3,
                            retention_months: 0,
                            interval: Duration::from_secs(3600),
                        },
                        auth: auth_config(),
                        protection: traffic_control::ProtectionConfig::default(),
                        rate_limits: generous_rate_limits(),
                    })
                    .await
                    .expect("projector builds"),
                )
            } else {
                None
            };
            ports_tx
                .send((
                    command_port,
                    query_port,
                    projector.as_ref().map(|p| p.port()),
                ))
                .expect("report ports");
            let projector_shutdown = shutdown.clone();
            let projector = async move {
                if let Some(projector) = projector {
                    let _ = projector.run_until_stopped(projector_shutdown).await;
                }
            };
            let _ = tokio::join!(
                command.run_until_stopped(shutdown.clone()),
                query.run_until_stopped(shutdown.clone()),
                projector,
            );
        });
    });
    ports_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("services started")
}

/// A command-service running as a process of its own (so it can be
/// `kill -9`ed), against the stack of this binary. Killed with SIGKILL when
/// dropped.
pub struct CommandServiceProcess {
    child: std::process::Child,
    pub port: u16,
}

impl CommandServiceProcess {
    /// Starts one; its log goes to `<stack dir>/logs/command-service-<name>.log`.
    pub fn spawn(name: &str) -> Self {
        Self::spawn_with(name, &[])
    }

    /// [`CommandServiceProcess::spawn`] with `overrides` of its environment
    /// (e.g. `REQUEST_TIMEOUT_MS`).
    pub fn spawn_with(name: &str, overrides: &[(&str, &str)]) -> Self {
        let stack = STACK
            .get()
            .expect("start the stack before spawning processes");
        let port = free_port();
        let log_path = stack
            .dir
            .join("logs")
            .join(format!("command-service-{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("log file");
        let child = Command::new(workspace_binary("command-service"))
            .envs(protection_env())
            .env("PRIMARY_DATABASE_URL", &stack.primary_url)
            .env("REDIS_URL", &stack.redis_url)
            .env("KAFKA_BROKERS", &stack.brokers)
            .env("KAFKA_TOPIC_PREFIX", &stack.topic_prefix)
            .env("COMMAND_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("PRIMARY_POOL_SIZE", "4")
            .env("RELAY_LEASE_RETRY_MS", "100")
            .env("RELAY_DELIVERY_TIMEOUT_MS", "3000")
            .env("RUST_LOG", "info")
            .envs(overrides.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn command-service");
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sends `signal` (e.g. `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        signal_pid(self.child.id(), signal);
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// `leader`, `standby` or `disabled`, or None if it does not answer.
    pub async fn role(&self) -> Option<String> {
        relay_role(&format!("http://127.0.0.1:{}", self.port)).await
    }
}

/// The relay role (`leader`, `standby` or `disabled`) of the command-service
/// at `command_url`, or None if it does not answer.
pub async fn relay_role(command_url: &str) -> Option<String> {
    let response = reqwest::get(format!("{command_url}/health/relay"))
        .await
        .ok()?;
    let body: serde_json::Value = response.json().await.ok()?;
    body["role"].as_str().map(str::to_owned)
}

/// `kill -<signal> <pid>`.
fn signal_pid(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

impl Drop for CommandServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the projector's command line (`projector <args>`) against this
/// binary's stack, with `env` on top; returns its standard output. Panics,
/// with both outputs, unless it succeeds.
pub fn projector_cli(args: &[&str], env: &[(&str, &str)]) -> String {
    let stack = STACK.get().expect("start the stack first");
    let output = Command::new(workspace_binary("projector"))
        .args(args)
        .envs(protection_env())
        .env("PRIMARY_DATABASE_URL", &stack.primary_url)
        .env("REDIS_URL", &stack.redis_url)
        .env("PROJECTOR_GROUP_ID", "projector")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .expect("run the projector binary");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "projector {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A projector running as a process of its own (so it can be `kill -9`ed),
/// in consumer group `projector` (unless overridden), against the stack of
/// this binary. Killed
/// with SIGKILL when dropped.
pub struct ProjectorProcess {
    child: std::process::Child,
    pub port: u16,
    log_path: PathBuf,
}

impl ProjectorProcess {
    /// Starts one; its log goes to `<stack dir>/logs/projector-<name>.log`.
    pub fn spawn(name: &str) -> Self {
        Self::spawn_with(name, &[])
    }

    /// [`ProjectorProcess::spawn`] with `overrides` of its environment (e.g.
    /// a `PROJECTOR_GROUP_ID` of its own, `LOG_FORMAT=json`).
    pub fn spawn_with(name: &str, overrides: &[(&str, &str)]) -> Self {
        let stack = STACK
            .get()
            .expect("start the stack before spawning processes");
        let port = free_port();
        let log_path = stack.dir.join("logs").join(format!("projector-{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let child = Command::new(workspace_binary("projector"))
            .envs(protection_env())
            .env("PRIMARY_DATABASE_URL", &stack.primary_url)
            .env("REDIS_URL", &stack.redis_url)
            .env("KAFKA_BROKERS", &stack.brokers)
            .env("KAFKA_TOPIC_PREFIX", &stack.topic_prefix)
            .env("PROJECTOR_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("PROJECTOR_GROUP_ID", "projector")
            .env("PROJECTOR_BATCH_TIMEOUT_MS", "20")
            .env("PROJECTOR_MAX_ATTEMPTS", "3")
            .env("PROJECTOR_SESSION_TIMEOUT_MS", "6000")
            .env("RUST_LOG", "info,projector::batch=debug")
            .envs(overrides.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn projector");
        Self {
            child,
            port,
            log_path,
        }
    }

    /// Where its stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Sends `signal` (e.g. `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        signal_pid(self.child.id(), signal);
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Its Prometheus metrics, or None if it does not answer.
    pub async fn metrics(&self) -> Option<String> {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .ok()?
            .text()
            .await
            .ok()
    }
}

impl Drop for ProjectorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The relay's cursor, `(transaction id, position)` of the last event it
/// published, `(0, 0)` before its first batch. The relay publishes in
/// `(transaction id, position)` order, which is commit order, not position
/// order: compare whole cursors, or use [`relay_published_through`], never
/// the position alone.
pub async fn relay_cursor(pool: &sqlx::PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(max(transaction_id::text::bigint), 0), coalesce(max(position), 0) \
           FROM outbox_cursor",
    )
    .fetch_one(pool)
    .await
    .expect("read the relay cursor")
}

/// Whether the relay has published every committed event whose position is
/// at most `position`. Concurrent transactions commit positions out of
/// order, so "the cursor's position ≥ `position`" would be wrong both ways.
pub async fn relay_published_through(pool: &sqlx::PgPool, position: i64) -> bool {
    sqlx::query_scalar(
        "SELECT NOT EXISTS ( \
             SELECT 1 FROM events e \
              WHERE e.position <= $1 \
                AND NOT EXISTS (SELECT 1 FROM outbox_cursor c \
                                 WHERE (e.transaction_id, e.position) <= (c.transaction_id, c.position)))",
    )
    .bind(position)
    .fetch_one(pool)
    .await
    .expect("compare the relay cursor with the events")
}

/// Waits (up to `deadline`) until the relay has published every event
/// committed so far.
pub async fn wait_for_relay_to_drain(pool: &sqlx::PgPool, deadline: Duration) {
    let last: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(pool)
        .await
        .expect("read the last position");
    eventually(
        "the relay publishes every committed event",
        deadline,
        || async { relay_published_through(pool, last).await.then_some(()) },
    )
    .await;
}

/// The identity (aggregate id, sequence) of every committed event of
/// `aggregate_type`: what a Jepsen-style check expects to read from Kafka.
pub async fn committed_events(
    pool: &sqlx::PgPool,
    aggregate_type: &str,
) -> std::collections::HashSet<(String, i64)> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT aggregate_id, sequence FROM events WHERE aggregate_type = $1",
    )
    .bind(aggregate_type)
    .fetch_all(pool)
    .await
    .expect("read committed events")
    .into_iter()
    .collect()
}

/// One message of an event topic, as a consumer sees it.
pub struct Published {
    pub key: Option<Vec<u8>>,
    pub headers: schema::envelope::EventHeaders,
    pub payload: Vec<u8>,
}

/// Reads one aggregate type's topic from the beginning, in a consumer group
/// of its own (so it sees everything, independent of the projector).
pub struct TopicReader {
    consumer: rdkafka::consumer::StreamConsumer,
}

impl TopicReader {
    pub fn new(aggregate_type: &str) -> Self {
        use rdkafka::consumer::Consumer;
        let stack = STACK.get().expect("start the stack first");
        let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &stack.brokers)
            .set("group.id", format!("e2e-{}", uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("kafka consumer");
        let topic = schema::envelope::topic_for(&stack.topic_prefix, aggregate_type);
        consumer.subscribe(&[&topic]).expect("subscribe");
        Self { consumer }
    }

    /// The next message (partition order), or None once `deadline` passes.
    pub async fn next(&self, deadline: tokio::time::Instant) -> Option<Published> {
        use rdkafka::message::{Headers, Message};
        let message = tokio::time::timeout_at(deadline, self.consumer.recv())
            .await
            .ok()?
            .expect("kafka receive");
        let headers = message.headers().expect("event headers");
        let pairs: Vec<(&str, &[u8])> = headers
            .iter()
            .filter_map(|h| h.value.map(|v| (h.key, v)))
            .collect();
        Some(Published {
            key: message.key().map(<[u8]>::to_vec),
            headers: schema::envelope::EventHeaders::from_pairs(pairs).expect("valid headers"),
            payload: message.payload().unwrap_or_default().to_vec(),
        })
    }
}

/// Produces one message straight to the topic of `headers.aggregate_type`,
/// keyed by the aggregate id, as the relay would (or as a broken producer
/// might: `payload` is sent as given). Returns (partition, offset).
pub async fn produce_raw(headers: &schema::envelope::EventHeaders, payload: &str) -> (i32, i64) {
    let stack = STACK.get().expect("start the stack first");
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .set("partitioner", "murmur2_random")
        .create()
        .expect("kafka producer");
    let kafka_headers = headers.to_pairs().into_iter().fold(
        rdkafka::message::OwnedHeaders::new(),
        |h, (key, value)| {
            h.insert(rdkafka::message::Header {
                key,
                value: Some(value.as_bytes()),
            })
        },
    );
    let topic = schema::envelope::topic_for(&stack.topic_prefix, &headers.aggregate_type);
    let delivery = producer
        .send(
            rdkafka::producer::FutureRecord::to(&topic)
                .key(&headers.aggregate_id)
                .payload(payload)
                .headers(kafka_headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)
        .expect("produce");
    (delivery.partition, delivery.offset)
}

/// Polls `probe` until it returns `Some`, or panics after `deadline` with `what`.
/// The only way tests wait for eventual consistency: never a fixed sleep.
/// Creates a product named `name` (unique SKU, price 1.00 EUR) through the
/// command-service at `command_url`; returns the 202 body (`aggregate_id`,
/// `version`, `position`, ...). Panics on any other answer.
pub async fn create_product(
    client: &reqwest::Client,
    command_url: &str,
    name: &str,
) -> serde_json::Value {
    let response = client
        .post(format!("{command_url}/products"))
        .json(&serde_json::json!({
            "sku": format!("SKU-{}", uuid::Uuid::new_v4().simple()),
            "name": name,
            "price": {"amount_minor": 100, "currency": "EUR"},
        }))
        .send()
        .await
        .expect("POST /products");
    let status = response.status();
    let body: serde_json::Value = response.json().await.expect("a JSON answer");
    assert_eq!(status, 202, "creating a product: {body}");
    body
}

pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The query-service configuration of the test stack: both replicas, port
/// 0, checks every 100 ms so that tests see health changes quickly.
fn query_service_config(
    primary_url: &str,
    replica_urls: Vec<String>,
    redis_url: &str,
) -> query_service::config::Config {
    query_service::config::Config {
        http_addr: "127.0.0.1:0".parse().expect("socket address"),
        replica_check_interval: Duration::from_millis(100),
        rate_limits: generous_rate_limits(),
        ..query_service::config::Config::new(primary_url, replica_urls, redis_url, auth_config())
    }
}

/// A query-service of a test's own, on the shared stack, configured by the
/// test (fallback policy, lag bound, ...). Runs on the test's runtime and
/// stops when dropped.
pub struct QueryService {
    pub url: String,
    stop: CancellationToken,
}

impl QueryService {
    /// Builds and starts one; `configure` adjusts the stack's defaults.
    pub async fn start(configure: impl FnOnce(&mut query_service::config::Config)) -> Self {
        // The binary's stack, whichever function started it (or stack()).
        let stack = stack();
        let mut config = query_service_config(
            &stack.primary_url,
            stack.replica_urls.clone(),
            &stack.redis_url,
        );
        configure(&mut config);
        let app = query_service::startup::Application::build(config)
            .await
            .expect("query-service builds");
        let url = format!("http://127.0.0.1:{}", app.port());
        let stop = CancellationToken::new();
        tokio::spawn(app.run_until_stopped(stop.clone()));
        Self { url, stop }
    }
}

impl Drop for QueryService {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The command-service configuration of the test stack (as the in-process
/// one of [`stack()`] runs), except that it does not relay: the stack's own
/// command-service holds the relay lease, and a second relay would only
/// stand by (or, worse, take the lease over and drop it when the test ends).
pub fn command_service_config(stack: &Stack) -> command_service::config::Config {
    command_service::config::Config {
        http_addr: "127.0.0.1:0".to_owned(),
        database_url: stack.primary_url.clone(),
        transaction_pooler: false,
        session_database_url: stack.primary_url.clone(),
        pool_size: 16,
        acquire_timeout: Duration::from_secs(5),
        query_public_url: stack.query_url.clone(),
        body_limit_bytes: 64 * 1024,
        snapshot_every: 10,
        cached_aggregates: 10_000,
        append_batch_max: 64,
        append_workers: 2,
        idempotency_ttl: Duration::from_secs(3600),
        topics: event_bus::TopicSettings {
            brokers: stack.brokers.clone(),
            prefix: stack.topic_prefix.clone(),
            partitions: 4,
            replication: 1,
        },
        redis_url: stack.redis_url.clone(),
        auth: auth_config(),
        protection: traffic_control::ProtectionConfig::default(),
        rate_limits: generous_rate_limits(),
        relay: command_service::config::RelayConfig {
            enabled: false,
            batch_size: 500,
            poll_interval: Duration::from_millis(20),
            lease_retry: Duration::from_millis(500),
            delivery_timeout: RELAY_DELIVERY_TIMEOUT,
            breaker: command_service::config::RelayConfig::DEFAULT_BREAKER,
        },
    }
}

/// A command-service of a test's own, in-process on the shared stack,
/// configured by the test (protection, rate limits, ...), like
/// [`QueryService`]. Runs on the test's runtime and stops when dropped.
pub struct CommandService {
    pub url: String,
    stop: CancellationToken,
}

impl CommandService {
    /// Builds and starts one; `configure` adjusts [`command_service_config`].
    pub async fn start(configure: impl FnOnce(&mut command_service::config::Config)) -> Self {
        let stack = stack();
        let mut config = command_service_config(stack);
        configure(&mut config);
        let app = command_service::startup::Application::build(config)
            .await
            .expect("command-service builds");
        let url = format!("http://127.0.0.1:{}", app.port());
        let stop = CancellationToken::new();
        tokio::spawn(app.run_until_stopped(stop.clone()));
        Self { url, stop }
    }
}

impl Drop for CommandService {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
