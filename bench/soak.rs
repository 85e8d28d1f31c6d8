//! Soak: `SOAK_S` seconds (default 600) of mixed traffic through the router against mock
//! engines, with engines going away under it, then the router's memory over the run.
//!
//! Traffic (16 closed-loop clients on loopback): JSON and streamed chat, clients that
//! hang up mid-stream or before the answer, and bad input (broken JSON, unknown model,
//! oversized body, garbage and `Host`-less heads on raw sockets, unknown paths). Engines:
//! model `m` has two in-process mock instances, one of which is stopped and started again
//! every 20 s (the router fails over); model `f` is one engine the router spawns
//! (`examples/fake_engine`), SIGKILLed every 30 s (the supervisor restarts it).
//!
//! Every answer is checked against what its kind allows; anything else is printed. RSS is
//! sampled every 5 s; the run fails if it grew 5% or more from the end of the warm-up
//! (a fifth of the run, at most 60 s) to the end, if the router died, or on an
//! unexpected answer. `make soak` (= `cargo bench --bench soak`).

#[path = "../tests/common/binaries.rs"]
mod binaries;
#[path = "common.rs"]
mod common;
#[path = "../tests/common/mock_vllm.rs"]
mod mock_vllm;

use binaries::fake_engine;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{proc_status, BenchRouter};
use futures_util::StreamExt;
use mock_vllm::MockVllm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENTS: usize = 16;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// What one client step does, and the statuses it may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Json,
    Stream,
    StreamHangUp,
    JsonHangUp,
    ManagedJson,
    ManagedStream,
    BrokenJson,
    UnknownModel,
    TooLarge,
    UnknownPath,
    RawGarbage,
    RawNoHost,
}

const MIX: [Kind; 20] = [
    Kind::Json,
    Kind::Json,
    Kind::Json,
    Kind::Json,
    Kind::Stream,
    Kind::Stream,
    Kind::Stream,
    Kind::StreamHangUp,
    Kind::StreamHangUp,
    Kind::JsonHangUp,
    Kind::ManagedJson,
    Kind::ManagedJson,
    Kind::ManagedStream,
    Kind::BrokenJson,
    Kind::UnknownModel,
    Kind::TooLarge,
    Kind::UnknownPath,
    Kind::RawGarbage,
    Kind::RawNoHost,
    Kind::Json,
];

impl Kind {
    /// Statuses this kind may get (0: the connection closed without one). The managed
    /// engine is killed on purpose: while it restarts its model has no instance (503),
    /// and a request it was serving breaks off (502, or a stream's error event).
    fn allowed(self, status: u16) -> bool {
        match self {
            Kind::Json | Kind::Stream | Kind::StreamHangUp => status == 200,
            Kind::JsonHangUp => status == 200 || status == 0,
            Kind::ManagedJson | Kind::ManagedStream => matches!(status, 200 | 502 | 503),
            Kind::BrokenJson | Kind::RawNoHost => status == 400,
            Kind::UnknownModel | Kind::UnknownPath => status == 404,
            Kind::TooLarge => status == 413,
            Kind::RawGarbage => status == 400 || status == 0,
        }
    }

    /// [`Kind::allowed`], or a 502 for model `m` that names `m2` failing before it
    /// answered: the mock instance stopped with the request already sent on a fresh
    /// connection. The engine may have started on it, so the router does not send it
    /// again (by design: nothing is re-sent once an engine may have it).
    fn allowed_with(self, status: u16, detail: &str) -> bool {
        let on_m = matches!(
            self,
            Kind::Json | Kind::Stream | Kind::StreamHangUp | Kind::JsonHangUp
        );
        self.allowed(status)
            || (on_m && status == 502 && detail.contains("Instance `m2` failed before answering"))
    }
}

#[derive(Default)]
struct Tally {
    counts: Mutex<BTreeMap<(Kind, u16), u64>>,
    unexpected: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, kind: Kind, status: u16, detail: impl FnOnce() -> String) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry((kind, status))
            .or_default() += 1;
        if kind.allowed(status) {
            return;
        }
        let detail = detail();
        if !kind.allowed_with(status, &detail) {
            let mut u = self.unexpected.lock().unwrap();
            if u.len() < 50 {
                u.push(format!("{kind:?} -> {status}: {detail}"));
            }
        }
    }
}

fn chat(model: &str, stream: bool) -> String {
    format!("{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello there\"}}],\"stream\":{stream}}}")
}

/// One step of kind `k`: its status (0 when there was none) and what it saw.
async fn step(c: &reqwest::Client, port: u16, k: Kind) -> (u16, String) {
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let chat_url = url("/v1/chat/completions");
    let post = |body: String| {
        c.post(&chat_url)
            .header("content-type", "application/json")
            .body(body)
    };
    let r = match k {
        Kind::Json => post(chat("m", false)).send().await,
        Kind::ManagedJson => post(chat("f", false)).send().await,
        Kind::Stream => return read_stream(post(chat("m", true)), false).await,
        Kind::ManagedStream => return read_stream(post(chat("f", true)), false).await,
        Kind::StreamHangUp => return read_stream(post(chat("m", true)), true).await,
        Kind::JsonHangUp => {
            return match tokio::time::timeout(
                Duration::from_millis(1),
                post(chat("m", false)).send(),
            )
            .await
            {
                Ok(Ok(r)) => (r.status().as_u16(), String::new()),
                Ok(Err(e)) => (0, e.to_string()),
                Err(_) => (0, "hung up".into()),
            }
        }
        Kind::BrokenJson => {
            post("{\"model\": \"m\", \"messages\": [".into())
                .send()
                .await
        }
        Kind::UnknownModel => post(chat("nope", false)).send().await,
        Kind::TooLarge => {
            post(format!(
                "{{\"model\":\"m\",\"pad\":\"{}\"}}",
                "x".repeat(1 << 20)
            ))
            .send()
            .await
        }
        Kind::UnknownPath => c.get(url("/v1/nothing-here")).send().await,
        Kind::RawGarbage => {
            return raw(
                port,
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
            )
            .await
        }
        Kind::RawNoHost => return raw(port, b"GET /health HTTP/1.1\r\n\r\n").await,
    };
    match r {
        Ok(r) => {
            let st = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            (st, body.chars().take(200).collect())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// A streamed answer read to its end (or, with `hang_up`, to its first event): the
/// status, or 502 when the stream ended with the router's error event or no `[DONE]`.
async fn read_stream(req: reqwest::RequestBuilder, hang_up: bool) -> (u16, String) {
    let r = match req.send().await {
        Ok(r) => r,
        Err(e) => return (0, e.to_string()),
    };
    let status = r.status().as_u16();
    if status != 200 {
        return (status, r.text().await.unwrap_or_default());
    }
    let mut body = r.bytes_stream();
    let mut seen = Vec::new();
    while let Some(c) = body.next().await {
        match c {
            Ok(c) => seen.extend_from_slice(&c),
            Err(e) => return (502, format!("stream error: {e}")),
        }
        if hang_up && seen.windows(2).any(|w| w == b"\n\n") {
            return (200, String::new());
        }
    }
    let text = String::from_utf8_lossy(&seen);
    if text.contains("upstream_stream_cut") || !text.contains("[DONE]") {
        return (
            502,
            text.chars()
                .rev()
                .take(200)
                .collect::<String>()
                .chars()
                .rev()
                .collect(),
        );
    }
    (200, String::new())
}

/// Sends `bytes` on a fresh connection; the status line's code, or 0 on a bare close.
async fn raw(port: u16, bytes: &[u8]) -> (u16, String) {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, "connect failed".into());
    };
    let _ = s.write_all(bytes).await;
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    let code = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.lines().next().unwrap_or_default().to_string())
}

/// The mix, or only the kinds named in `SOAK_KINDS` (comma-separated, e.g.
/// `Json,StreamHangUp`): to find which traffic a memory growth comes from.
fn mix() -> Vec<Kind> {
    let only = std::env::var("SOAK_KINDS").unwrap_or_default();
    let wanted: Vec<&str> = only
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    MIX.iter()
        .copied()
        .filter(|k| wanted.is_empty() || wanted.contains(&format!("{k:?}").as_str()))
        .collect()
}

/// One client: steps through the mix until `stop`.
async fn client(id: usize, port: u16, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mix = mix();
    assert!(!mix.is_empty(), "SOAK_KINDS names no kind");
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(4)
        .build()
        .unwrap();
    let mut i = id * 7;
    while !stop.load(Ordering::Relaxed) {
        let k = mix[i % mix.len()];
        i += 1;
        let (status, detail) = step(&c, port, k).await;
        tally.record(k, status, || detail);
    }
}

/// Takes the engines away in turn until `stop`: the mock instance `m2` (stopped, then
/// started again on its port after 3 s) and the managed engine (SIGKILL, by the pid in
/// the router's state file).
async fn disrupt(
    m2_port: u16,
    run_dir: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    kills: Arc<AtomicU64>,
) {
    let mut m2 = Some(MockVllm::start_on(m2_port, "m2").await);
    if let Some(m) = &m2 {
        m.set_sse(10, 5);
    }
    let t0 = Instant::now();
    let (mut next_mock, mut next_kill) = (Duration::from_secs(20), Duration::from_secs(30));
    // SOAK_DISRUPT=0: no engine is taken away.
    let disrupting = std::env::var("SOAK_DISRUPT").map_or(true, |v| v != "0");
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !disrupting {
            continue;
        }
        if t0.elapsed() >= next_mock {
            next_mock += Duration::from_secs(20);
            if let Some(m) = m2.take() {
                m.stop();
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            let m = MockVllm::start_on(m2_port, "m2").await;
            m.set_sse(10, 5);
            m2 = Some(m);
            kills.fetch_add(1, Ordering::Relaxed);
        }
        if t0.elapsed() >= next_kill {
            next_kill += Duration::from_secs(30);
            if let Some(pid) = engine_pid(&run_dir, "f1") {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
                kills.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn engine_pid(run_dir: &std::path::Path, id: &str) -> Option<u64> {
    let text = std::fs::read_to_string(run_dir.join("engines.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v[id]["pid"].as_u64()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The router on two mock instances of `m` and one spawned engine of `f`, ready.
async fn start(m1: &MockVllm, m2_port: u16, log: &std::path::Path) -> BenchRouter {
    let f_port = free_port();
    let log = std::fs::File::create(log).unwrap();
    let router = BenchRouter::start_with(&format!(
        "router:\n  threads: 2\n  max_body_bytes: 1048576\n  access_log: off\n\
         LLM_engines:\n  m:\n    instances:\n      - {{id: m1, host: 127.0.0.1, port: {}, managed: false}}\n      - {{id: m2, host: 127.0.0.1, port: {m2_port}, managed: false}}\n    model_config: {{model_tag: m}}\n\
         \x20 f:\n    command: [\"{}\"]\n    env: {{FAKE_SSE: \"10,5\"}}\n    instances:\n      - {{id: f1, host: 127.0.0.1, port: {f_port}}}\n    model_config: {{model_tag: f}}\n\
         supervisor:\n  log_dir: logs\n  run_dir: run\n  restart_backoff_max_s: 1\n",
        m1.port(),
        fake_engine().display()
    ), log.into());
    router.wait_ready().await;
    let c = reqwest::Client::new();
    let t0 = Instant::now();
    loop {
        let r = c
            .post(router.url("/v1/chat/completions"))
            .body(chat("f", false))
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the managed engine did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    router
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs: u64 = std::env::var("SOAK_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let run = Duration::from_secs(secs);
    let warm_up = (run / 5).min(Duration::from_secs(60));
    let m1 = MockVllm::start("m1").await;
    m1.set_sse(10, 5);
    let m2_port = free_port();
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Tally::default());
    let disrupter_stop = Arc::new(AtomicBool::new(false));
    let log = std::env::temp_dir().join(format!("llm-router-soak-{}.log", std::process::id()));
    let router = start(&m1, m2_port, &log).await;
    let disrupter = tokio::spawn(disrupt(
        m2_port,
        router.dir().join("run"),
        disrupter_stop.clone(),
        kills.clone(),
    ));
    let pid = router.child.id();
    let idle = proc_status(pid, "VmRSS:");
    eprintln!(
        "[soak] {secs} s, {CLIENTS} clients, warm-up {} s; router RSS idle {:.1} MiB",
        warm_up.as_secs(),
        mib(idle)
    );
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(i, router.port, stop.clone(), tally.clone())))
        .collect();
    let t0 = Instant::now();
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    while t0.elapsed() < run {
        tokio::time::sleep(SAMPLE_EVERY.min(run.saturating_sub(t0.elapsed()))).await;
        let rss = proc_status(pid, "VmRSS:");
        samples.push((t0.elapsed(), rss));
        if samples.len() % 12 == 0 {
            eprintln!(
                "[soak] {:>4} s: RSS {:.1} MiB",
                t0.elapsed().as_secs(),
                mib(rss)
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    disrupter_stop.store(true, Ordering::Relaxed);
    let _ = disrupter.await;
    let ok = report(
        &router,
        &tally,
        &samples,
        warm_up,
        idle,
        kills.load(Ordering::Relaxed),
    );
    router_log(&log);
    drop(router);
    if !ok {
        std::process::exit(1);
    }
}

/// The router's log lines by level, and every ERROR line.
fn router_log(path: &std::path::Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut levels: BTreeMap<&str, usize> = BTreeMap::new();
    for l in text.lines() {
        let level = l.split_whitespace().nth(1).unwrap_or("?");
        *levels.entry(level).or_default() += 1;
        if level == "ERROR" {
            println!("router: {l}");
        }
    }
    println!("router log {}: {levels:?}", path.display());
}

/// Prints the tables; whether the run passed.
fn report(
    router: &BenchRouter,
    tally: &Tally,
    samples: &[(Duration, u64)],
    warm_up: Duration,
    idle: u64,
    kills: u64,
) -> bool {
    let alive = proc_status(router.child.id(), "VmRSS:") > 0;
    let counts = tally.counts.lock().unwrap();
    let total: u64 = counts.values().sum();
    println!("\n| kind | answers (status: count) |\n|---|---|");
    let mut by_kind: BTreeMap<Kind, Vec<String>> = BTreeMap::new();
    for ((k, st), n) in counts.iter() {
        by_kind.entry(*k).or_default().push(format!("{st}: {n}"));
    }
    for (k, v) in &by_kind {
        println!("| {k:?} | {} |", v.join(", "));
    }
    let warm = samples
        .iter()
        .find(|(t, _)| *t >= warm_up)
        .map_or(idle, |s| s.1);
    let end = samples.last().map_or(idle, |s| s.1);
    let max = samples.iter().map(|s| s.1).max().unwrap_or(idle);
    let growth = (end as f64 - warm as f64) / warm as f64 * 100.0;
    println!("\n| router RSS (MiB) | idle | after warm-up | end | max | growth after warm-up |\n|---|---|---|---|---|---|");
    println!(
        "| | {:.1} | {:.1} | {:.1} | {:.1} | {growth:+.2}% |",
        mib(idle),
        mib(warm),
        mib(end),
        mib(max)
    );
    println!("\n{total} answers, {kills} engine disruptions, router alive: {alive}");
    let unexpected = tally.unexpected.lock().unwrap();
    for u in unexpected.iter() {
        println!("unexpected: {u}");
    }
    let ok = alive && unexpected.is_empty() && growth < 5.0;
    println!("soak: {}", if ok { "PASS" } else { "FAIL" });
    ok
}
