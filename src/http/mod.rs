//! Shared HTTP pieces of every listener and client of the router: OpenAI-shaped errors
//! and JSON answers ([`error`]), the route table type ([`routes`]), reading a request
//! body within its limits ([`request_body`], [`budget`]), the small HTTP client the
//! background services share ([`client`]) and request ids ([`request_id`]).
//!
//! Imports only `config`: every service above may use it.

pub mod budget;
pub mod client;
pub mod error;
pub mod request_body;
pub mod request_id;
pub mod routes;

pub use error::{error_response, json_response, ApiError, Dialect};
