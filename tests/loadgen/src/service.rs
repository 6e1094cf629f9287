//! Starting and stopping a service binary for a benchmark phase, with its
//! configuration taken from the environment (`eval "$(deploy/local/stack env)"`)
//! plus per-phase overrides such as `RELAY_ENABLED=false`, and rate limits
//! that never bite ([`RATE_LIMITS`]).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Rate limit of every class for the services started here: far above any
/// benchmark's load, so the limiter (and its Redis round trip) stays in the
/// measured path, as in production, but never rejects.
pub const UNLIMITED_RATE: &str = "1000000/s";

/// Set on every service started here, before the per-phase overrides. The
/// bursts too, so that a `RATE_LIMIT_*_BURST` in the caller's environment
/// cannot bring a small bucket back.
pub const RATE_LIMITS: [(&str, &str); 6] = [
    ("RATE_LIMIT_COMMANDS", UNLIMITED_RATE),
    ("RATE_LIMIT_COMMANDS_BURST", "1000000"),
    ("RATE_LIMIT_READS", UNLIMITED_RATE),
    ("RATE_LIMIT_READS_BURST", "1000000"),
    ("RATE_LIMIT_ADMIN", UNLIMITED_RATE),
    ("RATE_LIMIT_ADMIN_BURST", "1000000"),
];

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("starting {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("{binary} exited during startup ({status})")]
    Exited {
        binary: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error("{binary} was not ready at {url} within {timeout:?}")]
    NotReady {
        binary: PathBuf,
        url: String,
        timeout: Duration,
    },
    #[error("stopping {binary}: {source}")]
    Stop {
        binary: PathBuf,
        source: std::io::Error,
    },
}

/// A running service; stopped with SIGTERM by [`Service::stop`], killed if
/// dropped.
pub struct Service {
    binary: PathBuf,
    child: Child,
}

impl Service {
    /// Starts `binary` with the current environment plus [`RATE_LIMITS`]
    /// and `overrides`, its log appended to `log`, and waits until
    /// `base_url/health/ready` is 200.
    pub async fn start(
        binary: PathBuf,
        overrides: &[(&str, &str)],
        log: &std::fs::File,
        base_url: &str,
    ) -> Result<Self, ServiceError> {
        let spawn_error = |source| ServiceError::Spawn {
            binary: binary.clone(),
            source,
        };
        let mut command = Command::new(&binary);
        command
            .envs(RATE_LIMITS)
            .envs(overrides.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(spawn_error)?)
            .stderr(log.try_clone().map_err(spawn_error)?)
            .kill_on_drop(true);
        let child = command.spawn().map_err(spawn_error)?;
        let mut service = Self { binary, child };
        service.wait_ready(base_url).await?;
        Ok(service)
    }

    /// command-service with its relay publishing into the topics
    /// `<topic_prefix>.*`.
    pub async fn command_relaying(
        binary: PathBuf,
        topic_prefix: &str,
        log: &std::fs::File,
        base_url: &str,
    ) -> Result<Self, ServiceError> {
        let overrides = [
            ("RELAY_ENABLED", "true"),
            ("KAFKA_TOPIC_PREFIX", topic_prefix),
            ("RUST_LOG", "warn"),
        ];
        Self::start(binary, &overrides, log, base_url).await
    }

    /// The projector reading the topics `<topic_prefix>.*` as the consumer
    /// group `group`.
    pub async fn projector(
        binary: PathBuf,
        topic_prefix: &str,
        group: &str,
        log: &std::fs::File,
        base_url: &str,
    ) -> Result<Self, ServiceError> {
        let overrides = [
            ("KAFKA_TOPIC_PREFIX", topic_prefix),
            ("PROJECTOR_GROUP_ID", group),
            ("RUST_LOG", "warn"),
        ];
        Self::start(binary, &overrides, log, base_url).await
    }

    /// The process id (None once it has been waited for).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    async fn wait_ready(&mut self, base_url: &str) -> Result<(), ServiceError> {
        let url = format!("{}/health/ready", base_url.trim_end_matches('/'));
        let timeout = Duration::from_secs(60);
        let deadline = Instant::now() + timeout;
        let client = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ServiceError::Exited {
                    binary: self.binary.clone(),
                    status,
                });
            }
            if let Ok(response) = client.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(ServiceError::NotReady {
                    binary: self.binary.clone(),
                    url,
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then wait for a graceful exit (SIGKILL after 30 s).
    pub async fn stop(mut self) -> Result<(), ServiceError> {
        let stop_error = |binary: &PathBuf| {
            let binary = binary.clone();
            move |source| ServiceError::Stop { binary, source }
        };
        if let Some(pid) = self.child.id() {
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await
                .map_err(stop_error(&self.binary))?;
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(waited) => waited.map(drop).map_err(stop_error(&self.binary)),
            Err(_) => self.child.kill().await.map_err(stop_error(&self.binary)),
        }
    }
}
