//! What a request head may be, checked before anything else is done with it (no body is
//! read for a refused head). A pure function of the head and the limits, so it is
//! unit-tested and fuzzed on its own.
//!
//! Pingora already refuses malformed heads (400), conflicting lengths, a
//! `Transfer-Encoding` whose last coding is not `chunked`, and heads over 1 MiB; what it
//! lets through and we refuse is below (RFC 9110/9112).

use http::{header, HeaderMap, Method, Version};

use crate::config::RequestLimits;
use crate::http::ApiError;

/// Checks the request target, the head's size, `Host`, `Transfer-Encoding` and `Expect`.
pub fn check(
    method: &Method,
    target: &[u8],
    version: Version,
    headers: &HeaderMap,
    limits: &RequestLimits,
) -> Result<(), ApiError> {
    let target = target.len();
    if target > limits.max_uri_bytes {
        return Err(ApiError::uri_too_long(target, limits.max_uri_bytes));
    }
    // Request line plus every field line (`name: value\r\n`) plus the final CRLF.
    let head = method.as_str().len()
        + target
        + 12
        + headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
        + 2;
    if head > limits.max_header_bytes {
        return Err(ApiError::header_too_large(head, limits.max_header_bytes));
    }
    if limits.require_host && version == Version::HTTP_11 && !headers.contains_key(header::HOST) {
        return Err(ApiError::bad_request(
            "missing_host",
            "HTTP/1.1 requests need a Host header (RFC 9112 section 3.2)",
        ));
    }
    let codings: Vec<String> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty())
        .collect();
    if !codings.is_empty() && codings != ["chunked"] {
        return Err(ApiError::not_implemented(format!(
            "Transfer-Encoding `{}` is not supported; only `chunked`",
            crate::http::error::clip(&codings.join(", "))
        )));
    }
    for v in headers.get_all(header::EXPECT) {
        if !v.as_bytes().eq_ignore_ascii_case(b"100-continue") {
            return Err(ApiError::expectation_failed(&String::from_utf8_lossy(
                v.as_bytes(),
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(uri: &str, version: Version, headers: &[(&str, &str)]) -> Result<(), u16> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let limits = RequestLimits {
            max_uri_bytes: 100,
            max_header_bytes: 400,
            require_host: true,
        };
        check(&Method::POST, uri.as_bytes(), version, &h, &limits).map_err(|e| e.status.as_u16())
    }

    #[test]
    fn the_bad_heads_get_their_status() {
        let host = ("host", "x");
        assert_eq!(run("/v1/models", Version::HTTP_11, &[host]), Ok(()));
        assert_eq!(
            run(
                &format!("/v1/models?{}", "a".repeat(100)),
                Version::HTTP_11,
                &[host]
            ),
            Err(414)
        );
        let big = "b".repeat(400);
        assert_eq!(
            run("/", Version::HTTP_11, &[host, ("cookie", &big)]),
            Err(431)
        );
        assert_eq!(run("/", Version::HTTP_11, &[]), Err(400));
        assert_eq!(run("/", Version::HTTP_10, &[]), Ok(()));
        assert_eq!(
            run(
                "/",
                Version::HTTP_11,
                &[host, ("transfer-encoding", "chunked")]
            ),
            Ok(())
        );
        assert_eq!(
            run(
                "/",
                Version::HTTP_11,
                &[host, ("transfer-encoding", "gzip, chunked")]
            ),
            Err(501)
        );
        assert_eq!(
            run(
                "/",
                Version::HTTP_11,
                &[
                    host,
                    ("transfer-encoding", "gzip"),
                    ("transfer-encoding", "chunked")
                ]
            ),
            Err(501)
        );
        assert_eq!(
            run("/", Version::HTTP_11, &[host, ("expect", "100-Continue")]),
            Ok(())
        );
        assert_eq!(
            run("/", Version::HTTP_11, &[host, ("expect", "something-else")]),
            Err(417)
        );
    }

    proptest::proptest! {
        /// Any head is answered (allowed, or refused with a 4xx/5xx), never a panic.
        #[test]
        fn never_panics(name in "[a-z-]{1,20}", value in "[ -~]{0,200}", path in "/[ -~]{0,300}") {
            let mut h = HeaderMap::new();
            if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(name.as_bytes()), value.parse()) {
                h.append(n, v);
            }
            let r = check(&Method::GET, path.as_bytes(), Version::HTTP_11, &h, &RequestLimits::default());
            if let Err(e) = r {
                proptest::prop_assert!(e.status.is_client_error() || e.status.is_server_error());
            }
        }
    }
}
