//! The public port's URL table: which paths exist, with which methods, and what serves
//! them (the table type is [`crate::http::routes`]).

use crate::admin::Introspect;
use crate::config::ModelKind;
use crate::http::routes::Routes;

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

    /// The name a keys file allows it by (`endpoints:`).
    pub fn permission(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Rerank => "rerank",
        }
    }

    /// Chat or completions: requests that generate (and fill an engine's prefix cache).
    pub fn generates(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/health`, `/metrics`, `/v1/router/instances`: see [`crate::admin`].
    Introspect(Introspect),
    Models,
    /// `/v1/models/{id}`: the id is the rest of the path.
    Model,
    Inference(Endpoint),
}

/// The public port's table. Model ids may contain '/', e.g. "Qwen/Qwen3-0.6B".
pub fn table() -> Routes<Route> {
    Routes::new()
        .read("/health", Route::Introspect(Introspect::Health))
        .read("/v1/models", Route::Models)
        .read(
            "/v1/router/instances",
            Route::Introspect(Introspect::Instances),
        )
        .read("/v1/router/usage", Route::Introspect(Introspect::Usage))
        .read("/metrics", Route::Introspect(Introspect::Metrics))
        .read_under("/v1/models/", Route::Model)
        .post(
            "/v1/chat/completions",
            Route::Inference(Endpoint::ChatCompletions),
        )
        .post("/v1/completions", Route::Inference(Endpoint::Completions))
        .post("/v1/embeddings", Route::Inference(Endpoint::Embeddings))
        .post("/v1/rerank", Route::Inference(Endpoint::Rerank))
        .post("/rerank", Route::Inference(Endpoint::Rerank))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_of_the_public_port() {
        let t = table();
        let route = |m: &str, p: &str| t.resolve(m, p).map(|f| (f.route, f.rest.to_string()));
        assert_eq!(
            route("GET", "/health").unwrap().0,
            Route::Introspect(Introspect::Health)
        );
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
            (Route::Model, "Qwen/Qwen3-0.6B".to_string())
        );
        assert_eq!(
            route("POST", "/v1/chat/completions").unwrap().0,
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
