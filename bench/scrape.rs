//! Background cost of watching many instances: the router's CPU while idle with 200
//! instances whose `/metrics` (a real 50 KiB vLLM page) and `/health` are polled at 1 Hz,
//! against the same router with polling effectively off, in one run.
//! `make bench` (= `cargo bench`); prints a markdown table.

#[path = "../tests/common/mock_vllm.rs"]
mod mock_vllm;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mock_vllm::MockVllm;

const INSTANCES: usize = 200;
const WINDOW: Duration = Duration::from_secs(10);

fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// The router process; its config lives in `_dir` while it runs.
struct Proc {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(ports: &[u16], poll_s: f64) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from("LLM_engines:\n");
    // 20 models of 10 instances, like a host with many model groups.
    for (g, chunk) in ports.chunks(10).enumerate() {
        yaml.push_str(&format!("  m{g}:\n    instances:\n"));
        for (k, p) in chunk.iter().enumerate() {
            yaml.push_str(&format!(
                "      - {{id: m{g}-{k}, host: 127.0.0.1, port: {p}, managed: false}}\n"
            ));
        }
        yaml.push_str(&format!("    model_config: {{model_tag: m{g}}}\n"));
    }
    yaml.push_str(&format!(
        "balancer:\n  poll_interval_s: {poll_s}\n  health_check_interval_s: {poll_s}\n"
    ));
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_llm-router"))
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Proc {
        child,
        _dir: dir,
        port,
    }
}

/// CPU % of one core over the window, and how many instances had fresh metrics then.
async fn measure(ports: &[u16], poll_s: f64) -> (f64, usize) {
    let p = start(ports, poll_s);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = p.child.id();
    let (c0, t0) = (cpu_secs(pid), Instant::now());
    tokio::time::sleep(WINDOW).await;
    let cpu = (cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
    let v: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{}/v1/router/instances", p.port))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let fresh = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["fresh"] == true)
        .count();
    (cpu, fresh)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let page = include_str!("../tests/fixtures/vllm_metrics_sample.txt").to_string();
    let mut mocks = Vec::new();
    for i in 0..INSTANCES {
        let m = MockVllm::start(&format!("m{i}")).await;
        *m.state.metrics_page.lock().unwrap() = Some(page.clone());
        mocks.push(m);
    }
    let ports: Vec<u16> = mocks.iter().map(|m| m.port()).collect();
    let (polled, fresh) = measure(&ports, 1.0).await;
    assert_eq!(
        fresh, INSTANCES,
        "every instance must have fresh metrics while polled"
    );
    let (idle, _) = measure(&ports, 3600.0).await;
    println!("| router, {INSTANCES} instances, idle | CPU (% of one core) |");
    println!("|---|---|");
    println!("| /metrics (real 50 KiB vLLM page) + /health polled at 1 Hz | {polled:.2} |");
    println!("| polling off (3600 s interval) | {idle:.2} |");
    println!("| cost of polling | {:.2} |", polled - idle);
}
