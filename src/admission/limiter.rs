//! Per-principal limits: `requests_per_minute`, `tokens_per_minute`, `tokens_per_day`
//! and `max_in_flight`, for the principal as a whole and, with `model_limits`, for one
//! model of it.
//!
//! State is kept by principal id (and model), not by key or by the loaded keys file: a
//! SIGHUP that changes a principal's limits applies them to the same counters, and a
//! rotated key shares them. Tokens are reserved at admission (an estimate, see
//! [`super::Estimate`]) and settled with the engine's `usage` when the answer ends, so a
//! principal cannot start more work at once than its minute allows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::auth::{Limits, Principal};
use crate::config::{Accounting, OnMissingUsage, TokenOptions};
use crate::http::ApiError;

use super::bucket::{go_duration, Bucket, DayCount};
use super::Estimate;

/// The counters of one principal, or of one principal × model.
#[derive(Debug, Default)]
struct State {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    day: DayCount,
    in_flight: u64,
}

impl State {
    /// Brings the buckets in line with `limits` (new, changed or removed limits).
    fn sync(&mut self, limits: &Limits, now: Instant) {
        sync_bucket(&mut self.requests, limits.requests_per_minute, now);
        sync_bucket(&mut self.tokens, limits.tokens_per_minute, now);
    }
}

fn sync_bucket(b: &mut Option<Bucket>, limit: Option<u64>, now: Instant) {
    match (b.as_mut(), limit) {
        (Some(b), Some(l)) if b.capacity() != l => b.set_per_minute(l, now),
        (Some(_), Some(_)) => {}
        (None, Some(l)) => *b = Some(Bucket::per_minute(l, now)),
        (_, None) => *b = None,
    }
}

type Shared = Arc<Mutex<State>>;

/// One scope a request is counted in: its limits and its counters.
struct Scope<'a> {
    limits: Limits,
    state: Shared,
    principal: &'a str,
    /// For a `model_limits` scope.
    model: Option<&'a str>,
}

impl Scope<'_> {
    /// `key `vision-batch`` or `key `vision-batch` on model `m``, for messages (built
    /// only for a refusal).
    fn name(&self) -> String {
        match self.model {
            None => format!("key `{}`", self.principal),
            Some(m) => format!("key `{}` on model `{m}`", self.principal),
        }
    }
}

/// Why a request was refused: the audit reason and the answer.
#[derive(Debug)]
pub struct Refusal {
    /// `rpm`, `tpm`, `tpd`, `in_flight` or `too_large`.
    pub reason: &'static str,
    pub error: ApiError,
}

/// Rate-limit headers (`x-ratelimit-*`) for the limits a principal has.
pub type RateHeaders = Vec<(&'static str, String)>;

/// An admitted request: holds its in-flight places and its token reservation until
/// [`Admitted::settle`] (or drop, which settles at the reservation).
pub struct Admitted {
    scopes: Vec<Shared>,
    estimate: Estimate,
    reserved: u64,
    on_missing: OnMissingUsage,
    settled: bool,
    /// The `x-ratelimit-*` headers after this admission.
    pub headers: RateHeaders,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("estimate", &self.estimate)
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

/// What a request was charged when it was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charged {
    pub used: u64,
    /// The engine reported no usage: `used` follows `admission.tokens.on_missing_usage`.
    pub estimated: bool,
    /// Tokens reserved at admission.
    pub reserved: u64,
}

impl Admitted {
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Settles with the answer's `usage` (total tokens as the engine reported them,
    /// `None` when it did not): see [`super::charge`] for the rule.
    pub fn charge(self, usage: Option<u64>, events: u64, answered: bool) -> Charged {
        let (used, estimated) =
            super::charge(self.on_missing, &self.estimate, usage, events, answered);
        let reserved = self.reserved;
        self.settle(used);
        Charged {
            used,
            estimated,
            reserved,
        }
    }

    /// Charges `used` tokens instead of the reservation: the difference goes back to
    /// (or, if more was used, is taken from) each token bucket, and `used` is added to
    /// the day's count.
    pub fn settle(mut self, used: u64) {
        self.finish(used);
    }

    fn finish(&mut self, used: u64) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let now = Instant::now();
        let day = utc_day();
        for s in &self.scopes {
            let mut st = lock(s);
            st.in_flight = st.in_flight.saturating_sub(1);
            if let Some(b) = st.tokens.as_mut() {
                b.give(self.reserved as f64 - used as f64, now);
            }
            st.day.add(used, day);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let r = self.reserved;
        self.finish(r);
    }
}

/// The limiter of all principals.
#[derive(Default)]
pub struct Limiter {
    /// Per principal id: its own counters and those of its `model_limits` models.
    states: Mutex<HashMap<String, PrincipalStates>>,
    opts: TokenOptions,
}

#[derive(Default)]
struct PrincipalStates {
    own: Shared,
    models: HashMap<String, Shared>,
}

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Days since 1970-01-01, UTC.
fn utc_day() -> i64 {
    chrono::Utc::now().timestamp().div_euclid(86_400)
}

/// Time until the next 00:00 UTC.
fn until_midnight() -> Duration {
    let secs = chrono::Utc::now().timestamp().rem_euclid(86_400);
    Duration::from_secs((86_400 - secs) as u64)
}

impl Limiter {
    pub fn new(opts: TokenOptions) -> Self {
        Limiter {
            states: Mutex::default(),
            opts,
        }
    }

    pub fn options(&self) -> &TokenOptions {
        &self.opts
    }

    /// The counters of `principal` (and `model`); allocates only the first time.
    fn state(&self, principal: &str, model: Option<&str>) -> Shared {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if !states.contains_key(principal) {
            states.insert(principal.to_string(), PrincipalStates::default());
        }
        let ps = states.get_mut(principal).expect("inserted above");
        let Some(m) = model else {
            return ps.own.clone();
        };
        if let Some(s) = ps.models.get(m) {
            return s.clone();
        }
        ps.models.entry(m.to_string()).or_default().clone()
    }

    /// The scopes a request of `p` for `model` is counted in: the principal, then the
    /// principal × model when `model_limits` names it.
    fn scopes<'a>(&self, p: &'a Principal, model: Option<&str>) -> Vec<Scope<'a>> {
        let mut out = vec![Scope {
            limits: p.limits,
            state: self.state(&p.id, None),
            principal: &p.id,
            model: None,
        }];
        if let Some((m, l)) = model.and_then(|m| p.model_limits.get_key_value(m)) {
            out.push(Scope {
                limits: *l,
                state: self.state(&p.id, Some(m)),
                principal: &p.id,
                model: Some(m),
            });
        }
        out
    }

    /// Admits one request of `p` for `model` that may use `est` tokens, or says why not.
    pub fn admit(
        &self,
        p: &Principal,
        model: &str,
        est: &Estimate,
    ) -> Result<Admitted, Box<Refusal>> {
        let now = Instant::now();
        let day = utc_day();
        let scopes = self.scopes(p, Some(model));
        let reserve = match self.opts.accounting {
            Accounting::Reserve => est.total(),
            Accounting::After => 0,
        };
        // Every scope is checked before any is charged; locked in one order (principal,
        // then model), so two requests never wait on each other's locks.
        let mut locked: Vec<MutexGuard<'_, State>> =
            scopes.iter().map(|s| lock(&s.state)).collect();
        for (s, st) in scopes.iter().zip(locked.iter_mut()) {
            st.sync(&s.limits, now);
            check(s, st, reserve, day, now)?;
        }
        for st in locked.iter_mut() {
            if let Some(b) = st.requests.as_mut() {
                b.take(1.0);
            }
            if let Some(b) = st.tokens.as_mut() {
                b.take(reserve as f64);
            }
            st.in_flight += 1;
        }
        let headers = headers(&mut locked, now);
        drop(locked);
        Ok(Admitted {
            scopes: scopes.into_iter().map(|s| s.state).collect(),
            estimate: *est,
            reserved: reserve,
            on_missing: self.opts.on_missing_usage,
            settled: false,
            headers,
        })
    }

    /// The `x-ratelimit-*` headers of `p` now, without charging anything (answers that
    /// are not counted, such as `/v1/models`).
    pub fn peek(&self, p: &Principal) -> RateHeaders {
        if p.limits.requests_per_minute.is_none() && p.limits.tokens_per_minute.is_none() {
            return Vec::new();
        }
        let now = Instant::now();
        let scopes = self.scopes(p, None);
        let mut locked: Vec<MutexGuard<'_, State>> =
            scopes.iter().map(|s| lock(&s.state)).collect();
        for (s, st) in scopes.iter().zip(locked.iter_mut()) {
            st.sync(&s.limits, now);
        }
        headers(&mut locked, now)
    }

    /// Tokens `p` used today (UTC), for the principal as a whole.
    pub fn used_today(&self, p: &str) -> u64 {
        lock(&self.state(p, None)).day.used(utc_day())
    }

    /// Adds tokens used on an earlier run of the router (the usage ledger at start).
    pub fn restore_today(&self, p: &str, model: Option<&str>, used: u64) {
        lock(&self.state(p, model)).day.add(used, utc_day());
    }
}

/// The checks of B2.3, in order: too large for the minute, the day's quota, requests,
/// tokens, in-flight.
fn check(
    s: &Scope,
    st: &mut State,
    reserve: u64,
    day: i64,
    now: Instant,
) -> Result<(), Box<Refusal>> {
    if let Some(b) = st.tokens.as_mut() {
        if reserve > b.capacity() {
            let e = ApiError::rate_limited(
                "tokens",
                "rate_limit_exceeded",
                format!(
                    "Request too large for {} on tokens per min (TPM): Limit {}, Requested {reserve}. \
                     Lower max_tokens or send less input.",
                    s.name(),
                    b.capacity()
                ),
                None,
            )
            .with_header("x-should-retry", "false");
            return Err(Box::new(Refusal {
                reason: "too_large",
                error: e,
            }));
        }
    }
    if let Some(quota) = s.limits.tokens_per_day {
        let used = st.day.used(day);
        if used >= quota {
            let reset = until_midnight();
            return Err(Box::new(Refusal {
                reason: "tpd",
                error: ApiError::quota_exceeded(
                    format!(
                        "You exceeded the daily token quota of {}: Limit {quota}, Used {used}. \
                         It resets at 00:00 UTC (in {}).",
                        s.name(),
                        go_duration(reset)
                    ),
                    reset,
                ),
            }));
        }
    }
    if let Some(b) = st.requests.as_mut() {
        rate_check(b, 1, s, Rate::Requests, now)?;
    }
    if let Some(b) = st.tokens.as_mut() {
        rate_check(b, reserve, s, Rate::Tokens, now)?;
    }
    if let Some(cap) = s.limits.max_in_flight {
        if st.in_flight >= cap {
            let msg = format!(
                "Too many concurrent requests for {}: Limit {cap} in flight. Retry when one has finished.",
                s.name()
            );
            return Err(Box::new(Refusal {
                reason: "in_flight",
                error: ApiError::rate_limited(
                    "requests",
                    "concurrency_limit_exceeded",
                    msg,
                    Some(Duration::from_secs(1)),
                ),
            }));
        }
    }
    Ok(())
}

/// The two per-minute limits.
#[derive(Clone, Copy)]
enum Rate {
    Requests,
    Tokens,
}

/// 429 unless bucket `b` of scope `s` holds `n` now.
fn rate_check(
    b: &mut Bucket,
    n: u64,
    s: &Scope,
    rate: Rate,
    now: Instant,
) -> Result<(), Box<Refusal>> {
    let Err(wait) = b.check(n as f64, now) else {
        return Ok(());
    };
    let (reason, kind, what) = match rate {
        Rate::Requests => ("rpm", "requests", "requests per min (RPM)"),
        Rate::Tokens => ("tpm", "tokens", "tokens per min (TPM)"),
    };
    let msg = format!(
        "Rate limit reached for {} on {what}: Limit {}, Used {}, Requested {n}. Please try again in {}.",
        s.name(),
        b.capacity(),
        b.used(now),
        go_duration(wait)
    );
    Err(Box::new(Refusal {
        reason,
        error: ApiError::rate_limited(kind, "rate_limit_exceeded", msg, Some(wait)),
    }))
}

/// The bucket of one kind (requests, tokens) of a state.
type BucketOf = fn(&mut State) -> Option<&mut Bucket>;

/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`: of each kind, the scope with
/// the least remaining (the one that will refuse first).
fn headers(locked: &mut [MutexGuard<'_, State>], now: Instant) -> RateHeaders {
    let mut out = Vec::new();
    let kinds: [(BucketOf, [&'static str; 3]); 2] = [
        (
            |s| s.requests.as_mut(),
            [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
        ),
        (
            |s| s.tokens.as_mut(),
            [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ],
        ),
    ];
    for (get, names) in kinds {
        let tightest = locked
            .iter_mut()
            .filter_map(|st| get(st))
            .map(|b| (b.remaining(now), b.capacity(), b.until_full(now)))
            .min_by_key(|(remaining, _, _)| *remaining);
        if let Some((remaining, limit, reset)) = tightest {
            out.push((names[0], limit.to_string()));
            out.push((names[1], remaining.to_string()));
            out.push((names[2], go_duration(reset)));
        }
    }
    out
}
