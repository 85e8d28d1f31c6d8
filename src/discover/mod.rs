//! Names resolved again while the router runs (`balancer.dns_refresh_s`, default 30 s):
//!
//! - a model's `discover: {dns, port}`: one instance per address the name resolves to
//!   (A and AAAA records, as the system resolver answers, `/etc/hosts` included; or
//!   `balancer.hosts_file` first). The model has `max_instances` slots for them: an
//!   address that appears takes a vacant slot (chosen once its health check passes), a
//!   slot whose address vanished is drained (no new requests; those in flight finish).
//!   This is how a Kubernetes headless Service or Consul DNS is used.
//! - the hostname of every configured instance: when it resolves elsewhere, new requests
//!   go to the new address (requests in flight keep theirs).
//!
//! A name that does not resolve keeps what it had (logged once per distinct error).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing::{info, warn};

use crate::balance::{Instance, Model, Registry};
use crate::config::BalancerOptions;
use crate::http::client;

pub struct Discovery {
    registry: Registry,
    refresh: Duration,
    hosts_file: Option<PathBuf>,
    /// The last error per name, logged once until it changes.
    errors: Mutex<HashMap<String, String>>,
}

impl Discovery {
    pub fn new(registry: Registry, opts: &BalancerOptions) -> Self {
        Discovery {
            registry,
            refresh: opts.dns_refresh,
            hosts_file: opts.hosts_file.clone(),
            errors: Mutex::default(),
        }
    }

    /// Resolves `host` on the blocking pool.
    async fn resolve(&self, host: &str, port: u16) -> Option<Vec<SocketAddr>> {
        let (h, f) = (host.to_string(), self.hosts_file.clone());
        let r = tokio::task::spawn_blocking(move || client::resolve_all(&h, port, f.as_deref()))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(addrs) => {
                errors.remove(host);
                Some(addrs)
            }
            Err(e) => {
                if errors.get(host) != Some(&e) {
                    warn!(host, error = %e, "DNS refresh failed; keeping the addresses known");
                    errors.insert(host.to_string(), e);
                }
                None
            }
        }
    }

    /// One pass over every model.
    pub async fn refresh_once(&self) {
        for m in self.registry.models() {
            for inst in m.instances.iter().filter(|i| !i.discovered) {
                self.refresh_static(m, inst).await;
            }
            if let Some(d) = &m.discover {
                if let Some(addrs) = self.resolve(&d.dns, d.port).await {
                    fill_slots(m, &addrs);
                }
            }
        }
    }

    async fn refresh_static(&self, m: &Model, inst: &Instance) {
        if inst.host.parse::<IpAddr>().is_ok() {
            return;
        }
        let Some(addrs) = self.resolve(&inst.host, inst.port).await else {
            return;
        };
        let Some(new) = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
        else {
            return;
        };
        let now = inst.address();
        if now.addr != new {
            info!(model = %m.name, instance = %inst.id, from = %now.addr, to = %new, "instance host resolves elsewhere");
            inst.set_address(m.peers.address(new, now.authority.clone(), now.url.clone()));
        }
    }
}

/// `addrs` (the name's records now) into the model's `discover` slots: kept where they
/// are, vanished ones drained, new ones in vacant slots.
fn fill_slots(m: &Model, addrs: &[SocketAddr]) {
    let Some(d) = &m.discover else { return };
    let slots: Vec<&std::sync::Arc<Instance>> =
        m.instances.iter().filter(|i| i.discovered).collect();
    for s in slots.iter().filter(|s| !s.is_vacant()) {
        let at = s.address().addr;
        if !addrs.contains(&at) {
            info!(model = %m.name, instance = %s.id, address = %at, dns = %d.dns, "address left DNS; draining");
            s.occupy(None);
        }
    }
    for a in addrs {
        if slots
            .iter()
            .any(|s| !s.is_vacant() && s.address().addr == *a)
        {
            continue;
        }
        let Some(free) = slots.iter().find(|s| s.is_vacant()) else {
            warn!(model = %m.name, dns = %d.dns, address = %a, max_instances = d.max_instances,
                "more addresses than discover.max_instances; ignored");
            continue;
        };
        info!(model = %m.name, instance = %free.id, address = %a, dns = %d.dns, "address found in DNS");
        let url = format!("http://{a} ({})", d.dns);
        free.occupy(Some(m.peers.address(
            *a,
            format!("{}:{}", d.dns, d.port),
            url,
        )));
    }
}

#[async_trait]
impl BackgroundService for Discovery {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            self.refresh_once().await;
            tokio::select! {
                _ = tokio::time::sleep(self.refresh) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
