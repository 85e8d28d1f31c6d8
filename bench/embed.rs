//! The embedding service against onnxruntime's own Python API on the same model.onnx
//! (same threads, same tokenizer, batch 32 of ~20-word sentences), batching gain with 64
//! concurrent single-sentence clients, and RSS with the three demo models loaded.
//! `make bench`; needs `make models` and bench/requirements.txt in the test venv.
//! BENCH_EMBED_THREADS sets the inference threads (default 2); BENCH_MODELS the models
//! folder (default ./models; models missing from it are left out of the RSS figure).

#[path = "common.rs"]
mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::BenchRouter;
use serde_json::json;

fn threads() -> usize {
    std::env::var("BENCH_EMBED_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}
const WINDOW: Duration = Duration::from_secs(8);

fn sentences() -> Vec<String> {
    let words = "the quick brown fox jumps over a lazy dog while seven curious students read long books about distant mountains rivers and ancient cities"
        .split(' ')
        .collect::<Vec<_>>();
    (0..32)
        .map(|i| {
            (0..20)
                .map(|k| words[(i * 7 + k * 3) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn python_reference(model_dir: &str, sents: &[String]) -> Option<f64> {
    let py = std::env::var("BENCH_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/llm-router/venv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let mut child = Command::new(py)
        .args([
            "bench/ort_reference.py",
            model_dir,
            &threads().to_string(),
            &WINDOW.as_secs().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()?
        .write_all(sents.join("\n").as_bytes())
        .ok()?;
    let out = child.wait_with_output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Sentences per second of `conc` clients each sending `per_request` sentences.
async fn load(url: &str, model: &str, sents: &[String], conc: usize, per_request: usize) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conc)
        .build()
        .unwrap();
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..conc)
        .map(|w| {
            let (c, url, model) = (client.clone(), url.to_string(), model.to_string());
            let sents = sents.to_vec();
            tokio::spawn(async move {
                let mut n = 0usize;
                let mut k = w;
                while t0.elapsed() < WINDOW {
                    let input: Vec<&String> = (0..per_request)
                        .map(|j| &sents[(k + j) % sents.len()])
                        .collect();
                    k += 1;
                    let r = c
                        .post(&url)
                        .json(&json!({"model": model, "input": input}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    n += per_request;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / t0.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let models = std::env::var("BENCH_MODELS")
        .unwrap_or_else(|_| format!("{}/models", env!("CARGO_MANIFEST_DIR")));
    let threads = threads();
    // One model entry, or nothing when its folder is missing.
    let entry = |name: &str, extra: &str| {
        std::path::Path::new(&format!("{models}/{name}/model.onnx"))
            .exists()
            .then(|| format!("    {name}: {{model_path: {models}/{name}{extra}}}\n"))
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // bge-small is the measured model; the other two demo models count in the RSS figure
    // when present.
    let minilm = entry("all-MiniLM-L6-v2", ", pooling: mean");
    let reranker = entry("ms-marco-MiniLM-L-12-v2", "");
    let loaded = 1 + usize::from(minilm.is_some()) + usize::from(reranker.is_some());
    let embedding = format!(
        "  embedding_models:\n    bge-small-en-v1.5: {{model_path: {models}/bge-small-en-v1.5, pooling: cls}}\n{}",
        minilm.unwrap_or_default()
    );
    let reranker = reranker
        .map(|e| format!("  reranking_models:\n{e}"))
        .unwrap_or_default();
    let r = BenchRouter::start(&format!(
        "embedding_server:\n  host: 127.0.0.1\n  port: {port}\n  threads: {threads}\n  onnxruntime_path: {models}/onnxruntime/libonnxruntime.so.1.31.1\n{embedding}{reranker}"
    ));
    r.wait_ready().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = r.rss_kib();
    let sents = sentences();
    let direct = format!("http://127.0.0.1:{port}/v1/embeddings");
    let ours = load(&direct, "bge-small-en-v1.5", &sents, 1, 32).await;
    let reference = python_reference(&format!("{models}/bge-small-en-v1.5"), &sents);
    // The runtime's own gain from batching (batch 32 vs batch 1, no HTTP): the ceiling for
    // what any batching server can show on this machine with these threads.
    let reference_one = python_reference(&format!("{models}/bge-small-en-v1.5"), &sents[..1]);
    let one = load(&direct, "bge-small-en-v1.5", &sents, 1, 1).await;
    let many = load(&direct, "bge-small-en-v1.5", &sents, 64, 1).await;
    println!("| embedding service (bge-small-en-v1.5, {threads} threads) | sentences/s | ratio |");
    println!("|---|---|---|");
    match reference {
        Some(p) => {
            println!("| onnxruntime Python API, batch 32 | {p:.1} | 1.00x |");
            println!("| llm-router, batch 32 per request | {ours:.1} | {:.2}x |", ours / p);
        }
        None => println!("| llm-router, batch 32 per request (no Python reference: pip install -r bench/requirements.txt) | {ours:.1} | |"),
    }
    if let (Some(p), Some(p1)) = (reference, reference_one) {
        println!(
            "| onnxruntime Python API, batch 1 (batching ceiling: batch 32 / batch 1) | {p1:.1} | {:.2}x |",
            p / p1
        );
    }
    println!("| llm-router, 1 client, 1 sentence per request | {one:.1} | 1.00x |");
    println!(
        "| llm-router, 64 concurrent clients, 1 sentence each | {many:.1} | {:.2}x |",
        many / one
    );
    println!(
        "| router RSS with {loaded} of the three demo models loaded | {:.0} MiB | |",
        rss as f64 / 1024.0
    );
}
