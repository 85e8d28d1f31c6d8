//! Reading a request body: bounded in size (413), in time (408) and in the memory all
//! bodies together may hold (503, see [`super::budget`]). The router holds each inference
//! body whole before it chooses an instance (see [`super::forward`]).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::protocols::http::ServerSession;
use pingora::ErrorType;

use super::budget::{BodyBudget, Reserved, WAIT};
use super::error::ApiError;
use crate::config::ClientTimeouts;

/// How long, and how much, [`discard_rest`] reads of a body nobody will use.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// After an error answer to a request whose body was not (fully) read (over the size
/// limit, no room in the budget, a refused head): reads and drops what the client still
/// sends, for at most [`LINGER_TIME`] and [`LINGER_BYTES`], before the connection is
/// closed. Closing a socket with unread data sends a reset, and the client's kernel then
/// throws away the answer it had not read yet: the client would see "connection reset"
/// instead of the 413 (seen in the soak: 7% of oversized uploads). nginx's lingering
/// close does the same. Skipped for a client that waits for `100 Continue` (it sends
/// nothing) and for an announced body larger than the bound (it would be reset anyway,
/// after work for nothing).
pub async fn discard_rest(session: &mut ServerSession) {
    let h = &session.req_header().headers;
    let too_long = announced_length(h).is_some_and(|n| n > LINGER_BYTES as u64);
    if too_long || h.contains_key(header::EXPECT) || session.is_body_done() {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    let mut dropped = 0;
    while dropped < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, session.read_request_body()).await {
            Ok(Ok(Some(chunk))) => dropped += chunk.len(),
            _ => return,
        }
    }
}

/// The body length the client announced (`Content-Length`), if any.
fn announced_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads the whole request body, refusing more than `limit` bytes (before reading, when
/// the client announces its length), within `body_read_s` in all and `body_idle_s` per
/// read (408), and only with room in `bodies` (503), reserved into `room`.
pub async fn read(
    session: &mut ServerSession,
    limit: u64,
    t: &ClientTimeouts,
    bodies: &BodyBudget,
    room: &mut Reserved,
) -> Result<Bytes, ApiError> {
    let announced = announced_length(&session.req_header().headers);
    if announced.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let deadline = Instant::now() + WAIT;
    // A small body (the everyday request) is not queued behind large uploads.
    bodies
        .charge(room, 0, announced.unwrap_or(0), deadline)
        .await?;
    let body = BodyRead {
        limit,
        idle: t.body_idle,
        announced,
        bodies,
        deadline,
    };
    match tokio::time::timeout(t.body_read, body.read(session, room)).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::request_timeout(
            "body",
            t.body_read,
            "body_read_s",
        )),
    }
}

/// One body being read: its limits and where its room comes from.
struct BodyRead<'a> {
    limit: u64,
    idle: std::time::Duration,
    /// The `Content-Length`; without one, each chunk reserves its room as it arrives.
    announced: Option<u64>,
    bodies: &'a BodyBudget,
    deadline: Instant,
}

impl BodyRead<'_> {
    async fn read(
        &self,
        session: &mut ServerSession,
        room: &mut Reserved,
    ) -> Result<Bytes, ApiError> {
        let limit = self.limit;
        // curl and others wait (1 s) for a 100 Continue before sending a body; the engine
        // never sees `Expect` (we hold the whole body before choosing it).
        let expects_continue = session
            .req_header()
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            session
                .write_continue_response()
                .await
                .map_err(|e| ApiError::bad_request("invalid_body", format!("client gone: {e}")))?;
        }
        let mut chunks = Chunks::new(self.announced);
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if (chunks.len + chunk.len()) as u64 > limit {
                        return Err(ApiError::too_large(limit));
                    }
                    if self.announced.is_none() {
                        let (before, after) = (chunks.len, chunks.len + chunk.len());
                        self.bodies
                            .charge(room, before as u64, after as u64, self.deadline)
                            .await?;
                    }
                    chunks.push(chunk);
                }
                Ok(None) => return Ok(chunks.join()),
                Err(e) if e.etype() == &ErrorType::ReadTimedout => {
                    return Err(ApiError::request_timeout(
                        "body",
                        self.idle,
                        "body_idle_s (no byte for that long)",
                    ))
                }
                Err(e) => {
                    return Err(ApiError::bad_request(
                        "invalid_body",
                        format!("Could not read the request body: {e}"),
                    ))
                }
            }
        }
    }
}

/// A body as it arrives: the reads as they came (small reads of a trickling client are
/// gathered into 64 KiB pieces rather than one allocation each), joined once at the end
/// into a buffer of exactly their size. Nothing is allocated on the client's word.
/// Once a client with a `Content-Length` has actually sent [`Chunks::PROVEN`] bytes (and
/// the budget holds room for all of it), the rest goes straight into one buffer of the
/// announced size, so a large body is never held twice.
#[derive(Default)]
struct Chunks {
    done: Vec<Bytes>,
    pending: BytesMut,
    len: usize,
    announced: Option<u64>,
    whole: Option<BytesMut>,
}

impl Chunks {
    const SMALL: usize = 16 * 1024;
    const PIECE: usize = 64 * 1024;
    const PROVEN: usize = 1024 * 1024;

    fn new(announced: Option<u64>) -> Self {
        Chunks {
            announced,
            ..Default::default()
        }
    }

    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        if let Some(w) = &mut self.whole {
            w.extend_from_slice(&chunk);
            return;
        }
        if let Some(n) = self.announced.filter(|_| self.len >= Self::PROVEN) {
            self.flush();
            let mut w = BytesMut::with_capacity((n as usize).max(self.len));
            for c in self.done.drain(..) {
                w.extend_from_slice(&c);
            }
            w.extend_from_slice(&chunk);
            self.whole = Some(w);
            return;
        }
        if chunk.len() >= Self::SMALL {
            self.flush();
            self.done.push(chunk);
            return;
        }
        if self.pending.capacity() == 0 {
            self.pending.reserve(Self::PIECE);
        }
        self.pending.extend_from_slice(&chunk);
        if self.pending.len() >= Self::PIECE {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            self.done.push(std::mem::take(&mut self.pending).freeze());
        }
    }

    fn join(mut self) -> Bytes {
        if let Some(w) = self.whole {
            return w.freeze();
        }
        self.flush();
        if self.done.len() == 1 {
            return self.done.pop().unwrap_or_default();
        }
        let mut buf = BytesMut::with_capacity(self.len);
        for c in self.done {
            buf.extend_from_slice(&c);
        }
        buf.freeze()
    }
}

/// Bodies larger than this are parsed on the blocking pool: validating 30 MiB of JSON
/// takes tens of milliseconds (seconds in a debug build), and on a worker thread it would
/// stall every other connection of that thread (seen as engine connects timing out
/// during an upload flood).
pub const PARSE_INLINE_MAX: usize = 256 * 1024;

/// `parse(body)`, off the async worker threads when the body is large (the proxy's model
/// probe, the embedding service's JSON).
pub async fn parse_off_thread<T, F>(body: &Bytes, parse: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&[u8]) -> Result<T, ApiError> + Send + 'static,
{
    if body.len() <= PARSE_INLINE_MAX {
        return parse(body);
    }
    // The clone shares the bytes; offsets into them stay valid.
    let whole = body.clone();
    match tokio::task::spawn_blocking(move || parse(&whole)).await {
        Ok(r) => r,
        Err(e) => Err(ApiError::internal(format!("body parsing failed: {e}"))),
    }
}
