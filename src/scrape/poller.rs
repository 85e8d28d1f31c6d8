//! The poller: the one Pingora background service that asks the instances anything. For
//! every instance it asks `GET /health` (each model's `health_check_interval_s`; every
//! tick while an engine starts or someone waits for a verdict) and records the answer
//! as the instance's one health verdict (`balance::health`); for every LLM instance it
//! also polls `GET /metrics` (`poll_interval_s`, ±10% jitter), the balancer's load inputs,
//! and with it `GET /v1/models`, whose entries with a `parent` are the LoRA adapters the
//! instance serves (`balance::adapters`).
//!
//! Cost stays flat with the number of instances: one task polls all of them concurrently
//! (no task per poll), each over one pooled connection that is reused from poll to poll,
//! and a page is parsed without allocating per sample.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::connectors::http::Connector;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use tracing::{info, warn};

use super::dialect::{extract, Engine, EngineLoad};
use crate::balance::adapters::adapters_of_model_list;
use crate::balance::select::LoadInputs;
use crate::balance::stats::{now_ms, Process};
use crate::balance::{Instance, Registry};
use crate::config::{BalancerOptions, ModelKind};
use crate::hash::mix;
use crate::http::client::{self, GetError, Request};

/// Largest `/metrics` page read (a vLLM page is ~50 KiB).
const MAX_PAGE: usize = 8 * 1024 * 1024;
/// Largest `/v1/models` answer read.
const MAX_MODEL_LIST: usize = 1024 * 1024;
/// Largest `/health` answer read.
const MAX_HEALTH: usize = 64 * 1024;
/// How often the poller looks for due work: the resolution of an engine's readiness.
const TICK: Duration = Duration::from_millis(250);

struct Target {
    inst: Arc<Instance>,
    /// LLM instances: their metrics are polled (with this dialect, or the one detected).
    metrics: bool,
    engine: Option<Engine>,
    health_every: u64,
    /// An instance of the co-hosted embedding service: checked once that listens.
    hosted: bool,
    /// The model's engine key (`api_key`): `/v1/models` needs it on such engines.
    api_key: Option<String>,
}

/// Per-target memory of the previous polls, owned by the polling task.
#[derive(Default, Clone)]
struct Memory {
    /// (time ms, prompt + generation tokens) of the previous successful scrape.
    tokens: Option<(u64, f64)>,
    /// The last error, logged once until it changes or clears.
    error: Option<String>,
    /// Whether the last failure was the instance being unreachable.
    unreachable: bool,
    /// [`now_ms`] at which the next `/health` is due.
    next_health: u64,
}

pub struct Poller {
    targets: Vec<Target>,
    interval: Duration,
    timeout: Duration,
    connector: Connector,
    /// Set once the co-hosted embedding service listens (see [`HostedListening`]).
    hosted_listening: Arc<AtomicBool>,
}

/// Why one scrape failed.
enum Failure {
    /// Connect error, timeout, non-200: the instance itself is in trouble.
    Unreachable(String),
    /// The page arrived but says nothing usable: metrics unknown, instance not blamed.
    BadPage(String),
}

/// What one tick asks of one target.
#[derive(Clone, Copy, Default)]
struct Due {
    health: bool,
    metrics: bool,
}

impl Poller {
    /// Polls every instance of `registry` (`/metrics` of LLM instances only: embedding
    /// and rerank models have no engine metrics), metrics with the global `balancer:`
    /// cadence. `hosted_embeddings`: this process serves the embedding service, whose
    /// instances are checked only once it listens.
    pub fn new(registry: &Registry, opts: &BalancerOptions, hosted_embeddings: bool) -> Self {
        let targets = registry
            .models()
            .flat_map(|m| {
                m.instances.iter().map(|i| Target {
                    inst: i.clone(),
                    metrics: m.kind == ModelKind::Llm,
                    engine: m.engine,
                    health_every: m.opts.health_check_interval.as_millis() as u64,
                    hosted: hosted_embeddings && m.kind != ModelKind::Llm,
                    api_key: m.api_key.clone(),
                })
            })
            .collect();
        Poller {
            targets,
            interval: opts.poll_interval,
            timeout: opts.scrape_timeout,
            connector: Connector::new(None),
            hosted_listening: Arc::new(AtomicBool::new(!hosted_embeddings)),
        }
    }

    /// Instances whose `/metrics` are polled.
    pub fn target_count(&self) -> usize {
        self.targets.iter().filter(|t| t.metrics).count()
    }

    /// The service that tells this poller the embedding service at `addr` listens (made
    /// to depend on its listener).
    pub fn hosted_listening(&self, addr: SocketAddr) -> HostedListening {
        HostedListening {
            flag: self.hosted_listening.clone(),
            addr,
        }
    }

    /// What is due for each target at `now`; `metrics_round`: this tick polls metrics.
    fn due(&self, memory: &mut [Memory], now: u64, metrics_round: bool) -> Vec<Due> {
        let listening = self.hosted_listening.load(Ordering::Relaxed);
        self.targets
            .iter()
            .zip(memory.iter_mut())
            .map(|(t, mem)| {
                if (t.hosted && !listening) || t.inst.is_vacant() {
                    return Due::default();
                }
                let starting = t.inst.stats().process() == Process::Starting;
                let wanted = t.inst.take_health_wanted();
                let health = starting || wanted || now >= mem.next_health;
                if health {
                    mem.next_health = now + t.health_every;
                }
                Due {
                    health,
                    metrics: t.metrics && metrics_round,
                }
            })
            .collect()
    }

    /// One tick: every due check and scrape, concurrently; then their results recorded.
    async fn poll(&self, memory: &mut [Memory], metrics_round: bool) {
        let due = self.due(memory, now_ms(), metrics_round);
        if !due.iter().any(|d| d.health || d.metrics) {
            return;
        }
        let work = self.targets.iter().zip(&due).map(|(t, d)| async move {
            let started = now_ms();
            let health = if d.health {
                Some(self.check_health(&t.inst).await)
            } else {
                None
            };
            let load = if d.metrics {
                let (load, adapters) = futures_util::join!(self.scrape(t), self.adapters(t));
                if let Some(list) = adapters {
                    t.inst.set_adapters(list, started);
                }
                Some(load)
            } else {
                None
            };
            (started, health, load)
        });
        let results = futures_util::future::join_all(work).await;
        let now = now_ms();
        for ((t, (started, health, load)), mem) in
            self.targets.iter().zip(results).zip(memory.iter_mut())
        {
            if let Some(ok) = health {
                t.inst.record_health(ok, started);
            }
            if let Some(r) = load {
                record_scrape(&t.inst, r, mem, now);
                t.inst.log_state_change(&t.inst.snapshot());
            }
        }
    }

    /// `GET /health` answered 200 within the scrape timeout.
    async fn check_health(&self, inst: &Instance) -> bool {
        let get = self.get(inst, "/health", MAX_HEALTH);
        matches!(
            tokio::time::timeout(self.timeout, get).await,
            Ok(Ok((200, _)))
        )
    }

    /// The LoRA adapters the instance lists in its `/v1/models` (`None`: no usable list;
    /// what was known stays).
    async fn adapters(&self, t: &Target) -> Option<Vec<String>> {
        let req = Request {
            method: "GET",
            path: "/v1/models",
            bearer: t.api_key.as_deref(),
            json: None,
        };
        let a = t.inst.address();
        let call = client::request(&self.connector, &a.peer, &a.authority, req, MAX_MODEL_LIST);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((200, body))) => adapters_of_model_list(&body),
            _ => None,
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

    /// `GET path` over the instance's pooled connection; a pooled connection that the
    /// engine closed meanwhile is retried once on a fresh one.
    async fn get(
        &self,
        inst: &Instance,
        path: &str,
        max: usize,
    ) -> Result<(u16, BytesMut), GetError> {
        let a = inst.address();
        let get = || client::get(&self.connector, &a.peer, &a.authority, path, max);
        match get().await {
            Err(GetError::Io { reused: true, .. }) => get().await,
            r => r,
        }
    }

    async fn fetch(&self, inst: &Instance) -> Result<BytesMut, Failure> {
        let (status, page) = self
            .get(inst, "/metrics", MAX_PAGE)
            .await
            .map_err(|e| match e {
                GetError::TooLarge => {
                    Failure::BadPage(format!("page larger than {MAX_PAGE} bytes"))
                }
                GetError::Io { what, .. } => Failure::Unreachable(what),
            })?;
        if status != 200 {
            return Err(Failure::Unreachable(format!(
                "GET /metrics answered {status}"
            )));
        }
        Ok(page)
    }
}

/// Records one scrape's outcome: the load (and token rate) on success; on a failure, a
/// cooldown for an unreachable instance (one at a time: a long outage doubles it per
/// expiry, not per poll), nothing for an unusable page. Each distinct error is logged once.
fn record_scrape(inst: &Instance, r: Result<EngineLoad, Failure>, mem: &mut Memory, now: u64) {
    match r {
        Ok(load) => {
            let total = load.prompt_tokens_total.unwrap_or(0.0)
                + load.generation_tokens_total.unwrap_or(0.0);
            let rate = mem.tokens.and_then(|(t0, prev)| {
                let dt = now.saturating_sub(t0) as f64 / 1000.0;
                (dt > 0.0 && total >= prev).then(|| (total - prev) / dt)
            });
            mem.tokens = Some((now, total));
            let inputs = LoadInputs {
                waiting: load.waiting,
                running: load.running,
                kv_usage: load.kv_usage.unwrap_or(0.0),
            };
            inst.stats().record_load(inputs, rate, now);
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
                warn!(model = %inst.model, instance = %inst.id, url = %inst.address().url, error = %e, "metrics scrape failed");
                mem.error = Some(e.clone());
            }
            mem.unreachable = true;
            if inst.snapshot().cooldown_left_ms == 0 {
                inst.record_failure(&format!("metrics scrape failed: {e}"));
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Poller {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.targets.is_empty() {
            return;
        }
        let mut memory = vec![Memory::default(); self.targets.len()];
        let (mut round, mut next_metrics) = (0u64, 0u64);
        loop {
            let now = now_ms();
            let metrics_round = now >= next_metrics;
            if metrics_round {
                // ±10% jitter so that many routers (or restarts) do not poll in lock-step.
                round += 1;
                let jitter = (mix(round) % 201) as f64 / 1000.0 - 0.1;
                next_metrics = now + self.interval.mul_f64(1.0 + jitter).as_millis() as u64;
            }
            self.poll(&mut memory, metrics_round).await;
            let next = Duration::from_millis(next_metrics.saturating_sub(now_ms())).min(TICK);
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Ready once the co-hosted embedding service accepts connections: until then the poller
/// leaves that service's instances alone, rather than seeing them fail while the models
/// load, and the main listener (which depends on this) does not open, so that no request
/// reaches an embedding model whose socket is not bound yet.
///
/// It depends on the embedding listener, but Pingora calls a listening service ready
/// before it binds its socket: hence the connect loop.
pub struct HostedListening {
    flag: Arc<AtomicBool>,
    addr: SocketAddr,
}

#[async_trait]
impl BackgroundService for HostedListening {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = shutdown.changed() => return,
            }
        }
        self.flag.store(true, Ordering::Relaxed);
        ready.notify_ready();
    }
}
