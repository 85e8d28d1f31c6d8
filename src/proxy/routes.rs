//! The public port's URL table: which paths exist, with which methods, and what serves
//! them (the table type is [`crate::http::routes`]).

use crate::admin::Introspect;
use crate::config::ModelKind;
use crate::http::routes::{Methods, Routes};

/// An OpenAI (or rerank) endpoint forwarded to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Rerank,
    /// vLLM's `/tokenize` and `/detokenize` (its own tokenizer, chat template included).
    Tokenize,
    Detokenize,
    /// vLLM's `/v1/score` (`/score`): pairs scored by a cross-encoder or embedding model.
    Score,
    /// vLLM's `/pooling` and `/classify` (pooling and classification models).
    Pooling,
    Classify,
    /// OpenAI's Responses API (`POST /v1/responses`); the stored responses it creates are
    /// reached by id ([`Route::StoredResponse`]).
    Responses,
    /// Anthropic's Messages API, as vLLM serves it: `/v1/messages` and
    /// `/v1/messages/count_tokens`.
    Messages,
    CountTokens,
    /// OpenAI's audio endpoints (`/v1/audio/transcriptions`, `/v1/audio/translations`):
    /// a `multipart/form-data` body whose `model` field is rewritten.
    Transcriptions,
    Translations,
    /// Any other `POST /v1/...` whose JSON body names a model: forwarded as it is, so a
    /// new engine endpoint works without a router release.
    Other,
}

impl Endpoint {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Rerank => "rerank",
            Endpoint::Tokenize => "tokenize",
            Endpoint::Detokenize => "detokenize",
            Endpoint::Score => "score",
            Endpoint::Pooling => "pooling",
            Endpoint::Classify => "classify",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "count_tokens",
            Endpoint::Transcriptions => "transcriptions",
            Endpoint::Translations => "translations",
            Endpoint::Other => "other",
        }
    }

    /// The name a keys file allows it by (`endpoints:`).
    pub fn permission(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Rerank => "rerank",
            Endpoint::Tokenize | Endpoint::Detokenize => "tokenize",
            Endpoint::Score => "score",
            Endpoint::Pooling | Endpoint::Classify => "pooling",
            Endpoint::Responses => "responses",
            Endpoint::Messages | Endpoint::CountTokens => "messages",
            Endpoint::Transcriptions | Endpoint::Translations => "audio",
            Endpoint::Other => "other",
        }
    }

    /// Requests that generate text (and fill an engine's prefix cache): their completion
    /// is reserved against token limits and they get the principal's cache salt.
    pub fn generates(self) -> bool {
        matches!(
            self,
            Endpoint::ChatCompletions
                | Endpoint::Completions
                | Endpoint::Responses
                | Endpoint::Messages
        )
    }

    /// OpenAI's streaming `usage` chunk on request (`stream_options.include_usage`): chat
    /// and completions only (the Responses and Messages streams report usage in their
    /// last events anyway, and have no `stream_options`).
    pub fn has_stream_options(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }

    /// Whether vLLM takes a `priority` in this body: the OpenAI endpoints its scheduler
    /// runs, not the tokenizer ones (answered outside the scheduler), not Anthropic's
    /// (a different request schema) and not unknown ones.
    pub fn takes_priority(self) -> bool {
        !matches!(
            self,
            Endpoint::Tokenize
                | Endpoint::Detokenize
                | Endpoint::Messages
                | Endpoint::CountTokens
                | Endpoint::Transcriptions
                | Endpoint::Translations
                | Endpoint::Other
        )
    }

    /// The body is `multipart/form-data`, not JSON.
    pub fn takes_form(self) -> bool {
        matches!(self, Endpoint::Transcriptions | Endpoint::Translations)
    }

    /// Whether a model of `kind` can answer this endpoint. LLM engines may serve
    /// embeddings (vLLM pooling models), so only the obviously wrong pairs are refused.
    pub fn accepts(self, kind: ModelKind) -> bool {
        match self {
            Endpoint::ChatCompletions | Endpoint::Completions => kind == ModelKind::Llm,
            // The seed's rerank call goes through /v1/embeddings with a reranker model.
            Endpoint::Embeddings => true,
            Endpoint::Rerank | Endpoint::Score => kind != ModelKind::Embedding,
            // Served by vLLM only (the router's own embedding service has no tokenizer
            // endpoints and no pooling API).
            Endpoint::Tokenize
            | Endpoint::Detokenize
            | Endpoint::Pooling
            | Endpoint::Classify
            | Endpoint::Responses
            | Endpoint::Messages
            | Endpoint::CountTokens
            | Endpoint::Transcriptions
            | Endpoint::Translations => kind == ModelKind::Llm,
            // Whatever it is, the engine decides.
            Endpoint::Other => true,
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
    /// `POST`/`DELETE /v1/router/models/{model}/adapters[/{name}]` (admin): LoRA
    /// adapters loaded or unloaded ([`crate::admin::adapters`]).
    Adapters,
    /// `GET`/`DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`: sent to the
    /// instance that created the response (the rest of the path is `{id}[/cancel]`).
    StoredResponse,
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
        .under(
            crate::admin::adapters::PREFIX,
            Methods::POST.and(Methods::DELETE),
            Route::Adapters,
        )
        .post(
            "/v1/chat/completions",
            Route::Inference(Endpoint::ChatCompletions),
        )
        .post("/v1/completions", Route::Inference(Endpoint::Completions))
        .post("/v1/embeddings", Route::Inference(Endpoint::Embeddings))
        .post("/v1/rerank", Route::Inference(Endpoint::Rerank))
        .post("/rerank", Route::Inference(Endpoint::Rerank))
        .post("/tokenize", Route::Inference(Endpoint::Tokenize))
        .post("/detokenize", Route::Inference(Endpoint::Detokenize))
        .post("/v1/score", Route::Inference(Endpoint::Score))
        .post("/score", Route::Inference(Endpoint::Score))
        .post("/pooling", Route::Inference(Endpoint::Pooling))
        .post("/classify", Route::Inference(Endpoint::Classify))
        .post("/v1/responses", Route::Inference(Endpoint::Responses))
        .under(
            "/v1/responses/",
            Methods::READ.and(Methods::POST).and(Methods::DELETE),
            Route::StoredResponse,
        )
        .post("/v1/messages", Route::Inference(Endpoint::Messages))
        .post(
            "/v1/messages/count_tokens",
            Route::Inference(Endpoint::CountTokens),
        )
        .post(
            "/v1/audio/transcriptions",
            Route::Inference(Endpoint::Transcriptions),
        )
        .post(
            "/v1/audio/translations",
            Route::Inference(Endpoint::Translations),
        )
        .post_fallback("/v1/", Route::Inference(Endpoint::Other))
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
        for (path, e) in [
            ("/tokenize", Endpoint::Tokenize),
            ("/detokenize", Endpoint::Detokenize),
            ("/score", Endpoint::Score),
            ("/v1/score", Endpoint::Score),
            ("/classify", Endpoint::Classify),
        ] {
            assert_eq!(
                route("POST", path).unwrap().0,
                Route::Inference(e),
                "{path}"
            );
        }
        assert!(!Endpoint::Tokenize.takes_priority() && Endpoint::Score.takes_priority());
        assert!(!Endpoint::Messages.has_stream_options() && Endpoint::Messages.generates());
        assert_eq!(
            route("POST", "/v1/messages/count_tokens").unwrap().0,
            Route::Inference(Endpoint::CountTokens)
        );
        assert_eq!(
            route("POST", "/v1/audio/speech").unwrap().0,
            Route::Inference(Endpoint::Other)
        );
        assert_eq!(
            route("DELETE", "/v1/responses/resp_1").unwrap(),
            (Route::StoredResponse, "resp_1".to_string())
        );
        assert!(!Endpoint::Pooling.accepts(ModelKind::Embedding));
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
        assert_eq!(route("GET", "/v1/whatever").unwrap_err().status, 404);
        assert_eq!(route("GET", "/").unwrap_err().status, 404);
    }
}
