//! The test suite's mock vLLM as a stand-alone server, for the Python SDK tests, the demo
//! and manual experiments: `cargo run --example mock_vllm -- [PORT] [NAME]`.
//! Prints `listening on 127.0.0.1:PORT` once ready.

#[path = "../tests/common/mock_vllm.rs"]
mod mock_vllm;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let name = args.next().unwrap_or_else(|| "mock".to_string());
    let m = mock_vllm::MockVllm::start_on(port, &name).await;
    m.set_sse(8, 20);
    println!("listening on {}", m.addr);
    tokio::signal::ctrl_c().await.ok();
}
