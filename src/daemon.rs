//! Start-up order for daemon mode and graceful upgrades.
//!
//! With `-d` and `daemon_wait_for_ready`, the foreground process waits for a SIGUSR1 from
//! the daemon before it exits 0; systemd (or an operator's script) then sends SIGQUIT to
//! the old router. Pingora sends that signal from its bootstrap service, so everything the
//! new process must have done before the old one leaves (engines adopted, embedding
//! models loaded) is a dependency of the bootstrap service, and the listeners depend on
//! the bootstrap (they take over the old process's sockets).
//!
//! Pingora 0.9.1 installs the parent's SIGUSR1 handler only after forking, so a daemon
//! that is ready very fast kills its parent with the signal (the default action), and the
//! reload fails. [`ParentReadyGate`] closes that race: it holds the bootstrap back until
//! the parent's `/proc/<pid>/status` shows SIGUSR1 caught.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use tracing::warn;

/// How long to wait for the parent's handler before signalling anyway.
const GATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Holds dependents back until the foreground parent can take SIGUSR1.
pub struct ParentReadyGate {
    /// The foreground process to be notified; `None` when nobody waits for readiness.
    parent: Option<u32>,
}

impl ParentReadyGate {
    /// Must be built before `run_forever()` forks: the pid taken here is the parent's.
    pub fn new(conf: &ServerConf) -> Self {
        let parent = (conf.daemon && conf.daemon_wait_for_ready).then(std::process::id);
        ParentReadyGate { parent }
    }
}

/// Whether the `SigCgt` mask of a `/proc/<pid>/status` text has `signal` caught.
pub fn catches(status: &str, signal: i32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| signal >= 1 && mask & (1u64 << (signal - 1)) != 0)
}

#[async_trait]
impl BackgroundService for ParentReadyGate {
    async fn start_with_ready_notifier(
        &self,
        _shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        if let Some(pid) = self.parent {
            let t0 = Instant::now();
            loop {
                match std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    // Gone: nobody to notify (Pingora logs the failed signal).
                    Err(_) => break,
                    Ok(s) if catches(&s, nix::libc::SIGUSR1) => break,
                    Ok(_) => {}
                }
                if t0.elapsed() >= GATE_TIMEOUT {
                    warn!(
                        parent = pid,
                        "foreground process shows no SIGUSR1 handler; signalling readiness anyway"
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        ready.notify_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_caught_mask() {
        // SIGUSR1 = 10 -> bit 9 (0x200).
        assert!(catches("Name:\tx\nSigCgt:\t0000000000000200\n", 10));
        assert!(!catches("SigCgt:\t0000000000004002\n", 10));
        assert!(catches("SigCgt:\t0000000000004002\n", 2));
        assert!(!catches("SigIgn:\t0000000000000200\n", 10));
        assert!(!catches("SigCgt:\tzz\n", 10));
    }
}
