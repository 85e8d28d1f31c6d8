//! The co-hosted ONNX embedding and rerank service.

pub mod model;
