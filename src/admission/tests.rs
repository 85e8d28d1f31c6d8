use std::sync::Arc;

use super::*;
use crate::auth::{Keys, Principal};
use crate::config::{Accounting, TokenOptions};

/// The principal `p` of a keys file whose principal entry has `limits` (YAML flow map)
/// and optionally `model_limits`.
fn principal(limits: &str, model_limits: &str) -> Arc<Principal> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.yaml");
    let text = format!(
        "version: 1\nprincipals:\n  - id: p\n    limits: {limits}\n    model_limits: {model_limits}\n"
    );
    std::fs::write(&path, text).unwrap();
    let (keys, _) = Keys::load(&path, &["m", "other"]).unwrap();
    keys.principal("p").unwrap().clone()
}

fn est(prompt: u64, completion: u64) -> Estimate {
    Estimate { prompt, completion }
}

fn header<'a>(h: &'a RateHeaders, name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
}

#[test]
fn requests_per_minute_refuses_the_next_and_says_when() {
    let l = Limiter::default();
    let p = principal("{requests_per_minute: 3}", "{}");
    for left in [2, 1, 0] {
        let a = l.admit(&p, "m", &est(1, 0)).unwrap();
        assert_eq!(
            header(&a.headers, "x-ratelimit-remaining-requests"),
            Some(&*left.to_string())
        );
        assert_eq!(header(&a.headers, "x-ratelimit-limit-requests"), Some("3"));
        assert!(header(&a.headers, "x-ratelimit-limit-tokens").is_none());
    }
    let r = l.admit(&p, "m", &est(1, 0)).err().unwrap();
    assert_eq!(r.reason, "rpm");
    assert_eq!(
        (r.error.status.as_u16(), r.error.kind, r.error.code),
        (429, "requests", "rate_limit_exceeded")
    );
    // 3 per minute: one back every 20 s.
    let secs = r.error.retry_after.unwrap();
    assert!((19..=20).contains(&secs), "{secs}");
    let ms: u64 = header(&r.error.headers, "retry-after-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!((19_000..=20_000).contains(&ms), "{ms}");
    assert!(
        r.error.message.contains("key `p`") && r.error.message.contains("Limit 3"),
        "{}",
        r.error.message
    );
}

#[test]
fn tokens_are_reserved_then_settled_with_what_was_used() {
    let l = Limiter::default();
    let p = principal("{tokens_per_minute: 1000}", "{}");
    let a = l.admit(&p, "m", &est(100, 500)).unwrap();
    assert_eq!(a.reserved(), 600);
    assert_eq!(
        header(&a.headers, "x-ratelimit-remaining-tokens"),
        Some("400")
    );
    // A second 600 does not fit while the first is reserved...
    let r = l.admit(&p, "m", &est(100, 500)).err().unwrap();
    assert_eq!((r.reason, r.error.kind), ("tpm", "tokens"));
    // ...and does once the first settled at 150 tokens.
    a.settle(150);
    let b = l.admit(&p, "m", &est(100, 500)).unwrap();
    assert_eq!(
        header(&b.headers, "x-ratelimit-remaining-tokens"),
        Some("250")
    );
    assert_eq!(l.used_today("p"), 150);
}

#[test]
fn a_request_larger_than_the_minute_will_never_fit() {
    let l = Limiter::default();
    let p = principal("{tokens_per_minute: 100}", "{}");
    let r = l.admit(&p, "m", &est(50, 51)).err().unwrap();
    assert_eq!(r.reason, "too_large");
    assert_eq!(header(&r.error.headers, "x-should-retry"), Some("false"));
    assert!(r.error.retry_after.is_none());
    // Charged after the fact, the same request is admitted.
    let after = Limiter::new(TokenOptions {
        accounting: Accounting::After,
        ..TokenOptions::default()
    });
    let a = after.admit(&p, "m", &est(50, 51)).unwrap();
    a.settle(101);
    // The debt of the overshoot: nothing more this minute.
    assert_eq!(
        after.admit(&p, "m", &est(1, 0)).err().unwrap().reason,
        "tpm"
    );
}

#[test]
fn in_flight_places_come_back_when_the_request_ends() {
    let l = Limiter::default();
    let p = principal("{max_in_flight: 2}", "{}");
    let a = l.admit(&p, "m", &est(1, 0)).unwrap();
    let b = l.admit(&p, "m", &est(1, 0)).unwrap();
    let r = l.admit(&p, "m", &est(1, 0)).err().unwrap();
    assert_eq!(
        (r.reason, r.error.code, r.error.retry_after),
        ("in_flight", "concurrency_limit_exceeded", Some(1))
    );
    drop(a);
    let c = l.admit(&p, "m", &est(1, 0)).unwrap();
    b.settle(0);
    c.settle(0);
    l.admit(&p, "m", &est(1, 0)).unwrap();
}

#[test]
fn the_daily_quota_counts_settled_tokens_and_refuses_once_used() {
    let l = Limiter::default();
    let p = principal("{tokens_per_day: 100}", "{}");
    l.admit(&p, "m", &est(10, 0)).unwrap().settle(60);
    // Used 60 < 100: admitted even though it may go over; refused once used >= quota.
    l.admit(&p, "m", &est(10, 0)).unwrap().settle(60);
    let r = l.admit(&p, "m", &est(1, 0)).err().unwrap();
    assert_eq!(r.reason, "tpd");
    assert_eq!(
        (r.error.status.as_u16(), r.error.kind, r.error.code),
        (429, "insufficient_quota", "insufficient_quota")
    );
    assert_eq!(header(&r.error.headers, "x-should-retry"), Some("false"));
    // Restored from the ledger on another limiter (a restart): refused there too.
    let l2 = Limiter::default();
    l2.restore_today("p", None, 120);
    assert_eq!(l2.admit(&p, "m", &est(1, 0)).err().unwrap().reason, "tpd");
}

#[test]
fn model_limits_count_within_the_principal() {
    let l = Limiter::default();
    let p = principal("{max_in_flight: 3}", "{m: {max_in_flight: 1}}");
    let a = l.admit(&p, "m", &est(1, 0)).unwrap();
    let r = l.admit(&p, "m", &est(1, 0)).err().unwrap();
    assert!(
        r.error.message.contains("on model `m`"),
        "{}",
        r.error.message
    );
    // Another model still has the principal's room, and uses it.
    let _b = l.admit(&p, "other", &est(1, 0)).unwrap();
    let _c = l.admit(&p, "other", &est(1, 0)).unwrap();
    assert!(l.admit(&p, "other", &est(1, 0)).is_err());
    drop(a);
}

#[test]
fn counters_belong_to_the_principal_id_across_reloads() {
    let l = Limiter::default();
    let before = principal("{requests_per_minute: 2}", "{}");
    l.admit(&before, "m", &est(1, 0)).unwrap();
    l.admit(&before, "m", &est(1, 0)).unwrap();
    // The keys file reloaded: a new `Principal` with the same id, limit raised to 3.
    let after = principal("{requests_per_minute: 3}", "{}");
    let a = l.admit(&after, "m", &est(1, 0)).unwrap();
    assert_eq!(
        header(&a.headers, "x-ratelimit-remaining-requests"),
        Some("0")
    );
    assert_eq!(
        l.admit(&after, "m", &est(1, 0)).err().unwrap().reason,
        "rpm"
    );
    // Limits removed: admitted, no headers.
    let free = principal("{}", "{}");
    assert!(l.admit(&free, "m", &est(1, 0)).unwrap().headers.is_empty());
}

#[test]
fn peek_reports_without_charging() {
    let l = Limiter::default();
    let p = principal("{requests_per_minute: 5, tokens_per_minute: 50}", "{}");
    for _ in 0..3 {
        let h = l.peek(&p);
        assert_eq!(header(&h, "x-ratelimit-remaining-requests"), Some("5"));
        assert_eq!(header(&h, "x-ratelimit-reset-tokens"), Some("0ms"));
    }
    assert!(l.peek(&principal("{max_in_flight: 1}", "{}")).is_empty());
}

#[test]
fn the_estimate_reserves_max_tokens_per_choice_and_caps_it() {
    let opts = TokenOptions::default();
    let asked = Asked {
        body_bytes: 10,
        max_tokens: Some(100),
        n: 2,
        generation: true,
    };
    assert_eq!(estimate(&opts, &asked, None).unwrap(), est(4, 200));
    let none = Asked {
        max_tokens: None,
        ..asked
    };
    assert_eq!(
        estimate(&opts, &none, None).unwrap().completion,
        2 * opts.default_completion_reserve
    );
    assert_eq!(estimate(&opts, &none, Some(50)).unwrap().completion, 100);
    let e = estimate(&opts, &asked, Some(99)).unwrap_err();
    assert_eq!((e.status.as_u16(), e.param), (400, Some("max_tokens")));
    let emb = Asked {
        generation: false,
        ..asked
    };
    assert_eq!(estimate(&opts, &emb, Some(1)).unwrap(), est(4, 0));
    // Charged: usage when reported; else the prompt and one token per event; nothing
    // when no engine answered.
    let e = est(40, 100);
    assert_eq!(
        charge(opts.on_missing_usage, &e, Some(7), 3, true),
        (7, false)
    );
    assert_eq!(charge(opts.on_missing_usage, &e, None, 3, true), (43, true));
    assert_eq!(
        charge(opts.on_missing_usage, &e, None, 3, false),
        (0, false)
    );
}
