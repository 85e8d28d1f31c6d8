//! The co-hosted embedding/rerank service with the real models of `make models`, reached
//! through the router's main port (and its own port for `/metrics`).

mod common;

use std::path::PathBuf;

use base64::Engine as _;
use common::{dead_port, model_ids, RouterProc};
use serde_json::{json, Value};

fn models() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    assert!(
        d.join("onnxruntime/libonnxruntime.so.1.31.1").exists(),
        "models/ is empty: run `make models` (make test does)"
    );
    d
}

/// A router whose only models are the three demo embedding/rerank models.
async fn start(extra: &str) -> (RouterProc, u16) {
    let d = models();
    let port = dead_port();
    let m = |name: &str, pooling: &str| {
        format!(
            "    {name}:\n      model_path: \"{0}\"\n      tokenizer_path: \"{0}\"\n      max_length: 512\n      pooling: {pooling}\n",
            d.join(name).display()
        )
    };
    let yaml = format!(
        "embedding_server:\n  host: 127.0.0.1\n  port: {port}\n  onnxruntime_path: \"{}\"\n  threads: 2\n{extra}  embedding_models:\n{}{}  reranking_models:\n{}",
        d.join("onnxruntime/libonnxruntime.so.1.31.1").display(),
        m("bge-small-en-v1.5", "cls"),
        m("all-MiniLM-L6-v2", "mean"),
        m("ms-marco-MiniLM-L-12-v2", "cls"),
    );
    (RouterProc::start(&yaml).await, port)
}

async fn post(r: &RouterProc, path: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(r.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The service answers a plain embedding request.
async fn still_serving(r: &RouterProc) {
    let (st, v) = post(
        r,
        "/v1/embeddings",
        json!({"model": "bge-small-en-v1.5", "input": "ok"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
}

fn vector(v: &Value) -> Vec<f32> {
    v["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

const SENTENCES: [&str; 4] = [
    "The cat sits on the mat.",
    "A cat is sitting on a rug.",
    "Stock markets fell sharply today.",
    "The weather in Paris is rainy in November.",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_right_and_batching_does_not_change_them() {
    let (r, _) = start("").await;
    let (st, v) = post(
        &r,
        "/v1/embeddings",
        json!({"model": "bge-small-en-v1.5", "input": SENTENCES}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 4);
    let vecs: Vec<Vec<f32>> = data.iter().map(vector).collect();
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["index"], i);
        assert_eq!(d["object"], "embedding");
    }
    assert_eq!(vecs[0].len(), 384);
    let norm: f32 = vecs[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "unit norm: {norm}");
    assert!(cos(&vecs[0], &vecs[1]) > cos(&vecs[0], &vecs[2]) + 0.2);
    assert!(
        v["usage"]["prompt_tokens"].as_u64().unwrap() > 20,
        "{}",
        v["usage"]
    );

    // The same text alone and inside a batch of 32 (with other lengths) agree.
    let mut batch: Vec<String> = (0..31)
        .map(|i| {
            format!(
                "{} number {i} of a longer filler sentence",
                SENTENCES[i % 4]
            )
        })
        .collect();
    batch.insert(17, SENTENCES[2].to_string());
    let (_, alone) = post(
        &r,
        "/v1/embeddings",
        json!({"model": "bge-small-en-v1.5", "input": SENTENCES[2]}),
    )
    .await;
    let (_, many) = post(
        &r,
        "/v1/embeddings",
        json!({"model": "bge-small-en-v1.5", "input": batch}),
    )
    .await;
    let c = cos(&vector(&alone["data"][0]), &vector(&many["data"][17]));
    assert!(c > 0.98, "alone vs in batch: {c}");

    // base64 is the float vector, little-endian f32.
    let (_, b64) = post(
        &r,
        "/v1/embeddings",
        json!({"model": "bge-small-en-v1.5", "input": SENTENCES, "encoding_format": "base64"}),
    )
    .await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][1]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, vecs[1]);

    // Mean pooling model; token-id input.
    let (st, v) = post(
        &r,
        "/v1/embeddings",
        json!({"model": "all-MiniLM-L6-v2", "input": [[101, 7592, 2088, 102]]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(vector(&v["data"][0]).len(), 384);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_in_all_three_shapes() {
    let (r, _) = start("").await;
    let q = "How many people live in Berlin?";
    let docs = [
        "New York City is famous for the Metropolitan Museum of Art.",
        "Berlin is well known for its museums.",
        "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 square kilometers.",
        "The capital of France is Paris.",
    ];
    // Cohere/Jina shape.
    let (st, v) = post(&r, "/v1/rerank", json!({"model": "ms-marco-MiniLM-L-12-v2", "query": q, "documents": docs, "top_n": 2, "return_documents": true})).await;
    assert_eq!(st, 200, "{v}");
    let res = v["results"].as_array().unwrap();
    assert_eq!(res.len(), 2);
    assert_eq!(res[0]["index"], 2);
    assert_eq!(res[0]["document"]["text"], docs[2]);
    let s0 = res[0]["relevance_score"].as_f64().unwrap();
    assert!(s0 > 0.9 && s0 <= 1.0, "sigmoid probability: {s0}");
    assert!(res[1]["relevance_score"].as_f64().unwrap() < s0);

    // text-embeddings-inference shape (no model: the reranker is found).
    let (st, v) = post(
        &r,
        "/rerank",
        json!({"query": q, "texts": docs, "raw_scores": true, "return_text": true}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 4);
    assert_eq!(arr[0]["index"], 2);
    assert!(
        arr[0]["score"].as_f64().unwrap() > 5.0,
        "raw logit: {}",
        arr[0]
    );
    assert_eq!(arr[0]["text"], docs[2]);

    // The old router's call: /v1/embeddings with a reranker and `query`.
    let (st, v) = post(
        &r,
        "/v1/embeddings",
        json!({"model": "ms-marco-MiniLM-L-12-v2", "input": docs, "query": q}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data[2]["object"], "reranking");
    let best = (0..4).max_by(|&a, &b| {
        data[a]["embedding"]
            .as_f64()
            .unwrap()
            .total_cmp(&data[b]["embedding"].as_f64().unwrap())
    });
    assert_eq!(best, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_clear_errors() {
    let (r, _) = start("  max_client_batch_size: 8\n").await;
    let cases = [
        (
            "/v1/embeddings",
            json!({"model": "bge-small-en-v1.5", "input": ""}),
            400,
            "must not be empty",
        ),
        (
            "/v1/embeddings",
            json!({"model": "bge-small-en-v1.5", "input": []}),
            400,
            "empty list",
        ),
        (
            "/v1/embeddings",
            json!({"model": "bge-small-en-v1.5", "input": ["a", 3]}),
            400,
            "input[1]",
        ),
        (
            "/v1/embeddings",
            json!({"model": "bge-small-en-v1.5", "input": vec!["x"; 9]}),
            413,
            "at most 8",
        ),
        (
            "/v1/embeddings",
            json!({"model": "ms-marco-MiniLM-L-12-v2", "input": ["a"]}),
            400,
            "is a reranker",
        ),
        (
            "/v1/rerank",
            json!({"model": "bge-small-en-v1.5", "query": "q", "documents": ["a"]}),
            400,
            "is an embedding model and cannot",
        ),
        (
            "/v1/embeddings",
            json!({"model": "nope", "input": "a"}),
            404,
            "does not exist",
        ),
        (
            "/v1/rerank",
            json!({"model": "ms-marco-MiniLM-L-12-v2", "documents": ["a"]}),
            400,
            "query",
        ),
        (
            "/v1/embeddings",
            json!({"model": "bge-small-en-v1.5", "input": "a", "encoding_format": "hex"}),
            400,
            "encoding_format",
        ),
    ];
    for (path, body, status, text) in cases {
        let (st, v) = post(&r, path, body.clone()).await;
        assert_eq!(st, status, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(text), "{body}: {msg}");
    }
    // Still serving.
    still_serving(&r).await;
}

/// Before the check, one such id reached ONNX Runtime and failed its whole batch with a
/// 500: every request queued with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_id_outside_the_vocabulary_is_a_400_and_spares_its_batch() {
    let (r, _) = start("").await;
    let c = reqwest::Client::new();
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let (c, url) = (c.clone(), r.url("/v1/embeddings"));
            let input = match i % 3 {
                0 => json!([[101, 2000, 102], [101, 2054, 30522, 102]]),
                1 => json!([101, 7592, 99999]),
                _ => json!([[101, 2000, 102], [101, 7592, 2088, 102]]),
            };
            tokio::spawn(async move {
                let resp = c
                    .post(url)
                    .json(&json!({"model": "bge-small-en-v1.5", "input": input}))
                    .send()
                    .await
                    .unwrap();
                let st = resp.status().as_u16();
                (i, st, resp.json::<Value>().await.unwrap())
            })
        })
        .collect();
    for t in tasks {
        let (i, st, v) = t.await.unwrap();
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        match i % 3 {
            0 => {
                assert_eq!(st, 400, "{v}");
                assert!(msg.contains("`input[1][2]` is token id 30522"), "{msg}");
                assert!(msg.contains("0..30521"), "{msg}");
                assert_eq!(v["error"]["param"], "input");
            }
            1 => {
                assert_eq!(st, 400, "{v}");
                assert!(msg.contains("`input[2]` is token id 99999"), "{msg}");
            }
            _ => assert_eq!(
                (st, v["data"].as_array().map(Vec::len)),
                (200, Some(2)),
                "{v}"
            ),
        }
    }
    let health = reqwest::get(r.url("/health")).await.unwrap();
    assert_eq!(health.status(), 200);
}

/// The embedding service's `/health` on its own port: every model with its queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_each_model_and_the_token_bound_refuses_what_can_never_run() {
    let (r, embed_port) = start("  max_queue_tokens: 64\n").await;
    let (st, v) = post(
        &r,
        "/v1/embeddings",
        json!({"model": "bge-small-en-v1.5", "input": "word ".repeat(100)}),
    )
    .await;
    assert_eq!(st, 413, "{v}");
    assert_eq!(v["error"]["code"], "too_many_tokens");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("102 tokens") && msg.contains("max_queue_tokens"),
        "{msg}"
    );
    still_serving(&r).await;
    let h: Value = reqwest::get(format!("http://127.0.0.1:{embed_port}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok", "{h}");
    let models = h["models"].as_object().unwrap();
    assert_eq!(models.len(), 3, "{h}");
    assert_eq!(models["ms-marco-MiniLM-L-12-v2"]["kind"], "rerank");
    for (name, m) in models {
        assert_eq!(m["status"], "ready", "{name}: {h}");
        assert_eq!(m["queued_requests"], 0, "{name}: {h}");
        assert_eq!(m["queued_tokens"], 0, "{name}: {h}");
        assert_eq!(m["failed_requests"], 0, "{name}: {h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched() {
    let (r, embed_port) = start("").await;
    let c = reqwest::Client::new();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (c, url) = (c.clone(), r.url("/v1/embeddings"));
            tokio::spawn(async move {
                let body = json!({"model": "all-MiniLM-L6-v2", "input": format!("sentence number {i} about batching")});
                c.post(url).json(&body).send().await.unwrap().status().as_u16()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let metrics = service_metrics(embed_port).await;
    let read = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains("all-MiniLM-L6-v2"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let (sum, count) = (
        read("llm_router_embed_batch_size_sum"),
        read("llm_router_embed_batch_size_count"),
    );
    assert_eq!(sum, 64.0, "{metrics}");
    assert_eq!(read("llm_router_embed_items_total"), 64.0, "{metrics}");
    assert!(
        count < 64.0,
        "64 requests ran in {count} batches: no batching"
    );
    eprintln!("64 concurrent requests in {count} batches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_server_overloaded_and_recovers() {
    let (r, _) = start("  max_queue: 1\n  max_batch_size: 1\n").await;
    let c = reqwest::Client::new();
    let long = "a fairly long sentence to make each inference take a little while ".repeat(20);
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let (c, url, long) = (c.clone(), r.url("/v1/embeddings"), long.clone());
            tokio::spawn(async move {
                let resp = c
                    .post(url)
                    .json(&json!({"model": "bge-small-en-v1.5", "input": [long.clone(), long]}))
                    .send()
                    .await
                    .unwrap();
                let st = resp.status().as_u16();
                let retry = resp.headers().get("retry-after").is_some();
                (st, retry)
            })
        })
        .collect();
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert!(codes.iter().any(|c| c.0 == 503), "{codes:?}");
    assert!(codes.iter().any(|c| c.0 == 200), "{codes:?}");
    assert!(
        codes.iter().all(|c| c.0 == 200 || (c.0 == 503 && c.1)),
        "{codes:?}"
    );
    still_serving(&r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_includes_embedding_and_rerank_models() {
    let (r, _) = start("").await;
    let v = r.get_json("/v1/models").await;
    let ids = model_ids(&v);
    assert_eq!(
        ids,
        [
            "bge-small-en-v1.5",
            "all-MiniLM-L6-v2",
            "ms-marco-MiniLM-L-12-v2"
        ]
    );
}

#[test]
fn a_missing_onnxruntime_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "embedding_server:\n  port: 1\n  onnxruntime_path: /nonexistent/libonnxruntime.so\n  embedding_models:\n    e: {model_path: /x}\n",
    )
    .unwrap();
    let out = common::run_bin(&["--config", cfg.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent/libonnxruntime.so"), "{err}");
    assert!(
        err.contains("ORT_DYLIB_PATH") && err.contains("onnxruntime_path"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_clients_that_left_are_dropped_from_the_queue() {
    let (_r, embed_port) = start("").await;
    let url = format!("http://127.0.0.1:{embed_port}/v1/embeddings");
    let c = reqwest::Client::new();
    // Keep the model busy for a while...
    let long = "a fairly long sentence to make each inference take a little while ".repeat(30);
    let busy = {
        let (c, url) = (c.clone(), url.clone());
        tokio::spawn(async move {
            let input = vec![long; 64];
            c.post(url)
                .json(&json!({"model": "ms-marco-MiniLM-L-12-v2", "query": "q", "input": input}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // ...while 10 clients queue and give up.
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(150))
        .build()
        .unwrap();
    for i in 0..10 {
        let r = impatient
            .post(&url)
            .json(&json!({"model": "ms-marco-MiniLM-L-12-v2", "query": "q", "input": [format!("doc {i}")]}))
            .send()
            .await;
        assert!(r.is_err(), "expected a client timeout while queued");
    }
    assert_eq!(busy.await.unwrap(), 200);
    let (st, _) = {
        let resp = c
            .post(&url)
            .json(&json!({"model": "ms-marco-MiniLM-L-12-v2", "query": "q", "input": ["probe"]}))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), ())
    };
    assert_eq!(st, 200);
    let metrics = service_metrics(embed_port).await;
    let sum: f64 = metrics
        .lines()
        .find(|l| l.starts_with("llm_router_embed_batch_size_sum") && l.contains("ms-marco"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(sum, 65.0, "the 10 abandoned requests were computed anyway");
}

/// The embedding service's own `/metrics` page.
async fn service_metrics(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
