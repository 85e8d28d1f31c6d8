//! Admission, measured in one run. Prints two markdown tables.
//!
//! 1. **Cost of auth and limits**: the same mock engine through a router with auth off
//!    and one with a key that has limits (rpm, tpm, in-flight, quota: every check runs,
//!    none refuses) and the usage ledger, and a control router identical to the one with
//!    auth off (its ratio to it is the noise floor), phases interleaved round by round so
//!    that machine noise hits every arm: c=64 throughput and router CPU, c=1 latency.
//! 2. **Fairness**: an engine that runs at most 16 requests at once (the rest wait first
//!    come, first served, as vLLM's scheduler does beyond `max_num_seqs`); a sheddable
//!    flood (64 clients back to back) and one critical client (one streamed request at a
//!    time). Time to first token of the critical client, alone, in the flood without an
//!    admission cap, and in the flood with `admission.models.m.max_in_flight: 16`.
//!
//! Bounded: fixed phase times and request counts, loopback only.

#[path = "common.rs"]
mod common;
#[path = "../tests/common/mock_vllm.rs"]
mod mock_vllm;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pct, BenchRouter};
use llm_router::auth::token;
use mock_vllm::MockVllm;

const PHASE: Duration = Duration::from_secs(2);
/// Rounds of the cost comparison. Every round measures each arm once, in a rotated order,
/// and the table shows the median of the per-round ratios: this machine's noise between
/// rounds (steal time of a shared VM) is larger than the difference measured, which is
/// why a control arm identical to the baseline is measured too (its ratio is the noise).
const ROUNDS: usize = 10;
fn body(stream: bool) -> String {
    format!("{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello there\"}}],\"stream\":{stream},\"max_tokens\":16}}")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A router on `engine_port`; with `keys` (a keys file's YAML), auth on, and `extra`
/// config appended. The keys file lives as long as the returned handle.
async fn router(
    engine_port: u16,
    keys: Option<&str>,
    extra: &str,
) -> (BenchRouter, Option<tempfile::NamedTempFile>) {
    let mut yaml = format!(
        "LLM_engines:\n  m:\n    instances:\n      - {{id: m1, host: 127.0.0.1, port: {engine_port}, managed: false}}\n    model_config: {{model_tag: m}}\nrouter:\n  threads: 2\n  access_log: off\n{extra}"
    );
    let file = keys.map(|k| {
        let f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        std::fs::write(f.path(), k).unwrap();
        yaml.push_str(&format!("auth:\n  keys_file: \"{}\"\n", f.path().display()));
        f
    });
    let r = BenchRouter::start(&yaml);
    r.wait_ready().await;
    (r, file)
}

fn drop_router((mut r, _keys): (BenchRouter, Option<tempfile::NamedTempFile>)) {
    let _ = r.child.kill();
    let _ = r.child.wait();
}

/// `conc` clients send non-streaming requests (with `key`, if any) back to back for
/// [`PHASE`]: requests/s and latencies.
async fn closed_loop(url: &str, key: Option<&str>, conc: usize) -> (f64, Vec<Duration>) {
    let (url, key) = (url.to_string(), key.map(str::to_string));
    common::closed_loop(conc, PHASE, move |c| {
        let req = c.post(&url).body(body(false));
        match &key {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
    })
    .await
}

/// One arm's figures, one entry per round.
#[derive(Default)]
struct Samples {
    rps: Vec<f64>,
    /// Router CPU (user + system) per request at c=64, µs.
    cpu: Vec<f64>,
    p50: Vec<f64>,
}

impl Samples {
    /// One round: c=64 throughput and CPU, then c=1 latency.
    async fn measure(&mut self, r: &BenchRouter, key: Option<&str>) {
        let url = r.url("/v1/chat/completions");
        let c0 = r.cpu_secs();
        let (x, lat) = closed_loop(&url, key, 64).await;
        self.cpu.push((r.cpu_secs() - c0) * 1e6 / lat.len() as f64);
        self.rps.push(x);
        let (_, lat1) = closed_loop(&url, key, 1).await;
        self.p50.push(ms(pct(&lat1, 0.5)));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median over rounds of `f(baseline, arm)`.
fn per_round(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> f64 {
    median(a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect())
}

async fn cost_of_auth() {
    let engine = MockVllm::start("m").await;
    let key = token::new_key().unwrap();
    let keys = format!(
        "version: 1\nprincipals:\n  - id: bench\n    keys: [{{sha256: '{}'}}]\n    limits: {{max_in_flight: 100000, requests_per_minute: 1000000000, tokens_per_minute: 1000000000000, tokens_per_day: 1000000000000000}}\n",
        token::hex(&token::digest(&key))
    );
    let off = router(engine.port(), None, "").await;
    let control = router(engine.port(), None, "").await;
    let on = router(engine.port(), Some(&keys), "").await;
    let arms = [
        (&off.0, None),
        (&control.0, None),
        (&on.0, Some(key.as_str())),
    ];
    // Warm-up: connection pools, the engine's and the routers' first allocations.
    for (r, key) in arms {
        closed_loop(&r.url("/v1/chat/completions"), key, 64).await;
    }
    let mut s: [Samples; 3] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..arms.len() {
            let i = (round + k) % arms.len();
            s[i].measure(arms[i].0, arms[i].1).await;
        }
    }
    print_cost(&s);
    drop_router(off);
    drop_router(control);
    drop_router(on);
}

fn print_cost([off, control, on]: &[Samples; 3]) {
    println!("\n### Auth + limits on vs off (same engine, {ROUNDS} interleaved rounds of {PHASE:?}; medians)\n");
    println!("| metric | auth off | auth off again (control) | auth + limits + ledger | control / off | on / off |");
    println!("|---|---|---|---|---|---|");
    // One row: each arm's median (`value`), then control and on against off (`rel`).
    let row = |name: &str,
               get: fn(&Samples) -> &[f64],
               value: &dyn Fn(f64) -> String,
               rel: &dyn Fn(&[f64], &[f64]) -> String| {
        let [a, b, c] = [off, control, on].map(get);
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            value(median(a.to_vec())),
            value(median(b.to_vec())),
            value(median(c.to_vec())),
            rel(a, b),
            rel(a, c)
        );
    };
    let ratio = |a: &[f64], b: &[f64]| format!("{:.3}x", per_round(a, b, |x, y| y / x));
    let diff = |a: &[f64], b: &[f64]| format!("{:+.3} ms", per_round(a, b, |x, y| y - x));
    row(
        "c=64 requests/s",
        |s| &s.rps,
        &|v| format!("{v:.0}"),
        &ratio,
    );
    row(
        "router CPU per request (c=64)",
        |s| &s.cpu,
        &|v| format!("{v:.1} µs"),
        &ratio,
    );
    row("c=1 p50", |s| &s.p50, &|v| format!("{v:.3} ms"), &diff);
}

/// One streamed request: time to its first data event.
async fn ttft(c: &reqwest::Client, url: &str, key: &str) -> Duration {
    let t0 = Instant::now();
    let mut r = c
        .post(url)
        .bearer_auth(key)
        .body(body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut first = None;
    while let Some(chunk) = r.chunk().await.unwrap() {
        if first.is_none() && chunk.windows(5).any(|w| w == b"data:") {
            first = Some(t0.elapsed());
        }
    }
    first.expect("a data event")
}

const CRITICAL_REQUESTS: usize = 30;

/// The critical client's TTFTs, with `flood` sheddable clients running meanwhile.
async fn critical_ttfts(
    r: &BenchRouter,
    critical: &str,
    sheddable: &str,
    flood: usize,
) -> Vec<Duration> {
    let url = r.url("/v1/chat/completions");
    let stop = Arc::new(AtomicBool::new(false));
    let flooders: Vec<_> = (0..flood)
        .map(|_| {
            let (url, key, stop) = (url.clone(), sheddable.to_string(), stop.clone());
            tokio::spawn(async move {
                let c = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    // Refusals (a full queue) count as load too; the flood keeps going.
                    let sent = c.post(&url).bearer_auth(&key).body(body(true)).send().await;
                    if let Ok(r) = sent {
                        let _ = r.bytes().await;
                    }
                }
            })
        })
        .collect();
    // Let the flood fill the engine.
    tokio::time::sleep(Duration::from_millis(if flood > 0 { 1000 } else { 0 })).await;
    let c = reqwest::Client::new();
    let mut out = Vec::new();
    for _ in 0..CRITICAL_REQUESTS {
        out.push(ttft(&c, &url, critical).await);
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.abort();
    }
    out.sort();
    out
}

async fn fairness() {
    let engine = MockVllm::start("m").await;
    engine.set_max_running(16);
    engine.set_prefill_ms(50);
    engine.set_sse(6, 25);
    let [crit, shed] = [0; 2].map(|_| token::new_key().unwrap());
    let h = |k: &str| token::hex(&token::digest(k));
    let keys = format!(
        "version: 1\nprincipals:\n  - {{id: interactive, class: critical, keys: [{{sha256: '{}'}}]}}\n  - {{id: batch, class: sheddable, keys: [{{sha256: '{}'}}]}}\n",
        h(&crit),
        h(&shed)
    );
    // Sheddable requests wait up to 60 s here (the flood is not shed but held back).
    let capped_cfg = "admission:\n  models: {m: {max_in_flight: 16}}\n  classes: {sheddable: {max_queue_wait_s: 60}}\n";
    let plain = router(engine.port(), Some(&keys), "").await;
    let alone = critical_ttfts(&plain.0, &crit, &shed, 0).await;
    let flooded = critical_ttfts(&plain.0, &crit, &shed, 64).await;
    drop_router(plain);
    let capped = router(engine.port(), Some(&keys), capped_cfg).await;
    let queued = critical_ttfts(&capped.0, &crit, &shed, 64).await;
    drop_router(capped);
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        for (n, v) in [
            ("alone", &alone),
            ("flooded", &flooded),
            ("queued", &queued),
        ] {
            eprintln!(
                "{n}: {:?}",
                v.iter().map(|d| ms(*d) as u64).collect::<Vec<_>>()
            );
        }
    }
    let base = pct(&alone, 0.99);
    println!("\n### Fairness: critical client's time to first token (engine: 16 at once, 50 ms prefill, 6 x 25 ms tokens; {CRITICAL_REQUESTS} requests each)\n");
    println!("| scenario | TTFT p50 | TTFT p99 | p99 / unloaded p99 |");
    println!("|---|---|---|---|");
    for (name, v) in [
        ("critical alone (unloaded)", &alone),
        ("+ sheddable flood c=64, no admission cap", &flooded),
        (
            "+ sheddable flood c=64, max_in_flight 16 (queue by class)",
            &queued,
        ),
    ] {
        let p99 = pct(v, 0.99);
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.2}x |",
            ms(pct(v, 0.5)),
            ms(p99),
            p99.as_secs_f64() / base.as_secs_f64()
        );
    }
}

#[tokio::main]
async fn main() {
    cost_of_auth().await;
    fairness().await;
}
