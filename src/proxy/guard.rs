//! The connection guard: caps on open client connections (in all and per IP address) and
//! the deadlines Pingora does not have.
//!
//! Pingora 0.9.1 times out single reads only: a client that sends one header byte every
//! few seconds holds a connection (a task and a file descriptor) for as long as it likes.
//! [`ConnGuard`] wraps the whole HTTP/1 connection loop and drops the connection when no
//! request is being answered and the head of the next one has not arrived in time:
//! `header_read_s` from accept for the first request, `keepalive_idle_s + header_read_s`
//! from the end of the previous answer for later ones. The proxy marks each request on its
//! connection ([`Connections::begin`]) from `early_request_filter` until its context is
//! dropped after logging; a request being answered is bounded by the body and write
//! timeouts instead. Dropping the connection while no request is in progress cancels a
//! read of a head, with nothing sent yet: safe.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use crate::config::{ClientTimeouts, ConnectionLimits};
use crate::telemetry::metrics;

/// What the watchdog of one connection reads.
#[derive(Debug, Default)]
pub struct ConnState {
    in_flight: AtomicU32,
    served: AtomicU32,
    /// Milliseconds since [`Connections::epoch`] when the connection last became idle.
    idle_since_ms: AtomicU64,
}

/// Open connections, shared by the guard (one per listener) and the proxy.
pub struct Connections {
    limits: ConnectionLimits,
    timeouts: ClientTimeouts,
    epoch: Instant,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    by_peer: Mutex<HashMap<SocketAddr, Arc<ConnState>>>,
}

/// An admitted connection: counted until dropped.
struct Admitted<'a> {
    conns: &'a Connections,
    peer: Option<SocketAddr>,
    state: Arc<ConnState>,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.conns.total.fetch_sub(1, Ordering::SeqCst);
        metrics::CONNECTIONS.dec();
        let Some(peer) = self.peer else { return };
        if let Ok(mut m) = self.conns.per_ip.lock() {
            if let Some(n) = m.get_mut(&peer.ip()) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&peer.ip());
                }
            }
        }
        if let Ok(mut m) = self.conns.by_peer.lock() {
            m.remove(&peer);
        }
    }
}

/// One request on a connection, from its head to the end of its logging.
pub struct OnConnection {
    state: Arc<ConnState>,
    epoch: Instant,
}

impl Drop for OnConnection {
    fn drop(&mut self) {
        let s = &self.state;
        s.idle_since_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
        s.served.fetch_add(1, Ordering::SeqCst);
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Connections {
    pub fn new(limits: ConnectionLimits, timeouts: ClientTimeouts) -> Arc<Self> {
        Arc::new(Connections {
            limits,
            timeouts,
            epoch: Instant::now(),
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            by_peer: Mutex::new(HashMap::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Counts a new connection, or refuses it (the caps are full: `None`).
    fn admit(&self, peer: Option<SocketAddr>) -> Option<Admitted<'_>> {
        let refuse = |reason: &str| {
            metrics::CONNECTIONS_REFUSED
                .with_label_values(&[reason])
                .inc();
            None
        };
        if self.total.fetch_add(1, Ordering::SeqCst) >= self.limits.max_total {
            self.total.fetch_sub(1, Ordering::SeqCst);
            return refuse("max_total");
        }
        if let Some(p) = peer {
            let mut m = self.per_ip.lock().ok()?;
            let n = m.entry(p.ip()).or_insert(0);
            if *n >= self.limits.max_per_ip {
                drop(m);
                self.total.fetch_sub(1, Ordering::SeqCst);
                return refuse("max_per_ip");
            }
            *n += 1;
        }
        metrics::CONNECTIONS.inc();
        let state = Arc::new(ConnState::default());
        state.idle_since_ms.store(self.now_ms(), Ordering::SeqCst);
        if let (Some(p), Ok(mut m)) = (peer, self.by_peer.lock()) {
            m.insert(p, state.clone());
        }
        Some(Admitted {
            conns: self,
            peer,
            state,
        })
    }

    /// Marks a request as being answered on the connection from `peer` (none for
    /// connections the guard does not see, e.g. in tests of the proxy alone).
    pub fn begin(&self, peer: Option<SocketAddr>) -> Option<OnConnection> {
        let state = self.by_peer.lock().ok()?.get(&peer?)?.clone();
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(OnConnection {
            state,
            epoch: self.epoch,
        })
    }

    /// Resolves when the connection has waited too long for a request head.
    async fn watchdog(&self, state: &ConnState) {
        let t = self.timeouts;
        loop {
            if state.in_flight.load(Ordering::SeqCst) > 0 {
                // Being answered: the body and write timeouts bound it.
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            let limit = if state.served.load(Ordering::SeqCst) == 0 {
                t.header_read
            } else {
                t.keepalive_idle + t.header_read
            };
            let deadline = state.idle_since_ms.load(Ordering::SeqCst) + limit.as_millis() as u64;
            let now = self.now_ms();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(deadline - now)).await;
        }
    }
}

/// The proxy app behind the caps and the head deadline.
pub struct ConnGuard<A> {
    inner: Arc<A>,
    conns: Arc<Connections>,
}

impl<A> ConnGuard<A> {
    pub fn new(inner: A, conns: Arc<Connections>) -> Self {
        ConnGuard {
            inner: Arc::new(inner),
            conns,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnGuard<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        // Refused: dropping the stream closes it at once.
        let admitted = self.conns.admit(peer)?;
        let state = admitted.state.clone();
        tokio::select! {
            r = self.inner.process_new(stream, shutdown) => r,
            _ = self.conns.watchdog(&state) => {
                metrics::CONNECTIONS_CLOSED.with_label_values(&["header_timeout"]).inc();
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_in_all_and_per_ip_and_free_on_drop() {
        let c = Connections::new(
            ConnectionLimits {
                max_total: 3,
                max_per_ip: 2,
            },
            ClientTimeouts::default(),
        );
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let a2: SocketAddr = "10.0.0.1:2".parse().unwrap();
        let a3: SocketAddr = "10.0.0.1:3".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1".parse().unwrap();
        let b2: SocketAddr = "10.0.0.2:2".parse().unwrap();
        let one = c.admit(Some(a)).unwrap();
        let _two = c.admit(Some(a2)).unwrap();
        assert!(c.admit(Some(a3)).is_none(), "third from one IP");
        let _three = c.admit(Some(b)).unwrap();
        assert!(c.admit(Some(b2)).is_none(), "fourth in all");
        drop(one);
        assert!(c.begin(Some(a)).is_none(), "gone from the peer table");
        let again = c.admit(Some(a3)).unwrap();
        let req = c.begin(Some(a3)).unwrap();
        assert_eq!(again.state.in_flight.load(Ordering::SeqCst), 1);
        drop(req);
        assert_eq!(again.state.in_flight.load(Ordering::SeqCst), 0);
        assert_eq!(again.state.served.load(Ordering::SeqCst), 1);
    }
}
