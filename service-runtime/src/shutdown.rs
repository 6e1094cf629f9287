//! One shutdown signal per process. Every long-running loop takes a
//! [`CancellationToken`] and returns when it is cancelled, so SIGTERM drains
//! work instead of cutting it.

pub use tokio_util::sync::CancellationToken;

/// Cancels `token` on SIGTERM or Ctrl-C. Returns immediately; the listener
/// runs as a task.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        token.cancel();
    });
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the service");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Sleeps for `duration` unless shutdown comes first. Returns true if it did,
/// so loops read `if sleep_or_shutdown(..).await { break }`.
pub async fn sleep_or_shutdown(
    duration: std::time::Duration,
    shutdown: &CancellationToken,
) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}
