use projector::config::Config;
use projector::startup::Application;
use service_runtime::shutdown::{cancel_on_signal, CancellationToken};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_runtime::telemetry::init("projector");
    let config = Config::from_env()?;
    let app = Application::build(config).await?;
    tracing::info!(port = app.port(), "projector health endpoint listening");
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    app.run_until_stopped(shutdown).await?;
    Ok(())
}
