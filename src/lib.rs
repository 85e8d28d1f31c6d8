//! llm-router: one OpenAI-compatible endpoint in front of every model on a GPU host.

pub mod config;
