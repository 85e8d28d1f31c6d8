//! The keys file (`auth.keys_file`): principals, the SHA-256 of their keys, what they
//! may use and their limits. Read at start (a bad file: exit 2 with file, key path and
//! reason) and on SIGHUP (a bad file keeps the keys in use).
//!
//! ```yaml
//! version: 1
//! defaults: {class: standard, limits: {max_in_flight: 8}}
//! principals:
//!   - id: vision-batch
//!     class: sheddable
//!     models: ["Qwen2.5-14B-Instruct", "bge-*"]
//!     endpoints: [chat, embeddings, models]
//!     keys: [{sha256: "9f2c...", label: "2026-11", expires: 2027-11-01T00:00:00Z}]
//!     limits: {requests_per_minute: 600, tokens_per_minute: 400000}
//!     model_limits: {Qwen2.5-14B-Instruct: {max_in_flight: 4}}
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use globset::{Glob, GlobSet, GlobSetBuilder};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, ConfigErrors};

/// Endpoint names a principal may be allowed (`endpoints:`); `*` allows all.
pub const ENDPOINTS: [&str; 12] = [
    "chat",
    "completions",
    "embeddings",
    "rerank",
    "tokenize",
    "score",
    "pooling",
    "responses",
    "messages",
    "audio",
    "other",
    "models",
];

/// Priority class of a principal's requests (the admission queue's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Critical,
    #[default]
    Standard,
    Sheddable,
}

impl Class {
    pub fn label(self) -> &'static str {
        match self {
            Class::Critical => "critical",
            Class::Standard => "standard",
            Class::Sheddable => "sheddable",
        }
    }
}

/// A principal's limits; `None`: no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_in_flight: Option<u64>,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub max_tokens_per_request: Option<u64>,
}

impl Limits {
    /// `self` over `base`, key by key.
    fn over(self, base: Limits) -> Limits {
        Limits {
            max_in_flight: self.max_in_flight.or(base.max_in_flight),
            requests_per_minute: self.requests_per_minute.or(base.requests_per_minute),
            tokens_per_minute: self.tokens_per_minute.or(base.tokens_per_minute),
            tokens_per_day: self.tokens_per_day.or(base.tokens_per_day),
            max_tokens_per_request: self.max_tokens_per_request.or(base.max_tokens_per_request),
        }
    }

    fn zero_key(&self) -> Option<&'static str> {
        [
            (self.max_in_flight, "max_in_flight"),
            (self.requests_per_minute, "requests_per_minute"),
            (self.tokens_per_minute, "tokens_per_minute"),
            (self.tokens_per_day, "tokens_per_day"),
            (self.max_tokens_per_request, "max_tokens_per_request"),
        ]
        .into_iter()
        .find(|(v, _)| *v == Some(0))
        .map(|(_, k)| k)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: u32,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    principals: Vec<RawPrincipal>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    class: Option<Class>,
    #[serde(default)]
    limits: Limits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    id: String,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    class: Option<Class>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    endpoints: Option<Vec<String>>,
    #[serde(default)]
    keys: Vec<RawKey>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    model_limits: IndexMap<String, Limits>,
    #[serde(default)]
    enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    sha256: String,
    #[serde(default)]
    #[allow(dead_code)]
    label: Option<String>,
    #[serde(default)]
    expires: Option<DateTime<Utc>>,
}

/// One tenant: a team or a service, with one or more keys that share its limits.
#[derive(Debug)]
pub struct Principal {
    pub id: String,
    pub team: Option<String>,
    pub class: Class,
    models: GlobSet,
    /// `None`: every endpoint.
    endpoints: Option<HashSet<String>>,
    pub limits: Limits,
    /// Per configured model: limits of its requests, counted apart and also within
    /// [`Self::limits`].
    pub model_limits: HashMap<String, Limits>,
    pub enabled: bool,
    /// Its prefix-cache salt ([`super::cache_salt`]) as a JSON string, computed once.
    pub(super) salt: String,
    /// Per configured model: whether [`Self::models`] allows it (resolved at load, so the
    /// request path does no glob matching).
    allowed: HashMap<String, bool>,
    /// Its Prometheus series.
    pub series: crate::telemetry::metrics::PrincipalSeries,
}

impl Principal {
    /// Whether the principal may use the configured model `name`.
    pub fn may_use(&self, name: &str) -> bool {
        self.allowed
            .get(name)
            .copied()
            .unwrap_or_else(|| self.models.is_match(name))
    }

    /// Whether the principal may call endpoint `name` (one of [`ENDPOINTS`]).
    pub fn may_call(&self, name: &str) -> bool {
        self.endpoints.as_ref().is_none_or(|e| e.contains(name))
    }
}

/// A key of the file: whose it is and until when.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub principal: Arc<Principal>,
    pub expires: Option<DateTime<Utc>>,
}

/// The loaded keys file.
#[derive(Debug, Default)]
pub struct Keys {
    by_digest: HashMap<[u8; 32], KeyEntry>,
    principals: Vec<Arc<Principal>>,
}

impl Keys {
    pub fn lookup(&self, digest: &[u8; 32]) -> Option<&KeyEntry> {
        self.by_digest.get(digest)
    }

    pub fn principals(&self) -> &[Arc<Principal>] {
        &self.principals
    }

    pub fn principal(&self, id: &str) -> Option<&Arc<Principal>> {
        self.principals.iter().find(|p| p.id == id)
    }

    pub fn key_count(&self) -> usize {
        self.by_digest.len()
    }

    /// Reads and checks `path` against the configured model names. Returns the keys and
    /// warnings (a model glob that matches no configured model).
    pub fn load(path: &Path, models: &[&str]) -> Result<(Keys, Vec<String>), ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one(ConfigError::new(path, "", format!("cannot read file: {e}")))
        })?;
        let de = serde_yaml::Deserializer::from_str(&text);
        let raw: RawFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            ConfigErrors::one(ConfigError::new(path, key, e.inner().to_string()))
        })?;
        let mut b = Builder {
            file: path,
            models,
            errors: Vec::new(),
            warnings: Vec::new(),
            keys: Keys::default(),
            ids: HashSet::new(),
        };
        if raw.version != 1 {
            b.err(
                "version",
                format!("version {} is not supported (1 is)", raw.version),
            );
        }
        if let Some(k) = raw.defaults.limits.zero_key() {
            b.err(
                format!("defaults.limits.{k}"),
                "must be at least 1 (leave it out for no limit)",
            );
        }
        for (i, p) in raw.principals.into_iter().enumerate() {
            b.principal(i, p, &raw.defaults);
        }
        if b.errors.is_empty() {
            Ok((b.keys, b.warnings))
        } else {
            Err(ConfigErrors(b.errors))
        }
    }
}

struct Builder<'a> {
    file: &'a Path,
    models: &'a [&'a str],
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    keys: Keys,
    ids: HashSet<String>,
}

impl Builder<'_> {
    fn err(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError::new(self.file, key, reason));
    }

    fn principal(&mut self, i: usize, p: RawPrincipal, defaults: &RawDefaults) {
        let base = format!("principals[{i}]");
        if p.id.trim().is_empty() {
            self.err(format!("{base}.id"), "must not be empty");
        } else if !self.ids.insert(p.id.clone()) {
            self.err(
                format!("{base}.id"),
                format!("`{}` is already a principal", p.id),
            );
        }
        let models = self.models(&base, p.models.unwrap_or_else(|| vec!["*".into()]));
        let endpoints = self.endpoints(&base, p.endpoints);
        let limits = p.limits.over(defaults.limits);
        if let Some(k) = p.limits.zero_key() {
            self.err(
                format!("{base}.limits.{k}"),
                "must be at least 1 (leave it out for no limit)",
            );
        }
        let mut model_limits = HashMap::new();
        for (name, l) in p.model_limits {
            if !self.models.contains(&name.as_str()) {
                self.err(
                    format!("{base}.model_limits.{name}"),
                    "not a configured model",
                );
            }
            if let Some(k) = l.zero_key() {
                self.err(
                    format!("{base}.model_limits.{name}.{k}"),
                    "must be at least 1",
                );
            }
            model_limits.insert(name, l);
        }
        let allowed = (self.models.iter())
            .map(|m| (m.to_string(), models.is_match(m)))
            .collect();
        let principal = Arc::new(Principal {
            salt: super::salt_of(&p.id),
            series: crate::telemetry::metrics::PrincipalSeries::new(&p.id),
            allowed,
            id: p.id,
            team: p.team,
            class: p.class.or(defaults.class).unwrap_or_default(),
            models,
            endpoints,
            limits,
            model_limits,
            enabled: p.enabled.unwrap_or(true),
        });
        if p.keys.is_empty() {
            self.warnings.push(format!(
                "{}: {base}.keys: principal `{}` has no keys",
                self.file.display(),
                principal.id
            ));
        }
        for (j, k) in p.keys.into_iter().enumerate() {
            self.key(&format!("{base}.keys[{j}]"), k, &principal);
        }
        self.keys.principals.push(principal);
    }

    fn key(&mut self, base: &str, k: RawKey, principal: &Arc<Principal>) {
        let Some(digest) = parse_digest(&k.sha256) else {
            self.err(
                format!("{base}.sha256"),
                "must be 64 hex digits (the SHA-256 that `llm-router keys new` prints)",
            );
            return;
        };
        let entry = KeyEntry {
            principal: principal.clone(),
            expires: k.expires,
        };
        if let Some(other) = self.keys.by_digest.insert(digest, entry) {
            self.err(
                format!("{base}.sha256"),
                format!(
                    "the same key is already listed (principal `{}`)",
                    other.principal.id
                ),
            );
        }
    }

    fn models(&mut self, base: &str, globs: Vec<String>) -> GlobSet {
        let mut set = GlobSetBuilder::new();
        for (j, g) in globs.iter().enumerate() {
            match Glob::new(g) {
                Ok(glob) => {
                    let m = glob.compile_matcher();
                    if !self.models.iter().any(|name| m.is_match(name)) {
                        self.warnings.push(format!(
                            "{}: {base}.models[{j}]: `{g}` matches no configured model",
                            self.file.display()
                        ));
                    }
                    set.add(glob);
                }
                Err(e) => self.err(
                    format!("{base}.models[{j}]"),
                    format!("`{g}` is not a glob: {e}"),
                ),
            }
        }
        set.build().unwrap_or_else(|_| GlobSet::empty())
    }

    fn endpoints(&mut self, base: &str, names: Option<Vec<String>>) -> Option<HashSet<String>> {
        let names = names?;
        if names.iter().any(|n| n == "*") {
            return None;
        }
        for (j, n) in names.iter().enumerate() {
            if !ENDPOINTS.contains(&n.as_str()) {
                self.err(
                    format!("{base}.endpoints[{j}]"),
                    format!("`{n}` is not an endpoint ({}, or *)", ENDPOINTS.join(", ")),
                );
            }
        }
        Some(names.into_iter().collect())
    }
}

/// 64 hex digits to 32 bytes.
fn parse_digest(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<(Keys, Vec<String>), ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.yaml");
        std::fs::write(&p, yaml).unwrap();
        Keys::load(&p, &["Qwen3", "bge-small", "bge-large"])
    }

    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn principals_with_globs_endpoints_and_limits_over_defaults() {
        let (keys, warnings) = load(&format!(
            "version: 1\ndefaults: {{class: sheddable, limits: {{max_in_flight: 8, requests_per_minute: 60}}}}\n\
             principals:\n  - id: a\n    models: ['bge-*']\n    endpoints: [embeddings]\n    keys: [{{sha256: '{H1}'}}, {{sha256: '{H2}', expires: 2030-01-01T00:00:00Z}}]\n    limits: {{requests_per_minute: 5}}\n    model_limits: {{bge-small: {{max_in_flight: 2}}}}\n"
        ))
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let a = keys.principal("a").unwrap();
        assert_eq!(a.class, Class::Sheddable);
        assert!(a.may_use("bge-large") && !a.may_use("Qwen3"));
        assert!(a.may_call("embeddings") && !a.may_call("chat"));
        assert_eq!(a.limits.max_in_flight, Some(8));
        assert_eq!(a.limits.requests_per_minute, Some(5));
        // A model's limits are its own (counted within the principal's).
        let m = a.model_limits["bge-small"];
        assert_eq!((m.max_in_flight, m.requests_per_minute), (Some(2), None));
        assert_eq!(keys.key_count(), 2);
        let e = keys.lookup(&parse_digest(H2).unwrap()).unwrap();
        assert_eq!(e.principal.id, "a");
        assert!(e.expires.is_some());
    }

    #[test]
    fn every_problem_has_its_key_path() {
        let errs = load(&format!(
            "version: 1\nprincipals:\n  - id: a\n    endpoints: [chat, teleport]\n    keys: [{{sha256: 'abc'}}, {{sha256: '{H1}'}}]\n    limits: {{tokens_per_minute: 0}}\n    model_limits: {{nope: {{}}}}\n  - id: a\n    keys: [{{sha256: '{H1}'}}]\n"
        ))
        .unwrap_err()
        .to_string();
        for want in [
            "principals[0].endpoints[1]: `teleport` is not an endpoint",
            "principals[0].keys[0].sha256: must be 64 hex digits",
            "principals[0].limits.tokens_per_minute: must be at least 1",
            "principals[0].model_limits.nope: not a configured model",
            "principals[1].id: `a` is already a principal",
            "principals[1].keys[0].sha256: the same key is already listed (principal `a`)",
        ] {
            assert!(errs.contains(want), "missing `{want}` in:\n{errs}");
        }
        let e = load("version: 1\nprincipals:\n  - id: a\n    limits: {rpm: 3}\n").unwrap_err();
        assert!(e.to_string().contains("principals[0].limits"), "{e}");
        assert!(load("version: 2\n")
            .unwrap_err()
            .to_string()
            .contains("version 2"));
    }

    #[test]
    fn a_glob_matching_nothing_is_a_warning() {
        let (_, w) = load("version: 1\nprincipals:\n  - id: a\n    models: [gpt-*]\n").unwrap();
        assert!(
            w.iter()
                .any(|w| w.contains("`gpt-*` matches no configured model")),
            "{w:?}"
        );
    }
}
