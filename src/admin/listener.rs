//! The optional admin listener (`router.admin_listen`): `/metrics`,
//! `/v1/router/instances`, `/v1/router/usage` and `/health` only. When it is set, the introspection routes
//! are served here alone (404 on the public port): the instances' internal addresses and
//! load are nothing for clients to see.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use super::{answer, Introspect, Sources};
use crate::http::error_response;
use crate::http::routes::Routes;
use crate::lifecycle::drain::Draining;

pub struct AdminApp {
    sources: Sources,
    draining: Draining,
    routes: Routes<Introspect>,
}

impl AdminApp {
    pub fn new(sources: Sources, draining: Draining) -> Self {
        let routes = Routes::new()
            .read("/metrics", Introspect::Metrics)
            .read("/v1/router/instances", Introspect::Instances)
            .read("/v1/router/usage", Introspect::Usage)
            .read("/health", Introspect::Health);
        AdminApp {
            sources,
            draining,
            routes,
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let method = s.req_header().method.as_str();
        let path = s.req_header().uri.path().trim_end_matches('/');
        match self.routes.resolve(method, path) {
            Ok(found) => {
                let query = s.req_header().uri.query().unwrap_or_default();
                answer(found.route, &self.sources, query, self.draining.is_set()).into_response()
            }
            Err(e) => error_response(&e),
        }
    }
}
