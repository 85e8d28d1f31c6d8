//! Instance registry and the choice of an instance for a request.
//!
//! The choice itself is [`select`], a pure function over a snapshot of the instances'
//! loads so that it can be unit- and property-tested without sockets. The registry holds
//! the live per-instance counters; [`InFlightGuard`] keeps the router's own in-flight count
//! exact by decrementing on drop, which is tied to the end of the streamed response body,
//! a client hang-up or a failed attempt, whichever comes first.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use indexmap::IndexMap;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{Config, ModelConfig, ModelKind, RouterOptions};

/// One upstream server, with the live counters the balancer reads.
#[derive(Debug)]
pub struct Instance {
    pub id: String,
    pub model: String,
    /// `http://host:port`, for logs and the instances endpoint.
    pub url: String,
    /// `host:port` as configured, sent as the `Host` header.
    pub authority: String,
    /// The resolved address with connect/pool options; built once, reused by every request.
    pub peer: HttpPeer,
    in_flight: AtomicUsize,
}

impl Instance {
    /// Requests the router currently has open to this instance.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request against this instance until the guard is dropped.
    pub fn acquire(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }
}

/// Holds one in-flight slot of an [`Instance`]; releases it on drop.
#[derive(Debug)]
pub struct InFlightGuard(Arc<Instance>);

impl InFlightGuard {
    pub fn instance(&self) -> &Arc<Instance> {
        &self.0
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A model as clients name it, with its instances.
#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub kind: ModelKind,
    /// What the engine calls the model; the request's `model` is rewritten to it.
    pub served_name: String,
    pub instances: Vec<Arc<Instance>>,
    /// Rotates the starting point among equally loaded instances.
    cursor: AtomicUsize,
}

impl Model {
    /// Picks the least-loaded instance not yet `tried` for this request.
    pub fn pick(&self, tried: &[bool]) -> Option<usize> {
        let loads: Vec<usize> = self.instances.iter().map(|i| i.in_flight()).collect();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        select(&loads, tried, start)
    }
}

/// The index of the lowest load among instances not excluded; among equal loads the first
/// one at or after `start` (mod n) wins, so ties rotate between successive calls.
///
/// Pure: the same inputs always give the same answer.
pub fn select(loads: &[usize], excluded: &[bool], start: usize) -> Option<usize> {
    let n = loads.len();
    if n == 0 {
        return None;
    }
    (0..n)
        .map(|k| (start.wrapping_add(k)) % n)
        .filter(|&i| !excluded.get(i).copied().unwrap_or(false))
        .min_by_key(|&i| loads[i])
}

/// Every model of the config, by client-facing name, plus aliases (`model_tag`).
#[derive(Debug)]
pub struct Registry {
    models: IndexMap<String, Arc<Model>>,
    aliases: IndexMap<String, String>,
}

impl Registry {
    /// Builds the registry, resolving every instance's host once.
    pub fn new(config: &Config) -> Result<Self, String> {
        let mut models = IndexMap::new();
        for m in &config.models {
            models.insert(m.name.clone(), Arc::new(build_model(m, &config.router)?));
        }
        // Clients may also address an LLM by its `model_tag` (what vLLM calls it), as long
        // as that is not ambiguous.
        let mut aliases = IndexMap::new();
        for m in &config.models {
            if let Some(tag) = &m.model_tag {
                let taken = models.contains_key(tag)
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
        Ok(Registry { models, aliases })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.models
            .get(name)
            .or_else(|| self.aliases.get(name).and_then(|n| self.models.get(n)))
    }

    pub fn models(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.values()
    }
}

fn build_model(m: &ModelConfig, opts: &RouterOptions) -> Result<Model, String> {
    let mut instances = Vec::new();
    for i in &m.instances {
        let addr = resolve(&i.host, i.port)?;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(opts.connect_timeout);
        peer.options.total_connection_timeout = Some(opts.connect_timeout);
        peer.options.idle_timeout = Some(opts.pool_idle_timeout);
        instances.push(Arc::new(Instance {
            id: i.id.clone(),
            model: m.name.clone(),
            url: i.url(),
            authority: format!("{}:{}", i.host, i.port),
            peer,
            in_flight: AtomicUsize::new(0),
        }));
    }
    Ok(Model {
        name: m.name.clone(),
        kind: m.kind,
        served_name: m.served_name.clone(),
        instances,
        cursor: AtomicUsize::new(0),
    })
}

/// Resolves once, preferring IPv4: `localhost` often resolves to `::1` first while
/// engines listen on `0.0.0.0` or `127.0.0.1`.
fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve instance host `{host}`: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("host `{host}` resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lowest_load_wins() {
        assert_eq!(select(&[3, 1, 2], &[false; 3], 0), Some(1));
    }

    #[test]
    fn ties_rotate_with_start() {
        let loads = [0, 0, 0];
        let picks: Vec<_> = (0..6)
            .map(|s| select(&loads, &[false; 3], s).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn excluded_are_skipped_and_all_excluded_is_none() {
        assert_eq!(select(&[0, 5], &[true, false], 0), Some(1));
        assert_eq!(select(&[0, 5], &[true, true], 0), None);
        assert_eq!(select(&[], &[], 0), None);
    }

    proptest! {
        #[test]
        fn picks_a_minimal_non_excluded(loads in proptest::collection::vec(0usize..10, 0..8),
                                        mask in proptest::collection::vec(any::<bool>(), 8),
                                        start in any::<usize>()) {
            let excl = &mask[..loads.len()];
            match select(&loads, excl, start) {
                None => prop_assert!(excl.iter().all(|&e| e)),
                Some(i) => {
                    prop_assert!(!excl[i]);
                    let min = loads.iter().zip(excl).filter(|(_, &e)| !e).map(|(l, _)| *l).min().unwrap();
                    prop_assert_eq!(loads[i], min);
                }
            }
        }
    }

    #[test]
    fn guard_counts_in_flight() {
        let cfg = Config::from_yaml_str(
            "LLM_engines:\n  m:\n    instances: [{id: a, host: 127.0.0.1, port: 1}]\n    model_config: {model_tag: t}\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        let reg = Registry::new(&cfg).unwrap();
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
}
