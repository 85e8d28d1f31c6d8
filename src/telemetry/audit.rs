//! One audit line per refused request (target `llm_router::audit`, level warn) and the
//! `llm_router_denied_total{reason}` counter. Fields are bounded and never contain a key:
//! an unknown key is named by `key_fp`, the first 12 hex digits of its SHA-256.
//!
//! A flood of refusals must not also flood the journal: at most [`MAX_LINES_PER_S`] lines
//! a second are written, and the next line written says how many were left out.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::metrics;

/// Audit lines written per second at most.
pub const MAX_LINES_PER_S: u32 = 50;

/// What is known about a refused request.
#[derive(Debug, Default)]
pub struct Denial<'a> {
    /// `missing_key`, `bad_format`, `unknown_key`, `disabled`, `expired`, `model_denied`,
    /// `endpoint_denied`, `admin_denied`, ...
    pub reason: &'static str,
    pub request_id: &'a str,
    pub client: &'a str,
    pub principal: Option<&'a str>,
    pub key_fp: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    /// A configured model name, else `other`.
    pub model: Option<&'a str>,
    pub status: u16,
}

/// (second, lines written in it, lines left out since the last written one)
static WINDOW: Mutex<(u64, u32, u64)> = Mutex::new((0, 0, 0));

/// Counts the denial and writes its audit line (unless over the rate).
pub fn denied(d: &Denial<'_>) {
    metrics::DENIED.with_label_values(&[d.reason]).inc();
    let Some(suppressed) = admit_line() else {
        return;
    };
    tracing::warn!(
        target: "llm_router::audit",
        reason = d.reason,
        request_id = d.request_id,
        client = d.client,
        principal = d.principal.unwrap_or("-"),
        key_fp = d.key_fp.unwrap_or("-"),
        method = d.method,
        path = d.path,
        model = d.model.unwrap_or("-"),
        status = d.status,
        suppressed,
        "request denied"
    );
}

/// `Some(lines left out before this one)` when a line may be written now.
fn admit_line() -> Option<u64> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut w = WINDOW.lock().unwrap_or_else(|e| e.into_inner());
    if w.0 != now {
        w.0 = now;
        w.1 = 0;
    }
    if w.1 >= MAX_LINES_PER_S {
        w.2 += 1;
        return None;
    }
    w.1 += 1;
    Some(std::mem::take(&mut w.2))
}
