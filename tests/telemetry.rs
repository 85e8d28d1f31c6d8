//! Request ids, the access log and the router's Prometheus metrics, end to end.

mod common;

use std::time::Duration;

use common::{dead_port, llm, wait_for, MockVllm, RouterProc};

use futures_util::StreamExt;
use serde_json::{json, Value};

fn chat(stream: bool) -> String {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream, "stream_options": {"include_usage": true}}).to_string()
}

/// The value of the first metric line starting with `prefix` and containing all `parts`.
fn metric(page: &str, prefix: &str, parts: &[&str]) -> Option<f64> {
    page.lines()
        .filter(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_access_log_and_metrics() {
    let m = MockVllm::start("m").await;
    m.set_sse(4, 20);
    let yaml = format!(
        "LLM_engines:\n{}",
        llm("m", "org/M", &[("dead", dead_port()), ("live", m.port())])
    );
    let r = RouterProc::start(&yaml).await;
    let c = reqwest::Client::new();

    // A client's request id reaches the engine and comes back.
    let resp = c
        .post(r.url("/v1/chat/completions"))
        .header("x-request-id", "req-42")
        .body(chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "req-42");
    assert_eq!(m.last_headers()["x-request-id"], "req-42");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 4);

    // Without one, a new id is made, forwarded and returned; errors carry it too.
    let resp = c
        .post(r.url("/v1/chat/completions"))
        .body(chat(true))
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 16, "{id}");
    assert_eq!(m.last_headers()["x-request-id"], id.as_str());
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        chunk.unwrap();
    }
    let resp = c
        .post(r.url("/v1/chat/completions"))
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.headers().get("x-request-id").is_some());

    // One access-log line per request, with the fields.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = r.access_log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("path=/v1/chat/completions"))
        .collect();
    assert_eq!(lines.len(), 3, "{log}");
    let first = lines
        .iter()
        .find(|l| l.contains("request_id=req-42"))
        .expect("line for req-42");
    for field in [
        "status=200",
        "model=m",
        "instance=live",
        "duration_ms=",
        "ttfb_ms=",
        "prompt_tokens=3",
        "completion_tokens=4",
        "client=127.0.0.1:",
    ] {
        assert!(first.contains(field), "{field} missing: {first}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("status=400") && l.contains("error=")),
        "{log}"
    );

    // Metrics.
    let page = r.get_text("/metrics").await;
    assert_eq!(
        metric(
            &page,
            "llm_router_requests_total",
            &[
                "model=\"m\"",
                "instance=\"live\"",
                "endpoint=\"chat_completions\"",
                "status=\"2xx\""
            ]
        ),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        metric(&page, "llm_router_requests_total", &["status=\"4xx\""]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &page,
            "llm_router_tokens_total",
            &["model=\"m\"", "kind=\"completion\""]
        ),
        Some(8.0),
        "JSON + SSE usage"
    );
    assert_eq!(
        metric(&page, "llm_router_tokens_total", &["kind=\"prompt\""]),
        Some(6.0)
    );
    assert_eq!(
        metric(
            &page,
            "llm_router_time_to_first_token_seconds_count",
            &["instance=\"live\""]
        ),
        Some(1.0)
    );
    assert!(
        metric(
            &page,
            "llm_router_inter_token_gap_seconds_count",
            &["instance=\"live\""]
        )
        .unwrap()
            >= 4.0
    );
    assert!(
        metric(
            &page,
            "llm_router_request_duration_seconds_count",
            &["endpoint=\"chat_completions\""]
        )
        .unwrap()
            >= 2.0
    );
    assert!(metric(
        &page,
        "llm_router_instance",
        &["instance=\"live\"", "value=\"healthy\""]
    )
    .is_some());
    // No unbounded labels: the bad request's garbage never becomes a label value.
    assert!(!page.contains("oops"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failovers_are_counted_and_logged() {
    let m = MockVllm::start("m").await;
    let doomed = MockVllm::start("doomed").await;
    // Slow polling: the dead instance is found by a failed attempt, not by a health check.
    let yaml = format!(
        "LLM_engines:\n{}balancer:\n  health_check_interval_s: 60\n  poll_interval_s: 60\nrouter:\n  access_log: json\n",
        llm("m", "org/M", &[("dead", doomed.port()), ("live", m.port())])
    );
    let r = RouterProc::start(&yaml).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    doomed.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = reqwest::Client::new();
    // Ties rotate from instance 0 (dead) at first.
    for _ in 0..2 {
        assert_eq!(
            c.post(r.url("/v1/chat/completions"))
                .body(chat(false))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let page = r.get_text("/metrics").await;
    assert!(
        metric(&page, "llm_router_failovers_total", &["instance=\"dead\""]).unwrap() >= 1.0,
        "{page}"
    );
    assert!(
        metric(
            &page,
            "llm_router_upstream_errors_total",
            &["instance=\"dead\"", "kind=\"connect\""]
        )
        .unwrap()
            >= 1.0
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = r.access_log();
    let failed_over: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["failovers"].as_array().is_some_and(|a| !a.is_empty()))
        .collect();
    assert!(!failed_over.is_empty(), "{log}");
    assert!(
        failed_over[0]["failovers"][0]
            .as_str()
            .unwrap()
            .starts_with("dead: connect"),
        "{}",
        failed_over[0]
    );
    assert_eq!(failed_over[0]["instance"], "live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_and_log_level_from_the_config() {
    let m = MockVllm::start("m").await;
    let admin = dead_port();
    let yaml = format!(
        "router:\n  log_level: warn\n  admin_listen: \"127.0.0.1:{admin}\"\nLLM_engines:\n{}",
        llm("m", "org/M", &[("live", m.port())])
    );
    let r = RouterProc::start_with_log(&yaml, None).await;
    let c = reqwest::Client::new();
    let resp = c
        .post(r.url("/v1/chat/completions"))
        .body(chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // The admin port serves the same metrics and health, and nothing else. (A request is
    // counted when its access-log line is written, just after the answer went out.)
    let url = |p: &str| format!("http://127.0.0.1:{admin}{p}");
    let counted = |page: &str| {
        metric(
            page,
            "llm_router_requests_total",
            &["model=\"m\"", "status=\"2xx\""],
        )
    };
    let mut page = String::new();
    wait_for("the request counted", Duration::from_secs(5), async || {
        let resp = c.get(url("/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        page = resp.text().await.unwrap();
        counted(&page).is_some()
    })
    .await;
    assert_eq!(counted(&page), Some(1.0), "{page}");
    assert!(page.contains("llm_router_instance{"), "{page}");
    let health = c.get(url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let other = c
        .post(url("/v1/chat/completions"))
        .body(chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    let err: Value = other.json().await.unwrap();
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/chat/completions"));
    assert_eq!(m.requests(), 1, "the admin port never proxies");
    let instances: Value = c
        .get(url("/v1/router/instances"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(instances["data"][0]["id"], "live", "{instances}");
    // LoRA adapters are managed here too (and not on the public port).
    let adapters = "/v1/router/models/m/adapters";
    let load = serde_json::json!({"name": "sql", "path": "/adapters/sql"});
    let resp = c.post(url(adapters)).json(&load).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(m.adapters(), ["sql"]);
    let resp = c
        .delete(url(&format!("{adapters}/sql")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(m.adapters().is_empty());
    // Introspection is not on the public port any more.
    for p in ["/metrics", "/v1/router/instances"] {
        let resp = c.get(r.url(p)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{p} on the main port");
    }
    let resp = c.post(r.url(adapters)).json(&load).send().await.unwrap();
    assert_eq!(resp.status(), 404, "adapters on the main port");

    // log_level: warn: the start-up info lines are not logged, warnings would be.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = r.log_text();
    assert!(!log.contains("INFO"), "{log}");
    assert!(!log.contains("llm-router listening"), "{log}");
}
