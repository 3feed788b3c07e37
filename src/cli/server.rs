//! `sealkeeper server`.

use std::path::PathBuf;

use tracing_subscriber::EnvFilter;

use super::LogFormat;
use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Config file (TOML).
    #[arg(long, value_name = "PATH")]
    pub config: PathBuf,
    /// Log format on stderr. The level is set with SEALKEEPER_LOG (e.g. "debug"), default "info".
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("SEALKEEPER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

pub fn run(args: ServerArgs) -> Result<i32, String> {
    crate::crypto::warm_up_in_background();
    init_logging(args.log_format);
    let cfg = Config::load(&args.config).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("sealkeeper")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal()?;
        let listeners = crate::app::bind(&cfg).await.map_err(|e| e.to_string())?;
        crate::app::run(cfg, listeners, shutdown)
            .await
            .map_err(|e| e.to_string())
    })?;
    Ok(0)
}

/// Installs the SIGTERM/SIGINT handlers now (before anything is bound, so that a signal during
/// start-up also shuts down cleanly) and returns the future that completes on either.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
