//! Introspection: `/health`, `/metrics` (with each instance's live gauges) and
//! `/v1/router/instances`, answered alike on the public port and on the admin listener
//! ([`listener`], `router.admin_listen`).

pub mod adapters;
pub mod listener;

pub use listener::AdminApp;

use std::sync::{Arc, LazyLock};

use crate::balance::stats::State;
use crate::balance::Registry;
use crate::http::ApiError;
use crate::ledger::{Ledger, UsageQuery};
use crate::lifecycle::drain;
use crate::telemetry::metrics;

/// What an introspection route asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Introspect {
    Health,
    Metrics,
    Instances,
    /// `/v1/router/usage`: the usage ledger.
    Usage,
}

/// An introspection answer, for either listener to write.
pub struct Page {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Page {
    /// As a Pingora `ServeHttp` answer.
    pub fn into_response(self) -> http::Response<Vec<u8>> {
        http::Response::builder()
            .status(self.status)
            .header("content-type", self.content_type)
            .header("content-length", self.body.len())
            .body(self.body)
            .unwrap_or_default()
    }
}

/// What the introspection answers read.
#[derive(Clone)]
pub struct Sources {
    pub registry: Registry,
    /// The usage ledger (auth on).
    pub ledger: Option<Arc<Ledger>>,
    /// Loads and unloads LoRA adapters (`/v1/router/models/{model}/adapters`).
    pub adapters: Arc<crate::balance::adapters::AdapterLoader>,
}

/// The answer to `what` (`query`: the URL's query string); `draining`: the process is
/// leaving (`/health` answers 503).
pub fn answer(what: Introspect, src: &Sources, query: &str, draining: bool) -> Page {
    let registry = &src.registry;
    let json = |status, body| Page {
        status,
        content_type: "application/json",
        body,
    };
    match what {
        Introspect::Health => {
            let (status, body) = drain::health(draining);
            json(status, body)
        }
        Introspect::Instances => json(200, registry.instances_page()),
        Introspect::Usage => match usage_page(src.ledger.as_deref(), query) {
            Ok(body) => json(200, body),
            Err(e) => json(e.status.as_u16(), e.body().to_vec()),
        },
        Introspect::Metrics => Page {
            status: 200,
            content_type: metrics::CONTENT_TYPE,
            body: metrics_page(registry),
        },
    }
}

/// `GET /v1/router/usage?principal=&from=&to=`: the ledger's rows as an OpenAI-style list.
fn usage_page(ledger: Option<&Ledger>, query: &str) -> Result<Vec<u8>, ApiError> {
    let Some(ledger) = ledger else {
        return Err(ApiError::path_not_found(
            "/v1/router/usage (auth is off: no usage ledger)",
        ));
    };
    let q = UsageQuery::parse(query)
        .map_err(|(param, msg)| ApiError::bad_request("invalid_value", msg).with_param(param))?;
    let rows = ledger
        .query(&q)
        .map_err(|e| ApiError::internal(format!("usage ledger: {e}")))?;
    Ok(serde_json::json!({"object": "list", "data": rows})
        .to_string()
        .into_bytes())
}

/// The Prometheus text page: instance gauges refreshed from the registry, then everything
/// registered in this process (the embedding service's histograms included).
pub fn metrics_page(registry: &Registry) -> Vec<u8> {
    for v in registry.views() {
        let s = &v.snapshot;
        let set = |name: &str, x: f64| {
            metrics::INSTANCE
                .with_label_values(&[v.model, v.id, name])
                .set(x)
        };
        set("in_flight", s.in_flight as f64);
        set("running", s.running);
        set("waiting", s.waiting);
        set("kv_usage", s.kv_usage);
        set("score", v.score);
        set("scrape_age_seconds", s.scrape_age_s.unwrap_or(-1.0));
        set("healthy", if s.state == State::Healthy { 1.0 } else { 0.0 });
    }
    // Make sure the families exist even before the first request.
    LazyLock::force(&metrics::REQUESTS);
    LazyLock::force(&metrics::ENGINE_RESTARTS);
    LazyLock::force(&metrics::ACCESS_LOG_DROPPED);
    LazyLock::force(&metrics::CONNECTIONS);
    metrics::gather()
}
