//! The router's own Prometheus metrics. Label values are bounded: model and instance
//! names come from the config (an unknown requested model is `unknown`), endpoints from
//! the route table, status as a class.

use std::sync::LazyLock;

use prometheus::{
    register_counter_vec, register_gauge_vec, register_histogram_vec, CounterVec, Encoder,
    GaugeVec, HistogramVec, TextEncoder,
};

fn latency_buckets() -> Vec<f64> {
    vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    ]
}

pub static REQUESTS: LazyLock<CounterVec> = LazyLock::new(|| {
    register_counter_vec!(
        "llm_router_requests_total",
        "Requests answered, by model, instance, endpoint and status class",
        &["model", "instance", "endpoint", "status"]
    )
    .expect("registers once")
});

pub static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "llm_router_request_duration_seconds",
        "Time from request to the end of the response",
        &["model", "endpoint"],
        latency_buckets()
    )
    .expect("registers once")
});

pub static TTFT: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "llm_router_time_to_first_token_seconds",
        "Streams: time from request to the first event",
        &["model", "instance"],
        latency_buckets()
    )
    .expect("registers once")
});

pub static ADMISSION_WAIT: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "llm_router_admission_wait_seconds",
        "Time a request waited in its model's admission queue (0 when let in at once)",
        &["model", "class"],
        latency_buckets()
    )
    .expect("registers once")
});

pub static QUEUE_DEPTH: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    prometheus::register_int_gauge_vec!(
        "llm_router_queue_depth",
        "Requests waiting in a model's admission queue, by class",
        &["model", "class"]
    )
    .expect("registers once")
});

pub static TOKEN_GAP: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "llm_router_inter_token_gap_seconds",
        "Streams: time between two events",
        &["model", "instance"],
        vec![0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
    )
    .expect("registers once")
});

pub static FAILOVERS: LazyLock<CounterVec> = LazyLock::new(|| {
    register_counter_vec!(
        "llm_router_failovers_total",
        "Attempts abandoned for another instance before the engine answered",
        &["model", "instance"]
    )
    .expect("registers once")
});

pub static UPSTREAM_ERRORS: LazyLock<CounterVec> = LazyLock::new(|| {
    register_counter_vec!(
        "llm_router_upstream_errors_total",
        "Upstream failures by kind (connect, timeout, read, status_5xx, cut)",
        &["model", "instance", "kind"]
    )
    .expect("registers once")
});

pub static TOKENS: LazyLock<CounterVec> = LazyLock::new(|| {
    register_counter_vec!(
        "llm_router_tokens_total",
        "Tokens from the engines' `usage` (JSON answers and the final SSE chunk)",
        &["model", "kind"]
    )
    .expect("registers once")
});

pub static ENGINE_RESTARTS: LazyLock<CounterVec> = LazyLock::new(|| {
    register_counter_vec!(
        "llm_router_engine_restarts_total",
        "Engine processes that died or were declared dead",
        &["model", "instance"]
    )
    .expect("registers once")
});

pub static CONNECTIONS: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    prometheus::register_int_gauge!(
        "llm_router_connections",
        "Client connections open on the main port"
    )
    .expect("registers once")
});

pub static CONNECTIONS_REFUSED: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    prometheus::register_int_counter_vec!(
        "llm_router_connections_refused_total",
        "Client connections closed at accept (router.connections caps)",
        &["reason"]
    )
    .expect("registers once")
});

pub static CONNECTIONS_CLOSED: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    prometheus::register_int_counter_vec!(
        "llm_router_connections_timed_out_total",
        "Client connections closed for waiting too long for a request head",
        &["reason"]
    )
    .expect("registers once")
});

pub static ACCESS_LOG_DROPPED: LazyLock<prometheus::Counter> = LazyLock::new(|| {
    prometheus::register_counter!(
        "llm_router_access_log_dropped_total",
        "Access log lines dropped because the writer could not keep up"
    )
    .expect("registers once")
});

pub static DENIED: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    prometheus::register_int_counter_vec!(
        "llm_router_denied_total",
        "Requests refused by auth or policy, by reason (missing_key, unknown_key, model_denied, ...)",
        &["reason"]
    )
    .expect("registers once")
});

pub static PRINCIPAL_REQUESTS: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    prometheus::register_int_counter_vec!(
        "llm_router_principal_requests_total",
        "Requests per principal of the keys file, by status class",
        &["principal", "status_class"]
    )
    .expect("registers once")
});

pub static PRINCIPAL_TOKENS: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    prometheus::register_int_counter_vec!(
        "llm_router_principal_tokens_total",
        "Tokens the engines reported per principal, by kind (prompt, completion)",
        &["principal", "kind"]
    )
    .expect("registers once")
});

/// One finished request of principal `id` (bounded by the keys file) and its tokens.
/// One principal's series, each resolved on first use: the request path then does no
/// label lookup (a principal is known from the keys file, so the series are bounded).
#[derive(Debug, Default)]
pub struct PrincipalSeries {
    id: String,
    /// By [`status_class`]'s index.
    requests: [std::sync::OnceLock<prometheus::IntCounter>; STATUS_CLASSES.len()],
    /// Prompt, completion.
    tokens: [std::sync::OnceLock<prometheus::IntCounter>; 2],
}

impl PrincipalSeries {
    pub fn new(id: &str) -> Self {
        PrincipalSeries {
            id: id.to_string(),
            ..Default::default()
        }
    }

    /// One request of the principal ended with `status`, having used these tokens (as
    /// the engine reported them).
    pub fn request(&self, status: u16, prompt: Option<u64>, completion: Option<u64>) {
        let class = status_index(status);
        self.requests[class]
            .get_or_init(|| {
                PRINCIPAL_REQUESTS.with_label_values(&[self.id.as_str(), STATUS_CLASSES[class]])
            })
            .inc();
        for (i, (kind, n)) in [("prompt", prompt), ("completion", completion)]
            .into_iter()
            .enumerate()
        {
            if let Some(n) = n.filter(|n| *n > 0) {
                self.tokens[i]
                    .get_or_init(|| PRINCIPAL_TOKENS.with_label_values(&[self.id.as_str(), kind]))
                    .inc_by(n);
            }
        }
    }
}

pub static KEYS_RELOADS: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    prometheus::register_int_counter_vec!(
        "llm_router_keys_reload_total",
        "Keys file reloads (SIGHUP), by result (ok, error)",
        &["result"]
    )
    .expect("registers once")
});

/// Set from the registry when a metrics page is made (`admin::metrics_page`).
pub static INSTANCE: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "llm_router_instance",
        "Live inputs of the choice per instance (in_flight, running, waiting, kv_usage, score, scrape_age_seconds, healthy)",
        &["model", "instance", "value"]
    )
    .expect("registers once")
});

/// Status class label: `2xx`, `4xx`, ...
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_index(status)]
}

/// The label values of [`status_class`].
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

fn status_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => 5,
    }
}

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything registered in this process, as Prometheus text.
pub fn gather() -> Vec<u8> {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut out);
    out
}

/// A metrics page as a `ServeHttp` answer (embedding service, admin listener).
pub fn page_response(body: Vec<u8>) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(200)
        .header("content-type", CONTENT_TYPE)
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_default()
}
