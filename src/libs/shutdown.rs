//! Process shutdown: one token every task watches, tripped by SIGINT or SIGTERM.

use tokio_util::sync::CancellationToken;

/// Returns a token that is cancelled when the process receives SIGINT or SIGTERM.
///
/// Roles pass clones of it to their tasks; a task stops taking new work when it is
/// cancelled and drains what it already accepted.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        t.cancel();
    });
    token
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        // Without signal handlers we can still stop on Ctrl-C.
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
