//! The router's URL table: which paths exist, with which methods, and what serves them.

use super::error::ApiError;
use crate::config::ModelKind;

/// An OpenAI (or rerank) endpoint forwarded to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Rerank,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Rerank => "/v1/rerank",
        }
    }

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Rerank => "rerank",
        }
    }

    /// Whether a model of `kind` can answer this endpoint. LLM engines may serve
    /// embeddings (vLLM pooling models), so only the obviously wrong pairs are refused.
    pub fn accepts(self, kind: ModelKind) -> bool {
        match self {
            Endpoint::ChatCompletions | Endpoint::Completions => kind == ModelKind::Llm,
            // The seed's rerank call goes through /v1/embeddings with a reranker model.
            Endpoint::Embeddings => true,
            Endpoint::Rerank => kind != ModelKind::Embedding,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Models,
    Model(String),
    /// `GET /v1/router/instances`: live state of every instance.
    Instances,
    /// `GET /metrics`: the router's Prometheus metrics.
    Metrics,
    Inference(Endpoint),
}

/// Maps method + path to a route: 404 for unknown paths, 405 for a known path with the
/// wrong method. Paths match exactly: no normalisation (`//v1/models`, `/a/../metrics`,
/// `%2e%2e` and a trailing slash are other paths), so no route is reached by a detour.
pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    let p = path;
    let (route, allow) = match p {
        "/health" => (Route::Health, "GET, HEAD"),
        "/v1/models" => (Route::Models, "GET, HEAD"),
        "/v1/router/instances" => (Route::Instances, "GET, HEAD"),
        "/metrics" => (Route::Metrics, "GET, HEAD"),
        "/v1/chat/completions" => (Route::Inference(Endpoint::ChatCompletions), "POST"),
        "/v1/completions" => (Route::Inference(Endpoint::Completions), "POST"),
        "/v1/embeddings" => (Route::Inference(Endpoint::Embeddings), "POST"),
        "/v1/rerank" | "/rerank" => (Route::Inference(Endpoint::Rerank), "POST"),
        _ => match p.strip_prefix("/v1/models/") {
            // Model ids may contain '/', e.g. "Qwen/Qwen3-0.6B".
            Some(id) if !id.is_empty() => (Route::Model(id.to_string()), "GET, HEAD"),
            _ => return Err(ApiError::path_not_found(path)),
        },
    };
    let ok = match allow {
        "POST" => method == "POST",
        _ => method == "GET" || method == "HEAD",
    };
    if ok {
        Ok(route)
    } else {
        Err(ApiError::method_not_allowed(method, path, allow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        assert_eq!(route("GET", "/health").unwrap(), Route::Health);
        // Exact paths only.
        for detour in [
            "/v1/models/",
            "//v1/models",
            "/v1/chat/completions/../../metrics",
            "/v1/%2e%2e/metrics",
        ] {
            assert_eq!(route("GET", detour).unwrap_err().status, 404, "{detour}");
        }
        assert_eq!(
            route("GET", "/v1/models/Qwen/Qwen3-0.6B").unwrap(),
            Route::Model("Qwen/Qwen3-0.6B".into())
        );
        assert_eq!(
            route("POST", "/v1/chat/completions").unwrap(),
            Route::Inference(Endpoint::ChatCompletions)
        );
        assert_eq!(
            route("GET", "/v1/chat/completions").unwrap_err().status,
            405
        );
        assert_eq!(route("POST", "/v1/models").unwrap_err().status, 405);
        assert_eq!(route("POST", "/v2/whatever").unwrap_err().status, 404);
        assert_eq!(route("GET", "/").unwrap_err().status, 404);
    }
}
