//! Router overhead: the same load direct to a mock engine and through the router, in one
//! run, interleaved (direct, router, direct, router) so that machine noise hits both arms.
//! Prints a markdown table. `make bench` (= `cargo bench --bench proxy`).
//!
//! Bounded: every phase runs a fixed number of requests or a fixed time, on loopback only.

#[path = "common.rs"]
mod common;
#[path = "../tests/common/mock_vllm.rs"]
mod mock_vllm;

use std::time::{Duration, Instant};

use common::{pct, proc_status, BenchRouter};
use futures_util::StreamExt;
use mock_vllm::MockVllm;

const PHASE: Duration = Duration::from_secs(3);

async fn start_router(engine_port: u16) -> BenchRouter {
    let r = BenchRouter::start(&format!(
        "LLM_engines:\n  m:\n    instances:\n      - {{id: m1, host: 127.0.0.1, port: {engine_port}, managed: false}}\n    model_config: {{model_tag: m}}\nrouter:\n  threads: 2\n"
    ));
    r.wait_ready().await;
    r
}

fn body(stream: bool) -> String {
    format!("{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello there\"}}],\"stream\":{stream}}}")
}

struct Load {
    rps: f64,
    p50: Duration,
    p99: Duration,
    n: usize,
}

/// `conc` workers send non-streaming requests back to back for [`PHASE`].
async fn closed_loop(url: &str, conc: usize) -> Load {
    let url = url.to_string();
    let (rps, all) =
        common::closed_loop(conc, PHASE, move |c| c.post(&url).body(body(false))).await;
    Load {
        rps,
        p50: pct(&all, 0.5),
        p99: pct(&all, 0.99),
        n: all.len(),
    }
}

/// Sequential streams: time to first event and total, `n` streams.
async fn streams(url: &str, n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let client = reqwest::Client::new();
    let (mut first, mut total) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let s = Instant::now();
        let r = client.post(url).body(body(true)).send().await.unwrap();
        let mut b = r.bytes_stream();
        let mut got_first = false;
        while let Some(c) = b.next().await {
            let c = c.unwrap();
            if !got_first && c.windows(2).any(|w| w == b"\n\n") {
                first.push(s.elapsed());
                got_first = true;
            }
        }
        total.push(s.elapsed());
    }
    first.sort();
    total.sort();
    (first, total)
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let engine = MockVllm::start("bench").await;
    engine.set_sse(5, 0);
    let router = start_router(engine.port()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = router.rss_kib();
    let direct = format!("http://127.0.0.1:{}/v1/chat/completions", engine.port());
    let proxied = format!("http://127.0.0.1:{}/v1/chat/completions", router.port);

    // Non-streaming, c=1 and c=64, interleaved twice; the better round of each arm counts.
    let mut rows = Vec::new();
    let mut max_rss = idle_rss;
    let mut router_cpu = 0.0;
    let mut router_reqs = 0usize;
    for conc in [1usize, 64] {
        let (mut best_d, mut best_r): (Option<Load>, Option<Load>) = (None, None);
        for _round in 0..2 {
            let d = closed_loop(&direct, conc).await;
            let cpu0 = router.cpu_secs();
            let sampler = {
                let pid = router.child.id();
                tokio::spawn(async move {
                    let mut m = 0;
                    let t0 = Instant::now();
                    while t0.elapsed() < PHASE {
                        m = m.max(proc_status(pid, "VmRSS:"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    m
                })
            };
            let r = closed_loop(&proxied, conc).await;
            router_cpu += router.cpu_secs() - cpu0;
            router_reqs += r.n;
            max_rss = max_rss.max(sampler.await.unwrap());
            if best_d.as_ref().is_none_or(|b| d.rps > b.rps) {
                best_d = Some(d);
            }
            if best_r.as_ref().is_none_or(|b| r.rps > b.rps) {
                best_r = Some(r);
            }
        }
        rows.push((conc, best_d.unwrap(), best_r.unwrap()));
    }

    // Streaming: 50 events 1 ms apart.
    engine.set_sse(50, 1);
    let (mut sdf, mut sdt, mut srf, mut srt) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 {
        let (f, t) = streams(&direct, 25).await;
        sdf.extend(f);
        sdt.extend(t);
        let (f, t) = streams(&proxied, 25).await;
        srf.extend(f);
        srt.extend(t);
    }
    for v in [&mut sdf, &mut sdt, &mut srf, &mut srt] {
        v.sort();
    }

    println!("| metric | direct | via router | ratio / added |");
    println!("|---|---|---|---|");
    for (conc, d, r) in &rows {
        println!(
            "| non-streaming c={conc} req/s | {:.0} | {:.0} | {:.2}x |",
            d.rps,
            r.rps,
            r.rps / d.rps
        );
        println!(
            "| non-streaming c={conc} p50 / p99 (ms) | {} / {} | {} / {} | +{} / +{} ms |",
            ms(d.p50),
            ms(d.p99),
            ms(r.p50),
            ms(r.p99),
            ms(r.p50.saturating_sub(d.p50)),
            ms(r.p99.saturating_sub(d.p99))
        );
    }
    println!(
        "| stream first event p50 / p99 (ms) | {} / {} | {} / {} | +{} ms (p50) |",
        ms(pct(&sdf, 0.5)),
        ms(pct(&sdf, 0.99)),
        ms(pct(&srf, 0.5)),
        ms(pct(&srf, 0.99)),
        ms(pct(&srf, 0.5).saturating_sub(pct(&sdf, 0.5)))
    );
    println!(
        "| stream total, 50 events 1 ms apart, p50 (ms) | {} | {} | +{} ms |",
        ms(pct(&sdt, 0.5)),
        ms(pct(&srt, 0.5)),
        ms(pct(&srt, 0.5).saturating_sub(pct(&sdt, 0.5)))
    );
    println!(
        "| router RSS idle / under load (MiB) | | {:.1} / {:.1} | |",
        idle_rss as f64 / 1024.0,
        max_rss as f64 / 1024.0
    );
    println!(
        "| router CPU time per request (µs) | | {:.1} | |",
        router_cpu / router_reqs.max(1) as f64 * 1e6
    );
}
