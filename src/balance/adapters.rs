//! LoRA adapters: which instance serves which adapter, and loading them on demand.
//!
//! An engine lists the adapters it serves in its `GET /v1/models` (entries with a
//! `parent`); the poller reads that list with `/metrics` and records it here per
//! instance. A request naming an adapter goes only to instances that serve it (load-aware
//! among them), with `model` left as the adapter's name. An adapter configured under
//! `lora_adapters` but served nowhere is loaded first, on the least loaded instance,
//! through vLLM's runtime API (`POST /v1/load_lora_adapter`; engines started with
//! `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`): concurrent first requests wait for one load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pingora::connectors::http::Connector;
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use super::stats::{now_ms, State};
use super::{Instance, Model};
use crate::http::client::{self, GetError, Request};

/// Largest answer of an engine's adapter calls read.
const MAX_ANSWER: usize = 1024 * 1024;

/// The adapters of one instance: each with when the router loaded it ([`now_ms`]; 0 for
/// those the engine listed).
pub(super) type Served = Vec<(String, u64)>;

impl Instance {
    pub fn serves_adapter(&self, name: &str) -> bool {
        self.lock_adapters().iter().any(|(a, _)| a == name)
    }

    /// The adapters this instance serves (as last listed, plus loads since).
    pub fn adapters(&self) -> Vec<String> {
        self.lock_adapters()
            .iter()
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// The engine's own list (from its `/v1/models`), asked for at `asked` ([`now_ms`]):
    /// an adapter the router loaded after that stays, though the list predates it.
    pub fn set_adapters(&self, list: Vec<String>, asked: u64) {
        let mut served = self.lock_adapters();
        let newer: Served = served
            .drain(..)
            .filter(|(a, at)| *at > asked && !list.contains(a))
            .collect();
        served.extend(list.into_iter().map(|a| (a, 0)));
        served.extend(newer);
    }

    fn loaded(&self, name: &str) {
        let mut served = self.lock_adapters();
        served.retain(|(a, _)| a != name);
        served.push((name.to_string(), now_ms().max(1)));
    }

    fn unloaded(&self, name: &str) {
        self.lock_adapters().retain(|(a, _)| a != name);
    }

    fn lock_adapters(&self) -> std::sync::MutexGuard<'_, Served> {
        self.adapters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Model {
    /// Adapters of this model: served by some instance, or configured.
    pub fn adapter_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lora_adapters.keys().cloned().collect();
        for i in &self.instances {
            for a in i.adapters() {
                if !names.contains(&a) {
                    names.push(a);
                }
            }
        }
        names
    }

    pub fn has_adapter(&self, name: &str) -> bool {
        self.lora_adapters.contains_key(name)
            || self.instances.iter().any(|i| i.serves_adapter(name))
    }

    /// `ready` when a healthy instance serves the adapter; `stopped` when it is only
    /// configured (it loads on the first request); else `down`.
    pub fn adapter_status(&self, name: &str) -> &'static str {
        let serving: Vec<&Arc<Instance>> = self
            .instances
            .iter()
            .filter(|i| i.serves_adapter(name))
            .collect();
        if serving.iter().any(|i| i.snapshot().state == State::Healthy) {
            "ready"
        } else if serving.is_empty() {
            "stopped"
        } else {
            "down"
        }
    }
}

/// vLLM's `GET /v1/models`: the adapters are the entries with a `parent`.
pub fn adapters_of_model_list(body: &[u8]) -> Option<Vec<String>> {
    #[derive(Deserialize)]
    struct List {
        data: Vec<Card>,
    }
    #[derive(Deserialize)]
    struct Card {
        id: String,
        #[serde(default)]
        parent: Option<String>,
    }
    let l: List = serde_json::from_slice(body).ok()?;
    Some(
        l.data
            .into_iter()
            .filter(|c| c.parent.is_some())
            .map(|c| c.id)
            .collect(),
    )
}

/// Held while one adapter is being loaded.
type LoadLock = Arc<tokio::sync::Mutex<()>>;

/// Loads and unloads adapters on engines.
pub struct AdapterLoader {
    connector: Connector,
    /// One lock per (model, adapter): a load in progress is waited for, not repeated.
    loading: Mutex<HashMap<(String, String), LoadLock>>,
}

impl Default for AdapterLoader {
    fn default() -> Self {
        AdapterLoader {
            connector: Connector::new(None),
            loading: Mutex::default(),
        }
    }
}

impl AdapterLoader {
    /// Makes sure a healthy instance of `model` serves adapter `name`: loads it from its
    /// configured path when none does. The error says why it cannot be served.
    pub async fn ensure(&self, model: &Model, name: &str) -> Result<(), String> {
        let ready = |m: &Model| {
            m.instances
                .iter()
                .any(|i| i.serves_adapter(name) && i.snapshot().state == State::Healthy)
        };
        if ready(model) {
            return Ok(());
        }
        let Some(path) = model.lora_adapters.get(name) else {
            return Err(format!(
                "LoRA adapter `{name}` is not served by any healthy instance of model `{}`",
                model.name
            ));
        };
        let lock = self
            .loading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((model.name.clone(), name.to_string()))
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        if ready(model) {
            return Ok(());
        }
        self.load(model, name, path).await.map(drop)
    }

    /// Loads adapter `name` from `path` on the least loaded healthy instance of `model`;
    /// returns that instance's id.
    pub async fn load(&self, model: &Model, name: &str, path: &str) -> Result<String, String> {
        let inst = model
            .pick_where(&[], &[], |i| i.snapshot().state == State::Healthy)
            .ok_or_else(|| {
                format!(
                    "no healthy instance of model `{}` to load LoRA adapter `{name}` on",
                    model.name
                )
            })?;
        let body = json!({"lora_name": name, "lora_path": path}).to_string();
        let (status, answer) = self
            .call(model, &inst, "/v1/load_lora_adapter", &body)
            .await?;
        let text = String::from_utf8_lossy(&answer);
        // vLLM refuses a second load of the same name; that is the state we want.
        if status != 200 && !(status == 400 && text.contains("already")) {
            warn!(model = %model.name, instance = %inst.id, adapter = name, status, answer = %text, "LoRA adapter load failed");
            return Err(format!(
                "loading LoRA adapter `{name}` on instance `{}` failed ({status})",
                inst.id
            ));
        }
        inst.loaded(name);
        info!(model = %model.name, instance = %inst.id, adapter = name, "LoRA adapter loaded");
        Ok(inst.id.clone())
    }

    /// Unloads adapter `name` from every instance of `model` that serves it; returns how
    /// many did.
    pub async fn unload(&self, model: &Model, name: &str) -> Result<usize, String> {
        let body = json!({"lora_name": name}).to_string();
        let mut n = 0;
        for inst in model.instances.iter().filter(|i| i.serves_adapter(name)) {
            let (status, answer) = self
                .call(model, inst, "/v1/unload_lora_adapter", &body)
                .await?;
            if status != 200 {
                let text = String::from_utf8_lossy(&answer);
                warn!(model = %model.name, instance = %inst.id, adapter = name, status, answer = %text, "LoRA adapter unload failed");
                return Err(format!(
                    "unloading LoRA adapter `{name}` from instance `{}` failed ({status})",
                    inst.id
                ));
            }
            inst.unloaded(name);
            n += 1;
        }
        info!(model = %model.name, adapter = name, instances = n, "LoRA adapter unloaded");
        Ok(n)
    }

    async fn call(
        &self,
        model: &Model,
        inst: &Instance,
        path: &str,
        body: &str,
    ) -> Result<(u16, bytes::BytesMut), String> {
        let req = Request {
            method: "POST",
            path,
            bearer: model.api_key.as_deref(),
            json: Some(body.as_bytes()),
        };
        let a = inst.address();
        client::request(&self.connector, &a.peer, &a.authority, req, MAX_ANSWER)
            .await
            .map_err(|e| match e {
                GetError::Io { what, .. } => format!("instance `{}`: {what}", inst.id),
                GetError::TooLarge => format!("instance `{}`: answer too large", inst.id),
            })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn adapters_are_the_entries_with_a_parent() {
        let page = br#"{"object":"list","data":[{"id":"tiny","parent":null},{"id":"sql","parent":"tiny","root":"/a"},{"id":"x","object":"model"}]}"#;
        assert_eq!(
            super::adapters_of_model_list(page),
            Some(vec!["sql".to_string()])
        );
        assert_eq!(super::adapters_of_model_list(b"nope"), None);
    }
}
