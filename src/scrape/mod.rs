//! Polling every LLM instance's `/metrics`: the load inputs of the balancer.

pub mod dialect;
pub mod prom;
pub mod service;
