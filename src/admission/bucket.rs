//! The token bucket behind `requests_per_minute` and `tokens_per_minute`, and the UTC
//! day counter behind `tokens_per_day`.
//!
//! A bucket holds up to `capacity` units and refills `capacity / 60` per second, so a
//! principal may spend its whole minute at once and then one sixtieth per second. Its
//! level may go below zero: a request whose settled usage exceeded what was reserved
//! leaves a debt that the next admissions wait out. Time is passed in (`now`), so the
//! arithmetic is tested exactly without a clock.

use std::time::{Duration, Instant};

/// A bucket refilled continuously at `capacity` per minute.
#[derive(Debug, Clone)]
pub struct Bucket {
    capacity: f64,
    per_sec: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket of `per_minute` units.
    pub fn per_minute(per_minute: u64, now: Instant) -> Self {
        let capacity = per_minute as f64;
        Bucket {
            capacity,
            per_sec: capacity / 60.0,
            level: capacity,
            at: now,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity as u64
    }

    /// A new limit (keys file reloaded): what was spent stays spent, so raising the
    /// limit adds the difference and lowering it never leaves more than the new capacity.
    pub fn set_per_minute(&mut self, per_minute: u64, now: Instant) {
        self.refill(now);
        let new = per_minute as f64;
        self.level = (self.level + (new - self.capacity)).min(new);
        self.capacity = new;
        self.per_sec = new / 60.0;
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + dt * self.per_sec).min(self.capacity);
        self.at = self.at.max(now);
    }

    /// `Ok` when `n` units are there now; else how long until they will be.
    pub fn check(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= n {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.level) / self.per_sec))
        }
    }

    /// Spends `n` units (after a successful [`Self::check`]).
    pub fn take(&mut self, n: f64) {
        self.level -= n;
    }

    /// Gives back `n` units (a reservation larger than what was used), or spends more
    /// (`n` negative: a debt). Never above capacity.
    pub fn give(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.level = (self.level + n).min(self.capacity);
    }

    /// Whole units there now.
    pub fn remaining(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.level.max(0.0).floor() as u64
    }

    /// Spent so far (capacity minus level), for messages.
    pub fn used(&mut self, now: Instant) -> u64 {
        self.refill(now);
        (self.capacity - self.level).max(0.0).round() as u64
    }

    /// Time until the bucket is full again.
    pub fn until_full(&mut self, now: Instant) -> Duration {
        self.refill(now);
        Duration::from_secs_f64(((self.capacity - self.level) / self.per_sec).max(0.0))
    }
}

/// Tokens used in the current UTC day.
#[derive(Debug, Clone, Default)]
pub struct DayCount {
    /// Days since 1970-01-01 (UTC) of `used`.
    day: i64,
    used: u64,
}

impl DayCount {
    /// Used on `day` (0 if the counter is from an earlier day).
    pub fn used(&self, day: i64) -> u64 {
        if day == self.day {
            self.used
        } else {
            0
        }
    }

    pub fn add(&mut self, n: u64, day: i64) {
        if day != self.day {
            self.day = day;
            self.used = 0;
        }
        self.used = self.used.saturating_add(n);
    }
}

/// A duration as Go prints it (`850ms`, `1.3s`, `6m0s`, `1h2m3s`): the form of OpenAI's
/// `x-ratelimit-reset-*` headers, which client libraries parse.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = (ms % 60_000) as f64 / 1000.0;
    let mins = (ms / 60_000) % 60;
    let hours = ms / 3_600_000;
    // Up to three decimals, trailing zeros trimmed (Go's `1.3s`, `6m0s`).
    let s = format!("{secs:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    match (hours, mins) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_minute_can_be_spent_at_once_then_a_sixtieth_per_second() {
        let t0 = Instant::now();
        let mut b = Bucket::per_minute(60, t0);
        for _ in 0..60 {
            b.check(1.0, t0).unwrap();
            b.take(1.0);
        }
        assert_eq!(b.check(1.0, t0), Err(S));
        assert_eq!(b.remaining(t0), 0);
        assert_eq!(b.until_full(t0), 60 * S);
        b.check(1.0, t0 + S).unwrap();
        assert_eq!(b.remaining(t0 + 30 * S), 30);
    }

    #[test]
    fn refunds_are_capped_and_debts_delay_the_next_admission() {
        let t0 = Instant::now();
        let mut b = Bucket::per_minute(600, t0);
        b.take(500.0);
        b.give(10_000.0, t0);
        assert_eq!(b.remaining(t0), 600);
        b.take(600.0);
        // Used 100 more than reserved: a debt of 100 tokens, 10 s at 10 tokens/s.
        b.give(-100.0, t0);
        assert_eq!(b.check(0.0, t0), Err(10 * S));
        assert_eq!(b.check(50.0, t0), Err(15 * S));
        assert!(b.check(50.0, t0 + 15 * S).is_ok());
    }

    #[test]
    fn a_new_limit_keeps_what_was_spent() {
        let t0 = Instant::now();
        let mut b = Bucket::per_minute(100, t0);
        b.take(80.0);
        b.set_per_minute(200, t0);
        assert_eq!(b.remaining(t0), 120);
        b.set_per_minute(50, t0);
        assert_eq!(b.remaining(t0), 0);
        assert_eq!(b.capacity(), 50);
    }

    #[test]
    fn the_day_count_restarts_at_midnight_utc() {
        let mut d = DayCount::default();
        d.add(5, 100);
        d.add(7, 100);
        assert_eq!(d.used(100), 12);
        assert_eq!(d.used(101), 0);
        d.add(1, 101);
        assert_eq!(d.used(101), 1);
    }

    #[test]
    fn durations_print_as_go_does() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(ms(0)), "0ms");
        assert_eq!(go_duration(ms(850)), "850ms");
        assert_eq!(go_duration(ms(1300)), "1.3s");
        assert_eq!(go_duration(ms(2000)), "2s");
        assert_eq!(go_duration(ms(360_000)), "6m0s");
        assert_eq!(go_duration(ms(3_723_000)), "1h2m3s");
    }

    proptest! {
        /// Whatever is taken, given and waited, the level never exceeds capacity, and
        /// the wait a refusal names is exactly enough.
        #[test]
        fn never_over_capacity_and_waits_are_exact(
            cap in 1u64..10_000,
            ops in proptest::collection::vec((0u8..3, 0u32..20_000, 0u64..5_000), 1..50),
        ) {
            let t0 = Instant::now();
            let mut b = Bucket::per_minute(cap, t0);
            let mut now = t0;
            for (op, n, dt) in ops {
                now += Duration::from_millis(dt);
                let n = n as f64;
                match op {
                    0 => if b.check(n, now).is_ok() { b.take(n) },
                    1 => b.give(n, now),
                    _ => b.give(-n, now),
                }
                prop_assert!(b.remaining(now) <= cap);
                if n <= cap as f64 {
                    if let Err(wait) = b.check(n, now) {
                        let later = now + wait + Duration::from_millis(1);
                        prop_assert!(b.clone().check(n, later).is_ok());
                    }
                }
            }
        }
    }
}
