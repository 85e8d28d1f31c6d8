//! The life of a router process: starting, committed, leaving.
//!
//! A router that starts (fresh, or as the new process of a graceful upgrade) is only
//! *provisional* until its bootstrap has run: until then the old router still serves, and
//! a failure at any point (a model that does not load, an address that cannot be bound,
//! a hand-over that never comes, a stop signal) must leave everything as it was. Once
//! [`commit`] is called, the process is the one in charge.
//!
//! Services never exit the process: a fatal start-up problem is reported with [`fail`],
//! and the command line (the only place that exits) waits for it with [`failed`]. What
//! an exit must undo or finish is registered with [`at_exit`] and runs however the
//! process ends (`std::process::exit`, Pingora's own exits, the end of `main`); each hook
//! asks [`is_committed`] to tell an abandoned start from a normal exit.
//!
//! [`drain`] is the other end of a process's life: `/health` turns 503 when it starts
//! leaving, and it leaves early once nothing is in flight.
//!
//! This module imports nothing else of the crate: every layer may use it.

pub mod drain;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once, OnceLock};

use tokio::sync::watch;

/// Exit code for a bad config file, bad arguments, or a start that cannot serve what
/// the config asks for (a model that does not load).
pub const EXIT_CONFIG: i32 = 2;

/// A start-up failure: the exit code and what to tell the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

static COMMITTED: AtomicBool = AtomicBool::new(false);
static EXITING: AtomicBool = AtomicBool::new(false);

fn commit_channel() -> &'static watch::Sender<bool> {
    static C: OnceLock<watch::Sender<bool>> = OnceLock::new();
    C.get_or_init(|| watch::Sender::new(false))
}

fn failure_channel() -> &'static watch::Sender<Option<Failure>> {
    static C: OnceLock<watch::Sender<Option<Failure>>> = OnceLock::new();
    C.get_or_init(|| watch::Sender::new(None))
}

/// Marks the process as the one in charge: the old router has been told to leave (or
/// there is none). From here on an exit is a normal exit.
pub fn commit() {
    COMMITTED.store(true, Ordering::SeqCst);
    commit_channel().send_replace(true);
}

pub fn is_committed() -> bool {
    COMMITTED.load(Ordering::SeqCst)
}

/// Resolves once [`commit`] has been called.
pub async fn committed() {
    let mut rx = commit_channel().subscribe();
    let _ = rx.wait_for(|c| *c).await;
}

/// Reports a fatal start-up problem; the first report wins.
pub fn fail(code: i32, message: impl Into<String>) {
    let f = Failure {
        code,
        message: message.into(),
    };
    failure_channel().send_if_modified(|cur| {
        if cur.is_none() {
            *cur = Some(f);
            true
        } else {
            false
        }
    });
}

/// Asks for a normal exit (code 0) of a process that has nothing left to do (drained in
/// its grace period); the command line exits. Counts as the first report, like [`fail`].
pub fn finish(message: impl Into<String>) {
    fail(0, message);
}

/// Resolves with the first failure reported by [`fail`] (or the [`finish`] request).
pub async fn failed() -> Failure {
    let mut rx = failure_channel().subscribe();
    let got = rx.wait_for(|f| f.is_some()).await.map(|f| f.clone());
    match got {
        Ok(f) => f.unwrap_or_else(unknown),
        Err(_) => std::future::pending().await,
    }
}

fn unknown() -> Failure {
    Failure {
        code: 1,
        message: "start-up failed".into(),
    }
}

type Hook = Box<dyn Fn() + Send + Sync>;
static HOOKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());

/// Runs `hook` when the process exits. Hooks run in reverse order of registration (as
/// `atexit` does): what was set up last is undone first.
pub fn at_exit(hook: impl Fn() + Send + Sync + 'static) {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registering a plain extern "C" fn with the C runtime.
        unsafe {
            nix::libc::atexit(run_hooks);
        }
    });
    if let Ok(mut h) = HOOKS.lock() {
        h.push(Box::new(hook));
    }
}

/// Whether the process has begun to exit (the exit hooks run): nothing new should be
/// started from here on.
pub fn is_exiting() -> bool {
    EXITING.load(Ordering::SeqCst)
}

extern "C" fn run_hooks() {
    // A hook that panics must not abort the others (nor unwind into C).
    let hooks = match HOOKS.lock() {
        Ok(mut h) => {
            EXITING.store(true, Ordering::SeqCst);
            std::mem::take(&mut *h)
        }
        Err(_) => return,
    };
    for h in hooks.into_iter().rev() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(h));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_failure_wins_and_commit_wakes_waiters() {
        let waiter = tokio::spawn(failed());
        fail(2, "model did not load");
        fail(1, "later");
        assert_eq!(
            waiter.await.unwrap(),
            Failure {
                code: 2,
                message: "model did not load".into()
            }
        );
        assert!(!is_committed());
        let w = tokio::spawn(committed());
        commit();
        w.await.unwrap();
        assert!(is_committed());
    }
}
