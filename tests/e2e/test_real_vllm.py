"""End to end with real vLLM (CPU build, tiny model) spawned and supervised by the router.

Run by `make e2e` (scripts/e2e.sh installs vLLM and builds the router). The tests run in
file order and share one router: SDK calls, load, kill -9 of an engine, a graceful upgrade
that adopts the engines, and the final stop. Timings are printed (pytest -s).
"""

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import anthropic
import openai
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROUTER_BIN = os.environ.get("LLM_ROUTER_BIN", os.path.join(ROOT, "target/debug/llm-router"))
SERVE = os.path.join(ROOT, "scripts/vllm-cpu/serve.sh")
TIMINGS = {}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def group_members(pgid):
    """Live (non-zombie) pids whose process group is `pgid`."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        if rest[0] != "Z" and int(rest[2]) == pgid:
            out.append(int(d))
    return out


class Env:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="llm-router-e2e-")
        self.port = free_port()
        self.engine_ports = [free_port(), free_port()]
        self.cfg = os.path.join(self.dir, "config.yaml")
        self.pconf = os.path.join(self.dir, "pingora.yaml")
        with open(self.cfg, "w") as f:
            f.write(f"""LLM_engines:
  tiny:
    command: ["{SERVE}"]
    instances:
      - {{id: tiny-1, host: 127.0.0.1, port: {self.engine_ports[0]}, env: {{VLLM_CPU_OMP_THREADS_BIND: "0"}}}}
      - {{id: tiny-2, host: 127.0.0.1, port: {self.engine_ports[1]}, env: {{VLLM_CPU_OMP_THREADS_BIND: "1"}}}}
    model_config:
      model_tag: tiny
      max_model_len: 512
      dtype: bfloat16
      enforce_eager: true
      max_num_seqs: 2
      num_gpu_blocks_override: 8
router:
  listen: "127.0.0.1:{self.port}"
# Every request goes to the engines, so that their own queues fill (the router's
# admission queue would otherwise hold the excess over 1.25 x max_num_seqs).
admission:
  models: {{tiny: {{max_in_flight: 64}}}}
balancer:
  poll_interval_s: 0.25
  cooldown_s: 2
  cooldown_max_s: 4
supervisor:
  log_dir: "{self.dir}/logs"
  run_dir: "{self.dir}/run"
  startup_timeout_s: 300
  stop_timeout_s: 20
  progress_interval_s: 10
""")
        with open(self.pconf, "w") as f:
            f.write(f"""---
version: 1
pid_file: {self.dir}/router.pid
upgrade_sock: {self.dir}/upgrade.sock
error_log: {self.dir}/daemon.log
grace_period_seconds: 8
graceful_shutdown_timeout_seconds: 2
""")
        self.started = []  # pids of the daemons this test started

    def start(self):
        """ExecStart of systemd/llm-router.service: `-d` returns once the daemon is up."""
        r = subprocess.run([ROUTER_BIN, "-d", "-c", self.pconf, "--config", self.cfg],
                           capture_output=True, text=True, cwd=self.dir, timeout=120)
        assert r.returncode == 0, r.stderr
        self.started.append(self.main_pid())

    def log(self):
        """The daemons' stderr (Pingora's `error_log`)."""
        return open(os.path.join(self.dir, "daemon.log")).read()

    def main_pid(self):
        """What the pid file says ($MAINPID for systemd)."""
        return int(open(os.path.join(self.dir, "router.pid")).read().strip())

    def reload(self):
        """ExecReload: the new process with `-u -d` (it returns once ready), then SIGQUIT
        to the old one only if that succeeded."""
        old = self.main_pid()
        r = subprocess.run([ROUTER_BIN, "-u", "-d", "-c", self.pconf, "--config", self.cfg],
                           capture_output=True, text=True, cwd=self.dir, timeout=120)
        if r.returncode == 0:
            self.started.append(self.main_pid())
            os.kill(old, signal.SIGQUIT)
        return r

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def instances(self):
        return get_json(self.url("/v1/router/instances"))["data"]

    def engines(self):
        return json.load(open(os.path.join(self.dir, "run/engines.json")))

    def wait(self, what, cond, timeout):
        t0 = time.time()
        while True:
            try:
                if cond():
                    return time.time() - t0
            except (OSError, ValueError, KeyError):
                pass
            assert time.time() - t0 < timeout, f"timed out waiting for {what}"
            time.sleep(0.2)

    def all_healthy(self):
        return all(i["state"] == "healthy" for i in self.instances())


@pytest.fixture(scope="module")
def env():
    e = Env()
    yield e
    for pid in e.started:
        if pid_alive(pid):
            os.kill(pid, signal.SIGINT)  # the router stops its engines on exit
            t0 = time.time()
            while pid_alive(pid) and time.time() - t0 < 30:
                time.sleep(0.1)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    print("\ne2e timings:", json.dumps(TIMINGS, indent=1))


@pytest.fixture(scope="module")
def client(env):
    return openai.OpenAI(base_url=env.url("/v1"), api_key="unused", max_retries=0, timeout=120)


def test_engines_start_and_become_ready(env):
    env.start()
    TIMINGS["engine_start_s"] = round(env.wait("both engines ready", env.all_healthy, 300), 1)
    log = env.log()
    assert "engine ready" in log


def test_openai_sdk_chat_stream_completions(env, client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert r.choices[0].message.content is not None
    assert r.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True))
    assert len(chunks) >= 2
    c = client.completions.create(model="tiny", prompt="Hello", max_tokens=8)
    assert c.choices[0].text is not None
    assert [m.id for m in client.models.list()] == ["tiny"]


def post_json(url, body):
    """POST `body` as JSON: (status, parsed answer); an HTTP error's body too."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_tokenizer_and_anthropic_messages_reach_vllm(env):
    st, t = post_json(env.url("/tokenize"), {"model": "tiny", "prompt": "Hello world"})
    assert st == 200 and t["count"] == len(t["tokens"]) > 0, t
    st, d = post_json(env.url("/detokenize"), {"model": "tiny", "tokens": t["tokens"]})
    assert st == 200 and "Hello world" in d["prompt"], d
    a = anthropic.Anthropic(base_url=env.url(""), api_key="unused", max_retries=0, timeout=120)
    hi = [{"role": "user", "content": "hi"}]
    m = a.messages.create(model="tiny", max_tokens=8, messages=hi)
    assert m.content and m.usage.output_tokens > 0, m
    with a.messages.stream(model="tiny", max_tokens=8, messages=hi) as s:
        parts = list(s.text_stream)
        final = s.get_final_message()
    assert parts and final.usage.output_tokens > 0, final
    with pytest.raises(anthropic.NotFoundError) as e:
        a.messages.create(model="nope", max_tokens=8, messages=hi)
    assert e.value.body["error"]["type"] == "not_found_error"
    # A path vLLM does not serve, naming the model: its FastAPI 404 becomes the router's.
    st, e = post_json(env.url("/v1/no/such/endpoint"), {"model": "tiny"})
    assert st == 404 and e["error"]["code"] == "unknown_url", e


def generation_tokens(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("vllm:generation_tokens_total"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_concurrent_load_shows_queueing_and_uses_both(env, client):
    before = [generation_tokens(p) for p in env.engine_ports]
    errors, peak = [], {"waiting": 0.0, "kv": 0.0}
    done = threading.Event()

    def watch():
        while not done.is_set():
            try:
                for i in env.instances():
                    peak["waiting"] = max(peak["waiting"], i["waiting"])
                    peak["kv"] = max(peak["kv"], i["kv_usage"])
            except OSError:
                pass
            time.sleep(0.1)

    def one():
        try:
            client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "count"}], max_tokens=64)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    w = threading.Thread(target=watch)
    w.start()
    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    w.join()
    after = [generation_tokens(p) for p in env.engine_ports]
    TIMINGS["peak_waiting"], TIMINGS["peak_kv_usage"] = peak["waiting"], peak["kv"]
    assert errors == []
    assert peak["waiting"] > 0, peak
    assert peak["kv"] > 0, peak
    assert all(a > b for a, b in zip(after, before)), (before, after)


def test_kill_9_of_an_engine(env, client):
    old = env.engines()["tiny-1"]
    pid = old["pid"]
    members = group_members(pid)
    assert pid in members
    os.kill(pid, signal.SIGKILL)
    t0 = time.time()
    # Clients keep getting answers from the other engine meanwhile.
    failures = 0
    for _ in range(10):
        try:
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=4)
        except Exception:  # noqa: BLE001
            failures += 1
    assert failures == 0
    env.wait("killed engine's group gone", lambda: not group_members(pid), 30)
    env.wait("restart", lambda: env.engines().get("tiny-1", {}).get("pid") not in (None, pid), 120)
    env.wait("restarted engine healthy", env.all_healthy, 300)
    TIMINGS["recover_from_kill_9_s"] = round(time.time() - t0, 1)
    new_pid = env.engines()["tiny-1"]["pid"]
    assert new_pid != pid
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=4)
    assert r.choices


def pid_alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_reload_as_the_unit_does_adopts_engines(env, client):
    """Mixed load (non-streaming requests and streams) across `-u -d` + SIGQUIT."""
    pids = {k: v["pid"] for k, v in env.engines().items()}
    old = env.main_pid()
    failures, sent, streams = [], [0], [0]
    longest = [0.0]
    stop = threading.Event()

    def requests_loop():
        while not stop.is_set():
            sent[0] += 1
            try:
                r = client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=2)
                assert r.choices
            except Exception as e:  # noqa: BLE001
                failures.append(f"request: {e!r}")

    def streams_loop():
        while not stop.is_set():
            t = time.time()
            try:
                chunks = list(client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "count to twenty"}],
                    max_tokens=24, stream=True))
                assert any(c.choices and c.choices[0].finish_reason for c in chunks), "no finish_reason"
                streams[0] += 1
                longest[0] = max(longest[0], time.time() - t)
            except Exception as e:  # noqa: BLE001
                failures.append(f"stream: {e!r}")

    threads = [threading.Thread(target=requests_loop), threading.Thread(target=streams_loop)]
    for t in threads:
        t.start()
    time.sleep(2)
    t0 = time.time()
    r = env.reload()
    TIMINGS["reload_command_s"] = round(time.time() - t0, 2)
    assert r.returncode == 0, r.stderr + env.log()
    new_pid = env.main_pid()
    assert new_pid != old and pid_alive(new_pid)
    try:
        env.wait("old router exit", lambda: not pid_alive(old), 60)
    finally:
        TIMINGS["reload_old_gone_s"] = round(time.time() - t0, 1)
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join(timeout=120)
    TIMINGS["reload_requests"], TIMINGS["reload_streams"] = sent[0], streams[0]
    TIMINGS["reload_failures"], TIMINGS["reload_longest_stream_s"] = len(failures), round(longest[0], 2)
    assert failures == [], failures[:5]
    assert streams[0] >= 2
    env.wait("served by the new router", env.all_healthy, 30)
    assert {k: v["pid"] for k, v in env.engines().items()} == pids, "engines were restarted"
    assert "adopted running engine" in env.log()


def test_stop_leaves_no_engine_behind(env):
    pgids = [v["pgid"] for v in env.engines().values()]
    pid = env.main_pid()
    os.kill(pid, signal.SIGTERM)
    env.wait("router exit", lambda: not pid_alive(pid), 60)
    assert all(not group_members(g) for g in pgids), [group_members(g) for g in pgids]
