//! `admission:` beyond tokens and request policy: the per-model queue (`max_in_flight`,
//! classes, saturation), resolved. The queue itself is `crate::admission::queue`.

use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::validate::Checker;
use super::{ModelConfig, ModelKind};

/// One priority class (`admission.classes.<name>`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassOptions {
    /// Share of the free places between `standard` and `sheddable` (critical always goes
    /// first).
    pub weight: u32,
    /// Longest wait in the queue; then 503.
    #[serde(with = "super::secs", rename = "max_queue_wait_s")]
    pub max_queue_wait: Duration,
    /// Refused at once (503) while every instance of the model is saturated.
    pub shed_when_saturated: bool,
    /// `priority` written into the body for models whose engines schedule by priority
    /// (`scheduling_policy: priority`); vLLM runs lower numbers first.
    pub engine_priority: i64,
}

/// `admission.saturation`: when an instance counts as saturated (from its scrape).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Saturation {
    pub waiting_per_instance: f64,
    pub kv_cache_usage: f64,
}

/// Per model: its cap and whether its engines take a priority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelAdmission {
    /// Requests at its engines at once; the rest wait. `None`: no cap, no queue.
    pub max_in_flight: Option<usize>,
    /// `scheduling_policy: priority` in its `model_config`.
    pub priority_scheduling: bool,
}

/// The admission queue's settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueOptions {
    /// `critical`, `standard`, `sheddable`, in that order.
    pub classes: [ClassOptions; 3],
    /// Requests waiting per model at most (`admission.queue.max_waiting`); then 503.
    pub max_waiting: usize,
    pub saturation: Saturation,
    /// Share of each model's cap that only `critical` requests may use (rounded down,
    /// always leaving one place to the others), so that a critical request finds a place
    /// at once even while every other place is taken. Default 0.1.
    pub critical_reserve: f64,
    pub models: IndexMap<String, ModelAdmission>,
}

impl Default for QueueOptions {
    fn default() -> Self {
        let class = |weight, wait, shed, prio| ClassOptions {
            weight,
            max_queue_wait: Duration::from_secs(wait),
            shed_when_saturated: shed,
            engine_priority: prio,
        };
        QueueOptions {
            classes: [
                class(8, 120, false, -10),
                class(4, 30, false, 0),
                class(1, 5, true, 10),
            ],
            max_waiting: 1024,
            saturation: Saturation {
                waiting_per_instance: 8.0,
                kv_cache_usage: 0.95,
            },
            critical_reserve: 0.1,
            models: IndexMap::new(),
        }
    }
}

/// `admission.classes.<name>`; every key optional (merged over the default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClass {
    pub weight: Option<u32>,
    pub max_queue_wait_s: Option<f64>,
    pub shed_when_saturated: Option<bool>,
    pub engine_priority: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClasses {
    pub critical: Option<RawClass>,
    pub standard: Option<RawClass>,
    pub sheddable: Option<RawClass>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub max_waiting: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSaturation {
    pub waiting_per_instance: Option<f64>,
    pub kv_cache_usage: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelAdmission {
    pub max_in_flight: Option<u64>,
}

/// An engine flag by either spelling (`max_num_seqs`, `max-num-seqs`).
fn flag<'a>(m: &'a ModelConfig, name: &str) -> Option<&'a serde_yaml::Value> {
    m.engine_flags
        .get(name)
        .or_else(|| m.engine_flags.get(&name.replace('_', "-")))
}

/// The default cap of an LLM: 1.25 × Σ `max_num_seqs` of its instances, when known.
fn default_cap(m: &ModelConfig) -> Option<usize> {
    if m.kind != ModelKind::Llm {
        return None;
    }
    let v = flag(m, "max_num_seqs")?;
    let seqs = v
        .as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))?;
    Some(((seqs as f64) * m.instances.len() as f64 * 1.25).ceil() as usize)
}

pub(super) fn resolve_queue(
    c: &mut Checker<'_>,
    critical_reserve: Option<f64>,
    classes: Option<RawClasses>,
    queue: RawQueue,
    saturation: RawSaturation,
    models: &IndexMap<String, RawModelAdmission>,
    configured: &[ModelConfig],
) -> QueueOptions {
    let d = QueueOptions::default();
    let raw = classes.unwrap_or_default();
    let mut out = QueueOptions {
        classes: d.classes.clone(),
        ..QueueOptions::default()
    };
    for (i, (name, r)) in [
        ("critical", raw.critical),
        ("standard", raw.standard),
        ("sheddable", raw.sheddable),
    ]
    .into_iter()
    .enumerate()
    {
        let Some(r) = r else { continue };
        let base = format!("admission.classes.{name}");
        let o = &mut out.classes[i];
        if r.weight == Some(0) {
            c.err(format!("{base}.weight"), "must be at least 1");
        }
        o.weight = r.weight.unwrap_or(o.weight).max(1);
        o.max_queue_wait = c.secs(
            &format!("{base}.max_queue_wait_s"),
            r.max_queue_wait_s,
            o.max_queue_wait,
        );
        o.shed_when_saturated = r.shed_when_saturated.unwrap_or(o.shed_when_saturated);
        o.engine_priority = r.engine_priority.unwrap_or(o.engine_priority);
    }
    if queue.max_waiting == Some(0) {
        c.err("admission.queue.max_waiting", "must be at least 1");
    }
    out.max_waiting = queue.max_waiting.unwrap_or(d.max_waiting).max(1);
    out.saturation = resolve_saturation(c, saturation, d.saturation);
    out.critical_reserve = match critical_reserve {
        Some(f) if !(0.0..1.0).contains(&f) => {
            c.err(
                "admission.critical_reserve",
                format!("{f} is not a fraction in [0, 1)"),
            );
            d.critical_reserve
        }
        f => f.unwrap_or(d.critical_reserve),
    };
    for (name, _) in models
        .iter()
        .filter(|(n, _)| !configured.iter().any(|m| &m.name == *n))
    {
        c.err(format!("admission.models.{name}"), "not a configured model");
    }
    for m in configured {
        let own = models.get(&m.name).and_then(|r| r.max_in_flight);
        if own == Some(0) {
            c.err(
                format!("admission.models.{}.max_in_flight", m.name),
                "must be at least 1",
            );
        }
        let priority = flag(m, "scheduling_policy").and_then(|v| v.as_str()) == Some("priority");
        out.models.insert(
            m.name.clone(),
            ModelAdmission {
                max_in_flight: own.map(|n| n.max(1) as usize).or_else(|| default_cap(m)),
                priority_scheduling: priority,
            },
        );
    }
    out
}

fn resolve_saturation(c: &mut Checker<'_>, r: RawSaturation, d: Saturation) -> Saturation {
    let waiting = match r.waiting_per_instance {
        Some(w) if !(w.is_finite() && w >= 0.0) => {
            c.err(
                "admission.saturation.waiting_per_instance",
                format!("{w} is not a number >= 0"),
            );
            d.waiting_per_instance
        }
        w => w.unwrap_or(d.waiting_per_instance),
    };
    let kv = match r.kv_cache_usage {
        Some(k) if !(k > 0.0 && k <= 1.0) => {
            c.err(
                "admission.saturation.kv_cache_usage",
                format!("{k} is not a fraction in (0, 1]"),
            );
            d.kv_cache_usage
        }
        k => k.unwrap_or(d.kv_cache_usage),
    };
    Saturation {
        waiting_per_instance: waiting,
        kv_cache_usage: kv,
    }
}
