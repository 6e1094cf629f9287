//! Building and running the HTTP server.

use std::net::{SocketAddr, TcpListener};
use std::str::FromStr;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use service_runtime::shutdown::CancellationToken;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tracing_actix_web::TracingLogger;

use crate::cache::{self, OrderCache};
use crate::config::Config;
use crate::routes;

/// Request bodies are not read by any route; the limit only bounds what a
/// client can make the server buffer.
const JSON_BODY_LIMIT: usize = 16 * 1024;

/// Why the service could not start. Only misconfiguration and a taken port
/// stop it: an unreachable replica or Redis does not.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("REPLICA_DATABASE_URL is not a valid Postgres URL")]
    InvalidDatabaseUrl(#[source] sqlx::Error),
    #[error("REDIS_URL is not a valid Redis URL")]
    InvalidRedisUrl(#[source] redis::RedisError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A bound, not yet running query-service.
pub struct Application {
    port: u16,
    server: Server,
    cache: Arc<OrderCache>,
}

impl Application {
    /// Binds `config.http_addr` (port 0 picks a free port) and prepares the
    /// server. Connections to the replica are opened lazily, on first use, so
    /// the service starts while the replica is down; Redis gets one short
    /// connection attempt here and is retried in the background by
    /// [`Application::run_until_stopped`].
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let pool = replica_pool(&config)?;
        let cache = Arc::new(
            OrderCache::new(&config.redis_url, config.redis_timeout)
                .map_err(StartupError::InvalidRedisUrl)?,
        );
        cache.connect().await;

        let bind_error = |source| StartupError::Bind {
            addr: config.http_addr,
            source,
        };
        let listener = TcpListener::bind(config.http_addr).map_err(bind_error)?;
        let port = listener.local_addr().map_err(bind_error)?.port();

        let pool = web::Data::new(pool);
        let cache_data = web::Data::from(Arc::clone(&cache));
        let server = HttpServer::new(move || {
            App::new()
                .wrap(TracingLogger::default())
                .app_data(problem_details::json_config(JSON_BODY_LIMIT))
                .app_data(problem_details::path_config())
                .app_data(problem_details::query_config())
                .app_data(pool.clone())
                .app_data(cache_data.clone())
                .configure(routes::configure)
                .default_service(web::to(problem_details::route_not_found))
        })
        // The process-wide CancellationToken is the only shutdown signal;
        // actix's own handlers would race it.
        .disable_signals()
        .listen(listener)
        .map_err(bind_error)?
        .run();

        tracing::info!(port, "query-service listening");
        Ok(Self {
            port,
            server,
            cache,
        })
    }

    /// The port actually bound (useful when configured with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` is cancelled, then stops accepting connections
    /// and lets in-flight requests finish (actix's graceful shutdown) before
    /// returning.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let reconnect = tokio::spawn(cache::keep_connecting(
            Arc::clone(&self.cache),
            shutdown.child_token(),
        ));
        let handle = self.server.handle();
        let mut server = std::pin::pin!(self.server);
        let result = tokio::select! {
            result = &mut server => result,
            () = shutdown.cancelled() => {
                tracing::info!("stopping query-service gracefully");
                // `stop` only queues the command; the server future carries
                // it out, so both must be polled.
                let ((), result) = tokio::join!(handle.stop(true), server);
                result
            }
        };
        reconnect.abort();
        result
    }
}

/// A pool that connects on demand. Per-connection settings go in the startup
/// packet (`options`), so they hold from the first statement on.
fn replica_pool(config: &Config) -> Result<PgPool, StartupError> {
    let statement_timeout_ms = config.replica_statement_timeout.as_millis();
    let options = PgConnectOptions::from_str(&config.replica_database_url)
        .map_err(StartupError::InvalidDatabaseUrl)?
        .application_name("query-service")
        .options([
            ("statement_timeout", format!("{statement_timeout_ms}ms")),
            // A real replica refuses writes anyway; this makes a development
            // set-up pointing at the primary refuse them too.
            ("default_transaction_read_only", "on".to_owned()),
        ]);
    Ok(service_runtime::postgres::pool_options(
        config.replica_pool_size,
        config.replica_acquire_timeout,
    )
    .connect_lazy_with(options))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    #[tokio::test]
    async fn starts_without_dependencies_and_stops_when_cancelled() {
        let config = Config {
            http_addr: "127.0.0.1:0".parse().expect("addr"),
            ..Config::new("postgres://app:app@127.0.0.1:1/app", "redis://127.0.0.1:1/")
        };
        let app = Application::build(config).await.expect("build");
        let port = app.port();
        assert_ne!(port, 0);
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));

        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        stream
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");

        shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(10), running).await;
        assert!(
            matches!(stopped, Ok(Ok(Ok(())))),
            "did not stop cleanly: {stopped:?}"
        );
    }

    #[tokio::test]
    async fn malformed_urls_stop_start_up() {
        let bad_db = Config::new(
            "postgres://app@127.0.0.1:notaport/app",
            "redis://127.0.0.1:1/",
        );
        assert!(matches!(
            Application::build(bad_db).await,
            Err(StartupError::InvalidDatabaseUrl(_))
        ));
        let bad_redis = Config::new("postgres://app:app@127.0.0.1:1/app", "nope://");
        assert!(matches!(
            Application::build(bad_redis).await,
            Err(StartupError::InvalidRedisUrl(_))
        ));
    }
}
