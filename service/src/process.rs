//! What every Tutti process does at its edges: logging set up one way, and stopping on
//! SIGINT or SIGTERM.

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (in cluster).
    Json,
}

/// Installs the tracing subscriber: `RUST_LOG` if set, else `info` with the WebRTC
/// stack's crates at `error`.
pub fn init_logging(format: LogFormat) {
    // The WebRTC stack logs every malformed packet it drops; at info level a hostile
    // sender could fill the logs, so its crates only report errors unless RUST_LOG says
    // otherwise. Drops are counted in metrics instead.
    let default = "info,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_srtp=error,rtc_sctp=error,\
rtc_interceptor=error,rtc_rtp=error,rtc_rtcp=error,rtc_stun=error";
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
