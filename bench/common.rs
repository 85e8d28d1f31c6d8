//! Shared by the benchmarks: the router binary on a config, on a free loopback port,
//! with its CPU time and memory read from `/proc`; a closed-loop load and percentiles.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `p` quantile of sorted latencies.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `conc` clients send the request `make` builds, back to back, for `phase`; every answer
/// must be 200. Returns requests per second and the sorted latencies.
pub async fn closed_loop<F>(conc: usize, phase: Duration, make: F) -> (f64, Vec<Duration>)
where
    F: Fn(&reqwest::Client) -> reqwest::RequestBuilder + Clone + Send + 'static,
{
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conc)
        .build()
        .unwrap();
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..conc)
        .map(|_| {
            let (c, make) = (client.clone(), make.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while t0.elapsed() < phase {
                    let s = Instant::now();
                    let r = make(&c).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    lat.push(s.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = t0.elapsed().as_secs_f64();
    all.sort();
    (all.len() as f64 / secs, all)
}

pub struct BenchRouter {
    pub child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl BenchRouter {
    /// Starts the router on `yaml` (not waiting for it to be ready).
    pub fn start(yaml: &str) -> BenchRouter {
        Self::start_with(yaml, Stdio::inherit())
    }

    /// [`BenchRouter::start`] with the router's log (stderr) sent to `log`.
    pub fn start_with(yaml: &str, log: Stdio) -> BenchRouter {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("bench.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // LLM_ROUTER_BIN: the binary when the bench runs away from its build tree.
        let bin = std::env::var("LLM_ROUTER_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_llm-router").to_string());
        let child = Command::new(bin)
            .args([
                "--config",
                cfg.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        BenchRouter {
            child,
            port,
            _dir: dir,
        }
    }

    /// Waits (up to 10 s) until the router answers `/health`.
    pub async fn wait_ready(&self) {
        let c = reqwest::Client::new();
        for _ in 0..400 {
            if c.get(self.url("/health")).send().await.is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("router did not start");
    }

    /// The folder of the config file (relative paths in it resolve here).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status(self.child.id(), "VmRSS:")
    }

    /// User + system CPU seconds used so far.
    pub fn cpu_secs(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may contain spaces) start after ')'.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (t(11) + t(12)) / 100.0
    }
}

impl Drop for BenchRouter {
    /// SIGINT first (the router stops the engines it spawned on its way out), SIGKILL if
    /// it lingers.
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(pid, Signal::SIGINT);
            let t0 = std::time::Instant::now();
            while matches!(self.child.try_wait(), Ok(None))
                && t0.elapsed() < std::time::Duration::from_secs(10)
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `/proc/<pid>/status` field in kB.
pub fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
