//! The engine endpoints beyond chat, completions and embeddings, end to end against mock
//! engines: the Responses API (stored responses reached on their instance), Anthropic's
//! Messages API (its error shape included), any other `POST /v1/...` naming a model, an
//! engine's "no such path" 404, and the answer's `x-llm-router-*` receipt.

mod common;

use std::time::Duration;

use common::{expect_error, instances, wait_for, MockVllm, RouterProc};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

/// Fast polling, so that scraped gauges are seen within a few hundred ms.
const FAST: &str = "balancer:\n  poll_interval_s: 0.1\n";

/// Model `m` (engine name `org/M`) on `mocks`, instance ids `a`, `b`, ...
async fn router(mocks: &[&MockVllm], extra: &str) -> RouterProc {
    let ids = ["a", "b", "c"];
    let list: Vec<(&str, u16)> = mocks
        .iter()
        .zip(ids)
        .map(|(m, id)| (id, m.port()))
        .collect();
    RouterProc::start(&format!(
        "LLM_engines:\n  m:\n    instances:\n{}    model_config:\n      model_tag: org/M\n{extra}",
        instances(&list)
    ))
    .await
}

async fn send(
    r: &RouterProc,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new().request(method, r.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The SSE `data:` payloads of a streamed answer.
async fn events(resp: reqwest::Response) -> Vec<String> {
    let mut text = String::new();
    let mut body = resp.bytes_stream();
    while let Some(c) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&c.unwrap()));
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_names_the_instance_and_model_that_answered() {
    let (a, b) = (MockVllm::start("a").await, MockVllm::start("b").await);
    let r = router(&[&a, &b], "").await;
    let chat = |stream: bool| json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream});
    let mut seen = std::collections::HashSet::new();
    for i in 0..20 {
        let resp = send(
            &r,
            Method::POST,
            "/v1/chat/completions",
            Some(chat(i % 2 == 0)),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-llm-router-model"), "m");
        let inst = header(&resp, "x-llm-router-instance").to_string();
        assert!(inst == "a" || inst == "b", "{inst}");
        seen.insert(inst);
        let _ = resp.bytes().await;
    }
    assert_eq!(seen.len(), 2, "both instances answered and were named");
    // The router's own answers name no instance.
    let resp = send(&r, Method::GET, "/v1/models", None).await;
    assert!(resp.headers().get("x-llm-router-instance").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_responses_are_reached_on_the_instance_that_made_them() {
    let (a, b) = (MockVllm::start("a").await, MockVllm::start("b").await);
    let r = router(&[&a, &b], FAST).await;
    let create = json!({"model": "m", "input": "hello", "max_output_tokens": 8});
    let resp = send(&r, Method::POST, "/v1/responses", Some(create.clone())).await;
    assert_eq!(resp.status(), 200);
    let home = header(&resp, "x-llm-router-instance").to_string();
    let made: Value = resp.json().await.unwrap();
    let id = made["id"].as_str().unwrap().to_string();
    assert_eq!(made["instance"], home.as_str());
    let (home_mock, other) = if home == "a" { (&a, &b) } else { (&b, &a) };
    assert_eq!(home_mock.last_json()["model"], "org/M");
    // The home gets busy: the balancer now sends new work to the other instance...
    home_mock.set_gauges(8, 40, 0.9);
    wait_for(
        "the busy home scraped",
        Duration::from_secs(5),
        async || {
            r.instances()
                .await
                .iter()
                .any(|i| i["id"] == home.as_str() && i["waiting"] == 40.0)
        },
    )
    .await;
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let resp = send(&r, Method::POST, "/v1/chat/completions", Some(chat)).await;
    assert_ne!(header(&resp, "x-llm-router-instance"), home);
    // ...but everything about the stored response still goes to its home.
    for _ in 0..5 {
        let resp = send(&r, Method::GET, &format!("/v1/responses/{id}"), None).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-llm-router-instance"), home);
        let got: Value = resp.json().await.unwrap();
        assert_eq!(got["id"], id.as_str());
        let mut follow = create.clone();
        follow["previous_response_id"] = json!(id);
        let resp = send(&r, Method::POST, "/v1/responses", Some(follow)).await;
        assert_eq!(header(&resp, "x-llm-router-instance"), home);
        let got: Value = resp.json().await.unwrap();
        assert_eq!(got["previous_response_id"], id.as_str());
    }
    let resp = send(
        &r,
        Method::POST,
        &format!("/v1/responses/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "cancelled");
    let resp = send(&r, Method::DELETE, &format!("/v1/responses/{id}"), None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["deleted"], true);
    // Deleted: forgotten, answered by the router without asking an engine.
    let asked = a.requests() + b.requests();
    let e = expect_error(
        send(&r, Method::GET, &format!("/v1/responses/{id}"), None).await,
        404,
    )
    .await;
    assert_eq!(e["code"], "response_not_found");
    let e = expect_error(
        send(&r, Method::GET, "/v1/responses/resp_never", None).await,
        404,
    )
    .await;
    assert_eq!(e["code"], "response_not_found");
    assert_eq!(a.requests() + b.requests(), asked);
    // A path under /v1/responses/ that is none of the routes.
    let e = expect_error(
        send(&r, Method::POST, &format!("/v1/responses/{id}"), None).await,
        404,
    )
    .await;
    assert_eq!(e["code"], "unknown_url");
    assert!(other.stored_responses().iter().all(|s| s != &id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_is_remembered_from_its_first_event() {
    let a = MockVllm::start("a").await;
    a.set_sse(4, 0);
    let r = router(&[&a], "").await;
    let create = json!({"model": "m", "input": "hello", "stream": true});
    let resp = send(&r, Method::POST, "/v1/responses", Some(create)).await;
    assert_eq!(resp.status(), 200);
    let data = events(resp).await;
    assert_eq!(data.len(), 6, "created, 4 deltas, completed: {data:?}");
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    let id = first["response"]["id"].as_str().unwrap();
    let resp = send(&r, Method::GET, &format!("/v1/responses/{id}"), None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["id"], id);
    // Not asked for `stream_options` (the Responses API has none).
    assert!(a.last_json().get("stream_options").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_messages_pass_through_with_anthropic_errors() {
    let a = MockVllm::start("a").await;
    let r = router(&[&a], "").await;
    let msg = |model: &str, stream: bool| {
        json!({"model": model, "max_tokens": 16, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]})
    };
    let resp = send(&r, Method::POST, "/v1/messages", Some(msg("m", false))).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(a.last_json()["model"], "org/M");
    assert!(a.last_json().get("stream_options").is_none());
    let resp = send(&r, Method::POST, "/v1/messages", Some(msg("m", true))).await;
    let data = events(resp).await;
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["type"], "message_stop");
    let resp = send(
        &r,
        Method::POST,
        "/v1/messages/count_tokens",
        Some(msg("m", false)),
    )
    .await;
    assert_eq!(resp.json::<Value>().await.unwrap()["input_tokens"], 3);
    // The router's own errors on these paths are Anthropic's shape.
    for (body, status, kind) in [
        (Some(msg("nope", false)), 404, "not_found_error"),
        (Some(json!({"max_tokens": 1})), 400, "invalid_request_error"),
        (None, 400, "invalid_request_error"),
    ] {
        let resp = send(&r, Method::POST, "/v1/messages", body).await;
        assert_eq!(resp.status().as_u16(), status);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let resp = send(&r, Method::GET, "/v1/messages", None).await;
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.json::<Value>().await.unwrap()["type"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_other_v1_post_naming_a_model_is_forwarded() {
    let a = MockVllm::start("a").await;
    a.set_unserved("/v1/not/served");
    let r = router(&[&a], "").await;
    let body = json!({"model": "m", "input": "say it", "voice": "x"});
    let resp = reqwest::Client::new()
        .post(r.url("/v1/audio/speech"))
        .header("x-team-trace", "t-1")
        .bearer_auth("client-secret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["path"], "/v1/audio/speech");
    // The client's own headers reach the engine, its credentials do not.
    assert_eq!(echo["headers"]["x-team-trace"], "t-1");
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
    let mut expected = body.clone();
    expected["model"] = json!("org/M");
    let got: Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
    assert_eq!(got, expected);
    let asked = a.requests();
    // Without a JSON body naming a model there is nothing to route by: no such path.
    for bad in [json!({"input": "x"}), json!([1, 2])] {
        let e = expect_error(
            send(&r, Method::POST, "/v1/audio/speech", Some(bad)).await,
            404,
        )
        .await;
        assert_eq!(e["code"], "unknown_url");
    }
    let e = expect_error(
        send(&r, Method::POST, "/v1/x", Some(json!({"model": "nope"}))).await,
        404,
    )
    .await;
    assert_eq!(e["code"], "model_not_found");
    let e = expect_error(send(&r, Method::GET, "/v1/audio/speech", None).await, 404).await;
    assert_eq!(e["code"], "unknown_url");
    assert_eq!(a.requests(), asked);
    // The engine does not serve the path: its FastAPI 404 becomes the router's own.
    let resp = send(
        &r,
        Method::POST,
        "/v1/not/served",
        Some(json!({"model": "m"})),
    )
    .await;
    assert_eq!(header(&resp, "x-llm-router-instance"), "");
    let e = expect_error(resp, 404).await;
    assert_eq!(e["code"], "unknown_url");
    assert!(e["message"].as_str().unwrap().contains("/v1/not/served"));
    // An API error's 404 (a stored response the engine lost) passes as it is.
    let resp = send(
        &r,
        Method::POST,
        "/v1/responses",
        Some(json!({"model": "m", "input": "x"})),
    )
    .await;
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    a.state.responses.lock().unwrap().clear();
    let resp = send(&r, Method::GET, &format!("/v1/responses/{id}"), None).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(header(&resp, "x-llm-router-instance"), "a");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], 404, "the engine's own error: {v}");
}

/// Models `p` (on `primary`, instance `p1`, alias `gpt-4o-mini`, fallback `f`) and `f`
/// (on `fallback`, instance `f1`).
async fn primary_and_fallback(primary: &MockVllm, fallback: &MockVllm) -> RouterProc {
    RouterProc::start(&format!(
        "LLM_engines:\n  p:\n    instances: [{{id: p1, host: 127.0.0.1, port: {}, managed: false}}]\n    model_config: {{model_tag: org/P}}\n    aliases: [gpt-4o-mini]\n    fallback: [f]\n  f:\n    instances: [{{id: f1, host: 127.0.0.1, port: {}, managed: false}}]\n    model_config: {{model_tag: org/F}}\n{FAST}  cooldown_s: 30\n",
        primary.port(),
        fallback.port()
    ))
    .await
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_are_listed_with_their_parent_and_answer_as_the_model() {
    let (p, f) = (MockVllm::start("p").await, MockVllm::start("f").await);
    let r = primary_and_fallback(&p, &f).await;
    let list = r.get_json("/v1/models").await;
    let cards: Vec<(&str, &Value, &str)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap(),
                &c["parent"],
                c["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        cards,
        [
            ("p", &Value::Null, "ready"),
            ("gpt-4o-mini", &json!("p"), "ready"),
            ("f", &Value::Null, "ready")
        ]
    );
    let card = r.get_json("/v1/models/gpt-4o-mini").await;
    assert_eq!(
        (card["id"].as_str(), card["parent"].as_str()),
        (Some("gpt-4o-mini"), Some("p"))
    );
    let resp = send(
        &r,
        Method::POST,
        "/v1/chat/completions",
        Some(chat("gpt-4o-mini")),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-llm-router-model"), "p");
    assert_eq!(p.last_json()["model"], "org/P");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_takes_what_the_primary_cannot_and_nothing_it_answered() {
    let (p, f) = (MockVllm::start("p").await, MockVllm::start("f").await);
    let r = primary_and_fallback(&p, &f).await;
    let resp = send(&r, Method::POST, "/v1/chat/completions", Some(chat("p"))).await;
    assert_eq!(
        (resp.status().as_u16(), header(&resp, "x-llm-router-model")),
        (200, "p")
    );
    // The primary answered (with an error): that answer stands.
    p.force_status(500);
    let resp = send(&r, Method::POST, "/v1/chat/completions", Some(chat("p"))).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(f.requests(), 0);
    // Now cooling down after that 500: the fallback takes the next request...
    let resp = send(&r, Method::POST, "/v1/chat/completions", Some(chat("p"))).await;
    assert_eq!(
        (resp.status().as_u16(), header(&resp, "x-llm-router-model")),
        (200, "f")
    );
    assert_eq!(header(&resp, "x-llm-router-instance"), "f1");
    assert_eq!(f.last_json()["model"], "org/F");
    // ...and when the primary is gone altogether (down: its checks fail).
    p.stop();
    wait_for("the primary down", Duration::from_secs(10), async || {
        let list = r.get_json("/v1/models").await;
        list["data"][0]["status"] == "down"
    })
    .await;
    for _ in 0..3 {
        let resp = send(
            &r,
            Method::POST,
            "/v1/chat/completions",
            Some(chat("gpt-4o-mini")),
        )
        .await;
        assert_eq!(
            (resp.status().as_u16(), header(&resp, "x-llm-router-model")),
            (200, "f")
        );
    }
    assert_eq!(f.requests(), 4);
}

/// A `multipart/form-data` body: a binary "audio file" (with bytes that look like
/// boundaries and headers), then the `model` field, then `language`.
fn audio_form(boundary: &str, model: &str) -> Vec<u8> {
    let mut audio: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
    audio.extend_from_slice(format!("\r\n--{boundary}x\r\nname=\"model\"\r\n\r\n").as_bytes());
    let mut b = Vec::new();
    b.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n").as_bytes());
    b.extend_from_slice(&audio);
    b.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\r\n--{boundary}--\r\n").as_bytes());
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_forms_arrive_byte_for_byte_with_only_the_model_rewritten() {
    let a = MockVllm::start("a").await;
    let r = router(&[&a], "").await;
    let boundary = "----llmrouter7MA4YWxkTrZu0gW";
    let ct = format!("multipart/form-data; boundary={boundary}");
    let c = reqwest::Client::new();
    let upload = |path: &str, ct: &str, body: Vec<u8>| {
        c.post(r.url(path))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    for path in ["/v1/audio/transcriptions", "/v1/audio/translations"] {
        let resp = upload(path, &ct, audio_form(boundary, "m")).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let echo: Value = resp.json().await.unwrap();
        assert_eq!(
            (echo["path"].as_str(), echo["content_type"].as_str()),
            (Some(path), Some(ct.as_str()))
        );
        assert_eq!(
            a.last_body().unwrap().to_vec(),
            audio_form(boundary, "org/M"),
            "{path}"
        );
    }
    let asked = a.requests();
    let cases = [
        (
            "application/json",
            audio_form(boundary, "m"),
            400,
            "invalid_content_type",
        ),
        (
            ct.as_str(),
            b"not a form".to_vec(),
            400,
            "invalid_multipart",
        ),
        (
            ct.as_str(),
            audio_form(boundary, "nope"),
            404,
            "model_not_found",
        ),
    ];
    for (ct, body, status, code) in cases {
        let e = expect_error(
            upload("/v1/audio/transcriptions", ct, body).await.unwrap(),
            status,
        )
        .await;
        assert_eq!(e["code"], code);
    }
    assert_eq!(a.requests(), asked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debug_request_gets_the_route_receipt_and_the_access_log_has_it() {
    let (a, b) = (MockVllm::start("a").await, MockVllm::start("b").await);
    b.set_gauges(8, 40, 0.9);
    let r = router(&[&a, &b], FAST).await;
    wait_for("b scraped", Duration::from_secs(5), async || {
        r.instances()
            .await
            .iter()
            .any(|i| i["id"] == "b" && i["waiting"] == 40.0 && i["fresh"] == true)
    })
    .await;
    let c = reqwest::Client::new();
    let ask = |debug: Option<&str>| {
        let mut req = c.post(r.url("/v1/chat/completions")).json(&chat("m"));
        if let Some(d) = debug {
            req = req.header("x-llm-router-debug", d);
        }
        req.send()
    };
    let resp = ask(Some("1")).await.unwrap();
    assert_eq!(resp.status(), 200);
    // 10 x 40 waiting + 3 x 8 running + 100 x 0.9 KV = 514.
    let want = "policy=least_load; chosen=a; candidates=a:0.0:fresh,b:514.0:fresh";
    assert_eq!(header(&resp, "x-llm-router-route"), want);
    // The engine never sees the debug header.
    assert!(a.last_headers().get("x-llm-router-debug").is_none());
    for debug in [None, Some("0")] {
        let resp = ask(debug).await.unwrap();
        assert!(
            resp.headers().get("x-llm-router-route").is_none(),
            "{debug:?}"
        );
    }
    wait_for("the access log", Duration::from_secs(5), async || {
        r.access_log().contains(&format!("route=\"{want}\""))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_adapters_are_discovered_routed_and_loaded_once() {
    let (a, b) = (MockVllm::start("a").await, MockVllm::start("b").await);
    b.set_adapters(&["sql"]);
    for m in [&a, &b] {
        m.state
            .load_delay_ms
            .store(300, std::sync::atomic::Ordering::SeqCst);
    }
    let extra =
        format!("    lora_adapters: {{poet: /adapters/poet, broken: /missing/broken}}\n{FAST}");
    let r = router(&[&a, &b], &extra).await;
    // Discovered from b's /v1/models; listed with its parent.
    wait_for("sql listed", Duration::from_secs(5), async || {
        let list = r.get_json("/v1/models").await;
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "sql" && c["parent"] == "m" && c["status"] == "ready")
    })
    .await;
    let card = r.get_json("/v1/models/poet").await;
    assert_eq!(
        (card["parent"].as_str(), card["status"].as_str()),
        (Some("m"), Some("stopped"))
    );
    for _ in 0..6 {
        let resp = send(&r, Method::POST, "/v1/chat/completions", Some(chat("sql"))).await;
        assert_eq!(
            (
                resp.status().as_u16(),
                header(&resp, "x-llm-router-instance")
            ),
            (200, "b")
        );
        // The adapter's own name reaches the engine: that is how it picks the adapter.
        assert_eq!(b.last_json()["model"], "sql");
    }
    // 20 concurrent first requests for a configured adapter: one load, then all served
    // where it was loaded.
    let first = (0..20).map(|_| send(&r, Method::POST, "/v1/chat/completions", Some(chat("poet"))));
    let answers = futures_util::future::join_all(first).await;
    assert_eq!(a.adapter_loads() + b.adapter_loads(), 1);
    let home = if a.adapters().contains(&"poet".to_string()) {
        "a"
    } else {
        "b"
    };
    for resp in &answers {
        assert_eq!(
            (
                resp.status().as_u16(),
                header(resp, "x-llm-router-instance")
            ),
            (200, home)
        );
    }
    // A load that fails: 503 naming the adapter.
    let e = expect_error(
        send(
            &r,
            Method::POST,
            "/v1/chat/completions",
            Some(chat("broken")),
        )
        .await,
        503,
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("`broken`"), "{e}");
    let e = expect_error(
        send(&r, Method::POST, "/v1/chat/completions", Some(chat("nope"))).await,
        404,
    )
    .await;
    assert_eq!(e["code"], "model_not_found");
    // Loaded and unloaded on demand through the admin API.
    let load = json!({"name": "extra", "path": "/adapters/extra"});
    let resp = send(&r, Method::POST, "/v1/router/models/m/adapters", Some(load)).await;
    assert_eq!(resp.status(), 200);
    let at = resp.json::<Value>().await.unwrap()["instance"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = send(
        &r,
        Method::POST,
        "/v1/chat/completions",
        Some(chat("extra")),
    )
    .await;
    assert_eq!(
        (
            resp.status().as_u16(),
            header(&resp, "x-llm-router-instance")
        ),
        (200, at.as_str())
    );
    let resp = send(
        &r,
        Method::DELETE,
        "/v1/router/models/m/adapters/extra",
        None,
    )
    .await;
    assert_eq!(resp.json::<Value>().await.unwrap()["unloaded_from"], 1);
    wait_for("extra gone", Duration::from_secs(5), async || {
        let list = r.get_json("/v1/models").await;
        !list["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "extra")
    })
    .await;
    let e = expect_error(
        send(
            &r,
            Method::POST,
            "/v1/chat/completions",
            Some(chat("extra")),
        )
        .await,
        404,
    )
    .await;
    assert_eq!(e["code"], "model_not_found");
    let e = expect_error(
        send(
            &r,
            Method::DELETE,
            "/v1/router/models/nope/adapters/x",
            None,
        )
        .await,
        404,
    )
    .await;
    assert_eq!(e["code"], "model_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_admission_queue_sends_the_request_to_the_fallback() {
    let (p, f) = (MockVllm::start("p").await, MockVllm::start("f").await);
    p.set_prefill_ms(1500);
    let r = RouterProc::start(&format!(
        "LLM_engines:\n  p:\n    instances: [{{id: p1, host: 127.0.0.1, port: {}, managed: false}}]\n    model_config: {{model_tag: org/P}}\n    fallback: [f]\n  f:\n    instances: [{{id: f1, host: 127.0.0.1, port: {}, managed: false}}]\n    model_config: {{model_tag: org/F}}\nadmission:\n  models: {{p: {{max_in_flight: 1}}}}\n  queue: {{max_waiting: 1}}\n",
        p.port(),
        f.port()
    ))
    .await;
    let url = r.url("/v1/chat/completions");
    let slow = |url: String| {
        tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .post(url)
                .json(&chat("p"))
                .send()
                .await
                .unwrap();
            (
                resp.status().as_u16(),
                resp.headers()["x-llm-router-model"]
                    .to_str()
                    .unwrap()
                    .to_string(),
            )
        })
    };
    // One at p's engine, one in its queue: the queue is full.
    let first = slow(url.clone());
    wait_for("p busy", Duration::from_secs(5), async || p.requests() == 1).await;
    let second = slow(url.clone());
    wait_for("one queued", Duration::from_secs(5), async || {
        r.get_text("/metrics")
            .await
            .lines()
            .any(|l| l == "llm_router_queue_depth{class=\"standard\",model=\"p\"} 1")
    })
    .await;
    let resp = send(&r, Method::POST, "/v1/chat/completions", Some(chat("p"))).await;
    assert_eq!(
        (resp.status().as_u16(), header(&resp, "x-llm-router-model")),
        (200, "f")
    );
    assert_eq!(f.last_json()["model"], "org/F");
    for done in [first, second] {
        assert_eq!(done.await.unwrap(), (200, "p".to_string()));
    }
}
