//! The YAML file as written by users: the seed format of the Python "LLM Router Server"
//! (`LLM_engines`, `embedding_server`) plus our own `router:` section.
//!
//! These types only describe the *shape* of the file. Checks that need more than one
//! value at a time (duplicate ids, clashing ports, ranges) live in [`super::validate`], so
//! that serde's errors stay about types and missing keys and ours about meaning.

use indexmap::IndexMap;
use serde::Deserialize;
use serde_yaml::Value;

/// The whole file. Unknown top-level keys are collected (and warned about) rather than
/// rejected: a config shared with other tools may carry sections we do not read.
#[derive(Debug, Deserialize)]
pub struct RawFile {
    #[serde(rename = "LLM_engines", default)]
    pub llm_engines: IndexMap<String, RawLlmModel>,
    #[serde(default)]
    pub embedding_server: Option<RawEmbeddingServer>,
    #[serde(default)]
    pub router: RawRouter,
    #[serde(default)]
    pub balancer: RawBalancer,
    #[serde(default)]
    pub supervisor: RawSupervisor,
    #[serde(default)]
    pub auth: Option<RawAuth>,
    #[serde(default)]
    pub admission: RawAdmission,
    #[serde(flatten)]
    pub unknown: IndexMap<String, Value>,
}

/// `auth:`: keys and who may use the admin routes. Every key is ours.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub mode: Option<super::AuthMode>,
    pub keys_file: Option<String>,
    pub accept_headers: Option<Vec<String>>,
    pub admins: Option<Vec<String>>,
    pub usage_db: Option<String>,
}

/// `admission:`. Every key is ours.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmission {
    #[serde(default)]
    pub request_policy: RawRequestPolicy,
    #[serde(default)]
    pub tokens: RawTokens,
    pub headers: Option<RateHeadersMode>,
    pub critical_reserve: Option<f64>,
    pub classes: Option<super::admission::RawClasses>,
    #[serde(default)]
    pub queue: super::admission::RawQueue,
    #[serde(default)]
    pub saturation: super::admission::RawSaturation,
    #[serde(default)]
    pub models: IndexMap<String, super::admission::RawModelAdmission>,
}

/// `admission.headers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateHeadersMode {
    Openai,
    None,
}

/// `admission.tokens`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokens {
    pub accounting: Option<super::Accounting>,
    pub default_completion_reserve: Option<u64>,
    pub inject_stream_usage: Option<bool>,
    pub on_missing_usage: Option<super::OnMissingUsage>,
}

/// `admission.request_policy`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequestPolicy {
    pub max_n: Option<u64>,
    pub strip_fields: Option<Vec<super::GuardedField>>,
    pub cache_salt: Option<super::CacheSalt>,
}

/// One entry of `LLM_engines`.
#[derive(Debug, Deserialize)]
pub struct RawLlmModel {
    #[serde(default)]
    pub instances: Vec<RawInstance>,
    /// Instances found by DNS (beside or instead of `instances`).
    #[serde(default)]
    pub discover: Option<RawDiscover>,
    pub model_config: RawModelConfig,
    /// The name the engine serves, when it differs from `model_tag`
    /// (e.g. vLLM started with `--served-model-name`).
    #[serde(default)]
    pub served_model_name: Option<String>,
    /// Metrics dialect; detected from the `/metrics` page when absent.
    #[serde(default)]
    pub engine: Option<super::Engine>,
    #[serde(default)]
    pub balancer: Option<RawBalancer>,
    /// Launch command prefix (default `vllm serve`); `model_tag` and flags follow.
    #[serde(default)]
    pub command: Option<RawCommand>,
    /// Extra environment variables of the engine processes.
    #[serde(default)]
    pub env: IndexMap<String, String>,
    /// The key the router sends to engines started with `--api-key` (never the client's).
    #[serde(default)]
    pub api_key: Option<String>,
    /// The environment variable (of the router) holding that key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Other names clients may use for this model.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Models tried in order when none of this one's instances can take a request.
    #[serde(default)]
    pub fallback: Vec<String>,
    /// LoRA adapters (name → path on the engine's host) loaded on demand.
    #[serde(default)]
    pub lora_adapters: IndexMap<String, String>,
    #[serde(flatten)]
    pub unknown: IndexMap<String, Value>,
}

/// `command: "python -m vllm.entrypoints.openai.api_server --model"` or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawCommand {
    Line(String),
    Argv(Vec<String>),
}

/// `supervisor:`: how engine processes are run. Every key is ours.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSupervisor {
    pub log_dir: Option<String>,
    pub run_dir: Option<String>,
    pub startup_timeout_s: Option<f64>,
    pub stop_timeout_s: Option<f64>,
    pub restart_backoff_max_s: Option<f64>,
    pub unhealthy_restart_after_s: Option<f64>,
    pub progress_interval_s: Option<f64>,
}

/// `model_config`: `model_tag` plus an open map of engine flags (any vLLM flag).
#[derive(Debug, Deserialize)]
pub struct RawModelConfig {
    pub model_tag: String,
    #[serde(flatten)]
    pub flags: IndexMap<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct RawInstance {
    pub id: String,
    pub host: String,
    /// Signed and wide so that `-1` or `70000` reach our range check with a clear
    /// message instead of serde's "expected u16".
    pub port: i64,
    #[serde(default)]
    pub cuda_device: Option<RawCudaDevice>,
    /// `false`: an engine started by someone else (or on another host); never spawned.
    #[serde(default)]
    pub managed: Option<bool>,
    /// Environment of this instance's engine, over the model's `env`.
    #[serde(default)]
    pub env: IndexMap<String, String>,
    #[serde(flatten)]
    pub unknown: IndexMap<String, Value>,
}

/// `cuda_device: 0`, `cuda_device: [0, 1]` or `cuda_device: "0,1"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawCudaDevice {
    One(u32),
    Many(Vec<u32>),
    Text(String),
}

#[derive(Debug, Deserialize)]
pub struct RawEmbeddingServer {
    #[serde(default = "default_embed_host")]
    pub host: String,
    pub port: i64,
    #[serde(default)]
    pub cuda_device: Option<RawCudaDevice>,
    #[serde(default)]
    pub embedding_models: IndexMap<String, RawEmbedModel>,
    #[serde(default)]
    pub reranking_models: IndexMap<String, RawEmbedModel>,
    /// `false`: an embedding server run elsewhere (only routed to, not served here).
    #[serde(default)]
    pub managed: Option<bool>,
    /// Path of `libonnxruntime.so` (else `ORT_DYLIB_PATH`, else `make models`' copy).
    #[serde(default)]
    pub onnxruntime_path: Option<String>,
    #[serde(default)]
    pub max_batch_tokens: Option<usize>,
    #[serde(default)]
    pub max_batch_size: Option<usize>,
    #[serde(default)]
    pub max_queue: Option<usize>,
    #[serde(default)]
    pub max_queue_tokens: Option<usize>,
    #[serde(default)]
    pub max_client_batch_size: Option<usize>,
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(flatten)]
    pub unknown: IndexMap<String, Value>,
}

fn default_embed_host() -> String {
    "127.0.0.1".to_string()
}

/// An embedding or reranking model of the seed format. Only parsed and listed for now;
/// the co-hosted ONNX service that serves them reads the remaining keys.
#[derive(Debug, Deserialize)]
pub struct RawEmbedModel {
    #[serde(default)]
    pub model_name: Option<String>,
    pub model_path: String,
    #[serde(default)]
    pub tokenizer_path: Option<String>,
    #[serde(default)]
    pub max_length: Option<u32>,
    #[serde(default)]
    pub use_gpu: bool,
    #[serde(default)]
    pub use_float16: bool,
    #[serde(default)]
    pub pooling: Option<super::Pooling>,
    #[serde(default)]
    pub normalize: Option<bool>,
    #[serde(flatten)]
    pub extra: IndexMap<String, Value>,
}

/// Our own section. Typos here are errors (unknown keys rejected): every key is ours.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouter {
    pub listen: Option<String>,
    pub threads: Option<usize>,
    pub connect_timeout_s: Option<f64>,
    pub first_byte_timeout_s: Option<f64>,
    pub read_idle_timeout_s: Option<f64>,
    pub pool_idle_timeout_s: Option<f64>,
    pub max_body_bytes: Option<u64>,
    pub max_buffered_body_bytes: Option<u64>,
    pub max_attempts: Option<usize>,
    pub retry_after_s: Option<u64>,
    pub access_log: Option<super::AccessLogFormat>,
    pub access_log_file: Option<String>,
    pub log_level: Option<String>,
    pub admin_listen: Option<String>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub request_limits: RawRequestLimits,
    #[serde(default)]
    pub connections: RawConnections,
    #[serde(default)]
    pub stored_responses: RawStoredResponses,
}

/// `router.stored_responses`: which instance holds which Responses API id.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStoredResponses {
    pub max_ids: Option<usize>,
    pub ttl_s: Option<f64>,
}

/// `router.timeouts`: deadlines against slow and idle clients.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub header_read_s: Option<f64>,
    pub keepalive_idle_s: Option<f64>,
    pub body_read_s: Option<f64>,
    pub body_idle_s: Option<f64>,
    pub write_idle_s: Option<f64>,
}

/// `router.request_limits`: what a request head may be.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequestLimits {
    pub max_uri_bytes: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub require_host: Option<bool>,
}

/// `router.connections`: caps on open client connections.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnections {
    pub max_total: Option<usize>,
    pub max_per_ip: Option<usize>,
}

/// `balancer:` (global) and `LLM_engines.<model>.balancer:` (per model, overriding the
/// global values key by key). Every key is ours: typos are errors.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBalancer {
    pub policy: Option<super::Policy>,
    pub weights: Option<RawWeights>,
    pub poll_interval_s: Option<f64>,
    pub scrape_timeout_s: Option<f64>,
    pub stale_after_s: Option<f64>,
    pub health_check_interval_s: Option<f64>,
    pub cooldown_s: Option<f64>,
    pub cooldown_max_s: Option<f64>,
    pub affinity_key: Option<String>,
    pub affinity_max_score: Option<f64>,
    pub dns_refresh_s: Option<f64>,
    pub hosts_file: Option<String>,
}

/// `discover:` of a model: its instances are the addresses a DNS name resolves to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscover {
    pub dns: String,
    pub port: u16,
    #[serde(default)]
    pub max_instances: Option<usize>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeights {
    pub waiting: Option<f64>,
    pub running: Option<f64>,
    pub kv_cache: Option<f64>,
    pub in_flight: Option<f64>,
}
