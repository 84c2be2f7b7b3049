//! Readiness and shutdown notifications to systemd, for `Type=notify` units (sd_notify(3)).
//!
//! Each call sends one datagram to the Unix socket named by `NOTIFY_SOCKET`. Without that
//! variable (not started by systemd, or a unit of another `Type=`) every call does nothing. The
//! variable is left set: a daemon sends several notifications over its life (ready, status,
//! stopping), and the daemons start no child processes that could inherit it and speak for them.
//!
//! A notification that cannot be sent is logged and otherwise ignored: it is advisory, and a
//! daemon that serves is better than one that stops over it (systemd names a missing `READY=1`
//! itself, as a start timeout in `systemctl status`).
//!
//! Off Unix there is no such protocol and every call is a no-op (the Windows agent reports to
//! the service control manager instead).

use tokio_util::sync::CancellationToken;

/// `READY=1` with `STATUS=<status>`: the daemon does what it is for from now on. Sent once;
/// systemd ends `systemctl start` and starts the units ordered after this one.
pub fn ready(status: &str) {
    #[cfg(unix)]
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
    #[cfg(not(unix))]
    let _ = status;
}

/// `STOPPING=1` with `STATUS=<status>`: the daemon is shutting down on its own or on a signal.
pub fn stopping(status: &str) {
    #[cfg(unix)]
    send(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status(status),
    ]);
    #[cfg(not(unix))]
    let _ = status;
}

/// `STATUS=<status>`: a one-line state shown by `systemctl status`.
pub fn status(status: &str) {
    #[cfg(unix)]
    send(&[sd_notify::NotifyState::Status(status)]);
    #[cfg(not(unix))]
    let _ = status;
}

/// Send [`stopping`] with `status` as soon as `shutdown` is cancelled (a signal, or the daemon
/// stopping itself), so systemd knows at once that the stop is under way while the daemon still
/// drains its connections. Must be called inside a Tokio runtime.
pub fn stopping_on(shutdown: &CancellationToken, status: &'static str) {
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopping(status);
    });
}

#[cfg(unix)]
fn send(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(
            error = %e,
            socket = ?std::env::var_os("NOTIFY_SOCKET"),
            "cannot notify the service manager through NOTIFY_SOCKET"
        );
    }
}
