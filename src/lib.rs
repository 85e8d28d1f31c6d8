//! llm-router: one OpenAI-compatible endpoint in front of every model on a GPU host.
//!
//! Layout follows the architecture: [`config`] (YAML → validated settings), [`balance`]
//! (instances and the choice among them), [`proxy`] (the Pingora `ProxyHttp` service),
//! [`telemetry`] (logs), [`cli`] (command line and server start-up).

pub mod admin;
pub mod admission;
pub mod auth;
pub mod balance;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod discover;
pub mod embed;
pub mod hash;
pub mod http;
pub mod ledger;
pub mod lifecycle;
pub mod proxy;
pub mod scrape;
pub mod supervisor;
pub mod telemetry;
