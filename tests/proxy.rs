//! The router binary against mock engines, on real loopback sockets.

mod common;

use std::time::{Duration, Instant};

use common::{dead_port, expect_error, llm, model_ids, MockVllm, RouterProc};
use futures_util::StreamExt;
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(r: &RouterProc, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    client()
        .post(r.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A mock engine and a router serving it as model `m` (engine name `org/M`); `extra` is
/// appended to the config (e.g. a `router:` section).
async fn one_engine(extra: &str) -> (MockVllm, RouterProc) {
    let m = MockVllm::start("m").await;
    let yaml = format!(
        "LLM_engines:\n{}{extra}",
        llm("m", "org/M", &[("m1", m.port())])
    );
    let r = RouterProc::start(&yaml).await;
    (m, r)
}

fn chat(model: &str, stream: bool) -> String {
    json!({"messages": [{"role": "user", "content": "hi"}], "model": model, "stream": stream, "max_tokens": 5})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_only_their_model_with_model_rewritten() {
    let a1 = MockVllm::start("a1").await;
    let a2 = MockVllm::start("a2").await;
    let b1 = MockVllm::start("b1").await;
    let yaml = format!(
        "LLM_engines:\n{}{}",
        llm(
            "alpha",
            "org/Alpha-7B",
            &[("a1", a1.port()), ("a2", a2.port())]
        ),
        llm("beta", "org/Beta", &[("b1", b1.port())])
    );
    let r = RouterProc::start(&yaml).await;
    for _ in 0..10 {
        let resp = post(&r, "/v1/chat/completions", chat("alpha", false)).await;
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["model"], "org/Alpha-7B");
    }
    assert_eq!(a1.requests() + a2.requests(), 10);
    assert!(a1.requests() > 0 && a2.requests() > 0, "ties rotate");
    assert_eq!(b1.requests(), 0);
    assert_eq!(a1.last_json()["model"], "org/Alpha-7B");

    // The model_tag works as a name too; /v1/completions goes through.
    let resp = post(
        &r,
        "/v1/completions",
        json!({"model": "org/Beta", "prompt": "x"}).to_string(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(b1.requests(), 1);
    assert_eq!(b1.last_json()["prompt"], "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllms_other_endpoints_are_routed_by_the_bodys_model() {
    let (m, r) = one_engine("").await;
    let cases = [
        ("/tokenize", json!({"model": "m", "prompt": "hello"})),
        ("/detokenize", json!({"model": "m", "tokens": [1, 2, 3]})),
        (
            "/v1/score",
            json!({"model": "m", "text_1": "a", "text_2": ["b", "c"]}),
        ),
        (
            "/score",
            json!({"model": "m", "text_1": "a", "text_2": "b"}),
        ),
        ("/pooling", json!({"model": "m", "input": "x"})),
        ("/classify", json!({"model": "m", "input": ["x", "y"]})),
        // A reranker served by vLLM itself (an `LLM_engines` model).
        (
            "/v1/rerank",
            json!({"model": "m", "query": "q", "documents": ["a", "b"]}),
        ),
        (
            "/rerank",
            json!({"model": "m", "query": "q", "texts": ["a"]}),
        ),
    ];
    for (i, (path, body)) in cases.iter().enumerate() {
        let resp = post(&r, path, body.to_string()).await;
        assert_eq!(resp.status(), 200, "{path}");
        let echo: Value = resp.json().await.unwrap();
        // The engine got the same path and the body with only `model` rewritten.
        assert_eq!(echo["path"], *path);
        let mut expected = body.clone();
        expected["model"] = json!("org/M");
        let got: Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
        assert_eq!(got, expected, "{path}");
        assert_eq!(m.requests(), i + 1);
    }
    // The same checks as chat: an unknown model is the router's 404, not the engine's.
    let e = expect_error(
        post(
            &r,
            "/tokenize",
            json!({"model": "nope", "prompt": "x"}).to_string(),
        )
        .await,
        404,
    )
    .await;
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(m.requests(), cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_mib_body_arrives_byte_for_byte() {
    let m = MockVllm::start("m").await;
    let r = RouterProc::start(&format!(
        "LLM_engines:\n{}",
        llm("big", "org/Big", &[("m1", m.port())])
    ))
    .await;
    // `model` after 5 MiB of messages, odd spacing and escapes that re-serialization would change.
    let filler = "x\\u00e9\\/y ".repeat(5 * 1024 * 1024 / 11 + 1);
    let body = |model: &str| {
        format!("{{ \"messages\" : [ {{\"role\":\"user\",\"content\":\"{filler}\"}} ],\n  \"model\"  :  \"{model}\" , \"n\":1.0e0 }}")
    };
    let sent = body("big");
    assert!(sent.len() > 5 * 1024 * 1024 - 100);
    let resp = post(&r, "/v1/chat/completions", sent).await;
    assert_eq!(resp.status(), 200);
    let got = m.last_body().unwrap();
    assert_eq!(got.len(), body("org/Big").len());
    assert!(
        got == body("org/Big").as_bytes(),
        "body changed beyond the model rewrite"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_as_the_engine_emits_them() {
    let (m, r) = one_engine("").await;
    m.set_sse(5, 200);
    let t0 = Instant::now();
    let resp = post(&r, "/v1/chat/completions", chat("m", true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let mut first_event_at = None;
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        if first_event_at.is_none() && text.contains("\n\n") {
            first_event_at = Some(t0.elapsed());
        }
    }
    let total = t0.elapsed();
    let first = first_event_at.unwrap();
    // The engine needs 5 x 200 ms; the first event must not wait for the rest.
    assert!(total >= Duration::from_millis(1000), "total {total:?}");
    assert!(
        first < Duration::from_millis(400),
        "first event after {first:?} (total {total:?})"
    );
    // Five tokens and `[DONE]`: the usage event the router asked the engine for is not
    // passed on to a client that did not ask for it.
    assert_eq!(text.matches("data: ").count(), 6, "{text}");
    assert!(!text.contains("\"usage\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(m.last_json()["stream_options"]["include_usage"], true);
    assert_eq!(m.completed(), 1);
}

/// Waits up to `limit` for `cond`.
async fn within(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_aborts_the_upstream_stream() {
    let (m, r) = one_engine("").await;
    m.set_sse(100, 100);
    // Mid-stream: read one event, hang up.
    let resp = post(&r, "/v1/chat/completions", chat("m", true)).await;
    let mut body = resp.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    let t0 = Instant::now();
    assert!(
        within(Duration::from_secs(1), || m.aborted() == 1).await,
        "upstream not aborted"
    );
    eprintln!("mid-stream abort seen by engine after {:?}", t0.elapsed());

    // During a silent prefill: the client gives up before any byte.
    m.set_prefill_ms(3000);
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let res = c
        .post(r.url("/v1/chat/completions"))
        .body(chat("m", true))
        .send()
        .await;
    assert!(res.is_err());
    let t0 = Instant::now();
    assert!(
        within(Duration::from_secs(1), || m.aborted() == 2).await,
        "prefill not aborted"
    );
    eprintln!("prefill abort seen by engine after {:?}", t0.elapsed());
    assert_eq!(m.completed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_causes_no_client_error() {
    let live = MockVllm::start("live").await;
    let dead = dead_port();
    let r = RouterProc::start(&format!(
        "LLM_engines:\n{}",
        llm("m", "org/M", &[("dead", dead), ("live", live.port())])
    ))
    .await;
    let mut failures = 0;
    for i in 0..200 {
        let resp = post(&r, "/v1/chat/completions", chat("m", i % 4 == 0)).await;
        if resp.status() != 200 || resp.bytes().await.is_err() {
            failures += 1;
        }
    }
    assert_eq!(failures, 0);
    assert_eq!(live.requests(), 200);
    // Found dead by the health check / scrape (or a failed attempt), and logged.
    let log = r.log_text();
    assert!(
        log.contains("instance=dead") || log.contains("dead:"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reachable_instance_is_503_with_retry_after() {
    let r = RouterProc::start(&format!(
        "LLM_engines:\n{}",
        llm("m", "org/M", &[("d1", dead_port()), ("d2", dead_port())])
    ))
    .await;
    let resp = post(&r, "/v1/chat/completions", chat("m", false)).await;
    assert_eq!(resp.headers()["retry-after"], "1");
    let e = expect_error(resp, 503).await;
    assert_eq!(e["code"], "no_instance_available");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("d1") && msg.contains("d2"), "{msg}");
    // Instance ids, never internal addresses.
    assert!(!msg.contains("127.0.0.1"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_the_router_keeps_serving() {
    let m = MockVllm::start("m").await;
    let yaml = format!(
        "LLM_engines:\n{}embedding_server:\n  host: 127.0.0.1\n  port: {}\n  managed: false\n  embedding_models:\n    emb:\n      model_path: /nonexistent\nrouter:\n  max_body_bytes: 1000\n",
        llm("m", "org/M", &[("m1", m.port())]),
        dead_port()
    );
    let r = RouterProc::start(&yaml).await;
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/v1/chat/completions",
            "{not json".into(),
            400,
            "invalid_json",
        ),
        ("/v1/chat/completions", "[]".into(), 400, "invalid_json"),
        ("/v1/chat/completions", "".into(), 400, "invalid_json"),
        (
            "/v1/chat/completions",
            "{\"messages\":[]}".into(),
            400,
            "missing_model",
        ),
        (
            "/v1/chat/completions",
            "{\"model\":7}".into(),
            400,
            "invalid_model",
        ),
        (
            "/v1/chat/completions",
            chat("nope", false),
            404,
            "model_not_found",
        ),
        (
            "/v1/chat/completions",
            chat("emb", false),
            400,
            "model_not_supported",
        ),
        (
            "/v1/chat/completions",
            format!("{{\"model\":\"m\",\"p\":\"{}\"}}", "x".repeat(2000)),
            413,
            "request_too_large",
        ),
        // Under /v1/ only a JSON body naming a model is forwarded (tests/endpoints.rs).
        ("/v1/nothing", "{}".to_string(), 404, "unknown_url"),
        ("/nothing", chat("m", false), 404, "unknown_url"),
    ];
    for (path, body, status, code) in cases {
        let e = expect_error(post(&r, path, body.clone()).await, status).await;
        assert_eq!(e["code"], code, "{path} {body:.60}: {e}");
    }
    let e = expect_error(
        post(&r, "/v1/chat/completions", chat("nope", false)).await,
        404,
    )
    .await;
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("nope") && msg.contains("m, emb"), "{msg}");

    let resp = client()
        .get(r.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "POST");
    expect_error(resp, 405).await;

    // A chunked body over the limit (no content-length up front).
    let chunks =
        futures_util::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![b' '; 100])));
    let resp = client()
        .post(r.url("/v1/chat/completions"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    expect_error(resp, 413).await;

    // Engine errors pass through as they are.
    m.force_status(500);
    let resp = post(&r, "/v1/chat/completions", chat("m", false)).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.json::<Value>().await.unwrap()["message"], "forced 500");
    m.force_status(0);

    // Still serving.
    assert_eq!(m.requests(), 1);
    assert_eq!(
        post(&r, "/v1/chat/completions", chat("m", false))
            .await
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failure_is_502_and_slowness_504() {
    // An "engine" that accepts, reads the request and closes without answering.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad_port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
            });
        }
    });
    let slow = MockVllm::start("slow").await;
    slow.set_prefill_ms(3000);
    let yaml = format!(
        "LLM_engines:\n{}{}router:\n  first_byte_timeout_s: 0.5\n",
        llm("bad", "org/Bad", &[("b1", bad_port)]),
        llm("slow", "org/Slow", &[("s1", slow.port())])
    );
    let r = RouterProc::start(&yaml).await;
    let e = expect_error(
        post(&r, "/v1/chat/completions", chat("bad", false)).await,
        502,
    )
    .await;
    assert_eq!(e["type"], "upstream_error");
    let t0 = Instant::now();
    let e = expect_error(
        post(&r, "/v1/chat/completions", chat("slow", false)).await,
        504,
    )
    .await;
    assert_eq!(e["code"], "upstream_timeout");
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_spread_over_instances() {
    let a = MockVllm::start("a").await;
    let b = MockVllm::start("b").await;
    a.set_sse(5, 100);
    b.set_sse(5, 100);
    let r = RouterProc::start(&format!(
        "LLM_engines:\n{}",
        llm("m", "org/M", &[("a", a.port()), ("b", b.port())])
    ))
    .await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let url = r.url("/v1/chat/completions");
            tokio::spawn(async move {
                let resp = client()
                    .post(url)
                    .body(chat("m", true))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                resp.bytes().await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Least in-flight: 8 overlapping streams split 4/4 (±1 for arrival races).
    let (na, nb) = (a.requests(), b.requests());
    assert_eq!(na + nb, 8);
    assert!(na.abs_diff(nb) <= 2, "a={na} b={nb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_forwarded_minus_hop_by_hop_and_credentials() {
    let (m, r) = one_engine("").await;
    let resp = client()
        .post(r.url("/v1/chat/completions"))
        .header("authorization", "Bearer sk-test")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "1")
        .header("x-custom", "kept")
        .header("x-api-key", "sk-other")
        .header("cookie", "session=1")
        .header("x-llm-router-principal", "ops")
        .body(chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = m.last_headers();
    // The client's credentials and router-only claims never reach an engine.
    for private in [
        "authorization",
        "x-api-key",
        "cookie",
        "x-llm-router-principal",
    ] {
        assert!(h.get(private).is_none(), "{private} was forwarded");
    }
    assert_eq!(h["x-custom"], "kept");
    assert!(h.get("x-private").is_none());
    assert_eq!(h["host"], format!("127.0.0.1:{}", m.port()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_endpoints_models_and_health() {
    let m = MockVllm::start("m").await;
    let yaml = format!(
        "LLM_engines:\n{}embedding_server:\n  port: {}\n  managed: false\n  embedding_models:\n    emb:\n      model_path: /x\n  reranking_models:\n    rr:\n      model_path: /y\n",
        llm("chat-model", "org/Chat", &[("m1", m.port())]),
        dead_port()
    );
    let r = RouterProc::start(&yaml).await;
    let v = r.get_json("/v1/models").await;
    assert_eq!(v["object"], "list");
    let ids = model_ids(&v);
    assert_eq!(ids, ["chat-model", "emb", "rr"]);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][2]["kind"], "rerank");

    let one = r.get_json("/v1/models/chat-model").await;
    assert_eq!(one["id"], "chat-model");
    expect_error(
        client().get(r.url("/v1/models/none")).send().await.unwrap(),
        404,
    )
    .await;

    let h = client().get(r.url("/health")).send().await.unwrap();
    assert_eq!(h.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_503_when_draining_while_requests_still_work() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let (_m, r) = one_engine("").await;
    assert_eq!(
        client()
            .get(r.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // SIGQUIT starts a graceful upgrade: Pingora keeps accepting for 5 s while it hands
    // its sockets over (none takes them here), then drains.
    kill(Pid::from_raw(r.child.id() as i32), Signal::SIGQUIT).unwrap();
    let c = client();
    let mut saw_503 = false;
    for _ in 0..50 {
        let h = c.get(r.url("/health")).send().await.unwrap();
        if h.status() == 503 {
            assert_eq!(h.json::<Value>().await.unwrap()["status"], "draining");
            saw_503 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_503, "/health never reported draining");
    assert_eq!(
        post(&r, "/v1/chat/completions", chat("m", false))
            .await
            .status(),
        200
    );
}

/// Reads from a raw socket until `needle` shows up (or 2 s pass).
async fn read_until(s: &mut tokio::net::TcpStream, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(2);
    while !String::from_utf8_lossy(&got).contains(needle) && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_by_the_router() {
    use tokio::io::AsyncWriteExt;
    let (m, r) = one_engine("router:\n  max_body_bytes: 100000\n").await;
    let body = chat("m", false);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", r.port))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        body.len()
    );
    let t0 = Instant::now();
    s.write_all(head.as_bytes()).await.unwrap();
    let got = read_until(&mut s, "\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 100"), "{got:?}");
    assert!(t0.elapsed() < Duration::from_millis(500));
    s.write_all(body.as_bytes()).await.unwrap();
    let got = read_until(&mut s, "org/M").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    assert!(
        m.last_headers().get("expect").is_none(),
        "Expect is not forwarded"
    );

    // Over the limit: refused at once, without waiting for the body.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", r.port))
        .await
        .unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 200000\r\nexpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let got = read_until(&mut s, "request_too_large").await;
    assert!(got.starts_with("HTTP/1.1 413"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_fails_over() {
    // A listener whose accept queue is full: further SYNs are dropped, so connecting to it
    // times out (rather than being refused).
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = sock.listen(0).unwrap();
    let full_port = full.local_addr().unwrap().port();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(("127.0.0.1", full_port)),
        )
        .await
        {
            fillers.push(c);
        }
    }
    let live = MockVllm::start("live").await;
    let r = RouterProc::start(&format!(
        "LLM_engines:\n{}router:\n  connect_timeout_s: 0.3\n",
        llm("m", "org/M", &[("stuck", full_port), ("live", live.port())])
    ))
    .await;
    let t0 = Instant::now();
    for _ in 0..3 {
        let resp = post(&r, "/v1/chat/completions", chat("m", false)).await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(live.requests(), 3);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(r.log_text().contains("stuck"), "{}", r.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_resent_after_the_engine_started_answering() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Instance 0 starts an SSE answer, sends one event and dies.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cut_port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nf\r\ndata: {\"a\":1}\n\n\r\n")
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            });
        }
    });
    let other = MockVllm::start("other").await;
    let r = RouterProc::start(&format!(
        "LLM_engines:\n{}",
        llm("m", "org/M", &[("cut", cut_port), ("other", other.port())])
    ))
    .await;
    // Ties rotate from instance 0, so the first request goes to `cut`.
    let resp = post(&r, "/v1/chat/completions", chat("m", true)).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: {\"a\":1}"));
    // The cut must surface as an error, not as a clean end of stream: a last error event
    // (the SDKs raise on it) and no `[DONE]`.
    let mut rest = Vec::new();
    while let Some(c) = stream.next().await {
        rest.extend_from_slice(&c.unwrap());
    }
    let rest = String::from_utf8(rest).unwrap();
    let last = rest.trim_end().rsplit("\n\n").next().unwrap();
    let event: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(event["error"]["code"], "upstream_stream_cut", "{rest}");
    assert_eq!(event["error"]["type"], "server_error");
    assert!(!rest.contains("[DONE]"), "{rest}");
    assert_eq!(
        other.requests(),
        0,
        "request was re-sent after the engine answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_engine_closed_is_retried_on_the_same_instance() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An engine that serves one request per connection, keeps it alive, and closes it
    // without an answer when a second request arrives on it (as uvicorn closing an idle
    // connection just as the router reuses it).
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = 0;
                // One whole request: the head, then the Content-Length of the body.
                loop {
                    let Ok(n) = s.read(&mut buf[got..]).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got += n;
                    let text = String::from_utf8_lossy(&buf[..got]).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if got >= end + 4 + len {
                            break;
                        }
                    }
                }
                let body = r#"{"id":"x","object":"chat.completion","choices":[]}"#;
                let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                let _ = s.write_all(resp.as_bytes()).await;
                if buf.starts_with(b"POST /v1/chat/completions") {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                // The next request on this connection: read it, close without answering.
                let _ = s.read(&mut buf).await;
            });
        }
    });
    let r = RouterProc::start(&format!(
        "LLM_engines:\n{}balancer:\n  poll_interval_s: 30\n",
        llm("m", "org/M", &[("only", port)])
    ))
    .await;
    for i in 0..3 {
        let resp = post(&r, "/v1/chat/completions", chat("m", false)).await;
        assert_eq!(resp.status(), 200, "request {i}: {:?}", resp.text().await);
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 3);
    // Not cooled down, no failover counted.
    let inst = &r.instances().await[0];
    assert_ne!(inst["state"], "cooldown", "{inst}");
    let m = r.get_text("/metrics").await;
    assert!(!m.contains("llm_router_failovers_total{"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_dying_behind_a_stale_connection_fails_over() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::AsyncWriteExt;
    // Answers one chat request per connection and keeps it alive. A second request on a
    // connection is read and dropped unanswered (a stale pooled connection), and from
    // then on every request is dropped, on new connections too: a killed vLLM whose
    // workers still hold the listening socket. Health and metrics always answer.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let dying = std::sync::Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let dying = dying.clone();
            tokio::spawn(async move {
                let mut chats_here = 0;
                loop {
                    let Some(buf) = read_request(&mut s).await else {
                        return;
                    };
                    let body = if buf.starts_with(b"GET /metrics") {
                        "vllm:num_requests_running 0\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0\n"
                    } else if buf.starts_with(b"GET") {
                        "{}"
                    } else if chats_here > 0 || dying.load(Ordering::SeqCst) {
                        dying.store(true, Ordering::SeqCst);
                        return; // dropped unanswered
                    } else {
                        chats_here += 1;
                        r#"{"id":"x","object":"chat.completion","choices":[]}"#
                    };
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let other = MockVllm::start("other").await;
    // `other` looks busy, so the dying engine is chosen while it seems healthy.
    other.set_gauges(0, 20, 0.0);
    let r = RouterProc::start(&format!(
        "LLM_engines:\n{}balancer:\n  poll_interval_s: 0.2\n  health_check_interval_s: 30\n",
        llm("m", "org/M", &[("dying", port), ("other", other.port())])
    ))
    .await;
    common::wait_for("both scraped", Duration::from_secs(10), async || {
        let v = r.instances().await;
        v.len() == 2 && v[0]["fresh"] == true && v[1]["waiting"] == 20.0
    })
    .await;
    // Until a request meets the stale connection, then the reset: every one is answered.
    for i in 0..10 {
        let resp = post(&r, "/v1/chat/completions", chat("m", false)).await;
        let status = resp.status();
        assert_eq!(status, 200, "request {i}: {:?}", resp.text().await);
        if other.requests() > 0 {
            return;
        }
    }
    panic!("the dying engine was never met on a pooled connection");
}

/// One whole HTTP/1 request from `s` (head, then a `Content-Length` body); `None` once
/// the connection is closed.
async fn read_request(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return Some(got);
            }
        }
    }
}
