//! The request body: find `model` without disturbing anything else.
//!
//! The engine must receive the client's bytes unchanged apart from the value of the
//! top-level `model`, so we never re-serialize: serde_json validates the whole document and
//! borrows `model`'s raw text from the buffer, whose offset gives the span to splice.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::GuardedField;
use crate::http::ApiError;

/// What the router needs from a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub model: String,
    /// Byte range of `model`'s JSON string (quotes included) inside the body.
    pub model_span: (usize, usize),
    pub stream: bool,
    /// OpenAI's end-user id, a possible session-affinity key.
    pub user: Option<String>,
    /// `n` when it is a non-negative integer.
    pub n: Option<u64>,
    /// `max_completion_tokens`, else `max_tokens`, when a non-negative integer.
    pub max_tokens: Option<u64>,
    /// `stream_options`: the span of its value and whether it sets `include_usage: true`.
    pub stream_options: Option<StreamOptions>,
    /// Byte ranges of the values of the fields clients may not set, when present.
    pub guarded: Vec<(GuardedField, (usize, usize))>,
    /// Offset of the object's opening `{` (fields are inserted after it).
    pub open: usize,
    /// The Responses API's `previous_response_id`, when a string: the request belongs on
    /// the instance that holds that response.
    pub previous_response_id: Option<String>,
    /// A `multipart/form-data` body ([`super::multipart`]): `model` is a form field,
    /// rewritten as raw text; nothing else is changed.
    pub form: bool,
}

/// The request's `stream_options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    pub span: (usize, usize),
    /// The value as the client sent it (a small object).
    pub value: serde_json::Value,
}

impl StreamOptions {
    pub fn include_usage(&self) -> bool {
        self.value.get("include_usage") == Some(&serde_json::Value::Bool(true))
    }
}

/// One change to a body: the bytes of `span` replaced by `text` (an empty span inserts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub span: (usize, usize),
    pub text: String,
}

/// The fields the router reads or will act on. Each is named here, even when its value
/// is not used yet: serde refuses a document that repeats a known field, and a body with
/// two `max_tokens` (or `model`) must not pass the router as one thing and reach the
/// engine, whose JSON parser keeps the last value, as another.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Probe<'a> {
    /// `null` is kept (as the raw `null`): an invalid model, not a missing one.
    #[serde(borrow, default, deserialize_with = "present")]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
    #[serde(default)]
    user: Option<serde_json::Value>,
    #[serde(borrow, default)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default)]
    max_completion_tokens: Option<&'a RawValue>,
    /// The Responses API's name for it.
    #[serde(borrow, default)]
    max_output_tokens: Option<&'a RawValue>,
    #[serde(default)]
    previous_response_id: Option<serde_json::Value>,
    #[serde(borrow, default)]
    n: Option<&'a RawValue>,
    #[serde(borrow, default)]
    priority: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cache_salt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    kv_transfer_params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    vllm_xargs: Option<&'a RawValue>,
}

/// Byte range of `raw` (borrowed from `body`) inside `body`.
fn span_in(body: &[u8], raw: &RawValue) -> (usize, usize) {
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    (start, start + raw.get().len())
}

/// Reads a whole JSON value only to check it: unlike `IgnoredAny`, it parses every number,
/// so an out-of-range one (`1e999`) is an error here, not an infinity at the engine.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> serde::de::Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Checked, E> {
        if v.is_finite() {
            Ok(Checked)
        } else {
            Err(E::custom("number out of range"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Checked, A::Error> {
        while a.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Checked, A::Error> {
        while a.next_entry::<serde::de::IgnoredAny, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// A field that is there, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Validates `body` as one JSON object and extracts `model` (and `stream`).
pub fn inspect(body: &[u8]) -> Result<RequestInfo, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "invalid_json",
            "Request body is empty; expected a JSON object with a `model` field",
        ));
    }
    // serde would also accept an array for a struct (fields by position).
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(
            "invalid_json",
            "Request body must be a JSON object with a `model` field",
        ));
    }
    let invalid = |e: serde_json::Error| {
        ApiError::bad_request(
            "invalid_json",
            format!("Request body is not valid JSON: {e}"),
        )
    };
    let probe: Probe<'_> = serde_json::from_slice(body).map_err(invalid)?;
    serde_json::from_slice::<Checked>(body).map_err(invalid)?;
    let raw = probe.model.ok_or_else(|| {
        ApiError::bad_request("missing_model", "Missing required parameter: `model`")
            .with_param("model")
    })?;
    let model: String = serde_json::from_str(raw.get()).map_err(|_| {
        ApiError::bad_request(
            "invalid_model",
            format!("`model` must be a string, got {}", raw.get()),
        )
        .with_param("model")
    })?;
    // `raw` borrows from `body`, so the pointer difference is its offset.
    let (start, end) = span_in(body, raw);
    let guarded = [
        (GuardedField::Priority, probe.priority),
        (GuardedField::CacheSalt, probe.cache_salt),
        (GuardedField::KvTransferParams, probe.kv_transfer_params),
        (GuardedField::VllmXargs, probe.vllm_xargs),
    ]
    .into_iter()
    .filter_map(|(f, raw)| raw.map(|r| (f, span_in(body, r))))
    .collect();
    let n = probe.n.and_then(|r| r.get().parse::<u64>().ok());
    let max_tokens = probe
        .max_completion_tokens
        .or(probe.max_tokens)
        .or(probe.max_output_tokens)
        .and_then(|r| r.get().parse::<u64>().ok());
    let stream_options = probe.stream_options.map(|r| StreamOptions {
        span: span_in(body, r),
        value: serde_json::from_str(r.get()).unwrap_or_default(),
    });
    let open = body.iter().position(|b| *b == b'{').unwrap_or(0);
    Ok(RequestInfo {
        model,
        model_span: (start, end),
        stream: stream_flag(probe.stream)?,
        user: probe.user.and_then(|u| u.as_str().map(str::to_string)),
        n,
        max_tokens,
        stream_options,
        guarded,
        open,
        previous_response_id: probe
            .previous_response_id
            .and_then(|v| v.as_str().map(str::to_string)),
        form: false,
    })
}

/// `stream`: absent or `null` is false; anything but a boolean is a 400.
fn stream_flag(v: Option<serde_json::Value>) -> Result<bool, ApiError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(false),
        Some(serde_json::Value::Bool(b)) => Ok(b),
        Some(other) => Err(ApiError::bad_request(
            "invalid_stream",
            format!("`stream` must be a boolean, got {other}"),
        )
        .with_param("stream")),
    }
}

/// [`inspect`], off the async worker threads for a large body.
pub async fn inspect_shared(body: &Bytes) -> Result<RequestInfo, ApiError> {
    crate::http::request_body::parse_off_thread(body, inspect).await
}

/// `body` with the `model` value replaced by `new_model`. A large body comes back as
/// pieces that share the client's buffer (the bytes before the value, the new value, the
/// bytes after it), so a 30 MiB body is never held twice; a small one as one buffer.
pub fn splice_model(body: &Bytes, info: &RequestInfo, new_model: &str) -> Vec<Bytes> {
    splice(body, model_edit(info, new_model).into_iter().collect())
}

/// The edit that renames the model, if the name changes.
pub fn model_edit(info: &RequestInfo, new_model: &str) -> Option<Edit> {
    let text = if info.form {
        new_model.to_string()
    } else {
        serde_json::to_string(new_model).unwrap_or_default()
    };
    (info.model != new_model).then_some(Edit {
        span: info.model_span,
        text,
    })
}

/// `body` with `edits` applied (spans of the original body, not overlapping). A large
/// body comes back as pieces of the client's buffer between the edits; a small one as
/// one buffer (one write to the engine).
pub fn splice(body: &Bytes, mut edits: Vec<Edit>) -> Vec<Bytes> {
    if edits.is_empty() {
        return vec![body.clone()];
    }
    edits.sort_by_key(|e| e.span);
    let mut parts = Vec::with_capacity(2 * edits.len() + 1);
    let mut at = 0;
    for e in &edits {
        let (start, end) = e.span;
        parts.push(body.slice(at..start.max(at)));
        parts.push(Bytes::from(e.text.clone()));
        at = end.max(at);
    }
    parts.push(body.slice(at..));
    parts.retain(|p| !p.is_empty());
    if body.len() > SPLICE_ABOVE {
        return parts;
    }
    let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
    for p in parts {
        out.extend_from_slice(&p);
    }
    vec![out.freeze()]
}

/// Bodies larger than this are forwarded as pieces of the client's buffer, not copied.
const SPLICE_ABOVE: usize = 64 * 1024;

/// [`splice_model`]'s pieces as one buffer (tests, and callers that need it whole).
pub fn rewrite_model(body: &Bytes, info: &RequestInfo, new_model: &str) -> Bytes {
    let parts = splice_model(body, info, new_model);
    if parts.len() == 1 {
        return parts[0].clone();
    }
    let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
    for p in parts {
        out.extend_from_slice(&p);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_model_after_messages_and_rewrites_only_it() {
        let body = Bytes::from_static(
            br#"{"messages":[{"role":"user","content":"model \"x\""}], "model" : "a\u0062", "stream":true}"#,
        );
        let info = inspect(&body).unwrap();
        assert_eq!(info.model, "ab");
        assert!(info.stream);
        let out = rewrite_model(&body, &info, "org/Tag\"q");
        assert_eq!(
            &out[..],
            &br#"{"messages":[{"role":"user","content":"model \"x\""}], "model" : "org/Tag\"q", "stream":true}"#[..]
        );
    }

    #[test]
    fn errors_are_400_with_codes() {
        let cases: [(&[u8], &str); 7] = [
            (b"", "invalid_json"),
            (b"{", "invalid_json"),
            (b"[1]", "invalid_json"),
            (b"{}", "missing_model"),
            (b"{\"model\": 5}", "invalid_model"),
            (b"{\"model\": null}", "invalid_model"),
            (b"{\"model\": \"m\", \"stream\": \"yes\"}", "invalid_stream"),
        ];
        for (body, code) in cases {
            let e = inspect(body).unwrap_err();
            assert_eq!(e.status, 400, "{body:?}");
            assert_eq!(e.code, code, "{body:?}: {}", e.message);
        }
    }

    #[test]
    fn duplicate_keys_the_router_acts_on_are_rejected() {
        assert!(inspect(br#"{"model":"a","model":"b"}"#).is_err());
        for key in [
            "max_tokens",
            "max_completion_tokens",
            "n",
            "stream_options",
            "priority",
            "cache_salt",
            "stream",
        ] {
            let body = format!(r#"{{"model":"m","{key}":1,"{key}":2}}"#);
            let e = inspect(body.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400, "{key}");
            assert!(
                e.message.contains("duplicate field"),
                "{key}: {}",
                e.message
            );
        }
        // Other repeated keys are the engine's business; one of each is fine.
        assert!(
            inspect(br#"{"model":"m","max_tokens":5,"n":1,"temperature":1,"temperature":2}"#)
                .is_ok()
        );
    }

    proptest! {
        /// Untrusted bytes never panic the parser.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = inspect(&data);
        }

        /// For any valid request, rewriting changes the model and nothing else.
        #[test]
        fn rewrite_preserves_everything_else(model in "\\PC{0,20}", tag in "\\PC{0,20}",
                                             content in "\\PC{0,50}", before in any::<bool>()) {
            let c = serde_json::to_string(&content).unwrap();
            let doc = |m: &str| if before {
                format!("{{\"model\":{m},\"messages\":[{{\"content\":{c}}}]}}")
            } else {
                format!("{{ \"messages\" : [{{\"content\":{c}}}] ,\n\"model\":{m} }}")
            };
            let body = Bytes::from(doc(&serde_json::to_string(&model).unwrap()));
            let info = inspect(&body).unwrap();
            prop_assert_eq!(&info.model, &model);
            let out = rewrite_model(&body, &info, &tag);
            let expected = doc(&serde_json::to_string(&tag).unwrap());
            prop_assert_eq!(String::from_utf8(out.to_vec()).unwrap(), expected);
        }
    }
}
