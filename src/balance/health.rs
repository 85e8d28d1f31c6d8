//! One health verdict per instance. The poller (`scrape::poller`) is the only thing that
//! asks an instance's `GET /health`; it records each answer here, and everything else
//! reads that one verdict: the selection (an instance whose check fails is ranked last),
//! the supervisor (an engine is ready at its first 200 after it was started, and is
//! restarted when its checks keep failing) and `/v1/router/instances`.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;
use tracing::warn;

use super::stats::now_ms;
use super::Instance;

/// Wakes those waiting for an instance's next verdict, and carries their wish for one
/// soon (the poller checks a wanted instance at its next tick, not at its next period).
#[derive(Debug, Default)]
pub struct HealthSignal {
    recorded: Notify,
    wanted: AtomicBool,
}

impl Instance {
    /// Records the answer of a `GET /health` begun at `started_at` ([`now_ms`]): 200 or not.
    pub fn record_health(&self, ok: bool, started_at: u64) {
        let was_ok = self.stats().health_ok();
        self.stats().set_health_checked(ok, started_at);
        if was_ok && !ok {
            warn!(model = %self.model, instance = %self.id, url = %self.address().url, "health check failed: GET /health");
        }
        self.log_state_change(&self.snapshot());
        self.health.recorded.notify_waiters();
    }

    /// The verdict of the first check begun at or after `since` ([`now_ms`]), waiting for
    /// it. `soon`: ask the poller to check at its next tick rather than its next period.
    pub async fn health_after(&self, since: u64, soon: bool) -> bool {
        loop {
            let recorded = self.health.recorded.notified();
            tokio::pin!(recorded);
            recorded.as_mut().enable();
            if self.stats().health_checked_at() >= since {
                return self.stats().health_ok();
            }
            if soon {
                self.health.wanted.store(true, Ordering::Relaxed);
            }
            recorded.await;
        }
    }

    /// A fresh verdict, checked as soon as the poller can.
    pub async fn health_now(&self) -> bool {
        self.health_after(now_ms(), true).await
    }

    /// Asks the poller to check this instance at its next tick.
    pub fn want_health(&self) {
        self.health.wanted.store(true, Ordering::Relaxed);
    }

    /// Whether someone waits for a check of this instance soon; clears the wish.
    pub fn take_health_wanted(&self) -> bool {
        self.health.wanted.swap(false, Ordering::Relaxed)
    }
}
