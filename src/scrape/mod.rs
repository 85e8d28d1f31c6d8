//! Polling the instances: every instance's `/health` (its one health verdict) and every
//! LLM instance's `/metrics` (the load inputs of the balancer), and reading those pages.

pub mod dialect;
pub mod poller;
pub mod prom;
