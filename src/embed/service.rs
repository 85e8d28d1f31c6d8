//! The embedding/rerank HTTP service (a Pingora `ServeHttp` app on its own listener):
//! OpenAI `/v1/embeddings` (also the old router's rerank call), Cohere/Jina-style
//! `/v1/rerank`, text-embeddings-inference-style `/rerank`, `/v1/models`, `/health`,
//! `/metrics`.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use base64::Engine as _;
use http::Response;
use indexmap::IndexMap;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use serde_json::{json, Value};
use tokenizers::Encoding;

use super::batch::{BatchOptions, Batcher, SubmitError};
use super::model::{init_runtime, Kind, ModelSpec, OnnxModel, OutOfVocabulary};
use crate::config::ClientTimeouts;
use crate::config::{EmbedServerOptions, ModelConfig, ModelKind};
use crate::http::budget::{BodyBudget, Reserved};
use crate::http::request_body::{self, parse_off_thread};
use crate::http::routes::Routes;
use crate::http::{error_response, json_response, ApiError};
use crate::telemetry::metrics::{gather, page_response};

const MAX_BODY: u64 = 32 * 1024 * 1024;

pub struct EmbedService {
    models: IndexMap<String, Served>,
    max_client_batch_size: usize,
    routes: Routes<Route>,
    /// The client-side time limits of the main port's defaults.
    timeouts: ClientTimeouts,
    /// No budget across requests beyond each body's own limit ([`MAX_BODY`]).
    bodies: BodyBudget,
}

/// One loaded model and the queue in front of it.
struct Served {
    model: Arc<OnnxModel>,
    queue: Batcher,
}

impl EmbedService {
    /// Loads ONNX Runtime and every embedding/rerank model; any failure is one message.
    pub fn load(opts: &EmbedServerOptions, models: &[ModelConfig]) -> Result<EmbedService, String> {
        init_runtime(&opts.onnxruntime_path)?;
        let batch = BatchOptions {
            max_batch_tokens: opts.max_batch_tokens,
            max_batch_size: opts.max_batch_size,
            max_queue: opts.max_queue,
            max_queue_tokens: opts.max_queue_tokens,
        };
        let mut loaded = IndexMap::new();
        for m in models {
            let kind = match m.kind {
                ModelKind::Embedding => Kind::Embedding,
                ModelKind::Rerank => Kind::Rerank,
                ModelKind::Llm => continue,
            };
            let Some(e) = &m.embed else { continue };
            // The CUDA execution provider needs onnxruntime-gpu's library; the CPU build
            // from `make models` has neither CUDA nor fp16 kernels worth using.
            if e.use_gpu {
                tracing::warn!(model = %m.name, "use_gpu: no CUDA execution provider in this ONNX Runtime; running on CPU");
            }
            if e.use_float16 {
                tracing::warn!(model = %m.name, "use_float16: ignored on CPU; running the model as exported");
            }
            let spec = ModelSpec {
                name: m.name.clone(),
                kind,
                model_path: e.model_path.clone().into(),
                tokenizer_path: e
                    .tokenizer_path
                    .clone()
                    .unwrap_or_else(|| e.model_path.clone())
                    .into(),
                max_length: e.max_length.unwrap_or(512) as usize,
                pooling: e.pooling,
                normalize: e.normalize,
                threads: opts.threads,
            };
            let model = Arc::new(OnnxModel::load(&spec)?);
            tracing::info!(model = %m.name, kind = ?kind, pooling = ?model.pooling, "embedding model loaded");
            let queue = Batcher::new(&m.name, model.clone(), batch);
            loaded.insert(m.name.clone(), Served { model, queue });
        }
        Ok(EmbedService {
            models: loaded,
            max_client_batch_size: opts.max_client_batch_size,
            routes: routes(),
            timeouts: ClientTimeouts::default(),
            bodies: BodyBudget::new(u64::MAX, 1),
        })
    }

    fn model(&self, name: &str) -> Result<&Served, ApiError> {
        self.models.get(name).ok_or_else(|| {
            let names: Vec<&str> = self.models.keys().map(|s| s.as_str()).collect();
            ApiError::model_not_found(name, &names)
        })
    }

    fn first_reranker(&self) -> Result<&Served, ApiError> {
        self.models
            .values()
            .find(|b| b.model.kind == Kind::Rerank)
            .ok_or_else(|| {
                ApiError::bad_request("model_not_found", "No reranking model is configured")
            })
    }

    async fn run(&self, b: &Served, items: Vec<Encoding>) -> Result<Vec<Vec<f32>>, ApiError> {
        b.queue.submit(items).await.map_err(|e| match e {
            SubmitError::Overloaded => ApiError::server_overloaded(
                format!(
                    "Model `{}` is busy: its queue is full, retry shortly",
                    b.model.name
                ),
                1,
            ),
            SubmitError::TooLarge { tokens, max } => ApiError::too_many_tokens(tokens, max),
            SubmitError::Failed(e) => ApiError::internal(format!("inference failed: {e}")),
        })
    }

    /// `POST /v1/embeddings`; with a reranker model and `query`, the old router's rerank.
    async fn embeddings(&self, v: &Value) -> Result<Value, ApiError> {
        let name = model_name(v)?;
        let b = self.model(name)?;
        let texts = inputs(&v["input"], self.max_client_batch_size)?;
        if b.model.kind == Kind::Rerank {
            let Some(query) = v["query"].as_str() else {
                return Err(ApiError::bad_request(
                    "model_not_supported",
                    format!("Model `{name}` is a reranker: pass `query` with the documents as `input`, or use /v1/rerank"),
                ));
            };
            let docs = texts.into_strings("input")?;
            let (scores, tokens) = self.scores(b, query, &docs).await?;
            let data: Vec<Value> = scores
                .iter()
                .enumerate()
                .map(|(i, s)| json!({"object": "reranking", "index": i, "embedding": sigmoid(*s)}))
                .collect();
            return Ok(
                json!({"object": "list", "data": data, "model": name, "usage": usage(tokens)}),
            );
        }
        let base64 = match v["encoding_format"].as_str() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::bad_request(
                    "invalid_encoding_format",
                    format!("`encoding_format` must be `float` or `base64`, got `{other}`"),
                )
                .with_param("encoding_format"))
            }
        };
        let encs = texts.encode(&b.model)?;
        let tokens: usize = encs.iter().map(|e| e.len()).sum();
        let vectors = self.run(b, encs).await?;
        let data: Vec<Value> = vectors
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let embedding = if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(v)
                };
                json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect();
        Ok(json!({"object": "list", "data": data, "model": name, "usage": usage(tokens)}))
    }

    /// Raw relevance logits of `docs` for `query`, with the tokens counted.
    async fn scores(
        &self,
        b: &Served,
        query: &str,
        docs: &[String],
    ) -> Result<(Vec<f32>, usize), ApiError> {
        let encs = docs
            .iter()
            .map(|d| b.model.encode(query, Some(d)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::bad_request("invalid_input", e))?;
        let tokens = encs.iter().map(|e| e.len()).sum();
        let out = self.run(b, encs).await?;
        Ok((
            out.into_iter()
                .map(|v| v.first().copied().unwrap_or(f32::NAN))
                .collect(),
            tokens,
        ))
    }

    fn reranker<'a>(&'a self, v: &Value) -> Result<&'a Served, ApiError> {
        let b = match v["model"].as_str() {
            Some(name) => self.model(name)?,
            None => self.first_reranker()?,
        };
        if b.model.kind != Kind::Rerank {
            return Err(ApiError::bad_request(
                "model_not_supported",
                format!(
                    "Model `{}` is an embedding model and cannot rerank; use a reranking model",
                    b.model.name
                ),
            )
            .with_param("model"));
        }
        Ok(b)
    }

    /// `/v1/rerank` (Cohere/Jina shape) or `/rerank` with `texts` (TEI shape).
    async fn rerank(&self, v: &Value) -> Result<Value, ApiError> {
        let b = self.reranker(v)?;
        let query = v["query"].as_str().ok_or_else(|| {
            ApiError::bad_request(
                "missing_query",
                "Missing required parameter: `query` (a string)",
            )
            .with_param("query")
        })?;
        let tei = v.get("texts").is_some();
        let docs = documents(v, if tei { "texts" } else { "documents" })?;
        if docs.len() > self.max_client_batch_size {
            return Err(ApiError::too_many_items(
                docs.len(),
                self.max_client_batch_size,
            ));
        }
        let (raw, tokens) = self.scores(b, query, &docs).await?;
        let mut order: Vec<usize> = (0..docs.len()).collect();
        order.sort_by(|&a, &c| raw[c].total_cmp(&raw[a]));
        if tei {
            let raw_scores = v["raw_scores"].as_bool().unwrap_or(false);
            let with_text = v["return_text"].as_bool().unwrap_or(false);
            let out: Vec<Value> = order
                .iter()
                .map(|&i| {
                    let score = if raw_scores { raw[i] } else { sigmoid(raw[i]) };
                    let mut r = json!({"index": i, "score": score});
                    if with_text {
                        r["text"] = json!(docs[i]);
                    }
                    r
                })
                .collect();
            return Ok(Value::Array(out));
        }
        let top_n = v["top_n"]
            .as_u64()
            .map(|n| n as usize)
            .unwrap_or(docs.len());
        let with_docs = v["return_documents"].as_bool().unwrap_or(false);
        let results: Vec<Value> = order
            .iter()
            .take(top_n)
            .map(|&i| {
                let mut r = json!({"index": i, "relevance_score": sigmoid(raw[i])});
                if with_docs {
                    r["document"] = json!({"text": docs[i]});
                }
                r
            })
            .collect();
        Ok(
            json!({"id": format!("rerank-{}", crate::http::request_id::new_id()), "model": b.model.name, "results": results, "usage": {"total_tokens": tokens}}),
        )
    }

    /// `GET /health`: each model's state and queue. 200 while every model serves, and
    /// while some do ("degraded": the router's health check must not take the working
    /// models out with a broken one); 503 when none does.
    fn health(&self) -> Response<Vec<u8>> {
        let mut models = serde_json::Map::new();
        let mut serving = 0;
        for s in self.models.values() {
            let q = s.queue.state();
            serving += usize::from(q.serving);
            models.insert(
                s.model.name.clone(),
                json!({
                    "kind": kind_name(s.model.kind),
                    "status": if q.serving { "ready" } else { "stopped" },
                    "queued_requests": q.queued_requests,
                    "queued_tokens": q.queued_tokens,
                    "failed_requests": q.failed_requests,
                }),
            );
        }
        let (code, status) = match serving {
            n if n == self.models.len() => (200, "ok"),
            0 => (503, "down"),
            _ => (200, "degraded"),
        };
        json_response(
            code,
            json!({"status": status, "models": models})
                .to_string()
                .into_bytes(),
        )
    }

    fn models_list(&self) -> Value {
        let data: Vec<Value> = self
            .models
            .values()
            .map(|b| {
                json!({"id": b.model.name, "object": "model", "owned_by": "llm-router",
                "kind": kind_name(b.model.kind)})
            })
            .collect();
        json!({"object": "list", "data": data})
    }
}

/// The documents of a rerank request (`field`: `documents` or TEI's `texts`): strings or
/// `{"text": string}` objects.
fn documents(v: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    match &v[field] {
        Value::Array(a) if a.is_empty() => Err(ApiError::bad_request(
            "invalid_input",
            format!("`{field}` must not be empty"),
        )),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Value::String(s) => Ok(s.clone()),
                Value::Object(o) if o.get("text").is_some_and(Value::is_string) => {
                    Ok(o["text"].as_str().unwrap_or_default().to_string())
                }
                _ => Err(ApiError::bad_request(
                    "invalid_input",
                    format!("`{field}[{i}]` must be a string or {{\"text\": string}}"),
                )),
            })
            .collect(),
        _ => Err(ApiError::bad_request(
            "invalid_input",
            format!("`{field}` must be a list of documents"),
        )
        .with_param("documents")),
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Rerank => "rerank",
        Kind::Embedding => "embedding",
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn usage(tokens: usize) -> Value {
    json!({"prompt_tokens": tokens, "total_tokens": tokens})
}

fn model_name(v: &Value) -> Result<&str, ApiError> {
    v["model"].as_str().ok_or_else(|| {
        ApiError::bad_request(
            "missing_model",
            "Missing required parameter: `model` (a string)",
        )
        .with_param("model")
    })
}

/// `input` in any of OpenAI's forms.
enum Inputs {
    Texts(Vec<String>),
    /// Lists of token ids; `flat`: the client sent one list (`input: [1, 2]`), not a
    /// list of lists, and errors name positions in it.
    Ids {
        ids: Vec<Vec<u32>>,
        flat: bool,
    },
}

impl Inputs {
    fn into_strings(self, field: &str) -> Result<Vec<String>, ApiError> {
        match self {
            Inputs::Texts(t) => Ok(t),
            Inputs::Ids { .. } => Err(ApiError::bad_request(
                "invalid_input",
                format!("`{field}` must be strings for reranking"),
            )),
        }
    }

    fn encode(self, m: &OnnxModel) -> Result<Vec<Encoding>, ApiError> {
        match self {
            Inputs::Texts(t) => t
                .iter()
                .map(|s| m.encode(s, None))
                .collect::<Result<_, _>>()
                .map_err(|e| ApiError::bad_request("invalid_input", e)),
            Inputs::Ids { ids, flat } => ids
                .iter()
                .enumerate()
                .map(|(i, ids)| {
                    m.encode_ids(ids)
                        .map_err(|e| out_of_vocabulary(&m.name, i, flat, e))
                })
                .collect(),
        }
    }
}

/// The 400 for a token id the model has no embedding for, naming where it is.
fn out_of_vocabulary(model: &str, input: usize, flat: bool, e: OutOfVocabulary) -> ApiError {
    let at = if flat {
        format!("`input[{}]`", e.position)
    } else {
        format!("`input[{input}][{}]`", e.position)
    };
    ApiError::bad_request(
        "invalid_input",
        format!(
            "{at} is token id {}, outside the vocabulary of `{model}` (ids 0..{})",
            e.id,
            e.vocab - 1
        ),
    )
    .with_param("input")
}

/// Validates `input`: a string, strings, token ids, or lists of token ids.
fn inputs(v: &Value, max_items: usize) -> Result<Inputs, ApiError> {
    let bad = |msg: String| Err(ApiError::bad_request("invalid_input", msg).with_param("input"));
    let ids = |a: &Vec<Value>| -> Option<Vec<u32>> {
        a.iter()
            .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect()
    };
    let items = match v {
        Value::String(s) if s.is_empty() => return bad("`input` must not be empty".into()),
        Value::String(s) => return Ok(Inputs::Texts(vec![s.clone()])),
        Value::Array(a) if a.is_empty() => return bad("`input` must not be an empty list".into()),
        Value::Array(a) => a,
        Value::Null => return bad("Missing required parameter: `input`".into()),
        _ => {
            return bad("`input` must be a string, a list of strings or a list of token ids".into())
        }
    };
    if items.len() > max_items {
        return Err(ApiError::too_many_items(items.len(), max_items));
    }
    if items.iter().all(Value::is_number) {
        return match ids(items) {
            Some(i) => Ok(Inputs::Ids {
                ids: vec![i],
                flat: true,
            }),
            None => bad("token ids must be integers in 0..2^32".into()),
        };
    }
    if items.iter().all(Value::is_array) {
        return items
            .iter()
            .enumerate()
            .map(|(i, x)| match x.as_array().and_then(ids) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(ApiError::bad_request(
                    "invalid_input",
                    format!("`input[{i}]` must be a non-empty list of token ids"),
                )
                .with_param("input")),
            })
            .collect::<Result<_, _>>()
            .map(|ids| Inputs::Ids { ids, flat: false });
    }
    items
        .iter()
        .enumerate()
        .map(|(i, x)| match x {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            Value::String(_) => Err(ApiError::bad_request(
                "invalid_input",
                format!("`input[{i}]` is an empty string"),
            )
            .with_param("input")),
            _ => Err(ApiError::bad_request(
                "invalid_input",
                format!("`input[{i}]` must be a string"),
            )
            .with_param("input")),
        })
        .collect::<Result<_, _>>()
        .map(Inputs::Texts)
}

/// Runs `work` unless the client hangs up first: then `work` is dropped, and with it the
/// request's place in the batching queue (the inference thread skips it).
async fn until_client_leaves<F>(s: &mut ServerSession, work: F) -> Result<Value, ApiError>
where
    F: std::future::Future<Output = Result<Value, ApiError>>,
{
    tokio::select! {
        r = work => r,
        _ = s.read_body_or_idle(true) => Err(ApiError::bad_request("client_gone", "client closed the connection")),
    }
}

/// The service as Pingora serves it: the models load after the process has forked into
/// a daemon (ONNX Runtime's and the batchers' threads would not survive the fork), in
/// [`EmbedLoader`], which the listener depends on.
#[derive(Clone, Default)]
pub struct EmbedApp(Arc<OnceLock<EmbedService>>);

/// Loads the embedding models as a background service and reports ready once they are.
pub struct EmbedLoader {
    app: EmbedApp,
    opts: EmbedServerOptions,
    models: Vec<ModelConfig>,
}

impl EmbedLoader {
    pub fn new(app: EmbedApp, opts: &EmbedServerOptions, models: &[ModelConfig]) -> Self {
        EmbedLoader {
            app,
            opts: opts.clone(),
            models: models.to_vec(),
        }
    }
}

#[async_trait]
impl BackgroundService for EmbedLoader {
    async fn start_with_ready_notifier(
        &self,
        _shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let t0 = std::time::Instant::now();
        let (opts, models) = (self.opts.clone(), self.models.clone());
        let loaded = tokio::task::spawn_blocking(move || EmbedService::load(&opts, &models))
            .await
            .unwrap_or_else(|e| Err(format!("model loading panicked: {e}")));
        match loaded {
            Ok(svc) => {
                tracing::info!(
                    models = svc.models.len(),
                    load_s = t0.elapsed().as_secs_f64(),
                    "embedding models loaded"
                );
                let _ = self.app.0.set(svc);
                ready.notify_ready();
            }
            // Nothing can be served as configured: the start fails like a config error
            // would. The command line exits; this service never becomes ready, and holds
            // on to its notifier (Pingora starts the dependents of a service that ends
            // without it, which would let the bootstrap tell the old router to leave).
            Err(e) => {
                crate::lifecycle::fail(
                    crate::lifecycle::EXIT_CONFIG,
                    format!("embedding service: {e}"),
                );
                let _held = ready;
                std::future::pending::<()>().await;
            }
        }
    }
}

#[async_trait]
impl ServeHttp for EmbedApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let _active = crate::lifecycle::drain::ActiveRequest::new();
        match self.0.get() {
            Some(svc) => svc.response(s).await,
            None => error_response(&ApiError::unavailable(
                "The embedding models are still loading",
                1,
            )),
        }
    }
}

/// The embedding service's routes (trailing slashes are trimmed before the lookup).
#[derive(Debug, Clone, Copy)]
enum Route {
    Health,
    Models,
    Metrics,
    Embeddings,
    Rerank,
}

fn routes() -> Routes<Route> {
    Routes::new()
        .read("/health", Route::Health)
        .read("/v1/models", Route::Models)
        .read("/metrics", Route::Metrics)
        .post("/v1/embeddings", Route::Embeddings)
        .post("/embeddings", Route::Embeddings)
        .post("/v1/rerank", Route::Rerank)
        .post("/rerank", Route::Rerank)
}

fn invalid_json(e: serde_json::Error) -> ApiError {
    ApiError::bad_request(
        "invalid_json",
        format!("Request body is not valid JSON: {e}"),
    )
}

impl EmbedService {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let method = s.req_header().method.as_str().to_string();
        let path = s.req_header().uri.path().trim_end_matches('/').to_string();
        let route = match self.routes.resolve(&method, &path) {
            Ok(found) => found.route,
            Err(e) => return error_response(&e),
        };
        let result = match route {
            Route::Health => return self.health(),
            Route::Models => Ok(self.models_list()),
            Route::Metrics => return page_response(gather()),
            Route::Embeddings => match self.read_json(s).await {
                Ok(v) => until_client_leaves(s, self.embeddings(&v)).await,
                Err(e) => Err(e),
            },
            Route::Rerank => match self.read_json(s).await {
                Ok(v) => until_client_leaves(s, self.rerank(&v)).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(v) => json_response(200, v.to_string().into_bytes()),
            Err(e) => error_response(&e),
        }
    }

    /// The request body as JSON, read as the proxy reads its bodies (size and time
    /// limits), parsed off the worker threads when large.
    async fn read_json(&self, s: &mut ServerSession) -> Result<Value, ApiError> {
        let mut room = Reserved::default();
        let body = request_body::read(s, MAX_BODY, &self.timeouts, &self.bodies, &mut room).await?;
        parse_off_thread(&body, |b| serde_json::from_slice(b).map_err(invalid_json)).await
    }
}
