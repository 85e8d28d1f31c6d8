//! API keys on the main port (`auth:` + the keys file), against a mock engine: who may
//! use which model and endpoint, what the engine never sees, SIGHUP reloads.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{llm, model_ids, run_bin, wait_for, MockVllm, RouterProc};
use llm_router::auth::token;
use serde_json::{json, Value};

/// A keys-file entry for `key`.
fn entry(key: &str) -> String {
    format!("{{sha256: '{}'}}", token::hex(&token::digest(key)))
}

struct Setup {
    _engines: (MockVllm, MockVllm),
    m: MockVllm,
    r: RouterProc,
    keys_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// Models `m` (engine key `engine-secret`) and `other`; the keys file is `keys` (YAML).
async fn start(keys: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys.yaml");
    std::fs::write(&keys_file, keys).unwrap();
    let m = MockVllm::start("m").await;
    let o = MockVllm::start("o").await;
    let o2 = MockVllm::start("o2").await;
    let yaml = format!(
        "LLM_engines:\n{}    api_key: engine-secret\n{}auth:\n  keys_file: \"{}\"\n  admins: [ops]\n  accept_headers: [authorization, x-api-key]\n",
        llm("m", "org/M", &[("m1", m.port())]),
        llm("other", "org/Other", &[("o1", o.port()), ("o2", o2.port())]),
        keys_file.display()
    );
    let r = RouterProc::start(&yaml).await;
    Setup {
        _engines: (o, o2),
        m,
        r,
        keys_file,
        _dir: dir,
    }
}

async fn send(
    r: &RouterProc,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let c = reqwest::Client::new();
    let mut req = c.request(method.parse().unwrap(), r.url(path));
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
}

fn keys_yaml(ops: &str, team: &str, disabled: &str, expired: &str) -> String {
    format!(
        "version: 1\nprincipals:\n  - id: ops\n    keys: [{}]\n  - id: team\n    class: sheddable\n    models: [m]\n    endpoints: [chat, models]\n    keys: [{}]\n  - id: gone\n    enabled: false\n    keys: [{}]\n  - id: late\n    keys: [{{sha256: '{}', expires: 2020-01-01T00:00:00Z}}]\n",
        entry(ops),
        entry(team),
        entry(disabled),
        token::hex(&token::digest(expired)),
    )
}

fn new_keys<const N: usize>() -> [String; N] {
    std::array::from_fn(|_| token::new_key().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_decide_who_may_use_which_model_and_endpoint() {
    let [ops, team, gone, late] = new_keys();
    let s = start(&keys_yaml(&ops, &team, &gone, &late)).await;
    let r = &s.r;
    // Public: /health only.
    assert_eq!(send(r, "GET", "/health", None, None).await.0, 200);
    let (st, h, v) = send(r, "GET", "/v1/models", None, None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("missing_api_key")),
        "{v}"
    );
    assert_eq!(h["www-authenticate"], "Bearer realm=\"llm-router\"");
    let c = reqwest::Client::new();
    let basic = c
        .get(r.url("/v1/models"))
        .header("authorization", "Basic dTpw")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    // Unknown, bad checksum, disabled, expired: invalid_api_key, never echoed.
    let unknown = token::new_key().unwrap();
    let typo = format!("{}x", &team[..team.len() - 1]);
    for k in [&unknown, &typo, &gone, &late] {
        let (st, _, v) = send(r, "POST", "/v1/chat/completions", Some(k), Some(chat("m"))).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (401, Some("invalid_api_key")),
            "{v}"
        );
        assert!(!v.to_string().contains(k.as_str()));
    }
    // `team`: model m only, chat and models only.
    let (st, _, v) = send(r, "GET", "/v1/models", Some(&team), None).await;
    assert_eq!((st, model_ids(&v)), (200, vec!["m"]), "{v}");
    let (st, _, denied) = send(r, "GET", "/v1/models/other", Some(&team), None).await;
    let (_, _, absent) = send(r, "GET", "/v1/models/nonesuch", Some(&team), None).await;
    assert_eq!(st, 404);
    assert_eq!(denied["error"]["code"], "model_not_found");
    // The same answer as for a model that does not exist (the list names only `m`).
    let text = |v: &Value, name: &str| v["error"]["message"].as_str().unwrap().replace(name, "X");
    assert_eq!(text(&denied, "other"), text(&absent, "nonesuch"));
    let (st, _, v) = send(
        r,
        "POST",
        "/v1/chat/completions",
        Some(&team),
        Some(chat("other")),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("model_not_found")),
        "{v}"
    );
    let (st, _, v) = send(
        r,
        "POST",
        "/v1/embeddings",
        Some(&team),
        Some(json!({"model": "m", "input": "x"})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("permission_denied")),
        "{v}"
    );
    for admin in ["/metrics", "/v1/router/instances"] {
        assert_eq!(
            send(r, "GET", admin, Some(&team), None).await.0,
            403,
            "{admin}"
        );
        assert_eq!(send(r, "GET", admin, None, None).await.0, 401, "{admin}");
    }
    // x-api-key works too (accept_headers).
    let x = c
        .get(r.url("/v1/models"))
        .header("x-api-key", &team)
        .send()
        .await
        .unwrap();
    assert_eq!(x.status(), 200);
    // The engine gets its own key, never the client's, nor client claims.
    let resp = c
        .post(r.url("/v1/chat/completions"))
        .bearer_auth(&team)
        .header("x-llm-router-principal", "ops")
        .header("cookie", "session=1")
        .json(&json!({"model": "m", "messages": [], "priority": -5, "cache_salt": "peek", "kv_transfer_params": {"a": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = s.m.last_headers();
    assert_eq!(h["authorization"], "Bearer engine-secret");
    assert!(h.get("x-llm-router-principal").is_none() && h.get("cookie").is_none());
    let sent = s.m.last_json();
    assert_eq!(sent["priority"], 0);
    assert_eq!(sent["kv_transfer_params"], Value::Null);
    let team_salt = sent["cache_salt"].as_str().unwrap().to_string();
    assert!(team_salt.len() == 32 && team_salt != "peek", "{sent}");
    let (st, _, _) = send(
        r,
        "POST",
        "/v1/chat/completions",
        Some(&ops),
        Some(chat("m")),
    )
    .await;
    assert_eq!(st, 200);
    let ops_salt = s.m.last_json()["cache_salt"].as_str().unwrap().to_string();
    assert_ne!(
        ops_salt, team_salt,
        "each principal has its own prefix-cache salt"
    );
    // Admins reach the admin routes on the main port; every refusal was counted by reason.
    let (st, _, page) = send(r, "GET", "/metrics", Some(&ops), None).await;
    assert_eq!(st, 200);
    let page = page.as_str().unwrap().to_string();
    for reason in [
        "missing_key",
        "unknown_key",
        "bad_format",
        "disabled",
        "expired",
        "model_denied",
        "endpoint_denied",
        "admin_denied",
    ] {
        assert!(
            page.contains(&format!("llm_router_denied_total{{reason=\"{reason}\"}}")),
            "{reason}"
        );
    }
    // Audit lines name the principal or the key's fingerprint, never a key.
    let log = r.log_text();
    assert!(
        log.contains("request denied") && log.contains(&token::fingerprint(&unknown)),
        "{log}"
    );
    for k in [&ops, &team, &unknown, &gone] {
        assert!(!log.contains(k.as_str()), "a key reached the log");
    }
}

fn hup(r: &RouterProc) {
    let pid = nix::unistd::Pid::from_raw(r.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
}

async fn status_with(r: &RouterProc, key: &str) -> u16 {
    send(r, "GET", "/v1/models", Some(key), None).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_keys_and_a_broken_file_keeps_the_old_ones() {
    let [ops, team, gone, late, next] = new_keys();
    let s = start(&keys_yaml(&ops, &team, &gone, &late)).await;
    let r = &s.r;
    assert_eq!(status_with(r, &team).await, 200);
    assert_eq!(status_with(r, &next).await, 401);
    // Rotate: `next` replaces `team`'s key.
    std::fs::write(&s.keys_file, keys_yaml(&ops, &next, &gone, &late)).unwrap();
    hup(r);
    wait_for("the new key", Duration::from_secs(5), async || {
        status_with(r, &next).await == 200
    })
    .await;
    assert_eq!(status_with(r, &team).await, 401);
    // A broken file: logged, counted, the keys in use stay.
    std::fs::write(
        &s.keys_file,
        "version: 1\nprincipals:\n  - id: x\n    keys: [{sha256: nope}]\n",
    )
    .unwrap();
    hup(r);
    wait_for("the failed reload", Duration::from_secs(5), async || {
        let (_, _, page) = send(r, "GET", "/metrics", Some(&ops), None).await;
        page.as_str()
            .unwrap_or_default()
            .contains("llm_router_keys_reload_total{result=\"error\"} 1")
    })
    .await;
    assert_eq!(status_with(r, &next).await, 200);
    assert!(
        r.log_text().contains("principals[0].keys[0].sha256"),
        "{}",
        r.log_text()
    );
    assert_eq!(
        send(r, "GET", "/health", None, None).await.0,
        200,
        "still serving"
    );
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn config_errors_of_auth_exit_2_with_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let model = "LLM_engines:\n  m:\n    instances: [{id: a, host: 127.0.0.1, port: 9, managed: false}]\n    model_config: {model_tag: m}\n";
    let cases = [
        (format!("{model}router: {{listen: \"0.0.0.0:8947\"}}\n"), "router.listen: 0.0.0.0:8947 is reachable from other hosts but auth is off"),
        (format!("{model}auth: {{mode: required}}\n"), "auth.keys_file: required"),
        (format!("{model}auth: {{keys_file: keys.yaml, accept_headers: [cookie]}}\n"), "auth.accept_headers[0]"),
        (format!("{model}auth: {{keys_file: bad.yaml}}\n"), "bad.yaml: principals[0].endpoints[0]: `teleport` is not an endpoint"),
        (format!("{model}auth: {{keys_file: keys.yaml, admins: [root]}}\n"), "`root` is listed in auth.admins"),
        (format!("{model}auth: {{keys_file: keys.yaml}}\nrouter: {{admin_listen: \"0.0.0.0:9947\"}}\n"), "router.admin_listen: 0.0.0.0:9947 is not a loopback address"),
    ];
    write(
        dir.path(),
        "keys.yaml",
        "version: 1\nprincipals: [{id: a}]\n",
    );
    write(
        dir.path(),
        "bad.yaml",
        "version: 1\nprincipals: [{id: a, endpoints: [teleport]}]\n",
    );
    for (yaml, want) in cases {
        let cfg = write(dir.path(), "config.yaml", &yaml);
        let out = run_bin(&["check", "--config", &cfg]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{yaml}: {err}");
        assert!(err.contains(want), "want `{want}` in: {err}");
    }
    // With keys, a public address is fine.
    let cfg = write(
        dir.path(),
        "config.yaml",
        &format!("{model}auth: {{keys_file: keys.yaml}}\nrouter: {{listen: \"0.0.0.0:8947\"}}\n"),
    );
    assert_eq!(run_bin(&["check", "--config", &cfg]).status.code(), Some(0));
}

#[test]
fn keys_new_prints_the_key_once_then_only_its_hash() {
    let out = run_bin(&["keys", "new", "--id", "vision-batch", "--label", "2026-12"]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines = stdout.lines();
    let key = lines.next().unwrap();
    assert!(token::well_formed(key) && key.len() == 55, "{key}");
    let rest: String = lines.collect::<Vec<_>>().join("\n");
    assert!(!rest.contains(key));
    let entry: Vec<serde_yaml::Value> = serde_yaml::from_str(&rest).unwrap();
    assert_eq!(
        entry[0]["sha256"].as_str().unwrap(),
        token::hex(&token::digest(key))
    );
    assert_eq!(entry[0]["label"].as_str().unwrap(), "2026-12");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_get_route_receipts_and_manage_adapters() {
    let [ops, team, gone, late] = new_keys();
    let s = start(&keys_yaml(&ops, &team, &gone, &late)).await;
    let c = reqwest::Client::new();
    for (key, shown) in [(&ops, true), (&team, false)] {
        let resp = c
            .post(s.r.url("/v1/chat/completions"))
            .bearer_auth(key)
            .header("x-llm-router-debug", "1")
            .json(&chat("m"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let route = resp.headers().get("x-llm-router-route");
        assert_eq!(route.is_some(), shown, "{route:?}");
        if let Some(r) = route {
            assert!(r
                .to_str()
                .unwrap()
                .starts_with("policy=least_load; chosen=m1; candidates=m1:"));
        }
    }
    let load = json!({"name": "sql", "path": "/adapters/sql"});
    let path = "/v1/router/models/m/adapters";
    let (st, _, v) = send(&s.r, "POST", path, Some(&team), Some(load.clone())).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("permission_denied")),
        "{v}"
    );
    let (st, _, v) = send(&s.r, "POST", path, Some(&ops), Some(load)).await;
    assert_eq!((st, v["instance"].as_str()), (200, Some("m1")), "{v}");
    assert_eq!(s.m.state.adapters.lock().unwrap().clone(), ["sql"]);
}
