//! The admission queue of one model: at most `max_in_flight` requests at its engines,
//! the rest waiting by class.
//!
//! GPU time is what tenants share, and an engine serves its own queue first come, first
//! served: a flood of batch requests sent straight to the engines puts an interactive
//! request behind all of them. Holding the excess here instead lets the router choose who
//! goes next when a place frees up:
//! - `critical` always takes the next free place;
//! - `standard` and `sheddable` share the rest by weight (4:1 by default, smooth weighted
//!   round robin, so neither starves);
//! - within a class, principals take turns, and each principal's requests keep their order;
//! - a request waits at most its class's `max_queue_wait_s`; a full queue, a predicted
//!   wait beyond that, or (for `sheddable`) every instance saturated is a 503 at once;
//! - a client that leaves while waiting leaves the queue.
//!
//! A place is handed from the request that ends straight to the next waiter, under the
//! gate's lock, so the count never overshoots and nothing is woken for nothing.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::auth::Class;
use crate::config::{ClassOptions, QueueOptions};
use crate::telemetry::metrics;

/// Queue order of the classes (index into per-class arrays and `admission.classes`).
pub fn class_index(c: Class) -> usize {
    idx(c)
}

fn idx(c: Class) -> usize {
    match c {
        Class::Critical => 0,
        Class::Standard => 1,
        Class::Sheddable => 2,
    }
}

const CLASSES: [Class; 3] = [Class::Critical, Class::Standard, Class::Sheddable];

struct Waiter {
    id: u64,
    tx: oneshot::Sender<()>,
}

/// One class's waiters: a FIFO per principal, principals in turn.
#[derive(Default)]
struct ClassQueue {
    turns: VecDeque<String>,
    by_principal: HashMap<String, VecDeque<Waiter>>,
    len: usize,
}

impl ClassQueue {
    fn push(&mut self, principal: &str, w: Waiter) {
        let q = self.by_principal.entry(principal.to_string()).or_default();
        if q.is_empty() {
            self.turns.push_back(principal.to_string());
        }
        q.push_back(w);
        self.len += 1;
    }

    /// The first waiter of the principal whose turn it is.
    fn pop(&mut self) -> Option<Waiter> {
        let p = self.turns.pop_front()?;
        let q = self.by_principal.get_mut(&p)?;
        let w = q.pop_front();
        if q.is_empty() {
            self.by_principal.remove(&p);
        } else {
            self.turns.push_back(p);
        }
        self.len -= usize::from(w.is_some());
        w
    }

    /// Takes waiter `id` of `principal` out (its client left, or it timed out).
    fn remove(&mut self, principal: &str, id: u64) -> bool {
        let Some(q) = self.by_principal.get_mut(principal) else {
            return false;
        };
        let Some(at) = q.iter().position(|w| w.id == id) else {
            return false;
        };
        q.remove(at);
        self.len -= 1;
        if q.is_empty() {
            self.by_principal.remove(principal);
            self.turns.retain(|t| t != principal);
        }
        true
    }
}

/// Places released per second, smoothed: what a waiter's wait is predicted from.
#[derive(Default)]
struct DrainRate {
    last: Option<Instant>,
    /// Mean seconds between releases (EWMA).
    gap: Option<f64>,
}

impl DrainRate {
    fn record(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let g = now.duration_since(last).as_secs_f64();
            self.gap = Some(self.gap.map_or(g, |m| 0.8 * m + 0.2 * g));
        }
        self.last = Some(now);
    }

    /// Seconds until `ahead` more places are released (`None`: not known yet).
    fn wait_for(&self, ahead: usize) -> Option<f64> {
        self.gap.map(|g| g * ahead as f64)
    }
}

struct Inner {
    in_flight: usize,
    /// Of those, requests of the other classes than `critical` (kept out of the reserve).
    rest_in_flight: usize,
    queues: [ClassQueue; 3],
    /// Smooth weighted round robin between the classes after `critical`.
    current: [i64; 3],
    next_id: u64,
    drain: DrainRate,
}

impl Inner {
    /// A place taken by a request of class index `c`.
    fn take(&mut self, c: usize) {
        self.in_flight += 1;
        if c != 0 {
            self.rest_in_flight += 1;
        }
    }

    fn waiting(&self) -> usize {
        self.queues.iter().map(|q| q.len).sum()
    }

    /// The next waiter: `critical` first, then by weight (`rest`: a place outside the
    /// critical reserve is free).
    fn next(&mut self, classes: &[ClassOptions; 3], rest: bool) -> Option<(usize, Waiter)> {
        if self.queues[0].len > 0 {
            return self.queues[0].pop().map(|w| (0, w));
        }
        if !rest {
            return None;
        }
        let open: Vec<usize> = (1..3).filter(|&c| self.queues[c].len > 0).collect();
        let total: i64 = open.iter().map(|&c| i64::from(classes[c].weight)).sum();
        for &c in &open {
            self.current[c] += i64::from(classes[c].weight);
        }
        let &pick = open
            .iter()
            .max_by_key(|&&c| (self.current[c], -(c as i64)))?;
        self.current[pick] -= total;
        self.queues[pick].pop().map(|w| (pick, w))
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds `max_waiting` already.
    Full { retry_after_s: u64 },
    /// Waited (or would wait, by the drain rate) longer than the class allows.
    Timeout { retry_after_s: u64 },
    /// Sheddable while every instance is saturated.
    Shed,
    /// The client left while waiting.
    ClientGone,
}

/// The gate of one model.
pub struct Gate {
    model: String,
    cap: Option<usize>,
    /// Places of the cap only `critical` requests may take (`admission.critical_reserve`).
    reserve: usize,
    opts: Arc<QueueOptions>,
    inner: Mutex<Inner>,
}

/// A place at the engines, given back (to the next waiter) when dropped.
pub struct Permit {
    gate: Arc<Gate>,
    critical: bool,
    waited: Option<Duration>,
}

impl Permit {
    /// How long the request waited in the queue (`None`: let in at once).
    pub fn waited(&self) -> Option<Duration> {
        self.waited
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release(self.critical);
    }
}

/// A waiter's stake: leaves the queue if dropped while waiting; gives the place on if it
/// was granted one it never took up.
struct Ticket<'a> {
    gate: &'a Arc<Gate>,
    class: usize,
    principal: &'a str,
    id: u64,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let removed = {
            let mut g = self.gate.lock();
            let r = g.queues[self.class].remove(self.principal, self.id);
            self.gate.depth(&g);
            r
        };
        if !removed && rx.try_recv().is_ok() {
            self.gate.release(self.class == 0);
        }
    }
}

impl Gate {
    /// `cap`: the model's `max_in_flight` (`None`: unlimited, nothing waits).
    pub fn new(model: &str, cap: Option<usize>, opts: Arc<QueueOptions>) -> Arc<Gate> {
        // Rounded down: a small cap (the default over-subscribes the engines by a
        // quarter) keeps all of its places for everyone.
        let reserve = cap.map_or(0, |c| {
            ((c as f64 * opts.critical_reserve).floor() as usize).min(c.saturating_sub(1))
        });
        Arc::new(Gate {
            model: model.to_string(),
            cap,
            reserve,
            opts,
            inner: Mutex::new(Inner {
                in_flight: 0,
                rest_in_flight: 0,
                queues: Default::default(),
                current: [0; 3],
                next_id: 0,
                drain: DrainRate::default(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn cap(&self) -> Option<usize> {
        self.cap
    }

    /// Places kept for `critical` requests.
    pub fn reserve(&self) -> usize {
        self.reserve
    }

    /// Requests at the engines and waiting, now.
    pub fn counts(&self) -> (usize, usize) {
        let g = self.lock();
        (g.in_flight, g.waiting())
    }

    fn depth(&self, g: &Inner) {
        for c in CLASSES {
            metrics::QUEUE_DEPTH
                .with_label_values(&[&self.model, c.label()])
                .set(g.queues[idx(c)].len as i64);
        }
    }

    fn retry_after(&self, g: &Inner) -> u64 {
        g.drain
            .wait_for(g.waiting() + 1)
            .map_or(1, |s| s.ceil().clamp(1.0, 60.0) as u64)
    }

    /// Lets a request of `class` from `principal` in, at once or after waiting its turn.
    /// `saturated`: every instance of the model is over `admission.saturation` (sheddable
    /// requests are refused then). `client_gone` resolves when the client hangs up.
    pub async fn enter(
        self: &Arc<Self>,
        class: Class,
        principal: &str,
        saturated: bool,
        client_gone: impl Future<Output = ()>,
    ) -> Result<Option<Permit>, Refused> {
        let c = idx(class);
        let co = &self.opts.classes[c];
        if saturated && co.shed_when_saturated {
            return Err(Refused::Shed);
        }
        let Some(cap) = self.cap else {
            return Ok(None);
        };
        let t0 = Instant::now();
        let (rx, id) = {
            let mut g = self.lock();
            // Critical may take the reserve; it never waits behind other classes.
            let free = if c == 0 {
                g.queues[0].len == 0 && g.in_flight < cap
            } else {
                g.waiting() == 0 && g.in_flight < cap && g.rest_in_flight < cap - self.reserve
            };
            if free {
                g.take(c);
                return Ok(self.entered(None, class));
            }
            if g.waiting() >= self.opts.max_waiting {
                return Err(Refused::Full {
                    retry_after_s: self.retry_after(&g),
                });
            }
            let ahead = g.waiting() + 1;
            if g.drain
                .wait_for(ahead)
                .is_some_and(|s| s > co.max_queue_wait.as_secs_f64())
            {
                return Err(Refused::Timeout {
                    retry_after_s: self.retry_after(&g),
                });
            }
            let (tx, rx) = oneshot::channel();
            g.next_id += 1;
            let id = g.next_id;
            g.queues[c].push(principal, Waiter { id, tx });
            self.depth(&g);
            (rx, id)
        };
        let mut ticket = Ticket {
            gate: self,
            class: c,
            principal,
            id,
            rx: Some(rx),
        };
        let granted = tokio::select! {
            r = ticket.rx.as_mut().expect("set above") => r.is_ok(),
            _ = tokio::time::sleep(co.max_queue_wait) => false,
            _ = client_gone => {
                return Err(Refused::ClientGone);
            }
        };
        if !granted {
            // Timed out: the ticket leaves the queue (or passes on a place granted just now).
            drop(ticket);
            let g = self.lock();
            return Err(Refused::Timeout {
                retry_after_s: self.retry_after(&g),
            });
        }
        ticket.rx = None;
        Ok(self.entered(Some(t0.elapsed()), class))
    }

    /// The place of a request let in (its wait observed; `None`: none).
    fn entered(self: &Arc<Self>, waited: Option<Duration>, class: Class) -> Option<Permit> {
        metrics::ADMISSION_WAIT
            .with_label_values(&[&self.model, class.label()])
            .observe(waited.unwrap_or_default().as_secs_f64());
        Some(Permit {
            gate: self.clone(),
            critical: class == Class::Critical,
            waited,
        })
    }

    /// A place is free (`critical`: of a critical request): to the next waiter whose
    /// client is still there and whose class may take it.
    fn release(&self, critical: bool) {
        let mut g = self.lock();
        g.drain.record(Instant::now());
        g.in_flight = g.in_flight.saturating_sub(1);
        if !critical {
            g.rest_in_flight = g.rest_in_flight.saturating_sub(1);
        }
        let cap = self.cap.unwrap_or(usize::MAX);
        loop {
            let rest = g.rest_in_flight < cap - self.reserve;
            match g.next(&self.opts.classes, rest) {
                Some((c, w)) => {
                    if w.tx.send(()).is_ok() {
                        g.take(c);
                        break;
                    }
                }
                None => break,
            }
        }
        self.depth(&g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;

    fn gate(cap: usize) -> Arc<Gate> {
        Gate::new("m", Some(cap), Arc::new(QueueOptions::default()))
    }

    /// Enters in the background, noting its name in `order` when let in.
    fn waiter(
        g: &Arc<Gate>,
        class: Class,
        principal: &'static str,
        order: &Arc<Mutex<Vec<&'static str>>>,
        name: &'static str,
    ) -> tokio::task::JoinHandle<Result<(), Refused>> {
        let (g, order) = (g.clone(), order.clone());
        tokio::spawn(async move {
            let e = g.enter(class, principal, false, pending()).await?;
            order.lock().unwrap().push(name);
            // The place is given back as the task ends.
            assert!(e.is_some());
            Ok(())
        })
    }

    async fn until_waiting(g: &Gate, n: usize) {
        while g.counts().1 < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn critical_goes_first_and_the_rest_share_by_weight() {
        let g = gate(1);
        let first = g
            .enter(Class::Standard, "a", false, pending())
            .await
            .unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut hs = Vec::new();
        for i in 0..5 {
            hs.push(waiter(
                &g,
                Class::Sheddable,
                "batch",
                &order,
                ["s0", "s1", "s2", "s3", "s4"][i],
            ));
            until_waiting(&g, 2 * i + 1).await;
            hs.push(waiter(
                &g,
                Class::Standard,
                "web",
                &order,
                ["t0", "t1", "t2", "t3", "t4"][i],
            ));
            until_waiting(&g, 2 * i + 2).await;
        }
        hs.push(waiter(&g, Class::Critical, "ops", &order, "c0"));
        until_waiting(&g, 11).await;
        drop(first);
        for h in hs {
            h.await.unwrap().unwrap();
        }
        let got = order.lock().unwrap().clone();
        assert_eq!(got[0], "c0", "{got:?}");
        // 4:1 between standard and sheddable while both wait; each in its own order.
        assert_eq!(&got[1..6], ["t0", "t1", "s0", "t2", "t3"], "{got:?}");
        assert_eq!(g.counts(), (0, 0));
    }

    #[tokio::test]
    async fn principals_of_a_class_take_turns() {
        let g = gate(1);
        let first = g
            .enter(Class::Standard, "x", false, pending())
            .await
            .unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut hs = Vec::new();
        for (i, (p, name)) in [
            ("a", "a0"),
            ("a", "a1"),
            ("a", "a2"),
            ("b", "b0"),
            ("b", "b1"),
        ]
        .into_iter()
        .enumerate()
        {
            hs.push(waiter(&g, Class::Standard, p, &order, name));
            until_waiting(&g, i + 1).await;
        }
        drop(first);
        for h in hs {
            h.await.unwrap().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["a0", "b0", "a1", "b1", "a2"]);
    }

    #[tokio::test]
    async fn a_client_that_leaves_frees_its_place_in_the_queue() {
        let g = gate(1);
        let first = g
            .enter(Class::Standard, "a", false, pending())
            .await
            .unwrap();
        let (gone_tx, gone_rx) = oneshot::channel::<()>();
        let g2 = g.clone();
        let leaving = tokio::spawn(async move {
            g2.enter(Class::Standard, "a", false, async {
                let _ = gone_rx.await;
            })
            .await
            .err()
        });
        until_waiting(&g, 1).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let stays = waiter(&g, Class::Standard, "b", &order, "b");
        until_waiting(&g, 2).await;
        gone_tx.send(()).unwrap();
        assert_eq!(leaving.await.unwrap(), Some(Refused::ClientGone));
        assert_eq!(g.counts(), (1, 1));
        drop(first);
        stays.await.unwrap().unwrap();
        assert_eq!(g.counts(), (0, 0));
    }

    #[tokio::test]
    async fn full_queues_timeouts_and_shedding_are_refusals() {
        let opts = QueueOptions {
            max_waiting: 1,
            ..QueueOptions::default()
        };
        let g = Gate::new("m", Some(1), Arc::new(opts));
        let _first = g
            .enter(Class::Standard, "a", false, pending())
            .await
            .unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let _w = waiter(&g, Class::Critical, "b", &order, "b");
        until_waiting(&g, 1).await;
        let full = g.enter(Class::Critical, "c", false, pending()).await.err();
        assert!(
            matches!(full, Some(Refused::Full { retry_after_s: 1 })),
            "{full:?}"
        );
        let shed = g.enter(Class::Sheddable, "c", true, pending()).await.err();
        assert_eq!(shed, Some(Refused::Shed));
        // Sheddable waits at most 5 s by default; with time paused it is exact.
        tokio::time::pause();
        let g1 = gate(1);
        let _p = g1
            .enter(Class::Standard, "a", false, pending())
            .await
            .unwrap();
        let t = g1
            .enter(Class::Sheddable, "s", false, pending())
            .await
            .err();
        assert!(matches!(t, Some(Refused::Timeout { .. })), "{t:?}");
        assert_eq!(g1.counts(), (1, 0));
    }

    #[tokio::test]
    async fn the_critical_reserve_keeps_places_for_critical_requests() {
        let opts = QueueOptions {
            critical_reserve: 0.25,
            ..QueueOptions::default()
        };
        let g = Gate::new("m", Some(4), Arc::new(opts));
        assert_eq!(g.reserve(), 1);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(
                g.enter(Class::Sheddable, "b", false, pending())
                    .await
                    .unwrap(),
            );
        }
        // The fourth place is critical's: a sheddable request waits, a critical one enters.
        let order = Arc::new(Mutex::new(Vec::new()));
        let waiting = waiter(&g, Class::Sheddable, "b", &order, "s");
        until_waiting(&g, 1).await;
        let c = g
            .enter(Class::Critical, "ops", false, pending())
            .await
            .unwrap();
        assert_eq!(g.counts(), (4, 1));
        // Critical's place, given back, stays free for critical; a sheddable one's goes on.
        drop(c);
        assert_eq!(g.counts(), (3, 1));
        held.pop();
        waiting.await.unwrap().unwrap();
        assert_eq!(*order.lock().unwrap(), ["s"]);
    }

    #[tokio::test]
    async fn no_cap_lets_everything_in() {
        let g = Gate::new("m", None, Arc::new(QueueOptions::default()));
        for _ in 0..100 {
            assert!(g
                .enter(Class::Sheddable, "a", false, pending())
                .await
                .unwrap()
                .is_none());
        }
    }
}
