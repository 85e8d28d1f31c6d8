use std::path::Path;

use super::*;

fn load(yaml: &str) -> Result<Config, ConfigErrors> {
    Config::from_yaml_str(yaml, Path::new("test.yaml"))
}

fn errors(yaml: &str) -> Vec<String> {
    load(yaml)
        .expect_err("config should be rejected")
        .0
        .iter()
        .map(|e| e.to_string())
        .collect()
}

const ONE: &str = r#"
LLM_engines:
  m:
    instances:
      - {id: a, host: localhost, port: 8001}
    model_config: {model_tag: org/m}
"#;

#[test]
fn seed_fixture_loads_unchanged() {
    let c = Config::load(Path::new("tests/fixtures/seed-config.yaml")).unwrap();
    let q = c.model("Qwen3-0.6B").unwrap();
    assert_eq!(q.kind, ModelKind::Llm);
    assert_eq!(q.served_name, "Qwen/Qwen3-0.6B");
    assert_eq!(q.instances.len(), 2);
    assert_eq!(q.instances[1].id, "qwen3-2");
    assert_eq!(q.instances[1].port, 8004);
    assert_eq!(q.instances[0].cuda_device, Some(CudaDevices(vec![0])));
    assert_eq!(
        q.engine_flags["max_model_len"],
        serde_yaml::Value::from(500)
    );
    assert!(!q.engine_flags.contains_key("model_tag"));
    assert_eq!(c.model("bge-m3").unwrap().kind, ModelKind::Embedding);
    assert_eq!(c.model("m3e-base").unwrap().instances[0].port, 8005);
    assert_eq!(
        c.model("bge-reranker-large").unwrap().kind,
        ModelKind::Rerank
    );
    assert_eq!(c.models.len(), 4);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // Defaults of our own section.
    assert_eq!(c.router.listen.to_string(), "127.0.0.1:8947");
    assert_eq!(c.router.max_body_bytes, 32 * 1024 * 1024);
}

#[test]
fn extra_flags_fixture_keeps_every_flag_in_order() {
    let c = Config::load(Path::new("tests/fixtures/seed-config-extra-flags.yaml")).unwrap();
    let m = c.model("Qwen2.5-14B-Instruct").unwrap();
    let keys: Vec<&str> = m.engine_flags.keys().map(|s| s.as_str()).collect();
    assert_eq!(
        keys,
        [
            "dtype",
            "max_model_len",
            "gpu_memory_utilization",
            "tensor_parallel_size",
            "max_num_seqs",
            "quantization",
            "enable_auto_tool_choice",
            "tool-call-parser"
        ]
    );
    assert_eq!(
        m.engine_flags["enable_auto_tool_choice"],
        serde_yaml::Value::from(true)
    );
}

#[test]
fn router_section_overrides_defaults() {
    let c = load(&format!(
        "{ONE}router:\n  listen: 127.0.0.1:9000\n  connect_timeout_s: 0.5\n  max_body_bytes: 1000\n"
    ))
    .unwrap();
    assert_eq!(c.router.listen.port(), 9000);
    assert_eq!(
        c.router.connect_timeout,
        std::time::Duration::from_millis(500)
    );
    assert_eq!(c.router.max_body_bytes, 1000);
}

#[test]
fn served_model_name_overrides_tag() {
    let c = load(&ONE.replace(
        "model_config:",
        "served_model_name: tiny\n    model_config:",
    ))
    .unwrap();
    assert_eq!(c.models[0].served_name, "tiny");
    assert_eq!(c.models[0].model_tag.as_deref(), Some("org/m"));
}

#[test]
fn yaml_syntax_error_has_line_and_column() {
    let e = errors("LLM_engines:\n  m: {a: [1, 2}\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("test.yaml: "), "{}", e[0]);
    assert!(e[0].contains("line"), "{}", e[0]);
    assert!(e[0].contains("column"), "{}", e[0]);
}

#[test]
fn missing_instances_names_the_model() {
    let e = errors("LLM_engines:\n  m:\n    model_config: {model_tag: x}\n");
    // `instances` may be absent with `discover`; without either, the model is refused.
    assert!(e[0].contains("LLM_engines.m.instances"), "{}", e[0]);
    assert!(
        e[0].contains("needs at least one instance (or `discover`)"),
        "{}",
        e[0]
    );
}

#[test]
fn missing_model_tag_names_the_key() {
    let e = errors("LLM_engines:\n  m:\n    instances: [{id: a, host: h, port: 1}]\n    model_config: {dtype: x}\n");
    assert!(e[0].contains("LLM_engines.m.model_config"), "{}", e[0]);
    assert!(e[0].contains("model_tag"), "{}", e[0]);
}

#[test]
fn wrong_type_names_the_key_path() {
    let e = errors(&ONE.replace("port: 8001", "port: eighty"));
    assert!(e[0].contains("LLM_engines.m.instances[0].port"), "{}", e[0]);
    assert!(e[0].contains("invalid type"), "{}", e[0]);
}

#[test]
fn port_out_of_range() {
    for bad in ["70000", "0", "-1"] {
        let e = errors(&ONE.replace("8001", bad));
        assert!(e[0].contains("LLM_engines.m.instances[0].port"), "{}", e[0]);
        assert!(e[0].contains("out of range 1-65535"), "{}", e[0]);
    }
}

#[test]
fn duplicate_ids_and_addresses_are_reported_together() {
    let e = errors(
        r#"
LLM_engines:
  a:
    instances:
      - {id: x, host: localhost, port: 8001}
    model_config: {model_tag: a}
  b:
    instances:
      - {id: x, host: 127.0.0.1, port: 8001}
    model_config: {model_tag: b}
"#,
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e.iter().any(|m| m.contains("duplicate instance id `x`")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("two instances cannot share a host:port")),
        "{e:?}"
    );
}

#[test]
fn empty_file_and_empty_model_list_are_errors() {
    assert!(errors("")[0].contains("file is empty"));
    assert!(errors("LLM_engines: {}\n")[0].contains("no models configured"));
}

#[test]
fn unknown_top_level_key_is_a_warning() {
    let c = load(&format!("{ONE}extra_section: 1\n")).unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].contains("extra_section"));
}

#[test]
fn unknown_router_key_is_an_error() {
    let e = errors(&format!("{ONE}router:\n  lisen: 1.2.3.4:5\n"));
    assert!(e[0].contains("router"), "{}", e[0]);
    assert!(e[0].contains("lisen"), "{}", e[0]);
}

#[test]
fn bad_listen_and_timeouts() {
    let e = errors(&format!(
        "{ONE}router:\n  listen: nowhere\n  connect_timeout_s: -1\n"
    ));
    assert!(e.iter().any(|m| m.contains("router.listen")), "{e:?}");
    assert!(
        e.iter().any(|m| m.contains("router.connect_timeout_s")),
        "{e:?}"
    );
}

#[test]
fn cuda_device_forms() {
    let c = load(&ONE.replace("port: 8001}", "port: 8001, cuda_device: \"0,1\"}")).unwrap();
    assert_eq!(
        c.models[0].instances[0].cuda_device,
        Some(CudaDevices(vec![0, 1]))
    );
    let c = load(&ONE.replace("port: 8001}", "port: 8001, cuda_device: [2, 3]}")).unwrap();
    assert_eq!(
        c.models[0].instances[0].cuda_device,
        Some(CudaDevices(vec![2, 3]))
    );
    let e = errors(&ONE.replace("port: 8001}", "port: 8001, cuda_device: \"gpu\"}"));
    assert!(e[0].contains("cuda_device"), "{}", e[0]);
    for twice in ["[2, 2]", "\"1,0,1\""] {
        let e = errors(&ONE.replace(
            "port: 8001}",
            &format!("port: 8001, cuda_device: {twice}}}"),
        ));
        assert!(
            e[0].contains("instances[0].cuda_device") && e[0].contains("listed twice"),
            "{}",
            e[0]
        );
    }
}

#[test]
fn balancer_defaults_global_and_per_model_overrides() {
    let yaml = format!(
        "{ONE}  n:\n    instances: [{{id: b, host: localhost, port: 8002}}]\n    model_config: {{model_tag: org/n}}\n    engine: sglang\n    balancer:\n      policy: session_affinity\n      weights: {{kv_cache: 50}}\n\
         balancer:\n  poll_interval_s: 0.5\n  weights: {{waiting: 20}}\n  affinity_key: body:user\n"
    );
    let c = load(&yaml).unwrap();
    let m = &c.models[0];
    assert_eq!(m.balancer.policy, Policy::LeastLoad);
    assert_eq!(m.balancer.weights.waiting, 20.0);
    assert_eq!(m.balancer.weights.kv_cache, 100.0);
    assert_eq!(
        m.balancer.poll_interval,
        std::time::Duration::from_millis(500)
    );
    assert_eq!(
        m.balancer.stale_after,
        std::time::Duration::from_millis(1500),
        "3 polls"
    );
    assert_eq!(m.balancer.cooldown, std::time::Duration::from_secs(10));
    let n = &c.models[1];
    assert_eq!(n.engine, Some(Engine::Sglang));
    assert_eq!(n.balancer.policy, Policy::SessionAffinity);
    assert_eq!(n.balancer.weights.waiting, 20.0, "global value kept");
    assert_eq!(n.balancer.weights.kv_cache, 50.0, "own value wins");
    assert_eq!(n.balancer.affinity_key, AffinityKey::BodyUser);
    assert_eq!(c.balancer.weights.running, 3.0);
    assert_eq!(c.balancer.weights.in_flight, 5.0);
}

#[test]
fn bad_balancer_values_are_errors() {
    let e = errors(&format!("{ONE}balancer:\n  policy: fastest\n"));
    assert!(
        e[0].contains("balancer.policy") && e[0].contains("fastest"),
        "{e:?}"
    );
    let e = errors(&format!(
        "{ONE}balancer:\n  weights: {{waiting: -1}}\n  affinity_key: cookie:x\n  cooldown_s: 0\n"
    ));
    assert!(
        e.iter().any(|m| m.contains("balancer.weights.waiting")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|m| m.contains("balancer.affinity_key")),
        "{e:?}"
    );
    assert!(e.iter().any(|m| m.contains("balancer.cooldown_s")), "{e:?}");
    let e = errors(&ONE.replace(
        "model_config:",
        "balancer: {poll_interval_s: 1}\n    model_config:",
    ));
    assert!(
        e[0].contains("LLM_engines.m.balancer.poll_interval_s"),
        "{e:?}"
    );
    assert!(e[0].contains("global"), "{e:?}");
}

#[test]
fn relative_paths_resolve_against_the_config_files_directory() {
    let yaml = r#"
LLM_engines:
  m:
    command: ["scripts/serve.sh", "--flag"]
    instances:
      - {id: a, host: localhost, port: 8001}
    model_config: {model_tag: org/m}
  n:
    command: "python -m vllm.entrypoints.openai.api_server --model"
    instances:
      - {id: b, host: localhost, port: 8002}
    model_config: {model_tag: org/n}
  o:
    command: ["/opt/vllm/bin/vllm", "serve"]
    instances:
      - {id: c, host: localhost, port: 8003}
    model_config: {model_tag: org/o}
supervisor:
  log_dir: ../logs
  run_dir: /run/llm-router
embedding_server:
  port: 8005
  embedding_models:
    e: {model_path: models/e, tokenizer_path: ./models/e-tok}
"#;
    let c = Config::from_yaml_str(yaml, Path::new("/etc/llm-router/config.yaml")).unwrap();
    let base = Path::new("/etc/llm-router");
    assert_eq!(
        c.model("m").unwrap().command,
        ["/etc/llm-router/scripts/serve.sh", "--flag"]
    );
    // No slash: looked up on PATH when the engine starts.
    assert_eq!(c.model("n").unwrap().command[0], "python");
    assert_eq!(c.model("o").unwrap().command[0], "/opt/vllm/bin/vllm");
    assert_eq!(c.supervisor.log_dir, base.join("../logs"));
    assert_eq!(c.supervisor.run_dir, Path::new("/run/llm-router"));
    let e = c.model("e").unwrap().embed.as_ref().unwrap();
    assert_eq!(e.model_path, "/etc/llm-router/models/e");
    assert_eq!(
        e.tokenizer_path.as_deref(),
        Some("/etc/llm-router/models/e-tok")
    );
    let es = c.embedding.as_ref().unwrap();
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        assert_eq!(es.onnxruntime_path, base.join(DEFAULT_ONNXRUNTIME_PATH));
    }

    // Defaults are relative to the file too; a relative config path is made absolute.
    let c = Config::from_yaml_str(ONE, Path::new("conf/x.yaml")).unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(c.supervisor.log_dir, cwd.join("conf/logs"));
    assert_eq!(c.supervisor.run_dir, cwd.join("conf/run"));
}

#[test]
fn admission_queue_defaults_overrides_and_errors() {
    let two = r#"
LLM_engines:
  m:
    instances:
      - {id: a, host: localhost, port: 8001}
      - {id: b, host: localhost, port: 8002}
    model_config: {model_tag: org/m, max-num-seqs: 10, scheduling_policy: priority}
  n:
    instances:
      - {id: c, host: localhost, port: 8003}
    model_config: {model_tag: org/n}
"#;
    let c = load(two).unwrap();
    // 1.25 x (2 instances x 10 seqs); unknown without max_num_seqs.
    assert_eq!(c.queue.models["m"].max_in_flight, Some(25));
    assert!(c.queue.models["m"].priority_scheduling);
    assert_eq!(
        c.queue.models["n"],
        ModelAdmission {
            max_in_flight: None,
            priority_scheduling: false
        }
    );
    assert_eq!(c.queue.classes[2].max_queue_wait, Duration::from_secs(5));
    // Partial class overrides are merged key by key.
    let c = load(&format!(
        "{two}admission:\n  models: {{n: {{max_in_flight: 3}}}}\n  classes: {{sheddable: {{weight: 2}}}}\n"
    ))
    .unwrap();
    assert_eq!(c.queue.models["n"].max_in_flight, Some(3));
    let s = &c.queue.classes[2];
    assert_eq!(
        (
            s.weight,
            s.max_queue_wait,
            s.shed_when_saturated,
            s.engine_priority
        ),
        (2, Duration::from_secs(5), true, 10)
    );
    let errs = errors(&format!(
        "{two}admission:\n  models: {{zz: {{}}, n: {{max_in_flight: 0}}}}\n  classes: {{critical: {{weight: 0, max_queue_wait_s: -1}}, vip: {{}}}}\n  saturation: {{kv_cache_usage: 2}}\n  queue: {{max_waiting: 0}}\n"
    ))
    .join("\n");
    for want in ["admission.classes.vip", "unknown field"] {
        assert!(errs.contains(want), "{want}: {errs}");
    }
    let errs = errors(&format!(
        "{two}admission:\n  models: {{zz: {{}}, n: {{max_in_flight: 0}}}}\n  classes: {{critical: {{weight: 0, max_queue_wait_s: -1}}}}\n  saturation: {{kv_cache_usage: 2}}\n  queue: {{max_waiting: 0}}\n"
    ))
    .join("\n");
    for want in [
        "admission.models.zz: not a configured model",
        "admission.models.n.max_in_flight: must be at least 1",
        "admission.classes.critical.weight: must be at least 1",
        "admission.classes.critical.max_queue_wait_s",
        "admission.saturation.kv_cache_usage",
        "admission.queue.max_waiting: must be at least 1",
    ] {
        assert!(errs.contains(want), "{want}: {errs}");
    }
}

#[test]
fn aliases_and_fallbacks_are_checked() {
    let model = |name: &str, port: u16, extra: &str| {
        format!("  {name}:\n    instances: [{{id: {name}1, host: localhost, port: {port}}}]\n    model_config: {{model_tag: org/{name}}}\n{extra}")
    };
    let ok = format!(
        "LLM_engines:\n{}{}",
        model("a", 8001, "    aliases: [gpt-4o-mini]\n    fallback: [b]\n"),
        model("b", 8002, "")
    );
    let c = load(&ok).unwrap();
    assert_eq!(c.model("a").unwrap().aliases, ["gpt-4o-mini"]);
    assert_eq!(c.model("a").unwrap().fallback, ["b"]);
    let bad = format!(
        "LLM_engines:\n{}{}{}",
        model(
            "a",
            8001,
            "    aliases: [b, x, '']\n    fallback: [a, nope, b]\n"
        ),
        model("b", 8002, "    aliases: [x]\n    fallback: [c]\n"),
        model("c", 8003, "    fallback: [b]\n")
    );
    let e = errors(&bad).join("\n");
    for want in [
        "LLM_engines.a.aliases[0]: `b` is the name of a configured model",
        "LLM_engines.a.aliases[2]: must not be empty",
        "LLM_engines.b.aliases[0]: `x` is already an alias of model `a`",
        "LLM_engines.a.fallback[0]: a model cannot be its own fallback",
        "LLM_engines.a.fallback[1]: `nope` is not a configured model",
        "LLM_engines.b.fallback: fallbacks form a cycle: b -> c -> b",
    ] {
        assert!(e.contains(want), "missing `{want}` in:\n{e}");
    }
}

#[test]
fn discover_is_checked_and_dns_keys_are_global() {
    let ok = "LLM_engines:\n  m:\n    discover: {dns: engines.svc, port: 8000}\n    model_config: {model_tag: org/m}\nbalancer: {dns_refresh_s: 5, hosts_file: hosts}\n";
    let c = load(ok).unwrap();
    let d = c.model("m").unwrap().discover.clone().unwrap();
    assert_eq!(
        (d.dns.as_str(), d.port, d.max_instances),
        ("engines.svc", 8000, 8)
    );
    assert_eq!(c.balancer.dns_refresh, std::time::Duration::from_secs(5));
    assert!(c.balancer.hosts_file.unwrap().ends_with("hosts"));
    let bad = "LLM_engines:\n  m:\n    discover: {dns: '', port: 0, max_instances: 0}\n    model_config: {model_tag: org/m}\n    balancer: {dns_refresh_s: 1}\n  n:\n    model_config: {model_tag: org/n}\n";
    let e = errors(bad).join("\n");
    for want in [
        "LLM_engines.m.discover.dns: must name a host",
        "LLM_engines.m.discover.port: must be a port number",
        "LLM_engines.m.discover.max_instances: 0 is not between 1 and 256",
        "LLM_engines.m.balancer.dns_refresh_s: can only be set in the global",
        "LLM_engines.n.instances: a model needs at least one instance (or `discover`)",
    ] {
        assert!(e.contains(want), "missing `{want}` in:\n{e}");
    }
}
