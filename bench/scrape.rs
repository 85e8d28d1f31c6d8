//! Background cost of watching many instances: the router's CPU while idle with 200
//! instances whose `/metrics` (a real 50 KiB vLLM page) and `/health` are polled at 1 Hz,
//! against the same router with polling effectively off, in one run.
//! `make bench` (= `cargo bench`); prints a markdown table.

#[path = "common.rs"]
mod common;
#[path = "../tests/common/mock_vllm.rs"]
mod mock_vllm;

use std::time::{Duration, Instant};

use common::BenchRouter;
use mock_vllm::MockVllm;

const INSTANCES: usize = 200;
const WINDOW: Duration = Duration::from_secs(10);

fn start(ports: &[u16], poll_s: f64) -> BenchRouter {
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
    BenchRouter::start(&yaml)
}

/// CPU % of one core over the window, and how many instances had fresh metrics then.
async fn measure(ports: &[u16], poll_s: f64) -> (f64, usize) {
    let p = start(ports, poll_s);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (c0, t0) = (p.cpu_secs(), Instant::now());
    tokio::time::sleep(WINDOW).await;
    let cpu = (p.cpu_secs() - c0) / t0.elapsed().as_secs_f64() * 100.0;
    let v: serde_json::Value = reqwest::get(p.url("/v1/router/instances"))
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
