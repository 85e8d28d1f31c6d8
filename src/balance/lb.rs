//! The glue to `pingora-load-balancing`: each model is a `LoadBalancer` whose backends
//! carry their [`Instance`] in `Backend::ext`, whose selection is our score-based
//! [`ScoreSelection`], and whose health checks are the crate's `HttpHealthCheck` on
//! `GET /health`.
//!
//! Boundary: the crate's health verdict is mirrored into our per-instance stats (via its
//! health-change callback) rather than used as a filter, because we rank unhealthy
//! instances last instead of refusing them (fail open), and because its `accept` callback
//! is where the per-request exclusion of already tried instances happens.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthObserve, HttpHealthCheck};
use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::Backend;
use tracing::warn;

use super::select::{mix, score, select, stable_hash, Candidate, Choice};
use super::stats::{now_ms, InstanceStats};
use super::Instance;
use crate::config::BalancerOptions;

/// A snapshot-free selector: it holds the backends in config order and reads their live
/// stats at each selection.
pub struct ScoreSelection {
    backends: Vec<Backend>,
    /// The model's contiguous stats (config order) and instance id hashes.
    stats: Arc<[InstanceStats]>,
    id_hashes: Vec<u64>,
    opts: BalancerOptions,
    cursor: AtomicUsize,
    random: AtomicU64,
}

impl BackendSelection for ScoreSelection {
    type Iter = ScoreIter;
    type Config = BalancerOptions;

    fn build_with_config(backends: &BTreeSet<Backend>, opts: &BalancerOptions) -> Self {
        let mut v: Vec<(Backend, Arc<Instance>)> = backends
            .iter()
            .filter_map(|b| b.ext.get::<Arc<Instance>>().map(|i| (b.clone(), i.clone())))
            .collect();
        v.sort_by_key(|(_, i)| i.index);
        let stats = v
            .first()
            .map(|(_, i)| i.all_stats.clone())
            .unwrap_or_else(|| Arc::from(Vec::new()));
        let id_hashes = v.iter().map(|(_, i)| i.id_hash).collect();
        let backends = v.into_iter().map(|(b, _)| b).collect();
        ScoreSelection {
            backends,
            stats,
            id_hashes,
            opts: opts.clone(),
            cursor: AtomicUsize::new(0),
            random: AtomicU64::new(0),
        }
    }

    fn build(backends: &BTreeSet<Backend>) -> Self {
        Self::build_with_config(backends, &BalancerOptions::default())
    }

    /// `key` is the session-affinity key (empty: none).
    fn iter(self: &Arc<Self>, key: &[u8]) -> ScoreIter {
        let choice = Choice {
            policy: self.opts.policy,
            start: self.cursor.fetch_add(1, Ordering::Relaxed),
            random: mix(self.random.fetch_add(1, Ordering::Relaxed)),
            affinity: (!key.is_empty()).then(|| stable_hash(key)),
            affinity_max_score: self.opts.affinity_max_score,
        };
        ScoreIter {
            sel: self.clone(),
            choice,
            cands: Vec::new(),
            excluded: Vec::new(),
        }
    }
}

/// Yields the best instance first, then the next best, ... (each at most once).
pub struct ScoreIter {
    sel: Arc<ScoreSelection>,
    choice: Choice,
    cands: Vec<Candidate>,
    excluded: Vec<bool>,
}

impl BackendIter for ScoreIter {
    fn next(&mut self) -> Option<&Backend> {
        if self.cands.is_empty() {
            let now = now_ms();
            let o = &self.sel.opts;
            let stale_ms = o.stale_after.as_millis() as u64;
            self.cands = self
                .sel
                .stats
                .iter()
                .zip(&self.sel.id_hashes)
                .map(|(st, &id_hash)| {
                    let (tier, load, in_flight) = st.candidate_inputs(now, stale_ms);
                    Candidate {
                        tier,
                        score: score(&o.weights, load, in_flight),
                        id_hash,
                    }
                })
                .collect();
            self.excluded = vec![false; self.cands.len()];
        }
        let i = select(&self.cands, &self.excluded, &self.choice)?;
        self.excluded[i] = true;
        self.sel.backends.get(i)
    }
}

/// Mirrors health-check verdicts into the instance's stats and logs each flip.
struct HealthMirror;

#[async_trait]
impl HealthObserve for HealthMirror {
    async fn observe(&self, target: &Backend, healthy: bool) {
        if let Some(i) = target.ext.get::<Arc<Instance>>() {
            i.stats().set_health(healthy);
            if !healthy {
                warn!(model = %i.model, instance = %i.id, url = %i.url, "health check failed: GET /health");
            }
            i.log_state_change(&i.snapshot());
        }
    }
}

/// `GET /health` expecting 200, over a reused connection, timing out with the scrape
/// timeout.
pub fn health_check(opts: &BalancerOptions) -> Box<HttpHealthCheck> {
    let mut hc = HttpHealthCheck::new("localhost", false);
    if let Ok(mut req) = RequestHeader::build("GET", b"/health", None) {
        let _ = req.append_header("host", "localhost");
        hc.req = req;
    }
    hc.reuse_connection = true;
    hc.peer_template.options.connection_timeout = Some(opts.scrape_timeout);
    hc.peer_template.options.read_timeout = Some(opts.scrape_timeout);
    hc.health_changed_callback = Some(Box::new(HealthMirror));
    Box::new(hc)
}
