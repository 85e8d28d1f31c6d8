//! The optional admin listener (`router.admin_listen`): `/metrics`,
//! `/v1/router/instances`, `/v1/router/usage` and `/health` only. When it is set, the introspection routes
//! are served here alone (404 on the public port): the instances' internal addresses and
//! load are nothing for clients to see.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use super::{adapters, answer, Introspect, Sources};
use crate::config::ClientTimeouts;
use crate::http::budget::{BodyBudget, Reserved};
use crate::http::routes::{Methods, Routes};
use crate::http::{error_response, request_body};
use crate::lifecycle::drain::Draining;

/// What the admin listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AdminRoute {
    Introspect(Introspect),
    /// `/v1/router/models/{model}/adapters[/{name}]`.
    Adapters,
}

pub struct AdminApp {
    sources: Sources,
    draining: Draining,
    routes: Routes<AdminRoute>,
    /// Bodies of admin calls held at once (they are small).
    bodies: BodyBudget,
}

/// Largest body of an admin call.
const MAX_BODY: u64 = 64 * 1024;

impl AdminApp {
    pub fn new(sources: Sources, draining: Draining) -> Self {
        let i = AdminRoute::Introspect;
        let routes = Routes::new()
            .read("/metrics", i(Introspect::Metrics))
            .read("/v1/router/instances", i(Introspect::Instances))
            .read("/v1/router/usage", i(Introspect::Usage))
            .read("/health", i(Introspect::Health))
            .under(
                adapters::PREFIX,
                Methods::POST.and(Methods::DELETE),
                AdminRoute::Adapters,
            );
        AdminApp {
            sources,
            draining,
            routes,
            bodies: BodyBudget::new(16 * MAX_BODY, 1),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let method = s.req_header().method.as_str().to_string();
        let path = s.req_header().uri.path().trim_end_matches('/').to_string();
        match self.routes.resolve(&method, &path) {
            Ok(found) => match found.route {
                AdminRoute::Introspect(what) => {
                    let query = s.req_header().uri.query().unwrap_or_default();
                    answer(what, &self.sources, query, self.draining.is_set()).into_response()
                }
                AdminRoute::Adapters => {
                    let rest = found.rest.to_string();
                    let mut room = Reserved::default();
                    let t = ClientTimeouts::default();
                    match request_body::read(s, MAX_BODY, &t, &self.bodies, &mut room).await {
                        Ok(body) => adapters::answer(&self.sources, &method, &rest, &body)
                            .await
                            .into_response(),
                        Err(e) => error_response(&e),
                    }
                }
            },
            Err(e) => error_response(&e),
        }
    }
}
