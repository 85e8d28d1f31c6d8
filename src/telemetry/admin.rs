//! The optional admin listener (`router.admin_listen`): `/metrics` and `/health` only, so
//! that Prometheus and load-balancer checks need not reach the public port (which may be
//! exposed, rate-limited or behind auth).

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::balance::Registry;
use crate::proxy::drain::{health, Draining};
use crate::proxy::error::{error_response, json_response, ApiError};

pub struct AdminApp {
    registry: Registry,
    draining: Draining,
}

impl AdminApp {
    pub fn new(registry: Registry, draining: Draining) -> Self {
        AdminApp { registry, draining }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let method = s.req_header().method.as_str();
        let path = s.req_header().uri.path().trim_end_matches('/');
        match (method, path) {
            ("GET" | "HEAD", "/metrics") => {
                super::metrics::page_response(super::metrics::render(&self.registry))
            }
            ("GET" | "HEAD", "/health") => {
                let (status, body) = health(self.draining.is_set());
                json_response(status, body)
            }
            (m, "/metrics" | "/health") => {
                error_response(&ApiError::method_not_allowed(m, path, "GET, HEAD"))
            }
            _ => error_response(&ApiError::path_not_found(path)),
        }
    }
}
