//! Builds the projector from its [`Config`] and runs it until shutdown.

use std::net::TcpListener;

use access_control::Scope;
use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use event_bus::TopicSettings;
use problem_details::Problem;
use service_runtime::postgres::{pool_options, DbPool};
use service_runtime::shutdown::CancellationToken;
use std::time::Duration;
use tracing_actix_web::TracingLogger;
use traffic_control::{ApiProtection, RouteClass, TraceRootSpan};

use crate::config::Config;
use crate::consumer::Projector;
use crate::dead_letters::DeadLetterDesk;
use crate::metrics::{Group, Metrics};
use crate::partitions::{self, MaintenanceSettings};
use crate::redis_sink::RedisSink;

/// How long the projector waits for a pooled connection: it has no
/// requests waiting on it, so sqlx's default.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("connecting to the primary database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("running migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("connecting to redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("creating the kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("building the protection layer: {0}")]
    Protection(#[from] traffic_control::ProtectionError),
    #[error("binding the HTTP listener: {0}")]
    Bind(#[from] std::io::Error),
}

pub struct Application {
    port: u16,
    server: Server,
    projector: Projector,
    topics: TopicSettings,
    pool: DbPool,
    partitions: MaintenanceSettings,
    /// When the maintenance task makes its first run: after a full interval
    /// if `build` just made one, at once if that failed.
    first_maintenance_in: Duration,
}

impl Application {
    /// Connects to the primary, applies migrations, runs a first partition
    /// maintenance, creates the consumer and binds the listener
    /// (`127.0.0.1:0` picks a free port); nothing runs yet.
    ///
    /// Behind a transaction pooler (`PRIMARY_TRANSACTION_POOLER`) batches,
    /// maintenance and the admin API go through the pooler; only migrations
    /// open a session of their own, directly to the primary
    /// (docs/adr/0016-pgbouncer-transaction-mode.md).
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let pool = DbPool::connect(
            &config.database_url,
            config.transaction_pooler,
            pool_options(config.pool_size, ACQUIRE_TIMEOUT),
        )
        .await?;
        migrate(&config, &pool).await?;
        // Partitions for this month and the next ones exist before the first
        // batch, so rows of the present never wait in DEFAULT for the next
        // maintenance run (the task started in `run_until_stopped` retries
        // if this fails).
        let today = chrono::Utc::now().date_naive();
        let first_maintenance_in =
            match partitions::maintain_once(&pool, &config.partitions, today).await {
                Ok(_) => config.partitions.interval,
                Err(error) => {
                    tracing::warn!(%error, "partition maintenance at start failed");
                    Duration::ZERO
                }
            };
        let redis = redis::Client::open(config.redis_url.as_str())?;
        let redis = RedisSink::new(redis::aio::ConnectionManager::new(redis).await?);
        let metrics = Metrics::new()?;
        let projector = Projector::new(&config, pool.clone(), redis.clone(), metrics.clone())?;
        let desk = web::Data::new(DeadLetterDesk {
            pool: pool.clone(),
            redis,
            group: config.group_id.clone(),
        });

        let listener = TcpListener::bind(&config.http_addr)?;
        let port = listener.local_addr()?.port();
        let data_pool = web::Data::new(pool.clone());
        let metrics = web::Data::new(metrics);
        let group = web::Data::new(Group(config.group_id.clone()));
        let protection = ApiProtection::new(
            &config.protection,
            &config.rate_limits,
            &config.redis_url,
            &config.auth,
            metrics.registry(),
            metrics.breakers(),
        )?;
        let server = HttpServer::new(move || {
            App::new()
                .wrap(TracingLogger::<TraceRootSpan>::new())
                .wrap(protection.request_metrics())
                .app_data(data_pool.clone())
                .app_data(metrics.clone())
                .app_data(group.clone())
                .app_data(desk.clone())
                .app_data(problem_details::path_config())
                .route("/health/live", web::get().to(HttpResponse::Ok))
                .route("/health/ready", web::get().to(ready))
                .route("/metrics", web::get().to(crate::metrics::metrics))
                .service(protection.guard(
                    web::scope("/admin").configure(crate::admin::routes),
                    Scope::Admin,
                    RouteClass::Admin,
                ))
                .default_service(web::to(problem_details::route_not_found))
        })
        .workers(1)
        .keep_alive(service_runtime::http::KEEP_ALIVE)
        .listen(listener)?
        .disable_signals()
        .run();
        Ok(Self {
            port,
            server,
            projector,
            topics: config.topics,
            pool,
            partitions: config.partitions,
            first_maintenance_in,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Consumes and serves health until `shutdown`; the batch in progress is
    /// committed before returning.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let Self {
            server,
            projector,
            topics,
            pool,
            partitions,
            first_maintenance_in,
            ..
        } = self;
        let maintenance = tokio::spawn(partitions::run_maintenance(
            pool,
            partitions,
            first_maintenance_in,
            shutdown.clone(),
        ));
        let consumer = {
            let shutdown = shutdown.clone();
            tokio::spawn(projector.run(topics, shutdown))
        };
        let handle = server.handle();
        let stopper = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                handle.stop(true).await;
            })
        };
        let served = server.await;
        shutdown.cancel();
        let _ = stopper.await;
        let _ = consumer.await;
        let _ = maintenance.await;
        served
    }
}

/// Applies the schema's migrations over the session URL: the migrator
/// serialises concurrent runs with a session-level advisory lock, which a
/// transaction pooler would lose between statements. Directly connected,
/// the main pool serves.
async fn migrate(config: &Config, pool: &DbPool) -> Result<(), StartupError> {
    if config.session_database_url == config.database_url {
        schema::MIGRATOR.run(pool.pool()).await?;
        return Ok(());
    }
    let session = pool_options(1, ACQUIRE_TIMEOUT)
        .connect(&config.session_database_url)
        .await?;
    let migrated = schema::MIGRATOR.run(&session).await;
    session.close().await;
    Ok(migrated?)
}

/// Ready when the primary answers (through the pooler, if there is one).
async fn ready(pool: web::Data<DbPool>) -> HttpResponse {
    match pool.answers().await {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(error) => Problem::new(actix_web::http::StatusCode::SERVICE_UNAVAILABLE)
            .with_detail(format!("primary database: {error}"))
            .with_retry_after(1)
            .to_response(),
    }
}
