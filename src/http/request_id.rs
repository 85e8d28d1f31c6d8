//! Request ids (`x-request-id`): the client's own when it is a sane token, else a new one.
//! The proxy sets it on the request (the engine gets it) and on every answer; the
//! embedding service names its answers with one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::hash::mix;

/// The header naming a request end to end (client, router, engine, logs).
pub const HEADER: &str = "x-request-id";

/// `given` when it is a sane token: 1-128 visible ASCII characters (it goes into logs and
/// headers as it is).
pub fn accept(given: Option<&str>) -> Option<&str> {
    given.filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
}

/// A new id: 16 hex digits, distinct within the process (a counter) and, with the clock
/// mixed in, unlikely to repeat across processes.
pub fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{:016x}", mix(n ^ t.rotate_left(17)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_only_sane_ones_are_kept() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|i| i.len() == 16));
        assert_eq!(accept(Some("abc-1")), Some("abc-1"));
        for bad in ["", "has space", "tab\t", &"x".repeat(129)] {
            assert_eq!(accept(Some(bad)), None, "{bad:?}");
        }
    }
}
