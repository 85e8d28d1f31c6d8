//! Admission: whether a principal's request may start now, and what it is charged.
//!
//! [`limiter`] holds each principal's counters (requests and tokens per minute, tokens
//! per UTC day, requests in flight); [`bucket`] the arithmetic. A request reserves an
//! [`Estimate`] of its tokens when it is admitted and is settled with the engine's
//! reported `usage` when its answer ends (B2.3 of the design): exact for known
//! principals, with no database and no counting after the fact.

pub mod bucket;
pub mod limiter;
pub mod queue;

pub use limiter::{Admitted, Charged, Limiter, RateHeaders, Refusal};
pub use queue::{Gate, Permit, Refused};

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::Principal;
use crate::balance::stats::State;
use crate::balance::Model;
use crate::config::{OnMissingUsage, QueueOptions, Saturation, TokenOptions};
use crate::http::ApiError;

/// The queue gates of all models.
pub struct Gates {
    by_model: HashMap<String, Arc<Gate>>,
    opts: Arc<QueueOptions>,
}

impl Gates {
    pub fn new(opts: &QueueOptions) -> Self {
        let opts = Arc::new(opts.clone());
        let by_model = opts
            .models
            .iter()
            .map(|(name, m)| (name.clone(), Gate::new(name, m.max_in_flight, opts.clone())))
            .collect();
        Gates { by_model, opts }
    }

    pub fn get(&self, model: &str) -> Option<&Arc<Gate>> {
        self.by_model.get(model)
    }

    pub fn options(&self) -> &QueueOptions {
        &self.opts
    }

    /// The `priority` to write into a request of `class` for `model`, when its engines
    /// schedule by priority.
    pub fn engine_priority(&self, model: &str, class: crate::auth::Class) -> Option<i64> {
        let m = self.opts.models.get(model)?;
        m.priority_scheduling
            .then(|| self.opts.classes[queue::class_index(class)].engine_priority)
    }
}

/// Whether every healthy instance of `model` is saturated (its scraped waiting queue or
/// KV-cache use at or over `s`): sheddable requests are refused then. Unknown (stale or
/// never scraped) load does not count as saturated.
pub fn saturated(model: &Model, s: &Saturation) -> bool {
    let mut healthy = model
        .instances
        .iter()
        .map(|i| i.snapshot())
        .filter(|snap| snap.state == State::Healthy)
        .peekable();
    healthy.peek().is_some()
        && healthy.all(|snap| {
            snap.load().is_some()
                && (snap.waiting >= s.waiting_per_instance || snap.kv_usage >= s.kv_cache_usage)
        })
}

/// The 503 of a request the queue did not let in (`None`: the client left).
pub fn refused_error(model: &str, r: Refused) -> Option<(&'static str, ApiError)> {
    let (reason, msg, retry) = match r {
        Refused::ClientGone => return None,
        Refused::Full { retry_after_s } => (
            "queue_full",
            format!("Model `{model}` is at capacity and its queue is full; retry shortly"),
            retry_after_s,
        ),
        Refused::Timeout { retry_after_s } => (
            "queue_timeout",
            format!("Model `{model}` is at capacity: the wait for a place exceeds this request's max_queue_wait_s"),
            retry_after_s,
        ),
        Refused::Shed => (
            "shed",
            format!("Model `{model}` is saturated; sheddable requests are refused until it has room"),
            5,
        ),
    };
    Some((reason, ApiError::server_overloaded(msg, retry)))
}

/// Bytes per token of the prompt estimate: JSON and English text run at about four, so
/// three over-reserves a little and the settlement gives the rest back.
const BYTES_PER_TOKEN: u64 = 3;

/// What a request may use, reserved at admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Estimate {
    /// `ceil(body bytes / 3)`.
    pub prompt: u64,
    /// `n × completion cap` (0 for embeddings and rerank).
    pub completion: u64,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

/// What a request asks of its answer, from its body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Asked {
    pub body_bytes: usize,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Choices (`n`, default 1).
    pub n: u64,
    /// Chat or completions (the engine generates tokens).
    pub generation: bool,
}

/// The smallest `max_tokens_per_request` of `p` for `model` (its own and the model's).
pub fn max_tokens_per_request(p: &Principal, model: &str) -> Option<u64> {
    let own = p.limits.max_tokens_per_request;
    let for_model = p
        .model_limits
        .get(model)
        .and_then(|l| l.max_tokens_per_request);
    match (own, for_model) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The reservation of a request: its prompt from the body's size, its completion from
/// `max_tokens` (or `tokens.default_completion_reserve`), capped by `max_tokens_per_request`.
/// A `max_tokens` over that cap is a 400: the engine would be allowed more than the
/// principal may spend on one request.
pub fn estimate(
    opts: &TokenOptions,
    asked: &Asked,
    cap: Option<u64>,
) -> Result<Estimate, ApiError> {
    let prompt = (asked.body_bytes as u64).div_ceil(BYTES_PER_TOKEN);
    if !asked.generation {
        return Ok(Estimate {
            prompt,
            completion: 0,
        });
    }
    if let (Some(m), Some(c)) = (asked.max_tokens, cap) {
        if m > c {
            return Err(ApiError::bad_request(
                "invalid_value",
                format!("`max_tokens` is {m}; this key may ask for at most {c} per request (max_tokens_per_request)"),
            )
            .with_param("max_tokens"));
        }
    }
    let per_choice = asked
        .max_tokens
        .unwrap_or(opts.default_completion_reserve)
        .min(cap.unwrap_or(u64::MAX));
    Ok(Estimate {
        prompt,
        completion: per_choice.saturating_mul(asked.n.max(1)),
    })
}

/// The tokens to charge when the answer is over. `usage` as the engine reported it
/// (`None` when it did not: a client that left, an engine cut, an old engine); `events`:
/// the stream's data events relayed; `answered`: an engine answered at all.
pub fn charge(
    on_missing: OnMissingUsage,
    est: &Estimate,
    usage: Option<u64>,
    events: u64,
    answered: bool,
) -> (u64, bool) {
    match usage {
        Some(u) => (u, false),
        // Nothing reached an engine (no instance, refused before forwarding): free.
        None if !answered => (0, false),
        None => match on_missing {
            OnMissingUsage::Chunks => (est.prompt.saturating_add(events), true),
            OnMissingUsage::Reservation => (est.total(), true),
        },
    }
}

#[cfg(test)]
mod tests;
