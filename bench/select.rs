//! Selection cost per request: `Model::pick` through the pingora-load-balancing
//! `LoadBalancer` with our score selection, over N instances with varied live loads.
//! `make bench` (= `cargo bench`); prints a markdown table.

use std::hint::black_box;
use std::time::Instant;

use llm_router::balance::select::LoadInputs;
use llm_router::balance::stats::now_ms;
use llm_router::balance::Registry;
use llm_router::config::Config;

fn registry(n: usize, policy: &str) -> Registry {
    let mut yaml = String::from("LLM_engines:\n  m:\n    instances:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "      - {{id: i{i}, host: 127.0.0.1, port: {}}}\n",
            10000 + i
        ));
    }
    yaml.push_str(&format!(
        "    model_config: {{model_tag: m}}\nbalancer:\n  policy: {policy}\n"
    ));
    let cfg = Config::from_yaml_str(&yaml, std::path::Path::new("bench.yaml")).unwrap();
    let reg = Registry::new(&cfg).unwrap();
    let now = now_ms();
    for (k, inst) in reg.get("m").unwrap().instances.iter().enumerate() {
        let x = (k * 7919 % 101) as f64;
        inst.stats().record_load(
            LoadInputs {
                waiting: x % 5.0,
                running: x % 17.0,
                kv_usage: x / 101.0,
            },
            None,
            now,
        );
    }
    reg
}

fn main() {
    println!("| instances | policy | selection cost per request (µs) |");
    println!("|---|---|---|");
    for n in [10usize, 100, 1000] {
        for policy in ["least_load", "power_of_two", "session_affinity"] {
            let reg = registry(n, policy);
            let m = reg.get("m").unwrap();
            let iters = (2_000_000 / n).max(2000);
            let key: &[u8] = if policy == "session_affinity" {
                b"conversation-1"
            } else {
                b""
            };
            for _ in 0..iters / 10 {
                black_box(m.pick(key, &[]));
            }
            let t0 = Instant::now();
            for _ in 0..iters {
                black_box(m.pick(black_box(key), &[]));
            }
            let per = t0.elapsed().as_secs_f64() / iters as f64 * 1e6;
            println!("| {n} | {policy} | {per:.3} |");
        }
    }
}
