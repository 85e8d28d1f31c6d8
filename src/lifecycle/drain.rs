//! Draining state: `/health` answers 503 as soon as the process starts leaving (SIGQUIT
//! for a graceful upgrade, SIGTERM), so load balancers in front stop sending new work
//! while in-flight requests finish.
//!
//! Pingora announces its phases on a broadcast channel; a background service turns them
//! into one flag the proxy reads without locking, and in the grace period ends the
//! process as soon as nothing is in flight any more.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use tokio::sync::broadcast;
use tracing::info;

/// Shared "we are leaving" flag.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Watches Pingora's execution phases and sets [`Draining`] on the first sign of exit.
pub struct DrainWatch {
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    draining: Draining,
}

impl DrainWatch {
    /// `phases` must be taken with `Server::watch_execution_phase()` before `run_forever()`.
    pub fn new(phases: broadcast::Receiver<ExecutionPhase>, draining: Draining) -> Self {
        DrainWatch {
            phases: Mutex::new(Some(phases)),
            draining,
        }
    }
}

fn is_leaving(p: &ExecutionPhase) -> bool {
    matches!(
        p,
        ExecutionPhase::GracefulUpgradeTransferringFds
            | ExecutionPhase::GracefulUpgradeCloseTimeout
            | ExecutionPhase::GracefulTerminate
            | ExecutionPhase::ShutdownStarted
            | ExecutionPhase::ShutdownGracePeriod
            | ExecutionPhase::ShutdownRuntimes
            | ExecutionPhase::Terminated
    )
}

/// The `/health` answer: 200 `{"status":"ok"}`, or 503 `{"status":"draining"}` once the
/// process is leaving (main port and admin listener alike).
pub fn health(draining: bool) -> (u16, Vec<u8>) {
    let (status, state) = if draining {
        (503, "draining")
    } else {
        (200, "ok")
    };
    (status, format!(r#"{{"status":"{state}"}}"#).into_bytes())
}

/// Requests being answered right now (proxy, embedding service).
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// Whether the engine supervisor still has engines to stop (or hand over).
static ENGINES_BUSY: AtomicBool = AtomicBool::new(false);

/// Counts one request as being answered until dropped (held by the request's context).
#[derive(Debug)]
pub struct ActiveRequest(());

impl ActiveRequest {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        ACTIVE.fetch_add(1, Ordering::SeqCst);
        ActiveRequest(())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Requests being answered now.
pub fn active_requests() -> usize {
    ACTIVE.load(Ordering::SeqCst)
}

/// Set by the supervisor while it runs engines; cleared once every engine is stopped (or
/// left to the next router), so an early exit never cuts an engine's stop short.
pub fn set_engines_busy(busy: bool) {
    ENGINES_BUSY.store(busy, Ordering::SeqCst);
}

/// How long nothing must be in flight before the process leaves early: covers a
/// connection accepted just before the listeners closed whose request is still arriving.
const SETTLE: Duration = Duration::from_secs(1);

/// During Pingora's grace period, waits until no request has been in flight for
/// [`SETTLE`] and the engines are settled, then asks for the exit ([`super::finish`]): Pingora itself would sleep out the
/// whole grace period (120 s by default) even when idle, which makes every stop and the
/// old process of every reload linger.
async fn exit_once_drained() {
    let mut idle_since: Option<Instant> = None;
    loop {
        let idle = active_requests() == 0 && !ENGINES_BUSY.load(Ordering::SeqCst);
        match (idle, idle_since) {
            (false, _) => idle_since = None,
            (true, None) => idle_since = Some(Instant::now()),
            (true, Some(t)) if t.elapsed() >= SETTLE => {
                super::finish(
                    "drained: nothing in flight, exiting before the end of the grace period",
                );
                return;
            }
            (true, Some(_)) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[async_trait]
impl BackgroundService for DrainWatch {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(mut rx) = self.phases.lock().ok().and_then(|mut g| g.take()) else {
            return;
        };
        loop {
            match rx.recv().await {
                Ok(phase) => {
                    if is_leaving(&phase) && !self.draining.is_set() {
                        info!(?phase, "draining: /health now answers 503");
                        self.draining.set();
                    }
                    if matches!(phase, ExecutionPhase::ShutdownGracePeriod) {
                        exit_once_drained().await;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
