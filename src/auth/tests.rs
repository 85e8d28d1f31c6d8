use super::*;
use crate::config::Config;

/// A config with auth on and a keys file of two principals; returns their keys.
fn setup(accept: &str) -> (tempfile::TempDir, Auth, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (token::new_key().unwrap(), token::new_key().unwrap());
    let keys = format!(
        "version: 1\nprincipals:\n  - id: team-a\n    keys: [{{sha256: '{}'}}]\n  - id: old\n    keys: [{{sha256: '{}', expires: 2001-01-01T00:00:00Z}}]\n",
        token::hex(&token::digest(&a)),
        token::hex(&token::digest(&b))
    );
    std::fs::write(dir.path().join("keys.yaml"), keys).unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!("LLM_engines:\n  m:\n    instances: [{{id: a, host: 127.0.0.1, port: 9}}]\n    model_config: {{model_tag: m}}\nauth:\n  keys_file: keys.yaml\n  accept_headers: [{accept}]\n"),
    )
    .unwrap();
    let config = Config::load(&cfg).unwrap();
    let (auth, _) = Auth::new(&config).unwrap();
    (dir, auth, a, b)
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, v.parse().unwrap());
    }
    h
}

fn reason(auth: &Auth, pairs: &[(&'static str, &str)]) -> &'static str {
    match auth.authenticate(&headers(pairs)) {
        Ok(_) => "ok",
        Err(d) => d.reason,
    }
}

#[test]
fn each_kind_of_credential_gets_its_answer() {
    let (_d, auth, a, b) = setup("authorization, x-api-key");
    let bearer = format!("Bearer {a}");
    let p = auth.authenticate(&headers(&[("authorization", &bearer)]));
    assert_eq!(p.unwrap().unwrap().id, "team-a");
    assert_eq!(
        reason(&auth, &[("authorization", &format!("bearer  {a} "))]),
        "ok"
    );
    assert_eq!(reason(&auth, &[("x-api-key", &a)]), "ok");
    assert_eq!(reason(&auth, &[]), "missing_key");
    assert_eq!(reason(&auth, &[("authorization", "Bearer")]), "missing_key");
    assert_eq!(
        reason(&auth, &[("authorization", "Bearer   ")]),
        "missing_key"
    );
    assert_eq!(
        reason(&auth, &[("authorization", "Basic dXNlcjpwYXNz")]),
        "missing_key"
    );
    assert_eq!(
        reason(&auth, &[("authorization", "Bearer a b")]),
        "bad_format"
    );
    assert_eq!(
        reason(
            &auth,
            &[("authorization", &format!("Bearer {}", "x".repeat(10_000)))]
        ),
        "bad_format"
    );
    let fresh = token::new_key().unwrap();
    assert_eq!(
        reason(&auth, &[("authorization", &format!("Bearer {fresh}"))]),
        "unknown_key"
    );
    assert_eq!(
        reason(&auth, &[("authorization", &format!("Bearer {b}"))]),
        "expired"
    );
    assert_eq!(
        reason(
            &auth,
            &[("authorization", &bearer), ("authorization", &bearer)]
        ),
        "ambiguous_key"
    );
    assert_eq!(
        reason(&auth, &[("authorization", &bearer), ("x-api-key", &a)]),
        "ambiguous_key"
    );
    let d = auth
        .authenticate(&headers(&[("authorization", "Bearer nope")]))
        .unwrap_err();
    assert_eq!(
        (d.error.status.as_u16(), d.error.code),
        (401, "invalid_api_key")
    );
    assert!(!d.error.message.contains("nope"));
    assert!(d
        .error
        .headers
        .iter()
        .any(|(k, v)| *k == "www-authenticate" && v.starts_with("Bearer")));
}

#[test]
fn x_api_key_only_when_accepted() {
    let (_d, auth, a, _) = setup("authorization");
    assert_eq!(reason(&auth, &[("x-api-key", &a)]), "missing_key");
}

#[test]
fn private_headers_and_salts() {
    for h in [
        "Authorization",
        "x-api-key",
        "Cookie",
        "X-LLM-Router-Principal",
        "x-gateway-inference-objective",
    ] {
        assert!(is_private_header(h), "{h}");
    }
    for h in ["content-type", "x-request-id", "x-llm-route"] {
        assert!(!is_private_header(h), "{h}");
    }
}
