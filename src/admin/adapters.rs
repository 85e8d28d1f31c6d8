//! `POST /v1/router/models/{model}/adapters` (`{"name", "path"}`: load a LoRA adapter on
//! the least loaded healthy instance) and `DELETE /v1/router/models/{model}/adapters/{name}`
//! (unload it from every instance serving it): the same answer on the public port (for
//! `auth.admins`) and on the admin listener.

use serde::Deserialize;
use serde_json::json;

use super::{Page, Sources};
use crate::http::ApiError;

/// The path after `/v1/router/models/`.
pub const PREFIX: &str = "/v1/router/models/";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Load {
    name: String,
    path: String,
}

fn page(status: u16, body: serde_json::Value) -> Page {
    Page {
        status,
        content_type: "application/json",
        body: body.to_string().into_bytes(),
    }
}

fn error(e: ApiError) -> Page {
    Page {
        status: e.status.as_u16(),
        content_type: "application/json",
        body: e.body().to_vec(),
    }
}

/// The answer to `method` on `PREFIX` + `rest`, with the request `body`.
pub async fn answer(src: &Sources, method: &str, rest: &str, body: &[u8]) -> Page {
    match act(src, method, rest, body).await {
        Ok(p) => p,
        Err(e) => error(e),
    }
}

async fn act(src: &Sources, method: &str, rest: &str, body: &[u8]) -> Result<Page, ApiError> {
    let unknown = || ApiError::path_not_found(&format!("{PREFIX}{rest}"));
    let (model, tail) = rest.split_once("/adapters").ok_or_else(unknown)?;
    let m = src
        .registry
        .get(model)
        .ok_or_else(|| ApiError::model_not_found(model, &[]))?;
    let unavailable = |e: String| ApiError::unavailable(e, 1);
    match (method, tail.strip_prefix('/')) {
        ("POST", None) if tail.is_empty() => {
            let l: Load = serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(
                    "invalid_json",
                    format!("expected {{\"name\", \"path\"}}: {e}"),
                )
            })?;
            if l.name.is_empty() || src.registry.get(&l.name).is_some() {
                return Err(ApiError::bad_request(
                    "invalid_value",
                    "`name` must be a new, non-empty name (not a model or alias)",
                )
                .with_param("name"));
            }
            let inst = src
                .adapters
                .load(m, &l.name, &l.path)
                .await
                .map_err(unavailable)?;
            Ok(page(
                200,
                json!({"model": m.name, "adapter": l.name, "instance": inst}),
            ))
        }
        ("DELETE", Some(name)) if !name.is_empty() && !name.contains('/') => {
            if !m.instances.iter().any(|i| i.serves_adapter(name)) {
                return Err(ApiError::model_not_found(name, &[]));
            }
            let n = src.adapters.unload(m, name).await.map_err(unavailable)?;
            Ok(page(
                200,
                json!({"model": m.name, "adapter": name, "unloaded_from": n}),
            ))
        }
        _ => Err(unknown()),
    }
}
