//! `multipart/form-data` request bodies (OpenAI's audio endpoints): where the `model`
//! field's value is, so that it can be rewritten while every other byte (the audio file
//! above all) reaches the engine as the client sent it.
//!
//! Only what routing needs is read (RFC 7578 / RFC 2046 §5.1): the boundary from the
//! `Content-Type`, then each part's headers up to the blank line and its
//! `Content-Disposition` name; a part's content runs to the next `CRLF--boundary`.
//! Nothing is copied, and a body that does not follow the format is a 400.

use crate::http::ApiError;

use super::body::RequestInfo;

/// The boundary of a `multipart/form-data` content type (quoted or not), if it is one.
pub fn boundary(content_type: &str) -> Option<&str> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let b = params.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then_some(v.trim())
    })?;
    let b = b
        .strip_prefix('"')
        .and_then(|b| b.strip_suffix('"'))
        .unwrap_or(b);
    // RFC 2046: 1 to 70 characters.
    (!b.is_empty() && b.len() <= 70).then_some(b)
}

/// One part: its `name` and the byte range of its content within the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: &'a str,
    pub content: (usize, usize),
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

fn bad(why: &str) -> ApiError {
    ApiError::bad_request(
        "invalid_multipart",
        format!("The multipart/form-data body is malformed: {why}"),
    )
}

/// The `name` of a part's `Content-Disposition: form-data; name="..."` header.
fn part_name(headers: &str) -> Option<&str> {
    headers.split("\r\n").find_map(|h| {
        let (k, v) = h.split_once(':')?;
        if !k.trim().eq_ignore_ascii_case("content-disposition") {
            return None;
        }
        v.split(';').find_map(|p| {
            let (k, v) = p.split_once('=')?;
            let v = v.trim();
            (k.trim() == "name").then(|| {
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
        })
    })
}

/// The next `CRLF--boundary` at or after `from` that is a delimiter line: followed by
/// `--` (the last) or by optional spaces and CRLF. The same bytes followed by anything
/// else are content (RFC 2046 §5.1.1).
fn next_delimiter(body: &[u8], delim: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let at = find(body, delim, from)?;
        let after = &body[at + delim.len()..];
        let padded = after.iter().position(|b| *b != b' ' && *b != b'\t');
        let line_end = padded.is_some_and(|i| after[i..].starts_with(b"\r\n"));
        if after.starts_with(b"--") || line_end {
            return Some(at);
        }
        from = at + 1;
    }
}

/// Every part of `body`, in order.
pub fn parts<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, ApiError> {
    let dash = format!("--{boundary}");
    let delim = format!("\r\n--{boundary}");
    // The preamble (usually empty) ends at the first delimiter.
    let first = if body.starts_with(dash.as_bytes()) {
        0
    } else {
        find(body, delim.as_bytes(), 0).ok_or_else(|| bad("no boundary"))? + 2
    };
    let mut at = first + dash.len();
    let mut out = Vec::new();
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(out);
        }
        let pad = rest
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        if !rest[pad..].starts_with(b"\r\n") {
            return Err(bad("a boundary line does not end with CRLF"));
        }
        let head_start = at + pad + 2;
        let head_end = find(body, b"\r\n\r\n", head_start)
            .ok_or_else(|| bad("a part's headers do not end"))?;
        let headers = std::str::from_utf8(&body[head_start..head_end])
            .map_err(|_| bad("a part's headers are not UTF-8"))?;
        let name =
            part_name(headers).ok_or_else(|| bad("a part has no Content-Disposition name"))?;
        let content_start = head_end + 4;
        let content_end = next_delimiter(body, delim.as_bytes(), content_start)
            .ok_or_else(|| bad("the last part does not end with the closing boundary"))?;
        out.push(Part {
            name,
            content: (content_start, content_end),
        });
        at = content_end + delim.len();
    }
}

/// The routing view of a multipart body: `model` (a text field) and where its value is;
/// `stream` when a `stream` field says `true`.
pub fn inspect(body: &[u8], boundary: &str) -> Result<RequestInfo, ApiError> {
    let parts = parts(body, boundary)?;
    let text = |p: &Part| std::str::from_utf8(&body[p.content.0..p.content.1]).ok();
    let model = parts.iter().find(|p| p.name == "model").ok_or_else(|| {
        ApiError::bad_request("missing_model", "Missing required form field: `model`")
            .with_param("model")
    })?;
    let name = text(model).ok_or_else(|| {
        ApiError::bad_request("invalid_model", "`model` must be text").with_param("model")
    })?;
    let stream = parts
        .iter()
        .find(|p| p.name == "stream")
        .and_then(text)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    Ok(RequestInfo {
        model: name.to_string(),
        model_span: model.content,
        stream,
        user: None,
        n: None,
        max_tokens: None,
        stream_options: None,
        guarded: Vec::new(),
        open: 0,
        previous_response_id: None,
        form: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn form(boundary: &str, fields: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, value) in fields {
            b.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"")
                    .as_bytes(),
            );
            if *name == "file" {
                b.extend_from_slice(b"; filename=\"a.wav\"\r\nContent-Type: audio/wav");
            }
            b.extend_from_slice(b"\r\n\r\n");
            b.extend_from_slice(value);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        b
    }

    #[test]
    fn the_boundary_of_a_content_type() {
        assert_eq!(boundary("multipart/form-data; boundary=abc"), Some("abc"));
        assert_eq!(
            boundary("Multipart/Form-Data;boundary=\"a b\""),
            Some("a b")
        );
        assert_eq!(boundary("multipart/mixed; boundary=abc"), None);
        assert_eq!(boundary("application/json"), None);
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(
            boundary(&format!("multipart/form-data; boundary={}", "x".repeat(71))),
            None
        );
    }

    #[test]
    fn model_is_found_after_a_binary_file() {
        let audio: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let body = form(
            "XyZ",
            &[("file", &audio), ("model", b"whisper"), ("stream", b"true")],
        );
        let info = inspect(&body, "XyZ").unwrap();
        assert_eq!(info.model, "whisper");
        assert_eq!(&body[info.model_span.0..info.model_span.1], b"whisper");
        assert!(info.stream && info.form);
        let e = inspect(&form("XyZ", &[("file", &audio)]), "XyZ").unwrap_err();
        assert_eq!(e.code, "missing_model");
        for broken in [
            &b"--XyZ\r\nno end"[..],
            b"nothing",
            b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XyZ--",
        ] {
            assert_eq!(inspect(broken, "XyZ").unwrap_err().status, 400);
        }
    }

    proptest! {
        /// Whatever the other fields hold (bytes that look like boundaries and headers
        /// included), the model's value is found exactly, and never anything else.
        #[test]
        fn the_model_span_is_exact(
            before in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..4),
            after in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..4),
            model in "[a-zA-Z0-9/._-]{1,40}",
        ) {
            let boundary = "----llmrouterBoundary7MA4YWxk";
            let clean = |v: &Vec<u8>| {
                let s = String::from_utf8_lossy(v).replace(boundary, "");
                s.into_bytes()
            };
            let mut fields: Vec<(String, Vec<u8>)> = before.iter().enumerate().map(|(i, v)| (format!("f{i}"), clean(v))).collect();
            fields.push(("model".into(), model.clone().into_bytes()));
            fields.extend(after.iter().enumerate().map(|(i, v)| (format!("g{i}"), clean(v))));
            let refs: Vec<(&str, &[u8])> = fields.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
            let body = form(boundary, &refs);
            let info = inspect(&body, boundary).unwrap();
            prop_assert_eq!(&info.model, &model);
            prop_assert_eq!(&body[info.model_span.0..info.model_span.1], model.as_bytes());
        }

        /// Any bytes at all: an answer or a 400, never a panic.
        #[test]
        fn any_body_is_answered(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = inspect(&body, "b");
        }
    }
}
