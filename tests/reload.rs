//! Zero-downtime reload, performed exactly as `systemd/llm-router.service` does it:
//! `ExecStart` = `llm-router -d -c pingora.yaml --config config.yaml` (daemon, pid file,
//! upgrade socket in a temp dir), `ExecReload` = `llm-router -u -d -c ... --config ...`
//! and, only if that succeeded, `kill -QUIT $MAINPID` (the old pid). Fake engines
//! (`examples/fake_engine.rs`) serve real SSE; a mixed load of non-streaming requests and
//! 3-second streams runs across the reload.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bin, dead_port, fake_engine, model_ids, pid_alive, starts, wait_for};
use futures_util::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// Tokens per streamed answer and the pause between them: a 3 s stream.
const SSE_CHUNKS: usize = 30;
const SSE_DELAY_MS: u64 = 100;
/// Pingora's grace period for the old process: the longest a stream may take to finish
/// after the hand-over. The old process leaves as soon as it has nothing in flight.
const GRACE_S: u64 = 30;

/// The service as systemd sees it: a config, a Pingora conf and a pid file.
struct Service {
    dir: tempfile::TempDir,
    port: u16,
    /// Engine ports: e1 (kept), e2 (removed by the reload), e3 (added by the reload).
    engines: [u16; 3],
}

impl Service {
    fn new() -> Service {
        let s = Service {
            dir: tempfile::tempdir().unwrap(),
            port: dead_port(),
            engines: [dead_port(), dead_port(), dead_port()],
        };
        std::fs::write(
            s.path("pingora.yaml"),
            format!(
                "---\nversion: 1\npid_file: {0}/router.pid\nupgrade_sock: {0}/upgrade.sock\nerror_log: {0}/error.log\ngrace_period_seconds: {GRACE_S}\ngraceful_shutdown_timeout_seconds: 2\n",
                s.dir.path().display()
            ),
        )
        .unwrap();
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `m` on e1+e2 before the reload; `m` on e1 and a new model `m2` on e3 after it.
    /// Engines answer `/health` `ready_after_ms` after their start.
    fn write_config(&self, after_reload: bool, ready_after_ms: u64) {
        let models = if after_reload {
            self.model("m", &["e1"], ready_after_ms) + &self.model("m2", &["e3"], ready_after_ms)
        } else {
            self.model("m", &["e1", "e2"], ready_after_ms)
        };
        self.write_config_text(&models, "");
    }

    /// One `LLM_engines` entry on fake engines `ids` (of e1, e2, e3).
    fn model(&self, name: &str, ids: &[&str], ready_after_ms: u64) -> String {
        let instances: String = ids
            .iter()
            .map(|id| {
                let port = self.engines[id[1..].parse::<usize>().unwrap() - 1];
                format!("      - {{id: {id}, host: 127.0.0.1, port: {port}}}\n")
            })
            .collect();
        format!(
            "  {name}:\n    command: [\"{}\"]\n    env:\n      FAKE_RECORD: \"{}\"\n      FAKE_SSE: \"{SSE_CHUNKS},{SSE_DELAY_MS}\"\n      FAKE_READY_AFTER_MS: \"{ready_after_ms}\"\n    instances:\n{instances}    model_config:\n      model_tag: org/{name}\n",
            fake_engine().display(),
            self.path("record.jsonl").display()
        )
    }

    /// The config: `models` (`LLM_engines` entries), then `extra` (top-level YAML).
    fn write_config_text(&self, models: &str, extra: &str) {
        std::fs::write(
            self.path("config.yaml"),
            format!(
                "router:\n  listen: 127.0.0.1:{}\nLLM_engines:\n{models}supervisor:\n  log_dir: \"{}\"\n  run_dir: \"{}\"\n  stop_timeout_s: 3\nbalancer:\n  poll_interval_s: 0.2\n{extra}",
                self.port,
                self.path("logs").display(),
                self.path("run").display()
            ),
        )
        .unwrap();
    }

    /// `llm-router [-u] -d -c pingora.yaml --config config.yaml`, run to completion.
    fn daemon(&self, upgrade: bool) -> Output {
        let mut c = Command::new(bin());
        if upgrade {
            c.arg("-u");
        }
        c.arg("-d")
            .arg("-c")
            .arg(self.path("pingora.yaml"))
            .arg("--config")
            .arg(self.path("config.yaml"))
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    }

    /// `ExecStart`: returns once the daemon is up (`daemon_wait_for_ready` defaults to on),
    /// with the daemon's pid.
    fn start(&self) -> i32 {
        let out = self.daemon(false);
        assert!(out.status.success(), "start failed: {}", self.error_log());
        let pid = self.main_pid();
        assert!(pid_alive(pid), "no daemon running: {}", self.error_log());
        pid
    }

    /// Waits until exactly `ids` are the configured instances, all healthy.
    async fn wait_healthy(&self, ids: &[&str]) {
        wait_for(
            &format!("{ids:?} healthy"),
            Duration::from_secs(20),
            async || self.serving(ids).await,
        )
        .await;
    }

    /// `<run_dir>/engines.json`.
    fn state_file(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.path("run/engines.json")).unwrap()).unwrap()
    }

    /// `$MAINPID`: what the pid file says.
    fn main_pid(&self) -> i32 {
        std::fs::read_to_string(self.path("router.pid"))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// `ExecReload`: the new process first; SIGQUIT to the old one only if it succeeded.
    fn reload(&self) -> Output {
        let old = self.main_pid();
        let out = self.daemon(true);
        if out.status.success() {
            kill(Pid::from_raw(old), Signal::SIGQUIT).unwrap();
        }
        out
    }

    /// The pid of the engine serving `port`, from the fake engines' start records.
    fn engine_starts(&self, port: u16) -> Vec<i32> {
        starts(&self.path("record.jsonl"))
            .iter()
            .filter(|r| {
                r["argv"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == &json!(port.to_string())))
            })
            .map(|r| r["pid"].as_i64().unwrap() as i32)
            .collect()
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.path("error.log")).unwrap_or_default()
    }

    async fn serving(&self, ids: &[&str]) -> bool {
        let Ok(r) = reqwest::get(self.url("/v1/router/instances")).await else {
            return false;
        };
        let v: Value = r.json().await.unwrap_or_default();
        let data = v["data"].as_array().cloned().unwrap_or_default();
        data.len() == ids.len()
            && data
                .iter()
                .all(|i| ids.contains(&i["id"].as_str().unwrap_or("")) && i["state"] == "healthy")
    }
}

impl Drop for Service {
    /// SIGINT to the running router (it exits at once and stops its engines), then any
    /// engine still running is killed by its pid.
    fn drop(&mut self) {
        common::stop_daemon(self.main_pid());
        for p in self.engines {
            for e in self.engine_starts(p) {
                if pid_alive(e) {
                    let _ = kill(Pid::from_raw(e), Signal::SIGKILL);
                }
            }
        }
    }
}

/// Waits until the process `pid` has exited.
async fn wait_exit(what: &str, pid: i32, limit: Duration) {
    wait_for(what, limit, async || !pid_alive(pid)).await;
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    requests: AtomicUsize,
    streams: AtomicUsize,
    failures: Mutex<Vec<String>>,
    longest_stream: Mutex<Duration>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// One non-streaming request; its answer must be a complete chat completion.
async fn one_request(c: &reqwest::Client, url: &str, t: &Tally) {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    match c.post(url).json(&body).send().await {
        Ok(r) if r.status() == 200 => match r.json::<Value>().await {
            Ok(v) if v["choices"][0]["message"]["content"].is_string() => {}
            Ok(v) => t.fail(format!("incomplete answer: {v}")),
            Err(e) => t.fail(format!("answer body: {e}")),
        },
        Ok(r) => t.fail(format!("status {}: {:?}", r.status(), r.text().await)),
        Err(e) => t.fail(format!("request: {e:?}")),
    }
    t.requests.fetch_add(1, Ordering::Relaxed);
}

/// One streamed request; it must deliver every token and `[DONE]`.
async fn one_stream(c: &reqwest::Client, url: &str, t: &Tally) {
    let t0 = Instant::now();
    let body =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let r = match c.post(url).json(&body).send().await {
        Ok(r) if r.status() == 200 => r,
        Ok(r) => return t.fail(format!("stream status {}", r.status())),
        Err(e) => return t.fail(format!("stream request: {e:?}")),
    };
    let mut text = Vec::new();
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => text.extend_from_slice(&b),
            Err(e) => return t.fail(format!("stream cut after {:?}: {e:?}", t0.elapsed())),
        }
    }
    let text = String::from_utf8_lossy(&text);
    let tokens = text.matches("\"content\":\"tok").count();
    if tokens != SSE_CHUNKS || !text.trim_end().ends_with("data: [DONE]") {
        return t.fail(format!(
            "stream incomplete: {tokens} tokens, ends {:?}",
            text.chars().rev().take(30).collect::<String>()
        ));
    }
    t.streams.fetch_add(1, Ordering::Relaxed);
    let mut l = t.longest_stream.lock().unwrap();
    *l = (*l).max(t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing_and_applies_the_new_config() {
    let s = Service::new();
    s.write_config(false, 0);

    let first = s.start();
    s.wait_healthy(&["e1", "e2"]).await;
    let [p1, p2, p3] = s.engines;
    let (e1, e2) = (s.engine_starts(p1)[0], s.engine_starts(p2)[0]);

    // A broken config: the reload fails loudly, no SIGQUIT is sent, the old one serves on.
    std::fs::write(
        s.path("config.yaml"),
        "LLM_engines:\n  m:\n    instances: 5\n",
    )
    .unwrap();
    let bad = s.reload();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "bad config reload: {stderr}");
    assert!(
        stderr.contains("config.yaml") && stderr.contains("instances"),
        "{stderr}"
    );
    assert_eq!(s.main_pid(), first);
    assert_eq!(reqwest::get(s.url("/health")).await.unwrap().status(), 200);

    // The real reload, under load: e2 removed, model m2 on e3 added, e1 unchanged.
    s.write_config(true, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let url = s.url("/v1/chat/completions");
    let mut load = Vec::new();
    for w in 0..8 {
        let (stop, tally, url) = (stop.clone(), tally.clone(), url.clone());
        load.push(tokio::spawn(async move {
            // Keep-alive clients (the hard case for a reload) and fresh connections.
            let c = reqwest::Client::builder()
                .pool_max_idle_per_host(if w % 2 == 0 { 8 } else { 0 })
                .build()
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                if w < 3 {
                    one_stream(&c, &url, &tally).await;
                } else {
                    one_request(&c, &url, &tally).await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = tally.requests.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let out = tokio::task::block_in_place(|| s.reload());
    let reload_cmd = t0.elapsed();
    assert!(
        out.status.success(),
        "reload failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        s.error_log()
    );
    let second = s.main_pid();
    assert_ne!(second, first, "the pid file names the new process");
    assert!(pid_alive(second));

    // The old process drains (QUIT + 5 s + grace period) and leaves.
    wait_exit(
        "the old process to exit",
        first,
        Duration::from_secs(GRACE_S + 15),
    )
    .await;
    let old_gone = t0.elapsed();
    let during = tally.requests.load(Ordering::Relaxed) - before;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let failures = tally.failures.lock().unwrap().clone();
    let (requests, streams) = (
        tally.requests.load(Ordering::Relaxed),
        tally.streams.load(Ordering::Relaxed),
    );
    let longest = *tally.longest_stream.lock().unwrap();
    println!(
        "reload: command {reload_cmd:.2?}, old process gone after {old_gone:.2?}; {requests} requests ({during} during the reload) and {streams} streams, {} failed; longest stream {longest:.2?}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(during > 100, "too little load during the reload: {during}");
    assert!(streams >= 6, "streams completed: {streams}");

    // The new config is in force: m2 is served, e2's engine is stopped now that the old
    // router is gone, e1 is the same process (adopted, never restarted), e3 was started.
    s.wait_healthy(&["e1", "e3"]).await;
    let models: Value = reqwest::get(s.url("/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids = model_ids(&models);
    assert!(ids.contains(&"m") && ids.contains(&"m2"), "{ids:?}");
    wait_exit(
        "the removed instance's engine to stop",
        e2,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(s.engine_starts(p1), vec![e1], "e1 restarted");
    assert!(pid_alive(e1));
    assert_eq!(s.engine_starts(p2), vec![e2], "e2 restarted");
    assert_eq!(s.engine_starts(p3).len(), 1, "e3 started once");
    let r = reqwest::Client::new()
        .post(&url)
        .json(&json!({"model": "m2", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for(
        "the retirement logged",
        Duration::from_secs(5),
        async || {
            s.error_log()
                .contains("engine of a removed instance stopped")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_finishes_streams_then_exits_without_sitting_out_the_grace_period() {
    let s = Service::new();
    s.write_config(false, 0);
    let pid = s.start();
    s.wait_healthy(&["e1", "e2"]).await;
    let engines: Vec<i32> = s.engines[..2]
        .iter()
        .flat_map(|p| s.engine_starts(*p))
        .collect();

    // A stream in flight when systemd stops the service (SIGTERM) completes.
    let tally = Arc::new(Tally::default());
    let stream = {
        let (t, url) = (tally.clone(), s.url("/v1/chat/completions"));
        tokio::spawn(async move { one_stream(&reqwest::Client::new(), &url, &t).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    wait_exit("the router to exit", pid, Duration::from_secs(GRACE_S + 15)).await;
    let gone = t0.elapsed();
    stream.await.unwrap();
    assert!(
        tally.failures.lock().unwrap().is_empty(),
        "{:?}",
        tally.failures.lock().unwrap()
    );
    assert_eq!(tally.streams.load(Ordering::Relaxed), 1);
    // The stream had ~2.5 s left, the engines' stop and the settle time add a little;
    // the grace period (30 s) is not sat out.
    assert!(
        gone < Duration::from_secs(GRACE_S / 2),
        "exit took {gone:?}"
    );
    assert!(
        engines.iter().all(|e| !pid_alive(*e)),
        "engines left running"
    );
    let log = s.error_log();
    assert!(log.contains("drained: nothing in flight"), "{log}");
    println!("stop: exit {gone:.2?} after SIGTERM with a stream in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_dying_during_the_hand_over_is_restarted_once_by_the_new_router() {
    let s = Service::new();
    s.write_config(false, 0);
    let first = s.start();
    s.wait_healthy(&["e1", "e2"]).await;
    let p1 = s.engines[0];
    let e1 = s.engine_starts(p1)[0];

    // Same config: a plain reload. e1 dies while the old router is handing over.
    let out = s.reload();
    assert!(out.status.success(), "{}", s.error_log());
    let second = s.main_pid();
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill(Pid::from_raw(e1), Signal::SIGKILL).unwrap();
    wait_exit(
        "the old process to exit",
        first,
        Duration::from_secs(GRACE_S),
    )
    .await;
    wait_for(
        "e1 restarted and healthy",
        Duration::from_secs(20),
        async || s.engine_starts(p1).len() >= 2 && s.serving(&["e1", "e2"]).await,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Restarted once, by the new router, which alone writes the state file.
    let restarts = s.engine_starts(p1);
    assert_eq!(restarts.len(), 2, "{restarts:?}");
    let state = s.state_file();
    assert_eq!(state["e1"]["pid"], json!(restarts[1]), "{state}");
    assert_eq!(state["e1"]["router"]["pid"], json!(second), "{state}");
    assert_eq!(state["e2"]["router"]["pid"], json!(second), "{state}");
    let log = s.error_log();
    assert!(log.contains("engine left to the new router"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_still_loading_at_a_reload_are_adopted_not_started_twice() {
    let s = Service::new();
    s.write_config(false, 3000);
    // -d returns once the engines are started, not once they are ready.
    let first = s.start();
    let out = s.reload();
    assert!(out.status.success(), "{}", s.error_log());
    let second = s.main_pid();
    wait_exit(
        "the old process to exit",
        first,
        Duration::from_secs(GRACE_S),
    )
    .await;
    s.wait_healthy(&["e1", "e2"]).await;
    for p in &s.engines[..2] {
        assert_eq!(
            s.engine_starts(*p).len(),
            1,
            "engine on port {p} started twice"
        );
    }
    let state = s.state_file();
    for id in ["e1", "e2"] {
        assert_eq!(state[id]["ready"], json!(true), "{state}");
        assert_eq!(state[id]["router"]["pid"], json!(second), "{state}");
    }
    let log = s.error_log();
    assert!(log.contains("loading=true"), "{log}");
}

/// What a failed reload must leave exactly as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    main_pid: i32,
    state_file: Value,
    engines: Vec<Vec<i32>>,
}

impl Service {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            main_pid: self.main_pid(),
            state_file: self.state_file(),
            engines: self
                .engines
                .iter()
                .map(|p| self.engine_starts(*p))
                .collect(),
        }
    }

    /// The new process of `-u -d` (its pid, from the pid file right after the command).
    fn reload_without_quit(&self) -> (Output, i32) {
        let out = self.daemon(true);
        (out, self.main_pid())
    }
}

/// `m` on e1+e2 as before, plus a new instance e3 (which a failing new process starts
/// and must stop again), plus `extra`.
fn with_e3(s: &Service, extra: &str) {
    s.write_config_text(&s.model("m", &["e1", "e2", "e3"], 0), extra);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_leaves_engines_state_file_and_pid_file_as_they_were() {
    let s = Service::new();
    s.write_config(false, 0);
    let old = s.start();
    s.wait_healthy(&["e1", "e2"]).await;
    let before = s.snapshot();
    let [p1, p2, p3] = s.engines;
    let alive = || [p1, p2].iter().all(|p| pid_alive(s.engine_starts(*p)[0]));

    // Streams run on the old router through every failure and must all complete.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let streams = {
        let (stop, tally, url) = (stop.clone(), tally.clone(), s.url("/v1/chat/completions"));
        tokio::spawn(async move {
            let c = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                one_stream(&c, &url, &tally).await;
            }
        })
    };
    let mut e3_starts = 0;

    // 1. A model that cannot load (the config validates): exits non-zero before it is
    // ready; e3, which it started meanwhile, is stopped; nothing else is touched.
    let empty = s.path("empty-model");
    std::fs::create_dir_all(&empty).unwrap();
    with_e3(
        &s,
        &format!(
            "embedding_server:\n  host: 127.0.0.1\n  port: {}\n  embedding_models:\n    e: {{model_path: \"{}\"}}\n",
            dead_port(),
            empty.display()
        ),
    );
    assert!(
        common::run_bin(&["check", "--config", s.path("config.yaml").to_str().unwrap()])
            .status
            .success()
    );
    let out = tokio::task::block_in_place(|| s.reload());
    assert!(
        !out.status.success(),
        "model load failure: {}",
        s.error_log()
    );
    assert!(
        s.error_log().contains("embedding service"),
        "{}",
        s.error_log()
    );
    e3_starts = e3_starts.max(s.engine_starts(p3).len());
    for e in s.engine_starts(p3) {
        wait_exit(
            "e3 started by the failed process to stop",
            e,
            Duration::from_secs(10),
        )
        .await;
    }
    assert_eq!(s.main_pid(), old, "pid file restored");
    assert_eq!(s.state_file(), before.state_file);
    assert_eq!(s.engine_starts(p1), before.engines[0], "e1 restarted");
    assert!(alive());

    // 2. A new listen address that is taken: refused before anything starts.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    with_e3(&s, "");
    let cfg = std::fs::read_to_string(s.path("config.yaml"))
        .unwrap()
        .replace(
            "router:\n",
            &format!("router:\n  admin_listen: {}\n", taken.local_addr().unwrap()),
        );
    std::fs::write(s.path("config.yaml"), cfg).unwrap();
    let out = tokio::task::block_in_place(|| s.reload());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&taken.local_addr().unwrap().to_string()),
        "{err}"
    );
    assert_eq!(s.main_pid(), old);
    assert_eq!(s.state_file(), before.state_file);

    // 3. The hand-over never comes (no SIGQUIT to the old router): `-u -d` returned, the
    // new process gives up waiting for the sockets and exits, after it started e3.
    with_e3(&s, "");
    let (out, new) = tokio::task::block_in_place(|| s.reload_without_quit());
    assert!(out.status.success(), "{}", s.error_log());
    assert_ne!(new, old);
    wait_for(
        "e3 started by the new process",
        Duration::from_secs(10),
        async || s.engine_starts(p3).len() > e3_starts,
    )
    .await;
    wait_exit("the new process to give up", new, Duration::from_secs(30)).await;
    for e in s.engine_starts(p3) {
        wait_exit("e3 to stop", e, Duration::from_secs(10)).await;
    }
    e3_starts = s.engine_starts(p3).len();
    assert_eq!(s.main_pid(), old, "pid file restored");
    assert_eq!(s.state_file(), before.state_file);
    assert!(alive());

    // 4. Stopped (SIGTERM) before it is in charge: the same.
    let (out, new) = tokio::task::block_in_place(|| s.reload_without_quit());
    assert!(out.status.success(), "{}", s.error_log());
    wait_for("e3 started again", Duration::from_secs(10), async || {
        s.engine_starts(p3).len() > e3_starts
    })
    .await;
    kill(Pid::from_raw(new), Signal::SIGTERM).unwrap();
    wait_exit("the new process to stop", new, Duration::from_secs(30)).await;
    for e in s.engine_starts(p3) {
        wait_exit("e3 to stop", e, Duration::from_secs(10)).await;
    }
    assert_eq!(s.main_pid(), old, "pid file restored");
    assert_eq!(s.state_file(), before.state_file);
    assert_eq!(s.engine_starts(p1), before.engines[0], "e1 restarted");
    assert_eq!(s.engine_starts(p2), before.engines[1], "e2 restarted");
    assert!(alive());

    // The old router served all along.
    stop.store(true, Ordering::Relaxed);
    streams.await.unwrap();
    let failures = tally.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(tally.streams.load(Ordering::Relaxed) >= 3);
    assert!(s.serving(&["e1", "e2"]).await);
    assert_eq!(s.main_pid(), old);
    assert!(pid_alive(old));
}
