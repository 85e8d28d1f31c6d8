//! The mock vLLM's Responses API (`/v1/responses`, with stored responses by id) and
//! Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`), in the shapes
//! vLLM serves them: JSON, or SSE with `"stream": true`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::stream;
use serde_json::{json, Value};

use super::{admit, MockState};

pub fn routes() -> Router<Arc<MockState>> {
    Router::new()
        .route("/v1/responses", post(create_response))
        .route(
            "/v1/responses/{id}",
            get(get_response).delete(delete_response),
        )
        .route("/v1/responses/{id}/cancel", post(cancel_response))
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/models", get(models))
        .route("/v1/load_lora_adapter", post(load_adapter))
        .route("/v1/unload_lora_adapter", post(unload_adapter))
}

/// vLLM's model list: the base model (named after the mock) and its LoRA adapters.
async fn models(State(s): State<Arc<MockState>>) -> Response {
    let mut data = vec![json!({"id": s.name, "object": "model", "parent": null})];
    for a in s.adapters.lock().unwrap().iter() {
        data.push(
            json!({"id": a, "object": "model", "parent": s.name, "root": format!("/adapters/{a}")}),
        );
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

fn lora_error(msg: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": {"message": msg, "type": "BadRequestError", "code": 400}})),
    )
        .into_response()
}

/// vLLM's runtime LoRA loading: a path containing `missing` does not exist.
async fn load_adapter(
    State(s): State<Arc<MockState>>,
    axum::Json(req): axum::Json<Value>,
) -> Response {
    s.adapter_loads.fetch_add(1, Ordering::SeqCst);
    let delay = s.load_delay_ms.load(Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    let name = req["lora_name"].as_str().unwrap_or("").to_string();
    if req["lora_path"].as_str().unwrap_or("").contains("missing") {
        return lora_error(format!("No adapter found for {}", req["lora_path"]));
    }
    let mut list = s.adapters.lock().unwrap();
    if list.contains(&name) {
        return lora_error(format!(
            "The lora adapter '{name}' has already been loaded."
        ));
    }
    list.push(name.clone());
    format!("Success: LoRA adapter '{name}' added successfully.").into_response()
}

async fn unload_adapter(
    State(s): State<Arc<MockState>>,
    axum::Json(req): axum::Json<Value>,
) -> Response {
    let name = req["lora_name"].as_str().unwrap_or("");
    let mut list = s.adapters.lock().unwrap();
    if !list.iter().any(|a| a == name) {
        return lora_error(format!("The lora adapter '{name}' cannot be found."));
    }
    list.retain(|a| a != name);
    format!("Success: LoRA adapter '{name}' removed successfully.").into_response()
}

fn sse(events: Vec<String>) -> Response {
    let chunks = events
        .into_iter()
        .map(|e| Ok::<_, std::io::Error>(Bytes::from(e)));
    Response::builder()
        .header("content-type", "text/event-stream; charset=utf-8")
        .body(Body::from_stream(stream::iter(chunks)))
        .unwrap()
}

fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// vLLM's 404 for a stored response it does not have (an API error, not FastAPI's).
fn no_such_response(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(
            json!({"error": {"message": format!("Response with id '{id}' not found."),
            "type": "invalid_request_error", "param": null, "code": 404}}),
        ),
    )
        .into_response()
}

async fn create_response(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (req, mut watch) = match admit(&s, headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    watch.done = true;
    let n = s.chunks.load(Ordering::SeqCst);
    let seq = s.requests.load(Ordering::SeqCst);
    let id = format!("resp_{}_{seq}", s.name);
    let text: String = (0..n).map(|i| format!("tok{i} ")).collect();
    let response = json!({
        "id": id, "object": "response", "created_at": 0, "model": req["model"],
        "status": "completed", "previous_response_id": req["previous_response_id"],
        "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": 3, "output_tokens": n, "total_tokens": 3 + n},
        "instance": s.name,
    });
    s.responses
        .lock()
        .unwrap()
        .insert(id.clone(), response.clone());
    if !req["stream"].as_bool().unwrap_or(false) {
        return axum::Json(response).into_response();
    }
    let mut created = response.clone();
    created["status"] = json!("in_progress");
    created["output"] = json!([]);
    let mut events = vec![event(
        "response.created",
        &json!({"type": "response.created", "sequence_number": 0, "response": created}),
    )];
    for i in 0..n {
        events.push(event(
            "response.output_text.delta",
            &json!({
            "type": "response.output_text.delta", "sequence_number": i + 1, "item_id": "msg_1",
            "output_index": 0, "content_index": 0, "delta": format!("tok{i} ")}),
        ));
    }
    events.push(event(
        "response.completed",
        &json!({"type": "response.completed", "sequence_number": n + 1, "response": response}),
    ));
    sse(events)
}

async fn get_response(State(s): State<Arc<MockState>>, Path(id): Path<String>) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    match s.responses.lock().unwrap().get(&id) {
        Some(r) => axum::Json(r.clone()).into_response(),
        None => no_such_response(&id),
    }
}

async fn delete_response(State(s): State<Arc<MockState>>, Path(id): Path<String>) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    match s.responses.lock().unwrap().remove(&id) {
        Some(_) => {
            axum::Json(json!({"id": id, "object": "response", "deleted": true})).into_response()
        }
        None => no_such_response(&id),
    }
}

async fn cancel_response(State(s): State<Arc<MockState>>, Path(id): Path<String>) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    match s.responses.lock().unwrap().get_mut(&id) {
        Some(r) => {
            r["status"] = json!("cancelled");
            axum::Json(r.clone()).into_response()
        }
        None => no_such_response(&id),
    }
}

/// Anthropic's Messages API: `tok0 tok1 ...` as one text block, or as a stream of
/// `content_block_delta` events between `message_start` and `message_stop`.
async fn messages(State(s): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let (req, mut watch) = match admit(&s, headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    watch.done = true;
    let n = s.chunks.load(Ordering::SeqCst);
    let text: String = (0..n).map(|i| format!("tok{i} ")).collect();
    let message = |content: Value, output_tokens: usize| {
        json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": req["model"],
            "content": content, "stop_reason": "max_tokens", "stop_sequence": null,
            "usage": {"input_tokens": 3, "output_tokens": output_tokens}})
    };
    if !req["stream"].as_bool().unwrap_or(false) {
        return axum::Json(message(json!([{"type": "text", "text": text}]), n)).into_response();
    }
    let mut start = message(json!([]), 1);
    start["stop_reason"] = Value::Null;
    let mut events = vec![
        event(
            "message_start",
            &json!({"type": "message_start", "message": start}),
        ),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for i in 0..n {
        events.push(event(
            "content_block_delta",
            &json!({"type": "content_block_delta",
            "index": 0, "delta": {"type": "text_delta", "text": format!("tok{i} ")}}),
        ));
    }
    events.extend([
        event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        event(
            "message_delta",
            &json!({"type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
            "usage": {"output_tokens": n}}),
        ),
        event("message_stop", &json!({"type": "message_stop"})),
    ]);
    sse(events)
}

async fn count_tokens(
    State(s): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, mut watch) = match admit(&s, headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    watch.done = true;
    axum::Json(json!({"input_tokens": 3})).into_response()
}
