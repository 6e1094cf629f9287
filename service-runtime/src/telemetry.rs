//! Tracing subscriber set-up.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global tracing subscriber. `RUST_LOG` selects what is logged
/// (default `info`); `LOG_FORMAT=json` switches to one JSON object per line for
/// log shippers. Calling it twice is harmless (tests build several services in
/// one process), the second call is ignored.
pub fn init(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi);
    let installed = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if installed.is_ok() {
        tracing::info!(service, "telemetry initialised");
    }
}
