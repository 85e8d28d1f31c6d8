//! The engine supervisor with a fake engine (`examples/fake_engine.rs`) launched through
//! the configurable command: argv/env, readiness gating, crash and restart, group kill.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{dead_port, fake_engine, pid_alive, starts, wait_for, RouterProc};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

fn group_alive(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None).is_ok()
}

struct Setup {
    dir: tempfile::TempDir,
    port: u16,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().unwrap(),
            port: dead_port(),
        }
    }

    fn record(&self) -> PathBuf {
        self.dir.path().join("record.jsonl")
    }

    /// One model `m` with one fake-engine instance; `env` lines are added to the model's env.
    fn yaml(&self, managed: bool, env: &[(&str, &str)]) -> String {
        let mut envs = format!("      FAKE_RECORD: \"{}\"\n", self.record().display());
        for (k, v) in env {
            envs.push_str(&format!("      {k}: \"{v}\"\n"));
        }
        format!(
            "LLM_engines:\n  m:\n    command: [\"{}\"]\n    env:\n{envs}    instances:\n      - {{id: e1, host: 127.0.0.1, port: {}, cuda_device: [3, 5], managed: {managed}}}\n    model_config:\n      model_tag: org/fake\n      max_model_len: 500\n      enforce_eager: true\n      disable_log_stats: false\n\
             supervisor:\n  log_dir: \"{}\"\n  run_dir: \"{}\"\n  progress_interval_s: 0.5\n  stop_timeout_s: 3\n  unhealthy_restart_after_s: 2\n\
             balancer:\n  poll_interval_s: 0.2\n",
            fake_engine().display(),
            self.port,
            self.dir.path().join("logs").display(),
            self.dir.path().join("run").display()
        )
    }
}

async fn state(r: &RouterProc) -> String {
    r.instances().await[0]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn chat() -> &'static str {
    r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argv_env_readiness_crash_restart_and_stop() {
    let s = Setup::new();
    let r = RouterProc::start(&s.yaml(
        true,
        &[("FAKE_READY_AFTER_MS", "1500"), ("FAKE_CHILD", "1")],
    ))
    .await;
    let c = reqwest::Client::new();

    // Spawned with the exact command line and environment.
    wait_for("first start", Duration::from_secs(5), async || {
        !starts(&s.record()).is_empty()
    })
    .await;
    let first = &starts(&s.record())[0];
    let argv: Vec<&str> = first["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let port = s.port.to_string();
    assert_eq!(
        argv[1..],
        [
            "org/fake",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--max-model-len",
            "500",
            "--enforce-eager"
        ]
    );
    assert_eq!(first["env"]["CUDA_VISIBLE_DEVICES"], "3,5");
    assert_eq!(first["env"]["FAKE_CHILD"], "1");
    let pid1 = first["pid"].as_i64().unwrap() as i32;

    // Not ready yet: no traffic, the instance shows as starting.
    assert_eq!(state(&r).await, "starting");
    let resp = c
        .post(r.url("/v1/chat/completions"))
        .body(chat())
        .send()
        .await
        .unwrap();
    let st = resp.status();
    let body = resp.text().await.unwrap();
    let v = r.get_json("/v1/router/instances").await;
    assert_eq!(st, 503, "{body} {v}");
    wait_for("ready", Duration::from_secs(5), async || {
        state(&r).await == "healthy"
    })
    .await;
    let resp = c
        .post(r.url("/v1/chat/completions"))
        .body(chat())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        r.log_text().contains("e1: loading"),
        "progress lines: {}",
        r.log_text()
    );

    // kill -9 of the engine: marked down, its leftover child killed, restarted.
    assert!(group_alive(pid1));
    kill(Pid::from_raw(pid1), Signal::SIGKILL).unwrap();
    wait_for("restart", Duration::from_secs(8), async || {
        starts(&s.record()).len() == 2
    })
    .await;
    assert!(
        !group_alive(pid1),
        "the killed engine's process group is not empty"
    );
    let pid2 = starts(&s.record())[1]["pid"].as_i64().unwrap() as i32;
    assert_ne!(pid1, pid2);
    let log = r.log_text();
    assert!(log.contains("engine down"), "{log}");
    assert!(log.contains("signal: 9"), "exit status logged: {log}");
    wait_for("ready again", Duration::from_secs(6), async || {
        state(&r).await == "healthy"
    })
    .await;
    assert_eq!(
        c.post(r.url("/v1/chat/completions"))
            .body(chat())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The engine's log file has its output.
    let engine_log = std::fs::read_to_string(s.dir.path().join("logs/e1.log")).unwrap();
    assert!(
        engine_log.contains("=== llm-router: starting e1"),
        "{engine_log}"
    );
    assert!(engine_log.contains("fake engine"), "{engine_log}");

    // SIGTERM to the router: the whole engine group is gone, then the router exits.
    let mut r = r;
    kill(Pid::from_raw(r.child.id() as i32), Signal::SIGTERM).unwrap();
    wait_for(
        "the engine group to be gone after the router's stop",
        Duration::from_secs(10),
        async || !group_alive(pid2),
    )
    .await;
    let status = tokio::task::spawn_blocking(move || {
        let st = r.child.wait();
        (st, r)
    })
    .await
    .unwrap()
    .0
    .unwrap();
    assert!(status.success(), "router exit: {status}");
    assert!(!pid_alive(pid2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_backs_off_and_other_models_keep_serving() {
    let s = Setup::new();
    let other = common::MockVllm::start("other").await;
    // An engine that cannot start (its command exits at once).
    let yaml = format!(
        "LLM_engines:\n  broken:\n    command: [\"false\"]\n    instances:\n      - {{id: b1, host: 127.0.0.1, port: {}}}\n    model_config: {{model_tag: x}}\n{}supervisor:\n  log_dir: \"{}\"\n  run_dir: \"{}\"\n",
        s.port,
        common::llm("ok", "org/ok", &[("o1", other.port())]),
        s.dir.path().display(),
        s.dir.path().join("run").display()
    );
    let r = RouterProc::start(&yaml).await;
    let c = reqwest::Client::new();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let log = r.log_text();
    let downs = log.matches("engine down").count();
    // Backoff 1 s, 2 s: two or three attempts in 3.5 s, not dozens.
    assert!((2..=3).contains(&downs), "{downs} restarts in 3.5 s: {log}");
    assert!(log.contains("restart_in_s=2"), "{log}");
    let resp = c
        .post(r.url("/v1/chat/completions"))
        .body(r#"{"model":"broken","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let resp = c
        .post(r.url("/v1/chat/completions"))
        .body(r#"{"model":"ok","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v = r.get_json("/v1/router/instances").await;
    assert_eq!(v["data"][0]["state"], "down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_instance_is_never_spawned() {
    let s = Setup::new();
    let _r = RouterProc::start(&s.yaml(false, &[])).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(starts(&s.record()).is_empty());
}

/// Starts a router on `yaml`, waits for its engine, SIGQUITs it and waits for it to leave;
/// returns the engine's pid (still running).
async fn upgrade_away(s: &Setup, yaml: &str) -> i32 {
    let mut a = RouterProc::start(yaml).await;
    wait_for("ready", Duration::from_secs(5), async || {
        state(&a).await == "healthy"
    })
    .await;
    let pid = starts(&s.record()).last().unwrap()["pid"].as_i64().unwrap() as i32;
    kill(Pid::from_raw(a.child.id() as i32), Signal::SIGQUIT).unwrap();
    let t0 = Instant::now();
    while matches!(a.child.try_wait(), Ok(None)) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "old router did not exit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        pid_alive(pid),
        "engine died with the old router: {}",
        a.log_text()
    );
    assert!(
        a.log_text().contains("engine left to the new router"),
        "{}",
        a.log_text()
    );
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_command_replaces_the_old_engine() {
    let s = Setup::new();
    let yaml = s.yaml(true, &[]);
    let old = upgrade_away(&s, &yaml).await;
    let b = RouterProc::start(&yaml.replace("max_model_len: 500", "max_model_len: 600")).await;
    wait_for("new engine ready", Duration::from_secs(10), async || {
        starts(&s.record()).len() == 2 && state(&b).await == "healthy"
    })
    .await;
    assert!(
        !pid_alive(old),
        "the engine with the old command is still running"
    );
    let argv = starts(&s.record())[1]["argv"].to_string();
    assert!(argv.contains("\"600\""), "{argv}");
    assert!(
        b.log_text().contains("engine command changed"),
        "{}",
        b.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_survive_a_graceful_upgrade_and_are_adopted() {
    let s = Setup::new();
    let yaml = s.yaml(true, &[]);
    let pid = upgrade_away(&s, &yaml).await;
    let saved = std::fs::read_to_string(s.dir.path().join("run/engines.json")).unwrap();
    assert!(saved.contains(&format!("\"pid\": {pid}")), "{saved}");

    // A new router with the same config adopts it: same pid, no second start.
    let b = RouterProc::start(&yaml).await;
    wait_for("adopted", Duration::from_secs(5), async || {
        state(&b).await == "healthy"
    })
    .await;
    assert_eq!(starts(&s.record()).len(), 1, "a second engine was started");
    let c = reqwest::Client::new();
    let v: Value = c
        .post(b.url("/v1/chat/completions"))
        .body(chat())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["system_fingerprint"], pid.to_string());
    assert!(
        b.log_text().contains("adopted running engine"),
        "{}",
        b.log_text()
    );

    // The new router's exit stops the adopted engine too.
    drop(b);
    wait_for(
        "the engine to be gone after the router's exit",
        Duration::from_secs(10),
        async || !group_alive(pid),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_on_one_gpu_start_one_after_another() {
    let s = Setup::new();
    let second = dead_port();
    // Two instances on GPU 3 (the first shares it via [3, 5]); each takes 1 s to be ready.
    let yaml = s.yaml(true, &[("FAKE_READY_AFTER_MS", "1000")]).replace(
        "managed: true}\n",
        &format!("managed: true}}\n      - {{id: e2, host: 127.0.0.1, port: {second}, cuda_device: 3}}\n"),
    );
    let r = RouterProc::start(&yaml).await;
    wait_for("both started", Duration::from_secs(8), async || {
        starts(&s.record()).len() == 2
    })
    .await;
    let rec = starts(&s.record());
    let gap = rec[1]["t_ms"].as_u64().unwrap() - rec[0]["t_ms"].as_u64().unwrap();
    assert!(
        gap >= 1000,
        "the second engine started {gap} ms after the first, before it was ready"
    );
    wait_for("both ready", Duration::from_secs(5), async || {
        let v = r.get_json("/v1/router/instances").await;
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "healthy")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_whose_health_stays_bad_is_restarted() {
    let s = Setup::new();
    let r = RouterProc::start(&s.yaml(true, &[])).await;
    wait_for("ready", Duration::from_secs(5), async || {
        state(&r).await == "healthy"
    })
    .await;
    let pid = starts(&s.record())[0]["pid"].as_i64().unwrap() as i32;
    let c = reqwest::Client::new();
    c.post(format!("http://127.0.0.1:{}/sick", s.port))
        .send()
        .await
        .unwrap();
    // unhealthy_restart_after_s is 2 in this config.
    wait_for("restart", Duration::from_secs(8), async || {
        starts(&s.record()).len() == 2
    })
    .await;
    assert!(!pid_alive(pid), "the hung engine was not killed");
    assert!(
        r.log_text().contains("GET /health failing"),
        "{}",
        r.log_text()
    );
}

/// One poller asks an engine's `/health`, at `health_check_interval_s`; the supervisor
/// (readiness, restarts) and the balancer read its verdicts instead of asking again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poller_checks_an_engines_health() {
    let s = Setup::new();
    let yaml = s.yaml(true, &[]) + "  health_check_interval_s: 1\n";
    let r = RouterProc::start(&yaml).await;
    wait_for("engine healthy", Duration::from_secs(20), async || {
        state(&r).await == "healthy"
    })
    .await;
    let checks = async || -> u64 {
        let url = format!("http://127.0.0.1:{}/health_checks", s.port);
        reqwest::get(url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .parse()
            .unwrap()
    };
    let (c0, t0) = (checks().await, Instant::now());
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (n, secs) = (checks().await - c0, t0.elapsed().as_secs_f64());
    // One check a second, give or take one at each end; two pollers would make twice that.
    assert!(
        n >= 2 && n as f64 <= secs + 2.0,
        "{n} checks in {secs:.1} s"
    );
}
