//! Draining state: `/health` answers 503 as soon as the process starts leaving (SIGQUIT
//! for a graceful upgrade, SIGTERM), so load balancers in front stop sending new work
//! while in-flight requests finish.
//!
//! Pingora announces its phases on a broadcast channel; a background service turns them
//! into one flag the proxy reads without locking.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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

#[async_trait]
impl BackgroundService for DrainWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut rx) = self.phases.lock().ok().and_then(|mut g| g.take()) else {
            return;
        };
        loop {
            tokio::select! {
                p = rx.recv() => match p {
                    Ok(phase) if is_leaving(&phase) => {
                        info!(?phase, "draining: /health now answers 503");
                        self.draining.set();
                        return;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = shutdown.changed() => {
                    self.draining.set();
                    return;
                }
            }
        }
    }
}
