//! Who may use the router and what a request may carry: the `auth:` section and
//! `admission.request_policy`, resolved. The keys file itself (principals, hashes,
//! limits) is read by `crate::auth`; here are only the settings of the main config.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::raw::{RawAdmission, RawAuth};
use super::validate::Checker;

/// `auth.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every route but `/health` needs a key of the keys file.
    Required,
    /// No keys: allowed only when every listener is on loopback.
    Off,
}

/// The `auth:` section. Without one, auth is off (and every listener must be loopback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthOptions {
    pub mode: AuthMode,
    /// The keys file (principals and key hashes; `llm-router keys new` writes entries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_file: Option<PathBuf>,
    /// Request headers a key is read from: `authorization` (`Bearer <key>`, default)
    /// and/or `x-api-key` (the bare key, as Anthropic clients send it).
    pub accept_headers: Vec<String>,
    /// Principal ids that may use the admin routes (`/metrics`, `/v1/router/*`) on the
    /// main port.
    pub admins: Vec<String>,
    /// The usage ledger (SQLite): per principal × model × UTC day. Default
    /// `<supervisor.run_dir>/usage.sqlite`.
    pub usage_db: PathBuf,
}

impl Default for AuthOptions {
    fn default() -> Self {
        AuthOptions {
            mode: AuthMode::Off,
            keys_file: None,
            accept_headers: vec!["authorization".into()],
            admins: Vec::new(),
            usage_db: PathBuf::from("run/usage.sqlite"),
        }
    }
}

/// A request field clients may not set: the router overwrites it before the engine sees
/// it (`priority` with 0, the others with `null`; `cache_salt` with the principal's salt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardedField {
    Priority,
    CacheSalt,
    KvTransferParams,
    VllmXargs,
}

impl GuardedField {
    pub const ALL: [GuardedField; 4] = [
        GuardedField::Priority,
        GuardedField::CacheSalt,
        GuardedField::KvTransferParams,
        GuardedField::VllmXargs,
    ];

    /// The JSON key.
    pub fn key(self) -> &'static str {
        match self {
            GuardedField::Priority => "priority",
            GuardedField::CacheSalt => "cache_salt",
            GuardedField::KvTransferParams => "kv_transfer_params",
            GuardedField::VllmXargs => "vllm_xargs",
        }
    }

    /// What the engine gets instead of the client's value.
    pub fn neutral(self) -> &'static str {
        match self {
            GuardedField::Priority => "0",
            _ => "null",
        }
    }
}

/// `admission.request_policy.cache_salt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSalt {
    /// Each principal's generation requests carry its own `cache_salt`, so tenants never
    /// share prefix-cache entries (no timing side channel between teams).
    PerPrincipal,
    /// Prefix-cache entries are shared by everyone.
    Off,
}

/// `admission.request_policy`: what the router changes in or refuses about a body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestPolicy {
    /// Largest `n` (choices per request); 400 beyond. Default 8.
    pub max_n: u64,
    /// Fields a client may not set (default: all four of [`GuardedField`]).
    pub strip_fields: Vec<GuardedField>,
    pub cache_salt: CacheSalt,
}

impl Default for RequestPolicy {
    fn default() -> Self {
        RequestPolicy {
            max_n: 8,
            strip_fields: GuardedField::ALL.to_vec(),
            cache_salt: CacheSalt::PerPrincipal,
        }
    }
}

/// `admission.tokens.accounting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accounting {
    /// Reserve an estimate at admission, settle with the reported usage (exact: a
    /// principal cannot start more work at once than its minute allows).
    Reserve,
    /// Charge the reported usage after the answer (simpler; concurrent requests overshoot).
    After,
}

/// `admission.tokens.on_missing_usage`: the charge of an answer that reported no usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissingUsage {
    /// The prompt estimate plus one token per streamed event.
    Chunks,
    /// The whole reservation.
    Reservation,
}

/// `admission.tokens`: how tokens are reserved and charged against `tokens_per_minute`
/// and `tokens_per_day`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenOptions {
    pub accounting: Accounting,
    /// Completion tokens reserved per choice when a request names no `max_tokens`.
    pub default_completion_reserve: u64,
    /// Ask engines for a stream's usage (`stream_options.include_usage`) and take that
    /// extra event out again when the client did not ask for it.
    pub inject_stream_usage: bool,
    pub on_missing_usage: OnMissingUsage,
}

impl Default for TokenOptions {
    fn default() -> Self {
        TokenOptions {
            accounting: Accounting::Reserve,
            default_completion_reserve: 1024,
            inject_stream_usage: true,
            on_missing_usage: OnMissingUsage::Chunks,
        }
    }
}

pub(super) fn resolve_tokens(c: &mut Checker<'_>, raw: &RawAdmission) -> TokenOptions {
    let d = TokenOptions::default();
    let t = &raw.tokens;
    if t.default_completion_reserve == Some(0) {
        c.err(
            "admission.tokens.default_completion_reserve",
            "must be at least 1",
        );
    }
    TokenOptions {
        accounting: t.accounting.unwrap_or(d.accounting),
        default_completion_reserve: t
            .default_completion_reserve
            .unwrap_or(d.default_completion_reserve),
        inject_stream_usage: t.inject_stream_usage.unwrap_or(d.inject_stream_usage),
        on_missing_usage: t.on_missing_usage.unwrap_or(d.on_missing_usage),
    }
}

/// Header names a key may come in.
const KEY_HEADERS: [&str; 2] = ["authorization", "x-api-key"];

pub(super) fn resolve_auth(
    c: &mut Checker<'_>,
    raw: Option<RawAuth>,
    run_dir: &std::path::Path,
) -> AuthOptions {
    let d = AuthOptions {
        usage_db: run_dir.join("usage.sqlite"),
        ..AuthOptions::default()
    };
    let Some(raw) = raw else { return d };
    let mode = raw.mode.unwrap_or(AuthMode::Required);
    let keys_file = raw.keys_file.as_deref().map(|p| c.path(p));
    if mode == AuthMode::Required && keys_file.is_none() {
        c.err(
            "auth.keys_file",
            "required when auth.mode is `required` (write entries with `llm-router keys new --id NAME`)",
        );
    }
    let accept_headers: Vec<String> = raw
        .accept_headers
        .unwrap_or(d.accept_headers)
        .into_iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    for (i, h) in accept_headers.iter().enumerate() {
        if !KEY_HEADERS.contains(&h.as_str()) {
            c.err(
                format!("auth.accept_headers[{i}]"),
                format!("`{h}` is not one of: authorization, x-api-key"),
            );
        }
    }
    if accept_headers.is_empty() {
        c.err("auth.accept_headers", "must name at least one header");
    }
    AuthOptions {
        mode,
        keys_file,
        accept_headers,
        admins: raw.admins.unwrap_or_default(),
        usage_db: raw.usage_db.as_deref().map_or(d.usage_db, |p| c.path(p)),
    }
}

pub(super) fn resolve_request_policy(c: &mut Checker<'_>, raw: &RawAdmission) -> RequestPolicy {
    let d = RequestPolicy::default();
    let r = &raw.request_policy;
    if r.max_n == Some(0) {
        c.err("admission.request_policy.max_n", "must be at least 1");
    }
    RequestPolicy {
        max_n: r.max_n.unwrap_or(d.max_n),
        strip_fields: r.strip_fields.clone().unwrap_or(d.strip_fields),
        cache_salt: r.cache_salt.unwrap_or(d.cache_salt),
    }
}

/// Whether `host` (an address or `localhost`) is only reachable from this machine.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Nothing private on a public port: with auth off, every listener is loopback; with
/// auth on, the admin listener and the co-hosted embedding service (neither asks for a
/// key) are. Returns the key path and reason of the first listener that breaks this.
pub fn check_exposure(
    mode: AuthMode,
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    embedding_host: Option<&str>,
) -> Result<(), (&'static str, String)> {
    if mode == AuthMode::Off && !listen.ip().is_loopback() {
        return Err((
            "router.listen",
            format!(
                "{listen} is reachable from other hosts but auth is off: set `auth.keys_file` \
                 (keys from `llm-router keys new --id NAME`) or listen on 127.0.0.1"
            ),
        ));
    }
    if let Some(a) = admin_listen.filter(|a| !a.ip().is_loopback()) {
        return Err((
            "router.admin_listen",
            format!(
                "{a} is not a loopback address: the admin listener asks for no key; listen on \
                 127.0.0.1 (with auth on, admins reach /metrics on the main port with their key)"
            ),
        ));
    }
    if let Some(h) = embedding_host.filter(|h| !is_loopback_host(h)) {
        return Err((
            "embedding_server.host",
            format!(
                "`{h}` is not a loopback address: the co-hosted embedding service asks for no \
                 key; clients reach it through the router's port"
            ),
        ));
    }
    Ok(())
}
