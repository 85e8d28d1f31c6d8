//! Command line: `llm-router --config FILE [--listen ADDR]`, `llm-router check --config FILE`.
//!
//! Pingora's own options (`-d` daemon, `-u` upgrade, `-t` test, `-c` server conf) are
//! flattened in, so the usual Pingora operations keep working.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use pingora::apps::http_app::HttpServer;
use pingora::proxy::http_proxy_service;
use pingora::server::configuration::Opt;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::embed::service::EmbedService;
use crate::proxy::drain::{DrainWatch, Draining};
use crate::proxy::Router;
use crate::scrape::service::Scraper;
use crate::supervisor::Supervisor;

/// Exit code for a bad config file or bad arguments.
pub const EXIT_CONFIG: i32 = 2;

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
    /// Listen address, overriding `router.listen` (default 0.0.0.0:8947).
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
}

/// Loads a config, printing every problem; `None` means exit with [`EXIT_CONFIG`].
fn load(path: &Path) -> Option<Config> {
    match Config::load(path) {
        Ok(c) => {
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

pub fn main() -> i32 {
    crate::telemetry::init_logging();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { config }) => check(&config),
        Some(Command::Embed { config }) => embed_only(&config, cli.pingora),
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

/// The co-hosted embedding service of `config` as a Pingora service, when this process
/// serves it (`embedding_server` present and not `managed: false`).
fn embed_service(
    config: &Config,
    server: &Server,
) -> Result<Option<Service<HttpServer<EmbedService>>>, String> {
    let Some(opts) = config.embedding.as_ref().filter(|o| o.managed) else {
        return Ok(None);
    };
    let svc = EmbedService::load(opts, &config.models)?;
    let addr = (opts.host.as_str(), opts.port)
        .to_socket_addrs()
        .map_err(|e| format!("embedding_server.host `{}`: {e}", opts.host))?
        .min_by_key(|a| !a.is_ipv4())
        .ok_or_else(|| {
            format!(
                "embedding_server.host `{}` resolves to no address",
                opts.host
            )
        })?;
    let mut service = Service::new("embedding service".to_string(), HttpServer::new_app(svc));
    service.add_tcp(&addr.to_string());
    service.threads = Some(server.configuration.threads.max(1));
    info!(listen = %addr, "embedding service listening");
    Ok(Some(service))
}

fn embed_only(path: &Path, opt: Opt) -> i32 {
    let Some(config) = load(path) else {
        return EXIT_CONFIG;
    };
    let mut server = match Server::new(Some(opt)) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot start: {e}");
            return 1;
        }
    };
    server.bootstrap();
    match embed_service(&config, &server) {
        Ok(Some(svc)) => server.add_service(svc),
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
    server.run_forever()
}

fn run(cli: Cli, path: &Path) -> i32 {
    let Some(mut config) = load(path) else {
        return EXIT_CONFIG;
    };
    if let Some(l) = cli.listen {
        config.router.listen = l;
    }
    let draining = Draining::default();
    let router = match Router::new(&config, draining.clone()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("config error: {}: {e}", path.display());
            return EXIT_CONFIG;
        }
    };
    let mut server = match Server::new(Some(cli.pingora)) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot start: {e}");
            return 1;
        }
    };
    let scraper = Scraper::new(router.registry(), &config.balancer);
    let supervisor = Supervisor::new(&config, router.registry(), server.watch_execution_phase());
    let engines = supervisor.engine_count();
    let scrape_targets = scraper.target_count();
    let health = router.registry().health_services();
    server.bootstrap();
    // After bootstrap: in daemon mode it forks, and ONNX Runtime's and the batchers'
    // threads would not survive the fork.
    let embed = match embed_service(&config, &server) {
        Ok(e) => e.map(|e| server.add_service(e)),
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CONFIG;
        }
    };
    let phases = server.watch_execution_phase();
    server.add_service(background_service(
        "drain watch",
        DrainWatch::new(phases, draining),
    ));
    server.add_service(background_service("engine supervisor", supervisor));
    server.add_service(background_service("metrics scraper", scraper));
    for h in health {
        let handle = server.add_service(h);
        // Health checks start once the co-hosted embedding service listens.
        if let Some(e) = &embed {
            handle.add_dependency(e);
        }
    }
    let mut svc = http_proxy_service(&server.configuration, router);
    let listen = config.router.listen.to_string();
    svc.add_tcp(&listen);
    svc.threads = Some(config.router.threads);
    server.add_service(svc);
    info!(
        listen = %listen,
        models = config.models.len(),
        scrape_targets,
        engines,
        config = %path.display(),
        "llm-router listening"
    );
    server.run_forever()
}
