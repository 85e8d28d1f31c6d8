//! Logging set-up, the router's Prometheus metrics ([`metrics`]) and the access log
//! ([`access`]).

pub mod access;
pub mod audit;
pub mod metrics;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing_subscriber::EnvFilter;

/// SIGHUP (what logrotate sends): reopen the access log file. Registered in a service,
/// after the daemon fork; until then `main` ignores SIGHUP (its default action kills).
pub struct Hangup;

#[async_trait]
impl BackgroundService for Hangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP; it stays ignored");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reopening the access log");
                    access::reopen();
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Replaces the level filter after start-up (once the config is read).
type SetFilter = Box<dyn Fn(EnvFilter) + Send + Sync>;

static LEVEL: std::sync::OnceLock<SetFilter> = std::sync::OnceLock::new();

/// Logs to stderr at `info` until the config's `router.log_level` is applied with
/// [`set_log_level`]; `RUST_LOG`, when set, wins over both. Pingora's own `log` records
/// are captured too.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_env_filter(filter)
        .with_filter_reloading();
    let handle = builder.reload_handle();
    if builder.try_init().is_ok() {
        let _ = LEVEL.set(Box::new(move |f| {
            let _ = handle.reload(f);
        }));
    }
}

/// Applies the config's level (`error`..`trace`, or directives such as
/// `info,llm_router::scrape=debug`) unless `RUST_LOG` is set.
pub fn set_log_level(directives: &str) {
    if std::env::var_os("RUST_LOG").is_some() {
        return;
    }
    if let (Some(set), Ok(f)) = (LEVEL.get(), EnvFilter::try_new(directives)) {
        set(f);
    }
}
