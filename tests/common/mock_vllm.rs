//! A mock vLLM server speaking real HTTP on a loopback port chosen by the OS.
//!
//! It answers `/v1/chat/completions`, `/v1/completions` and `/v1/embeddings` in vLLM's
//! shapes (JSON, or SSE with `"stream": true`), the Responses API and Anthropic's Messages
//! API (`mock_apis.rs`), any other POST path with an echo of what it received (path,
//! content type, headers, body) unless it was marked unserved (then FastAPI's 404
//! `{"detail": "Not Found"}`, as for any non-POST), `/metrics` in vLLM V1 text format with
//! settable gauges, and `/health`. Knobs (all live): number of SSE chunks, delay between
//! chunks, delay before the response header (prefill), a forced status. Counters:
//! requests received, the last body and headers, streams completed and streams aborted
//! because the client (the router) went away.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::stream;
use serde_json::{json, Value};

#[path = "mock_apis.rs"]
mod apis;

#[derive(Default)]
pub struct MockState {
    pub name: String,
    pub requests: AtomicUsize,
    pub streams_completed: AtomicUsize,
    pub streams_aborted: AtomicUsize,
    pub last_body: Mutex<Option<Bytes>>,
    pub last_headers: Mutex<Option<HeaderMap>>,
    /// SSE chunks per streamed answer (content deltas before the final chunk).
    pub chunks: AtomicUsize,
    pub chunk_delay_ms: AtomicU64,
    pub prefill_ms: AtomicU64,
    /// 0 = normal; otherwise every inference answer has this status.
    pub forced_status: AtomicUsize,
    pub healthy: AtomicBool,
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    /// KV-cache usage in thousandths (0..=1000).
    pub kv_milli: AtomicU64,
    /// When set, `/metrics` serves this page verbatim (e.g. a real vLLM page).
    pub metrics_page: Mutex<Option<String>>,
    /// As an engine's `max_num_seqs`: at most this many requests run at once, the rest
    /// wait first come, first served (before their prefill). `None`: no limit.
    pub max_running: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// Stored responses (Responses API) by id.
    pub responses: Mutex<HashMap<String, Value>>,
    /// POST paths answered with FastAPI's 404, as by an engine that does not serve them.
    pub unserved: Mutex<Vec<String>>,
    /// LoRA adapters it serves (listed in `/v1/models` with `parent`), the loads it was
    /// asked for, and how long a load takes.
    pub adapters: Mutex<Vec<String>>,
    pub adapter_loads: AtomicUsize,
    pub load_delay_ms: AtomicU64,
}

pub struct MockVllm {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    stop: Arc<tokio::sync::Notify>,
}

impl MockVllm {
    pub async fn start(name: &str) -> MockVllm {
        Self::start_on(0, name).await
    }

    /// A fresh state: healthy, 5 SSE chunks, no delays.
    pub fn new_state(name: &str) -> Arc<MockState> {
        Arc::new(MockState {
            name: name.to_string(),
            chunks: AtomicUsize::new(5),
            healthy: AtomicBool::new(true),
            ..Default::default()
        })
    }

    /// The inference endpoints and `/metrics` (no `/health`), for servers that add their
    /// own health behaviour (the fake engine).
    pub fn inference_routes(state: Arc<MockState>) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/v1/embeddings", post(embeddings))
            .route("/metrics", get(metrics))
            .merge(apis::routes())
            .fallback(echo)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(state)
    }

    /// On a given loopback port (0: the OS picks).
    pub async fn start_on(port: u16, name: &str) -> MockVllm {
        Self::start_at("127.0.0.1", port, name).await
    }

    /// On `ip` (a loopback address such as 127.0.0.2) and `port` (0: the OS picks).
    pub async fn start_at(ip: &str, port: u16, name: &str) -> MockVllm {
        let state = Self::new_state(name);
        let app = Self::inference_routes(state.clone()).merge(
            Router::new()
                .route("/health", get(health))
                .with_state(state.clone()),
        );
        let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(tokio::sync::Notify::new());
        let signal = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { signal.notified().await })
                .await;
        });
        MockVllm { addr, state, stop }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn aborted(&self) -> usize {
        self.state.streams_aborted.load(Ordering::SeqCst)
    }

    pub fn completed(&self) -> usize {
        self.state.streams_completed.load(Ordering::SeqCst)
    }

    pub fn last_body(&self) -> Option<Bytes> {
        self.state.last_body.lock().unwrap().clone()
    }

    pub fn last_json(&self) -> Value {
        serde_json::from_slice(&self.last_body().expect("no request received")).unwrap()
    }

    pub fn last_headers(&self) -> HeaderMap {
        self.state
            .last_headers
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_default()
    }

    pub fn set_sse(&self, chunks: usize, delay_ms: u64) {
        self.state.chunks.store(chunks, Ordering::SeqCst);
        self.state.chunk_delay_ms.store(delay_ms, Ordering::SeqCst);
    }

    pub fn set_prefill_ms(&self, ms: u64) {
        self.state.prefill_ms.store(ms, Ordering::SeqCst);
    }

    /// At most `n` requests run at once; the rest wait their turn (FIFO).
    pub fn set_max_running(&self, n: usize) {
        *self.state.max_running.lock().unwrap() = Some(Arc::new(tokio::sync::Semaphore::new(n)));
    }

    /// POSTs to `path` get FastAPI's 404 from now on.
    pub fn set_unserved(&self, path: &str) {
        self.state.unserved.lock().unwrap().push(path.to_string());
    }

    /// Serves these LoRA adapters from now on.
    pub fn set_adapters(&self, names: &[&str]) {
        *self.state.adapters.lock().unwrap() = names.iter().map(|n| n.to_string()).collect();
    }

    pub fn adapters(&self) -> Vec<String> {
        self.state.adapters.lock().unwrap().clone()
    }

    /// `POST /v1/load_lora_adapter` calls received.
    pub fn adapter_loads(&self) -> usize {
        self.state.adapter_loads.load(Ordering::SeqCst)
    }

    /// The ids of the stored responses this instance holds.
    pub fn stored_responses(&self) -> Vec<String> {
        self.state
            .responses
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    pub fn force_status(&self, status: u16) {
        self.state
            .forced_status
            .store(status as usize, Ordering::SeqCst);
    }

    pub fn set_gauges(&self, running: u64, waiting: u64, kv: f64) {
        self.state.running.store(running, Ordering::SeqCst);
        self.state.waiting.store(waiting, Ordering::SeqCst);
        self.state
            .kv_milli
            .store((kv * 1000.0) as u64, Ordering::SeqCst);
    }

    /// Stops listening and closes idle keep-alive connections (the port is then refused).
    pub fn stop(&self) {
        self.stop.notify_one();
    }
}

impl Drop for MockVllm {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

/// Counts a stream as aborted if dropped before it finished (hyper drops the body or the
/// handler future when the peer closes the connection).
struct StreamWatch {
    state: Arc<MockState>,
    done: bool,
    /// The request's running place (`max_running`), until the answer ends.
    _running: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        let c = if self.done {
            &self.state.streams_completed
        } else {
            &self.state.streams_aborted
        };
        c.fetch_add(1, Ordering::SeqCst);
    }
}

/// Records the request; applies the prefill delay and forced status. `Err` is the
/// response to send instead of a normal answer.
async fn admit_raw(
    s: &Arc<MockState>,
    headers: HeaderMap,
    body: &Bytes,
) -> Result<StreamWatch, Response> {
    s.requests.fetch_add(1, Ordering::SeqCst);
    *s.last_body.lock().unwrap() = Some(body.clone());
    *s.last_headers.lock().unwrap() = Some(headers);
    // Counts as an abort if the client leaves during the prefill.
    let running = s.max_running.lock().unwrap().clone();
    let running = match running {
        Some(sem) => Some(sem.acquire_owned().await.expect("never closed")),
        None => None,
    };
    let mut watch = StreamWatch {
        state: s.clone(),
        done: false,
        _running: running,
    };
    let prefill = s.prefill_ms.load(Ordering::SeqCst);
    if prefill > 0 {
        tokio::time::sleep(Duration::from_millis(prefill)).await;
    }
    let forced = s.forced_status.load(Ordering::SeqCst);
    if forced != 0 {
        watch.done = true;
        let status = StatusCode::from_u16(forced as u16).unwrap();
        let body = json!({"object": "error", "message": format!("forced {forced}"), "type": "MockError", "code": forced});
        return Err((status, axum::Json(body)).into_response());
    }
    Ok(watch)
}

/// [`admit_raw`] for a JSON body (a 400 when it is not JSON).
async fn admit(
    s: &Arc<MockState>,
    headers: HeaderMap,
    body: &Bytes,
) -> Result<(Value, StreamWatch), Response> {
    let mut watch = admit_raw(s, headers, body).await?;
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        watch.done = true;
        (StatusCode::BAD_REQUEST, format!("mock: bad json: {e}")).into_response()
    })?;
    Ok((v, watch))
}

async fn chat(State(s): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    answer(s, headers, body, "chat.completion").await
}

async fn completions(State(s): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    answer(s, headers, body, "text_completion").await
}

async fn answer(s: Arc<MockState>, headers: HeaderMap, body: Bytes, object: &str) -> Response {
    // `x-mock-cut-after: N`: the stream breaks off (connection dropped mid-body) after N
    // token events, as an engine that dies mid-answer.
    let cut_after: Option<usize> = headers
        .get("x-mock-cut-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let (req, mut watch) = match admit(&s, headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let model = req["model"].as_str().unwrap_or("").to_string();
    let chunks = s.chunks.load(Ordering::SeqCst);
    let chat = object == "chat.completion";
    if !req["stream"].as_bool().unwrap_or(false) {
        watch.done = true;
        let text: String = (0..chunks).map(|i| format!("tok{i} ")).collect();
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"})
        } else {
            json!({"index": 0, "text": text, "finish_reason": "length"})
        };
        let body = json!({
            "id": "cmpl-mock", "object": object, "created": 0, "model": model,
            "system_fingerprint": s.name,
            "choices": [choice],
            "usage": {"prompt_tokens": 3, "completion_tokens": chunks, "total_tokens": 3 + chunks}
        });
        return axum::Json(body).into_response();
    }
    let delay = Duration::from_millis(s.chunk_delay_ms.load(Ordering::SeqCst));
    let name = s.name.clone();
    // As vLLM: the usage event only when asked for.
    let include_usage = req["stream_options"]["include_usage"] == json!(true);
    let events = stream::unfold((0usize, watch), move |(i, mut watch)| {
        let model = model.clone();
        let name = name.clone();
        async move {
            if i > chunks + 1 {
                return None;
            }
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if cut_after == Some(i) {
                // After a pause: what was sent before it has been flushed.
                tokio::time::sleep(Duration::from_millis(1)).await;
                return Some((
                    Err(std::io::Error::other("engine died")),
                    (chunks + 2, watch),
                ));
            }
            let event = if i < chunks {
                let delta = if chat {
                    json!({"index": 0, "delta": {"content": format!("tok{i} ")}, "finish_reason": null})
                } else {
                    json!({"index": 0, "text": format!("tok{i} "), "finish_reason": null})
                };
                let obj = if chat {
                    "chat.completion.chunk"
                } else {
                    "text_completion"
                };
                let c = json!({"id": "cmpl-mock", "object": obj, "created": 0, "model": model,
                    "system_fingerprint": name, "choices": [delta]});
                format!("data: {c}\n\n")
            } else if i == chunks && !include_usage {
                // No usage event: straight on to `[DONE]`.
                watch.done = true;
                return Some((
                    Ok(Bytes::from_static(b"data: [DONE]\n\n")),
                    (chunks + 2, watch),
                ));
            } else if i == chunks {
                let c = json!({"id": "cmpl-mock", "object": if chat {"chat.completion.chunk"} else {"text_completion"},
                    "created": 0, "model": model, "choices": [],
                    "usage": {"prompt_tokens": 3, "completion_tokens": chunks, "total_tokens": 3 + chunks}});
                format!("data: {c}\n\n")
            } else {
                watch.done = true;
                "data: [DONE]\n\n".to_string()
            };
            Some((Ok::<_, std::io::Error>(Bytes::from(event)), (i + 1, watch)))
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream; charset=utf-8")
        .header("x-mock-instance", s.name.as_str())
        .body(Body::from_stream(events))
        .unwrap()
}

async fn embeddings(State(s): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (req, mut watch) = match admit(&s, headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    watch.done = true;
    let n = match &req["input"] {
        Value::Array(a) => a.len(),
        _ => 1,
    };
    let data: Vec<Value> = (0..n)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}))
        .collect();
    axum::Json(
        json!({"object": "list", "data": data, "model": req["model"],
        "usage": {"prompt_tokens": n, "total_tokens": n}}),
    )
    .into_response()
}

/// Any other POST path (vLLM's `/tokenize`, `/v1/score`, ...): echoes what it received, as
/// `{"path", "content_type", "body"}` (the body as text), and counts it like the others.
async fn echo(
    State(s): State<Arc<MockState>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let unserved = s.unserved.lock().unwrap().iter().any(|p| p == uri.path());
    if method != axum::http::Method::POST || unserved {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"detail": "Not Found"})),
        )
            .into_response();
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let seen: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
        .collect();
    // Any body (a form, too): echoed as text.
    let mut watch = match admit_raw(&s, headers, &body).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    watch.done = true;
    axum::Json(json!({
        "path": uri.path(),
        "content_type": content_type,
        "headers": seen,
        "body": String::from_utf8_lossy(&body),
    }))
    .into_response()
}

async fn health(State(s): State<Arc<MockState>>) -> StatusCode {
    if s.healthy.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// The subset of vLLM V1's `/metrics` page the router reads, in its real format.
async fn metrics(State(s): State<Arc<MockState>>) -> Response {
    if let Some(page) = s.metrics_page.lock().unwrap().clone() {
        return (
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            page,
        )
            .into_response();
    }
    let running = s.running.load(Ordering::SeqCst);
    let waiting = s.waiting.load(Ordering::SeqCst);
    let kv = s.kv_milli.load(Ordering::SeqCst) as f64 / 1000.0;
    let l = "engine=\"0\",model_name=\"mock\"";
    let text = format!(
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
         # TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{{l}}} {running}.0\n\
         # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{{l}}} {waiting}.0\n\
         # HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n\
         # TYPE vllm:kv_cache_usage_perc gauge\n\
         vllm:kv_cache_usage_perc{{{l}}} {kv}\n\
         # HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n\
         # TYPE vllm:prompt_tokens_total counter\n\
         vllm:prompt_tokens_total{{{l}}} 0.0\n\
         # HELP vllm:generation_tokens_total Number of generation tokens processed.\n\
         # TYPE vllm:generation_tokens_total counter\n\
         vllm:generation_tokens_total{{{l}}} 0.0\n"
    );
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}
