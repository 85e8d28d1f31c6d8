//! Process control for engines: spawn in an own session, signal the whole group, read
//! the tail of the log.
//!
//! vLLM's API server forks `EngineCore`/worker processes that hold the GPU memory; when
//! the API server dies (even by `kill -9`) they live on. Every engine therefore runs in
//! its own session (its pid is its process-group id) and every stop or restart signals
//! the whole group and waits until the group is empty.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::command::EngineSpec;

/// Starts the engine: own session, output appended to its log file, no parent-death
/// signal (engines must survive a graceful upgrade of the router). The engine is tracked
/// for the exit hook; once the process is exiting, nothing is started any more.
pub fn spawn(spec: &EngineSpec) -> io::Result<Child> {
    let mut groups = GROUPS
        .lock()
        .map_err(|_| io::Error::other("engine table poisoned"))?;
    // Checked under the lock the exit hook takes: a start either completes (and is
    // stopped by the hook) or is refused.
    if crate::lifecycle::is_exiting() {
        return Err(io::Error::other("the router is exiting"));
    }
    let child = spawn_untracked(spec)?;
    if let Some(pid) = child.id() {
        groups.push((pid as i32, false));
    }
    Ok(child)
}

fn spawn_untracked(spec: &EngineSpec) -> io::Result<Child> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    if let Some(dir) = spec.log_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)?;
    writeln!(
        log,
        "=== llm-router: starting {}: {}",
        spec.instance,
        spec.argv.join(" ")
    )?;
    let err = log.try_clone()?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(false);
    // SAFETY: setsid and signal are async-signal-safe and touch no memory of the parent.
    // The router ignores SIGHUP until its handler is up, and an ignored disposition
    // survives exec: the engine gets the default back.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(io::Error::from)?;
            nix::sys::signal::signal(Signal::SIGHUP, nix::sys::signal::SigHandler::SigDfl)
                .map_err(io::Error::from)?;
            Ok(())
        });
    }
    cmd.spawn()
}

/// Sends `sig` to every process of group `pgid`; false if the group is gone.
pub fn signal_group(pgid: i32, sig: Signal) -> bool {
    killpg(Pid::from_raw(pgid), sig).is_ok()
}

/// Whether any process of the group is still alive (zombies of our own child excluded
/// once reaped by the caller).
pub fn group_alive(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None).is_ok()
}

/// SIGTERM to the group, SIGKILL after `timeout`; returns when the group is gone (or
/// after a last grace second past the SIGKILL). Reaps `child` meanwhile.
pub async fn stop_group(pgid: i32, child: Option<&mut Child>, timeout: Duration) {
    let mut child = child;
    signal_group(pgid, Signal::SIGTERM);
    let t0 = Instant::now();
    let mut killed = false;
    loop {
        if let Some(c) = child.as_deref_mut() {
            let _ = c.try_wait();
        }
        if !group_alive(pgid) {
            return;
        }
        if !killed && t0.elapsed() >= timeout {
            signal_group(pgid, Signal::SIGKILL);
            killed = true;
        }
        if killed && t0.elapsed() >= timeout + Duration::from_secs(5) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last `lines` lines of a log file (at most 64 KiB read).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Engine groups to stop if the router exits without its services shutting down (Pingora
/// exits at once on SIGINT), unless they are being handed to a new router (upgrade).
/// `true` marks a group this process adopted rather than spawned.
static GROUPS: Mutex<Vec<(i32, bool)>> = Mutex::new(Vec::new());
static KEEP_ON_EXIT: AtomicBool = AtomicBool::new(false);

/// Stops the engines at exit (see [`stop_tracked_at_exit`]); registered once, when the
/// supervisor is built (before any service can fail and exit).
pub fn stop_at_exit() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| crate::lifecycle::at_exit(stop_tracked_at_exit));
}

/// An engine started by another router and taken over by this one ([`spawn`] tracks
/// those it starts itself).
pub fn track_adopted(pgid: i32) {
    if let Ok(mut g) = GROUPS.lock() {
        g.push((pgid, true));
    }
}

pub fn untrack(pgid: i32) {
    if let Ok(mut g) = GROUPS.lock() {
        g.retain(|(p, _)| *p != pgid);
    }
}

/// Engines outlive this process (graceful upgrade: the new router adopts them).
pub fn keep_on_exit() {
    KEEP_ON_EXIT.store(true, Ordering::SeqCst);
}

/// The engine groups an exit stops: all of them once this router is in charge; before
/// that (an abandoned start) only those it spawned itself, never the ones it adopted
/// from the router that still serves with them.
fn groups_to_stop(groups: &[(i32, bool)], committed: bool) -> Vec<i32> {
    groups
        .iter()
        .filter(|(_, adopted)| committed || !adopted)
        .map(|(g, _)| *g)
        .collect()
}

fn stop_tracked_at_exit() {
    if KEEP_ON_EXIT.load(Ordering::SeqCst) {
        return;
    }
    let groups = match GROUPS.lock() {
        Ok(g) => g.clone(),
        Err(_) => return,
    };
    let groups = groups_to_stop(&groups, crate::lifecycle::is_committed());
    if groups.is_empty() {
        return;
    }
    for &g in &groups {
        signal_group(g, Signal::SIGTERM);
    }
    let t0 = Instant::now();
    while groups.iter().any(|&g| group_alive(g)) && t0.elapsed() < Duration::from_secs(10) {
        // Reap whatever of ours exited, so zombies do not count as alive.
        while let Ok(s) = nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
        {
            if s == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for &g in &groups {
        signal_group(g, Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abandoned_start_stops_only_the_engines_it_spawned() {
        let groups = [(10, false), (11, true), (12, false)];
        assert_eq!(groups_to_stop(&groups, false), [10, 12]);
        assert_eq!(groups_to_stop(&groups, true), [10, 11, 12]);
    }
}
