//! Process signals that stop a daemon: Ctrl-C everywhere, SIGTERM on Unix (systemd, Kubernetes,
//! `kill`). Both end in the same cancellation, so every shutdown path is the graceful one.

use tokio_util::sync::CancellationToken;

/// A token cancelled at the first Ctrl-C or SIGTERM. Must be called inside a Tokio runtime.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            t.cancel();
        }
    });
    #[cfg(unix)]
    {
        let t = token.clone();
        tokio::spawn(async move {
            if let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                s.recv().await;
                t.cancel();
            }
        });
    }
    token
}
