//! From the file's shape ([`RawFile`]) to a checked [`Config`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{
    RawBalancer, RawCommand, RawCudaDevice, RawEmbedModel, RawEmbeddingServer, RawFile,
    RawInstance, RawLlmModel, RawRouter, RawSupervisor,
};
use super::{
    AffinityKey, BalancerOptions, Config, ConfigError, ConfigErrors, CudaDevices,
    EmbedModelSettings, InstanceConfig, ModelConfig, ModelKind, RouterOptions, SupervisorOptions,
};

/// YAML text to [`RawFile`]; syntax and type errors carry the key path and line/column.
pub(super) fn parse(text: &str, file: &Path) -> Result<RawFile, ConfigErrors> {
    if text.trim().is_empty() {
        return Err(ConfigErrors::one(ConfigError::new(
            file,
            "",
            "file is empty (expected `LLM_engines` and/or `embedding_server`)",
        )));
    }
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." { String::new() } else { path };
        // serde_yaml already prefixes some messages with the path: say it once.
        let msg = e.inner().to_string();
        let msg = msg
            .strip_prefix(&format!("{key}: "))
            .map(str::to_string)
            .unwrap_or(msg);
        ConfigErrors::one(ConfigError::new(file, key, msg))
    })
}

/// Collects every problem instead of stopping at the first.
pub(super) struct Checker<'a> {
    file: &'a Path,
    /// The config file's directory (absolute): relative paths in the file are relative
    /// to it, never to the working directory (`-d` changes that to `/`).
    base: PathBuf,
    errors: Vec<ConfigError>,
    /// Unknown keys: reported, not fatal.
    warnings: Vec<String>,
}

/// The absolute directory of `file`, against which its relative paths resolve.
fn base_dir(file: &Path) -> PathBuf {
    let dir = file.parent().unwrap_or(Path::new(""));
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

impl Checker<'_> {
    /// Every key of `unknown` as "`base.key`: unknown key, ignored".
    fn unknown_keys<V>(&mut self, base: &str, unknown: &indexmap::IndexMap<String, V>) {
        for key in unknown.keys() {
            let key = if base.is_empty() {
                key.clone()
            } else {
                format!("{base}.{key}")
            };
            self.warnings.push(format!(
                "{}: {key}: unknown key, ignored",
                self.file.display()
            ));
        }
    }

    /// `p` as written in the file, resolved against the file's directory.
    pub(super) fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.as_os_str().is_empty() || p.is_absolute() {
            p.to_path_buf()
        } else {
            // `./x` reads as `x`; `..` is kept (no symlink is resolved).
            let rest = p
                .components()
                .filter(|c| *c != std::path::Component::CurDir);
            self.base
                .iter()
                .chain(rest.map(|c| c.as_os_str()))
                .collect()
        }
    }

    /// A command's program: a path when it contains a slash (resolved like other paths),
    /// else a name looked up on `PATH` when the engine starts.
    fn program(&self, argv: &mut [String]) {
        if let Some(p) = argv.first_mut().filter(|p| p.contains('/')) {
            *p = self.path(p).display().to_string();
        }
    }

    pub(super) fn err(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError::new(self.file, key, reason));
    }

    fn port(&mut self, key: String, port: i64) -> u16 {
        match u16::try_from(port) {
            Ok(p) if p > 0 => p,
            _ => {
                self.err(key, format!("port {port} is out of range 1-65535"));
                0
            }
        }
    }

    fn cuda(&mut self, key: String, dev: Option<RawCudaDevice>) -> Option<CudaDevices> {
        let devices = self.cuda_list(&key, dev?)?;
        let mut seen = std::collections::BTreeSet::new();
        if let Some(d) = devices.0.iter().find(|d| !seen.insert(**d)) {
            self.err(key, format!("CUDA device {d} is listed twice"));
            return None;
        }
        Some(devices)
    }

    fn cuda_list(&mut self, key: &str, dev: RawCudaDevice) -> Option<CudaDevices> {
        match dev {
            RawCudaDevice::One(n) => Some(CudaDevices(vec![n])),
            RawCudaDevice::Many(v) if v.is_empty() => {
                self.err(key, "empty list of CUDA devices");
                None
            }
            RawCudaDevice::Many(v) => Some(CudaDevices(v)),
            RawCudaDevice::Text(s) => {
                let parsed: Result<Vec<u32>, _> =
                    s.split(',').map(|p| p.trim().parse::<u32>()).collect();
                match parsed {
                    Ok(v) if !v.is_empty() => Some(CudaDevices(v)),
                    _ => {
                        self.err(
                            key,
                            format!(
                                "`{s}` is not a device number or a comma-separated list of them"
                            ),
                        );
                        None
                    }
                }
            }
        }
    }

    pub(super) fn secs(&mut self, key: &str, v: Option<f64>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Duration::from_secs_f64(s),
            Some(s) => {
                self.err(key, format!("{s} is not a positive number of seconds"));
                default
            }
        }
    }

    fn weight(&mut self, key: String, v: Option<f64>, default: f64) -> f64 {
        match v {
            None => default,
            Some(w) if w.is_finite() && w >= 0.0 => w,
            Some(w) => {
                self.err(key, format!("{w} is not a weight (a number >= 0)"));
                default
            }
        }
    }
}

pub(super) fn resolve(raw: RawFile, file: &Path) -> Result<Config, ConfigErrors> {
    let mut c = Checker {
        file,
        base: base_dir(file),
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    for key in raw.unknown.keys() {
        c.warnings.push(format!(
            "{}: {key}: unknown top-level key, ignored (known: LLM_engines, embedding_server, router)",
            file.display()
        ));
    }
    let router = resolve_router(&mut c, raw.router);
    let supervisor = resolve_supervisor(&mut c, raw.supervisor);
    let balancer = resolve_balancer(&mut c, "balancer", &raw.balancer, &RawBalancer::default());
    let mut models = Vec::new();
    for (name, m) in raw.llm_engines {
        let m = resolve_llm(&mut c, name, m, &balancer, &raw.balancer);
        models.push(m);
    }
    let embedding = raw
        .embedding_server
        .map(|es| resolve_embedding(&mut c, es, &balancer, &mut models));
    if models.is_empty() {
        c.err(
            "",
            "no models configured (expected `LLM_engines` and/or `embedding_server`)",
        );
    }
    check_unique(&mut c, &models);
    check_aliases_and_fallbacks(&mut c, &models);
    let auth = super::access::resolve_auth(&mut c, raw.auth, &supervisor.run_dir);
    let request_policy = super::access::resolve_request_policy(&mut c, &raw.admission);
    let tokens = super::access::resolve_tokens(&mut c, &raw.admission);
    let rate_headers = raw.admission.headers != Some(super::raw::RateHeadersMode::None);
    let adm = raw.admission;
    let queue = super::admission::resolve_queue(
        &mut c,
        adm.critical_reserve,
        adm.classes,
        adm.queue,
        adm.saturation,
        &adm.models,
        &models,
    );
    let config = Config {
        source: file.to_path_buf(),
        router,
        balancer,
        supervisor,
        embedding,
        models,
        auth,
        request_policy,
        tokens,
        rate_headers,
        queue,
        warnings: c.warnings,
    };
    if let Err(e) = config.check_exposure() {
        c.errors.push(e);
    }
    if c.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(c.errors))
    }
}

/// One `LLM_engines` entry.
fn resolve_llm(
    c: &mut Checker<'_>,
    name: String,
    m: RawLlmModel,
    balancer: &BalancerOptions,
    raw_balancer: &RawBalancer,
) -> ModelConfig {
    let base = format!("LLM_engines.{name}");
    c.unknown_keys(&base, &m.unknown);
    if m.instances.is_empty() && m.discover.is_none() {
        c.err(
            format!("{base}.instances"),
            "a model needs at least one instance (or `discover`)",
        );
    }
    let discover = m.discover.map(|d| resolve_discover(c, &base, d));
    if m.model_config.model_tag.trim().is_empty() {
        c.err(
            format!("{base}.model_config.model_tag"),
            "must not be empty",
        );
    }
    let instances: Vec<InstanceConfig> = m
        .instances
        .into_iter()
        .enumerate()
        .map(|(i, inst)| resolve_instance(c, &format!("{base}.instances[{i}]"), inst))
        .collect();
    let model_balancer = match &m.balancer {
        None => balancer.clone(),
        Some(own) => model_balancer(c, &base, own, raw_balancer),
    };
    check_tensor_parallel(c, &base, &m.model_config.flags, &instances);
    let command = resolve_command(c, &base, m.command);
    let api_key = resolve_api_key(c, &base, m.api_key, m.api_key_env);
    let tag = m.model_config.model_tag;
    ModelConfig {
        api_key,
        engine: m.engine,
        command,
        env: m.env,
        balancer: model_balancer,
        served_name: m.served_model_name.unwrap_or_else(|| tag.clone()),
        name,
        kind: ModelKind::Llm,
        model_tag: Some(tag),
        instances,
        engine_flags: m.model_config.flags,
        embed: None,
        aliases: m.aliases,
        fallback: m.fallback,
        lora_adapters: m.lora_adapters,
        discover,
    }
}

fn resolve_discover(
    c: &mut Checker<'_>,
    base: &str,
    d: super::raw::RawDiscover,
) -> super::Discover {
    let k = format!("{base}.discover");
    if d.dns.trim().is_empty() {
        c.err(format!("{k}.dns"), "must name a host");
    }
    if d.port == 0 {
        c.err(format!("{k}.port"), "must be a port number (1-65535)");
    }
    let max = d.max_instances.unwrap_or(8);
    if !(1..=256).contains(&max) {
        c.err(
            format!("{k}.max_instances"),
            format!("{max} is not between 1 and 256"),
        );
    }
    super::Discover {
        dns: d.dns,
        port: d.port,
        max_instances: max,
    }
}

/// `api_key` or `api_key_env` (read now, so a missing variable fails the start).
fn resolve_api_key(
    c: &mut Checker<'_>,
    base: &str,
    key: Option<String>,
    env: Option<String>,
) -> Option<super::Secret> {
    match (key, env) {
        (Some(_), Some(_)) => {
            c.err(
                format!("{base}.api_key_env"),
                "set either api_key or api_key_env, not both",
            );
            None
        }
        (Some(k), None) if k.is_empty() => {
            c.err(format!("{base}.api_key"), "must not be empty");
            None
        }
        (Some(k), None) => Some(super::Secret(k)),
        (None, Some(var)) => match std::env::var(&var) {
            Ok(k) if !k.is_empty() => Some(super::Secret(k)),
            _ => {
                c.err(
                    format!("{base}.api_key_env"),
                    format!("environment variable `{var}` is not set (or empty)"),
                );
                None
            }
        },
        (None, None) => None,
    }
}

fn resolve_instance(c: &mut Checker<'_>, key: &str, inst: RawInstance) -> InstanceConfig {
    c.unknown_keys(key, &inst.unknown);
    if inst.id.trim().is_empty() {
        c.err(format!("{key}.id"), "must not be empty");
    }
    if inst.host.trim().is_empty() {
        c.err(format!("{key}.host"), "must not be empty");
    }
    let port = c.port(format!("{key}.port"), inst.port);
    let cuda_device = c.cuda(format!("{key}.cuda_device"), inst.cuda_device);
    InstanceConfig {
        id: inst.id,
        host: inst.host,
        port,
        cuda_device,
        managed: inst.managed.unwrap_or(true),
        env: inst.env,
    }
}

/// A model's own `balancer:` over the global one; the polling cadence is global only.
fn model_balancer(
    c: &mut Checker<'_>,
    base: &str,
    own: &RawBalancer,
    global: &RawBalancer,
) -> BalancerOptions {
    for (set, k) in [
        (own.poll_interval_s.is_some(), "poll_interval_s"),
        (own.dns_refresh_s.is_some(), "dns_refresh_s"),
        (own.hosts_file.is_some(), "hosts_file"),
        (own.scrape_timeout_s.is_some(), "scrape_timeout_s"),
        (
            own.health_check_interval_s.is_some(),
            "health_check_interval_s",
        ),
    ] {
        if set {
            c.err(
                format!("{base}.balancer.{k}"),
                "can only be set in the global `balancer:` section",
            );
        }
    }
    resolve_balancer(c, &format!("{base}.balancer"), own, global)
}

/// The engine command: `vllm serve` unless given (a line or an argv list).
fn resolve_command(c: &mut Checker<'_>, base: &str, raw: Option<RawCommand>) -> Vec<String> {
    let mut command = match raw {
        None => vec!["vllm".to_string(), "serve".to_string()],
        Some(RawCommand::Line(l)) => l.split_whitespace().map(str::to_string).collect(),
        Some(RawCommand::Argv(v)) => v,
    };
    c.program(&mut command);
    if command.is_empty() {
        c.err(format!("{base}.command"), "must name a program");
    }
    command
}

/// Resolves `own` (falling back key by key to `parent`, then to the defaults).
fn resolve_balancer(
    c: &mut Checker<'_>,
    base: &str,
    own: &RawBalancer,
    parent: &RawBalancer,
) -> BalancerOptions {
    let d = BalancerOptions::default();
    let pick = |a: Option<f64>, b: Option<f64>| a.or(b);
    let weights = resolve_weights(c, base, own, parent);
    let poll_interval = c.secs(
        &format!("{base}.poll_interval_s"),
        pick(own.poll_interval_s, parent.poll_interval_s),
        d.poll_interval,
    );
    let stale_default = poll_interval * 3;
    let cooldown = c.secs(
        &format!("{base}.cooldown_s"),
        pick(own.cooldown_s, parent.cooldown_s),
        d.cooldown,
    );
    let cooldown_max = c.secs(
        &format!("{base}.cooldown_max_s"),
        pick(own.cooldown_max_s, parent.cooldown_max_s),
        d.cooldown_max.max(cooldown),
    );
    if cooldown_max < cooldown {
        c.err(
            format!("{base}.cooldown_max_s"),
            "must not be below cooldown_s",
        );
    }
    let affinity_key = resolve_affinity_key(c, base, own, parent);
    BalancerOptions {
        policy: own.policy.or(parent.policy).unwrap_or(d.policy),
        weights,
        poll_interval,
        scrape_timeout: c.secs(
            &format!("{base}.scrape_timeout_s"),
            pick(own.scrape_timeout_s, parent.scrape_timeout_s),
            d.scrape_timeout,
        ),
        stale_after: c.secs(
            &format!("{base}.stale_after_s"),
            pick(own.stale_after_s, parent.stale_after_s),
            stale_default,
        ),
        health_check_interval: c.secs(
            &format!("{base}.health_check_interval_s"),
            pick(own.health_check_interval_s, parent.health_check_interval_s),
            poll_interval,
        ),
        cooldown,
        cooldown_max,
        affinity_key,
        affinity_max_score: c.weight(
            format!("{base}.affinity_max_score"),
            pick(own.affinity_max_score, parent.affinity_max_score),
            d.affinity_max_score,
        ),
        dns_refresh: c.secs(
            &format!("{base}.dns_refresh_s"),
            pick(own.dns_refresh_s, parent.dns_refresh_s),
            d.dns_refresh,
        ),
        hosts_file: own
            .hosts_file
            .as_deref()
            .or(parent.hosts_file.as_deref())
            .map(|p| c.path(p)),
    }
}

/// `weights:` of a balancer section, key by key over `parent`'s.
fn resolve_weights(
    c: &mut Checker<'_>,
    base: &str,
    own: &RawBalancer,
    parent: &RawBalancer,
) -> super::Weights {
    let d = BalancerOptions::default().weights;
    let (ow, pw) = (
        own.weights.clone().unwrap_or_default(),
        parent.weights.clone().unwrap_or_default(),
    );
    let mut w = |name: &str, own: Option<f64>, parent: Option<f64>, default: f64| {
        c.weight(format!("{base}.weights.{name}"), own.or(parent), default)
    };
    super::Weights {
        waiting: w("waiting", ow.waiting, pw.waiting, d.waiting),
        running: w("running", ow.running, pw.running, d.running),
        kv_cache: w("kv_cache", ow.kv_cache, pw.kv_cache, d.kv_cache),
        in_flight: w("in_flight", ow.in_flight, pw.in_flight, d.in_flight),
    }
}

/// `affinity_key:` (`header:NAME` or `body:user`), own over `parent`'s.
fn resolve_affinity_key(
    c: &mut Checker<'_>,
    base: &str,
    own: &RawBalancer,
    parent: &RawBalancer,
) -> AffinityKey {
    let d = BalancerOptions::default();
    match own.affinity_key.as_ref().or(parent.affinity_key.as_ref()) {
        None => d.affinity_key.clone(),
        Some(k) => match k.split_once(':') {
            Some(("header", h)) if http::HeaderName::from_bytes(h.trim().as_bytes()).is_ok() => {
                AffinityKey::Header(h.trim().to_ascii_lowercase())
            }
            Some(("body", "user")) => AffinityKey::BodyUser,
            _ => {
                c.err(
                    format!("{base}.affinity_key"),
                    format!("`{k}` is neither `header:NAME` nor `body:user`"),
                );
                d.affinity_key.clone()
            }
        },
    }
}

fn resolve_supervisor(c: &mut Checker<'_>, r: RawSupervisor) -> SupervisorOptions {
    let d = SupervisorOptions::default();
    SupervisorOptions {
        log_dir: c.path(
            r.log_dir
                .as_deref()
                .unwrap_or(&d.log_dir.display().to_string()),
        ),
        run_dir: c.path(
            r.run_dir
                .as_deref()
                .unwrap_or(&d.run_dir.display().to_string()),
        ),
        startup_timeout: c.secs(
            "supervisor.startup_timeout_s",
            r.startup_timeout_s,
            d.startup_timeout,
        ),
        stop_timeout: c.secs(
            "supervisor.stop_timeout_s",
            r.stop_timeout_s,
            d.stop_timeout,
        ),
        restart_backoff_max: c.secs(
            "supervisor.restart_backoff_max_s",
            r.restart_backoff_max_s,
            d.restart_backoff_max,
        ),
        unhealthy_restart_after: c.secs(
            "supervisor.unhealthy_restart_after_s",
            r.unhealthy_restart_after_s,
            d.unhealthy_restart_after,
        ),
        progress_interval: c.secs(
            "supervisor.progress_interval_s",
            r.progress_interval_s,
            d.progress_interval,
        ),
    }
}

/// `tensor_parallel_size: N` needs N GPUs per instance.
fn check_tensor_parallel(
    c: &mut Checker<'_>,
    base: &str,
    flags: &indexmap::IndexMap<String, serde_yaml::Value>,
    instances: &[InstanceConfig],
) {
    let tp = flags
        .iter()
        .find(|(k, _)| k.replace('-', "_") == "tensor_parallel_size")
        .and_then(|(_, v)| v.as_u64());
    let Some(tp) = tp else { return };
    for (i, inst) in instances.iter().enumerate() {
        if let Some(dev) = &inst.cuda_device {
            if dev.0.len() as u64 != tp {
                c.err(
                    format!("{base}.instances[{i}].cuda_device"),
                    format!(
                        "tensor_parallel_size is {tp} but {} CUDA device(s) are given; list one per shard, e.g. [0, 1]",
                        dev.0.len()
                    ),
                );
            }
        }
    }
}

fn resolve_router(c: &mut Checker<'_>, r: RawRouter) -> RouterOptions {
    let d = RouterOptions::default();
    let (listen, admin_listen) = router_listeners(c, &r, d.listen);
    let log_level = r.log_level.clone().unwrap_or_else(|| d.log_level.clone());
    if let Err(e) = super::valid_log_level(&log_level) {
        c.err(
            "router.log_level",
            format!(
                "`{log_level}` is not a level (error, warn, info, debug, trace) or filter: {e}"
            ),
        );
    }
    let threads = at_least_one(c, "router.threads", r.threads, d.threads);
    if r.max_attempts == Some(0) {
        c.err("router.max_attempts", "must be at least 1");
    }
    let (max_body_bytes, max_buffered_body_bytes) = router_body_limits(c, &r, &d);
    RouterOptions {
        listen,
        threads,
        connect_timeout: c.secs(
            "router.connect_timeout_s",
            r.connect_timeout_s,
            d.connect_timeout,
        ),
        first_byte_timeout: c.secs(
            "router.first_byte_timeout_s",
            r.first_byte_timeout_s,
            d.first_byte_timeout,
        ),
        read_idle_timeout: c.secs(
            "router.read_idle_timeout_s",
            r.read_idle_timeout_s,
            d.read_idle_timeout,
        ),
        pool_idle_timeout: c.secs(
            "router.pool_idle_timeout_s",
            r.pool_idle_timeout_s,
            d.pool_idle_timeout,
        ),
        max_body_bytes,
        max_buffered_body_bytes,
        max_attempts: r.max_attempts,
        retry_after_s: r.retry_after_s.unwrap_or(d.retry_after_s),
        access_log: r.access_log.unwrap_or(d.access_log),
        access_log_file: r.access_log_file.as_deref().map(|p| c.path(p)),
        log_level,
        admin_listen,
        timeouts: resolve_timeouts(c, &r.timeouts),
        request_limits: resolve_request_limits(c, &r.request_limits),
        connections: resolve_connections(c, &r.connections),
        stored_responses: resolve_stored_responses(c, &r.stored_responses),
    }
}

/// `router.listen` and `router.admin_listen`, which must differ in port.
fn router_listeners(
    c: &mut Checker<'_>,
    r: &RawRouter,
    default: SocketAddr,
) -> (SocketAddr, Option<SocketAddr>) {
    let mut address = |key: &str, value: &Option<String>| {
        value.as_ref().and_then(|s| match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                c.err(
                    key,
                    format!("`{s}` is not an ADDRESS:PORT such as 0.0.0.0:8947"),
                );
                None
            }
        })
    };
    let listen = address("router.listen", &r.listen).unwrap_or(default);
    let admin_listen = address("router.admin_listen", &r.admin_listen);
    if admin_listen.is_some_and(|a| a.port() == listen.port()) {
        c.err(
            "router.admin_listen",
            format!(
                "port {} is already the main listener's (router.listen)",
                listen.port()
            ),
        );
    }
    (listen, admin_listen)
}

/// `max_body_bytes` (at least 1) and `max_buffered_body_bytes` (room for the largest body).
fn router_body_limits(c: &mut Checker<'_>, r: &RawRouter, d: &RouterOptions) -> (u64, u64) {
    if r.max_body_bytes == Some(0) {
        c.err("router.max_body_bytes", "must be at least 1");
    }
    let body = r.max_body_bytes.unwrap_or(d.max_body_bytes);
    let buffered = r
        .max_buffered_body_bytes
        .unwrap_or(d.max_buffered_body_bytes);
    if buffered < body {
        c.err(
            "router.max_buffered_body_bytes",
            format!("{buffered} is below router.max_body_bytes ({body}): the largest body would never fit"),
        );
    }
    (body, buffered)
}

fn resolve_timeouts(c: &mut Checker<'_>, t: &super::raw::RawTimeouts) -> super::ClientTimeouts {
    let d = super::ClientTimeouts::default();
    let k = |name: &str| format!("router.timeouts.{name}");
    super::ClientTimeouts {
        header_read: c.secs(&k("header_read_s"), t.header_read_s, d.header_read),
        keepalive_idle: c.secs(&k("keepalive_idle_s"), t.keepalive_idle_s, d.keepalive_idle),
        body_read: c.secs(&k("body_read_s"), t.body_read_s, d.body_read),
        body_idle: c.secs(&k("body_idle_s"), t.body_idle_s, d.body_idle),
        write_idle: c.secs(&k("write_idle_s"), t.write_idle_s, d.write_idle),
    }
}

/// A count that must be at least 1 (`key` names it in the error).
fn at_least_one(c: &mut Checker<'_>, key: &str, v: Option<usize>, default: usize) -> usize {
    match v {
        Some(0) => {
            c.err(key, "must be at least 1");
            default
        }
        Some(n) => n,
        None => default,
    }
}

fn resolve_request_limits(
    c: &mut Checker<'_>,
    r: &super::raw::RawRequestLimits,
) -> super::RequestLimits {
    let d = super::RequestLimits::default();
    let k = "router.request_limits";
    super::RequestLimits {
        max_uri_bytes: at_least_one(
            c,
            &format!("{k}.max_uri_bytes"),
            r.max_uri_bytes,
            d.max_uri_bytes,
        ),
        max_header_bytes: at_least_one(
            c,
            &format!("{k}.max_header_bytes"),
            r.max_header_bytes,
            d.max_header_bytes,
        ),
        require_host: r.require_host.unwrap_or(d.require_host),
    }
}

fn resolve_connections(
    c: &mut Checker<'_>,
    r: &super::raw::RawConnections,
) -> super::ConnectionLimits {
    let d = super::ConnectionLimits::default();
    let k = "router.connections";
    super::ConnectionLimits {
        max_total: at_least_one(c, &format!("{k}.max_total"), r.max_total, d.max_total),
        max_per_ip: at_least_one(c, &format!("{k}.max_per_ip"), r.max_per_ip, d.max_per_ip),
    }
}

fn resolve_stored_responses(
    c: &mut Checker<'_>,
    r: &super::raw::RawStoredResponses,
) -> super::StoredResponses {
    let d = super::StoredResponses::default();
    let k = "router.stored_responses";
    super::StoredResponses {
        max_ids: at_least_one(c, &format!("{k}.max_ids"), r.max_ids, d.max_ids),
        ttl: c.secs(&format!("{k}.ttl_s"), r.ttl_s, d.ttl),
    }
}

/// The seed's `embedding_server` is one HTTP service serving every embedding and
/// reranking model; each model becomes a single-instance model pointing at it.
fn resolve_embedding(
    c: &mut Checker<'_>,
    es: RawEmbeddingServer,
    balancer: &BalancerOptions,
    models: &mut Vec<ModelConfig>,
) -> super::EmbedServerOptions {
    c.unknown_keys("embedding_server", &es.unknown);
    let port = c.port("embedding_server.port".into(), es.port);
    for (k, v) in [
        ("max_batch_tokens", es.max_batch_tokens),
        ("max_batch_size", es.max_batch_size),
        ("max_queue", es.max_queue),
        ("max_queue_tokens", es.max_queue_tokens),
        ("max_client_batch_size", es.max_client_batch_size),
        ("threads", es.threads),
    ] {
        if v == Some(0) {
            c.err(format!("embedding_server.{k}"), "must be at least 1");
        }
    }
    let opts = embed_server_options(c, &es, port);
    let cuda_device = c.cuda("embedding_server.cuda_device".into(), es.cuda_device);
    let groups = [
        (
            "embedding_models",
            ModelKind::Embedding,
            es.embedding_models,
        ),
        ("reranking_models", ModelKind::Rerank, es.reranking_models),
    ];
    for (section, kind, map) in groups {
        for (name, m) in map {
            let key = format!("embedding_server.{section}.{name}");
            let server = (es.host.as_str(), port, &cuda_device);
            models.push(embed_model(c, &key, name, kind, m, server, balancer));
        }
    }
    opts
}

/// One embedding or reranking model: a single-instance model on the embedding server
/// (`server`: its host, port and GPUs).
fn embed_model(
    c: &mut Checker<'_>,
    key: &str,
    name: String,
    kind: ModelKind,
    m: RawEmbedModel,
    server: (&str, u16, &Option<CudaDevices>),
    balancer: &BalancerOptions,
) -> ModelConfig {
    if m.model_path.trim().is_empty() {
        c.err(format!("{key}.model_path"), "must not be empty");
    }
    let (host, port, cuda_device) = server;
    ModelConfig {
        engine: None,
        command: Vec::new(),
        env: Default::default(),
        balancer: balancer.clone(),
        served_name: name.clone(),
        instances: vec![InstanceConfig {
            id: format!("embed:{name}"),
            host: host.to_string(),
            port,
            cuda_device: cuda_device.clone(),
            managed: false,
            env: Default::default(),
        }],
        name,
        kind,
        model_tag: m.model_name,
        engine_flags: Default::default(),
        api_key: None,
        aliases: Vec::new(),
        fallback: Vec::new(),
        lora_adapters: Default::default(),
        discover: None,
        embed: Some(EmbedModelSettings {
            model_path: c.path(&m.model_path).display().to_string(),
            tokenizer_path: m.tokenizer_path.map(|t| c.path(&t).display().to_string()),
            max_length: m.max_length,
            use_gpu: m.use_gpu,
            use_float16: m.use_float16,
            pooling: m.pooling,
            normalize: m.normalize.unwrap_or(true),
            extra: m.extra,
        }),
    }
}

/// The embedding server's own settings (limits, ONNX Runtime).
fn embed_server_options(
    c: &mut Checker<'_>,
    es: &RawEmbeddingServer,
    port: u16,
) -> super::EmbedServerOptions {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    // The key is relative to the config file; the environment variable to where the
    // router was started (it comes from the shell, not the file).
    let onnxruntime_path = match (&es.onnxruntime_path, std::env::var("ORT_DYLIB_PATH")) {
        (Some(p), _) => c.path(p),
        (None, Ok(p)) if !p.is_empty() => std::path::absolute(&p).unwrap_or_else(|_| p.into()),
        _ => c.path(super::DEFAULT_ONNXRUNTIME_PATH),
    };
    super::EmbedServerOptions {
        host: es.host.clone(),
        port,
        managed: es.managed.unwrap_or(true),
        onnxruntime_path,
        max_batch_tokens: es.max_batch_tokens.unwrap_or(16384).max(1),
        max_batch_size: es.max_batch_size.unwrap_or(64).max(1),
        max_queue: es.max_queue.unwrap_or(256).max(1),
        max_queue_tokens: es.max_queue_tokens.unwrap_or(262_144).max(1),
        max_client_batch_size: es.max_client_batch_size.unwrap_or(512).max(1),
        threads: es.threads.unwrap_or(cores).max(1),
    }
}

/// Model names, instance ids and listen addresses must each be unique.
/// Aliases are names of their own (not a model's, not another alias); a fallback names
/// another configured model of the same kind, and no chain of fallbacks comes back to
/// where it started.
fn check_aliases_and_fallbacks(c: &mut Checker<'_>, models: &[ModelConfig]) {
    let by_name: HashMap<&str, &ModelConfig> =
        models.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut aliases: HashMap<&str, &str> = HashMap::new();
    for m in models {
        for (i, a) in m.aliases.iter().enumerate() {
            let key = format!("LLM_engines.{}.aliases[{i}]", m.name);
            if a.trim().is_empty() {
                c.err(key, "must not be empty");
            } else if by_name.contains_key(a.as_str()) {
                c.err(key, format!("`{a}` is the name of a configured model"));
            } else if let Some(other) = aliases.insert(a, &m.name) {
                c.err(key, format!("`{a}` is already an alias of model `{other}`"));
            }
        }
        for (a, path) in &m.lora_adapters {
            let key = format!("LLM_engines.{}.lora_adapters.{a}", m.name);
            if by_name.contains_key(a.as_str()) || m.aliases.contains(a) {
                c.err(key, format!("`{a}` is already a model or alias name"));
            } else if path.trim().is_empty() {
                c.err(
                    key,
                    "needs the adapter's path (as the engine's host sees it)",
                );
            }
        }
        for (i, f) in m.fallback.iter().enumerate() {
            let key = format!("LLM_engines.{}.fallback[{i}]", m.name);
            match by_name.get(f.as_str()) {
                None => c.err(key, format!("`{f}` is not a configured model")),
                Some(_) if *f == m.name => c.err(key, "a model cannot be its own fallback"),
                Some(o) if o.kind != m.kind => c.err(
                    key,
                    format!(
                        "`{f}` is a {:?} model; a fallback must be of the same kind",
                        o.kind
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    for m in models {
        if let Some(path) = fallback_cycle(&by_name, &m.name) {
            c.err(
                format!("LLM_engines.{}.fallback", m.name),
                format!("fallbacks form a cycle: {}", path.join(" -> ")),
            );
        }
    }
}

/// A chain of fallbacks from `start` back to `start`, if there is one.
fn fallback_cycle<'a>(
    by_name: &HashMap<&str, &'a ModelConfig>,
    start: &'a str,
) -> Option<Vec<&'a str>> {
    let mut stack: Vec<Vec<&'a str>> = vec![vec![start]];
    while let Some(path) = stack.pop() {
        let last = *path.last().expect("never empty");
        let Some(m) = by_name.get(last) else { continue };
        for f in &m.fallback {
            if f == start {
                let mut cycle = path.clone();
                cycle.push(start);
                return Some(cycle);
            }
            if !path.contains(&f.as_str()) {
                let mut next = path.clone();
                next.push(f.as_str());
                stack.push(next);
            }
        }
    }
    None
}

fn check_unique(c: &mut Checker<'_>, models: &[ModelConfig]) {
    let mut names: HashMap<&str, ()> = HashMap::new();
    let mut ids: HashMap<&str, &str> = HashMap::new();
    let mut addrs: HashMap<(String, u16), &str> = HashMap::new();
    for m in models {
        if names.insert(&m.name, ()).is_some() {
            c.err(
                m.name.clone(),
                "model name used twice (LLM_engines and embedding_server must not share names)",
            );
        }
        // Embedding models legitimately share the one embedding server.
        if m.kind != ModelKind::Llm {
            continue;
        }
        for inst in &m.instances {
            let key = format!("LLM_engines.{}.instances[id={}]", m.name, inst.id);
            if let Some(other) = ids.insert(&inst.id, &m.name) {
                c.err(
                    key.clone(),
                    format!(
                        "duplicate instance id `{}` (also used by model `{other}`)",
                        inst.id
                    ),
                );
            }
            if inst.port == 0 {
                continue;
            }
            let addr = (normalize_host(&inst.host), inst.port);
            if let Some(other) = addrs.insert(addr, &inst.id) {
                c.err(
                    key,
                    format!(
                        "{}:{} is already used by instance `{other}`; two instances cannot share a host:port",
                        inst.host, inst.port
                    ),
                );
            }
        }
    }
    // The embedding server must not sit on an LLM instance's port either.
    if let Some(e) = models.iter().find(|m| m.kind != ModelKind::Llm) {
        let inst = &e.instances[0];
        if let Some(other) = addrs.get(&(normalize_host(&inst.host), inst.port)) {
            c.err(
                "embedding_server.port",
                format!(
                    "{}:{} is already used by instance `{other}`",
                    inst.host, inst.port
                ),
            );
        }
    }
}

/// `localhost`, `127.0.0.1` and `::1` name the same machine for clash detection.
fn normalize_host(h: &str) -> String {
    let h = h.trim().to_ascii_lowercase();
    match h.as_str() {
        "localhost" | "127.0.0.1" | "::1" | "[::1]" => "loopback".to_string(),
        _ => h,
    }
}
