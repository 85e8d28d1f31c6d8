//! Logging set-up, the router's Prometheus metrics ([`metrics`]) and the access log
//! ([`access`]).

pub mod access;
pub mod admin;
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

/// Whether `directives` is a valid level filter (for config validation): a level, or
/// comma-separated `target=level` directives. A bare word that is not a level is refused
/// (tracing would read it as a target name and silently log everything for it).
pub fn valid_log_level(directives: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for d in directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{level}` in `{d}` is not one of {}",
                LEVELS.join(", ")
            ));
        }
    }
    EnvFilter::try_new(directives)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::valid_log_level;

    #[test]
    fn log_levels() {
        for ok in [
            "info",
            "WARN",
            "info,llm_router::scrape=debug",
            "pingora_core=off",
        ] {
            assert!(valid_log_level(ok).is_ok(), "{ok}");
        }
        for bad in ["loud", "info,scrape=noisy", "x="] {
            assert!(valid_log_level(bad).is_err(), "{bad}");
        }
    }
}
