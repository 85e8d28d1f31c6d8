//! Engine dialects: which `/metrics` names mean "running", "waiting", "KV-cache usage"
//! and token counters for each serving engine.
//!
//! One pass over the page fills the accumulators of every dialect at once; the engine is
//! then the configured one, or the first whose load gauges are present.

use serde::Serialize;

use super::prom::{for_each_wanted, ParseError};

pub use crate::config::Engine;

/// Metric names of one engine. `kv` lists fallbacks in order (vLLM V0 says `gpu_cache`).
struct Names {
    engine: Engine,
    running: &'static str,
    waiting: &'static str,
    kv: &'static [&'static str],
    prompt_tokens: Option<&'static str>,
    generation_tokens: Option<&'static str>,
}

const DIALECTS: [Names; 5] = [
    Names {
        engine: Engine::Vllm,
        running: "vllm:num_requests_running",
        waiting: "vllm:num_requests_waiting",
        kv: &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"],
        prompt_tokens: Some("vllm:prompt_tokens_total"),
        generation_tokens: Some("vllm:generation_tokens_total"),
    },
    Names {
        engine: Engine::Sglang,
        running: "sglang:num_running_reqs",
        waiting: "sglang:num_queue_reqs",
        kv: &["sglang:token_usage"],
        prompt_tokens: Some("sglang:prompt_tokens_total"),
        generation_tokens: Some("sglang:generation_tokens_total"),
    },
    Names {
        engine: Engine::Llamacpp,
        running: "llamacpp:requests_processing",
        waiting: "llamacpp:requests_deferred",
        kv: &["llamacpp:kv_cache_usage_ratio"],
        prompt_tokens: Some("llamacpp:prompt_tokens_total"),
        generation_tokens: Some("llamacpp:tokens_predicted_total"),
    },
    Names {
        engine: Engine::Tgi,
        running: "tgi_batch_current_size",
        waiting: "tgi_queue_size",
        kv: &[],
        prompt_tokens: None,
        generation_tokens: None,
    },
    Names {
        engine: Engine::Trtllm,
        running: "trtllm_num_requests_running",
        waiting: "trtllm_num_requests_waiting",
        kv: &["trtllm_kv_cache_utilization"],
        prompt_tokens: None,
        generation_tokens: None,
    },
];

/// What one scrape says about an instance's load.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EngineLoad {
    pub engine: Engine,
    /// Summed over the series (data-parallel engines report one per `engine` label).
    pub running: f64,
    pub waiting: f64,
    /// 0..1, averaged over the series; `None` when the engine does not report it.
    pub kv_usage: Option<f64>,
    pub prompt_tokens_total: Option<f64>,
    pub generation_tokens_total: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScrapeError {
    #[error("malformed metrics page: {0}")]
    Parse(#[from] ParseError),
    #[error("no load metrics of a known engine (vllm, sglang, llamacpp, tgi, trtllm) on the page")]
    UnknownEngine,
    #[error("the page has no `{0}` metric (engine set to {1:?})")]
    Missing(&'static str, Engine),
}

#[derive(Default, Clone, Copy)]
struct Acc {
    sum: f64,
    n: u32,
}

impl Acc {
    fn add(&mut self, v: f64) {
        // llama.cpp reports `nan` before its first request: no information, not a number.
        if v.is_finite() {
            self.sum += v;
        }
        self.n += 1;
    }
    fn sum(self) -> Option<f64> {
        (self.n > 0).then_some(self.sum)
    }
    fn mean(self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

/// Reads an instance's load from its `/metrics` page. `engine` forces a dialect;
/// `None` detects it from the names present.
pub fn extract(text: &str, engine: Option<Engine>) -> Result<EngineLoad, ScrapeError> {
    // Per dialect: running, waiting, kv (one per fallback), prompt, generation.
    let mut acc = [[Acc::default(); 6]; DIALECTS.len()];
    let wanted = |name: &str| {
        DIALECTS.iter().any(|d| {
            name == d.running
                || name == d.waiting
                || d.kv.contains(&name)
                || Some(name) == d.prompt_tokens
                || Some(name) == d.generation_tokens
        })
    };
    for_each_wanted(text, wanted, |s| {
        for (d, names) in DIALECTS.iter().enumerate() {
            let slot = if s.name == names.running {
                0
            } else if s.name == names.waiting {
                1
            } else if let Some(k) = names.kv.iter().position(|n| *n == s.name) {
                2 + k
            } else if Some(s.name) == names.prompt_tokens {
                4
            } else if Some(s.name) == names.generation_tokens {
                5
            } else {
                continue;
            };
            acc[d][slot].add(s.value);
        }
    })?;
    let d = match engine {
        Some(e) => DIALECTS
            .iter()
            .position(|n| n.engine == e)
            .unwrap_or_default(),
        None => (0..DIALECTS.len())
            .find(|&d| acc[d][0].n > 0 || acc[d][1].n > 0)
            .ok_or(ScrapeError::UnknownEngine)?,
    };
    let names = &DIALECTS[d];
    let a = &acc[d];
    let running = a[0]
        .sum()
        .ok_or(ScrapeError::Missing(names.running, names.engine))?;
    let waiting = a[1]
        .sum()
        .ok_or(ScrapeError::Missing(names.waiting, names.engine))?;
    Ok(EngineLoad {
        engine: names.engine,
        running,
        waiting,
        kv_usage: a[2].mean().or(a[3].mean()).map(|k| k.clamp(0.0, 1.0)),
        prompt_tokens_total: a[4].sum(),
        generation_tokens_total: a[5].sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_vllm_v1_page() {
        let text = include_str!("../../tests/fixtures/vllm_metrics_sample.txt");
        let l = extract(text, None).unwrap();
        assert_eq!(l.engine, Engine::Vllm);
        assert_eq!(l.running, 2.0);
        assert_eq!(l.waiting, 10.0);
        assert!((l.kv_usage.unwrap() - 0.857142857).abs() < 1e-6);
        assert_eq!(l.prompt_tokens_total, Some(118.0));
        assert_eq!(l.generation_tokens_total, Some(1062.0));
    }

    #[test]
    fn vllm_v0_falls_back_to_gpu_cache_and_sums_data_parallel_engines() {
        let text = "# TYPE vllm:num_requests_running gauge\n\
            vllm:num_requests_running{engine=\"0\"} 3\nvllm:num_requests_running{engine=\"1\"} 4\n\
            vllm:num_requests_waiting{engine=\"0\"} 1\nvllm:num_requests_waiting{engine=\"1\"} 0\n\
            vllm:gpu_cache_usage_perc{engine=\"0\"} 0.2\nvllm:gpu_cache_usage_perc{engine=\"1\"} 0.4\n";
        let l = extract(text, None).unwrap();
        assert_eq!((l.running, l.waiting), (7.0, 1.0));
        assert!((l.kv_usage.unwrap() - 0.3).abs() < 1e-9);
        assert_eq!(l.prompt_tokens_total, None);
    }

    #[test]
    fn sglang_page() {
        let text = "sglang:num_running_reqs{model_name=\"m\"} 5\nsglang:num_queue_reqs{model_name=\"m\"} 2\n\
                    sglang:token_usage{model_name=\"m\"} 0.5\nsglang:prompt_tokens_total{model_name=\"m\"} 10\n";
        let l = extract(text, None).unwrap();
        assert_eq!(l.engine, Engine::Sglang);
        assert_eq!((l.running, l.waiting, l.kv_usage), (5.0, 2.0, Some(0.5)));
        assert_eq!(l.prompt_tokens_total, Some(10.0));
    }

    #[test]
    fn llamacpp_page_with_nan() {
        let text =
            "# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.\n\
                    # TYPE llamacpp:kv_cache_usage_ratio gauge\nllamacpp:kv_cache_usage_ratio nan\n\
                    llamacpp:requests_processing 1\nllamacpp:requests_deferred nan\n\
                    llamacpp:tokens_predicted_total 42\n";
        let l = extract(text, None).unwrap();
        assert_eq!(l.engine, Engine::Llamacpp);
        assert_eq!((l.running, l.waiting), (1.0, 0.0));
        assert_eq!(l.kv_usage, Some(0.0));
        assert_eq!(l.generation_tokens_total, Some(42.0));
    }

    #[test]
    fn tgi_and_trtllm_pages() {
        let l = extract("tgi_queue_size 4\ntgi_batch_current_size 8\n", None).unwrap();
        assert_eq!(
            (l.engine, l.running, l.waiting, l.kv_usage),
            (Engine::Tgi, 8.0, 4.0, None)
        );
        let l = extract(
            "trtllm_num_requests_waiting 1\ntrtllm_num_requests_running 2\ntrtllm_kv_cache_utilization 0.25\n",
            None,
        )
        .unwrap();
        assert_eq!((l.engine, l.kv_usage), (Engine::Trtllm, Some(0.25)));
    }

    #[test]
    fn forced_engine_and_errors() {
        let vllm = "vllm:num_requests_running 1\nvllm:num_requests_waiting 0\n";
        assert_eq!(
            extract(vllm, Some(Engine::Sglang)).unwrap_err(),
            ScrapeError::Missing("sglang:num_running_reqs", Engine::Sglang)
        );
        assert_eq!(
            extract("other_metric 1\n", None).unwrap_err(),
            ScrapeError::UnknownEngine
        );
        assert!(matches!(
            extract("vllm:num_requests_running{", None),
            Err(ScrapeError::Parse(_))
        ));
    }
}
