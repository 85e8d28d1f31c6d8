//! `GET`/`DELETE /v1/responses/{id}`, `GET /v1/responses/{id}/input_items` and
//! `POST /v1/responses/{id}/cancel`: sent to the instance that holds the response (see
//! [`super::stored`]), as they are. An id the router does not know (never seen, expired,
//! or another principal's) is a 404 in OpenAI's words; nothing is guessed.

use pingora::proxy::Session;

use super::forward::Exchange;
use super::{RequestCtx, Router};
use crate::http::ApiError;

/// What a stored-response path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Get,
    Delete,
    Cancel,
    InputItems,
}

/// `{id}` or `{id}/cancel` (POST), `{id}` or `{id}/input_items` (GET), `{id}` (DELETE).
fn parse<'p>(method: &str, rest: &'p str) -> Option<(&'p str, Action)> {
    let (id, action) = match rest.split_once('/') {
        None => (rest, None),
        Some((id, a)) => (id, Some(a)),
    };
    let action = match (method, action) {
        ("GET" | "HEAD", None) => Action::Get,
        ("GET" | "HEAD", Some("input_items")) => Action::InputItems,
        ("DELETE", None) => Action::Delete,
        ("POST", Some("cancel")) => Action::Cancel,
        _ => return None,
    };
    (!id.is_empty()).then_some((id, action))
}

impl Router {
    /// One of the stored-response routes; `rest` is the path after `/v1/responses/`.
    pub(super) async fn stored_response(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rest: &str,
    ) -> Result<(), ApiError> {
        let h = session.req_header();
        let Some((id, action)) = parse(h.method.as_str(), rest) else {
            return Err(ApiError::path_not_found(h.uri.path()));
        };
        ctx.endpoint = "responses";
        self.may_call(session, ctx, "responses")?;
        let principal = ctx.principal.as_deref().map(|p| p.id.as_str());
        let Some(home) = self.homes.find(id, principal) else {
            return Err(ApiError::response_not_found(id));
        };
        let model = self.allowed_model(session, ctx, &home.model)?;
        ctx.model = Some(model.name.clone());
        let body = self.read_body(session, ctx).await?;
        let ex = Exchange {
            pinned: Some(&home.instance),
            dialect: ctx.dialect,
            headers: &ctx.rate_headers,
            ..Default::default()
        };
        self.forwarder
            .forward(session, model, vec![body], ex, &mut ctx.outcome)
            .await?;
        if action == Action::Delete && ctx.outcome.status.is_some_and(|s| s < 300) {
            self.homes.forget(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_a_stored_response() {
        assert_eq!(parse("GET", "resp_1"), Some(("resp_1", Action::Get)));
        assert_eq!(parse("HEAD", "resp_1"), Some(("resp_1", Action::Get)));
        assert_eq!(parse("DELETE", "resp_1"), Some(("resp_1", Action::Delete)));
        assert_eq!(
            parse("POST", "resp_1/cancel"),
            Some(("resp_1", Action::Cancel))
        );
        assert_eq!(
            parse("GET", "resp_1/input_items"),
            Some(("resp_1", Action::InputItems))
        );
        for (m, rest) in [
            ("POST", "resp_1"),
            ("DELETE", "resp_1/cancel"),
            ("GET", "resp_1/cancel"),
            ("POST", "/cancel"),
            ("GET", "resp_1/input_items/x"),
        ] {
            assert_eq!(parse(m, rest), None, "{m} {rest}");
        }
    }
}
