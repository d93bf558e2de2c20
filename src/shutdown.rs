//! Process signals: the one place that turns Ctrl-C, SIGTERM and SIGHUP into a shutdown.
//!
//! Everything else takes a `CancellationToken` as a parameter (so tests pull it instead of
//! sending signals); the pool's `run` does the two-phase drain when it fires.

/// Resolves on the first Ctrl-C (SIGINT), SIGTERM or SIGHUP. A hang-up (the terminal of a
/// `serve` run by hand closed, or a `kill -HUP` meant as a reload, which Hopper has not)
/// stops the node gracefully, its jobs handed back, rather than by the signal's default,
/// which killed it on the spot with its jobs left to the rescuer.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(unix)]
    let hup = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut s) => {
                s.recv().await;
                tracing::info!("SIGHUP: Hopper has no reload; stopping as for SIGTERM");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    #[cfg(not(unix))]
    let hup = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
        () = hup => {}
    }
}
