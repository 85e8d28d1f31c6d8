//! Load-aware selection end to end: the router binary, mock engines with scripted
//! `/metrics` gauges, real sockets.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{instances, wait_for, MockVllm, RouterProc};
use serde_json::{json, Value};

/// Fast polling so tests see gauge changes within a few hundred ms.
const FAST: &str = "balancer:\n  poll_interval_s: 0.1\n  cooldown_s: 1\n  cooldown_max_s: 2\n";

fn config(mocks: &[&MockVllm], extra: &str) -> String {
    let list: Vec<(String, u16)> = mocks
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("i{i}"), m.port()))
        .collect();
    let refs: Vec<(&str, u16)> = list.iter().map(|(id, p)| (id.as_str(), *p)).collect();
    format!(
        "LLM_engines:\n  m:\n    instances:\n{}    model_config:\n      model_tag: org/M\n{extra}",
        instances(&refs)
    )
}

fn chat() -> String {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

async fn send(c: &reqwest::Client, r: &RouterProc, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = c.post(r.url("/v1/chat/completions")).body(chat());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

async fn instances_view(r: &RouterProc) -> Vec<Value> {
    r.instances().await
}

/// Waits until `/v1/router/instances` satisfies `cond` (up to 5 s).
async fn wait_view(r: &RouterProc, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut last = Vec::new();
    wait_for(what, Duration::from_secs(5), async || {
        last = r.instances().await;
        cond(&last)
    })
    .await;
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_instance_gets_no_traffic_until_its_queue_drains() {
    let a = MockVllm::start("a").await;
    let b = MockVllm::start("b").await;
    let busy = MockVllm::start("busy").await;
    busy.set_gauges(4, 20, 0.9);
    let r = RouterProc::start(&config(&[&a, &busy, &b], FAST)).await;
    wait_view(&r, "busy scraped", |v| {
        v[1]["waiting"] == 20.0 && v[1]["fresh"] == true
    })
    .await;
    let c = reqwest::Client::new();
    for _ in 0..100 {
        assert_eq!(send(&c, &r, &[]).await.status(), 200);
    }
    assert_eq!(busy.requests(), 0, "the queued instance got traffic");
    assert_eq!(a.requests() + b.requests(), 100);
    assert!(
        a.requests() > 20 && b.requests() > 20,
        "a={} b={}",
        a.requests(),
        b.requests()
    );

    // Its queue drains: it is picked again.
    busy.set_gauges(0, 0, 0.0);
    wait_view(&r, "busy idle", |v| v[1]["waiting"] == 0.0).await;
    for _ in 0..30 {
        send(&c, &r, &[]).await;
    }
    assert!(busy.requests() >= 5, "busy got {} of 30", busy.requests());

    let v = instances_view(&r).await;
    assert_eq!(v[1]["id"], "i1");
    assert_eq!(v[1]["model"], "m");
    assert_eq!(v[1]["state"], "healthy");
    assert!(v[1]["url"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    for key in [
        "score",
        "running",
        "waiting",
        "kv_usage",
        "in_flight",
        "scrape_age_s",
        "tokens_per_s",
    ] {
        assert!(v[1].get(key).is_some(), "{key} missing: {}", v[1]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_slow_requests_spread_evenly_between_scrapes() {
    let mocks = [
        MockVllm::start("a").await,
        MockVllm::start("b").await,
        MockVllm::start("c").await,
    ];
    for m in &mocks {
        m.set_prefill_ms(1500);
    }
    // Slow polling: the spread must come from the router's own in-flight counts.
    let r = RouterProc::start(&config(
        &[&mocks[0], &mocks[1], &mocks[2]],
        "balancer:\n  poll_interval_s: 30\n",
    ))
    .await;
    let c = reqwest::Client::new();
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let (c, url) = (c.clone(), r.url("/v1/chat/completions"));
            tokio::spawn(async move { c.post(url).body(chat()).send().await.unwrap().status() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let counts: Vec<usize> = mocks.iter().map(|m| m.requests()).collect();
    assert_eq!(counts.iter().sum::<usize>(), 30);
    assert!(counts.iter().all(|&n| (8..=12).contains(&n)), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_cools_down_and_comes_back() {
    let a = MockVllm::start("a").await;
    let b = MockVllm::start("b").await;
    let b_port = b.port();
    let r = RouterProc::start(&config(&[&a, &b], FAST)).await;
    let c = reqwest::Client::new();
    for _ in 0..10 {
        assert_eq!(send(&c, &r, &[]).await.status(), 200);
    }
    assert!(b.requests() > 0);
    b.stop();
    drop(b);
    // No client error while it dies and after.
    for _ in 0..50 {
        assert_eq!(send(&c, &r, &[]).await.status(), 200);
    }
    let v = wait_view(&r, "b out of service", |v| v[1]["state"] != "healthy").await;
    assert!(
        v[1]["state"] == "cooldown" || v[1]["state"] == "down",
        "{}",
        v[1]
    );

    // Back on the same port: traffic again within cooldown (≤ 2 s) + one poll.
    let b2 = MockVllm::start_on(b_port, "b2").await;
    let t0 = Instant::now();
    while b2.requests() == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "no traffic to the restarted instance"
        );
        assert_eq!(send(&c, &r, &[]).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("restarted instance served again after {:?}", t0.elapsed());
    wait_view(&r, "b healthy", |v| v[1]["state"] == "healthy").await;
    let log = r.log_text();
    assert!(
        log.contains("instance state"),
        "state changes logged: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_affinity_keeps_a_key_on_one_instance_and_moves_it_on_death() {
    let mocks = [
        MockVllm::start("a").await,
        MockVllm::start("b").await,
        MockVllm::start("c").await,
    ];
    let r = RouterProc::start(&config(
        &[&mocks[0], &mocks[1], &mocks[2]],
        &format!("{FAST}  policy: session_affinity\n  affinity_key: header:x-session-id\n"),
    ))
    .await;
    let c = reqwest::Client::new();
    let served_by = |v: Value| v["system_fingerprint"].as_str().unwrap().to_string();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..50 {
        let resp = send(&c, &r, &[("x-session-id", "conv-7")]).await;
        *seen
            .entry(served_by(resp.json().await.unwrap()))
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    let home = seen.keys().next().unwrap().clone();

    // Other keys spread over the instances.
    let mut others = HashMap::<String, usize>::new();
    for k in 0..30 {
        let key = format!("other-{k}");
        let resp = send(&c, &r, &[("x-session-id", key.as_str())]).await;
        *others
            .entry(served_by(resp.json().await.unwrap()))
            .or_default() += 1;
    }
    assert!(others.len() >= 2, "{others:?}");

    // Its instance dies: the key moves, and then stays on its new instance.
    let idx = ["a", "b", "c"].iter().position(|n| *n == home).unwrap();
    mocks[idx].stop();
    let mut moved: HashMap<String, usize> = HashMap::new();
    for _ in 0..20 {
        let resp = send(&c, &r, &[("x-session-id", "conv-7")]).await;
        assert_eq!(resp.status(), 200);
        *moved
            .entry(served_by(resp.json().await.unwrap()))
            .or_default() += 1;
    }
    assert!(!moved.contains_key(&home));
    assert_eq!(
        moved.len(),
        1,
        "the key should settle on one new instance: {moved:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_load_uses_kv_cache_and_running() {
    let a = MockVllm::start("a").await;
    let b = MockVllm::start("b").await;
    // a: 3*2 + 100*0.5 = 56; b: 3*10 = 30 -> b.
    a.set_gauges(2, 0, 0.5);
    b.set_gauges(10, 0, 0.0);
    let r = RouterProc::start(&config(&[&a, &b], FAST)).await;
    wait_view(&r, "scraped", |v| {
        v[0]["fresh"] == true && v[1]["fresh"] == true && v[0]["kv_usage"] == 0.5
    })
    .await;
    let c = reqwest::Client::new();
    for _ in 0..20 {
        send(&c, &r, &[]).await;
    }
    assert_eq!((a.requests(), b.requests()), (0, 20));
    let v = instances_view(&r).await;
    assert_eq!(v[0]["score"], 56.0);
    assert_eq!(v[1]["score"], 30.0);
}
