//! The request body: find `model` without disturbing anything else.
//!
//! The engine must receive the client's bytes unchanged apart from the value of the
//! top-level `model`, so we never re-serialize: serde_json validates the whole document and
//! borrows `model`'s raw text from the buffer, whose offset gives the span to splice.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::ApiError;

/// What the router needs from a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub model: String,
    /// Byte range of `model`'s JSON string (quotes included) inside the body.
    pub model_span: (usize, usize),
    pub stream: bool,
    /// OpenAI's end-user id, a possible session-affinity key.
    pub user: Option<String>,
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
    #[serde(default)]
    user: Option<serde_json::Value>,
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
    let probe: Probe<'_> = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("Request body is not valid JSON: {e}"),
        )
    })?;
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
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    let end = start + raw.get().len();
    let stream = match probe.stream {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => b,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_stream",
                format!("`stream` must be a boolean, got {other}"),
            )
            .with_param("stream"))
        }
    };
    Ok(RequestInfo {
        model,
        model_span: (start, end),
        stream,
        user: probe.user.and_then(|u| u.as_str().map(str::to_string)),
    })
}

/// `body` with the `model` value replaced by `new_model`; no copy when it is unchanged.
pub fn rewrite_model(body: &Bytes, info: &RequestInfo, new_model: &str) -> Bytes {
    if info.model == new_model {
        return body.clone();
    }
    // serde_json's string escaping cannot fail for a &str.
    let quoted = serde_json::to_string(new_model).unwrap_or_default();
    let (start, end) = info.model_span;
    let mut out = BytesMut::with_capacity(body.len() - (end - start) + quoted.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&body[end..]);
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
            (b"{\"model\": null}", "missing_model"),
            (b"{\"model\": \"m\", \"stream\": \"yes\"}", "invalid_stream"),
        ];
        for (body, code) in cases {
            let e = inspect(body).unwrap_err();
            assert_eq!(e.status, 400, "{body:?}");
            assert_eq!(e.code, code, "{body:?}: {}", e.message);
        }
    }

    #[test]
    fn duplicate_model_key_is_rejected() {
        assert!(inspect(br#"{"model":"a","model":"b"}"#).is_err());
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
