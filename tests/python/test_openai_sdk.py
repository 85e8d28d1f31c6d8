"""The official OpenAI Python SDK against the router (only `base_url` changed).

Starts two mock vLLM engines (the test suite's mock, built as `examples/mock_vllm`) and the
router binary on free loopback ports. Binaries come from LLM_ROUTER_BIN / MOCK_VLLM_BIN
(scripts/test.sh builds them).
"""

import os
import socket
import subprocess
import tempfile
import time
import urllib.request

import openai
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROUTER_BIN = os.environ.get("LLM_ROUTER_BIN", os.path.join(ROOT, "target/debug/llm-router"))
MOCK_BIN = os.environ.get("MOCK_VLLM_BIN", os.path.join(ROOT, "target/debug/examples/mock_vllm"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mock(name):
    p = subprocess.Popen([MOCK_BIN, "0", name], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.startswith("listening on "), line
    return p, int(line.rsplit(":", 1)[1])


def start_router(cfg, tmp):
    """The router on `cfg` on a free loopback port, its log in `tmp`; returns the process
    and its base URL once `/health` answers."""
    port = free_port()
    r = subprocess.Popen(
        [ROUTER_BIN, "--config", cfg, "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(tmp, "router.log"), "w"),
    )
    try:
        wait_health(f"http://127.0.0.1:{port}/health", r)
    except BaseException:
        r.kill()
        raise
    return r, f"http://127.0.0.1:{port}"


def wait_health(url, proc, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "router exited early"
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("router not ready")


@pytest.fixture(scope="module")
def router():
    procs = []
    try:
        m1, p1 = start_mock("sdk-1")
        m2, p2 = start_mock("sdk-2")
        procs += [m1, m2]
        tmp = tempfile.mkdtemp()
        cfg = os.path.join(tmp, "config.yaml")
        with open(cfg, "w") as f:
            f.write(
                "LLM_engines:\n"
                "  chat-model:\n"
                "    instances:\n"
                f"      - {{id: c1, host: 127.0.0.1, port: {p1}, managed: false}}\n"
                f"      - {{id: c2, host: 127.0.0.1, port: {p2}, managed: false}}\n"
                "    model_config:\n"
                "      model_tag: org/Chat-Model\n"
            )
        r, url = start_router(cfg, tmp)
        procs.append(r)
        yield f"{url}/v1"
    finally:
        # SIGKILL: a SIGTERM'd router drains for Pingora's grace period (tested elsewhere).
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=10)


@pytest.fixture
def client(router):
    return openai.OpenAI(base_url=router, api_key="sk-test", max_retries=0)


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["chat-model"]
    assert client.models.retrieve("chat-model").id == "chat-model"


def test_chat(client):
    r = client.chat.completions.create(
        model="chat-model", messages=[{"role": "user", "content": "hello"}], max_tokens=8
    )
    assert r.model == "org/Chat-Model"  # the engine saw the rewritten name
    assert r.choices[0].message.content.startswith("tok0 ")
    assert r.usage.completion_tokens == 8
    assert r.system_fingerprint in ("sdk-1", "sdk-2")


def test_chat_streaming(client):
    stream = client.chat.completions.create(
        model="chat-model",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert len(parts) == 8
    assert "".join(parts) == "".join(f"tok{i} " for i in range(8))
    assert usage is not None and usage.completion_tokens == 8


def test_responses_created_streamed_retrieved_and_deleted(client):
    r = client.responses.create(model="chat-model", input="hello", max_output_tokens=8)
    assert r.output_text == "".join(f"tok{i} " for i in range(8))
    assert r.usage.output_tokens == 8
    # Reached by id (and continued) on the instance that holds it, whichever that is.
    assert client.responses.retrieve(r.id).id == r.id
    follow = client.responses.create(model="chat-model", input="more", previous_response_id=r.id)
    assert follow.previous_response_id == r.id
    events = list(client.responses.create(model="chat-model", input="hi", stream=True))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == r.output_text
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_completions(client):
    r = client.completions.create(model="chat-model", prompt="Say hi", max_tokens=8)
    assert r.choices[0].text.startswith("tok0")


def test_both_instances_serve(client):
    seen = {
        client.chat.completions.create(
            model="chat-model", messages=[{"role": "user", "content": "x"}]
        ).system_fingerprint
        for _ in range(6)
    }
    assert seen == {"sdk-1", "sdk-2"}


def test_errors_raise_the_sdk_exceptions(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    assert "chat-model" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="chat-model", messages=[{"role": "user", "content": "x"}], extra_body={"stream": "yes"}
        )
    assert e.value.body["param"] == "stream"


def test_a_stream_the_engine_cuts_raises_instead_of_ending_short(client):
    stream = client.chat.completions.create(
        model="chat-model",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        extra_headers={"x-mock-cut-after": "3"},
    )
    parts = []
    with pytest.raises(openai.APIError) as e:
        for chunk in stream:
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
    assert parts == ["tok0 ", "tok1 ", "tok2 "]
    assert e.value.code == "upstream_stream_cut"
    assert e.value.type == "server_error"
