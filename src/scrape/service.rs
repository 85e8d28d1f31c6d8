//! The scraper: a Pingora background service polling every LLM instance's `/metrics`.
//!
//! Cost stays flat with the number of instances: one task polls all of them concurrently
//! (no task per scrape), each over one pooled connection that is reused from poll to poll,
//! and a page is parsed without allocating per sample.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing::{info, warn};

use super::dialect::{extract, Engine, EngineLoad};
use crate::balance::select::{mix, LoadInputs};
use crate::balance::stats::now_ms;
use crate::balance::{Instance, Registry};
use crate::config::{BalancerOptions, ModelKind};

/// Why a [`http_get`] failed.
pub enum GetError {
    /// Connect, send or read failed; `reused` says whether on a pooled connection.
    Io {
        what: String,
        reused: bool,
    },
    TooLarge,
}

/// A small `GET` to an instance over `connector`'s pool (the connection goes back to the
/// pool when the answer was read whole): the scraper's `/metrics` and the supervisor's
/// `/health`.
pub async fn http_get(
    connector: &Connector,
    inst: &Instance,
    path: &str,
    max: usize,
) -> Result<(u16, BytesMut), GetError> {
    let (mut s, reused) =
        connector
            .get_http_session(&inst.peer)
            .await
            .map_err(|e| GetError::Io {
                what: format!("connect: {e}"),
                reused: false,
            })?;
    let fail = |what: &str, e: Box<pingora::Error>| GetError::Io {
        what: format!("{what}: {e}"),
        reused,
    };
    let mut req =
        RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| fail("request", e))?;
    req.insert_header("host", &inst.authority)
        .map_err(|e| fail("request", e))?;
    s.write_request_header(Box::new(req))
        .await
        .map_err(|e| fail("send", e))?;
    s.finish_request_body().await.map_err(|e| fail("send", e))?;
    s.read_response_header()
        .await
        .map_err(|e| fail("read", e))?;
    let status = s.response_header().map(|h| h.status.as_u16()).unwrap_or(0);
    let mut body = BytesMut::new();
    while let Some(chunk) = s.read_response_body().await.map_err(|e| fail("read", e))? {
        if body.len() + chunk.len() > max {
            return Err(GetError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    // Pooled below the engine's keep-alive (uvicorn: 5 s), see router.pool_idle_timeout_s.
    let idle = inst.peer.options.idle_timeout;
    connector.release_http_session(s, &inst.peer, idle).await;
    Ok((status, body))
}

/// Largest `/metrics` page read (a vLLM page is ~50 KiB).
const MAX_PAGE: usize = 8 * 1024 * 1024;

struct Target {
    inst: Arc<Instance>,
    engine: Option<Engine>,
}

/// Per-target memory of the previous poll, owned by the polling task.
#[derive(Default, Clone)]
struct Memory {
    /// (time ms, prompt + generation tokens) of the previous successful scrape.
    tokens: Option<(u64, f64)>,
    /// The last error, logged once until it changes or clears.
    error: Option<String>,
    /// Whether the last failure was the instance being unreachable.
    unreachable: bool,
}

pub struct Scraper {
    targets: Vec<Target>,
    interval: Duration,
    timeout: Duration,
    connector: Connector,
}

/// Why one scrape failed.
enum Failure {
    /// Connect error, timeout, non-200: the instance itself is in trouble.
    Unreachable(String),
    /// The page arrived but says nothing usable: metrics unknown, instance not blamed.
    BadPage(String),
}

impl Scraper {
    /// Polls every LLM instance of `registry` (embedding/rerank models have no engine
    /// metrics), with the global `balancer:` cadence.
    pub fn new(registry: &Registry, opts: &BalancerOptions) -> Self {
        let targets = registry
            .models()
            .filter(|m| m.kind == ModelKind::Llm)
            .flat_map(|m| {
                m.instances.iter().map(|i| Target {
                    inst: i.clone(),
                    engine: m.engine,
                })
            })
            .collect();
        Scraper {
            targets,
            interval: opts.poll_interval,
            timeout: opts.scrape_timeout,
            connector: Connector::new(None),
        }
    }

    pub fn target_count(&self) -> usize {
        self.targets.len()
    }

    /// Runs one poll of every target; `memory` is the polling task's state.
    async fn poll(&self, memory: &mut [Memory]) {
        let results =
            futures_util::future::join_all(self.targets.iter().map(|t| self.scrape(t))).await;
        let now = now_ms();
        for ((t, r), mem) in self.targets.iter().zip(results).zip(memory.iter_mut()) {
            let inst = &t.inst;
            match r {
                Ok(load) => {
                    let total = load.prompt_tokens_total.unwrap_or(0.0)
                        + load.generation_tokens_total.unwrap_or(0.0);
                    let rate = mem.tokens.and_then(|(t0, prev)| {
                        let dt = now.saturating_sub(t0) as f64 / 1000.0;
                        (dt > 0.0 && total >= prev).then(|| (total - prev) / dt)
                    });
                    mem.tokens = Some((now, total));
                    inst.stats().record_load(
                        LoadInputs {
                            waiting: load.waiting,
                            running: load.running,
                            kv_usage: load.kv_usage.unwrap_or(0.0),
                        },
                        rate,
                        now,
                    );
                    if mem.error.take().is_some() {
                        info!(model = %inst.model, instance = %inst.id, engine = ?load.engine, "metrics scrape recovered");
                    }
                    if std::mem::take(&mut mem.unreachable) {
                        // Reachable again: whatever cooldown the outage caused ends now.
                        inst.record_success();
                    }
                }
                Err(Failure::BadPage(e)) => {
                    if mem.error.as_deref() != Some(e.as_str()) {
                        warn!(model = %inst.model, instance = %inst.id, error = %e, "metrics scrape unusable; load unknown");
                        mem.error = Some(e);
                    }
                }
                Err(Failure::Unreachable(e)) => {
                    if mem.error.as_deref() != Some(e.as_str()) {
                        warn!(model = %inst.model, instance = %inst.id, url = %inst.url, error = %e, "metrics scrape failed");
                        mem.error = Some(e.clone());
                    }
                    mem.unreachable = true;
                    // One cooldown at a time: a long outage doubles it per expiry, not per poll.
                    if inst.snapshot().cooldown_left_ms == 0 {
                        inst.record_failure(&format!("metrics scrape failed: {e}"));
                    }
                }
            }
            inst.log_state_change(&inst.snapshot());
        }
    }

    async fn scrape(&self, t: &Target) -> Result<EngineLoad, Failure> {
        let page = tokio::time::timeout(self.timeout, self.fetch(&t.inst))
            .await
            .map_err(|_| Failure::Unreachable(format!("timed out after {:?}", self.timeout)))??;
        let text =
            std::str::from_utf8(&page).map_err(|_| Failure::BadPage("page is not UTF-8".into()))?;
        extract(text, t.engine).map_err(|e| Failure::BadPage(e.to_string()))
    }

    /// `GET /metrics` over the instance's pooled connection; a pooled connection that the
    /// engine closed meanwhile is retried once on a fresh one.
    async fn fetch(&self, inst: &Instance) -> Result<BytesMut, Failure> {
        match self.fetch_once(inst).await {
            Err((Failure::Unreachable(_), true)) => self.fetch_once(inst).await.map_err(|(f, _)| f),
            r => r.map_err(|(f, _)| f),
        }
    }

    /// The error comes with whether the connection was a reused one.
    async fn fetch_once(&self, inst: &Instance) -> Result<BytesMut, (Failure, bool)> {
        let (status, page) = http_get(&self.connector, inst, "/metrics", MAX_PAGE)
            .await
            .map_err(|e| match e {
                GetError::TooLarge => (
                    Failure::BadPage(format!("page larger than {MAX_PAGE} bytes")),
                    false,
                ),
                GetError::Io { what, reused } => (Failure::Unreachable(what), reused),
            })?;
        if status != 200 {
            return Err((
                Failure::Unreachable(format!("GET /metrics answered {status}")),
                false,
            ));
        }
        Ok(page)
    }
}

#[async_trait]
impl BackgroundService for Scraper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.targets.is_empty() {
            return;
        }
        let mut memory = vec![Memory::default(); self.targets.len()];
        let mut round: u64 = 0;
        loop {
            let t0 = Instant::now();
            self.poll(&mut memory).await;
            // ±10% jitter so that many routers (or restarts) do not poll in lock-step.
            round += 1;
            let jitter = (mix(round) % 201) as f64 / 1000.0 - 0.1;
            let next = self
                .interval
                .mul_f64(1.0 + jitter)
                .saturating_sub(t0.elapsed());
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
