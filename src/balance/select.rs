//! The choice itself: pure functions over a snapshot, so they are unit- and
//! property-tested without sockets or clocks.

use crate::config::{Policy, Weights};
use crate::hash::mix;

/// How usable an instance is, best first. Lower tiers always win; within a tier the
/// policy decides. Every tier stays usable (fail open): a cooling-down instance is still
/// better than refusing the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// Healthy with fresh metrics.
    Fresh = 0,
    /// Healthy, but its metrics are stale or unknown: ranks after every fresh one.
    Stale = 1,
    /// In cooldown after a failure.
    Cooldown = 2,
    /// Its health check fails.
    Down = 3,
    /// Its supervised engine is starting or has exited: never chosen.
    Off = 4,
}

impl Tier {
    /// The name in route receipts.
    pub fn label(self) -> &'static str {
        match self {
            Tier::Fresh => "fresh",
            Tier::Stale => "stale",
            Tier::Cooldown => "cooldown",
            Tier::Down => "down",
            Tier::Off => "off",
        }
    }
}

/// One instance as the selection sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub tier: Tier,
    pub score: f64,
    /// Stable hash of the instance id, for rendezvous (session-affinity) hashing.
    pub id_hash: u64,
}

/// The engine-reported inputs of the score (from the last scrape).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoadInputs {
    pub waiting: f64,
    pub running: f64,
    /// 0..1; 0 when the engine does not report it.
    pub kv_usage: f64,
}

/// `w_waiting*waiting + w_running*running + w_kv*kv_usage + w_inflight*in_flight`.
/// Unknown (stale) engine inputs count as zero: the tier already ranks such instances
/// after fresh ones, and the router's own in-flight count is always exact.
pub fn score(w: &Weights, load: Option<LoadInputs>, in_flight: usize) -> f64 {
    let l = load.unwrap_or_default();
    w.waiting * l.waiting
        + w.running * l.running
        + w.kv_cache * l.kv_usage
        + w.in_flight * in_flight as f64
}

/// Per-request inputs of the choice besides the candidates.
#[derive(Debug, Clone, Copy)]
pub struct Choice {
    pub policy: Policy,
    /// Rotates ties (and round-robin): successive requests pass successive values.
    pub start: usize,
    /// Randomness for power-of-two (any value; the function stays deterministic).
    pub random: u64,
    /// Session-affinity key hash, when the request has a key.
    pub affinity: Option<u64>,
    pub affinity_max_score: f64,
}

/// Index of the chosen candidate among those not `excluded` (already tried for this
/// request), or `None` when every one is excluded.
pub fn select(cands: &[Candidate], excluded: &[bool], c: &Choice) -> Option<usize> {
    let n = cands.len();
    let usable =
        |i: usize| !excluded.get(i).copied().unwrap_or(false) && cands[i].tier != Tier::Off;
    // Indices in rotated order, so equal candidates take turns (two ranges: no modulo
    // per element, this runs over every instance on every request).
    let first = c.start % n.max(1);
    let rotated = move || (first..n).chain(0..first);
    // Lowest (tier, score), first in rotated order on ties: one tight pass, the hot path.
    let least = || {
        let mut best: Option<(usize, Tier, f64)> = None;
        for range in [first..n, 0..first] {
            for i in range {
                let x = &cands[i];
                let better = match best {
                    None => true,
                    Some((_, t, s)) => x.tier < t || (x.tier == t && x.score < s),
                };
                if better && usable(i) {
                    best = Some((i, x.tier, x.score));
                }
            }
        }
        best.map(|b| b.0)
    };
    match (c.policy, c.affinity) {
        (Policy::LeastLoad, _) | (Policy::SessionAffinity, None) => return least(),
        (Policy::SessionAffinity, Some(key)) => {
            // Rendezvous hashing over the healthy candidates: a key stays on its
            // instance, and moves to a stable second choice when that one fails.
            let mut preferred: Option<(usize, u64)> = None;
            for (i, x) in cands.iter().enumerate() {
                if x.tier <= Tier::Stale && usable(i) {
                    let h = mix(key ^ x.id_hash);
                    if preferred.is_none_or(|(_, best)| h > best) {
                        preferred = Some((i, h));
                    }
                }
            }
            return match preferred {
                Some((i, _)) if cands[i].score <= c.affinity_max_score => Some(i),
                _ => least(),
            };
        }
        _ => {}
    }
    let best_tier = (0..n).filter(|&i| usable(i)).map(|i| cands[i].tier).min()?;
    let in_tier = |i: usize| usable(i) && cands[i].tier == best_tier;
    match c.policy {
        Policy::RoundRobin => rotated().find(|&i| in_tier(i)),
        Policy::PowerOfTwo => {
            let pool: Vec<usize> = (0..n).filter(|&i| in_tier(i)).collect();
            if pool.len() <= 2 {
                return least();
            }
            let a = (c.random % pool.len() as u64) as usize;
            let mut b = ((c.random / pool.len() as u64) % (pool.len() as u64 - 1)) as usize;
            if b >= a {
                b += 1;
            }
            let (a, b) = (pool[a], pool[b]);
            Some(if cands[b].score < cands[a].score {
                b
            } else {
                a
            })
        }
        Policy::LeastLoad | Policy::SessionAffinity => least(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::stable_hash;
    use proptest::prelude::*;

    fn cand(tier: Tier, score: f64, id: &str) -> Candidate {
        Candidate {
            tier,
            score,
            id_hash: stable_hash(id.as_bytes()),
        }
    }

    fn choice(policy: Policy) -> Choice {
        Choice {
            policy,
            start: 0,
            random: 7,
            affinity: None,
            affinity_max_score: 100.0,
        }
    }

    #[test]
    fn score_formula_and_defaults() {
        let w = Weights::default();
        let l = LoadInputs {
            waiting: 2.0,
            running: 3.0,
            kv_usage: 0.5,
        };
        assert_eq!(
            score(&w, Some(l), 1),
            10.0 * 2.0 + 3.0 * 3.0 + 100.0 * 0.5 + 5.0
        );
        assert_eq!(score(&w, None, 2), 10.0);
    }

    #[test]
    fn least_load_prefers_lower_tier_then_lower_score() {
        let c = [
            cand(Tier::Stale, 0.0, "a"),
            cand(Tier::Fresh, 50.0, "b"),
            cand(Tier::Fresh, 20.0, "c"),
        ];
        assert_eq!(select(&c, &[false; 3], &choice(Policy::LeastLoad)), Some(2));
        // The best one tried already: next best.
        assert_eq!(
            select(&c, &[false, false, true], &choice(Policy::LeastLoad)),
            Some(1)
        );
        // Fail open: only a cooling-down and a down instance left.
        let c = [cand(Tier::Down, 0.0, "a"), cand(Tier::Cooldown, 99.0, "b")];
        assert_eq!(select(&c, &[false; 2], &choice(Policy::LeastLoad)), Some(1));
        assert_eq!(select(&c, &[true; 2], &choice(Policy::LeastLoad)), None);
    }

    #[test]
    fn ties_and_round_robin_rotate() {
        let c = [
            cand(Tier::Fresh, 1.0, "a"),
            cand(Tier::Fresh, 1.0, "b"),
            cand(Tier::Fresh, 9.0, "c"),
        ];
        let mut ch = choice(Policy::LeastLoad);
        let picks: Vec<_> = (0..4)
            .map(|s| {
                ch.start = s;
                select(&c, &[false; 3], &ch).unwrap()
            })
            .collect();
        assert_eq!(picks, [0, 1, 0, 0]);
        let mut ch = choice(Policy::RoundRobin);
        let picks: Vec<_> = (0..3)
            .map(|s| {
                ch.start = s;
                select(&c, &[false; 3], &ch).unwrap()
            })
            .collect();
        assert_eq!(picks, [0, 1, 2]);
    }

    #[test]
    fn session_affinity_is_sticky_and_moves_when_its_instance_fails() {
        let mut c: Vec<_> = ["i0", "i1", "i2", "i3"]
            .iter()
            .map(|id| cand(Tier::Fresh, 1.0, id))
            .collect();
        let mut ch = choice(Policy::SessionAffinity);
        ch.affinity = Some(stable_hash(b"conversation-42"));
        let first = select(&c, &[false; 4], &ch).unwrap();
        for s in 0..20 {
            ch.start = s;
            c.iter_mut()
                .enumerate()
                .for_each(|(i, x)| x.score = (i * s % 7) as f64);
            assert_eq!(
                select(&c, &[false; 4], &ch),
                Some(first),
                "sticky whatever the load"
            );
        }
        c[first].tier = Tier::Cooldown;
        let second = select(&c, &[false; 4], &ch).unwrap();
        assert_ne!(second, first);
        for s in 0..5 {
            ch.start = s;
            assert_eq!(
                select(&c, &[false; 4], &ch),
                Some(second),
                "moves to a stable second choice"
            );
        }
        // Too loaded: least-load instead.
        c[first].tier = Tier::Fresh;
        c[first].score = 1000.0;
        assert_ne!(select(&c, &[false; 4], &ch), Some(first));
    }

    proptest! {
        #[test]
        fn any_policy_picks_a_usable_candidate_of_the_best_tier(
            raw in proptest::collection::vec((0u8..5, 0.0f64..100.0, any::<bool>()), 0..12),
            start in any::<usize>(), random in any::<u64>(), key in proptest::option::of(any::<u64>()),
            policy in prop_oneof![Just(Policy::LeastLoad), Just(Policy::RoundRobin), Just(Policy::PowerOfTwo), Just(Policy::SessionAffinity)],
        ) {
            let tiers = [Tier::Fresh, Tier::Stale, Tier::Cooldown, Tier::Down, Tier::Off];
            let cands: Vec<_> = raw.iter().enumerate()
                .map(|(i, (t, s, _))| Candidate { tier: tiers[*t as usize], score: *s, id_hash: i as u64 })
                .collect();
            let excluded: Vec<bool> = raw.iter().map(|r| r.2).collect();
            let ch = Choice { policy, start, random, affinity: key, affinity_max_score: 50.0 };
            match select(&cands, &excluded, &ch) {
                None => prop_assert!(excluded.iter().zip(&cands).all(|(e, c)| *e || c.tier == Tier::Off)),
                Some(i) => {
                    prop_assert!(!excluded[i]);
                    prop_assert!(cands[i].tier != Tier::Off);
                    let best = cands.iter().zip(&excluded).filter(|(c, e)| !**e && c.tier != Tier::Off).map(|(c, _)| c.tier).min().unwrap();
                    // Affinity may keep a key on a healthy instance with stale metrics.
                    let affine_ok = policy == Policy::SessionAffinity && cands[i].tier <= Tier::Stale;
                    prop_assert!(cands[i].tier == best || affine_ok);
                    if policy == Policy::LeastLoad {
                        let min = cands.iter().zip(&excluded).filter(|(c, e)| !**e && c.tier == best)
                            .map(|(c, _)| c.score).fold(f64::INFINITY, f64::min);
                        prop_assert_eq!(cands[i].score, min);
                    }
                }
            }
        }
    }
}
