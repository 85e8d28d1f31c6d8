//! `admission.request_policy`: what the router changes in, or refuses about, a request
//! body before an engine sees it. Fields only the router may set (`priority`,
//! `cache_salt`, `kv_transfer_params`, `vllm_xargs`) are overwritten in place (the body
//! is spliced, never re-serialised), and each principal's generation requests carry its
//! own `cache_salt` so that tenants never share prefix-cache entries.

use crate::auth::{self, Principal};
use crate::config::{CacheSalt, GuardedField, RequestPolicy};
use crate::http::ApiError;

use super::body::{model_edit, Edit, RequestInfo};

/// The edits of a request's body for the engine serving `served_name`. `generation`:
/// chat or completions (the requests that fill an engine's prefix cache).
/// `engine_priority`: the class's `priority` for an engine that schedules by priority
/// (written in place of, or in addition to, the client's).
pub fn edits(
    policy: &RequestPolicy,
    info: &RequestInfo,
    served_name: &str,
    principal: Option<&Principal>,
    generation: bool,
    engine_priority: Option<i64>,
) -> Result<Vec<Edit>, ApiError> {
    if let Some(n) = info.n.filter(|n| *n > policy.max_n) {
        return Err(ApiError::bad_request(
            "invalid_value",
            format!(
                "`n` is {n}; at most {} (admission.request_policy.max_n)",
                policy.max_n
            ),
        )
        .with_param("n"));
    }
    let salt = principal
        .filter(|_| generation && policy.cache_salt == CacheSalt::PerPrincipal)
        .map(auth::cache_salt_json);
    let mut out: Vec<Edit> = model_edit(info, served_name).into_iter().collect();
    if info.form {
        // A form has no JSON fields to guard or add: only `model` changes.
        return Ok(out);
    }
    let (mut salted, mut prioritised) = (false, false);
    for (field, span) in &info.guarded {
        let text = match (field, &salt, engine_priority) {
            (GuardedField::CacheSalt, Some(s), _) => {
                salted = true;
                s.to_string()
            }
            (GuardedField::Priority, _, Some(p)) => {
                prioritised = true;
                p.to_string()
            }
            _ if policy.strip_fields.contains(field) => field.neutral().to_string(),
            _ => continue,
        };
        out.push(Edit { span: *span, text });
    }
    let at = info.open + 1;
    if let Some(s) = salt.filter(|_| !salted) {
        out.push(Edit {
            span: (at, at),
            text: format!("\"cache_salt\":{s},"),
        });
    }
    if let Some(p) = engine_priority.filter(|_| !prioritised) {
        out.push(Edit {
            span: (at, at),
            text: format!("\"priority\":{p},"),
        });
    }
    Ok(out)
}

/// For a streamed generation whose client did not ask for usage: the edit that asks
/// the engine for it (`stream_options.include_usage: true`). The caller then takes the
/// extra event out of the stream ([`super::usage_event`]). `None`: nothing to inject (no
/// stream, the client asked already, or `stream_options` is not an object: the engine
/// answers that with its own 400).
pub fn stream_usage(info: &RequestInfo, generation: bool) -> Option<Edit> {
    if !info.stream || !generation {
        return None;
    }
    match &info.stream_options {
        None => {
            let at = info.open + 1;
            Some(Edit {
                span: (at, at),
                text: "\"stream_options\":{\"include_usage\":true},".into(),
            })
        }
        Some(so) if so.include_usage() => None,
        Some(so) => {
            let mut v = match &so.value {
                serde_json::Value::Object(m) => m.clone(),
                serde_json::Value::Null => serde_json::Map::new(),
                _ => return None,
            };
            v.insert("include_usage".into(), serde_json::Value::Bool(true));
            Some(Edit {
                span: so.span,
                text: serde_json::Value::Object(v).to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::body::{inspect, splice};
    use bytes::Bytes;

    fn principal(id: &str) -> std::sync::Arc<Principal> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.yaml");
        std::fs::write(&p, format!("version: 1\nprincipals:\n  - id: {id}\n")).unwrap();
        let (keys, _) = auth::Keys::load(&p, &["m"]).unwrap();
        keys.principal(id).unwrap().clone()
    }

    fn apply(body: &str, principal: Option<&Principal>, generation: bool) -> serde_json::Value {
        let body = Bytes::from(body.to_string());
        let info = inspect(&body).unwrap();
        let e = edits(
            &RequestPolicy::default(),
            &info,
            "engine-m",
            principal,
            generation,
            None,
        )
        .unwrap();
        let out: Vec<u8> = splice(&body, e).concat();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn client_fields_are_overwritten_and_each_principal_gets_its_salt() {
        let a = principal("team-a");
        let b = principal("team-b");
        let sent = r#"{"model":"m","priority":-100,"cache_salt":"steal","kv_transfer_params":{"x":1},"vllm_xargs":{"y":2},"messages":[]}"#;
        let v = apply(sent, Some(&a), true);
        assert_eq!(v["model"], "engine-m");
        assert_eq!(v["priority"], 0);
        assert_eq!(v["kv_transfer_params"], serde_json::Value::Null);
        assert_eq!(v["vllm_xargs"], serde_json::Value::Null);
        assert_eq!(v["cache_salt"], auth::cache_salt(&a));
        assert_eq!(v["messages"], serde_json::json!([]));
        // Inserted when absent; another principal, another salt; stable.
        let v2 = apply(r#"  {"model":"m"}"#, Some(&b), true);
        assert_eq!(v2["cache_salt"], auth::cache_salt(&b));
        assert_ne!(v2["cache_salt"], v["cache_salt"]);
        assert_eq!(auth::cache_salt(&a), auth::cache_salt(&principal("team-a")));
        // No principal (auth off) or not a generation: the client's salt is removed.
        assert_eq!(
            apply(sent, None, true)["cache_salt"],
            serde_json::Value::Null
        );
        let emb = apply(r#"{"model":"m","input":"x"}"#, Some(&a), false);
        assert!(emb.get("cache_salt").is_none());
    }

    #[test]
    fn streams_ask_for_usage_unless_the_client_did() {
        let with = |body: &str| {
            let b = Bytes::from(body.to_string());
            let info = inspect(&b).unwrap();
            let e = stream_usage(&info, true);
            let out: Vec<u8> = splice(&b, e.clone().into_iter().collect()).concat();
            (
                e.is_some(),
                serde_json::from_slice::<serde_json::Value>(&out).unwrap(),
            )
        };
        let (injected, v) = with(r#"{"model":"m","stream":true}"#);
        assert!(injected);
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true})
        );
        let (injected, v) =
            with(r#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}"#);
        assert!(injected);
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true, "x": 1})
        );
        assert!(with(r#"{"model":"m","stream":true,"stream_options":null}"#).0);
        // Asked for already, not a stream, not an object: left alone.
        for body in [
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"model":"m","stream":false}"#,
            r#"{"model":"m","stream":true,"stream_options":"x"}"#,
        ] {
            let (injected, v) = with(body);
            assert!(!injected, "{body}");
            assert_eq!(v, serde_json::from_str::<serde_json::Value>(body).unwrap());
        }
        let b = Bytes::from_static(br#"{"model":"m","stream":true}"#);
        assert!(stream_usage(&inspect(&b).unwrap(), false).is_none());
    }

    #[test]
    fn engines_that_schedule_by_priority_get_the_class_priority() {
        let run = |body: &str| {
            let b = Bytes::from(body.to_string());
            let info = inspect(&b).unwrap();
            let e = edits(&RequestPolicy::default(), &info, "m", None, true, Some(-10)).unwrap();
            serde_json::from_slice::<serde_json::Value>(&splice(&b, e).concat()).unwrap()
        };
        assert_eq!(run(r#"{"model":"m","priority":-1000}"#)["priority"], -10);
        assert_eq!(run(r#"{"model":"m"}"#)["priority"], -10);
    }

    #[test]
    fn n_over_the_cap_is_a_400() {
        let body = Bytes::from_static(br#"{"model":"m","n":9}"#);
        let info = inspect(&body).unwrap();
        let e = edits(&RequestPolicy::default(), &info, "m", None, true, None).unwrap_err();
        assert_eq!((e.status.as_u16(), e.param), (400, Some("n")));
        let ok = Bytes::from_static(br#"{"model":"m","n":8}"#);
        assert!(edits(
            &RequestPolicy::default(),
            &inspect(&ok).unwrap(),
            "m",
            None,
            true,
            None
        )
        .is_ok());
    }
}
