//! The optional admin listener (`router.admin_listen`): `/metrics`,
//! `/v1/router/instances` and `/health` only. When it is set, the introspection routes
//! are served here alone (404 on the public port): the instances' internal addresses and
//! load are nothing for clients to see.

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
            ("GET" | "HEAD", "/v1/router/instances") => {
                json_response(200, self.registry.instances_page())
            }
            ("GET" | "HEAD", "/health") => {
                let (status, body) = health(self.draining.is_set());
                json_response(status, body)
            }
            (m, "/metrics" | "/health" | "/v1/router/instances") => {
                error_response(&ApiError::method_not_allowed(m, path, "GET, HEAD"))
            }
            _ => error_response(&ApiError::path_not_found(path)),
        }
    }
}
