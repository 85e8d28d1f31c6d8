//! OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right
//! HTTP status. Every answer the router makes up itself goes through [`ApiError`], so SDKs
//! raise their usual exception types (`BadRequestError`, `NotFoundError`, ...).

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

/// Longest piece of client input echoed in an error message or a log line.
pub const ECHO_MAX: usize = 256;

/// `s` cut to [`ECHO_MAX`] bytes (at a character boundary), marked when cut: what a
/// client sent is never echoed at length.
pub fn clip(s: &str) -> String {
    if s.len() <= ECHO_MAX {
        return s.to_string();
    }
    let mut end = ECHO_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

/// The names of `available`, up to about 2 KiB, then "and N more": error bodies stay
/// small however many models there are.
fn listing(available: &[&str]) -> String {
    let mut out = String::new();
    for (i, name) in available.iter().enumerate() {
        if out.len() + name.len() > 2048 {
            out.push_str(&format!(", and {} more", available.len() - i));
            break;
        }
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `not_found_error`, ...
    pub kind: &'static str,
    pub code: &'static str,
    pub param: Option<&'static str>,
    /// Seconds for a `Retry-After` header (503, 429).
    pub retry_after: Option<u64>,
    /// Further response headers (`Allow` of a 405, `WWW-Authenticate`, ...).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    /// With a `Retry-After` of `seconds`.
    fn retry_in(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        ApiError {
            status,
            message,
            kind,
            code,
            param: None,
            retry_after: None,
            headers: Vec::new(),
        }
    }

    /// With a further response header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// 401: no usable credentials (`missing_api_key`) or a key that is not accepted
    /// (`invalid_api_key`). The key is never echoed.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            code,
            message.into(),
        )
        .with_header("www-authenticate", "Bearer realm=\"llm-router\"")
    }

    /// 403: the key is valid but may not do this.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "permission_denied",
            message.into(),
        )
    }

    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message.into(),
        )
    }

    pub fn model_not_found(model: &str, available: &[&str]) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            "model_not_found",
            format!(
                "The model `{}` does not exist or you do not have access to it. Available models: {}",
                clip(model),
                listing(available)
            ),
        )
        .with_param("model")
    }

    /// A stored response (Responses API) the router knows no home of.
    pub fn response_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "response_not_found",
            format!("Response with id '{}' not found.", clip(id)),
        )
    }

    pub fn path_not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            "unknown_url",
            format!("Unknown request URL: {}", clip(path)),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str, allow: String) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            format!(
                "Method {} is not allowed on {} (allowed: {allow})",
                clip(method),
                clip(path)
            ),
        )
        .with_header("allow", allow)
    }

    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("Request body exceeds the limit of {limit} bytes (router.max_body_bytes)"),
        )
    }

    /// More items in one request than the service accepts.
    pub fn too_many_items(got: usize, max: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "too_many_inputs",
            format!("{got} inputs in one request; at most {max} (embedding_server.max_client_batch_size)"),
        )
        .with_param("input")
    }

    /// One request with more tokens than the embedding queue may ever hold.
    pub fn too_many_tokens(got: usize, max: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "too_many_tokens",
            format!("The request has {got} tokens; a model's queue holds at most {max} (embedding_server.max_queue_tokens)"),
        )
        .with_param("input")
    }

    /// 429: over one of the principal's rate limits. `kind` is OpenAI's `requests` or
    /// `tokens`; `wait` (when waiting helps) becomes `Retry-After` (whole seconds, rounded
    /// up) and `retry-after-ms`, which the OpenAI SDKs prefer.
    pub fn rate_limited(
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
        wait: Option<std::time::Duration>,
    ) -> Self {
        let e = Self::new(StatusCode::TOO_MANY_REQUESTS, kind, code, message.into());
        match wait {
            Some(w) => {
                let ms = w.as_millis().max(1) as u64;
                e.retry_in(ms.div_ceil(1000))
                    .with_header("retry-after-ms", ms.to_string())
            }
            None => e,
        }
    }

    /// 429 `insufficient_quota`: the daily quota is used up. Waiting a few seconds does
    /// not help, so `x-should-retry: false`; `Retry-After` only when the reset is close.
    pub fn quota_exceeded(message: impl Into<String>, reset: std::time::Duration) -> Self {
        let e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "insufficient_quota",
            message.into(),
        )
        .with_header("x-should-retry", "false");
        if reset.as_secs() <= 120 {
            e.retry_in(reset.as_secs().max(1))
        } else {
            e
        }
    }

    /// The host (not the client) is at its limit: retry shortly.
    pub fn server_overloaded(message: impl Into<String>, retry_after: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "server_overloaded",
            message.into(),
        )
        .retry_in(retry_after)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            message.into(),
        )
    }

    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable_error",
            "no_instance_available",
            message.into(),
        )
        .retry_in(retry_after)
    }

    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "upstream_error",
            message.into(),
        )
    }

    /// An event stream the engine cut after it had started: sent as the stream's last
    /// event (the status line went out long ago).
    pub fn stream_cut(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            "upstream_stream_cut",
            message.into(),
        )
    }

    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_error",
            "upstream_timeout",
            message.into(),
        )
    }

    pub fn uri_too_long(got: usize, max: usize) -> Self {
        Self::new(
            StatusCode::URI_TOO_LONG,
            "invalid_request_error",
            "uri_too_long",
            format!("The request target is {got} bytes; at most {max} (router.request_limits.max_uri_bytes)"),
        )
    }

    pub fn header_too_large(got: usize, max: usize) -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_request_error",
            "header_too_large",
            format!("The request head is {got} bytes; at most {max} (router.request_limits.max_header_bytes)"),
        )
    }

    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "invalid_request_error",
            "not_implemented",
            message.into(),
        )
    }

    pub fn expectation_failed(expect: &str) -> Self {
        Self::new(
            StatusCode::EXPECTATION_FAILED,
            "invalid_request_error",
            "expectation_failed",
            format!(
                "Expect: `{}` is not supported (only 100-continue)",
                clip(expect)
            ),
        )
    }

    /// The client took too long to send its request (408; the connection is closed).
    pub fn request_timeout(what: &str, limit: std::time::Duration, key: &str) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            format!("The request {what} did not arrive within {limit:?} (router.timeouts.{key})"),
        )
    }

    pub fn body(&self) -> Bytes {
        Bytes::from(
            json!({
                "error": {
                    "message": self.message,
                    "type": self.kind,
                    "param": self.param,
                    "code": self.code,
                }
            })
            .to_string(),
        )
    }

    /// The body in the API family of the path that was called.
    pub fn body_in(&self, dialect: Dialect) -> Bytes {
        match dialect {
            Dialect::OpenAi => self.body(),
            Dialect::Anthropic => Bytes::from(
                json!({
                    "type": "error",
                    "error": {"type": self.anthropic_type(), "message": self.message},
                })
                .to_string(),
            ),
        }
    }

    /// Anthropic's error `type` for this status (its SDKs pick the exception class by
    /// status; the type is what their users match on).
    pub fn anthropic_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            s if s >= 500 => "api_error",
            _ => "invalid_request_error",
        }
    }
}

/// The API family a path belongs to, which decides the shape of the router's own errors:
/// OpenAI's `{"error": {...}}` everywhere but Anthropic's `/v1/messages*`, whose clients
/// parse `{"type": "error", "error": {"type", "message"}}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dialect {
    #[default]
    OpenAi,
    Anthropic,
}

impl Dialect {
    pub fn of_path(path: &str) -> Dialect {
        let anthropic = path
            .strip_prefix("/v1/messages")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if anthropic {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        }
    }
}

/// A JSON answer for Pingora `ServeHttp` apps (the embedding service, the admin listener).
pub fn json_response(status: u16, body: Vec<u8>) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_default()
}

/// [`ApiError`] as a `ServeHttp` answer, with its `Retry-After` and `Allow` headers.
pub fn error_response(e: &ApiError) -> http::Response<Vec<u8>> {
    let mut r = json_response(e.status.as_u16(), e.body().to_vec());
    if let Some(v) = e.retry_after.and_then(|s| s.to_string().parse().ok()) {
        r.headers_mut().insert("retry-after", v);
    }
    for (k, v) in &e.headers {
        if let Ok(v) = v.parse() {
            r.headers_mut().insert(*k, v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let e = ApiError::model_not_found("x", &["a", "b"]);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("a, b"));
        let v: serde_json::Value = serde_json::from_slice(&e.body_in(Dialect::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "not_found_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("a, b"));
        assert_eq!(
            Dialect::of_path("/v1/messages/count_tokens"),
            Dialect::Anthropic
        );
        assert_eq!(Dialect::of_path("/v1/messagesx"), Dialect::OpenAi);
    }

    #[test]
    fn echoes_are_clipped_and_bodies_stay_small() {
        let long = "m".repeat(10_000);
        let names: Vec<String> = (0..1000).map(|i| format!("model-number-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let e = ApiError::model_not_found(&long, &names);
        assert!(e.body().len() < 4096, "{}", e.body().len());
        assert!(
            e.message.contains("and ") && e.message.contains(" more"),
            "{}",
            e.message
        );
        assert!(ApiError::path_not_found(&long).body().len() < 1024);
        assert_eq!(clip("short"), "short");
        let cut = clip(&"é".repeat(200));
        assert!(cut.len() < 300 && cut.ends_with("(400 bytes)"), "{cut}");
    }
}
