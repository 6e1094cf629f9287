//! Building and running the HTTP server.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use access_control::Scope;
use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use schema::views::{ORDER_SUMMARY_KEY_PREFIX, PRODUCT_KEY_PREFIX};
use service_runtime::shutdown::CancellationToken;
use tracing_actix_web::TracingLogger;
use traffic_control::{ApiProtection, RouteClass, TraceRootSpan};

use crate::cache::{self, Caches, DocumentCache, Feed, RedisTier};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::replicas::ReadRouter;
use crate::routes;

/// Request bodies are not read by any route; the limit only bounds what a
/// client can make the server buffer.
const JSON_BODY_LIMIT: usize = 16 * 1024;
/// How long start-up waits for the first health check of the databases.
const FIRST_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the service could not start. Only misconfiguration and a taken port
/// stop it: unreachable databases or Redis do not.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("a database URL is not a valid Postgres URL")]
    InvalidDatabaseUrl(#[source] sqlx::Error),
    #[error("REDIS_URL is not a valid Redis URL")]
    InvalidRedisUrl(#[source] redis::RedisError),
    #[error("cannot register metrics")]
    Metrics(#[source] prometheus::Error),
    #[error("cannot build the protection layer")]
    Protection(#[from] traffic_control::ProtectionError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the handlers share: the router over the databases, the caches and
/// what feeds them, and the metrics.
#[derive(Clone)]
pub struct State {
    pub router: Arc<ReadRouter>,
    pub redis: Arc<RedisTier>,
    pub feed: Arc<Feed>,
    pub caches: Arc<Caches>,
    pub metrics: Arc<Metrics>,
}

impl State {
    /// Pools and caches, nothing connected yet.
    pub fn new(config: &Config) -> Result<Self, StartupError> {
        let metrics = Arc::new(Metrics::new().map_err(StartupError::Metrics)?);
        let router = Arc::new(
            ReadRouter::with_breaker_metrics(config, metrics.breakers())
                .map_err(StartupError::InvalidDatabaseUrl)?,
        );
        let redis = Arc::new(
            RedisTier::with_breaker(
                &config.redis_url,
                config.redis_timeout,
                config.redis_breaker,
                metrics.breakers(),
            )
            .map_err(StartupError::InvalidRedisUrl)?,
        );
        let feed = Arc::new(Feed::default());
        let cache = |prefix| {
            Arc::new(DocumentCache::new(
                prefix,
                config.local_cache_capacity,
                config.local_cache_ttl,
                Arc::clone(&redis),
                config.redis_cache_ttl,
                Arc::clone(&feed),
            ))
        };
        let caches = Arc::new(Caches {
            orders: cache(ORDER_SUMMARY_KEY_PREFIX),
            products: cache(PRODUCT_KEY_PREFIX),
        });
        Ok(Self {
            router,
            redis,
            feed,
            caches,
            metrics,
        })
    }

    /// Makes the state available to the handlers.
    pub fn register(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(web::Data::from(Arc::clone(&self.router)))
            .app_data(web::Data::from(Arc::clone(&self.redis)))
            .app_data(web::Data::from(Arc::clone(&self.feed)))
            .app_data(web::Data::from(Arc::clone(&self.caches)))
            .app_data(web::Data::from(Arc::clone(&self.metrics)));
    }
}

/// A bound, not yet running query-service.
pub struct Application {
    port: u16,
    server: Server,
    state: State,
}

impl Application {
    /// Binds `config.http_addr` (port 0 picks a free port) and prepares the
    /// server. Database connections open lazily; one health check of every
    /// database (bounded) runs here so the first requests are routed on
    /// facts, and Redis gets one short connection attempt. The monitors,
    /// the invalidation feed and Redis reconnects run in
    /// [`Application::run_until_stopped`].
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let state = State::new(&config)?;
        let _ = tokio::time::timeout(FIRST_CHECK_TIMEOUT, state.router.check_all()).await;
        state.redis.connect().await;

        let bind_error = |source| StartupError::Bind {
            addr: config.http_addr,
            source,
        };
        let listener = TcpListener::bind(config.http_addr).map_err(bind_error)?;
        let port = listener.local_addr().map_err(bind_error)?.port();

        let protection = ApiProtection::new(
            &config.protection,
            &config.rate_limits,
            &config.redis_url,
            &config.auth,
            state.metrics.registry(),
            state.metrics.breakers(),
        )?;
        let shared = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .wrap(TracingLogger::<TraceRootSpan>::new())
                .wrap(protection.request_metrics())
                .app_data(problem_details::json_config(JSON_BODY_LIMIT))
                .app_data(problem_details::path_config())
                .app_data(problem_details::query_config())
                .configure(|cfg| shared.register(cfg))
                .configure(routes::public)
                .service(protection.guard(
                    web::scope("").configure(routes::api),
                    Scope::Read,
                    RouteClass::Reads,
                ))
                .default_service(web::to(problem_details::route_not_found))
        })
        // The process-wide CancellationToken is the only shutdown signal;
        // actix's own handlers would race it.
        .disable_signals()
        .keep_alive(service_runtime::http::KEEP_ALIVE)
        .listen(listener)
        .map_err(bind_error)?
        .run();

        tracing::info!(port, "query-service listening");
        Ok(Self {
            port,
            server,
            state,
        })
    }

    /// The port actually bound (useful when configured with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` is cancelled, then stops accepting connections
    /// and lets in-flight requests finish (actix's graceful shutdown) before
    /// returning. Runs the database monitors, the invalidation feed and the
    /// Redis reconnects alongside, all stopped by the same token.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let background = shutdown.child_token();
        let tasks = [
            tokio::spawn(Arc::clone(&self.state.router).monitor(background.clone())),
            tokio::spawn(cache::keep_connecting(
                Arc::clone(&self.state.redis),
                background.clone(),
            )),
            tokio::spawn(cache::follow_invalidations(
                self.state.redis.client().clone(),
                self.state.caches.all(),
                Arc::clone(&self.state.feed),
                background.clone(),
            )),
        ];
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
        background.cancel();
        for task in tasks {
            let _ = task.await;
        }
        result
    }
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
            ..Config::new(
                "postgres://app:app@127.0.0.1:1/app",
                vec!["postgres://app:app@127.0.0.1:2/app".to_owned()],
                "redis://127.0.0.1:1/",
                crate::config::test_auth(),
            )
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
            "postgres://app:app@127.0.0.1:1/app",
            vec!["postgres://app@127.0.0.1:notaport/app".to_owned()],
            "redis://127.0.0.1:1/",
            crate::config::test_auth(),
        );
        assert!(matches!(
            Application::build(bad_db).await,
            Err(StartupError::InvalidDatabaseUrl(_))
        ));
        let bad_redis = Config::new(
            "postgres://app:app@127.0.0.1:1/app",
            vec![],
            "nope://",
            crate::config::test_auth(),
        );
        assert!(matches!(
            Application::build(bad_redis).await,
            Err(StartupError::InvalidRedisUrl(_))
        ));
    }
}
