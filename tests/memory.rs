//! Memory bounds under an upload flood: 40 clients send 30 MiB bodies slowly at once. The
//! router holds at most `router.max_buffered_body_bytes` (512 MiB) of bodies; the rest
//! wait at most 1 s and get 503 `server_overloaded`. Its RSS stays under 700 MiB and
//! ordinary requests are served all the while.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{dead_port, fake_engine, llm, RouterProc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENTS: usize = 40;
const BODY: usize = 30 * 1024 * 1024;

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// One slow upload: the head, then the body in 1 MiB pieces 40 ms apart. Returns the
/// status of the answer (read as soon as it comes, also before the body is sent).
async fn upload(port: u16) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let prefix = br#"{"model":"m","messages":[{"role":"user","content":""#;
    let suffix = br#""}]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {BODY}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.ok()?;
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let filler = BODY - prefix.len() - suffix.len();
        let _ = wr.write_all(prefix).await;
        let piece = vec![b'a'; 1024 * 1024];
        let mut left = filler;
        while left > 0 {
            let n = left.min(piece.len());
            if wr.write_all(&piece[..n]).await.is_err() {
                return wr;
            }
            left -= n;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        let _ = wr.write_all(suffix).await;
        // Kept open until the answer: dropping a write half sends FIN, a client gone.
        std::future::pending::<()>().await;
        wr
    });
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(60), rd.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    writer.abort();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.split_whitespace().nth(1)?.parse().ok()
}

/// `examples/fake_engine` (the mock vLLM's endpoints) as a child process, killed on drop.
struct Engine {
    child: std::process::Child,
    port: u16,
}

impl Engine {
    fn start() -> Engine {
        let port = dead_port();
        let child = std::process::Command::new(fake_engine())
            .args(["m", "--host", "127.0.0.1", "--port", &port.to_string()])
            .spawn()
            .unwrap();
        Engine { child, port }
    }

    async fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{}/health", self.port);
        let t0 = Instant::now();
        while !reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "fake engine did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_flood_stays_within_the_body_budget_and_normal_requests_are_served() {
    // The engine in its own process: this one is busy pushing 40 uploads.
    let engine = Engine::start();
    let r = RouterProc::start(&format!(
        "LLM_engines:\n{}router:\n  connections: {{max_per_ip: 1000}}\n",
        llm("m", "org/M", &[("m1", engine.port)])
    ))
    .await;
    engine.wait_ready().await;
    let pid = r.child.id();
    let idle_rss = rss_bytes(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let normal = Arc::new(Mutex::new(Vec::new()));
    let small = {
        let (stop, normal, url) = (stop.clone(), normal.clone(), r.url("/v1/chat/completions"));
        tokio::spawn(async move {
            let c = reqwest::Client::new();
            let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
            while !stop.load(Ordering::Relaxed) {
                let s = c
                    .post(&url)
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16());
                normal.lock().unwrap().push(s.unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let t0 = Instant::now();
    let uploads: Vec<_> = (0..CLIENTS).map(|_| tokio::spawn(upload(r.port))).collect();
    let mut statuses = Vec::new();
    for u in uploads {
        statuses.push(u.await.unwrap());
    }
    let took = t0.elapsed();

    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    small.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let ok = statuses.iter().filter(|s| **s == Some(200)).count();
    let shed = statuses.iter().filter(|s| **s == Some(503)).count();
    let normal = normal.lock().unwrap().clone();
    println!(
        "upload flood: {CLIENTS} x 30 MiB in {took:.1?}: {ok} served, {shed} got 503; router RSS idle {} MiB, peak {} MiB; {} normal requests, all 200: {}",
        idle_rss >> 20,
        peak >> 20,
        normal.len(),
        normal.iter().all(|s| *s == 200)
    );
    assert_eq!(
        ok + shed,
        CLIENTS,
        "{statuses:?}\n{}",
        r.log_text()
            .lines()
            .filter(|l| !l.contains("as many request bodies"))
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(ok >= 10, "{statuses:?}");
    assert!(shed >= 1, "the budget never filled: {statuses:?}");
    assert!(peak < 700 << 20, "peak RSS {} MiB", peak >> 20);
    assert!(
        normal.len() >= 5 && normal.iter().all(|s| *s == 200),
        "{normal:?}"
    );
}
