//! The memory the router may spend on request bodies at once (`router.max_buffered_body_bytes`).
//!
//! The router holds each inference body whole before it forwards it (see `forward.rs`), so
//! 40 clients announcing 30 MiB each would otherwise make it hold 1.2 GB. A request
//! reserves its `Content-Length` when its head arrives (a chunked body reserves each chunk
//! as it comes), before a byte of the body is read; when the budget is spent it waits, first
//! come first served, at most [`WAIT`] in all, and then gets 503 `server_overloaded`. The
//! reservation is held until the request's context is dropped. Bodies of at most
//! [`SMALL_BODY`] (the everyday request) take no part, so they never queue behind large
//! uploads; their memory is bounded by the connection caps (`router.connections`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// Bodies announced at most this large do not take part (see `Router::read_body`).
pub const SMALL_BODY: u64 = 64 * 1024;

/// The longest a request waits for room for its body.
pub const WAIT: Duration = Duration::from_secs(1);

/// Reservations are counted in KiB (a semaphore counts up to `u32` at once).
const UNIT: u64 = 1024;

pub struct BodyBudget {
    room: Arc<Semaphore>,
    total_bytes: u64,
    retry_after_s: u64,
}

/// Room reserved for one request's body; given back when dropped.
#[derive(Default)]
pub struct Reserved(Option<OwnedSemaphorePermit>);

impl Reserved {
    fn add(&mut self, p: OwnedSemaphorePermit) {
        match &mut self.0 {
            Some(held) => held.merge(p),
            None => self.0 = Some(p),
        }
    }
}

impl BodyBudget {
    pub fn new(total_bytes: u64, retry_after_s: u64) -> Self {
        let units = total_bytes
            .div_ceil(UNIT)
            .min(Semaphore::MAX_PERMITS as u64);
        BodyBudget {
            room: Arc::new(Semaphore::new(units as usize)),
            total_bytes,
            retry_after_s,
        }
    }

    /// Adds room for `bytes` more to `held`, waiting until `deadline` at most.
    pub async fn reserve(
        &self,
        held: &mut Reserved,
        bytes: u64,
        deadline: Instant,
    ) -> Result<(), ApiError> {
        if bytes == 0 {
            return Ok(());
        }
        let units = bytes.div_ceil(UNIT).min(u32::MAX as u64) as u32;
        let wait = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, self.room.clone().acquire_many_owned(units)).await {
            Ok(Ok(p)) => {
                held.add(p);
                Ok(())
            }
            _ => Err(ApiError::server_overloaded(
                format!(
                    "The router is holding as many request bodies as it may ({} bytes, router.max_buffered_body_bytes); retry shortly",
                    self.total_bytes
                ),
                self.retry_after_s,
            )),
        }
    }

    /// Charges a body that has grown from `before` to `after` bytes (a `Content-Length`
    /// counts as the whole body at once): nothing while it is small, then everything so
    /// far, then each further byte.
    pub async fn charge(
        &self,
        held: &mut Reserved,
        before: u64,
        after: u64,
        deadline: Instant,
    ) -> Result<(), ApiError> {
        if after <= SMALL_BODY {
            return Ok(());
        }
        let owed = if before > SMALL_BODY {
            after - before
        } else {
            after
        };
        self.reserve(held, owed, deadline).await
    }

    /// Bytes not reserved right now.
    pub fn available_bytes(&self) -> u64 {
        self.room.available_permits() as u64 * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_first_come_first_served_then_503() {
        let b = Arc::new(BodyBudget::new(10 * 1024, 1));
        let soon = || Instant::now() + Duration::from_millis(200);
        let mut first = Reserved::default();
        b.reserve(&mut first, 6 * 1024, soon()).await.unwrap();
        b.reserve(&mut first, 1, soon()).await.unwrap(); // rounds up to 1 KiB
        assert_eq!(b.available_bytes(), 3 * 1024);
        let mut second = Reserved::default();
        let e = b.reserve(&mut second, 4 * 1024, soon()).await.unwrap_err();
        assert_eq!(e.status, 503);
        assert_eq!(e.code, "server_overloaded");
        assert_eq!(e.retry_after, Some(1));
        // Room comes back when a reservation is dropped; a waiter gets it.
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                let mut r = Reserved::default();
                b.reserve(&mut r, 8 * 1024, Instant::now() + Duration::from_secs(5))
                    .await
                    .map(|_| r)
            })
        };
        tokio::task::yield_now().await;
        drop(first);
        let r = waiter.await.unwrap().unwrap();
        assert_eq!(b.available_bytes(), 2 * 1024);
        drop(r);
        assert_eq!(b.available_bytes(), 10 * 1024);
    }
}
