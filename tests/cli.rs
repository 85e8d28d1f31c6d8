//! The binary's command line: `check`, config errors and their exit code.

mod common;

use common::run_bin;

fn write(yaml: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.yaml");
    std::fs::write(&p, yaml).unwrap();
    let s = p.to_str().unwrap().to_string();
    (dir, s)
}

#[test]
fn check_accepts_both_seed_fixtures() {
    for f in [
        "tests/fixtures/seed-config.yaml",
        "tests/fixtures/seed-config-extra-flags.yaml",
    ] {
        let out = run_bin(&["check", "--config", f]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(": OK"), "{stdout}");
        assert!(
            stdout.contains("listen: 127.0.0.1:8947"),
            "defaults are shown: {stdout}"
        );
    }
    let out = run_bin(&["check", "--config", "tests/fixtures/seed-config.yaml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in [
        "Qwen3-0.6B",
        "qwen3-2",
        "m3e-base",
        "bge-reranker-large",
        "max_model_len: 500",
    ] {
        assert!(stdout.contains(name), "{name} missing from: {stdout}");
    }
}

#[test]
fn bad_configs_exit_2_naming_file_key_and_reason() {
    let base = "LLM_engines:\n  m:\n    instances:\n      - {id: a, host: localhost, port: 8001}\n    model_config: {model_tag: t}\n";
    let cases = [
        ("LLM_engines:\n  m: {a: [1, 2}\n", "LLM_engines.m", "line 2 column"),
        ("LLM_engines:\n  m:\n    model_config: {model_tag: t}\n", "LLM_engines.m.instances", "needs at least one instance (or `discover`)"),
        ("LLM_engines:\n  m:\n    instances: []\n    model_config: {dtype: x}\n", "LLM_engines.m.model_config", "model_tag"),
        (&base.replace("8001", "70000"), "LLM_engines.m.instances[0].port", "out of range"),
        (&base.replace("8001", "\"x\""), "LLM_engines.m.instances[0].port", "invalid type"),
        (
            &base.replace(
                "      - {id: a, host: localhost, port: 8001}\n",
                "      - {id: a, host: localhost, port: 8001}\n      - {id: a, host: localhost, port: 8002}\n",
            ),
            "LLM_engines.m.instances[id=a]",
            "duplicate instance id",
        ),
        (
            &base.replace(
                "      - {id: a, host: localhost, port: 8001}\n",
                "      - {id: a, host: localhost, port: 8001}\n      - {id: b, host: 127.0.0.1, port: 8001}\n",
            ),
            "LLM_engines.m.instances[id=b]",
            "cannot share a host:port",
        ),
        (&format!("{base}router: {{log_level: loud}}\n"), "router.log_level", "not a level"),
        (&format!("{base}router: {{admin_listen: nowhere}}\n"), "router.admin_listen", "not an ADDRESS:PORT"),
        (
            &format!("{base}router: {{listen: \"127.0.0.1:9000\", admin_listen: \"127.0.0.1:9000\"}}\n"),
            "router.admin_listen",
            "already the main listener's",
        ),
    ];
    for (yaml, key, reason) in cases {
        let (_d, path) = write(yaml);
        for args in [vec!["check", "--config", &path], vec!["--config", &path]] {
            let out = run_bin(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} {yaml}: {err}");
            assert!(err.contains(&path), "file missing: {err}");
            assert!(err.contains(key), "key {key} missing: {err}");
            assert!(err.contains(reason), "reason {reason} missing: {err}");
        }
    }
}

#[test]
fn unknown_top_level_key_only_warns() {
    let (_d, path) = write("LLM_engines:\n  m:\n    instances: [{id: a, host: h, port: 1}]\n    model_config: {model_tag: t}\nmystery: 1\n");
    let out = run_bin(&["check", "--config", &path]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mystery"));
}

#[test]
fn missing_config_argument_and_missing_file() {
    let out = run_bin(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    let out = run_bin(&["check", "--config", "/nonexistent/x.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read file"));
}

#[test]
fn pingora_test_flag_validates_without_serving() {
    let out = run_bin(&["-t", "--config", "tests/fixtures/seed-config.yaml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
