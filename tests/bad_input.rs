//! Bad input on raw sockets: every row of the hardening table that is not about keys or
//! limits gets its answer (the status, and the OpenAI error shape where the router
//! answers), and the router keeps serving. Slow and idle clients are cut off by the
//! `router.timeouts` deadlines; excess connections by `router.connections`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{llm, MockVllm, RouterProc};
use futures_util::StreamExt;
use serde_json::Value;

/// What came back on a raw connection.
#[derive(Debug)]
struct Answer {
    status: Option<u16>,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends `bytes`, then reads until the server closes or `limit` passes; the first
/// response only.
fn raw(port: u16, bytes: &[u8], limit: Duration) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if complete(&got) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok());
    Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Whether `got` holds a whole response with a Content-Length body.
fn complete(got: &[u8]) -> bool {
    let text = String::from_utf8_lossy(got);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    len.is_some_and(|n| body.len() >= n)
}

fn post(path: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

/// A one-shot engine that records each request line it gets and answers 200 JSON.
async fn capture_engine() -> (u16, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = lines.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let line = text.lines().next().unwrap_or("").to_string();
                if line.starts_with("POST") {
                    seen.lock().unwrap().push(line);
                }
                let body = r#"{"object":"chat.completion","choices":[]}"#;
                let _ = s
                    .write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes())
                    .await;
            });
        }
    });
    (port, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_head_and_body_gets_its_answer_and_the_router_keeps_serving() {
    let m = MockVllm::start("m").await;
    let (cap_port, lines) = capture_engine().await;
    let r = RouterProc::start(&format!(
        "LLM_engines:\n{}{}router:\n  max_body_bytes: 1000\n",
        llm("m", "org/M", &[("m1", m.port())]),
        llm("cap", "org/Cap", &[("c1", cap_port)])
    ))
    .await;
    let port = r.port;
    let many_headers: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cookie = format!("Cookie: {}\r\n", "c".repeat(60 * 1024));
    let long_target = format!("/v1/chat/completions?q={}", "a".repeat(16 * 1024));
    let dup = |k: &str| format!(r#"{{"model":"m","{k}":1,"{k}":2}}"#);
    // (what, request bytes, status, OpenAI error code when the router answers)
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        ("garbage request line", b"GET / HTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400, None),
        ("space before colon", b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n".to_vec(), 400, None),
        ("more than 256 fields", format!("GET /health HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(), 400, None),
        ("60 KiB cookie", format!("GET /health HTTP/1.1\r\nHost: x\r\n{cookie}\r\n").into_bytes(), 431, Some("header_too_large")),
        ("16 KiB target", format!("POST {long_target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").into_bytes(), 414, Some("uri_too_long")),
        ("HTTP/1.1 without Host", b"GET /health HTTP/1.1\r\n\r\n".to_vec(), 400, Some("missing_host")),
        ("two Host headers", b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400, None),
        ("CONNECT", b"CONNECT api:443 HTTP/1.1\r\nHost: api:443\r\n\r\n".to_vec(), 405, None),
        ("TRACE", b"TRACE /v1/models HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 405, Some("method_not_allowed")),
        ("PUT on chat", String::from_utf8(post("/v1/chat/completions", "", CHAT)).unwrap().replacen("POST", "PUT", 1).into_bytes(), 405, Some("method_not_allowed")),
        ("dot-dot detour", b"GET /v1/chat/completions/../../metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 404, Some("unknown_url")),
        ("escaped dots", b"GET /v1/%2e%2e/metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 404, Some("unknown_url")),
        ("double slash", b"GET //v1/models HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 404, Some("unknown_url")),
        ("bare LF line ends", b"GET /health HTTP/1.1\nHost: x\n\n".to_vec(), 200, None),
        ("Upgrade: websocket", post("/v1/chat/completions", "Upgrade: websocket\r\nConnection: Upgrade\r\n", CHAT), 200, None),
        ("Expect 100-continue over the limit", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n".to_vec(), 413, Some("request_too_large")),
        ("Expect: something-else", post("/v1/chat/completions", "Expect: something-else\r\n", CHAT), 417, Some("expectation_failed")),
        ("Content-Length: abc", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(), 400, None),
        ("Content-Length 5 and 7", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n".to_vec(), 400, None),
        ("TE chunked, gzip", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".to_vec(), 400, None),
        ("TE gzip, chunked", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(), 501, Some("not_implemented")),
        ("HTTP/1.0 with TE", b"POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400, None),
        ("bad chunk size", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec(), 400, Some("invalid_body")),
        ("Content-Length over the limit", post("/v1/chat/completions", "", &"x".repeat(1001)), 413, Some("request_too_large")),
        ("chunked body growing past the limit", format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n{0}\r\n3e8\r\n{0}\r\n0\r\n\r\n", "y".repeat(1000)).into_bytes(), 413, Some("request_too_large")),
        ("empty body", post("/v1/chat/completions", "", ""), 400, Some("invalid_json")),
        ("not JSON", post("/v1/chat/completions", "", "hello"), 400, Some("invalid_json")),
        ("top-level array", post("/v1/chat/completions", "", "[1]"), 400, Some("invalid_json")),
        ("trailing garbage", post("/v1/chat/completions", "", r#"{"model":"m"} x"#), 400, Some("invalid_json")),
        ("two model keys", post("/v1/chat/completions", "", r#"{"model":"m","model":"cap"}"#), 400, Some("invalid_json")),
        ("two max_tokens", post("/v1/chat/completions", "", &dup("max_tokens")), 400, Some("invalid_json")),
        ("two n", post("/v1/chat/completions", "", &dup("n")), 400, Some("invalid_json")),
        ("two stream_options", post("/v1/chat/completions", "", &dup("stream_options")), 400, Some("invalid_json")),
        ("model 123", post("/v1/chat/completions", "", r#"{"model":123}"#), 400, Some("invalid_model")),
        ("model null", post("/v1/chat/completions", "", r#"{"model":null}"#), 400, Some("invalid_model")),
        ("NaN", post("/v1/chat/completions", "", r#"{"model":"m","temperature":NaN}"#), 400, Some("invalid_json")),
        ("1e999", post("/v1/chat/completions", "", r#"{"model":"m","temperature":1e999}"#), 400, Some("invalid_json")),
        ("stream yes", post("/v1/chat/completions", "", r#"{"model":"m","stream":"yes"}"#), 400, Some("invalid_stream")),
        ("unknown model, long name", post("/v1/chat/completions", "", &format!(r#"{{"model":"{}"}}"#, "z".repeat(900))), 404, Some("model_not_found")),
    ];
    for (what, bytes, status, code) in &cases {
        let a = raw(port, bytes, Duration::from_secs(5));
        assert_eq!(a.status, Some(*status), "{what}: {a:?}");
        if let Some(code) = code {
            let v = a.json();
            let e = &v["error"];
            assert_eq!(e["code"], *code, "{what}: {a:?}");
            for k in ["message", "type", "param", "code"] {
                assert!(e.get(k).is_some(), "{what}: no `{k}` in {v}");
            }
            assert!(
                a.body.len() < 4096,
                "{what}: {} bytes of error",
                a.body.len()
            );
        }
        if *status == 413 && what.starts_with("Expect") {
            assert!(!a.head.contains("100 Continue"), "{what}: 100 sent: {a:?}");
        }
        // Still serving.
        let h = raw(
            port,
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(5),
        );
        assert_eq!(h.status, Some(200), "after {what}");
    }
    // An absolute-form target reaches the engine as origin-form.
    let abs = format!(
        "POST http://127.0.0.1:{port}/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\r\n{}",
        CHAT.replace("\"m\"", "\"cap\"").len(),
        CHAT.replace("\"m\"", "\"cap\"")
    );
    let a = raw(port, abs.as_bytes(), Duration::from_secs(5));
    assert_eq!(a.status, Some(200), "{a:?}");
    assert_eq!(
        lines.lock().unwrap().last().map(String::as_str),
        Some("POST /v1/chat/completions HTTP/1.1")
    );
    println!("{} bad-input cases answered as specified", cases.len() + 1);
}

/// A router with short client deadlines in front of one mock engine.
async fn strict_router(m: &MockVllm, extra: &str) -> RouterProc {
    RouterProc::start(&format!(
        "LLM_engines:\n{}router:\n  timeouts: {{header_read_s: 2, keepalive_idle_s: 1, body_read_s: 2, body_idle_s: 1, write_idle_s: 1}}\n{extra}",
        llm("m", "org/M", &[("m1", m.port())])
    ))
    .await
}

/// Waits until the router counts `n` open client connections, the probe's own included
/// (`llm_router_connections`, read on a fresh connection each time).
fn wait_for_connections(port: u16, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut page = String::new();
        let _ = s.read_to_string(&mut page);
        let open = page
            .lines()
            .find_map(|l| l.strip_prefix("llm_router_connections "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if open == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "router still counts {open:?} connections, not {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads until the server closes the connection; how long that took (None: still open
/// after `limit`).
fn closed_after(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(t0.elapsed()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(t0.elapsed()),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_while_normal_requests_are_served() {
    let m = MockVllm::start("m").await;
    let r = strict_router(&m, "  connections: {max_per_ip: 1000}\n").await;
    let port = r.port;
    // 200 connections that send a request line, then one header byte a second.
    let t0 = Instant::now();
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nX-Slow: ")
                .unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let mut open = slow.len();
    let mut served = 0;
    let mut last_close = Duration::ZERO;
    let mut gone = vec![false; slow.len()];
    while open > 0 && t0.elapsed() < Duration::from_secs(10) {
        for (i, s) in slow.iter_mut().enumerate() {
            if gone[i] {
                continue;
            }
            let mut b = [0u8; 1];
            let closed = match s.read(&mut b) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            } || s.write_all(b"a").is_err();
            if closed {
                gone[i] = true;
                open -= 1;
                last_close = t0.elapsed();
            }
        }
        // Normal clients are served meanwhile.
        let a = raw(
            port,
            &post("/v1/chat/completions", "", CHAT),
            Duration::from_secs(5),
        );
        assert_eq!(a.status, Some(200), "{a:?}");
        served += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("slowloris: 200 connections closed, the last {last_close:.2?} after they opened (header_read_s 2); {served} normal requests served meanwhile");
    assert_eq!(open, 0, "{open} slow connections still open after 10 s");
    assert!(
        last_close <= Duration::from_secs(4),
        "closed after {last_close:?}"
    );
    assert!(served >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_silent_connections_are_closed_on_time() {
    let m = MockVllm::start("m").await;
    let r = strict_router(&m, "").await;
    let port = r.port;
    // Connects and sends nothing: closed after header_read_s.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let t = closed_after(&mut s, Duration::from_secs(6)).expect("silent connection kept open");
    assert!(
        t >= Duration::from_millis(1500) && t <= Duration::from_secs(4),
        "{t:?}"
    );

    // Idle after an answer, even when the client asks to be kept for days.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nKeep-Alive: timeout=999999\r\n\r\n")
        .unwrap();
    let t = closed_after(&mut s, Duration::from_secs(8)).expect("idle keep-alive kept open");
    println!("idle keep-alive closed {t:.2?} after the answer (keepalive_idle_s 1)");
    assert!(t <= Duration::from_secs(4), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_short_bodies_get_408() {
    let m = MockVllm::start("m").await;
    let r = strict_router(&m, "").await;
    let port = r.port;
    // 1 byte every 300 ms of a 1 MiB body: every read is quick, the whole is not.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n{",
    )
    .unwrap();
    let t0 = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < Duration::from_secs(8) && !complete(&got) {
        let _ = s.write_all(b" ");
        if let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("request_timeout") && text.contains("body_read_s"),
        "{text}"
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took <= Duration::from_secs(4),
        "{took:?}"
    );

    // Shorter than announced, then silence: 408 after body_idle_s.
    let t0 = Instant::now();
    let a = raw(
        port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\"",
        Duration::from_secs(6),
    );
    assert_eq!(a.status, Some(408), "{a:?}");
    assert!(
        a.head.to_ascii_lowercase().contains("connection: close"),
        "{a:?}"
    );
    assert!(t0.elapsed() <= Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_reader_is_cut_and_its_engine_request_aborted() {
    let m = MockVllm::start("m").await;
    // A long, fast stream: far more than the socket buffers hold.
    m.set_sse(200_000, 0);
    let r = strict_router(&m, "").await;
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut s = TcpStream::connect(("127.0.0.1", r.port)).unwrap();
    s.write_all(&post("/v1/chat/completions", "", body))
        .unwrap();
    // Read the head and a little, then stop reading.
    let mut buf = [0u8; 1024];
    s.read_exact(&mut buf).unwrap();
    let t0 = Instant::now();
    common::wait_for(
        "the engine stream aborted",
        Duration::from_secs(10),
        async || m.aborted() == 1,
    )
    .await;
    println!(
        "stalled reader cut after {:.2?} (write_idle_s 1)",
        t0.elapsed()
    );
    assert_eq!(m.completed(), 0);
    // The router serves others all the while.
    let c = reqwest::Client::new();
    let resp = c
        .post(r.url("/v1/chat/completions"))
        .body(CHAT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp.bytes_stream().next().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_caps_are_closed_at_once() {
    let m = MockVllm::start("m").await;
    let r = strict_router(&m, "  connections: {max_per_ip: 3, max_total: 100}\n").await;
    let port = r.port;
    // The readiness probe's keep-alive connection must be gone before the count starts.
    wait_for_connections(port, 1);
    // Three connections, each answered once (so surely counted), kept open.
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 512];
            assert!(s.read(&mut buf).unwrap() > 0);
            s
        })
        .collect();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let t =
        closed_after(&mut s, Duration::from_secs(1)).expect("4th connection from one IP kept open");
    assert!(t < Duration::from_millis(500), "{t:?}");
    drop(held);
    // Freed: served again.
    common::wait_for(
        "a connection accepted again",
        Duration::from_secs(5),
        async || {
            raw(
                port,
                b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
                Duration::from_secs(2),
            )
            .status
                == Some(200)
        },
    )
    .await;
    let page = raw(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(
        page.body
            .contains("llm_router_connections_refused_total{reason=\"max_per_ip\"}"),
        "{}",
        page.body
    );
}

/// A client that sends its whole oversized body before reading gets the 413, not a
/// connection reset: the router reads and drops the rest of the body before closing
/// (closing with unread data would reset the connection, and the client's kernel would
/// throw away the answer). Seen in the soak as "connection reset" for 7% of such uploads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upload_gets_its_413_not_a_reset() {
    let m = MockVllm::start("m").await;
    let r = strict_router(&m, "  max_body_bytes: 1048576\n").await;
    let port = r.port;
    // Larger than the socket buffers can absorb, within what the router drops (16 MiB).
    let body = vec![b'x'; 12 << 20];
    for round in 0..5 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut w = s.try_clone().unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let b = body.clone();
        let writer = std::thread::spawn(move || {
            w.write_all(head.as_bytes())
                .and_then(|_| w.write_all(&b))
                .is_ok()
        });
        let sent = writer.join().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let outcome = loop {
            match s.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
            if complete(&got) {
                break Ok(());
            }
        };
        let text = String::from_utf8_lossy(&got);
        assert!(
            sent && text.starts_with("HTTP/1.1 413") && text.contains("request_too_large"),
            "round {round}: body sent whole: {sent}, read: {outcome:?}, got {text:?}"
        );
    }
    let a = raw(
        port,
        &post("/v1/chat/completions", "", "{\"model\":\"m\"}"),
        Duration::from_secs(5),
    );
    assert_eq!(a.status, Some(200), "{a:?}");
}
