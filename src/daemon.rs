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
//!
//! A start that fails must leave the running service as it was: the listen addresses are
//! checked before anything starts ([`check_listen`]; Pingora would only find out after
//! the old process was told to leave, and then serve without that listener), and a
//! daemon that exits before it is in charge puts the pid file back
//! ([`restore_pid_file_on_abort`]).

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

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

/// Checks that every address can be listened on: it is free, or (during a graceful
/// upgrade) the old router `old_router` listens on exactly that address and will hand the
/// socket over. Binds each one for a moment, as Pingora does (`SO_REUSEADDR`).
pub fn check_listen(addrs: &[SocketAddr], old_router: Option<i32>) -> Result<(), String> {
    for a in addrs {
        match try_bind(a) {
            Ok(()) => {}
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && old_router.is_some_and(|pid| listens_on(pid, a)) => {}
            Err(e) => {
                let owner = old_router
                    .map(|p| format!(" (and the router being replaced, pid {p}, does not hold it)"))
                    .unwrap_or_default();
                return Err(format!("cannot listen on {a}: {e}{owner}"));
            }
        }
    }
    Ok(())
}

fn try_bind(a: &SocketAddr) -> io::Result<()> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(*a),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    s.bind(&(*a).into())
}

/// Whether process `pid` holds a listening TCP socket bound to exactly `addr`.
fn listens_on(pid: i32, addr: &SocketAddr) -> bool {
    let table = if addr.is_ipv4() { "tcp" } else { "tcp6" };
    let Ok(text) = std::fs::read_to_string(format!("/proc/net/{table}")) else {
        return false;
    };
    let inodes: HashSet<u64> = listeners(&text)
        .filter(|(a, _)| a == addr)
        .map(|(_, inode)| inode)
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|l| socket_inode(&l.to_string_lossy()))
            .is_some_and(|i| inodes.contains(&i))
    })
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The listening sockets (state `0A`) of a `/proc/net/tcp{,6}` table: address and inode.
fn listeners(table: &str) -> impl Iterator<Item = (SocketAddr, u64)> + '_ {
    table.lines().skip(1).filter_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(3) != Some(&"0A") {
            return None;
        }
        Some((proc_addr(f.get(1)?)?, f.get(9)?.parse().ok()?))
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits + port (IPv6): each 32-bit word is in host
/// (little-endian) order, the port big-endian.
fn proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<u32>> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .map(|w| w.map(u32::swap_bytes))
        .collect();
    let words = words?;
    let ip = match words.as_slice() {
        [a] => IpAddr::V4(Ipv4Addr::from(*a)),
        [a, b, c, d] => {
            let b16 = |w: u32| [(w >> 16) as u16, w as u16];
            let [p0, p1] = b16(*a);
            let [p2, p3] = b16(*b);
            let [p4, p5] = b16(*c);
            let [p6, p7] = b16(*d);
            IpAddr::V6(Ipv6Addr::new(p0, p1, p2, p3, p4, p5, p6, p7))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Pingora moves the old pid file to `<pid_file>.old` and writes the daemon's pid before
/// anything can fail; a daemon that exits before it is in charge puts the old one back,
/// so `systemctl` keeps track of the router that still serves.
pub fn restore_pid_file_on_abort(pid_file: String) {
    crate::lifecycle::at_exit(move || {
        if crate::lifecycle::is_committed() {
            return;
        }
        let me = std::process::id().to_string();
        let path = Path::new(&pid_file);
        if !std::fs::read_to_string(path).is_ok_and(|s| s.trim() == me) {
            return; // not the daemon (the foreground parent also runs exit hooks)
        }
        // The foreground parent polls the pid file every 100 ms to notice that the daemon
        // died: let it read this pid before the old one is back.
        let written = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| SystemTime::now());
        let age = written.elapsed().unwrap_or_default();
        if let Some(wait) = Duration::from_millis(300).checked_sub(age) {
            std::thread::sleep(wait);
        }
        let old = format!("{pid_file}.old");
        let _ = if Path::new(&old).exists() {
            std::fs::rename(&old, path)
        } else {
            std::fs::remove_file(path)
        };
    });
}

/// The pid a pid file holds.
pub fn read_pid(pid_file: &str) -> Result<i32, String> {
    let text = std::fs::read_to_string(pid_file).map_err(|e| {
        format!("{pid_file}: cannot read the pid file: {e} (is the router running as a daemon?)")
    })?;
    text.trim()
        .parse()
        .map_err(|_| format!("{pid_file}: not a pid: {:?}", text.trim()))
}

/// `llm-router keys reload`: SIGHUP to the router whose pid `pid_file` holds (it re-reads
/// its keys file and reopens its access log). Refuses a pid that is not an `llm-router`
/// process: a stale pid file may name anything by now.
pub fn send_reload(pid_file: &str) -> Result<i32, String> {
    let pid = read_pid(pid_file)?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_err(|_| format!("{pid_file}: process {pid} is not running"))?;
    if comm.trim() != "llm-router" {
        return Err(format!(
            "{pid_file}: process {pid} is {:?}, not llm-router; not signalled",
            comm.trim()
        ));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|e| format!("cannot signal process {pid}: {e}"))?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_net_tcp() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4243 1\n";
        let l: Vec<_> = listeners(v4).collect();
        assert_eq!(l, [("127.0.0.1:8080".parse().unwrap(), 4242)]);
        assert_eq!(
            proc_addr("00000000000000000000000001000000:1F90"),
            Some("[::1]:8080".parse().unwrap())
        );
        assert_eq!(
            proc_addr("00000000:0050"),
            Some("0.0.0.0:80".parse().unwrap())
        );
        assert_eq!(socket_inode("socket:[77]"), Some(77));
        assert_eq!(socket_inode("pipe:[77]"), None);
    }

    #[test]
    fn an_address_in_use_is_refused_unless_the_old_router_holds_it() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let free = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert_eq!(check_listen(&[free], None), Ok(()));
        let e = check_listen(&[free, addr], None).unwrap_err();
        assert!(e.contains(&addr.to_string()), "{e}");
        // This process holds it: as the router handing over, that is fine.
        let me = std::process::id() as i32;
        assert_eq!(check_listen(&[addr], Some(me)), Ok(()));
        let parent = nix::unistd::getppid().as_raw();
        assert!(check_listen(&[addr], Some(parent)).is_err());
    }

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
