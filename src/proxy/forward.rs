//! Forwarding an inference request ourselves, from `request_filter`.
//!
//! Pingora's own upstream path replays a consumed request body only from a retry buffer
//! capped at 64 KiB, and the `model` (which decides the upstream) may come after megabytes
//! of `messages`. So we read the whole body, choose the instance, and drive the upstream
//! exchange through our own [`Connector`] (with its connection pool): per attempt
//! connect → header → body → response header. A connect failure, or a failure on a reused
//! pooled connection before any response byte, moves on to the next instance with the same
//! `Bytes` (free to replay). Once the engine has answered, nothing is ever re-sent.
//!
//! The response is relayed chunk by chunk (SSE events leave as they arrive) while the
//! client's side of the connection is watched: a client that hangs up, also while the
//! engine is still in prefill, drops the upstream connection at once, which is how vLLM
//! learns to abort the request and free its slot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};
use tracing::{debug, warn};

use super::stored::{self, Home, ResponseHomes, SseId};
use super::usage::{SseUsage, Usage};
use super::usage_event::UsageEventFilter;
use crate::admission::{Admitted, Charged};
use crate::auth;
use crate::balance::{InFlightGuard, Instance, Model};
use crate::config::RouterOptions;
use crate::http::{ApiError, Dialect};
use crate::telemetry::metrics;
use prometheus::Histogram;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus
/// `expect`: we hold the whole body already.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// On every forwarded answer: the id of the instance that answered and its configured
/// model (the first part of the route receipt).
pub const ANSWERED_BY_INSTANCE: &str = "x-llm-router-instance";
pub const ANSWERED_BY_MODEL: &str = "x-llm-router-model";
/// Why the instance was chosen (`x-llm-router-debug: 1`, admins or auth off).
pub const ROUTE_RECEIPT: &str = "x-llm-router-route";

/// Largest engine 404 body read to tell an API error from a web framework's "no such
/// path".
const NOT_FOUND_BODY_LIMIT: usize = 64 * 1024;

/// How a forwarded request ended, for the access log and the tests' counters.
#[derive(Debug, Default)]
pub struct Outcome {
    pub instance: Option<String>,
    pub status: Option<u16>,
    /// Instances given up on before the one that answered, with why.
    pub failovers: Vec<String>,
    pub client_gone: bool,
    /// The engine's answer broke off mid-body: the client's connection must be dropped
    /// without a clean end, so it sees the truncation (an event stream gets an error
    /// event instead, see [`Outcome::stream_error`]).
    pub upstream_cut: bool,
    /// Why an event stream ended with an error event instead of its own end.
    pub stream_error: Option<String>,
    pub ttfb: Option<Duration>,
    /// From the engine's `usage` (JSON answer, or the final SSE chunk).
    pub usage: Usage,
    /// Data events of a streamed answer relayed so far (also when it ended early).
    pub events: u64,
    /// The request's limits (auth on), settled as soon as the engine's answer has ended,
    /// before its last bytes go to the client: a client's next request, on any
    /// connection, already sees this one's charge. Still here when no answer ended (the
    /// caller settles it then).
    pub admitted: Option<Admitted>,
    pub charged: Option<Charged>,
    /// The route receipt (`policy=...; chosen=...; candidates=...`), when asked for.
    pub route: Option<String>,
}

impl Outcome {
    /// Settles [`Self::admitted`] (if not yet) with what is known now; `answered`: an
    /// engine answered at all.
    pub fn settle(&mut self, answered: bool) {
        let Some(a) = self.admitted.take() else {
            return;
        };
        let reported = match (self.usage.prompt_tokens, self.usage.completion_tokens) {
            (None, None) => None,
            (p, c) => Some(p.unwrap_or(0) + c.unwrap_or(0)),
        };
        self.charged = Some(a.charge(reported, self.events, answered));
    }
}

/// How one request is to be forwarded, beyond its body.
#[derive(Default, Clone, Copy)]
pub struct Exchange<'a> {
    /// Session-affinity key (empty: none).
    pub affinity_key: &'a [u8],
    /// Further headers of the answer (`x-ratelimit-*`).
    pub headers: &'a [(&'static str, String)],
    /// The router asked for the stream's usage: take that event out again.
    pub strip_usage_event: bool,
    /// The API family of the path: the shape of the errors the router makes up, and of
    /// the last event of a stream the engine cut.
    pub dialect: Dialect,
    /// Only this instance (by id) may answer: it holds the stored response the request
    /// refers to. No failover.
    pub pinned: Option<&'a str>,
    /// A Responses API answer: remember which instance holds the response it creates.
    pub remember: Option<Remember<'a>>,
    /// Build the route receipt (for the access log), and send it as
    /// [`ROUTE_RECEIPT`] when `receipt_header`.
    pub receipt: bool,
    pub receipt_header: bool,
    /// Time spent in the admission queue (for the receipt).
    pub queued: Option<Duration>,
    /// A LoRA adapter: only instances serving it may answer.
    pub adapter: Option<&'a str>,
}

/// Where a created response's home is written, and for whom.
#[derive(Clone, Copy)]
pub struct Remember<'a> {
    pub homes: &'a ResponseHomes,
    pub principal: Option<&'a str>,
}

/// Stale pooled connections replaced per instance and request before the instance
/// counts as failed.
const STALE_RETRIES: usize = 4;

/// Largest JSON answer scanned for `usage`.
const USAGE_SCAN_LIMIT: usize = 1024 * 1024;

/// Why one attempt did not produce a response header.
enum AttemptError {
    /// A pooled connection the engine had closed: the engine never saw the request. Try
    /// the same instance again (the pool hands out the next connection, then a new one);
    /// the instance did nothing wrong.
    Stale(String),
    /// Nothing reached the engine in a way it could act on: try another instance.
    Retry(String),
    /// The engine may have started on it, or the client left: stop here.
    Fatal(ApiError),
    ClientGone,
}

pub struct Forwarder {
    connector: Connector,
    opts: RouterOptions,
}

impl Forwarder {
    pub fn new(opts: RouterOptions) -> Self {
        Forwarder {
            connector: Connector::new(None),
            opts,
        }
    }

    /// Sends `body` to an instance of `model` and relays the answer to `session`.
    /// Returns the error to send when no response was relayed.
    pub async fn forward(
        &self,
        session: &mut Session,
        model: &Model,
        body: Vec<Bytes>,
        ex: Exchange<'_>,
        out: &mut Outcome,
    ) -> Result<(), ApiError> {
        let len = body.iter().map(Bytes::len).sum();
        let header = upstream_header(session.req_header(), len, model.api_key.as_deref())?;
        let n = model.instances.len();
        let max_attempts = self.opts.max_attempts.unwrap_or(n).min(n);
        let mut tried = Vec::with_capacity(2);
        let started = Instant::now();
        let candidates = ex.receipt.then(|| model.candidates_receipt());
        for _ in 0..max_attempts {
            let Some(inst) = next_instance(model, &ex, &tried) else {
                break;
            };
            tried.push(inst.index);
            let guard = inst.acquire();
            match self.attempt_instance(session, &guard, &header, &body).await {
                Ok(up) => {
                    out.instance = Some(inst.id.clone());
                    out.ttfb = Some(started.elapsed());
                    if let Some(c) = &candidates {
                        out.route = Some(receipt(model, &inst.id, c, out, &ex));
                    }
                    return self.relay(session, up, guard, ex, out, started).await;
                }
                // Still stale after the retries: the instance counts as unreachable.
                Err(AttemptError::Retry(why) | AttemptError::Stale(why)) => {
                    warn!(model = %model.name, instance = %inst.id, url = %inst.address().url, reason = %why,
                        "upstream attempt failed before the engine answered; failing over");
                    inst.record_failure(&why);
                    metrics::FAILOVERS
                        .with_label_values(&[&model.name, &inst.id])
                        .inc();
                    metrics::UPSTREAM_ERRORS
                        .with_label_values(&[&model.name, &inst.id, "connect"])
                        .inc();
                    out.failovers.push(format!("{}: {why}", inst.id));
                }
                Err(AttemptError::Fatal(e)) => {
                    out.instance = Some(inst.id.clone());
                    inst.record_failure(&e.message);
                    let kind = if e.status == 504 { "timeout" } else { "read" };
                    metrics::UPSTREAM_ERRORS
                        .with_label_values(&[&model.name, &inst.id, kind])
                        .inc();
                    return Err(e);
                }
                Err(AttemptError::ClientGone) => {
                    out.instance = Some(inst.id.clone());
                    out.client_gone = true;
                    return Ok(());
                }
            }
        }
        Err(self.unreachable(model, &tried))
    }

    /// The 503 when no instance of `model` could be reached; instance ids only (the
    /// reasons name internal addresses: they are logged).
    fn unreachable(&self, model: &Model, tried: &[usize]) -> ApiError {
        let tried: Vec<&str> = tried
            .iter()
            .filter_map(|i| model.instances.iter().find(|x| x.index == *i))
            .map(|x| x.id.as_str())
            .collect();
        ApiError::unavailable(
            format!(
                "No instance of model `{}` is reachable ({} tried: {}); retry shortly",
                model.name,
                tried.len(),
                tried.join(", ")
            ),
            self.opts.retry_after_s,
        )
    }

    /// Tries one instance: a pooled connection the engine had closed is replaced by the
    /// next one (then a new one), up to [`STALE_RETRIES`] times; if such a retry fails
    /// before the engine answers, the next instance is tried.
    async fn attempt_instance(
        &self,
        session: &mut Session,
        guard: &InFlightGuard,
        header: &RequestHeader,
        body: &[Bytes],
    ) -> Result<HttpSession, AttemptError> {
        let mut result = self.attempt(session, guard, header, body).await;
        for _ in 0..STALE_RETRIES {
            let Err(AttemptError::Stale(why)) = &result else {
                break;
            };
            debug!(instance = %guard.instance().id, reason = %why,
                "pooled connection was closed by the engine; retrying on another");
            result = match self.attempt(session, guard, header, body).await {
                // A closed pooled connection may also mean the engine is dying (kill -9:
                // its workers still hold the socket, so a new connection is accepted and
                // then reset). A retry that fails before any answer fails over.
                Err(AttemptError::Fatal(e)) if e.status == 502 => {
                    Err(AttemptError::Retry(e.message))
                }
                other => other,
            };
        }
        result
    }

    /// One try on one instance, up to and including the response header.
    async fn attempt(
        &self,
        session: &mut Session,
        guard: &InFlightGuard,
        header: &RequestHeader,
        body: &[Bytes],
    ) -> Result<HttpSession, AttemptError> {
        let inst = guard.instance();
        let (mut up, reused) = self
            .connector
            .get_http_session(&guard.address().peer)
            .await
            .map_err(|e| AttemptError::Retry(format!("connect: {e}")))?;
        let mut h = header.clone();
        // `authority` is ASCII host:port from a validated config.
        let _ = h.insert_header(header::HOST, &guard.address().authority);
        let sent = async {
            up.write_request_header(Box::new(h)).await?;
            // The pieces of the body (the client's bytes around a spliced `model`): shared,
            // never copied, so a replay to the next instance is free.
            for (i, part) in body.iter().enumerate() {
                up.write_request_body(part.clone(), i + 1 == body.len())
                    .await?;
            }
            up.finish_request_body().await
        }
        .await;
        if let Err(e) = sent {
            // The engine cannot act on a request it did not fully receive.
            let why = format!("sending request: {e}");
            return Err(if reused {
                AttemptError::Stale(why)
            } else {
                AttemptError::Retry(why)
            });
        }
        up.set_read_timeout(Some(self.opts.first_byte_timeout));
        let answered = tokio::select! {
            r = up.read_response_header() => r,
            _ = session.downstream_session.read_body_or_idle(true) => {
                return Err(AttemptError::ClientGone);
            }
        };
        match answered {
            Ok(()) => Ok(up),
            // A pooled connection the engine closed meanwhile: it never saw the request.
            Err(e) if reused && !is_timeout(&e) => Err(AttemptError::Stale(format!(
                "reused connection failed: {e}"
            ))),
            Err(e) if is_timeout(&e) => {
                Err(AttemptError::Fatal(ApiError::gateway_timeout(format!(
                    "Instance `{}` did not answer within {:?} (router.first_byte_timeout_s)",
                    inst.id, self.opts.first_byte_timeout
                ))))
            }
            Err(e) => Err(AttemptError::Fatal(ApiError::bad_gateway(format!(
                "Instance `{}` failed before answering: {e}",
                inst.id
            )))),
        }
    }

    /// Streams the engine's answer to the client; `guard` is released when this returns,
    /// i.e. at the end of the body, on a client hang-up or on an upstream failure.
    async fn relay(
        &self,
        session: &mut Session,
        mut up: HttpSession,
        guard: InFlightGuard,
        ex: Exchange<'_>,
        out: &mut Outcome,
        started: Instant,
    ) -> Result<(), ApiError> {
        let inst = guard.instance().clone();
        let Some(resp) = up.response_header() else {
            return Err(ApiError::bad_gateway("engine sent no response header"));
        };
        out.status = Some(resp.status.as_u16());
        // A 5xx is the engine failing (4xx is the client's doing).
        if resp.status.is_server_error() {
            inst.record_failure(&format!("answered {}", resp.status));
            metrics::UPSTREAM_ERRORS
                .with_label_values(&[&inst.model, &inst.id, "status_5xx"])
                .inc();
        }
        let mut down = downstream_header(resp);
        if let Some(id) = session.req_header().headers.get(super::REQUEST_ID).cloned() {
            let _ = down.insert_header(super::REQUEST_ID, id);
        }
        let _ = down.insert_header(ANSWERED_BY_INSTANCE, &inst.id);
        let _ = down.insert_header(ANSWERED_BY_MODEL, &inst.model);
        if let Some(r) = out.route.as_deref().filter(|_| ex.receipt_header) {
            let _ = down.insert_header(ROUTE_RECEIPT, r);
        }
        for (k, v) in ex.headers {
            let _ = down.insert_header(*k, v);
        }
        if resp.status == http::StatusCode::NOT_FOUND {
            return self
                .relay_not_found(session, up, guard, down, ex, out)
                .await;
        }
        let remember = ex
            .remember
            .filter(|_| resp.status.is_success())
            .map(|r| (r, inst.as_ref()));
        let mut watch = BodyWatch::new(resp, &inst, started, ex.strip_usage_event, remember);
        let no_body = up.response_done();
        if session
            .write_response_header(Box::new(down), no_body)
            .await
            .is_err()
        {
            out.client_gone = true;
            return Ok(());
        }
        up.set_read_timeout(Some(self.opts.read_idle_timeout));
        let ended = relay_body(session, &mut up, &inst, &mut watch, out, no_body, ex).await;
        out.events = watch.events();
        if !ended {
            return Ok(());
        }
        // A header-only answer: nothing was written after the header.
        watch.end(out);
        if out.status.is_some_and(|s| s < 500) {
            inst.record_success();
        }
        count_tokens(&inst.model, &out.usage);
        self.connector
            .release_http_session(up, &guard.address().peer, Some(self.opts.pool_idle_timeout))
            .await;
        drop(guard);
        debug!(instance = %inst.id, "response relayed");
        Ok(())
    }

    /// An engine's 404: an API error (a model it does not serve, a stored response it
    /// does not have) goes to the client as it is; anything else (FastAPI's
    /// `{"detail": "Not Found"}` for a path the engine does not serve) becomes the
    /// router's own 404 `unknown_url`, in the path's dialect.
    async fn relay_not_found(
        &self,
        session: &mut Session,
        mut up: HttpSession,
        guard: InFlightGuard,
        down: ResponseHeader,
        ex: Exchange<'_>,
        out: &mut Outcome,
    ) -> Result<(), ApiError> {
        let inst = guard.instance().clone();
        up.set_read_timeout(Some(self.opts.read_idle_timeout));
        let mut body = BytesMut::new();
        while !up.response_done() && body.len() <= NOT_FOUND_BODY_LIMIT {
            match up.read_response_body().await {
                Ok(Some(b)) => body.extend_from_slice(&b),
                Ok(None) => break,
                Err(e) => {
                    broke_off(session, &inst, false, ex.dialect, &e, out).await;
                    return Ok(());
                }
            }
        }
        out.settle(true);
        if up.response_done() {
            self.connector
                .release_http_session(up, &guard.address().peer, Some(self.opts.pool_idle_timeout))
                .await;
        }
        drop(guard);
        if !is_api_error(&body) {
            out.status = None;
            return Err(ApiError::path_not_found(session.req_header().uri.path()));
        }
        let written = async {
            session.write_response_header(Box::new(down), false).await?;
            session.write_response_body(Some(body.freeze()), true).await
        };
        if written.await.is_err() {
            out.client_gone = true;
        }
        Ok(())
    }
}

/// The next instance to try: the pinned one (once), else the policy's pick among those
/// not tried yet.
fn next_instance(model: &Model, ex: &Exchange<'_>, tried: &[usize]) -> Option<Arc<Instance>> {
    match ex.pinned {
        Some(id) if tried.is_empty() => model.instances.iter().find(|i| i.id == id).cloned(),
        Some(_) => None,
        None => match ex.adapter {
            Some(a) => model.pick_where(ex.affinity_key, tried, |i| i.serves_adapter(a)),
            None => model.pick(ex.affinity_key, tried),
        },
    }
}

/// `policy=least_load; chosen=a; candidates=a:3.0:fresh,b:30.0:stale` and, where they
/// apply, `; failovers=N; queued_ms=T`; `candidates` as the selection saw them when the
/// request was forwarded (`pinned` instead of a policy for a stored response's home).
fn receipt(
    model: &Model,
    chosen: &str,
    candidates: &str,
    out: &Outcome,
    ex: &Exchange<'_>,
) -> String {
    let policy = if ex.pinned.is_some() {
        "pinned"
    } else {
        model.policy_label()
    };
    let mut r = format!("policy={policy}; chosen={chosen}; candidates={candidates}");
    if !out.failovers.is_empty() {
        r.push_str(&format!("; failovers={}", out.failovers.len()));
    }
    if let Some(q) = ex.queued {
        r.push_str(&format!("; queued_ms={:.1}", q.as_secs_f64() * 1000.0));
    }
    r
}

/// A JSON error of an API: OpenAI's `{"error": ...}`, vLLM's older `{"object": "error"}`
/// or Anthropic's `{"type": "error"}`.
fn is_api_error(body: &[u8]) -> bool {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    m.contains_key("error")
        || m.get("object").is_some_and(|v| v == "error")
        || m.get("type").is_some_and(|v| v == "error")
}

/// The body, chunk by chunk, while the client is watched. True when the answer ended
/// normally (the connection may be reused); false when the client left or the engine
/// broke off (both recorded in `out`).
async fn relay_body(
    session: &mut Session,
    up: &mut HttpSession,
    inst: &Instance,
    watch: &mut BodyWatch<'_>,
    out: &mut Outcome,
    no_body: bool,
    ex: Exchange<'_>,
) -> bool {
    let mut ended = no_body;
    loop {
        // Check before polling the client again: after the end of the response a
        // keep-alive client may already send its next request.
        if up.response_done() {
            break;
        }
        let chunk = tokio::select! {
            biased;
            r = up.read_response_body() => r,
            _ = session.downstream_session.read_body_or_idle(true) => {
                debug!(instance = %inst.id, "client went away mid-response; closing upstream");
                out.client_gone = true;
                up.shutdown().await;
                return false;
            }
        };
        match chunk {
            Ok(Some(data)) => {
                watch.observe(&data);
                // Ending with the last chunk saves a write for fixed-length answers.
                let last = up.response_done();
                let data = watch.pass(data, last);
                if data.is_empty() && !last {
                    continue;
                }
                if last {
                    watch.end(out);
                }
                let data = (!data.is_empty()).then_some(data);
                if session.write_response_body(data, last).await.is_err() {
                    out.client_gone = true;
                    up.shutdown().await;
                    return false;
                }
                if last {
                    ended = true;
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                broke_off(session, inst, watch.is_sse(), ex.dialect, &e, out).await;
                return false;
            }
        }
    }
    if !ended {
        let rest = watch.pass(Bytes::new(), true);
        watch.end(out);
        let rest = (!rest.is_empty()).then_some(rest);
        if session.write_response_body(rest, true).await.is_err() {
            out.client_gone = true;
        }
    }
    true
}

/// The engine's answer broke off mid-body: counted against the instance; an event stream
/// gets a last error event (which the SDKs raise on, and no `[DONE]`: never a silently
/// short answer); any other body is too late for an error answer, so the caller drops the
/// client's connection and it sees a truncated body, not a clean (wrong) end.
async fn broke_off(
    session: &mut Session,
    inst: &Instance,
    is_sse: bool,
    dialect: Dialect,
    e: &Error,
    out: &mut Outcome,
) {
    warn!(instance = %inst.id, error = %e, "engine response cut mid-body");
    inst.record_failure("response cut mid-body");
    metrics::UPSTREAM_ERRORS
        .with_label_values(&[&inst.model, &inst.id, "cut"])
        .inc();
    if is_sse {
        let msg = format!("The engine's stream broke off: {e}");
        let event = stream_cut_event(&msg, dialect);
        out.stream_error = Some(msg);
        let _ = session.write_response_body(Some(event), true).await;
    } else {
        out.upstream_cut = true;
    }
}

/// What the relay learns from an answer's body on its way: a stream's event timings
/// (time to first token, gaps) and the `usage` of a JSON answer or a stream's last chunk.
struct BodyWatch<'a> {
    started: Instant,
    /// Streams only: no label lookups for other answers.
    timers: Option<(Histogram, Histogram)>,
    last_event: Option<Instant>,
    sse_usage: Option<SseUsage>,
    /// A JSON answer, kept up to [`USAGE_SCAN_LIMIT`] for its `usage`.
    json_body: Option<BytesMut>,
    /// The usage event the router asked for, taken out of the stream.
    strip: Option<UsageEventFilter>,
    /// [`Self::end`] ran; `events`: the stream's data events then.
    ended: bool,
    events: u64,
    /// A Responses API answer: its response id is looked for, and its home remembered.
    remember: Option<Remembering<'a>>,
}

/// The response id of an answer, looked for until found (a stream: in its first events,
/// so that a client can already cancel it while it runs).
struct Remembering<'a> {
    homes: &'a ResponseHomes,
    home: Home,
    sse: Option<SseId>,
}

impl Remembering<'_> {
    fn found(&self, id: &str) {
        debug!(response = %id, instance = %self.home.instance, "stored response");
        self.homes.remember(id, self.home.clone());
    }
}

impl<'a> BodyWatch<'a> {
    fn new(
        resp: &ResponseHeader,
        inst: &Instance,
        started: Instant,
        strip: bool,
        remember: Option<(Remember<'a>, &Instance)>,
    ) -> Self {
        let content_type = |prefix: &str| {
            resp.headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(prefix))
        };
        let is_sse = content_type("text/event-stream");
        let remember = remember.map(|(r, inst)| Remembering {
            homes: r.homes,
            home: Home {
                model: inst.model.clone(),
                instance: inst.id.clone(),
                principal: r.principal.map(str::to_string),
            },
            sse: is_sse.then(SseId::default),
        });
        BodyWatch {
            started,
            timers: is_sse.then(|| {
                (
                    metrics::TTFT.with_label_values(&[&inst.model, &inst.id]),
                    metrics::TOKEN_GAP.with_label_values(&[&inst.model, &inst.id]),
                )
            }),
            last_event: None,
            sse_usage: is_sse.then(SseUsage::default),
            json_body: content_type("application/json").then(BytesMut::new),
            strip: (is_sse && strip).then(UsageEventFilter::default),
            ended: false,
            events: 0,
            remember,
        }
    }

    /// What of `data` the client gets (all of it unless a usage event is taken out);
    /// `last`: the answer ends here, so nothing may stay held back.
    fn pass(&mut self, data: Bytes, last: bool) -> Bytes {
        let Some(f) = self.strip.as_mut() else {
            return data;
        };
        let out = f.filter(data);
        if !last {
            return out;
        }
        let rest = f.finish();
        if rest.is_empty() {
            return out;
        }
        let mut all = BytesMut::from(&out[..]);
        all.extend_from_slice(&rest);
        all.freeze()
    }

    fn events(&self) -> u64 {
        self.sse_usage.as_ref().map_or(self.events, |u| u.events)
    }

    fn is_sse(&self) -> bool {
        self.timers.is_some()
    }

    fn observe(&mut self, data: &[u8]) {
        if let Some((ttft, gap)) = &self.timers {
            match self.last_event {
                None => ttft.observe(self.started.elapsed().as_secs_f64()),
                Some(t) => gap.observe(t.elapsed().as_secs_f64()),
            }
            self.last_event = Some(Instant::now());
            if let Some(u) = self.sse_usage.as_mut() {
                u.feed(data);
            }
            let id = self
                .remember
                .as_mut()
                .and_then(|r| r.sse.as_mut())
                .and_then(|s| s.feed(data));
            if let (Some(id), Some(r)) = (id, self.remember.take()) {
                r.found(&id);
            }
        } else if let Some(buf) = self.json_body.as_mut() {
            if buf.len() + data.len() <= USAGE_SCAN_LIMIT {
                buf.extend_from_slice(data);
            } else {
                self.json_body = None;
            }
        }
    }

    /// The whole answer has arrived (its last bytes not yet sent on): its `usage` into
    /// `out`, and the request settled. Once per answer.
    fn end(&mut self, out: &mut Outcome) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        if let Some(buf) = self.json_body.take() {
            out.usage.take_json(&buf);
            if let Some(r) = self.remember.take() {
                if let Some(id) = stored::response_id(&buf) {
                    r.found(&id);
                }
            }
        }
        if let Some(mut u) = self.sse_usage.take() {
            u.finish();
            out.usage = u.usage;
            self.events = u.events;
        }
        out.events = self.events();
        out.settle(true);
    }
}

/// Tokens of a whole answer, counted per model.
fn count_tokens(model: &str, usage: &Usage) {
    for (kind, n) in [
        ("prompt", usage.prompt_tokens),
        ("completion", usage.completion_tokens),
    ] {
        if let Some(n) = n {
            metrics::TOKENS
                .with_label_values(&[model, kind])
                .inc_by(n as f64);
        }
    }
}

/// `data: {"error": {...}}` ending an event stream that the engine cut (Anthropic's
/// streams: an `error` event, `{"type": "error", "error": {...}}`).
fn stream_cut_event(message: &str, dialect: Dialect) -> Bytes {
    let e = ApiError::stream_cut(message);
    let mut event = BytesMut::from(match dialect {
        Dialect::OpenAi => &b"data: "[..],
        Dialect::Anthropic => &b"event: error\ndata: "[..],
    });
    event.extend_from_slice(&e.body_in(dialect));
    event.extend_from_slice(b"\n\n");
    event.freeze()
}

fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout
    )
}

/// The client's header, minus hop-by-hop fields, with the body's new length.
/// The client's header for the engine: HTTP/1.1, origin-form, no hop-by-hop fields, no
/// client credentials or router-only claims ([`auth::is_private_header`]); the engine's
/// own key (`api_key`) when it has one.
fn upstream_header(
    client: &RequestHeader,
    body_len: usize,
    engine_key: Option<&str>,
) -> Result<RequestHeader, ApiError> {
    let mut h = client.clone();
    let private: Vec<http::HeaderName> = client
        .headers
        .keys()
        .filter(|k| auth::is_private_header(k.as_str()))
        .cloned()
        .collect();
    for name in private {
        h.remove_header(&name);
    }
    if let Some(key) = engine_key {
        h.insert_header(header::AUTHORIZATION, format!("Bearer {key}"))
            .map_err(|_| ApiError::internal("the model's api_key is not a valid header value"))?;
    }
    h.set_version(http::Version::HTTP_11);
    // An absolute-form target (`POST http://host/v1/...`) goes on as origin-form: Pingora
    // keeps the whole target for the wire and only the path in the URI.
    if !client.raw_path().starts_with(b"/") {
        h.set_uri(client.uri.clone());
    }
    for name in connection_listed(&client.headers) {
        h.remove_header(&name);
    }
    for name in HOP_BY_HOP {
        h.remove_header(name);
    }
    h.remove_header(&header::TRANSFER_ENCODING);
    h.insert_header(header::CONTENT_LENGTH, body_len.to_string())
        .map_err(|e| ApiError::bad_request("invalid_header", e.to_string()))?;
    Ok(h)
}

/// The engine's header for the client: status and fields as they are, minus hop-by-hop
/// fields; event streams are marked so that buffering proxies in front of us pass them on.
fn downstream_header(resp: &ResponseHeader) -> ResponseHeader {
    let mut h = resp.clone();
    for name in connection_listed(&resp.headers) {
        h.remove_header(&name);
    }
    for name in HOP_BY_HOP {
        h.remove_header(name);
    }
    let is_sse = resp
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if is_sse {
        let _ = h.insert_header("x-accel-buffering", "no");
    }
    h
}

/// Header names listed in `Connection:` (also hop-by-hop, RFC 9110 §7.6.1).
fn connection_listed(headers: &http::HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| n != header::CONNECTION)
        .collect()
}
