//! The router as a daemon (`-d`, which runs in `/`), started from another directory on a
//! config whose paths are all relative: they resolve against the config file's
//! directory. The access log goes to `router.access_log_file` and follows a logrotate
//! (rename + SIGHUP); SIGHUP never kills the router, and engines get its default back.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{bin, dead_port, fake_engine, pid_alive, starts, wait_for};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// The daemon's pid file names it; SIGINT on drop (it stops its engine), then SIGKILL.
struct Daemon {
    dir: tempfile::TempDir,
    port: u16,
}

impl Daemon {
    fn conf(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    fn pid(&self) -> i32 {
        std::fs::read_to_string(self.dir.path().join("router.pid"))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.conf().join("access.log")).unwrap_or_default()
    }

    async fn chat(&self, id: &str) {
        let r = reqwest::Client::new()
            .post(self.url("/v1/chat/completions"))
            .header("x-request-id", id)
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        common::stop_daemon(self.pid());
        for r in starts(&self.conf().join("record.jsonl")) {
            let e = r["pid"].as_i64().unwrap_or(0) as i32;
            if e > 0 && pid_alive(e) {
                let _ = kill(Pid::from_raw(e), Signal::SIGKILL);
            }
        }
    }
}

fn symlink(target: &Path, link: &Path) {
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// `<tmp>/conf/config.yaml` with relative paths only: a `command` with a slash, log and
/// run dirs, the access log file, an embedding model and (by default) ONNX Runtime under
/// `conf/models/` (a link to the project's `models/`).
fn setup() -> Daemon {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    assert!(
        models.join("onnxruntime/libonnxruntime.so.1.31.1").exists(),
        "models/ is empty: run `make models` (make test does)"
    );
    let d = Daemon {
        dir: tempfile::tempdir().unwrap(),
        port: dead_port(),
    };
    let conf = d.conf();
    symlink(&fake_engine(), &conf.join("engines/fake_engine"));
    symlink(&models, &conf.join("models"));
    std::fs::write(
        conf.join("config.yaml"),
        format!(
            "router:\n  listen: 127.0.0.1:{}\n  access_log_file: access.log\nLLM_engines:\n  m:\n    command: [\"./engines/fake_engine\"]\n    env: {{FAKE_RECORD: \"{}\"}}\n    instances:\n      - {{id: e1, host: 127.0.0.1, port: {}}}\n    model_config: {{model_tag: org/m}}\nsupervisor:\n  log_dir: logs\n  run_dir: run\nembedding_server:\n  host: 127.0.0.1\n  port: {}\n  threads: 1\n  embedding_models:\n    minilm: {{model_path: models/all-MiniLM-L6-v2, tokenizer_path: models/all-MiniLM-L6-v2}}\n",
            d.port,
            conf.join("record.jsonl").display(),
            dead_port(),
            dead_port()
        ),
    )
    .unwrap();
    std::fs::write(
        d.dir.path().join("pingora.yaml"),
        format!(
            "---\nversion: 1\npid_file: {0}/router.pid\nupgrade_sock: {0}/upgrade.sock\nerror_log: {0}/error.log\ngrace_period_seconds: 5\n",
            d.dir.path().display()
        ),
    )
    .unwrap();
    d
}

/// Whether `pid` ignores SIGHUP (bit 0 of `SigIgn` in `/proc/<pid>/status`).
fn ignores_sighup(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    mask & 1 != 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_elsewhere_resolves_paths_next_to_its_config() {
    let d = setup();
    let conf = d.conf();
    // `check` prints the paths absolute.
    let out = Command::new(bin())
        .current_dir(d.dir.path())
        .args(["check", "--config", "conf/config.yaml"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    for p in [
        "logs",
        "run",
        "access.log",
        "engines/fake_engine",
        "models/all-MiniLM-L6-v2",
    ] {
        let abs = conf.join(p).display().to_string();
        assert!(printed.contains(&abs), "{abs} not in:\n{printed}");
    }

    // Started from the config's parent with a relative --config; the daemon runs in `/`.
    let out = Command::new(bin())
        .current_dir(d.dir.path())
        .args(["-d", "-c"])
        .arg(d.dir.path().join("pingora.yaml"))
        .args(["--config", "conf/config.yaml"])
        .env("RUST_LOG", "info")
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let error_log = || std::fs::read_to_string(d.dir.path().join("error.log")).unwrap_or_default();
    assert!(out.status.success(), "{}", error_log());
    let pid = d.pid();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/")
    );
    wait_for("e1 healthy", Duration::from_secs(20), async || {
        let Ok(r) = reqwest::get(d.url("/v1/router/instances")).await else {
            return false;
        };
        let v: Value = r.json().await.unwrap_or_default();
        v["data"][0]["state"] == "healthy"
    })
    .await;
    assert!(conf.join("run/engines.json").exists());
    assert!(conf.join("logs/e1.log").exists());
    let engine = starts(&conf.join("record.jsonl"))[0]["pid"]
        .as_i64()
        .unwrap() as i32;
    let r = reqwest::Client::new()
        .post(d.url("/v1/embeddings"))
        .json(&json!({"model": "minilm", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", error_log());

    // The access log is in the file next to the config.
    d.chat("before-rotation").await;
    wait_for("the access line", Duration::from_secs(10), async || {
        d.access_log().contains("request_id=before-rotation")
    })
    .await;

    // logrotate: rename, then SIGHUP. The router lives on and writes to a new file.
    std::fs::rename(conf.join("access.log"), conf.join("access.log.1")).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGHUP).unwrap();
    wait_for("the reopen logged", Duration::from_secs(10), async || {
        error_log().contains("SIGHUP: reopening the access log")
    })
    .await;
    d.chat("after-rotation").await;
    wait_for(
        "the line in the new file",
        Duration::from_secs(10),
        async || d.access_log().contains("request_id=after-rotation"),
    )
    .await;
    let rotated = std::fs::read_to_string(conf.join("access.log.1")).unwrap();
    assert!(
        rotated.contains("before-rotation") && !rotated.contains("after-rotation"),
        "{rotated}"
    );
    assert!(pid_alive(pid), "SIGHUP killed the router");
    assert!(
        !ignores_sighup(engine),
        "the engine inherited an ignored SIGHUP"
    );
}
