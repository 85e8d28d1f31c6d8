//! Who is asking: API keys (`auth.keys_file`), looked up by SHA-256, and the principal
//! each belongs to (its class, allowed models and endpoints, limits).
//!
//! The keys live behind an [`ArcSwap`]: a SIGHUP ([`reload::KeysReload`]) swaps in a new
//! file without touching requests in flight, and a broken file keeps the keys in use.
//! Limiter state is keyed by principal id elsewhere, so a reload or a key rotation never
//! resets a principal's counters.

pub mod keys;
pub mod reload;
pub mod token;

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderMap;

use crate::config::{AuthMode, AuthOptions, Config, ConfigError, ConfigErrors};
use crate::http::ApiError;
use crate::telemetry::metrics;
pub use keys::{Class, KeyEntry, Keys, Limits, Principal};

/// Longest token looked at; anything longer is refused without hashing.
const MAX_TOKEN_BYTES: usize = 128;

/// A refused request: the answer and what the audit line says.
#[derive(Debug)]
pub struct Denied {
    /// Audit reason (`missing_key`, `bad_format`, `unknown_key`, `disabled`, `expired`,
    /// `ambiguous_key`, `model_denied`, `endpoint_denied`, `admin_denied`).
    pub reason: &'static str,
    /// For a key that is not one of ours: [`token::fingerprint`].
    pub key_fp: Option<String>,
    pub principal: Option<String>,
    pub error: ApiError,
}

impl Denied {
    fn missing(message: &str) -> Self {
        Denied {
            reason: "missing_key",
            key_fp: None,
            principal: None,
            error: ApiError::unauthorized("missing_api_key", message),
        }
    }

    fn invalid(reason: &'static str, key_fp: Option<String>, principal: Option<String>) -> Self {
        Denied {
            reason,
            key_fp,
            principal,
            error: ApiError::unauthorized(
                "invalid_api_key",
                "Incorrect API key provided. Keys are issued by the operator of this router \
                 (`llm-router keys new`).",
            ),
        }
    }

    /// 403 for a valid key that may not use `what`.
    pub fn forbidden(reason: &'static str, principal: &Principal, what: &str) -> Self {
        Denied {
            reason,
            key_fp: None,
            principal: Some(principal.id.clone()),
            error: ApiError::permission_denied(format!(
                "The key of `{}` may not use {what}",
                principal.id
            )),
        }
    }

    /// 404 for a model the key may not use: the same answer as for an unknown model, so
    /// that keys cannot probe which models exist.
    pub fn model(principal: &Principal, error: ApiError) -> Self {
        Denied {
            reason: "model_denied",
            key_fp: None,
            principal: Some(principal.id.clone()),
            error,
        }
    }
}

impl Denied {
    /// Admission refused the request of `principal` (none with auth off): a limit
    /// (`rpm`, `tpm`, `tpd`, `in_flight`, `too_large`) or the queue (`queue_full`,
    /// `queue_timeout`, `shed`).
    pub fn by_policy(reason: &'static str, principal: Option<&Principal>, error: ApiError) -> Self {
        Denied {
            reason,
            key_fp: None,
            principal: principal.map(|p| p.id.clone()),
            error,
        }
    }
}

/// What the client presented.
enum Presented<'a> {
    Nothing,
    /// `Authorization` with another scheme than Bearer.
    NotBearer,
    Token(&'a str),
    /// More than one credential header.
    Ambiguous,
}

/// The authenticator: settings plus the current keys.
pub struct Auth {
    opts: AuthOptions,
    keys: ArcSwap<Keys>,
    /// Configured model names (globs of the keys file are checked against them).
    models: Vec<String>,
}

impl Auth {
    /// Reads the keys file when auth is on. Errors name the file, key path and reason.
    pub fn new(config: &Config) -> Result<(Auth, Vec<String>), ConfigErrors> {
        let mut auth = Auth {
            opts: config.auth.clone(),
            keys: ArcSwap::from_pointee(Keys::default()),
            models: config.models.iter().map(|m| m.name.clone()).collect(),
        };
        let mut warnings = Vec::new();
        if auth.required() {
            let (keys, w) = auth.read_keys()?;
            auth.keys = ArcSwap::from_pointee(keys);
            warnings = w;
        }
        Ok((auth, warnings))
    }

    pub fn required(&self) -> bool {
        self.opts.mode == AuthMode::Required
    }

    pub fn keys(&self) -> Arc<Keys> {
        self.keys.load_full()
    }

    fn read_keys(&self) -> Result<(Keys, Vec<String>), ConfigErrors> {
        let Some(path) = &self.opts.keys_file else {
            return Ok((Keys::default(), Vec::new()));
        };
        let names: Vec<&str> = self.models.iter().map(String::as_str).collect();
        let (keys, warnings) = Keys::load(path, &names)?;
        let missing: Vec<ConfigError> = self
            .opts
            .admins
            .iter()
            .filter(|id| keys.principal(id).is_none())
            .map(|id| {
                ConfigError::new(
                    path,
                    "principals",
                    format!("`{id}` is listed in auth.admins but is not a principal of this file"),
                )
            })
            .collect();
        if !missing.is_empty() {
            return Err(ConfigErrors(missing));
        }
        Ok((keys, warnings))
    }

    /// Re-reads the keys file; on any error the keys in use stay. Returns the number of
    /// principals and keys now in use.
    pub fn reload(&self) -> Result<(usize, usize), ConfigErrors> {
        match self.read_keys() {
            Ok((keys, warnings)) => {
                for w in warnings {
                    tracing::warn!("{w}");
                }
                let counts = (keys.principals().len(), keys.key_count());
                self.keys.store(Arc::new(keys));
                metrics::KEYS_RELOADS.with_label_values(&["ok"]).inc();
                Ok(counts)
            }
            Err(e) => {
                metrics::KEYS_RELOADS.with_label_values(&["error"]).inc();
                Err(e)
            }
        }
    }

    /// Whether `p` may use the admin routes on the main port.
    pub fn is_admin(&self, p: &Principal) -> bool {
        self.opts.admins.contains(&p.id)
    }

    /// The principal of a request, `None` when auth is off.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Arc<Principal>>, Box<Denied>> {
        if !self.required() {
            return Ok(None);
        }
        self.check(headers).map(Some).map_err(Box::new)
    }

    /// (Boxed by [`Self::authenticate`]: a refusal is the rare path.)
    #[allow(clippy::result_large_err)]
    fn check(&self, headers: &HeaderMap) -> Result<Arc<Principal>, Denied> {
        let token = match self.presented(headers) {
            Presented::Token(t) => t,
            Presented::Nothing => {
                return Err(Denied::missing(
                    "Missing API key: send `Authorization: Bearer <key>`",
                ))
            }
            Presented::NotBearer => {
                return Err(Denied::missing(
                    "The Authorization header must be `Bearer <key>`",
                ))
            }
            Presented::Ambiguous => {
                return Err(Denied {
                    reason: "ambiguous_key",
                    key_fp: None,
                    principal: None,
                    error: ApiError::bad_request(
                        "ambiguous_credentials",
                        "More than one API key header was sent; send exactly one",
                    ),
                })
            }
        };
        if token.len() > MAX_TOKEN_BYTES || !token::well_formed(token) {
            let fp = (token.len() <= MAX_TOKEN_BYTES).then(|| token::fingerprint(token));
            return Err(Denied::invalid("bad_format", fp, None));
        }
        let keys = self.keys.load();
        let Some(entry) = keys.lookup(&token::digest(token)) else {
            return Err(Denied::invalid(
                "unknown_key",
                Some(token::fingerprint(token)),
                None,
            ));
        };
        let id = Some(entry.principal.id.clone());
        if !entry.principal.enabled {
            return Err(Denied::invalid("disabled", None, id));
        }
        if entry.expires.is_some_and(|t| t <= chrono::Utc::now()) {
            return Err(Denied::invalid("expired", None, id));
        }
        Ok(entry.principal.clone())
    }

    fn presented<'a>(&self, headers: &'a HeaderMap) -> Presented<'a> {
        let mut found = Vec::with_capacity(1);
        for name in &self.opts.accept_headers {
            for v in headers.get_all(name.as_str()) {
                found.push((name.as_str(), v));
            }
        }
        let (name, value) = match found.as_slice() {
            [] => return Presented::Nothing,
            [one] => *one,
            _ => return Presented::Ambiguous,
        };
        // Not UTF-8 (or not visible ASCII): certainly not one of our keys.
        let Ok(value) = value.to_str() else {
            return Presented::Token("\u{0}");
        };
        if name == "x-api-key" {
            return match value.trim() {
                "" => Presented::Nothing,
                t => Presented::Token(t),
            };
        }
        match value.trim().split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => match rest.trim() {
                "" => Presented::Nothing,
                t => Presented::Token(t),
            },
            None if value.trim().eq_ignore_ascii_case("bearer") => Presented::Nothing,
            _ => Presented::NotBearer,
        }
    }
}

/// Request headers that carry client credentials or claims only the router may make:
/// never forwarded to an engine.
pub fn is_private_header(name: &str) -> bool {
    const EXACT: [&str; 7] = [
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "x-gateway-inference-objective",
        "x-gateway-inference-fairness-id",
    ];
    EXACT.iter().any(|h| name.eq_ignore_ascii_case(h))
        || name
            .get(..13)
            .is_some_and(|p| p.eq_ignore_ascii_case("x-llm-router-"))
}

/// The `cache_salt` of a principal's generation requests: distinct per principal and
/// stable across restarts (engines keep their caches over a router upgrade). It need not
/// be secret: clients cannot set it (the router overwrites theirs), so knowing another
/// team's salt gives nothing.
pub fn cache_salt(principal: &Principal) -> &str {
    let s = cache_salt_json(principal);
    &s[1..s.len() - 1]
}

/// [`cache_salt`] as a JSON string (quoted), ready to splice into a body.
pub fn cache_salt_json(principal: &Principal) -> &str {
    &principal.salt
}

/// The quoted salt of principal `id` (hex digits: nothing to escape).
fn salt_of(id: &str) -> String {
    let hex = token::hex(&token::digest(&format!("llm-router cache salt\0{id}"))[..16]);
    format!("\"{hex}\"")
}

#[cfg(test)]
mod tests;
