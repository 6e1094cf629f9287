//! Builds the service from its [`Config`] and runs it until shutdown.

use std::net::TcpListener;
use std::time::Duration;

use access_control::Scope;
use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use problem_details::Problem;
use service_runtime::postgres::{pool_options, DbPool};
use service_runtime::shutdown::CancellationToken;
use tracing_actix_web::TracingLogger;
use traffic_control::{ApiProtection, RouteClass, TraceRootSpan};

use crate::commands::{BusSettings, CommandBus};
use crate::config::{Config, MigrateConfig};
use crate::event_store::purge_expired_keys;
use crate::http::{self, QueryPublicUrl};
use crate::metrics::Metrics;
use crate::relay::{OutboxRelay, RelayError, RelayStatus};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("connecting to the primary database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("running migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("binding the HTTP listener: {0}")]
    Bind(#[from] std::io::Error),
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("creating the outbox relay: {0}")]
    Relay(#[from] RelayError),
    #[error("building the protection layer: {0}")]
    Protection(#[from] traffic_control::ProtectionError),
}

/// Connections of the session pool (migrations at start-up, the relay's
/// batches). The relay's leadership lease is one more connection, opened
/// with the same options and held outside the pool for as long as it leads.
const SESSION_POOL_SIZE: u32 = 3;

/// A built command-service: HTTP server bound, relay ready, nothing running yet.
pub struct Application {
    port: u16,
    server: Server,
    relay: Option<OutboxRelay>,
    primary: DbPool,
}

/// `command-service migrate`: applies the schema's migrations and returns
/// (the Kubernetes migration Job, compose's `migrate` service). Directly to
/// the primary: the migrator serialises concurrent runs with a session-level
/// advisory lock.
pub async fn migrate(config: &MigrateConfig) -> Result<(), StartupError> {
    let pool = pool_options(1, Duration::from_secs(30))
        .connect(&config.database_url)
        .await?;
    schema::MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(())
}

impl Application {
    /// Connects to the primary, applies migrations, binds the listener
    /// (`127.0.0.1:0` picks a free port) and prepares the relay.
    ///
    /// Two pools when `PRIMARY_TRANSACTION_POOLER` is set: commands through
    /// the pooler, migrations and the relay on sessions of their own
    /// directly to the primary (docs/adr/0016-pgbouncer-transaction-mode.md).
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let primary = DbPool::connect(
            &config.database_url,
            config.transaction_pooler,
            pool_options(config.pool_size, config.acquire_timeout),
        )
        .await?;
        let sessions = if config.session_database_url == config.database_url {
            primary.pool().clone()
        } else {
            pool_options(SESSION_POOL_SIZE, config.acquire_timeout)
                .connect(&config.session_database_url)
                .await?
        };
        schema::MIGRATOR.run(&sessions).await?;

        let metrics = Metrics::new()?;
        let relay = if config.relay.enabled {
            Some(OutboxRelay::new(
                sessions,
                config.topics.clone(),
                config.relay.clone(),
                metrics.relay.clone(),
            )?)
        } else {
            None
        };
        let relay_status = relay
            .as_ref()
            .map_or_else(RelayStatus::disabled, OutboxRelay::status);
        let listener = TcpListener::bind(&config.http_addr)?;
        let port = listener.local_addr()?.port();
        let protection = ApiProtection::new(
            &config.protection,
            &config.rate_limits,
            &config.redis_url,
            &config.auth,
            metrics.registry(),
            &metrics.relay.breakers,
        )?;
        let server = http_server(
            listener,
            primary.clone(),
            relay_status,
            metrics,
            protection,
            &config,
        )?;
        Ok(Self {
            port,
            server,
            relay,
            primary,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` is cancelled (or the server fails), then drains
    /// in-flight requests and lets the relay finish its batch.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let relay = self
            .relay
            .map(|relay| tokio::spawn(relay.run(shutdown.clone())));
        let purge = tokio::spawn(purge_expired_keys(
            self.primary,
            Duration::from_secs(60),
            shutdown.clone(),
        ));
        let handle = self.server.handle();
        let stopper = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                handle.stop(true).await;
            })
        };
        let served = self.server.await;
        shutdown.cancel();
        let _ = stopper.await;
        if let Some(relay) = relay {
            let _ = relay.await;
        }
        let _ = purge.await;
        served
    }
}

fn http_server(
    listener: TcpListener,
    primary: DbPool,
    relay_status: RelayStatus,
    metrics: Metrics,
    protection: ApiProtection,
    config: &Config,
) -> std::io::Result<Server> {
    let bus = web::Data::new(CommandBus::new(
        primary.clone(),
        BusSettings {
            snapshot_every: config.snapshot_every,
            idempotency_ttl: config.idempotency_ttl,
            cached_aggregates: config.cached_aggregates,
            append_batch_max: config.append_batch_max,
            append_workers: config.append_workers,
        },
    ));
    let base = web::Data::new(QueryPublicUrl(config.query_public_url.clone()));
    let primary = web::Data::new(primary);
    let relay_status = web::Data::new(relay_status);
    let metrics = web::Data::new(metrics);
    let body_limit = config.body_limit_bytes;
    let server = HttpServer::new(move || {
        App::new()
            .wrap(TracingLogger::<TraceRootSpan>::new())
            .wrap(protection.request_metrics())
            .app_data(problem_details::json_config(body_limit))
            .app_data(problem_details::JsonLimits::new(body_limit))
            .app_data(problem_details::path_config())
            .app_data(problem_details::query_config())
            .app_data(bus.clone())
            .app_data(base.clone())
            .app_data(primary.clone())
            .app_data(relay_status.clone())
            .app_data(metrics.clone())
            .route("/metrics", web::get().to(crate::metrics::metrics))
            .route("/health/live", web::get().to(HttpResponse::Ok))
            .route("/health/ready", web::get().to(ready))
            .route("/health/relay", web::get().to(relay_role))
            .route("/openapi.json", web::get().to(crate::openapi::serve))
            .service(protection.guard(
                web::scope("").configure(http::routes),
                Scope::Write,
                RouteClass::Commands,
            ))
            .default_service(web::to(problem_details::route_not_found))
    })
    .keep_alive(service_runtime::http::KEEP_ALIVE)
    .listen(listener)?
    // The process' shutdown signal is handled once, by the cancellation token.
    .disable_signals()
    .run();
    Ok(server)
}

/// Ready when the primary answers (through the pooler, if there is one).
async fn ready(primary: web::Data<DbPool>) -> HttpResponse {
    match primary.answers().await {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(error) => Problem::new(actix_web::http::StatusCode::SERVICE_UNAVAILABLE)
            .with_detail(format!("primary database: {error}"))
            .with_retry_after(1)
            .to_response(),
    }
}

/// `{"role": "leader" | "standby" | "disabled"}`: which instance relays.
async fn relay_role(status: web::Data<RelayStatus>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "role": status.role() }))
}
