//! Configuration: one YAML file (seed-compatible) resolved into typed, validated settings.
//!
//! Loading is two steps: [`raw`] gives the file's shape (serde, with the key path of any
//! type error), [`validate`] turns it into a [`Config`] and reports every problem with the
//! file, the key path and the reason. Nothing downstream ever sees an unvalidated value.
//!
//! Every relative path in the file (`log_dir`, `run_dir`, `model_path`, `tokenizer_path`,
//! `onnxruntime_path`, a `command` containing a slash, `access_log_file`) is resolved
//! against the directory of the config file when it is loaded, before any fork: a
//! daemon (`-d`) runs in `/`, and a service should not depend on where it was started.

mod access;
mod admission;
mod error;
mod raw;
mod validate;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::Serialize;

pub use access::{
    check_exposure, is_loopback_host, Accounting, AuthMode, AuthOptions, CacheSalt, GuardedField,
    OnMissingUsage, RequestPolicy, TokenOptions,
};
pub use admission::{ClassOptions, ModelAdmission, QueueOptions, Saturation};
pub use error::{ConfigError, ConfigErrors};
pub use values::{valid_log_level, AccessLogFormat, Engine, Pooling};

/// Where `make models` puts ONNX Runtime, relative to the config file's directory.
pub const DEFAULT_ONNXRUNTIME_PATH: &str = "models/onnxruntime/libonnxruntime.so.1.31.1";

/// Settings of the proxy itself (the `router:` section), with their defaults.
#[derive(Debug, Clone, Serialize)]
pub struct RouterOptions {
    /// Where clients connect. Default `127.0.0.1:8947` (another address needs `auth`);
    /// `--listen` overrides it.
    pub listen: SocketAddr,
    /// Worker threads of the proxy service. Default: the number of CPU cores.
    pub threads: usize,
    /// TCP connect timeout per attempt. Default 2 s: a healthy local engine accepts in
    /// microseconds, so a longer wait only delays the failover.
    #[serde(with = "secs", rename = "connect_timeout_s")]
    pub connect_timeout: Duration,
    /// Longest wait for the engine's response header after the request was sent. It must
    /// cover queueing + prefill, and the whole generation of a non-streaming request.
    /// Default 600 s (the Python router's 10 s killed long generations).
    #[serde(with = "secs", rename = "first_byte_timeout_s")]
    pub first_byte_timeout: Duration,
    /// Longest silence between two body chunks of a response. Default 600 s. There is no
    /// limit on a streaming response's total length.
    #[serde(with = "secs", rename = "read_idle_timeout_s")]
    pub read_idle_timeout: Duration,
    /// How long an idle upstream connection stays pooled. Default 4 s, below uvicorn's
    /// 5 s keep-alive, so we never reuse a connection the engine is about to close.
    #[serde(with = "secs", rename = "pool_idle_timeout_s")]
    pub pool_idle_timeout: Duration,
    /// Largest accepted request body. Default 32 MiB.
    pub max_body_bytes: u64,
    /// Request bodies held at once across all requests (503 beyond, after a wait of at
    /// most 1 s). Default 512 MiB.
    pub max_buffered_body_bytes: u64,
    /// Instances tried per request before giving up (connect failures only). Default:
    /// every instance of the model.
    pub max_attempts: Option<usize>,
    /// `Retry-After` seconds sent with a 503. Default 1.
    pub retry_after_s: u64,
    /// Access log format: `logfmt` (default), `json` or `off`.
    pub access_log: AccessLogFormat,
    /// Access log file (appended; reopened on SIGHUP, for logrotate). Default: stdout,
    /// which a daemon (`-d`) does not have.
    pub access_log_file: Option<PathBuf>,
    /// Log level of stderr: `info` (default), `warn`, `debug`..., or tracing directives
    /// such as `info,llm_router::scrape=debug`. `RUST_LOG` overrides it.
    pub log_level: String,
    /// A second listener serving only `/metrics`, `/v1/router/instances` and `/health`,
    /// e.g. `127.0.0.1:9947`; those then leave the public port. Default: none.
    pub admin_listen: Option<SocketAddr>,
    pub timeouts: ClientTimeouts,
    pub request_limits: RequestLimits,
    pub connections: ConnectionLimits,
    pub stored_responses: StoredResponses,
}

/// `router.stored_responses`: a response created through `POST /v1/responses` lives on
/// the instance that made it (vLLM keeps it in memory), so the router remembers the
/// instance of each id, for `GET`/`DELETE`/`cancel` and for a later request that names it
/// as `previous_response_id`. Bounded in count and age: the oldest ids are forgotten
/// first.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StoredResponses {
    /// Ids remembered at once. Default 100000 (about 10 MiB).
    pub max_ids: usize,
    /// How long an id is remembered. Default 86400 s (a day).
    #[serde(with = "secs", rename = "ttl_s")]
    pub ttl: Duration,
}

impl Default for StoredResponses {
    fn default() -> Self {
        StoredResponses {
            max_ids: 100_000,
            ttl: Duration::from_secs(86_400),
        }
    }
}

/// `router.timeouts`: Pingora times out single reads only, so a client sending one byte
/// now and then would hold a connection forever; these bound the whole of each phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClientTimeouts {
    /// The whole request head: from accept for the first request, and for later ones
    /// from the end of the previous answer (plus `keepalive_idle_s`). Default 10 s.
    #[serde(with = "secs", rename = "header_read_s")]
    pub header_read: Duration,
    /// Idle time between requests on a kept-alive connection; the client's own
    /// `Keep-Alive` does not extend it. Default 30 s.
    #[serde(with = "secs", rename = "keepalive_idle_s")]
    pub keepalive_idle: Duration,
    /// The whole request body (408 after). Default 60 s.
    #[serde(with = "secs", rename = "body_read_s")]
    pub body_read: Duration,
    /// The longest silence within the body (408 after). Default 15 s.
    #[serde(with = "secs", rename = "body_idle_s")]
    pub body_idle: Duration,
    /// A client that takes no byte for this long while data is pending (a stalled SSE
    /// reader) is disconnected and its engine request aborted. Default 60 s.
    #[serde(with = "secs", rename = "write_idle_s")]
    pub write_idle: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            header_read: Duration::from_secs(10),
            keepalive_idle: Duration::from_secs(30),
            body_read: Duration::from_secs(60),
            body_idle: Duration::from_secs(15),
            write_idle: Duration::from_secs(60),
        }
    }
}

/// `router.request_limits`: refused before the body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RequestLimits {
    /// Longest request target (414 beyond). Default 8192.
    pub max_uri_bytes: usize,
    /// Largest request head, request line included (431 beyond; Pingora itself only
    /// refuses more than 1 MiB, with a 400). Default 32768.
    pub max_header_bytes: usize,
    /// HTTP/1.1 without `Host` is a 400 (RFC 9112 §3.2). Default true.
    pub require_host: bool,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_uri_bytes: 8192,
            max_header_bytes: 32768,
            require_host: true,
        }
    }
}

/// `router.connections`: excess connections are closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ConnectionLimits {
    /// Open client connections in all. Default 4096.
    pub max_total: usize,
    /// Open client connections from one IP address. Default 128.
    pub max_per_ip: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_total: 4096,
            max_per_ip: 128,
        }
    }
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8947)),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(600),
            read_idle_timeout: Duration::from_secs(600),
            pool_idle_timeout: Duration::from_secs(4),
            max_body_bytes: 32 * 1024 * 1024,
            max_buffered_body_bytes: 512 * 1024 * 1024,
            max_attempts: None,
            retry_after_s: 1,
            access_log: Default::default(),
            access_log_file: None,
            log_level: "info".to_string(),
            admin_listen: None,
            timeouts: ClientTimeouts::default(),
            request_limits: RequestLimits::default(),
            connections: ConnectionLimits::default(),
            stored_responses: StoredResponses::default(),
        }
    }
}

/// How an instance is chosen among a model's healthy instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Lowest load score (default).
    #[default]
    LeastLoad,
    RoundRobin,
    /// Two random candidates, the lower score wins.
    PowerOfTwo,
    /// A consistent hash of a key keeps a conversation on the instance holding its
    /// prefix cache; least-load when that instance is unhealthy or too loaded.
    SessionAffinity,
}

/// Where the session-affinity key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AffinityKey {
    /// A request header (lower-case name), e.g. `x-session-id`.
    Header(String),
    /// The body's `user` field (OpenAI's end-user id).
    BodyUser,
}

/// `score = waiting*w + running*w + kv_usage*w + in_flight*w`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Weights {
    pub waiting: f64,
    pub running: f64,
    pub kv_cache: f64,
    pub in_flight: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            waiting: 10.0,
            running: 3.0,
            kv_cache: 100.0,
            in_flight: 5.0,
        }
    }
}

/// The `balancer:` settings, resolved (global values, overridden per model).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BalancerOptions {
    pub policy: Policy,
    pub weights: Weights,
    /// How often every instance's `/metrics` is polled (global). Default 1 s.
    #[serde(with = "secs", rename = "poll_interval_s")]
    pub poll_interval: Duration,
    /// Per scrape. Default 2 s.
    #[serde(with = "secs", rename = "scrape_timeout_s")]
    pub scrape_timeout: Duration,
    /// Metrics older than this count as unknown. Default 3 poll intervals.
    #[serde(with = "secs", rename = "stale_after_s")]
    pub stale_after: Duration,
    /// `GET /health` period. Default: the poll interval.
    #[serde(with = "secs", rename = "health_check_interval_s")]
    pub health_check_interval: Duration,
    /// First cooldown after a failure; doubles on each further failure. Default 10 s.
    #[serde(with = "secs", rename = "cooldown_s")]
    pub cooldown: Duration,
    /// Cap of the doubling. Default 120 s.
    #[serde(with = "secs", rename = "cooldown_max_s")]
    pub cooldown_max: Duration,
    /// Session-affinity key; default header `x-session-id`.
    pub affinity_key: AffinityKey,
    /// Above this score the affine instance is skipped for least-load. Default 200.
    pub affinity_max_score: f64,
    /// How often instance hostnames and `discover.dns` names are resolved again
    /// (global). Default 30 s.
    #[serde(with = "secs", rename = "dns_refresh_s")]
    pub dns_refresh: Duration,
    /// A hosts-format file (`ADDRESS NAME...` lines) consulted before the system
    /// resolver, read again at each resolution (global). Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts_file: Option<PathBuf>,
}

/// `discover:` of a model: one instance per address `dns` resolves to (A and AAAA
/// records, the system resolver's answer), at `port`; re-resolved every
/// `balancer.dns_refresh_s`. Addresses that appear are added, those that vanish are
/// drained (no new requests; those in flight finish).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discover {
    pub dns: String,
    pub port: u16,
    /// Instances at most (addresses beyond are ignored, with a warning). Default 8.
    pub max_instances: usize,
}

impl Default for BalancerOptions {
    fn default() -> Self {
        BalancerOptions {
            policy: Policy::LeastLoad,
            weights: Weights::default(),
            poll_interval: Duration::from_secs(1),
            scrape_timeout: Duration::from_secs(2),
            stale_after: Duration::from_secs(3),
            health_check_interval: Duration::from_secs(1),
            cooldown: Duration::from_secs(10),
            cooldown_max: Duration::from_secs(120),
            affinity_key: AffinityKey::Header("x-session-id".into()),
            dns_refresh: Duration::from_secs(30),
            hosts_file: None,
            affinity_max_score: 200.0,
        }
    }
}

/// How engine processes are run (`supervisor:`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SupervisorOptions {
    /// Engine output goes to `<log_dir>/<instance-id>.log`. Default `logs`.
    pub log_dir: PathBuf,
    /// Holds the state file naming running engines (for adoption across upgrades).
    /// Default `run`.
    pub run_dir: PathBuf,
    /// Longest wait for an engine's first `GET /health` 200. Default 15 min.
    #[serde(with = "secs", rename = "startup_timeout_s")]
    pub startup_timeout: Duration,
    /// SIGTERM to SIGKILL on stop. Default 30 s.
    #[serde(with = "secs", rename = "stop_timeout_s")]
    pub stop_timeout: Duration,
    /// Restart backoff doubles from 1 s up to this. Default 5 min.
    #[serde(with = "secs", rename = "restart_backoff_max_s")]
    pub restart_backoff_max: Duration,
    /// A running engine whose `/health` fails this long is restarted. Default 60 s.
    #[serde(with = "secs", rename = "unhealthy_restart_after_s")]
    pub unhealthy_restart_after: Duration,
    /// Progress line period while an engine loads. Default 5 s.
    #[serde(with = "secs", rename = "progress_interval_s")]
    pub progress_interval: Duration,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            log_dir: PathBuf::from("logs"),
            run_dir: PathBuf::from("run"),
            startup_timeout: Duration::from_secs(15 * 60),
            stop_timeout: Duration::from_secs(30),
            restart_backoff_max: Duration::from_secs(300),
            unhealthy_restart_after: Duration::from_secs(60),
            progress_interval: Duration::from_secs(5),
        }
    }
}

/// `embedding_server:` service settings (the models are in [`Config::models`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmbedServerOptions {
    pub host: String,
    pub port: u16,
    /// Served by this process (default); `false` when another process serves it.
    pub managed: bool,
    /// `libonnxruntime.so`: this key, else `ORT_DYLIB_PATH`, else
    /// [`DEFAULT_ONNXRUNTIME_PATH`] (from `make models`) next to the config file.
    pub onnxruntime_path: PathBuf,
    /// Tokens per batch (items x longest item). Default 16384.
    pub max_batch_tokens: usize,
    /// Items per batch. Default 64.
    pub max_batch_size: usize,
    /// Requests waiting per model before 429. Default 256.
    pub max_queue: usize,
    /// Tokens waiting (or being computed) per model before 429. Default 262144.
    pub max_queue_tokens: usize,
    /// Items one request may carry before 413. Default 512.
    pub max_client_batch_size: usize,
    /// ONNX Runtime threads per model. Default: CPU cores.
    pub threads: usize,
}

/// What a model serves: decides which endpoints make sense for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Llm,
    Embedding,
    Rerank,
}

/// GPUs given to an instance (`CUDA_VISIBLE_DEVICES`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CudaDevices(pub Vec<u32>);

/// One upstream server of a model.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceConfig {
    pub id: String,
    pub host: String,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuda_device: Option<CudaDevices>,
    /// Spawned and supervised by the router (default); `false` for external engines.
    pub managed: bool,
    /// Engine environment of this instance (over the model's `env`).
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub env: IndexMap<String, String>,
}

impl InstanceConfig {
    /// `http://host:port`, the base URL of the instance.
    pub fn url(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

/// One model as clients name it, with the instances that serve it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    /// The name clients use (the key under `LLM_engines` / `embedding_models`).
    pub name: String,
    pub kind: ModelKind,
    /// The name the engine serves; the router rewrites the request's `model` to it.
    pub served_name: String,
    /// `model_tag` of an LLM (what vLLM loads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_tag: Option<String>,
    pub instances: Vec<InstanceConfig>,
    /// Further engine flags from `model_config` (open map, kept in file order).
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub engine_flags: IndexMap<String, serde_yaml::Value>,
    /// Metrics dialect, when set in the config (else detected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
    pub balancer: BalancerOptions,
    /// Engine launch: command prefix (`model_tag`, `--host`, `--port` and the flags follow).
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub env: IndexMap<String, String>,
    /// Files and options of an embedding/rerank model (served by the embedding server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embed: Option<EmbedModelSettings>,
    /// Sent to the engine as `Authorization: Bearer` (`api_key` / `api_key_env`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    /// Other names clients may use (`aliases`; listed in `/v1/models` with `parent`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Models (configured names, same kind) a request goes to, in order, when no
    /// instance of this one can take it before the first byte (`fallback`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<String>,
    /// LoRA adapters (name → path as the engine sees it) loaded on the first request
    /// that names one (`lora_adapters`).
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub lora_adapters: IndexMap<String, String>,
    /// Instances found by DNS (`discover`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discover: Option<Discover>,
}

/// A secret of the config: shown as `<redacted>` by `check` and in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// Seed keys of an `embedding_server` model, kept for the co-hosted ONNX service.
#[derive(Debug, Clone, Serialize)]
pub struct EmbedModelSettings {
    pub model_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
    pub use_gpu: bool,
    pub use_float16: bool,
    /// `cls` or `mean`; default: the model folder's sentence-transformers config, else cls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
    /// L2-normalize embeddings. Default true.
    pub normalize: bool,
    /// Further keys, ignored.
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub extra: IndexMap<String, serde_yaml::Value>,
}

/// A loaded, validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    #[serde(skip)]
    pub source: PathBuf,
    pub router: RouterOptions,
    /// Global balancer settings (scraping cadence; per-model values live in each model).
    pub balancer: BalancerOptions,
    pub supervisor: SupervisorOptions,
    /// The co-hosted embedding/rerank service, when `embedding_server` is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbedServerOptions>,
    pub models: Vec<ModelConfig>,
    pub auth: AuthOptions,
    pub request_policy: RequestPolicy,
    /// `admission.tokens`: how tokens are reserved and charged.
    pub tokens: TokenOptions,
    /// `admission.headers`: `x-ratelimit-*` on authenticated answers (`openai`, default)
    /// or not (`none`).
    pub rate_headers: bool,
    /// The admission queue: per-model caps, classes, saturation.
    pub queue: QueueOptions,
    /// Problems worth a warning but not a refusal (unknown keys).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads and validates `path`. Every error names the file, the key path and the reason.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one(ConfigError::new(path, "", format!("cannot read file: {e}")))
        })?;
        Self::from_yaml_str(&text, path)
    }

    /// Parses YAML text; `path` is only used in messages.
    pub fn from_yaml_str(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let raw = validate::parse(text, path)?;
        validate::resolve(raw, path)
    }

    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    /// [`check_exposure`] of this config's listeners (again after `--listen`).
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        let embedding = self.embedding.as_ref().filter(|e| e.managed);
        check_exposure(
            self.auth.mode,
            self.router.listen,
            self.router.admin_listen,
            embedding.map(|e| e.host.as_str()),
        )
        .map_err(|(key, reason)| ConfigError::new(&self.source, key, reason))
    }
}

/// Durations are written and shown as (fractional) seconds.
mod secs {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests;
