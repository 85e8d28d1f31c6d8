//! Shared test harness: the mock engine and the real router binary on loopback.
#![allow(dead_code)]

mod binaries;
pub mod mock_vllm;
#[allow(unused_imports)] // not every test binary spawns engines
pub use binaries::fake_engine;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use mock_vllm::MockVllm;

/// A port nothing listens on (bound once by the OS, then released).
pub fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_llm-router")
}

/// `(id, port)` pairs as a YAML instance list.
pub fn instances(list: &[(&str, u16)]) -> String {
    list.iter()
        .map(|(id, port)| {
            format!("      - {{id: \"{id}\", host: \"127.0.0.1\", port: {port}, managed: false}}\n")
        })
        .collect()
}

/// One `LLM_engines` entry.
pub fn llm(name: &str, tag: &str, list: &[(&str, u16)]) -> String {
    format!(
        "  {name}:\n    instances:\n{}    model_config:\n      model_tag: \"{tag}\"\n",
        instances(list)
    )
}

/// The router binary running on a config, killed (by its PID) on drop.
pub struct RouterProc {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl RouterProc {
    /// Writes `yaml` to a temp dir and starts the router on a free loopback port; waits
    /// until `/health` answers.
    pub async fn start(yaml: &str) -> RouterProc {
        Self::start_with_log(yaml, Some("info")).await
    }

    /// As [`RouterProc::start`], with `RUST_LOG` set to `rust_log` or left unset (so the
    /// config's `router.log_level` applies).
    pub async fn start_with_log(yaml: &str, rust_log: Option<&str>) -> RouterProc {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let pconf = dir.path().join("pingora.yaml");
        let mut f = std::fs::File::create(&pconf).unwrap();
        writeln!(
            f,
            "---\nversion: 1\npid_file: {0}/router.pid\nupgrade_sock: {0}/upgrade.sock\ngrace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 1",
            dir.path().display()
        )
        .unwrap();
        let port = dead_port();
        let log = dir.path().join("router.log");
        let mut cmd = Command::new(bin());
        match rust_log {
            Some(level) => cmd.env("RUST_LOG", level),
            None => cmd.env_remove("RUST_LOG"),
        };
        let child = cmd
            .arg("--config")
            .arg(&cfg)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-c")
            .arg(&pconf)
            .stdout(std::fs::File::create(dir.path().join("access.log")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut r = RouterProc {
            child,
            port,
            dir,
            log,
        };
        r.wait_ready().await;
        r
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("router exited early ({status}): {}", self.log_text());
            }
            if let Ok(r) = client.get(self.url("/health")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("router not ready in 20 s: {}", self.log_text());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` as text (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> String {
        reqwest::get(self.url(path))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `GET path` as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        reqwest::get(self.url(path))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET /v1/router/instances`: one JSON object per instance, in config order.
    pub async fn instances(&self) -> Vec<serde_json::Value> {
        let v = self.get_json("/v1/router/instances").await;
        v["data"].as_array().cloned().unwrap_or_default()
    }

    /// The access log (the router's stdout), one line per request.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for RouterProc {
    /// SIGINT first (Pingora exits at once and the router stops its engines on exit),
    /// SIGKILL if it lingers.
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(pid, Signal::SIGINT);
            let t0 = Instant::now();
            while matches!(self.child.try_wait(), Ok(None)) && t0.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 50 ms until it holds; fails the test after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let t0 = Instant::now();
    while !cond().await {
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the router binary to completion with `args` (for `check` and config errors).
pub fn run_bin(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

/// The fake engine example (`examples/fake_engine.rs`), built by `cargo build --examples`.
/// Parsed lines of the fake engine's record file: one per start. A line still being
/// written by an engine that is starting right now is left out.
pub fn starts(record: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Whether `pid` runs (a zombie counts as gone).
pub fn pid_alive(pid: i32) -> bool {
    // A zombie is dead for our purpose.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Stops a router daemon the test started, by its pid: SIGINT (it exits at once and stops
/// its engines), SIGKILL if it is still there after 10 s.
pub fn stop_daemon(pid: i32) {
    use nix::sys::signal::{kill, Signal};
    if pid <= 0 || !pid_alive(pid) {
        return;
    }
    let pid_ = nix::unistd::Pid::from_raw(pid);
    let _ = kill(pid_, Signal::SIGINT);
    let t0 = Instant::now();
    while pid_alive(pid) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if pid_alive(pid) {
        let _ = kill(pid_, Signal::SIGKILL);
    }
}

/// The `id`s of a `/v1/models` answer, in order.
pub fn model_ids(list: &serde_json::Value) -> Vec<&str> {
    list["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["id"].as_str()).collect())
        .unwrap_or_default()
}

/// Asserts the OpenAI error shape and returns the `error` object.
pub async fn expect_error(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let v: serde_json::Value = resp.json().await.unwrap();
    let e = v["error"].clone();
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e["code"].is_string(), "{v}");
    assert!(e.get("param").is_some(), "{v}");
    e
}
