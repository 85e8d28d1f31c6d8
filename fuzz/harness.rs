//! What each fuzz target checks, as plain functions of the input bytes: the libFuzzer
//! targets in `fuzz_targets/` call them, and `tests/fuzz_corpus.rs` replays every file of
//! `fuzz/corpus/<target>/` through them under `cargo test`. Each one asserts properties
//! that must hold for *any* input (a panic is a finding), not just "does not crash".

#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use llm_router::config::RequestLimits;
use llm_router::proxy::{body, head, multipart, usage, usage_event};
use llm_router::scrape::{dialect, prom};

/// The request-body probe and the model splice: a body the probe accepts has its
/// `model` at the span it reports, and replacing that value keeps every other byte and
/// yields a body the probe accepts with the new model (also for large bodies, which are
/// forwarded as pieces of the client's buffer).
pub fn body_probe(data: &[u8]) {
    let Ok(info) = body::inspect(data) else {
        return;
    };
    let (start, end) = info.model_span;
    assert!(
        start < end && end <= data.len(),
        "span {start}..{end} of {}",
        data.len()
    );
    let named: String =
        serde_json::from_slice(&data[start..end]).expect("the span is a JSON string");
    assert_eq!(named, info.model);
    let body = Bytes::copy_from_slice(data);
    for new in ["engine-a", "q\"uote\\d \u{1F600}", info.model.as_str()] {
        check_splice(&body, &info, new);
    }
    // The same body past the size where it is forwarded in pieces.
    let mut large = data.to_vec();
    large.resize(data.len() + 70 * 1024, b' ');
    let large = Bytes::from(large);
    let info_large = body::inspect(&large).expect("trailing whitespace keeps it valid");
    assert_eq!(info_large, info);
    check_splice(&large, &info_large, "engine-b");
}

/// The multipart scanner (audio uploads): the first line of the input is the boundary,
/// the rest the body. A body it accepts has its `model` field's value at the span it
/// reports, parts in order without overlap, and the model rewrite keeps every other
/// byte and is found again by the scanner with the new value.
pub fn multipart(data: &[u8]) {
    let (boundary, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"b"[..], data),
    };
    let Ok(boundary) = std::str::from_utf8(boundary) else {
        return;
    };
    if boundary.is_empty() || boundary.contains(['\r', '\n']) {
        return;
    }
    let Ok(parts) = multipart::parts(rest, boundary) else {
        return;
    };
    let mut at = 0;
    for p in &parts {
        assert!(at <= p.content.0 && p.content.0 <= p.content.1 && p.content.1 <= rest.len());
        at = p.content.1;
    }
    let Ok(info) = multipart::inspect(rest, boundary) else {
        return;
    };
    let (start, end) = info.model_span;
    assert_eq!(&rest[start..end], info.model.as_bytes());
    let body = Bytes::copy_from_slice(rest);
    let new = body::rewrite_model(&body, &info, "engine-a");
    assert_eq!(&new[..start], &rest[..start]);
    assert_eq!(&new[new.len() - (rest.len() - end)..], &rest[end..]);
    let again = multipart::inspect(&new, boundary).expect("the rewritten form still parses");
    assert_eq!(again.model, "engine-a");
}

fn check_splice(body: &Bytes, info: &body::RequestInfo, new: &str) {
    let (start, end) = info.model_span;
    let parts = body::splice_model(body, info, new);
    let whole = body::rewrite_model(body, info, new);
    assert_eq!(parts.concat(), whole.to_vec());
    assert_eq!(&whole[..start], &body[..start]);
    assert!(whole.ends_with(&body[end..]));
    let again = body::inspect(&whole).expect("a spliced body is still valid");
    assert_eq!(again.model, new);
    assert_eq!(again.stream, info.stream);
    assert_eq!(again.user, info.user);
}

/// The `/metrics` parser and the load extraction: never a panic; a page that parses
/// whole also parses with any name filter, yielding exactly the samples that pass it;
/// a load read from a page is never NaN. (`crash-unread-line-garbled` in the corpus: an
/// earlier, wrong version of this check demanded that a page whose unread lines are
/// garbled could not yield a load.)
pub fn metrics_page(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut all = Vec::new();
    let whole = prom::for_each_sample(text, |s| all.push(s));
    if whole.is_ok() {
        let wanted = |name: &str| name.len() % 2 == 0;
        let mut some = Vec::new();
        prom::for_each_wanted(text, wanted, |s| some.push(s))
            .expect("a filter cannot break a valid page");
        let expected: Vec<_> = all.iter().copied().filter(|s| wanted(s.name)).collect();
        assert_eq!(
            some.iter()
                .map(|s| (s.name, s.value.to_bits()))
                .collect::<Vec<_>>(),
            expected
                .iter()
                .map(|s| (s.name, s.value.to_bits()))
                .collect::<Vec<_>>()
        );
        for s in &all {
            assert!(!s.name.is_empty());
        }
    }
    let engines = [
        None,
        Some(dialect::Engine::Vllm),
        Some(dialect::Engine::Sglang),
        Some(dialect::Engine::Llamacpp),
        Some(dialect::Engine::Tgi),
        Some(dialect::Engine::Trtllm),
    ];
    for engine in engines {
        // `extract` checks only the names of lines it does not read (by design, see
        // `prom::for_each_wanted`), so it may succeed on a page that fails whole.
        if let Ok(load) = dialect::extract(text, engine) {
            assert!(!load.running.is_nan() && !load.waiting.is_nan(), "{load:?}");
            assert!(!load.kv_usage.is_some_and(f64::is_nan), "{load:?}");
        }
    }
}

/// The event-stream usage scanner: what it finds does not depend on how the stream was
/// cut into pieces. The first byte picks the piece sizes; the rest is the stream.
pub fn sse_usage(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let scan = |pieces: &mut dyn Iterator<Item = &[u8]>| {
        let mut s = usage::SseUsage::default();
        pieces.for_each(|p| s.feed(p));
        s.finish();
        s.usage
    };
    let whole = scan(&mut std::iter::once(stream));
    let size = usize::from(seed % 32) + 1;
    for (form, pieces) in ["fixed", "1 byte", "uneven"]
        .iter()
        .zip(cuttings(stream, size))
    {
        assert_eq!(
            scan(&mut pieces.into_iter()),
            whole,
            "{form} pieces (size {size})"
        );
    }
}

/// `stream` cut three ways: pieces of `size`, of 1 byte, and uneven (1, 2, ... 7 bytes).
fn cuttings(stream: &[u8], size: usize) -> Vec<Vec<&[u8]>> {
    let mut uneven = Vec::new();
    let (mut at, mut n) = (0, 1);
    while at < stream.len() {
        let to = (at + n).min(stream.len());
        uneven.push(&stream[at..to]);
        (at, n) = (to, n % 7 + 1);
    }
    vec![
        stream.chunks(size).collect(),
        stream.chunks(1).collect(),
        uneven,
    ]
}

/// The filter that takes the router's usage event out of a stream: the client gets the
/// same bytes however the stream is cut, every byte it gets was sent in that order, and
/// a stream without a usage event passes unchanged.
pub fn usage_event(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let run = |pieces: &[&[u8]]| {
        let mut f = usage_event::UsageEventFilter::default();
        let mut out = Vec::new();
        for p in pieces {
            out.extend_from_slice(&f.filter(Bytes::copy_from_slice(p)));
        }
        out.extend_from_slice(&f.finish());
        (out, f.dropped)
    };
    let (whole, dropped) = run(&[stream]);
    for pieces in cuttings(stream, usize::from(seed % 32) + 1) {
        assert_eq!(run(&pieces), (whole.clone(), dropped), "cut differently");
    }
    if dropped == 0 {
        assert_eq!(whole, stream);
    } else {
        assert!(whole.len() < stream.len());
        let mut rest = stream.iter();
        assert!(
            whole.iter().all(|b| rest.any(|x| x == b)),
            "not a subsequence"
        );
    }
}

/// The request-head policy: any head (as Pingora would hand it over: a method, a
/// target, headers) is allowed or refused with a 4xx/5xx, never a panic; what it allows
/// fits the limits. Input: `METHOD TARGET\n` then `name: value` lines.
pub fn request_head(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut words = first.splitn(2, |&b| b == b' ');
    let method = Method::from_bytes(words.next().unwrap_or_default()).unwrap_or(Method::POST);
    let target = words.next().unwrap_or(b"/");
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    let limits = RequestLimits {
        max_uri_bytes: 256,
        max_header_bytes: 1024,
        require_host: true,
    };
    for version in [Version::HTTP_10, Version::HTTP_11] {
        match head::check(&method, target, version, &headers, &limits) {
            Ok(()) => {
                assert!(target.len() <= limits.max_uri_bytes);
                let size: usize = headers
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len())
                    .sum();
                assert!(size <= limits.max_header_bytes);
            }
            Err(e) => assert!(e.status.is_client_error() || e.status.is_server_error()),
        }
    }
}
