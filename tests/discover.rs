//! Instances found and followed by DNS while the router runs: a model's `discover`
//! name gains and loses addresses, and a configured instance's hostname moves. Names are
//! resolved through `balancer.hosts_file` (a hosts-format file the test rewrites), so
//! nothing of the machine's own resolver configuration is touched.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use common::{wait_for, MockVllm, RouterProc};
use serde_json::json;

async fn answered_by(r: &RouterProc, model: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(r.url("/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let inst = resp
        .headers()
        .get("x-llm-router-instance")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (resp.status().as_u16(), inst)
}

/// Writes the hosts file at once (a rename: the router never reads half a file).
fn hosts(path: &Path, lines: &[&str]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, lines.join("\n") + "\n").unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_instances_follow_the_dns_records() {
    // Two engines on one port, at two loopback addresses; a third for the static host.
    let a = MockVllm::start_at("127.0.0.2", 0, "a").await;
    let port = a.port();
    let b = MockVllm::start_at("127.0.0.3", port, "b").await;
    let s1 = MockVllm::start_at("127.0.0.2", 0, "s1").await;
    let s2 = MockVllm::start_at("127.0.0.3", s1.port(), "s2").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hosts");
    hosts(&file, &["127.0.0.2 engines.test single.test"]);
    let r = RouterProc::start(&format!(
        "LLM_engines:\n  m:\n    discover: {{dns: engines.test, port: {port}, max_instances: 2}}\n    model_config: {{model_tag: org/M}}\n  s:\n    instances: [{{id: s, host: single.test, port: {}, managed: false}}]\n    model_config: {{model_tag: org/S}}\nbalancer:\n  poll_interval_s: 0.1\n  dns_refresh_s: 0.2\n  hosts_file: \"{}\"\n",
        s1.port(),
        file.display()
    ))
    .await;
    wait_for(
        "the first address serving",
        Duration::from_secs(10),
        async || answered_by(&r, "m").await == (200, "m@dns0".to_string()),
    )
    .await;
    assert!(a.requests() > 0 && b.requests() == 0);
    assert_eq!(answered_by(&r, "s").await, (200, "s".to_string()));
    assert_eq!(s1.requests(), 1);
    // A second record appears: both addresses serve.
    hosts(
        &file,
        &[
            "127.0.0.2 engines.test",
            "127.0.0.3 engines.test single.test",
        ],
    );
    let mut seen = HashSet::new();
    wait_for(
        "both addresses serving",
        Duration::from_secs(10),
        async || {
            seen.insert(answered_by(&r, "m").await.1);
            seen.contains("m@dns0") && seen.contains("m@dns1")
        },
    )
    .await;
    assert!(b.requests() > 0);
    // The static host moved: new requests go to its new address.
    wait_for(
        "the static host moved",
        Duration::from_secs(10),
        async || answered_by(&r, "s").await.0 == 200 && s2.requests() > 0,
    )
    .await;
    let before = s1.requests();
    for _ in 0..5 {
        assert_eq!(answered_by(&r, "s").await.0, 200);
    }
    assert_eq!(s1.requests(), before);
    // The first record vanishes: that instance is drained, the other serves everything.
    hosts(&file, &["127.0.0.3 engines.test single.test"]);
    wait_for(
        "the first address drained",
        Duration::from_secs(10),
        async || {
            r.instances()
                .await
                .iter()
                .any(|i| i["id"] == "m@dns0" && i["state"] == "down")
        },
    )
    .await;
    let served_a = a.requests();
    for _ in 0..10 {
        assert_eq!(answered_by(&r, "m").await, (200, "m@dns1".to_string()));
    }
    assert_eq!(a.requests(), served_a);
    // A name that stops resolving keeps what it had.
    hosts(&file, &["# empty"]);
    wait_for("a failed refresh", Duration::from_secs(30), async || {
        r.log_text()
            .contains("DNS refresh failed; keeping the addresses known")
    })
    .await;
    assert_eq!(answered_by(&r, "m").await, (200, "m@dns1".to_string()));
}
