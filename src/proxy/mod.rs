//! The Pingora `ProxyHttp` service: local endpoints, request checks, forwarding.
//!
//! Every request is answered from `request_filter` (see [`forward`] for why the router
//! drives upstream exchanges itself); Pingora's own upstream phase is never reached.

pub mod body;
pub mod forward;
pub mod guard;
pub mod head;
pub mod linger;
pub mod multipart;
pub mod policy;
mod responses;
mod routes;
pub mod stored;
pub mod usage;
pub mod usage_event;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use serde_json::json;
use tracing::warn;

use crate::admin::{self, Introspect};
use crate::admission::{self, Gates, Limiter, Permit, RateHeaders};
use crate::auth::Class;
use crate::auth::{Auth, Denied, Principal};
use crate::balance::adapters::AdapterLoader;
use crate::balance::{Model, Registry};
use crate::config::{
    AffinityKey, ClientTimeouts, Config, ModelKind, Policy, RequestLimits, RequestPolicy,
};
use crate::http::budget;
use crate::http::request_body;
use crate::http::request_id;
use crate::http::routes::Routes;
use crate::http::{ApiError, Dialect};
use crate::ledger::Ledger;
use crate::lifecycle::drain;
use crate::telemetry::access::{now_rfc3339, AccessLog, AccessRecord};
use crate::telemetry::audit;
use crate::telemetry::metrics;

pub use crate::http::request_id::HEADER as REQUEST_ID;
/// A client asking for the route receipt (`x-llm-router-route`) with `1`.
pub const DEBUG: &str = "x-llm-router-debug";
use forward::{Exchange, Forwarder, Outcome, Remember};
use routes::Route;

/// The router's proxy logic, shared by all worker threads.
pub struct Router {
    registry: Registry,
    /// What the introspection routes read (the registry again, the usage ledger).
    sources: admin::Sources,
    forwarder: Forwarder,
    max_body_bytes: u64,
    /// `created` of `/v1/models` entries: when this router started.
    started_unix: u64,
    draining: drain::Draining,
    access_log: AccessLog,
    /// `/metrics` and `/v1/router/instances` are served by the admin listener only.
    admin_only: bool,
    timeouts: ClientTimeouts,
    request_limits: RequestLimits,
    /// Open client connections (the guard's caps and head deadline).
    connections: Arc<guard::Connections>,
    /// Request bodies held at once.
    bodies: budget::BodyBudget,
    routes: Routes<Route>,
    auth: Arc<Auth>,
    policy: RequestPolicy,
    /// Per-principal limits (auth on).
    limiter: Limiter,
    /// `x-ratelimit-*` on authenticated answers (`admission.headers`).
    rate_headers: bool,
    /// Per-model admission queues.
    gates: Gates,
    /// The instance of each stored response (Responses API).
    homes: stored::ResponseHomes,
    /// Loads LoRA adapters on engines (shared with the admin routes).
    adapters: Arc<AdapterLoader>,
    retry_after_s: u64,
}

/// Per-request state, kept for logging.
#[derive(Default)]
pub struct RequestCtx {
    start: Option<Instant>,
    /// A configured model name (bounded metric label), once known.
    model: Option<String>,
    endpoint: &'static str,
    /// The API family of the path (the shape of the router's errors).
    dialect: Dialect,
    request_id: String,
    outcome: Outcome,
    error: Option<ApiError>,
    /// Counted as in flight (for the early exit of a draining process) until the context
    /// is dropped, after the access log line.
    _active: Option<drain::ActiveRequest>,
    /// This request's mark on its connection (the head deadline does not apply meanwhile).
    _on_connection: Option<guard::OnConnection>,
    /// Room reserved for the request body, given back with the context.
    _body_room: budget::Reserved,
    /// Who is asking (auth on).
    principal: Option<Arc<Principal>>,
    /// `x-ratelimit-*` of the principal, sent with every answer.
    rate_headers: RateHeaders,
    /// Time spent in the admission queue, when the request waited.
    queued: Option<Duration>,
    /// The request's place at its model's engines (admission queue), until the end.
    _permit: Option<Permit>,
    /// The LoRA adapter the request names (its model is `model`).
    adapter: Option<String>,
}

impl Router {
    /// `ledger`: the usage ledger (auth on); the day's tokens are read back from it so
    /// that `tokens_per_day` holds across restarts.
    pub fn new(
        config: &Config,
        draining: drain::Draining,
        auth: Arc<Auth>,
        ledger: Option<Arc<Ledger>>,
    ) -> Result<Self, String> {
        let registry = Registry::new(config)?;
        let adapters = Arc::new(AdapterLoader::default());
        let limiter = Limiter::new(config.tokens.clone());
        if let Some(l) = &ledger {
            for (principal, model, used) in l.used_today()? {
                limiter.restore_today(&principal, None, used);
                limiter.restore_today(&principal, Some(&model), used);
            }
        }
        Ok(Router {
            sources: admin::Sources {
                registry: registry.clone(),
                ledger,
                adapters: adapters.clone(),
            },
            registry,
            forwarder: Forwarder::new(config.router.clone()),
            max_body_bytes: config.router.max_body_bytes,
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            draining,
            access_log: AccessLog::new(
                config.router.access_log,
                config.router.access_log_file.clone(),
            ),
            admin_only: config.router.admin_listen.is_some(),
            timeouts: config.router.timeouts,
            request_limits: config.router.request_limits,
            bodies: budget::BodyBudget::new(
                config.router.max_buffered_body_bytes,
                config.router.retry_after_s,
            ),
            connections: guard::Connections::new(config.router.connections, config.router.timeouts),
            routes: routes::table(),
            auth,
            policy: config.request_policy.clone(),
            limiter,
            rate_headers: config.rate_headers,
            gates: Gates::new(&config.queue),
            homes: stored::ResponseHomes::new(config.router.stored_responses),
            adapters,
            retry_after_s: config.router.retry_after_s,
        })
    }

    /// Start-up checks of what the router will need at its first request.
    pub fn check(&self) -> Result<(), String> {
        self.access_log.check()
    }

    /// The open-connection table, for the listener's [`guard::ConnGuard`].
    pub fn connections(&self) -> Arc<guard::Connections> {
        self.connections.clone()
    }

    /// What the introspection and admin routes read and act on (the admin listener
    /// shares it).
    pub fn sources(&self) -> &admin::Sources {
        &self.sources
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    async fn handle(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), ApiError> {
        let h = session.req_header();
        head::check(
            &h.method,
            h.raw_path(),
            h.version,
            &h.headers,
            &self.request_limits,
        )?;
        let found = self.routes.resolve(h.method.as_str(), h.uri.path())?;
        if found.route != Route::Introspect(Introspect::Health) {
            ctx.principal = self
                .auth
                .authenticate(&h.headers)
                .map_err(|d| self.deny(session, ctx, *d))?;
        }
        let principal = ctx.principal.clone();
        let principal = principal.as_deref();
        match found.route {
            Route::Introspect(
                what @ (Introspect::Metrics | Introspect::Instances | Introspect::Usage),
            ) => self.admin_route(session, ctx, what, principal).await,
            Route::Introspect(what) => {
                self.introspect(session, what).await;
                Ok(())
            }
            Route::Models => {
                self.may_call(session, ctx, "models")?;
                let data: Vec<_> = self
                    .visible_models(principal)
                    .flat_map(|m| self.model_cards(m, principal))
                    .collect();
                let body = json!({ "object": "list", "data": data });
                self.fill_rate_headers(ctx);
                write_json(session, 200, body.to_string().into(), &ctx.rate_headers).await;
                Ok(())
            }
            Route::Model => {
                self.may_call(session, ctx, "models")?;
                let m = self.model_or_adapter(session, ctx, found.rest)?;
                let named = m.aliases.iter().any(|a| a == found.rest) || ctx.adapter.is_some();
                let id = if named { found.rest } else { &m.name };
                let card = self.model_card(m, id).to_string().into();
                self.fill_rate_headers(ctx);
                write_json(session, 200, card, &ctx.rate_headers).await;
                Ok(())
            }
            Route::Inference(endpoint) => {
                ctx.endpoint = endpoint.label();
                self.may_call(session, ctx, endpoint.permission())?;
                self.inference(session, ctx, endpoint).await
            }
            Route::Adapters => {
                self.admin_allowed(session, ctx, principal)?;
                let rest = found.rest.to_string();
                let method = session.req_header().method.as_str().to_string();
                let body = self.read_body(session, ctx).await?;
                let page = admin::adapters::answer(&self.sources, &method, &rest, &body).await;
                let ct = [("content-type", page.content_type.to_string())];
                let _ = write_response(session, page.status, page.body.into(), &ct).await;
                Ok(())
            }
            Route::StoredResponse => {
                let rest = found.rest.to_string();
                self.stored_response(session, ctx, &rest).await
            }
        }
    }

    /// `/metrics`, `/v1/router/instances` on the main port: with auth on, for the
    /// principals of `auth.admins`; with auth off, only without an admin listener.
    async fn admin_route(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        what: Introspect,
        principal: Option<&Principal>,
    ) -> Result<(), ApiError> {
        self.admin_allowed(session, ctx, principal)?;
        self.introspect(session, what).await;
        Ok(())
    }

    /// The admin routes on the main port: for `auth.admins` with auth on; with auth off
    /// only when there is no admin listener (then they live there).
    fn admin_allowed(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        principal: Option<&Principal>,
    ) -> Result<(), ApiError> {
        match principal {
            Some(p) if !self.auth.is_admin(p) => {
                let d = Denied::forbidden("admin_denied", p, "the admin routes");
                Err(self.deny(session, ctx, d))
            }
            None if self.admin_only => {
                Err(ApiError::path_not_found(session.req_header().uri.path()))
            }
            _ => Ok(()),
        }
    }

    async fn introspect(&self, session: &mut Session, what: Introspect) {
        let draining = self.draining.is_set() || session.is_process_shutting_down();
        let query = session
            .req_header()
            .uri
            .query()
            .unwrap_or_default()
            .to_string();
        let page = admin::answer(what, &self.sources, &query, draining);
        let ct = [("content-type", page.content_type.to_string())];
        let _ = write_response(session, page.status, page.body.into(), &ct).await;
    }

    /// 403 unless the request's principal (if any) may call endpoint `name`.
    fn may_call(&self, session: &Session, ctx: &RequestCtx, name: &str) -> Result<(), ApiError> {
        match ctx.principal.as_deref() {
            Some(p) if !p.may_call(name) => {
                let what = format!("the `{name}` endpoints");
                Err(self.deny(session, ctx, Denied::forbidden("endpoint_denied", p, &what)))
            }
            _ => Ok(()),
        }
    }

    /// The configured model `name` if the request's principal may use it; else the
    /// same 404 as for a model that does not exist.
    fn allowed_model(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        name: &str,
    ) -> Result<&Model, ApiError> {
        let p = ctx.principal.as_deref();
        let found = self.registry.get(name);
        match (found, p) {
            (Some(m), Some(p)) if !p.may_use(&m.name) => {
                let e = self.not_found(name, Some(p));
                Err(self.deny(session, ctx, Denied::model(p, e)))
            }
            (Some(m), _) => Ok(m),
            (None, _) => Err(self.not_found(name, p)),
        }
    }

    /// The models a principal may use (all of them with auth off).
    fn visible_models<'a>(
        &'a self,
        principal: Option<&'a Principal>,
    ) -> impl Iterator<Item = &'a Model> + 'a {
        self.registry
            .models()
            .map(|m| m.as_ref())
            .filter(move |m| principal.is_none_or(|p| p.may_use(&m.name)))
    }

    /// Writes the audit line of a refusal and returns its answer.
    fn deny(&self, session: &Session, ctx: &RequestCtx, d: Denied) -> ApiError {
        let h = session.req_header();
        let client = session
            .client_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        audit::denied(&audit::Denial {
            reason: d.reason,
            request_id: &ctx.request_id,
            client: &client,
            principal: d.principal.as_deref(),
            key_fp: d.key_fp.as_deref(),
            method: h.method.as_str(),
            path: h.uri.path(),
            model: ctx.model.as_deref(),
            status: d.error.status.as_u16(),
        });
        if let (Some(l), Some(p)) = (self.sources.ledger.as_deref(), d.principal.as_deref()) {
            l.deny(p, ctx.model.as_deref().unwrap_or("-"), d.reason);
        }
        d.error
    }

    /// The request's whole body, within its size, time and memory limits.
    async fn read_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Bytes, ApiError> {
        request_body::read(
            session,
            self.max_body_bytes,
            &self.timeouts,
            &self.bodies,
            &mut ctx._body_room,
        )
        .await
    }

    async fn inference(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        endpoint: routes::Endpoint,
    ) -> Result<(), ApiError> {
        let body = self.read_body(session, ctx).await?;
        let info = match inspect(session, endpoint, &body).await {
            // text-embeddings-inference's `/rerank` names no model: the first reranker
            // the principal may use.
            Err(e) if e.code == "missing_model" && endpoint == routes::Endpoint::Rerank => {
                return self.nameless_rerank(session, ctx, body, e).await;
            }
            // A path the router does not know: without a JSON body naming a model there
            // is nothing to route it by.
            Err(_) if endpoint == routes::Endpoint::Other => {
                return Err(ApiError::path_not_found(session.req_header().uri.path()));
            }
            r => r?,
        };
        let model = self.model_or_adapter(session, ctx, &info.model)?;
        ctx.model = Some(model.name.clone());
        serves(model, endpoint, session.req_header().uri.path())?;
        let order = match ctx.adapter {
            // Only the adapter's model has it.
            Some(_) => vec![model],
            None => self.fallback_order(model, ctx.principal.as_deref()),
        };
        for (i, m) in order.iter().enumerate() {
            match self.send_to(session, ctx, m, endpoint, &info, &body).await {
                Err(e) if i + 1 < order.len() && falls_back(&e) && !response_started(session) => {
                    // Nothing reached an engine: the attempt costs nothing.
                    ctx.outcome.settle(false);
                    ctx.outcome.charged = None;
                    ctx.outcome
                        .failovers
                        .push(format!("{}: {}", m.name, e.code));
                }
                r => return r,
            }
        }
        Ok(())
    }

    /// The configured model (or alias) `name`, or the model whose LoRA adapter `name` is
    /// (then `ctx.adapter` is set): for a principal, the adapter's name must be allowed as
    /// well as its model. Else the same 404 as for a model that does not exist.
    fn model_or_adapter(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        name: &str,
    ) -> Result<&Model, ApiError> {
        if self.registry.get(name).is_some() {
            return self.allowed_model(session, ctx, name);
        }
        let Some(m) = self.registry.adapter_model(name) else {
            return self.allowed_model(session, ctx, name);
        };
        let p = ctx.principal.as_deref();
        if let Some(p) = p.filter(|p| !(p.may_use(&m.name) && p.may_use(name))) {
            let e = self.not_found(name, Some(p));
            return Err(self.deny(session, ctx, Denied::model(p, e)));
        }
        ctx.adapter = Some(name.to_string());
        Ok(m)
    }

    /// Where a request for `model` is tried, in order: the model and its `fallback`
    /// models (those the principal may use) that have a healthy instance now; when none
    /// has, the model alone (its own 503 says why).
    fn fallback_order<'a>(&'a self, model: &'a Model, p: Option<&Principal>) -> Vec<&'a Model> {
        let chain = std::iter::once(model).chain(
            model
                .fallback
                .iter()
                .filter_map(|f| self.registry.get(f).map(|m| m.as_ref()))
                .filter(|m| p.is_none_or(|p| p.may_use(&m.name))),
        );
        let ready: Vec<&Model> = chain.filter(|m| m.can_serve()).collect();
        if ready.is_empty() {
            vec![model]
        } else {
            ready
        }
    }

    /// One model's turn at a request: the body for its engines, the principal's limits,
    /// its admission queue, then an instance.
    async fn send_to(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        model: &Model,
        endpoint: routes::Endpoint,
        info: &body::RequestInfo,
        body: &Bytes,
    ) -> Result<(), ApiError> {
        ctx.model = Some(model.name.clone());
        let class = ctx
            .principal
            .as_deref()
            .map_or(Class::Standard, |p| p.class);
        // An adapter keeps its own name: that is how the engine knows it.
        let served = ctx.adapter.as_deref().unwrap_or(&model.served_name);
        let mut edits = policy::edits(
            &self.policy,
            info,
            served,
            ctx.principal.as_deref(),
            endpoint.generates(),
            self.gates
                .engine_priority(&model.name, class)
                .filter(|_| endpoint.takes_priority()),
        )?;
        let asked = admission::Asked {
            body_bytes: body.len(),
            max_tokens: info.max_tokens,
            n: info.n.unwrap_or(1),
            generation: endpoint.generates(),
        };
        self.admit(session, ctx, model, &asked)?;
        if !self.queue(session, ctx, model).await? {
            return Ok(());
        }
        if let Some(a) = ctx.adapter.as_deref() {
            let retry = self.retry_after_s;
            self.adapters
                .ensure(model, a)
                .await
                .map_err(|e| ApiError::unavailable(e, retry))?;
        }
        let usage_edit = policy::stream_usage(info, endpoint.has_stream_options())
            .filter(|_| self.limiter.options().inject_stream_usage);
        let strip_usage_event = usage_edit.is_some();
        edits.extend(usage_edit);
        let key = affinity_key(session, model, info);
        let body = body::splice(body, edits);
        let principal = ctx.principal.as_deref().map(|p| p.id.as_str());
        let home = self.home_of_previous(info, model, principal);
        let receipt_header = self.wants_receipt(session, ctx);
        let ex = Exchange {
            affinity_key: key.as_bytes(),
            headers: &ctx.rate_headers,
            strip_usage_event,
            dialect: ctx.dialect,
            pinned: home.as_ref().map(|h| h.instance.as_str()),
            remember: (endpoint == routes::Endpoint::Responses).then_some(Remember {
                homes: &self.homes,
                principal,
            }),
            receipt: receipt_header || self.access_log.enabled(),
            receipt_header,
            queued: ctx.queued,
            adapter: ctx.adapter.as_deref(),
        };
        self.forwarder
            .forward(session, model, body, ex, &mut ctx.outcome)
            .await
    }

    /// `x-llm-router-debug: 1` from an admin (or anyone with auth off): the answer gets
    /// the route receipt.
    fn wants_receipt(&self, session: &Session, ctx: &RequestCtx) -> bool {
        let asked = session
            .req_header()
            .headers
            .get(DEBUG)
            .is_some_and(|v| v.as_bytes() == b"1");
        asked
            && ctx
                .principal
                .as_deref()
                .is_none_or(|p| self.auth.is_admin(p))
    }

    /// A follow-up of a stored response (`previous_response_id`) goes where that
    /// response lives, when the router knows it (for this principal and model).
    fn home_of_previous(
        &self,
        info: &body::RequestInfo,
        model: &Model,
        principal: Option<&str>,
    ) -> Option<stored::Home> {
        let id = info.previous_response_id.as_deref()?;
        self.homes
            .find(id, principal)
            .filter(|h| h.model == model.name)
    }

    /// text-embeddings-inference's `/rerank` names no model: the first reranker the
    /// principal may use (else `missing`), the body as it is.
    async fn nameless_rerank(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        body: Bytes,
        missing: ApiError,
    ) -> Result<(), ApiError> {
        let p = ctx.principal.clone();
        let Some(m) = self
            .visible_models(p.as_deref())
            .find(|m| m.kind == ModelKind::Rerank)
        else {
            return Err(missing);
        };
        ctx.model = Some(m.name.clone());
        let asked = admission::Asked {
            body_bytes: body.len(),
            ..Default::default()
        };
        self.admit(session, ctx, m, &asked)?;
        if !self.queue(session, ctx, m).await? {
            return Ok(());
        }
        let ex = Exchange {
            headers: &ctx.rate_headers,
            ..Default::default()
        };
        self.forwarder
            .forward(session, m, vec![body], ex, &mut ctx.outcome)
            .await
    }

    /// The principal's limits (auth on): the request reserves its estimate and takes its
    /// in-flight places, or is refused with 429 (or 400 for a `max_tokens` over the cap).
    fn admit(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        model: &Model,
        asked: &admission::Asked,
    ) -> Result<(), ApiError> {
        let Some(p) = ctx.principal.clone() else {
            return Ok(());
        };
        let cap = admission::max_tokens_per_request(&p, &model.name);
        let est = admission::estimate(self.limiter.options(), asked, cap)?;
        match self.limiter.admit(&p, &model.name, &est) {
            Ok(mut a) => {
                if self.rate_headers {
                    ctx.rate_headers = std::mem::take(&mut a.headers);
                }
                ctx.outcome.admitted = Some(a);
                Ok(())
            }
            Err(r) => Err(self.deny(session, ctx, Denied::by_policy(r.reason, Some(&p), r.error))),
        }
    }

    /// The principal's `x-ratelimit-*` for an answer that admission did not set them on
    /// (local answers, refusals before admission).
    fn fill_rate_headers(&self, ctx: &mut RequestCtx) {
        if !self.rate_headers || !ctx.rate_headers.is_empty() {
            return;
        }
        if let Some(p) = ctx.principal.as_deref() {
            ctx.rate_headers = self.limiter.peek(p);
        }
    }

    /// Waits for a place at `model`'s engines (its admission queue). `Ok(false)`: the
    /// client left while waiting (nothing to answer).
    async fn queue(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        model: &Model,
    ) -> Result<bool, ApiError> {
        let Some(gate) = self.gates.get(&model.name) else {
            return Ok(true);
        };
        let p = ctx.principal.clone();
        let class = p.as_deref().map_or(Class::Standard, |p| p.class);
        let id = p.as_deref().map_or("-", |p| p.id.as_str());
        // Only a class that is shed looks at the instances' load.
        let opts = self.gates.options();
        let saturated = opts.classes[admission::queue::class_index(class)].shed_when_saturated
            && admission::saturated(model, &opts.saturation);
        let entered = {
            let gone = async {
                let _ = session.downstream_session.read_body_or_idle(true).await;
            };
            gate.enter(class, id, saturated, gone).await
        };
        match entered {
            Ok(e) => {
                ctx.queued = e.as_ref().and_then(Permit::waited);
                ctx._permit = e;
                Ok(true)
            }
            Err(r) => match admission::refused_error(&model.name, r) {
                None => {
                    ctx.outcome.client_gone = true;
                    Ok(false)
                }
                Some((reason, error)) => {
                    let d = Denied::by_policy(reason, p.as_deref(), error);
                    Err(self.deny(session, ctx, d))
                }
            },
        }
    }

    /// At the end of a request: its tokens charged if the relay did not already (the
    /// engine's usage, else the estimate's rule), and the principal's counters.
    fn settle(&self, ctx: &mut RequestCtx, status: u16) {
        let Some(p) = ctx.principal.as_deref() else {
            return;
        };
        let answered = ctx.outcome.status.is_some();
        ctx.outcome.settle(answered);
        let u = ctx.outcome.usage;
        if let (Some(c), Some(l), Some(model)) = (
            ctx.outcome.charged,
            self.sources.ledger.as_deref(),
            ctx.model.as_deref(),
        ) {
            // The charge: as reported, or (estimated) all counted as prompt.
            let completion = u.completion_tokens.unwrap_or(0).min(c.used);
            l.record(&p.id, model, c.used - completion, completion);
        }
        p.series
            .request(status, u.prompt_tokens, u.completion_tokens);
    }

    /// The client's `x-request-id` when it is a sane token, else a new one; set on the
    /// request (so the engine gets it) and returned on every answer.
    fn request_id(&self, session: &mut Session) -> String {
        let given = session.req_header().headers.get(REQUEST_ID);
        let id = request_id::accept(given.and_then(|v| v.to_str().ok()))
            .map_or_else(request_id::new_id, str::to_string);
        let _ = session.req_header_mut().insert_header(REQUEST_ID, &id);
        id
    }

    /// 404 for `name`, listing only the models `principal` may use.
    fn not_found(&self, name: &str, principal: Option<&Principal>) -> ApiError {
        let names: Vec<&str> = self
            .visible_models(principal)
            .map(|m| m.name.as_str())
            .collect();
        ApiError::model_not_found(name, &names)
    }

    /// The `/v1/models` entries of `m`: itself, its aliases and the LoRA adapters
    /// `principal` may use.
    fn model_cards(&self, m: &Model, principal: Option<&Principal>) -> Vec<serde_json::Value> {
        let adapters = m
            .adapter_names()
            .into_iter()
            .filter(|a| principal.is_none_or(|p| p.may_use(a)));
        std::iter::once(m.name.clone())
            .chain(m.aliases.iter().cloned())
            .chain(adapters)
            .map(|id| self.model_card(m, &id))
            .collect()
    }

    /// The `/v1/models` entry of `m` under `id` (its name; or an alias or adapter: then
    /// with `parent`, the configured model's name).
    fn model_card(&self, m: &Model, id: &str) -> serde_json::Value {
        let mut card = json!({
            "id": id,
            "object": "model",
            "created": self.started_unix,
            "owned_by": "llm-router",
            "root": m.served_name,
            "parent": null,
            "kind": m.kind,
            "status": m.status(),
            "instances": m.instances.len(),
        });
        if id != m.name {
            card["parent"] = json!(m.name);
        }
        if m.has_adapter(id) && !m.aliases.iter().any(|a| a == id) {
            card["status"] = json!(m.adapter_status(id));
            card["root"] = json!(m.lora_adapters.get(id).map_or(id, String::as_str));
        }
        card
    }
}

/// The session-affinity key of a request (empty: none, or the policy does not use one).
fn affinity_key(session: &Session, model: &Model, info: &body::RequestInfo) -> String {
    if model.opts.policy != Policy::SessionAffinity {
        return String::new();
    }
    match &model.opts.affinity_key {
        AffinityKey::Header(name) => session
            .req_header()
            .headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        AffinityKey::BodyUser => info.user.clone().unwrap_or_default(),
    }
}

/// The routing view of a request body: JSON, or the form of the audio endpoints.
async fn inspect(
    session: &Session,
    endpoint: routes::Endpoint,
    body: &Bytes,
) -> Result<body::RequestInfo, ApiError> {
    if !endpoint.takes_form() {
        return body::inspect_shared(body).await;
    }
    let ct = session
        .req_header()
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(b) = multipart::boundary(ct).map(str::to_string) else {
        return Err(ApiError::bad_request(
            "invalid_content_type",
            "This endpoint takes a multipart/form-data body (with a boundary)",
        ));
    };
    request_body::parse_off_thread(body, move |body| multipart::inspect(body, &b)).await
}

/// Whether another model may take a request that `e` refused: no instance was
/// reachable, or the model's admission queue was full (nothing reached an engine).
fn falls_back(e: &ApiError) -> bool {
    e.status == http::StatusCode::SERVICE_UNAVAILABLE
        && matches!(e.code, "no_instance_available" | "server_overloaded")
}

/// 400 unless a model of `model`'s kind can answer `endpoint`.
fn serves(model: &Model, endpoint: routes::Endpoint, path: &str) -> Result<(), ApiError> {
    if endpoint.accepts(model.kind) {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "model_not_supported",
        format!(
            "Model `{}` is {} model and cannot serve {}",
            model.name,
            kind_article(model.kind),
            path
        ),
    )
    .with_param("model"))
}

fn kind_article(k: ModelKind) -> &'static str {
    match k {
        ModelKind::Llm => "a language",
        ModelKind::Embedding => "an embedding",
        ModelKind::Rerank => "a reranking",
    }
}

/// Whether the client already has a (final) response header: a 100 Continue does not count.
fn response_started(session: &Session) -> bool {
    session
        .response_written()
        .is_some_and(|h| !h.status.is_informational())
}

/// Writes a complete JSON response (with `extra` headers); a client that is gone by now
/// is not an error.
async fn write_json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    extra: &[(&'static str, String)],
) {
    let _ = write_response(session, status, body, extra).await;
}

async fn write_response(
    session: &mut Session,
    status: u16,
    body: Bytes,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let mut h = ResponseHeader::build(status, Some(4 + extra.len()))?;
    h.insert_header(header::CONTENT_TYPE, "application/json")?;
    h.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    for (k, v) in extra {
        h.insert_header(*k, v)?;
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await
}

/// `ids`: the request id, and the dialect of the error body.
async fn write_error(
    session: &mut Session,
    e: &ApiError,
    (request_id, dialect): (&str, Dialect),
    rate: &[(&'static str, String)],
) {
    let mut extra = vec![(REQUEST_ID, request_id.to_string())];
    extra.extend(rate.iter().cloned());
    if let Some(s) = e.retry_after {
        extra.push(("retry-after", s.to_string()));
    }
    extra.extend(e.headers.iter().cloned());
    // After an error the rest of the request body may still be unread: don't reuse the
    // connection for another request.
    session.set_keepalive(None);
    let _ = write_response(session, e.status.as_u16(), e.body_in(dialect), &extra).await;
}

#[async_trait]
impl ProxyHttp for Router {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    /// Per-request settings of the client connection, before anything is read: the idle
    /// limit between requests (the client's own `Keep-Alive` does not extend it), the
    /// longest silence within a body and the longest stall of a write.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let t = &self.timeouts;
        session.set_keepalive(Some(t.keepalive_idle.as_secs_f64().ceil().max(1.0) as u64));
        session
            .downstream_session
            .set_read_timeout(Some(t.body_idle));
        session
            .downstream_session
            .set_write_timeout(Some(t.write_idle));
        let peer = session.client_addr().and_then(|a| a.as_inet()).copied();
        ctx._on_connection = self.connections.begin(peer);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.start = Some(Instant::now());
        ctx._active = Some(drain::ActiveRequest::new());
        ctx.endpoint = "local";
        ctx.dialect = Dialect::of_path(session.req_header().uri.path());
        ctx.request_id = self.request_id(session);
        if self.draining.is_set() {
            // Leaving (upgrade or stop): answer with `Connection: close`, so that clients do
            // not keep an idle connection that this process is about to close under them.
            session.set_keepalive(None);
        }
        if let Err(e) = self.handle(session, ctx).await {
            if !response_started(session) {
                self.fill_rate_headers(ctx);
                let ids = (ctx.request_id.as_str(), ctx.dialect);
                write_error(session, &e, ids, &ctx.rate_headers).await;
                request_body::discard_rest(session).await;
            }
            ctx.error = Some(e);
        }
        if ctx.outcome.upstream_cut {
            // An error (not Ok) makes Pingora drop the connection instead of finishing the
            // body cleanly; `fail_to_proxy` below writes nothing more.
            return Err(
                Error::explain(ErrorType::ReadError, "engine response cut mid-body").into_up(),
            );
        }
        Ok(true)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _: &mut RequestCtx,
    ) -> FailToProxy {
        let started = response_started(session);
        if !started {
            // Not expected (request_filter answers its own errors), but never plain text.
            write_error(
                session,
                &ApiError::bad_gateway(format!("proxy error: {e}")),
                ("", Dialect::OpenAi),
                &[],
            )
            .await;
        }
        FailToProxy {
            error_code: if started { 0 } else { 502 },
            can_reuse_downstream: false,
        }
    }

    async fn upstream_peer(&self, _: &mut Session, _: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        // Unreachable: request_filter answers every request.
        Error::e_explain(
            ErrorType::InternalError,
            "requests are forwarded by request_filter",
        )
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let h = session.req_header();
        let elapsed = ctx.start.map(|s| s.elapsed()).unwrap_or_default();
        let status = ctx
            .error
            .as_ref()
            .map(|e| e.status.as_u16())
            .or(ctx.outcome.status)
            .unwrap_or(0);
        self.settle(ctx, status);
        let model = ctx.model.as_deref().unwrap_or("none");
        let instance = ctx.outcome.instance.as_deref().unwrap_or("none");
        if ctx.endpoint != "local" {
            metrics::REQUESTS
                .with_label_values(&[model, instance, ctx.endpoint, metrics::status_class(status)])
                .inc();
            metrics::DURATION
                .with_label_values(&[model, ctx.endpoint])
                .observe(elapsed.as_secs_f64());
        }
        if let Some(e) = &ctx.error {
            if e.status.is_server_error() {
                warn!(request_id = %ctx.request_id, method = %h.method, path = %h.uri.path(), model, status,
                    duration_ms = elapsed.as_secs_f64() * 1000.0, error = %e.message, "request failed");
            }
        }
        if !self.access_log.enabled() {
            return;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let charged = ctx.outcome.charged;
        let principal = ctx.principal.as_deref();
        let record = AccessRecord {
            time: now_rfc3339(),
            request_id: &ctx.request_id,
            client: session
                .client_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            method: h.method.as_str(),
            path: h.uri.path(),
            model: ctx.model.as_deref(),
            instance: ctx.outcome.instance.as_deref(),
            status,
            duration_ms: ms(elapsed),
            ttfb_ms: ctx.outcome.ttfb.map(ms),
            prompt_tokens: ctx.outcome.usage.prompt_tokens,
            completion_tokens: ctx.outcome.usage.completion_tokens,
            principal: principal.map(|p| p.id.as_str()),
            class: principal.map(|p| p.class.label()),
            queued_ms: ctx.queued.map(ms),
            reserved_tokens: charged.map(|c| c.reserved),
            usage_estimated: charged.map(|c| c.estimated),
            failovers: &ctx.outcome.failovers,
            route: ctx.outcome.route.as_deref(),
            error: ctx
                .error
                .as_ref()
                .map(|e| e.message.as_str())
                .or(ctx.outcome.stream_error.as_deref()),
        };
        self.access_log.write(&record);
    }
}

/// Shared so tests and `main` build the same service.
pub type SharedRouter = Arc<Router>;
