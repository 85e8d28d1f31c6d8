//! Instances, their live load and health, and the choice of an instance per request.
//!
//! - [`select`]: the pure choice (score, tiers, policies) over a snapshot.
//! - [`stats`]: lock-free per-instance state (in-flight, engine load, cooldown, health).
//! - [`health`]: the one `/health` verdict per instance, written by the poller.
//! - [`lb`]: the `pingora-load-balancing` integration (one `LoadBalancer` per model).
//!
//! [`InFlightGuard`] keeps the router's own in-flight count exact: it is released on drop,
//! which is tied to the end of the streamed response body, a client hang-up or a failed
//! attempt, whichever comes first.

pub mod adapters;
pub mod health;
pub mod lb;
pub mod select;
pub mod stats;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use indexmap::IndexMap;
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::Engine;
use crate::config::{BalancerOptions, Config, ModelConfig, ModelKind, RouterOptions};
use crate::hash::stable_hash;
use lb::ScoreSelection;
use select::score;
use stats::{now_ms, InstanceStats, Process, Snapshot, State};

/// One upstream server, with the live state the balancer reads.
#[derive(Debug)]
pub struct Instance {
    pub id: String,
    /// Position in its model's instance list (config order).
    pub index: usize,
    pub id_hash: u64,
    pub model: String,
    /// The configured host (or `discover.dns` name) and port, resolved again every
    /// `balancer.dns_refresh_s`.
    pub host: String,
    pub port: u16,
    /// Where it is reached now: swapped when its host resolves to another address.
    address: ArcSwap<Address>,
    /// A `discover` slot: no address yet, or its address vanished from DNS (drained:
    /// never chosen, not polled).
    vacant: AtomicBool,
    /// Made for `discover` (an address of the DNS name), not configured.
    pub discovered: bool,
    /// The live state of every instance of the model, contiguous so that the per-request
    /// scan over all instances stays in cache; this one's is at `index`.
    pub(crate) all_stats: Arc<[InstanceStats]>,
    opts: Arc<BalancerOptions>,
    health: health::HealthSignal,
    /// The LoRA adapters it serves ([`adapters`]).
    adapters: std::sync::Mutex<adapters::Served>,
}

/// Where an instance is reached.
#[derive(Debug)]
pub struct Address {
    pub addr: SocketAddr,
    /// The resolved address with connect/pool options, reused by every request.
    pub peer: HttpPeer,
    /// `host:port` as configured, sent as the `Host` header.
    pub authority: String,
    /// `http://host:port` (with the address for a discovered one), for logs and the
    /// instances endpoint.
    pub url: String,
}

/// Connect and pool options of every instance's peer (`router:`).
#[derive(Debug, Clone, Copy)]
pub struct PeerOptions {
    pub connect_timeout: std::time::Duration,
    pub pool_idle_timeout: std::time::Duration,
}

impl PeerOptions {
    pub fn address(&self, addr: SocketAddr, authority: String, url: String) -> Address {
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.idle_timeout = Some(self.pool_idle_timeout);
        Address {
            addr,
            peer,
            authority,
            url,
        }
    }
}

impl Instance {
    /// Where it is reached now (hold the `Arc` for the whole exchange: a pooled
    /// connection goes back to the peer it came from).
    pub fn address(&self) -> Arc<Address> {
        self.address.load_full()
    }

    /// Its host now resolves to `a`.
    pub fn set_address(&self, a: Address) {
        self.address.store(Arc::new(a));
    }

    pub fn is_vacant(&self) -> bool {
        self.vacant.load(Ordering::Relaxed)
    }

    /// A `discover` slot gets an address (`Some`: chosen again once its health check
    /// passes) or loses it (`None`: drained).
    pub fn occupy(&self, a: Option<Address>) {
        match a {
            Some(a) => {
                self.set_address(a);
                self.stats().set_health_checked(false, 0);
                self.vacant.store(false, Ordering::Relaxed);
                self.stats().set_process(Process::Serving);
                self.want_health();
            }
            None => {
                self.vacant.store(true, Ordering::Relaxed);
                self.stats().set_process(Process::Down);
            }
        }
    }

    pub fn stats(&self) -> &InstanceStats {
        &self.all_stats[self.index]
    }

    /// Counts a request against this instance until the guard is dropped.
    pub fn acquire(self: &Arc<Self>) -> InFlightGuard {
        self.stats().inc_in_flight();
        InFlightGuard(self.clone(), self.address())
    }

    pub fn in_flight(&self) -> usize {
        self.stats().in_flight()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.stats().snapshot(now_ms(), self.opts.stale_after)
    }

    pub fn score(&self, s: &Snapshot) -> f64 {
        score(&self.opts.weights, s.load(), s.in_flight)
    }

    /// A passive or active failure: cooldown (logged once per state change).
    pub fn record_failure(&self, why: &str) {
        let cd = self.stats().record_failure(&self.opts, now_ms());
        let s = self.snapshot();
        if self.stats().note_state(s.state).is_some() {
            warn!(model = %self.model, instance = %self.id, url = %self.address().url, reason = %why,
                cooldown_s = cd.as_secs_f64(), failures = s.failures, "instance state: cooldown");
        }
    }

    /// A successful exchange ends a cooldown.
    pub fn record_success(&self) {
        self.stats().record_success();
    }

    /// Logs the instance's state if it changed since it was last logged.
    pub fn log_state_change(&self, s: &Snapshot) {
        if let Some(prev) = self.stats().note_state(s.state) {
            let prev = prev
                .map(|p| format!("{p:?}").to_lowercase())
                .unwrap_or_default();
            match s.state {
                State::Healthy => {
                    info!(model = %self.model, instance = %self.id, from = %prev, "instance state: healthy")
                }
                other => warn!(model = %self.model, instance = %self.id, from = %prev,
                    state = ?other, failures = s.failures, "instance state changed"),
            }
        }
    }
}

/// Holds one in-flight slot of an [`Instance`]; releases it on drop.
#[derive(Debug)]
/// Also holds the instance's address as it was when the request began: the exchange
/// connects to it and gives its connection back to its pool, even if the host resolves
/// elsewhere meanwhile.
pub struct InFlightGuard(Arc<Instance>, Arc<Address>);

impl InFlightGuard {
    pub fn instance(&self) -> &Arc<Instance> {
        &self.0
    }

    pub fn address(&self) -> &Address {
        &self.1
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.stats().dec_in_flight();
    }
}

/// A model as clients name it, with its instances and their load balancer.
pub struct Model {
    pub name: String,
    pub kind: ModelKind,
    /// What the engine calls the model; the request's `model` is rewritten to it.
    pub served_name: String,
    /// Sent to its engines as `Authorization: Bearer` (never the client's key).
    pub api_key: Option<String>,
    pub engine: Option<Engine>,
    pub opts: Arc<BalancerOptions>,
    pub instances: Vec<Arc<Instance>>,
    pub lb: Arc<LoadBalancer<ScoreSelection>>,
    /// Configured other names (`aliases`).
    pub aliases: Vec<String>,
    /// Configured models to try when none of this one's instances can take a request.
    pub fallback: Vec<String>,
    /// Configured LoRA adapters (`lora_adapters`: name → path), loaded on demand.
    pub lora_adapters: IndexMap<String, String>,
    /// Instances found by DNS: the last `max_instances` of `instances` are its slots.
    pub discover: Option<crate::config::Discover>,
    /// How its instances' peers are made (when an address changes).
    pub peers: PeerOptions,
}

impl Model {
    /// `ready` when some instance is healthy, else `starting` when one is starting, else
    /// `down` (all down or cooling down): the model's `status` in `/v1/models`.
    pub fn status(&self) -> &'static str {
        let states: Vec<State> = self.instances.iter().map(|i| i.snapshot().state).collect();
        if states.contains(&State::Healthy) {
            "ready"
        } else if states.contains(&State::Starting) {
            "starting"
        } else {
            "down"
        }
    }

    /// `id:score:tier` of every instance, as the selection sees them now (the
    /// `candidates` of a route receipt).
    pub fn candidates_receipt(&self) -> String {
        let mut out = String::new();
        for (i, inst) in self.instances.iter().enumerate() {
            let s = inst.snapshot();
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!(
                "{}:{:.1}:{}",
                inst.id,
                inst.score(&s),
                s.tier().label()
            ));
        }
        out
    }

    /// The policy's name (`least_load`, ...), for route receipts.
    pub fn policy_label(&self) -> &'static str {
        match self.opts.policy {
            crate::config::Policy::LeastLoad => "least_load",
            crate::config::Policy::RoundRobin => "round_robin",
            crate::config::Policy::PowerOfTwo => "power_of_two",
            crate::config::Policy::SessionAffinity => "session_affinity",
        }
    }

    /// Whether some instance can take a request now (healthy): else its fallbacks are
    /// tried first.
    pub fn can_serve(&self) -> bool {
        self.instances
            .iter()
            .any(|i| i.snapshot().state == State::Healthy)
    }

    /// The best instance not in `tried` (indices), per the model's policy; `key` is the
    /// session-affinity key (empty: none).
    pub fn pick(&self, key: &[u8], tried: &[usize]) -> Option<Arc<Instance>> {
        self.pick_where(key, tried, |_| true)
    }

    /// As [`Self::pick`], among the instances `accept`ed (those serving an adapter).
    pub fn pick_where(
        &self,
        key: &[u8],
        tried: &[usize],
        accept: impl Fn(&Instance) -> bool,
    ) -> Option<Arc<Instance>> {
        self.lb
            .select_with(key, self.instances.len(), |b, _health| {
                // Health is already part of the ranking (fail open); only skip the tried.
                b.ext
                    .get::<Arc<Instance>>()
                    .is_some_and(|i| !tried.contains(&i.index) && accept(i))
            })
            .and_then(|b| b.ext.get::<Arc<Instance>>().cloned())
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One row of `GET /v1/router/instances`.
#[derive(Debug, Serialize)]
pub struct InstanceView<'a> {
    pub model: &'a str,
    pub id: &'a str,
    pub url: String,
    pub score: f64,
    #[serde(flatten)]
    pub snapshot: Snapshot,
}

/// Every model of the config, by client-facing name, plus aliases (`model_tag`).
#[derive(Debug, Clone)]
pub struct Registry {
    models: IndexMap<String, Arc<Model>>,
    aliases: IndexMap<String, String>,
}

impl Registry {
    /// Builds the registry (resolving every instance's host once) with every model's
    /// selector ready.
    pub fn new(config: &Config) -> Result<Self, String> {
        let mut models = IndexMap::new();
        for m in &config.models {
            let hosts = config.balancer.hosts_file.as_deref();
            models.insert(
                m.name.clone(),
                Arc::new(build_model(m, &config.router, hosts)?),
            );
        }
        // Configured aliases (checked unique), then: clients may also address an LLM by
        // its `model_tag` (what vLLM calls it), as long as that is not ambiguous.
        let mut aliases = IndexMap::new();
        for m in &config.models {
            for a in &m.aliases {
                aliases.insert(a.clone(), m.name.clone());
            }
        }
        for m in &config.models {
            if let Some(tag) = &m.model_tag {
                let taken = models.contains_key(tag)
                    || aliases.contains_key(tag)
                    || config
                        .models
                        .iter()
                        .filter(|o| o.model_tag.as_ref() == Some(tag))
                        .count()
                        > 1;
                if !taken {
                    aliases.insert(tag.clone(), m.name.clone());
                }
            }
        }
        let reg = Registry { models, aliases };
        // Selectors are built by an async discovery pass; static discovery does no I/O,
        // so a throw-away runtime is enough. Call this outside any async runtime.
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| format!("cannot build the balancer: {e}"))?
            .block_on(reg.init())?;
        Ok(reg)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.models
            .get(name)
            .or_else(|| self.aliases.get(name).and_then(|n| self.models.get(n)))
    }

    /// The model whose adapter `name` is (configured, or served by one of its
    /// instances), when `name` is no model's name or alias.
    pub fn adapter_model(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.values().find(|m| m.has_adapter(name))
    }

    pub fn models(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.values()
    }

    /// Builds every model's selector (the load balancers' first discovery pass) so that
    /// requests can be served before the background services run.
    async fn init(&self) -> Result<(), String> {
        for m in self.models.values() {
            m.lb.update()
                .await
                .map_err(|e| format!("model {}: {e}", m.name))?;
        }
        Ok(())
    }

    /// Every instance with its live state, for `GET /v1/router/instances`.
    /// The `/v1/router/instances` answer: every instance's live state.
    pub fn instances_page(&self) -> Vec<u8> {
        serde_json::json!({ "object": "list", "data": self.views() })
            .to_string()
            .into_bytes()
    }

    pub fn views(&self) -> Vec<InstanceView<'_>> {
        self.models
            .values()
            .flat_map(|m| m.instances.iter())
            .map(|i| {
                let snapshot = i.snapshot();
                InstanceView {
                    model: &i.model,
                    id: &i.id,
                    url: i.address().url.clone(),
                    score: i.score(&snapshot),
                    snapshot,
                }
            })
            .collect()
    }
}

fn build_model(
    m: &ModelConfig,
    router: &RouterOptions,
    hosts: Option<&Path>,
) -> Result<Model, String> {
    let opts = Arc::new(m.balancer.clone());
    let peers = PeerOptions {
        connect_timeout: router.connect_timeout,
        pool_idle_timeout: router.pool_idle_timeout,
    };
    let slots = m.discover.as_ref().map_or(0, |d| d.max_instances);
    let all_stats: Arc<[InstanceStats]> = (0..m.instances.len() + slots)
        .map(|_| InstanceStats::default())
        .collect();
    let instance = |index: usize, id: String, host: &str, port: u16, address: Address| Instance {
        id_hash: stable_hash(id.as_bytes()),
        id,
        index,
        model: m.name.clone(),
        host: host.to_string(),
        port,
        address: ArcSwap::from_pointee(address),
        vacant: AtomicBool::new(false),
        discovered: false,
        all_stats: all_stats.clone(),
        opts: opts.clone(),
        health: Default::default(),
        adapters: Default::default(),
    };
    let mut instances = Vec::new();
    for (index, i) in m.instances.iter().enumerate() {
        let addr = crate::http::client::resolve_with("instance host", &i.host, i.port, hosts)?;
        let a = peers.address(addr, format!("{}:{}", i.host, i.port), i.url());
        instances.push(Arc::new(instance(index, i.id.clone(), &i.host, i.port, a)));
    }
    if let Some(d) = &m.discover {
        for slot in 0..d.max_instances {
            let index = instances.len();
            // Vacant until the resolver gives it an address (never connected to before).
            let placeholder = SocketAddr::from(([0, 0, 0, 0], d.port));
            let url = format!("http://{}:{} (vacant)", d.dns, d.port);
            let a = peers.address(placeholder, format!("{}:{}", d.dns, d.port), url);
            let mut inst = instance(index, format!("{}@dns{slot}", m.name), &d.dns, d.port, a);
            inst.vacant = AtomicBool::new(true);
            inst.discovered = true;
            inst.stats().set_process(Process::Down);
            instances.push(Arc::new(inst));
        }
    }
    let mut backends = BTreeSet::new();
    for inst in &instances {
        // The selection finds each instance through `ext`; the backend's own address
        // only has to be unique (a discover slot has none yet).
        let key = SocketAddr::from(([0, 0, 0, 0], 1 + inst.index as u16));
        let mut b = Backend::new(&key.to_string()).map_err(|e| e.to_string())?;
        b.ext.insert(inst.clone());
        backends.insert(b);
    }
    let lb = LoadBalancer::<ScoreSelection>::from_backends_with_config(
        Backends::new(discovery::Static::new(backends)),
        Some((*opts).clone()),
    );
    Ok(Model {
        name: m.name.clone(),
        kind: m.kind,
        served_name: m.served_name.clone(),
        api_key: m.api_key.as_ref().map(|k| k.0.clone()),
        engine: m.engine,
        opts,
        instances,
        lb: Arc::new(lb),
        aliases: m.aliases.clone(),
        fallback: m.fallback.clone(),
        lora_adapters: m.lora_adapters.clone(),
        discover: m.discover.clone(),
        peers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(yaml: &str) -> Registry {
        let cfg = Config::from_yaml_str(yaml, std::path::Path::new("t.yaml")).unwrap();
        Registry::new(&cfg).unwrap()
    }

    const THREE: &str = "LLM_engines:\n  m:\n    instances:\n      - {id: a, host: 127.0.0.1, port: 1}\n      - {id: b, host: 127.0.0.1, port: 2}\n      - {id: c, host: 127.0.0.1, port: 3}\n    model_config: {model_tag: t}\n";

    #[test]
    fn guard_counts_in_flight_and_alias_works() {
        let reg = registry(THREE);
        let inst = &reg.get("m").unwrap().instances[0];
        let g1 = inst.acquire();
        let g2 = inst.acquire();
        assert_eq!(inst.in_flight(), 2);
        drop(g1);
        assert_eq!(inst.in_flight(), 1);
        drop(g2);
        assert_eq!(inst.in_flight(), 0);
        assert!(reg.get("t").is_some(), "model_tag is an alias");
    }

    #[test]
    fn pick_goes_through_the_load_balancer_by_score() {
        let reg = registry(THREE);
        let m = reg.get("m").unwrap();
        let now = now_ms();
        let load = |w: f64| select::LoadInputs {
            waiting: w,
            running: 0.0,
            kv_usage: 0.0,
        };
        m.instances[0].stats().record_load(load(5.0), None, now);
        m.instances[1].stats().record_load(load(1.0), None, now);
        m.instances[2].stats().record_load(load(3.0), None, now);
        assert_eq!(m.pick(b"", &[]).unwrap().id, "b");
        assert_eq!(m.pick(b"", &[1]).unwrap().id, "c");
        assert_eq!(m.pick(b"", &[1, 2]).unwrap().id, "a");
        assert!(m.pick(b"", &[0, 1, 2]).is_none());
        // In-flight counts between scrapes.
        // b: 10*1 + 5*5 = 35 > c: 10*3 = 30.
        let _g: Vec<_> = (0..5).map(|_| m.instances[1].acquire()).collect();
        assert_eq!(m.pick(b"", &[]).unwrap().id, "c");
        // A cooling-down instance is skipped while another is healthy.
        m.instances[2].record_failure("test");
        assert_eq!(m.pick(b"", &[]).unwrap().id, "b");
    }
}

#[cfg(test)]
mod process_tests {
    use super::*;

    #[test]
    fn starting_or_down_engines_are_never_picked() {
        let cfg = Config::from_yaml_str(
            "LLM_engines:\n  m:\n    instances:\n      - {id: a, host: 127.0.0.1, port: 1}\n      - {id: b, host: 127.0.0.1, port: 2}\n    model_config: {model_tag: t}\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        let reg = Registry::new(&cfg).unwrap();
        let m = reg.get("m").unwrap();
        m.instances[0].stats().set_process(stats::Process::Starting);
        for _ in 0..4 {
            assert_eq!(m.pick(b"", &[]).unwrap().id, "b");
        }
        m.instances[1].stats().set_process(stats::Process::Down);
        assert!(m.pick(b"", &[]).is_none());
        m.instances[0].stats().set_process(stats::Process::Serving);
        assert_eq!(m.pick(b"", &[]).unwrap().id, "a");
    }
}
