//! The process-wide shutdown signal: a `watch` channel that turns `true` once.

use tokio::sync::watch;

/// Resolves once shutdown has been requested (or the sender is gone).
pub async fn requested(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, so callers' futures stay `Send`.
    let _ = rx.wait_for(|stop| *stop).await;
}
