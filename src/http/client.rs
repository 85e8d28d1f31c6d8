//! The router's own small HTTP client, shared by the background services (the poller's
//! `/health` and `/metrics`, the supervisor's look at an engine it may adopt), and the
//! one address resolver of instance and listener hosts.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use bytes::BytesMut;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

/// Why a [`get`] failed.
pub enum GetError {
    /// Connect, send or read failed; `reused` says whether on a pooled connection.
    Io {
        what: String,
        reused: bool,
    },
    TooLarge,
}

/// A small `GET path` to `peer` (with `Host: authority`) over `connector`'s pool, reading
/// at most `max` bytes of body; the connection goes back to the pool when the answer was
/// read whole, kept below the engine's keep-alive (see `router.pool_idle_timeout_s`).
pub async fn get(
    connector: &Connector,
    peer: &HttpPeer,
    authority: &str,
    path: &str,
    max: usize,
) -> Result<(u16, BytesMut), GetError> {
    let req = Request {
        method: "GET",
        path,
        ..Default::default()
    };
    request(connector, peer, authority, req, max).await
}

/// What [`request`] sends.
#[derive(Debug, Default, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// `Authorization: Bearer` (an engine started with `--api-key`).
    pub bearer: Option<&'a str>,
    /// A JSON body.
    pub json: Option<&'a [u8]>,
}

/// A small request to `peer`, as [`get`] (the engines' admin calls: loading a LoRA
/// adapter, listing models).
pub async fn request(
    connector: &Connector,
    peer: &HttpPeer,
    authority: &str,
    r: Request<'_>,
    max: usize,
) -> Result<(u16, BytesMut), GetError> {
    let (mut s, reused) = connector
        .get_http_session(peer)
        .await
        .map_err(|e| GetError::Io {
            what: format!("connect: {e}"),
            reused: false,
        })?;
    let fail = |what: &str, e: Box<pingora::Error>| GetError::Io {
        what: format!("{what}: {e}"),
        reused,
    };
    let mut req =
        RequestHeader::build(r.method, r.path.as_bytes(), None).map_err(|e| fail("request", e))?;
    let mut headers = vec![("host", authority.to_string())];
    if let Some(k) = r.bearer {
        headers.push(("authorization", format!("Bearer {k}")));
    }
    if let Some(b) = r.json {
        headers.push(("content-type", "application/json".into()));
        headers.push(("content-length", b.len().to_string()));
    }
    for (k, v) in headers {
        req.insert_header(k, v).map_err(|e| fail("request", e))?;
    }
    s.write_request_header(Box::new(req))
        .await
        .map_err(|e| fail("send", e))?;
    if let Some(b) = r.json {
        s.write_request_body(bytes::Bytes::copy_from_slice(b), true)
            .await
            .map_err(|e| fail("send", e))?;
    }
    s.finish_request_body().await.map_err(|e| fail("send", e))?;
    s.read_response_header()
        .await
        .map_err(|e| fail("read", e))?;
    let status = s.response_header().map(|h| h.status.as_u16()).unwrap_or(0);
    let mut body = BytesMut::new();
    while let Some(chunk) = s.read_response_body().await.map_err(|e| fail("read", e))? {
        if body.len() + chunk.len() > max {
            return Err(GetError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    connector
        .release_http_session(s, peer, peer.options.idle_timeout)
        .await;
    Ok((status, body))
}

/// Resolves once, preferring IPv4: `localhost` often resolves to `::1` first while
/// engines listen on `0.0.0.0` or `127.0.0.1`. `what` names the host in the error
/// (e.g. "instance host", "embedding_server.host").
pub fn resolve(what: &str, host: &str, port: u16) -> Result<SocketAddr, String> {
    resolve_with(what, host, port, None)
}

/// Every address of `host` (A and AAAA), in the resolver's order: from `hosts_file`
/// (`balancer.hosts_file`, read now) when it names the host, else the system resolver
/// (`/etc/hosts` included). Blocking.
pub fn resolve_all(
    host: &str,
    port: u16,
    hosts_file: Option<&Path>,
) -> Result<Vec<SocketAddr>, String> {
    if let Some(f) = hosts_file {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let found = hosts_lookup(&text, host, port);
        if !found.is_empty() {
            return Ok(found);
        }
    }
    Ok((host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .collect())
}

/// The addresses a hosts-format text gives `host` (`ADDRESS NAME [ALIAS...]`, `#`
/// comments), each once, in file order.
fn hosts_lookup(text: &str, host: &str, port: u16) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(Ok(ip)) = words.next().map(str::parse::<std::net::IpAddr>) else {
            continue;
        };
        let a = SocketAddr::new(ip, port);
        if words.any(|w| w.eq_ignore_ascii_case(host)) && !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// As [`resolve`], with a hosts file consulted first.
pub fn resolve_with(
    what: &str,
    host: &str,
    port: u16,
    hosts_file: Option<&Path>,
) -> Result<SocketAddr, String> {
    let addrs = resolve_all(host, port, hosts_file)
        .map_err(|e| format!("cannot resolve {what} `{host}`: {e}"))?;
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{what} `{host}` resolves to no address"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn localhost_resolves_to_ipv4_first() {
        let a = super::resolve("host", "localhost", 8000).unwrap();
        assert!(a.is_ipv4(), "{a}");
        assert_eq!(a.port(), 8000);
        let e = super::resolve("instance host", "no-such-host.invalid", 1).unwrap_err();
        assert!(e.contains("instance host `no-such-host.invalid`"), "{e}");
    }

    #[test]
    fn a_hosts_file_is_asked_first() {
        let text = "# engines\n127.0.0.2 engines.test other\n::1 engines.test\n127.0.0.2 engines.test\nbad line\n";
        let got = super::hosts_lookup(text, "ENGINES.test", 9);
        assert_eq!(
            got,
            ["127.0.0.2:9".parse().unwrap(), "[::1]:9".parse().unwrap()]
        );
        assert!(super::hosts_lookup(text, "engines", 9).is_empty());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hosts");
        std::fs::write(&f, text).unwrap();
        let a = super::resolve_with("x", "other", 80, Some(&f)).unwrap();
        assert_eq!(a, "127.0.0.2:80".parse().unwrap());
        // Not in the file: the system resolver.
        assert!(super::resolve_with("x", "localhost", 80, Some(&f))
            .unwrap()
            .ip()
            .is_loopback());
    }
}
