use projector::cli::{self, Command};
use projector::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_runtime::telemetry::init("projector");
    let command = Command::parse(std::env::args().skip(1))?;
    let config = Config::from_env()?;
    cli::run(command, config).await
}
