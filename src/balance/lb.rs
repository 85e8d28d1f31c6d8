//! The glue to `pingora-load-balancing`: each model is a `LoadBalancer` whose backends
//! carry their [`Instance`] in `Backend::ext` and whose selection is our score-based
//! [`ScoreSelection`].
//!
//! Boundary: the crate's own health checks are not used. Health is one verdict per
//! instance, from the poller (see [`super::health`]), and part of the ranking rather than
//! a filter: unhealthy instances are ranked last instead of refused (fail open). The
//! crate's `accept` callback is where the per-request exclusion of already tried
//! instances happens.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::Backend;

use super::select::{score, select, Candidate, Choice};
use super::stats::{now_ms, InstanceStats};
use super::Instance;
use crate::config::BalancerOptions;
use crate::hash::{mix, stable_hash};

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
