use command_service::config::{Config, MigrateConfig};
use command_service::startup::{migrate, Application};
use service_runtime::shutdown::{cancel_on_signal, CancellationToken};

/// `command-service` serves; `command-service migrate` applies the schema's
/// migrations and exits (a deployment's migration job).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_runtime::telemetry::init("command-service");
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {}
        Some("migrate") => return Ok(migrate(&MigrateConfig::from_env()?).await?),
        Some(other) => {
            anyhow::bail!("unknown command {other:?}; usage: command-service [serve | migrate]")
        }
    }
    let config = Config::from_env()?;
    let app = Application::build(config).await?;
    tracing::info!(port = app.port(), "command-service listening");
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    app.run_until_stopped(shutdown).await?;
    Ok(())
}
