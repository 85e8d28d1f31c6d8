//! Small value types that config keys name and that services of higher layers interpret:
//! defined here so that the config imports nothing of the crate.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// A serving engine's dialect of `/metrics` (`engine:` on a model; see `scrape::dialect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Vllm,
    Sglang,
    Llamacpp,
    Tgi,
    Trtllm,
}

/// How token vectors become one sentence vector (`pooling:` of an embedding model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Cls,
    Mean,
}

/// `router.access_log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    #[default]
    Logfmt,
    Json,
    Off,
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
