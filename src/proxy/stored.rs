//! Which instance holds which stored response of the Responses API.
//!
//! vLLM keeps a response created by `POST /v1/responses` in the memory of the engine that
//! made it: `GET`/`DELETE /v1/responses/{id}`, `POST .../{id}/cancel` and a later request
//! naming it as `previous_response_id` only work on that instance. The router learns the
//! id from the answer (the JSON body's `id`, or the `response.created` event of a stream)
//! and remembers its home, bounded in count and age (`router.stored_responses`): the
//! oldest ids are forgotten first, an expired one is not found.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Deserialize;

use crate::config::StoredResponses;

/// Where a stored response lives, and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    /// The configured model name.
    pub model: String,
    /// The instance id.
    pub instance: String,
    /// The principal that created it (auth on): nobody else finds it.
    pub principal: Option<String>,
}

struct Entry {
    home: Home,
    at: Instant,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<Arc<str>, Entry>,
    /// Ids in the order they were remembered, with when (an id remembered again has a
    /// newer entry in `by_id`; its older place here is skipped).
    order: VecDeque<(Arc<str>, Instant)>,
}

pub struct ResponseHomes {
    inner: Mutex<Inner>,
    opts: StoredResponses,
}

impl ResponseHomes {
    pub fn new(opts: StoredResponses) -> Self {
        ResponseHomes {
            inner: Mutex::default(),
            opts,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers that response `id` lives at `home`.
    pub fn remember(&self, id: &str, home: Home) {
        let now = Instant::now();
        let mut g = self.lock();
        let id: Arc<str> = Arc::from(id);
        g.by_id.insert(id.clone(), Entry { home, at: now });
        g.order.push_back((id, now));
        self.expire(&mut g, now);
    }

    /// Forgets the oldest ids beyond `max_ids` and those older than the TTL.
    fn expire(&self, g: &mut Inner, now: Instant) {
        while let Some((id, at)) = g.order.front().cloned() {
            let over = g.by_id.len() > self.opts.max_ids;
            let old = now.duration_since(at) > self.opts.ttl;
            let stale = g.by_id.get(&id).is_none_or(|e| e.at != at);
            if !(over || old || stale) {
                break;
            }
            g.order.pop_front();
            if !stale {
                g.by_id.remove(&id);
            }
        }
    }

    /// The home of `id`, when it is known, not expired, and `principal`'s.
    pub fn find(&self, id: &str, principal: Option<&str>) -> Option<Home> {
        let now = Instant::now();
        let mut g = self.lock();
        self.expire(&mut g, now);
        let e = g.by_id.get(id)?;
        (e.home.principal.as_deref() == principal).then(|| e.home.clone())
    }

    /// The response was deleted.
    pub fn forget(&self, id: &str) {
        self.lock().by_id.remove(id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_id.len()
    }
}

#[derive(Deserialize)]
struct IdProbe {
    #[serde(default)]
    id: Option<String>,
    /// A stream's `response.created` event: `{"type", "response": {"id", ...}}`.
    #[serde(default)]
    response: Option<Box<IdProbe>>,
}

/// The id of a response object (`{"id": ...}`) or of the response a stream event carries
/// (`{"response": {"id": ...}}`).
pub fn response_id(json: &[u8]) -> Option<String> {
    let p: IdProbe = serde_json::from_slice(json).ok()?;
    p.response.and_then(|r| r.id).or(p.id)
}

/// Looks for the response id in an event stream as it passes: the first `data:` line
/// that names one (the `response.created` event comes first). Keeps at most
/// [`super::usage::MAX_LINE`] of an unfinished line.
#[derive(Debug, Default)]
pub struct SseId {
    partial: Vec<u8>,
    done: bool,
}

impl SseId {
    /// The id, the first time a line of `chunk` (with what came before) names one.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<String> {
        if self.done {
            return None;
        }
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&rest[..nl]);
            rest = &rest[nl + 1..];
            let line = std::mem::take(&mut self.partial);
            let data = line.strip_prefix(b"data:").map(|d| d.trim_ascii());
            if let Some(id) = data.and_then(response_id) {
                self.done = true;
                return Some(id);
            }
        }
        if self.partial.len() + rest.len() > super::usage::MAX_LINE {
            // No id in the head of the stream: stop looking.
            self.done = true;
            self.partial = Vec::new();
        } else {
            self.partial.extend_from_slice(rest);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn home(i: &str, p: Option<&str>) -> Home {
        Home {
            model: "m".into(),
            instance: i.into(),
            principal: p.map(str::to_string),
        }
    }

    #[test]
    fn homes_are_bounded_by_count_and_private_to_their_principal() {
        let h = ResponseHomes::new(StoredResponses {
            max_ids: 2,
            ttl: Duration::from_secs(60),
        });
        h.remember("a", home("i1", Some("team")));
        h.remember("b", home("i2", None));
        assert_eq!(h.find("a", Some("team")), Some(home("i1", Some("team"))));
        assert_eq!(h.find("a", Some("other")), None);
        assert_eq!(h.find("a", None), None);
        // Remembering `a` again moves it to the back: `b` is now the oldest.
        h.remember("a", home("i3", Some("team")));
        h.remember("c", home("i1", None));
        assert_eq!(h.len(), 2);
        assert_eq!(h.find("b", None), None);
        assert_eq!(h.find("a", Some("team")).unwrap().instance, "i3");
        h.forget("a");
        assert_eq!(h.find("a", Some("team")), None);
    }

    #[test]
    fn homes_expire() {
        let h = ResponseHomes::new(StoredResponses {
            max_ids: 10,
            ttl: Duration::from_millis(1),
        });
        h.remember("a", home("i1", None));
        let t = Instant::now();
        while t.elapsed() <= Duration::from_millis(2) {
            std::hint::spin_loop();
        }
        assert_eq!(h.find("a", None), None);
        assert_eq!(h.len(), 0);
    }

    #[test]
    fn the_id_of_an_object_or_a_streamed_event() {
        assert_eq!(
            response_id(br#"{"id":"resp_1","object":"response"}"#).as_deref(),
            Some("resp_1")
        );
        assert_eq!(
            response_id(br#"{"type":"response.created","response":{"id":"resp_2"}}"#).as_deref(),
            Some("resp_2")
        );
        assert_eq!(response_id(b"[DONE]"), None);
        let stream = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_3\"}}\n\n";
        // However the stream is cut, the id is found once.
        for cut in 0..stream.len() {
            let mut s = SseId::default();
            let found: Vec<String> = [&stream[..cut], &stream[cut..], b"data: {\"id\":\"x\"}\n"]
                .iter()
                .filter_map(|c| s.feed(c))
                .collect();
            assert_eq!(found, vec!["resp_3".to_string()], "cut at {cut}");
        }
    }
}
