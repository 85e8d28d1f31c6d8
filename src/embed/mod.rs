//! The co-hosted ONNX embedding and rerank service: [`model`] (ONNX Runtime session +
//! tokenizer), [`batch`] (dynamic batching on a dedicated thread per model), [`service`]
//! (the HTTP endpoints, on their own listener).

pub mod batch;
pub mod model;
pub mod service;
