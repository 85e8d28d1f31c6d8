//! Live per-instance state, shared lock-free between the proxy threads (in-flight,
//! passive failures), the scraper (engine load) and the health checker.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::select::{LoadInputs, Tier};
use crate::config::BalancerOptions;

/// Milliseconds since the process started (monotonic); 0 is reserved for "never".
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// What `/v1/router/instances` and the logs call an instance's condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Healthy,
    Cooldown,
    Down,
    Starting,
}

impl State {
    fn from_u8(v: u8) -> Option<State> {
        Some(match v {
            1 => State::Healthy,
            2 => State::Cooldown,
            3 => State::Down,
            4 => State::Starting,
            _ => return None,
        })
    }
    fn as_u8(self) -> u8 {
        match self {
            State::Healthy => 1,
            State::Cooldown => 2,
            State::Down => 3,
            State::Starting => 4,
        }
    }
}

fn f64_cell(v: f64) -> AtomicU64 {
    AtomicU64::new(v.to_bits())
}

fn load_f64(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

fn store_f64(a: &AtomicU64, v: f64) {
    a.store(v.to_bits(), Ordering::Relaxed)
}

/// Atomics only: read on every request, written by background tasks.
///
/// The fields every selection reads come first and the struct is cache-line aligned, so
/// that a scan over all of a model's instances touches one line per instance.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct InstanceStats {
    in_flight: AtomicUsize,
    cooldown_until: AtomicU64,
    /// [`now_ms`] of the last successful scrape; 0 = never.
    scraped_at: AtomicU64,
    running: AtomicU64,
    waiting: AtomicU64,
    kv_usage: AtomicU64,
    /// The last `/health` verdict (see `balance::health`); true until the first check.
    health_ok: AtomicBool,
    /// [`now_ms`] at which the check behind `health_ok` began; 0 = none yet.
    health_at: AtomicU64,
    /// The state last logged, so each change is logged once.
    logged_state: AtomicU8,
    /// Consecutive failures (passive or scrape), reset by a success.
    failures: AtomicU32,
    /// [`Process`] of a supervised engine.
    process: AtomicU8,
    tokens_per_s: AtomicU64,
}

/// Whether the engine process behind an instance can take traffic (supervised engines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// Not supervised by this router (external), or supervised and serving.
    Serving = 0,
    /// Spawned, not yet answering `GET /health` with 200.
    Starting = 1,
    /// Exited or killed; waiting to be restarted.
    Down = 2,
}

impl Default for InstanceStats {
    fn default() -> Self {
        InstanceStats {
            in_flight: AtomicUsize::new(0),
            running: f64_cell(0.0),
            waiting: f64_cell(0.0),
            kv_usage: f64_cell(0.0),
            tokens_per_s: f64_cell(0.0),
            scraped_at: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            process: AtomicU8::new(Process::Serving as u8),
            cooldown_until: AtomicU64::new(0),
            health_ok: AtomicBool::new(true),
            health_at: AtomicU64::new(0),
            logged_state: AtomicU8::new(0),
        }
    }
}

/// A consistent read of the inputs, for the selection and for display.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Snapshot {
    pub state: State,
    pub in_flight: usize,
    pub running: f64,
    pub waiting: f64,
    pub kv_usage: f64,
    pub tokens_per_s: f64,
    /// Seconds since the last successful scrape (`None`: never scraped).
    pub scrape_age_s: Option<f64>,
    pub fresh: bool,
    pub failures: u32,
    /// Milliseconds of cooldown left.
    pub cooldown_left_ms: u64,
    /// Where the selection ranks the instance (see [`InstanceStats::condition`]).
    #[serde(skip)]
    pub tier: Tier,
}

impl Snapshot {
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The engine's inputs when fresh; `None` (unknown) when stale.
    pub fn load(&self) -> Option<LoadInputs> {
        self.fresh.then_some(LoadInputs {
            waiting: self.waiting,
            running: self.running,
            kv_usage: self.kv_usage,
        })
    }
}

impl InstanceStats {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(super) fn inc_in_flight(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn dec_in_flight(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// The one derivation of an instance's condition, for display and for the selection
    /// alike: the state `/v1/router/instances` shows and the tier the choice ranks by.
    /// An engine that is starting or has exited is never chosen ([`Tier::Off`]); one
    /// whose `/health` fails is chosen last ([`Tier::Down`], fail open); cooling down
    /// next; then a healthy one, fresh metrics before stale ones.
    pub fn condition(&self, now: u64, stale_after_ms: u64) -> (State, Tier) {
        match self.process() {
            Process::Starting => return (State::Starting, Tier::Off),
            Process::Down => return (State::Down, Tier::Off),
            Process::Serving => {}
        }
        if !self.health_ok.load(Ordering::Relaxed) {
            return (State::Down, Tier::Down);
        }
        if self.cooldown_until.load(Ordering::Relaxed) > now {
            return (State::Cooldown, Tier::Cooldown);
        }
        let scraped = self.scraped_at.load(Ordering::Relaxed);
        if scraped == 0 || now.saturating_sub(scraped) > stale_after_ms {
            return (State::Healthy, Tier::Stale);
        }
        (State::Healthy, Tier::Fresh)
    }

    pub fn snapshot(&self, now: u64, stale_after: Duration) -> Snapshot {
        let scraped = self.scraped_at.load(Ordering::Relaxed);
        let age_ms = (scraped != 0).then(|| now.saturating_sub(scraped));
        let until = self.cooldown_until.load(Ordering::Relaxed);
        let (state, tier) = self.condition(now, stale_after.as_millis() as u64);
        Snapshot {
            state,
            tier,
            in_flight: self.in_flight(),
            running: load_f64(&self.running),
            waiting: load_f64(&self.waiting),
            kv_usage: load_f64(&self.kv_usage),
            tokens_per_s: load_f64(&self.tokens_per_s),
            scrape_age_s: age_ms.map(|a| a as f64 / 1000.0),
            fresh: age_ms.is_some_and(|a| a <= stale_after.as_millis() as u64),
            failures: self.failures.load(Ordering::Relaxed),
            cooldown_left_ms: until.saturating_sub(now),
        }
    }

    /// Just what the selection needs, read on every request for every instance: cheaper
    /// than a full [`Snapshot`].
    pub fn candidate_inputs(
        &self,
        now: u64,
        stale_after_ms: u64,
    ) -> (Tier, Option<LoadInputs>, usize) {
        let in_flight = self.in_flight();
        let (_, tier) = self.condition(now, stale_after_ms);
        let load = (tier == Tier::Fresh).then(|| LoadInputs {
            waiting: load_f64(&self.waiting),
            running: load_f64(&self.running),
            kv_usage: load_f64(&self.kv_usage),
        });
        (tier, load, in_flight)
    }

    /// Records a successful scrape.
    pub fn record_load(&self, load: LoadInputs, tokens_per_s: Option<f64>, now: u64) {
        store_f64(&self.running, load.running);
        store_f64(&self.waiting, load.waiting);
        store_f64(&self.kv_usage, load.kv_usage);
        if let Some(t) = tokens_per_s {
            store_f64(&self.tokens_per_s, t);
        }
        self.scraped_at.store(now, Ordering::Relaxed);
    }

    /// A failure (connect error, timeout, 5xx, stream cut, failed scrape): cooldown,
    /// doubling with each consecutive failure up to the cap. Returns the cooldown.
    pub fn record_failure(&self, opts: &BalancerOptions, now: u64) -> Duration {
        let n = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        let cd = opts.cooldown.saturating_mul(factor).min(opts.cooldown_max);
        self.cooldown_until
            .store(now + cd.as_millis() as u64, Ordering::Relaxed);
        cd
    }

    /// A success ends any cooldown and resets the doubling.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.cooldown_until.store(0, Ordering::Relaxed);
        }
    }

    pub fn set_process(&self, p: Process) {
        self.process.store(p as u8, Ordering::Relaxed);
    }

    pub fn process(&self) -> Process {
        match self.process.load(Ordering::Relaxed) {
            1 => Process::Starting,
            2 => Process::Down,
            _ => Process::Serving,
        }
    }

    pub fn set_health(&self, ok: bool) {
        self.health_ok.store(ok, Ordering::Relaxed);
    }

    /// A `/health` verdict from a check begun at `started_at`.
    pub fn set_health_checked(&self, ok: bool, started_at: u64) {
        self.health_ok.store(ok, Ordering::Relaxed);
        self.health_at.fetch_max(started_at, Ordering::Relaxed);
    }

    pub fn health_ok(&self) -> bool {
        self.health_ok.load(Ordering::Relaxed)
    }

    /// When the check behind the current verdict began ([`now_ms`]; 0: never checked).
    pub fn health_checked_at(&self) -> u64 {
        self.health_at.load(Ordering::Relaxed)
    }

    /// Returns the previous state if `state` differs from the last one logged (so the
    /// caller logs each change once); the first observation of `Healthy` is silent.
    pub fn note_state(&self, state: State) -> Option<Option<State>> {
        let prev = self.logged_state.swap(state.as_u8(), Ordering::Relaxed);
        match State::from_u8(prev) {
            Some(p) if p == state => None,
            None if state == State::Healthy => None,
            p => Some(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_doubles_caps_and_resets() {
        let opts = BalancerOptions {
            cooldown: Duration::from_secs(10),
            cooldown_max: Duration::from_secs(35),
            ..Default::default()
        };
        let s = InstanceStats::default();
        let t = 1000;
        assert_eq!(s.record_failure(&opts, t), Duration::from_secs(10));
        assert_eq!(s.snapshot(t, Duration::from_secs(3)).state, State::Cooldown);
        assert_eq!(s.record_failure(&opts, t), Duration::from_secs(20));
        assert_eq!(s.record_failure(&opts, t), Duration::from_secs(35));
        assert_eq!(
            s.snapshot(t + 35_001, Duration::from_secs(3)).state,
            State::Healthy
        );
        s.record_success();
        assert_eq!(s.record_failure(&opts, t), Duration::from_secs(10));
        s.record_success();
        assert_eq!(s.snapshot(t, Duration::from_secs(3)).state, State::Healthy);
    }

    #[test]
    fn staleness_and_tiers() {
        let s = InstanceStats::default();
        let stale = Duration::from_secs(3);
        assert_eq!(s.snapshot(5000, stale).tier(), Tier::Stale, "never scraped");
        s.record_load(LoadInputs::default(), None, 5000);
        assert_eq!(s.snapshot(7000, stale).tier(), Tier::Fresh);
        assert_eq!(s.snapshot(9000, stale).tier(), Tier::Stale);
        s.set_health(false);
        assert_eq!(s.snapshot(7000, stale).tier(), Tier::Down);
    }

    /// Display and selection read the same condition: an engine that has exited is shown
    /// down and never chosen; one whose `/health` fails is shown down and chosen last.
    #[test]
    fn display_and_selection_agree() {
        let s = InstanceStats::default();
        let stale = Duration::from_secs(3);
        let both = |s: &InstanceStats| {
            let snap = s.snapshot(5000, stale);
            let (tier, _, _) = s.candidate_inputs(5000, 3000);
            assert_eq!(snap.tier(), tier);
            (snap.state, tier)
        };
        s.record_load(LoadInputs::default(), None, 4000);
        assert_eq!(both(&s), (State::Healthy, Tier::Fresh));
        s.set_process(Process::Down);
        assert_eq!(both(&s), (State::Down, Tier::Off));
        s.set_process(Process::Starting);
        assert_eq!(both(&s), (State::Starting, Tier::Off));
        s.set_process(Process::Serving);
        s.set_health(false);
        assert_eq!(both(&s), (State::Down, Tier::Down));
        s.set_health(true);
        s.record_failure(&BalancerOptions::default(), 5000);
        assert_eq!(both(&s), (State::Cooldown, Tier::Cooldown));
    }

    #[test]
    fn state_changes_are_reported_once() {
        let s = InstanceStats::default();
        assert_eq!(s.note_state(State::Healthy), None);
        assert_eq!(s.note_state(State::Healthy), None);
        assert_eq!(s.note_state(State::Cooldown), Some(Some(State::Healthy)));
        assert_eq!(s.note_state(State::Cooldown), None);
        assert_eq!(s.note_state(State::Healthy), Some(Some(State::Cooldown)));
    }
}
