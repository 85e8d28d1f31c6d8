//! Per-principal limits on the main port against a mock engine that reports usage:
//! requests and tokens per minute, requests in flight, the daily quota; each is hit,
//! answered as OpenAI does (429 with its headers) and recovered. Tokens are reserved at
//! admission and settled with the engine's reported usage, streams included (the usage
//! event the router asks for does not reach a client that did not).

mod common;

use std::time::Duration;

use common::{llm, wait_for, MockVllm, RouterProc};
use llm_router::auth::token;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

struct Setup {
    m: MockVllm,
    r: RouterProc,
    keys_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Keys file: `ops` (admin, no limits) and `team` with `limits` (a YAML flow map).
fn keys_yaml(ops: &str, team: &str, limits: &str) -> String {
    let h = |k: &str| token::hex(&token::digest(k));
    format!(
        "version: 1\nprincipals:\n  - id: ops\n    keys: [{{sha256: '{}'}}]\n  - id: team\n    keys: [{{sha256: '{}'}}]\n    limits: {limits}\n",
        h(ops),
        h(team)
    )
}

async fn start(ops: &str, team: &str, limits: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys.yaml");
    std::fs::write(&keys_file, keys_yaml(ops, team, limits)).unwrap();
    let m = MockVllm::start("m").await;
    let r = RouterProc::start(&config(&m, &keys_file, &dir.path().join("usage.sqlite"))).await;
    Setup {
        m,
        r,
        keys_file,
        _dir: dir,
    }
}

fn config(m: &MockVllm, keys_file: &std::path::Path, usage_db: &std::path::Path) -> String {
    format!(
        "LLM_engines:\n{}auth:\n  keys_file: \"{}\"\n  admins: [ops]\n  usage_db: \"{}\"\n",
        llm("m", "org/M", &[("m1", m.port())]),
        keys_file.display(),
        usage_db.display()
    )
}

fn keys() -> (String, String) {
    (token::new_key().unwrap(), token::new_key().unwrap())
}

fn chat(extra: Value) -> Value {
    let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

async fn post(r: &RouterProc, key: &str, body: Value) -> (u16, HeaderMap, Value) {
    let resp = reqwest::Client::new()
        .post(r.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The `data:` payloads of an event stream.
fn events(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_is_hit_answered_and_recovered() {
    let (ops, team) = keys();
    let s = start(&ops, &team, "{requests_per_minute: 30}").await;
    // Every authenticated answer carries the limits, also one that is not counted.
    let models = reqwest::Client::new()
        .get(s.r.url("/v1/models"))
        .bearer_auth(&team)
        .send()
        .await
        .unwrap();
    assert_eq!(header(models.headers(), "x-ratelimit-limit-requests"), "30");
    assert_eq!(
        header(models.headers(), "x-ratelimit-remaining-requests"),
        "30"
    );
    assert!(models.headers().get("x-ratelimit-limit-tokens").is_none());
    // The bucket refills one request per 2 s meanwhile, so a few more than 30 may pass.
    let mut admitted = 0u64;
    let (h, v) = loop {
        let (st, h, v) = post(&s.r, &team, chat(json!({}))).await;
        if st != 200 {
            assert_eq!(st, 429, "{v}");
            break (h, v);
        }
        let left: u64 = header(&h, "x-ratelimit-remaining-requests")
            .parse()
            .unwrap();
        assert!(left <= 29 - admitted.min(29) + 3, "{admitted}: {left}");
        admitted += 1;
        assert!(admitted <= 33, "never refused");
    };
    assert!(admitted >= 30, "{admitted}");
    assert_eq!(v["error"]["type"], "requests");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("requests per min (RPM): Limit 30"), "{msg}");
    assert_eq!(header(&h, "x-ratelimit-remaining-requests"), "0");
    let ms: u64 = header(&h, "retry-after-ms").parse().unwrap();
    assert!(ms > 0 && ms <= 2000, "{ms}");
    let secs: u64 = header(&h, "retry-after").parse().unwrap();
    assert_eq!(secs, ms.div_ceil(1000));
    // Waiting as told is enough; the engine never saw the refused request.
    let seen = s.m.requests();
    tokio::time::sleep(Duration::from_millis(ms + 20)).await;
    assert_eq!(post(&s.r, &team, chat(json!({}))).await.0, 200);
    assert_eq!(s.m.requests(), seen + 1);
    // The admin has no limits: no headers.
    let (st, h, _) = post(&s.r, &ops, chat(json!({}))).await;
    assert_eq!(st, 200);
    assert!(h.get("x-ratelimit-limit-requests").is_none());
}

/// Starts a stream and returns it once its first event has arrived.
async fn open_stream(r: &RouterProc, key: &str, body: Value) -> reqwest::Response {
    let mut resp = send_stream(r, key, body).await;
    assert!(!resp.chunk().await.unwrap().unwrap().is_empty());
    resp
}

async fn finish(mut resp: reqwest::Response) {
    while resp.chunk().await.unwrap().is_some() {}
}

async fn send_stream(r: &RouterProc, key: &str, body: Value) -> reqwest::Response {
    let resp = reqwest::Client::new()
        .post(r.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_in_flight_is_held_until_the_stream_ends() {
    let (ops, team) = keys();
    let s = start(&ops, &team, "{max_in_flight: 1}").await;
    s.m.set_sse(6, 150);
    let resp = open_stream(&s.r, &team, chat(json!({"stream": true}))).await;
    // The answer has started, the stream is not over: the place is still taken.
    let (st, h, v) = post(&s.r, &team, chat(json!({}))).await;
    assert_eq!(st, 429, "{v}");
    assert_eq!(v["error"]["code"], "concurrency_limit_exceeded");
    assert_eq!(v["error"]["type"], "requests");
    assert_eq!(header(&h, "retry-after"), "1");
    finish(resp).await;
    // Given back before the stream's last bytes reached us: free for the next request.
    assert_eq!(post(&s.r, &team, chat(json!({}))).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_minute_reserves_then_settles_with_the_engines_usage() {
    let (ops, team) = keys();
    let s = start(
        &ops,
        &team,
        "{tokens_per_minute: 600, max_tokens_per_request: 400}",
    )
    .await;
    // Over the per-request cap: the client's error. Larger than the minute: never fits.
    let (st, _, v) = post(&s.r, &team, chat(json!({"max_tokens": 401}))).await;
    assert_eq!(
        (st, v["error"]["param"].as_str()),
        (400, Some("max_tokens")),
        "{v}"
    );
    // Two slow streams reserve ~250 tokens each (max_tokens 200 + the prompt estimate).
    s.m.set_sse(6, 150);
    let body = chat(json!({"stream": true, "max_tokens": 200}));
    let a = open_stream(&s.r, &team, body.clone()).await;
    let b = open_stream(&s.r, &team, body.clone()).await;
    let (st, h, v) = post(&s.r, &team, body.clone()).await;
    assert_eq!(st, 429, "{v}");
    assert_eq!(
        (v["error"]["type"].as_str(), v["error"]["code"].as_str()),
        (Some("tokens"), Some("rate_limit_exceeded"))
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tokens per min (TPM): Limit 600"),
        "{v}"
    );
    assert_eq!(header(&h, "x-ratelimit-limit-tokens"), "600");
    assert!(header(&h, "retry-after-ms").parse::<u64>().unwrap() > 0);
    finish(a).await;
    finish(b).await;
    // Settled at what the engine reported (3 + 6 tokens each) before the streams' last
    // bytes reached us: the room is back at once, not after the 500 reserved tokens
    // refilled (50 s).
    let (st, h, v) = post(&s.r, &team, chat(json!({"max_tokens": 5}))).await;
    assert_eq!(st, 200, "{v}");
    let remaining: u64 = header(&h, "x-ratelimit-remaining-tokens").parse().unwrap();
    assert!(remaining > 500, "{remaining}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_the_minute_is_refused_for_good() {
    let (ops, team) = keys();
    let s = start(&ops, &team, "{tokens_per_minute: 600}").await;
    let (st, h, v) = post(&s.r, &team, chat(json!({"max_tokens": 1000}))).await;
    assert_eq!(st, 429, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Request too large"),
        "{v}"
    );
    assert_eq!(header(&h, "x-should-retry"), "false");
    assert!(h.get("retry-after").is_none());
    assert_eq!(
        post(&s.r, &team, chat(json!({"max_tokens": 10}))).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_quota_is_charged_from_usage_streams_included_and_kept_over_a_reload() {
    let (ops, team) = keys();
    // Each answer of the mock uses 3 + 5 = 8 tokens.
    let s = start(&ops, &team, "{tokens_per_day: 20}").await;
    assert_eq!(
        post(&s.r, &team, chat(json!({"max_tokens": 100}))).await.0,
        200
    );
    // A stream whose client did not ask for usage: charged all the same, and the client
    // gets exactly the stream it asked for.
    let (st, _, v) = post(&s.r, &team, chat(json!({"stream": true}))).await;
    assert_eq!(st, 200);
    let ev = events(v.as_str().unwrap());
    assert_eq!(ev.len(), 6, "{ev:?}");
    assert!(ev.iter().all(|e| !e.contains("\"usage\"")), "{ev:?}");
    assert_eq!(ev.last().unwrap(), "[DONE]");
    assert_eq!(
        s.m.last_json()["stream_options"],
        json!({"include_usage": true})
    );
    // One that asked gets its usage event.
    let asked = chat(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let (st, _, v) = post(&s.r, &team, asked).await;
    assert_eq!(st, 200);
    let ev = events(v.as_str().unwrap());
    assert!(
        ev[ev.len() - 2].contains("\"completion_tokens\":5"),
        "{ev:?}"
    );
    // 24 used >= 20: refused, and waiting seconds will not help. Each answer was settled
    // before its last byte reached the client, so the next request (a new connection)
    // already sees the charge.
    let (st, h, v) = post(&s.r, &team, chat(json!({}))).await;
    assert_eq!(st, 429, "{v}");
    assert_eq!(v["error"]["code"], "insufficient_quota");
    assert_eq!(v["error"]["type"], "insufficient_quota");
    assert_eq!(header(&h, "x-should-retry"), "false");
    // A new quota by SIGHUP applies to the same counters: 24 < 25 admits one more.
    std::fs::write(&s.keys_file, keys_yaml(&ops, &team, "{tokens_per_day: 25}")).unwrap();
    let pid = nix::unistd::Pid::from_raw(s.r.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_for("the raised quota", Duration::from_secs(5), async || {
        post(&s.r, &team, chat(json!({}))).await.0 == 200
    })
    .await;
    assert_eq!(post(&s.r, &team, chat(json!({}))).await.0, 429);
    // Per-principal series: 4 answers of 5 completion tokens (refusals are not answers),
    // counted in the logging phase, i.e. just after the answer's end.
    settled(&s.r, &ops, 4).await;
    let page = reqwest::Client::new()
        .get(s.r.url("/metrics"))
        .bearer_auth(&ops)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(
            "llm_router_principal_tokens_total{kind=\"completion\",principal=\"team\"} 20"
        ),
        "{page}"
    );
    assert!(
        page.contains(
            "llm_router_principal_requests_total{principal=\"team\",status_class=\"4xx\"}"
        ),
        "{page}"
    );
    assert!(
        page.contains("llm_router_denied_total{reason=\"tpd\"}"),
        "{page}"
    );
    // The access log says who asked, in which class, what was reserved and whether the
    // charge is the engine's count.
    let log = s.r.access_log();
    let line = log
        .lines()
        .find(|l| l.contains("status=200") && l.contains("principal=team"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("class=standard")
            && line.contains("reserved_tokens=")
            && line.contains("usage_estimated=false"),
        "{line}"
    );
}

async fn get(r: &RouterProc, key: &str, path: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(r.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_ledger_keeps_the_quota_over_a_restart_and_answers_per_day() {
    let (ops, team) = keys();
    let mut s = start(&ops, &team, "{tokens_per_day: 20}").await;
    for _ in 0..3 {
        assert_eq!(post(&s.r, &team, chat(json!({}))).await.0, 200);
    }
    settled(&s.r, &ops, 3).await;
    assert_eq!(post(&s.r, &team, chat(json!({}))).await.0, 429);
    // Stop (SIGTERM, as systemd does) and start again on the same files.
    let pid = nix::unistd::Pid::from_raw(s.r.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = s.r.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let db = s._dir.path().join("usage.sqlite");
    s.r = RouterProc::start(&config(&s.m, &s.keys_file, &db)).await;
    let (st, _, v) = post(&s.r, &team, chat(json!({}))).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (429, Some("insufficient_quota")),
        "{v}"
    );
    // The ledger, per principal × model × day: three answers of 3 + 5 tokens, two
    // refusals (one per process).
    let today = chrono::Utc::now()
        .date_naive()
        .format("%Y-%m-%d")
        .to_string();
    let (st, v) = get(
        &s.r,
        &ops,
        &format!("/v1/router/usage?principal=team&from={today}&to={today}"),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "list");
    let rows = v["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    let row = &rows[0];
    assert_eq!(
        (
            row["principal"].as_str(),
            row["model"].as_str(),
            row["day"].as_str()
        ),
        (Some("team"), Some("m"), Some(today.as_str()))
    );
    assert_eq!(
        (
            row["requests"].as_u64(),
            row["prompt_tokens"].as_u64(),
            row["completion_tokens"].as_u64()
        ),
        (Some(3), Some(9), Some(15)),
        "{row}"
    );
    assert_eq!(row["denied"]["tpd"], 2, "{row}");
    // Other days and principals are other rows; bad dates are the client's error.
    let (_, v) = get(&s.r, &ops, "/v1/router/usage?to=2000-01-01").await;
    assert_eq!(v["data"], json!([]));
    let (st, v) = get(&s.r, &ops, "/v1/router/usage?from=yesterday").await;
    assert_eq!(
        (st, v["error"]["param"].as_str()),
        (400, Some("from")),
        "{v}"
    );
    // Admins only.
    assert_eq!(get(&s.r, &team, "/v1/router/usage").await.0, 403);
}

/// Waits until `n` answers of `team` are settled. A request is charged once its answer
/// has ended (the access-log phase), so a client's next request can arrive first.
async fn settled(r: &RouterProc, ops: &str, n: u64) {
    let series = "llm_router_principal_requests_total{principal=\"team\",status_class=\"2xx\"}";
    wait_for("the answers settled", Duration::from_secs(5), async || {
        metric(r, ops, series).await >= n as f64
    })
    .await;
}

/// A keys file in `dir` of principals `(id, class, keys)`.
fn class_keys(dir: &std::path::Path, principals: &[(&str, &str, &[&str])]) -> std::path::PathBuf {
    let mut text = String::from("version: 1\nprincipals:\n");
    for (id, class, keys) in principals {
        let entries: Vec<String> = keys
            .iter()
            .map(|k| format!("{{sha256: '{}'}}", token::hex(&token::digest(k))))
            .collect();
        text.push_str(&format!(
            "  - {{id: {id}, class: {class}, keys: [{}]}}\n",
            entries.join(", ")
        ));
    }
    let path = dir.join("keys.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The value of the `/metrics` sample `series` (exact text before the value), 0 if absent.
async fn metric(r: &RouterProc, key: &str, series: &str) -> f64 {
    let page = reqwest::Client::new()
        .get(r.url("/metrics"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_request_takes_the_next_place_before_a_queued_flood() {
    let [ops, batch, leaver] = [0; 3].map(|_| token::new_key().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let keys_file = class_keys(
        dir.path(),
        &[
            ("ops", "critical", &[&ops]),
            ("batch", "sheddable", &[&batch, &leaver]),
        ],
    );
    let m = MockVllm::start("m").await;
    // Each engine request takes 600 ms; the model takes 2 at a time, and no place is
    // kept for critical requests: the critical one must win on queue order alone.
    const ENGINE_MS: u64 = 600;
    m.set_prefill_ms(ENGINE_MS);
    let yaml = format!(
        "{}admission:\n  critical_reserve: 0\n  models:\n    m: {{max_in_flight: 2}}\n",
        config(&m, &keys_file, &dir.path().join("usage.sqlite"))
    );
    let r = std::sync::Arc::new(RouterProc::start(&yaml).await);
    let depth = "llm_router_queue_depth{class=\"sheddable\",model=\"m\"}";
    // The flood: 2 at the engine, 10 queued.
    let flood: Vec<_> = (0..12)
        .map(|_| {
            let (r, batch) = (r.clone(), batch.clone());
            tokio::spawn(async move { post(&r, &batch, chat(json!({}))).await.0 })
        })
        .collect();
    wait_for("10 queued", Duration::from_secs(10), async || {
        metric(&r, &ops, depth).await == 10.0
    })
    .await;
    // A client that gives up while queued leaves the queue.
    let gave_up = reqwest::Client::new()
        .post(r.url("/v1/chat/completions"))
        .bearer_auth(&leaver)
        .timeout(Duration::from_millis(300))
        .json(&chat(json!({})))
        .send()
        .await;
    assert!(gave_up.is_err());
    wait_for(
        "the leaver out of the queue",
        Duration::from_secs(5),
        async || metric(&r, &ops, depth).await == 10.0,
    )
    .await;
    // The critical request is served next: by the time it is answered, the engine has
    // finished the two requests it had, the critical one and at most the queued one that
    // took the other place alongside it (behind the flood it would be 10 more).
    let before = m.completed();
    let (st, _, v) = post(&r, &ops, chat(json!({}))).await;
    assert_eq!(st, 200, "{v}");
    let finished_meanwhile = m.completed() - before;
    assert!(
        finished_meanwhile <= 4,
        "{finished_meanwhile} engine requests finished first"
    );
    // Its wait was for the first place to free up: less than one engine request.
    let waited = metric(
        &r,
        &ops,
        "llm_router_admission_wait_seconds_sum{class=\"critical\",model=\"m\"}",
    )
    .await;
    assert!(
        waited < ENGINE_MS as f64 / 1000.0 * 1.5,
        "critical waited {waited} s"
    );
    for f in flood {
        assert_eq!(f.await.unwrap(), 200);
    }
    assert_eq!(metric(&r, &ops, depth).await, 0.0);
    // The access log has the critical request's time in the queue.
    wait_for("the queued line", Duration::from_secs(5), async || {
        r.access_log().lines().any(|l| {
            l.contains("principal=ops") && l.contains("class=critical") && l.contains("queued_ms=")
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sheddable_requests_are_refused_while_every_instance_is_saturated() {
    let [ops, batch] = [0; 2].map(|_| token::new_key().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let keys_file = class_keys(
        dir.path(),
        &[
            ("ops", "critical", &[&ops]),
            ("batch", "sheddable", &[&batch]),
        ],
    );
    let m = MockVllm::start("m").await;
    let r = RouterProc::start(&config(&m, &keys_file, &dir.path().join("usage.sqlite"))).await;
    assert_eq!(post(&r, &batch, chat(json!({}))).await.0, 200);
    // The engine reports 20 waiting (over admission.saturation.waiting_per_instance, 8).
    m.set_gauges(4, 20, 0.5);
    wait_for("shedding", Duration::from_secs(10), async || {
        let (st, h, v) = post(&r, &batch, chat(json!({}))).await;
        st == 503 && v["error"]["code"] == "server_overloaded" && h.get("retry-after").is_some()
    })
    .await;
    // Critical requests are never shed.
    assert_eq!(post(&r, &ops, chat(json!({}))).await.0, 200);
    m.set_gauges(0, 0, 0.1);
    wait_for("no more shedding", Duration::from_secs(10), async || {
        post(&r, &batch, chat(json!({}))).await.0 == 200
    })
    .await;
    assert!(metric(&r, &ops, "llm_router_denied_total{reason=\"shed\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_and_a_wait_over_the_class_limit_answer_503() {
    let [ops, team] = [0; 2].map(|_| token::new_key().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let keys_file = class_keys(
        dir.path(),
        &[("ops", "critical", &[&ops]), ("team", "standard", &[&team])],
    );
    let m = MockVllm::start("m").await;
    // One place, one waiter, and a standard request waits at most 0.4 s; each engine
    // request takes 1.5 s.
    m.set_prefill_ms(1500);
    let yaml = format!(
        "{}admission:\n  critical_reserve: 0\n  queue: {{max_waiting: 1}}\n  classes: {{standard: {{max_queue_wait_s: 0.4}}}}\n  models:\n    m: {{max_in_flight: 1}}\n",
        config(&m, &keys_file, &dir.path().join("usage.sqlite"))
    );
    let r = std::sync::Arc::new(RouterProc::start(&yaml).await);
    let spawn_post = || {
        let (r, team) = (r.clone(), team.clone());
        tokio::spawn(async move { post(&r, &team, chat(json!({}))).await })
    };
    // One holds the place, the other waits (whichever got there first).
    let running = spawn_post();
    let waiting = spawn_post();
    let depth = "llm_router_queue_depth{class=\"standard\",model=\"m\"}";
    wait_for("one queued", Duration::from_secs(5), async || {
        metric(&r, &ops, depth).await == 1.0
    })
    .await;
    // The queue holds one: the next is refused at once.
    let t0 = std::time::Instant::now();
    let (st, h, v) = post(&r, &team, chat(json!({}))).await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["error"]["code"], "server_overloaded");
    assert_eq!(v["error"]["type"], "server_error");
    assert!(h.get("retry-after").is_some(), "{h:?}");
    assert!(t0.elapsed() < Duration::from_millis(1000));
    // The one waiting gives up after its class's 0.4 s, long before the place frees up.
    let mut answers = [running.await.unwrap(), waiting.await.unwrap()];
    answers.sort_by_key(|a| a.0);
    assert_eq!(answers[0].0, 200, "{:?}", answers[0].2);
    assert_eq!(answers[1].0, 503, "{:?}", answers[1].2);
    assert_eq!(answers[1].2["error"]["code"], "server_overloaded");
    for reason in ["queue_full", "queue_timeout"] {
        let series = format!("llm_router_denied_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&r, &ops, &series).await, 1.0, "{reason}");
    }
}
