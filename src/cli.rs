//! Command line: `llm-router --config FILE [--listen ADDR]`, `llm-router check --config FILE`.
//!
//! Pingora's own options (`-d` daemon, `-u` upgrade, `-t` test, `-c` server conf) are
//! flattened in, so the usual Pingora operations keep working.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use pingora::apps::http_app::HttpServer;
use pingora::proxy::http_proxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use pingora::services::ServiceReadyNotifier;
use pingora::services::{ServiceHandle, ServiceWithDependents};
use tracing::{info, warn};

use crate::admin::AdminApp;
use crate::auth::Auth;
use crate::config::Config;
use crate::daemon::ParentReadyGate;
use crate::embed::service::{EmbedApp, EmbedLoader};
use crate::ledger::{Ledger, LedgerFlush};
use crate::lifecycle::drain::{DrainWatch, Draining};
use crate::proxy::guard::ConnGuard;
use crate::proxy::linger::Lingering;
use crate::proxy::Router;
use crate::scrape::poller::Poller;
use crate::supervisor::Supervisor;

pub use crate::lifecycle::EXIT_CONFIG;

#[derive(Debug, Parser)]
#[command(
    name = "llm-router",
    version,
    about = "One OpenAI-compatible endpoint in front of every model on a GPU host"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The router's YAML config (models, instances, `router:` settings).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address, overriding `router.listen` (default 127.0.0.1:8947).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub pingora: Opt,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a config and print it resolved (models, instances, defaults).
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run only the embedding/rerank service of a config (for a separate host).
    Embed {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// API keys of the keys file (`auth.keys_file`).
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// A new key: printed once on the first line, then the keys-file entry holding only
    /// its SHA-256 (paste it under the principal's `keys:`, then SIGHUP the router).
    New {
        /// The principal the key is for (its `id` in the keys file).
        #[arg(long, value_name = "NAME")]
        id: String,
        /// A note kept next to the hash (default: today's date).
        #[arg(long)]
        label: Option<String>,
    },
    /// Make the running router re-read its keys file (SIGHUP to the pid in the pid file;
    /// a broken file keeps the old keys: see its log and `llm_router_keys_reload_total`).
    Reload {
        /// The daemon's pid file (default: `pid_file` of the Pingora conf given by `-c`).
        #[arg(long, value_name = "FILE")]
        pid_file: Option<String>,
    },
}

/// `llm-router keys reload`: SIGHUP to the daemon of the pid file.
fn reload_keys(pid_file: Option<String>, opt: Opt) -> i32 {
    let pid_file = match pid_file {
        Some(f) => f,
        None => match pingora_server(opt) {
            Ok(s) => s.configuration.pid_file.clone(),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_CONFIG;
            }
        },
    };
    match crate::daemon::send_reload(&pid_file) {
        Ok(pid) => {
            println!("llm-router (pid {pid}) told to re-read its keys file");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `llm-router keys new`: the key alone on stdout's first line, then its YAML entry.
fn new_key(id: &str, label: Option<String>) -> i32 {
    let key = match crate::auth::token::new_key() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let digest = crate::auth::token::hex(&crate::auth::token::digest(&key));
    let label = label.unwrap_or_else(|| chrono::Utc::now().format("%Y-%m-%d").to_string());
    // JSON strings are YAML strings: the label is quoted whatever it contains.
    let label = serde_json::Value::from(label);
    println!("{key}");
    println!(
        "# for principal `{id}`: paste under its `keys:` (the key above is not stored anywhere)"
    );
    println!("- {{sha256: \"{digest}\", label: {label}}}");
    eprintln!(
        "Give the key on the first line to `{id}`; it is shown only this once. Then reload the \
         keys: `systemctl kill -s HUP --kill-who=main llm-router` or `llm-router keys reload -c <pingora.yaml>` (never SIGHUP the engines)."
    );
    0
}

/// Loads a config, printing every problem; `None` means exit with [`EXIT_CONFIG`].
fn load(path: &Path) -> Option<Config> {
    match Config::load(path) {
        Ok(c) => {
            crate::telemetry::set_log_level(&c.router.log_level);
            for w in &c.warnings {
                warn!("{w}");
            }
            Some(c)
        }
        Err(errs) => {
            eprintln!("{errs}");
            None
        }
    }
}

/// The keys file of a loaded config (when auth is on), printing every problem; `None`
/// means exit with [`EXIT_CONFIG`].
fn load_auth(config: &Config) -> Option<Arc<Auth>> {
    match Auth::new(config) {
        Ok((auth, warnings)) => {
            for w in &warnings {
                warn!("{w}");
            }
            Some(Arc::new(auth))
        }
        Err(errs) => {
            eprintln!("{errs}");
            None
        }
    }
}

pub fn main() -> i32 {
    // SIGHUP's default action kills; until the handler that reopens the logs is up (a
    // service, after the daemon fork), it is ignored. Engines get the default back.
    // SAFETY: setting a signal disposition to SIG_IGN, before any other thread exists.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGHUP,
            nix::sys::signal::SigHandler::SigIgn,
        );
    }
    crate::telemetry::init_logging();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { config }) => check(&config),
        Some(Command::Embed { config }) => embed_only(&config, cli.pingora),
        Some(Command::Keys {
            action: KeysCommand::New { id, label },
        }) => new_key(&id, label),
        Some(Command::Keys {
            action: KeysCommand::Reload { pid_file },
        }) => reload_keys(pid_file, cli.pingora),
        None => {
            let Some(path) = cli.config.clone() else {
                eprintln!("error: --config FILE is required (see --help)");
                return EXIT_CONFIG;
            };
            if cli.pingora.test {
                // Pingora's own -t runs only after services start; answer it here.
                return check(&path);
            }
            run(cli, &path)
        }
    }
}

fn check(path: &Path) -> i32 {
    let Some(c) = load(path) else {
        return EXIT_CONFIG;
    };
    if load_auth(&c).is_none() {
        return EXIT_CONFIG;
    }
    match serde_yaml::to_string(&c) {
        Ok(s) => {
            println!("# {}: OK", path.display());
            print!("{s}");
            0
        }
        Err(e) => {
            eprintln!("cannot print config: {e}");
            1
        }
    }
}

/// Grace period when the Pingora conf sets none: long enough for a long generation to
/// finish during a reload or stop (Pingora's own default is 300 s).
pub const DEFAULT_GRACE_PERIOD_S: u64 = 120;

/// Pingora's fast timers (`fast_timeout_to_tokio_threshold_seconds`) only for timeouts of
/// at most this long; longer ones use Tokio's. A fast timer stays registered until its
/// deadline even when the operation it guarded ended long before (one entry per 10 ms
/// of deadline and thread), so every timeout that long holds memory for that long: with
/// Pingora's default (900 s) the engine read timeout (`read_idle_timeout_s`, 600 s) made
/// the router's memory grow for ten minutes under load (the 600 s soak ended at 48 MiB
/// instead of 19), then level off.
/// Tokio's timers go away with the operation.
pub const FAST_TIMERS_UP_TO_S: u64 = 10;

/// The Pingora server from `-c FILE` (or defaults), with our defaults for the keys the file
/// leaves out: `grace_period_seconds` 120 s and `daemon_wait_for_ready: true` (so that `-d`
/// returns only once the new process is ready, which the safe reload order relies on).
fn pingora_server(opt: Opt) -> Result<Server, String> {
    let (mut conf, keys) = match &opt.conf {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{path}: cannot read: {e}"))?;
            let keys: serde_yaml::Value =
                serde_yaml::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
            let conf = ServerConf::from_yaml(&text).map_err(|e| format!("{path}: {e}"))?;
            (conf, keys)
        }
        None => (
            ServerConf::new().ok_or("cannot build the default Pingora settings")?,
            serde_yaml::Value::Null,
        ),
    };
    if keys.get("grace_period_seconds").is_none() {
        conf.grace_period_seconds = Some(DEFAULT_GRACE_PERIOD_S);
    }
    if keys.get("daemon_wait_for_ready").is_none() {
        conf.daemon_wait_for_ready = true;
    }
    if keys
        .get("fast_timeout_to_tokio_threshold_seconds")
        .is_none()
    {
        conf.fast_timeout_to_tokio_threshold_seconds = Some(FAST_TIMERS_UP_TO_S);
    }
    Ok(Server::new_with_opt_and_conf(
        Opt { conf: None, ..opt },
        conf,
    ))
}

/// Services are added in start-up order: everything the new process must have done before
/// the old one may leave is a dependency of the bootstrap service (see [`crate::daemon`]),
/// and every listener starts after the bootstrap, which hands it the old sockets.
struct Startup {
    server: Server,
    before_bootstrap: Vec<ServiceHandle>,
    listeners: Vec<ServiceHandle>,
    /// Every address a listener will bind, checked before anything starts.
    addresses: Vec<SocketAddr>,
    /// What the main listener waits for: the co-hosted embedding service accepting
    /// connections, so that the main port never routes to an unbound socket.
    main_waits_for: Vec<ServiceHandle>,
}

impl Startup {
    fn new(server: Server) -> Self {
        let mut s = Startup {
            server,
            before_bootstrap: Vec::new(),
            listeners: Vec::new(),
            addresses: Vec::new(),
            main_waits_for: Vec::new(),
        };
        let gate = ParentReadyGate::new(&s.server.configuration);
        s.prerequisite(background_service("parent ready gate", gate));
        s
    }

    /// A service that must be ready before the old process is told to leave.
    fn prerequisite(&mut self, svc: impl ServiceWithDependents + 'static) -> ServiceHandle {
        let h = self.server.add_service(svc);
        self.before_bootstrap.push(h.clone());
        h
    }

    /// A listening service on `addr` (started after the bootstrap).
    fn listener<A: pingora::apps::ServerApp + Send + Sync + 'static>(
        &mut self,
        mut svc: Service<A>,
        addr: SocketAddr,
    ) -> ServiceHandle {
        svc.add_tcp(&addr.to_string());
        self.addresses.push(addr);
        let h = self.server.add_service(svc);
        self.listeners.push(h.clone());
        h
    }

    /// The main listener: like [`Self::listener`], and after [`Self::main_waits_for`].
    fn main_listener<A: pingora::apps::ServerApp + Send + Sync + 'static>(
        &mut self,
        svc: Service<A>,
        addr: SocketAddr,
    ) {
        let h = self.listener(svc, addr);
        for w in &self.main_waits_for {
            h.add_dependency(w);
        }
    }

    /// The background services (drain watch, instance poller, SIGHUP, engine supervisor),
    /// the co-hosted embedding service and the admin listener. Returns the number of
    /// engines supervised and of instances whose metrics are polled.
    fn services(
        &mut self,
        config: &Config,
        sources: &crate::admin::Sources,
        draining: &Draining,
    ) -> Result<(usize, usize), String> {
        let registry = &sources.registry;
        let server = &mut self.server;
        let hosts_embeddings = config.embedding.as_ref().is_some_and(|o| o.managed);
        let poller = Poller::new(registry, &config.balancer, hosts_embeddings);
        let supervisor = Supervisor::new(config, registry, server.watch_execution_phase());
        let counts = (supervisor.engine_count(), poller.target_count());
        let phases = server.watch_execution_phase();
        server.add_service(background_service(
            "drain watch",
            DrainWatch::new(phases, draining.clone()),
        ));
        server.add_service(background_service(
            "SIGHUP: reopen logs",
            crate::telemetry::Hangup,
        ));
        // Engines adopted (or started) before the old router is told to leave.
        self.prerequisite(background_service("engine supervisor", supervisor));
        if let Some((e, addr)) = self.embedding(config)? {
            // Its instances are checked, and the main port opens, once it accepts.
            let gate = self.server.add_service(background_service(
                "embedding service listening",
                poller.hosted_listening(addr),
            ));
            gate.add_dependency(&e);
            self.main_waits_for.push(gate);
        }
        self.server
            .add_service(background_service("instance poller", poller));
        let dns = crate::discover::Discovery::new(registry.clone(), &config.balancer);
        self.server
            .add_service(background_service("DNS refresh", dns));
        if let Some(addr) = config.router.admin_listen {
            let app = AdminApp::new(sources.clone(), draining.clone());
            let mut admin = Service::new("admin listener".to_string(), HttpServer::new_app(app));
            admin.threads = Some(1);
            self.listener(admin, addr);
            info!(listen = %addr, "admin listener (/metrics, /health)");
        }
        Ok(counts)
    }

    /// The co-hosted embedding service, when this process serves it (`embedding_server`
    /// present and not `managed: false`): its model loader (a prerequisite) and its
    /// listener. Returns the listener's handle and address.
    fn embedding(
        &mut self,
        config: &Config,
    ) -> Result<Option<(ServiceHandle, SocketAddr)>, String> {
        let Some(opts) = config.embedding.as_ref().filter(|o| o.managed) else {
            return Ok(None);
        };
        let addr = crate::http::client::resolve("embedding_server.host", &opts.host, opts.port)?;
        let app = EmbedApp::default();
        let loader = self.prerequisite(background_service(
            "embedding models",
            EmbedLoader::new(app.clone(), opts, &config.models),
        ));
        let mut service = Service::new("embedding service".to_string(), HttpServer::new_app(app));
        service.threads = Some(self.server.configuration.threads.max(1));
        let h = self.listener(service, addr);
        h.add_dependency(&loader);
        info!(listen = %addr, "embedding service listening");
        Ok(Some((h, addr)))
    }

    /// Checks the listen addresses, then runs the server: prerequisites, bootstrap (the
    /// old process's sockets), listeners; the process commits once the bootstrap is done.
    fn run_forever(mut self) -> i32 {
        let conf = self.server.configuration.clone();
        // During a graceful upgrade the old router's sockets are handed over: an address
        // it listens on is not "in use".
        let old_router = self
            .server
            .options
            .as_ref()
            .is_some_and(|o| o.upgrade)
            .then(|| crate::daemon::read_pid(&conf.pid_file).ok())
            .flatten();
        if let Err(e) = crate::daemon::check_listen(&self.addresses, old_router) {
            eprintln!("error: {e}");
            return 1;
        }
        if conf.daemon {
            crate::daemon::restore_pid_file_on_abort(conf.pid_file.clone());
        }
        self.server
            .add_service(background_service("start-up failure watch", FailureWatch));
        let bootstrap = self.server.bootstrap_as_a_service();
        for p in &self.before_bootstrap {
            bootstrap.add_dependency(p);
        }
        for l in &self.listeners {
            l.add_dependency(&bootstrap);
        }
        let commit = self
            .server
            .add_service(background_service("start-up commit", Commit));
        commit.add_dependency(&bootstrap);
        self.server.run_forever()
    }
}

/// The pid in a pid file, if any.
/// Marks the process as in charge once the bootstrap (the hand-over) is done.
struct Commit;

#[async_trait::async_trait]
impl BackgroundService for Commit {
    async fn start_with_ready_notifier(&self, _: ShutdownWatch, ready: ServiceReadyNotifier) {
        crate::lifecycle::commit();
        ready.notify_ready();
    }
}

/// The one place a running router exits on its own: a service reported that the start
/// cannot succeed (e.g. a model that does not load), or a drained process is done. The exit hooks put back what the
/// abandoned start changed.
struct FailureWatch;

#[async_trait::async_trait]
impl BackgroundService for FailureWatch {
    async fn start(&self, _: ShutdownWatch) {
        let f = crate::lifecycle::failed().await;
        if f.code == 0 {
            tracing::info!("{}", f.message);
        } else {
            tracing::error!("{}", f.message);
            eprintln!("error: {}", f.message);
        }
        std::process::exit(f.code);
    }
}

fn embed_only(path: &Path, opt: Opt) -> i32 {
    let Some(config) = load(path) else {
        return EXIT_CONFIG;
    };
    let mut start = match pingora_server(opt) {
        Ok(s) => Startup::new(s),
        Err(e) => {
            eprintln!("config error: {e}");
            return EXIT_CONFIG;
        }
    };
    match start.embedding(&config) {
        Ok(Some(_)) => {}
        Ok(None) => {
            eprintln!(
                "config error: {}: embedding_server: nothing to serve (missing, or managed: false)",
                path.display()
            );
            return EXIT_CONFIG;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CONFIG;
        }
    };
    start.run_forever()
}

fn run(cli: Cli, path: &Path) -> i32 {
    let Some(mut config) = load(path) else {
        return EXIT_CONFIG;
    };
    if let Some(l) = cli.listen {
        config.router.listen = l;
        if let Err(e) = config.check_exposure() {
            eprintln!("config error: {e} (--listen)");
            return EXIT_CONFIG;
        }
    }
    let Some(auth) = load_auth(&config) else {
        return EXIT_CONFIG;
    };
    let ledger = match auth.required().then(|| Ledger::open(&config.auth.usage_db)) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            eprintln!("error: auth.usage_db: cannot open the usage ledger: {e}");
            return EXIT_CONFIG;
        }
    };
    let draining = Draining::default();
    let router = Router::new(&config, draining.clone(), auth.clone(), ledger.clone());
    let router = match router.and_then(|r| r.check().map(|_| r)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("config error: {}: {e}", path.display());
            return EXIT_CONFIG;
        }
    };
    let mut start = match pingora_server(cli.pingora) {
        Ok(s) => Startup::new(s),
        Err(e) => {
            eprintln!("config error: {e}");
            return EXIT_CONFIG;
        }
    };
    let sources = router.sources().clone();
    let (engines, scrape_targets) = match start.services(&config, &sources, &draining) {
        Ok(counts) => counts,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CONFIG;
        }
    };
    if auth.required() {
        start.server.add_service(background_service(
            "SIGHUP: reload keys",
            crate::auth::reload::KeysReload(auth),
        ));
    }
    if let Some(l) = ledger {
        info!(db = %l.path().display(), "usage ledger");
        start
            .server
            .add_service(background_service("usage ledger", LedgerFlush(l)));
    }
    let connections = router.connections();
    let proxy = ConnGuard::new(
        Lingering::new(http_proxy(&start.server.configuration, router)),
        connections,
    );
    let mut svc = Service::new("llm-router proxy".to_string(), proxy);
    let listen = config.router.listen;
    svc.threads = Some(config.router.threads);
    start.main_listener(svc, listen);
    info!(
        listen = %listen,
        models = config.models.len(),
        scrape_targets,
        engines,
        config = %path.display(),
        "llm-router listening"
    );
    start.run_forever()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(conf: Option<&Path>) -> Opt {
        Opt {
            conf: conf.map(|p| p.display().to_string()),
            ..Opt::default()
        }
    }

    #[test]
    fn our_defaults_apply_only_where_the_pingora_conf_is_silent() {
        let s = pingora_server(opt(None)).unwrap();
        assert_eq!(
            s.configuration.grace_period_seconds,
            Some(DEFAULT_GRACE_PERIOD_S)
        );
        assert!(s.configuration.daemon_wait_for_ready);
        assert_eq!(
            s.configuration.fast_timeout_to_tokio_threshold_seconds,
            Some(FAST_TIMERS_UP_TO_S)
        );

        let dir = tempfile::tempdir().unwrap();
        let silent = dir.path().join("silent.yaml");
        std::fs::write(&silent, "---\nversion: 1\npid_file: /tmp/x.pid\n").unwrap();
        let s = pingora_server(opt(Some(&silent))).unwrap();
        assert_eq!(s.configuration.grace_period_seconds, Some(120));
        assert!(s.configuration.daemon_wait_for_ready);
        assert_eq!(s.configuration.pid_file, "/tmp/x.pid");

        let explicit = dir.path().join("explicit.yaml");
        std::fs::write(
            &explicit,
            "---\nversion: 1\ngrace_period_seconds: 7\ndaemon_wait_for_ready: false\nfast_timeout_to_tokio_threshold_seconds: 120\n",
        )
        .unwrap();
        let s = pingora_server(opt(Some(&explicit))).unwrap();
        assert_eq!(s.configuration.grace_period_seconds, Some(7));
        assert_eq!(
            s.configuration.fast_timeout_to_tokio_threshold_seconds,
            Some(120)
        );
        assert!(!s.configuration.daemon_wait_for_ready);

        let broken = dir.path().join("broken.yaml");
        std::fs::write(&broken, "---\nversion: [\n").unwrap();
        let e = pingora_server(opt(Some(&broken))).err().unwrap();
        assert!(e.contains("broken.yaml"), "{e}");
        let e = pingora_server(opt(Some(&dir.path().join("none.yaml"))))
            .err()
            .unwrap();
        assert!(e.contains("none.yaml") && e.contains("cannot read"), "{e}");
    }
}
