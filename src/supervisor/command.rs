//! From config to the exact command line and environment of an engine process.

use std::path::PathBuf;

use indexmap::IndexMap;
use serde::Serialize;
use serde_yaml::Value;

use crate::config::{InstanceConfig, ModelConfig, SupervisorOptions};

/// Everything needed to (re)start one engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineSpec {
    pub instance: String,
    pub model: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Set on top of the router's own environment.
    pub env: Vec<(String, String)>,
    /// GPUs the engine uses, ascending (engines sharing one start one after another).
    pub gpus: Vec<u32>,
    pub log_path: PathBuf,
}

/// `<command> <model_tag> --host H --port P` and every `model_config` key as a flag.
pub fn engine_spec(m: &ModelConfig, i: &InstanceConfig, opts: &SupervisorOptions) -> EngineSpec {
    let mut argv = m.command.clone();
    if let Some(tag) = &m.model_tag {
        argv.push(tag.clone());
    }
    argv.extend([
        "--host".into(),
        i.host.clone(),
        "--port".into(),
        i.port.to_string(),
    ]);
    argv.extend(flag_args(&m.engine_flags));
    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in m.env.iter().chain(&i.env) {
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
    let gpus = i
        .cuda_device
        .as_ref()
        .map(|d| d.0.clone())
        .unwrap_or_default();
    if !gpus.is_empty() {
        let list = gpus
            .iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(",");
        env.retain(|(k, _)| k != "CUDA_VISIBLE_DEVICES");
        env.push(("CUDA_VISIBLE_DEVICES".into(), list));
    }
    // Locks are always taken in ascending order, so that two engines sharing GPUs in
    // different orders ([2, 3] and [3, 2]) cannot wait for each other.
    let mut gpus = gpus;
    gpus.sort_unstable();
    gpus.dedup();
    EngineSpec {
        instance: i.id.clone(),
        model: m.name.clone(),
        argv,
        env,
        gpus,
        log_path: opts.log_dir.join(format!("{}.log", sanitize(&i.id))),
    }
}

/// `max_model_len: 500` -> `--max-model-len 500`; `true` -> bare flag; `false`/null ->
/// omitted; lists repeat the flag; maps are passed as JSON (vLLM's dict arguments).
pub fn flag_args(flags: &IndexMap<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for (key, value) in flags {
        let flag = format!("--{}", key.trim_start_matches('-').replace('_', "-"));
        match value {
            Value::Bool(true) => out.push(flag),
            Value::Bool(false) | Value::Null => {}
            Value::Sequence(items) => {
                for item in items {
                    out.push(flag.clone());
                    out.push(scalar(item));
                }
            }
            other => {
                out.push(flag);
                out.push(scalar(other));
            }
        }
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// Instance ids become file names: keep them to a safe alphabet.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn seed_flags_become_vllm_arguments() {
        let c = Config::load(std::path::Path::new(
            "tests/fixtures/seed-config-extra-flags.yaml",
        ))
        .unwrap();
        let m = &c.models[0];
        let s = engine_spec(m, &m.instances[0], &c.supervisor);
        assert_eq!(
            s.argv.join(" "),
            "vllm serve Qwen/Qwen2.5-14B-Instruct --host localhost --port 8010 --dtype bfloat16 --max-model-len 8192 --gpu-memory-utilization 0.9 --tensor-parallel-size 1 --max-num-seqs 128 --quantization awq --enable-auto-tool-choice --tool-call-parser hermes"
        );
        assert_eq!(
            s.env,
            [("CUDA_VISIBLE_DEVICES".to_string(), "0".to_string())]
        );
        // The default log_dir, next to the config file.
        assert!(s.log_path.is_absolute(), "{}", s.log_path.display());
        assert!(
            s.log_path.ends_with("logs/qwen14b-1.log"),
            "{}",
            s.log_path.display()
        );
    }

    #[test]
    fn false_null_lists_maps_and_custom_command() {
        let yaml = r#"
LLM_engines:
  m:
    command: "python -m vllm.entrypoints.openai.api_server --model"
    env: {HF_HUB_OFFLINE: "1", CUDA_VISIBLE_DEVICES: "9"}
    instances: [{id: "a/b", host: 127.0.0.1, port: 9, cuda_device: [2, 3], env: {HF_HUB_OFFLINE: "0", X: "y"}}]
    model_config:
      model_tag: org/m
      enforce_eager: false
      trust-remote-code: true
      served_model_name: [x, y]
      override_generation_config: {temperature: 0.5}
      seed: ~
      tensor_parallel_size: 2
"#;
        let c = Config::from_yaml_str(yaml, std::path::Path::new("t.yaml")).unwrap();
        let m = &c.models[0];
        let s = engine_spec(m, &m.instances[0], &c.supervisor);
        assert_eq!(
            s.argv,
            [
                "python",
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                "org/m",
                "--host",
                "127.0.0.1",
                "--port",
                "9",
                "--trust-remote-code",
                "--served-model-name",
                "x",
                "--served-model-name",
                "y",
                "--override-generation-config",
                "{\"temperature\":0.5}",
                "--tensor-parallel-size",
                "2"
            ]
        );
        assert_eq!(
            s.env,
            [
                ("HF_HUB_OFFLINE".to_string(), "0".to_string()),
                ("X".to_string(), "y".to_string()),
                ("CUDA_VISIBLE_DEVICES".to_string(), "2,3".to_string())
            ]
        );
        assert_eq!(s.gpus, [2, 3]);
        assert_eq!(s.log_path, std::path::Path::new("logs/a_b.log"));
    }

    #[test]
    fn tensor_parallel_needs_as_many_devices() {
        let yaml = "LLM_engines:\n  m:\n    instances: [{id: a, host: h, port: 9, cuda_device: 0}]\n    model_config: {model_tag: t, tensor_parallel_size: 2}\n";
        let e = Config::from_yaml_str(yaml, std::path::Path::new("t.yaml")).unwrap_err();
        assert!(e.to_string().contains("instances[0].cuda_device"), "{e}");
        assert!(e.to_string().contains("tensor_parallel_size is 2"), "{e}");
    }

    #[test]
    fn gpu_locks_are_taken_in_ascending_order_whatever_the_device_order() {
        let yaml = "LLM_engines:\n  m:\n    instances: [{id: a, host: h, port: 9, cuda_device: [3, 2]}]\n    model_config: {model_tag: t}\n";
        let c = Config::from_yaml_str(yaml, std::path::Path::new("t.yaml")).unwrap();
        let s = engine_spec(&c.models[0], &c.models[0].instances[0], &c.supervisor);
        assert_eq!(s.gpus, [2, 3]);
        // The engine still sees its devices in the order given.
        assert!(s
            .env
            .contains(&("CUDA_VISIBLE_DEVICES".to_string(), "3,2".to_string())));
    }
}
