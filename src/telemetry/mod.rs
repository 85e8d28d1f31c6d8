//! Logging set-up, the router's Prometheus metrics ([`metrics`]) and the access log
//! ([`access`]).

pub mod access;
pub mod metrics;

use tracing_subscriber::EnvFilter;

/// Logs to stderr, level from `RUST_LOG` (default `info`). Pingora's own `log` records
/// are captured too.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
