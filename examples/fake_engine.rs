//! A fake engine for the supervisor tests: serves `/health` and `/metrics`, records its
//! argv and environment, and can be slow to become ready or crash on request.
//!
//! Reads `--host H --port P` from its argv (any other arguments are only recorded).
//! Env: `FAKE_RECORD` (append one JSON line `{pid, argv, env}` per start),
//! `FAKE_READY_AFTER_MS` (`/health` answers 503 until then), `FAKE_CHILD=1` (spawn a
//! `sleep` child in the same process group, like vLLM's EngineCore).
//! `POST /crash` exits at once with status 3; `POST /sick` makes `/health` answer 503
//! from then on (a hung engine); `GET /health_checks` says how many `/health` requests
//! it has answered.
//! Inference endpoints and `/metrics` are the mock vLLM's (`tests/common/mock_vllm.rs`),
//! answering with `system_fingerprint` = the engine's pid; `FAKE_SSE=CHUNKS,DELAY_MS` sets
//! the length and pace of streamed answers (and the tokens of non-streamed ones).

#[path = "../tests/common/mock_vllm.rs"]
mod mock_vllm;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    let host = arg("--host").unwrap_or_else(|| "127.0.0.1".into());
    let port: u16 = arg("--port").and_then(|p| p.parse().ok()).unwrap_or(0);
    if let Ok(path) = std::env::var("FAKE_RECORD") {
        let env: serde_json::Map<String, serde_json::Value> = std::env::vars()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let line =
            serde_json::json!({"pid": std::process::id(), "argv": argv, "env": env, "t_ms": ms});
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            // One write(2) per line: engines starting together append to the same file.
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
    let _child = (std::env::var("FAKE_CHILD").as_deref() == Ok("1"))
        .then(|| std::process::Command::new("sleep").arg("600").spawn().ok());
    let ready_after = Duration::from_millis(
        std::env::var("FAKE_READY_AFTER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let mock = mock_vllm::MockVllm::new_state(&std::process::id().to_string());
    if let Some((chunks, delay)) = std::env::var("FAKE_SSE")
        .ok()
        .and_then(|v| {
            v.split_once(',')
                .map(|(c, d)| (c.parse().ok(), d.parse().ok()))
        })
        .and_then(|(c, d)| c.zip(d))
    {
        mock.chunks
            .store(chunks, std::sync::atomic::Ordering::SeqCst);
        mock.chunk_delay_ms
            .store(delay, std::sync::atomic::Ordering::SeqCst);
    }
    let t0 = Instant::now();
    static SICK: AtomicBool = AtomicBool::new(false);
    static CHECKS: AtomicU64 = AtomicU64::new(0);
    let app = Router::new()
        .route(
            "/health_checks",
            get(|| async { CHECKS.load(Ordering::SeqCst).to_string() }),
        )
        .route(
            "/health",
            get(move || async move {
                CHECKS.fetch_add(1, Ordering::SeqCst);
                if t0.elapsed() >= ready_after && !SICK.load(Ordering::SeqCst) {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }),
        )
        .route("/crash", post(crash))
        .route(
            "/sick",
            post(|| async {
                SICK.store(true, Ordering::SeqCst);
                StatusCode::OK
            }),
        )
        .merge(mock_vllm::MockVllm::inference_routes(mock));
    let listener = tokio::net::TcpListener::bind((host.as_str(), port))
        .await
        .expect("bind");
    eprintln!(
        "fake engine {} listening on {}",
        std::process::id(),
        listener.local_addr().unwrap()
    );
    axum::serve(listener, app).await.unwrap();
}

async fn crash() -> StatusCode {
    std::process::exit(3)
}
