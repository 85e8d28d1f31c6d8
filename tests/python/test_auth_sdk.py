"""The OpenAI Python SDK with API keys: a key from `llm-router keys new`, chat,
streaming and embeddings, the SDK's own exception types for 401, 403, 404 and 429, and
its retry honouring the router's `retry-after-ms`."""

import os
import subprocess
import tempfile

import openai
import pytest

from test_openai_sdk import ROOT, ROUTER_BIN, free_port, start_mock, start_router

MODELS = os.path.join(ROOT, "models")


def new_key(principal):
    out = subprocess.run(
        [ROUTER_BIN, "keys", "new", "--id", principal], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    return out[0], out[2]  # the key, its keys-file entry (hash only)


@pytest.fixture(scope="module")
def router():
    procs = []
    try:
        m1, p1 = start_mock("auth-1")
        m2, p2 = start_mock("auth-2")
        procs += [m1, m2]
        tmp = tempfile.mkdtemp()
        chat_key, chat_entry = new_key("chat-team")
        emb_key, emb_entry = new_key("embed-only")
        rpm_key, rpm_entry = new_key("limited")
        with open(os.path.join(tmp, "keys.yaml"), "w") as f:
            f.write(
                "version: 1\nprincipals:\n"
                f"  - id: chat-team\n    models: [chat-model]\n    keys:\n    {chat_entry}\n"
                f"  - id: embed-only\n    endpoints: [embeddings, models]\n    keys:\n    {emb_entry}\n"
                f"  - id: limited\n    limits: {{requests_per_minute: 60}}\n    keys:\n    {rpm_entry}\n"
            )
        lib = os.path.join(MODELS, "onnxruntime/libonnxruntime.so.1.31.1")
        cfg = os.path.join(tmp, "config.yaml")
        with open(cfg, "w") as f:
            f.write(
                "LLM_engines:\n"
                "  chat-model:\n"
                f"    instances: [{{id: c1, host: 127.0.0.1, port: {p1}, managed: false}}]\n"
                "    model_config: {model_tag: org/Chat-Model}\n"
                "  other-model:\n"
                f"    instances: [{{id: o1, host: 127.0.0.1, port: {p2}, managed: false}}]\n"
                "    model_config: {model_tag: org/Other}\n"
                "auth:\n  keys_file: keys.yaml\n"
                f"embedding_server:\n  host: 127.0.0.1\n  port: {free_port()}\n  onnxruntime_path: \"{lib}\"\n"
                "  embedding_models:\n"
                f"    bge-small-en-v1.5: {{model_path: \"{MODELS}/bge-small-en-v1.5\", pooling: cls}}\n"
            )
        r, url = start_router(cfg, tmp)
        procs.append(r)
        yield f"{url}/v1", chat_key, emb_key, rpm_key
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=10)


def client(base, key):
    return openai.OpenAI(base_url=base, api_key=key, max_retries=0)


HELLO = [{"role": "user", "content": "hello"}]


def test_a_key_serves_chat_and_streams(router):
    base, key, _, _ = router
    c = client(base, key)
    assert [m.id for m in c.models.list()] == ["chat-model"]
    r = c.chat.completions.create(model="chat-model", messages=HELLO, max_tokens=4)
    assert r.choices[0].message.content.startswith("tok0")
    parts = [
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(model="chat-model", messages=HELLO, stream=True)
        if ch.choices
    ]
    assert "".join(parts).startswith("tok0 ")


def test_the_sdk_raises_its_own_exceptions(router):
    base, key, emb_key, _ = router
    with pytest.raises(openai.AuthenticationError) as e:
        client(base, "sk-not-ours").models.list()
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as e:
        client(base, key).chat.completions.create(model="other-model", messages=HELLO)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.PermissionDeniedError) as e:
        client(base, emb_key).chat.completions.create(model="chat-model", messages=HELLO)
    assert e.value.code == "permission_denied"


def test_a_key_serves_embeddings(router):
    base, key, emb_key, _ = router
    r = client(base, emb_key).embeddings.create(model="bge-small-en-v1.5", input=["a cat", "a dog"])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 384
    with pytest.raises(openai.NotFoundError):
        client(base, key).embeddings.create(model="bge-small-en-v1.5", input="x")


def test_rate_limits_raise_and_the_sdk_retry_waits_them_out(router):
    base, _, _, rpm_key = router
    c = client(base, rpm_key)
    # 60 per minute: spend them (a few more may pass while the bucket refills).
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(70):
            c.chat.completions.create(model="chat-model", messages=HELLO, max_tokens=1)
    assert e.value.code == "rate_limit_exceeded"
    assert e.value.type == "requests"
    h = e.value.response.headers
    assert h["x-ratelimit-limit-requests"] == "60" and h["x-ratelimit-remaining-requests"] == "0"
    assert 0 < int(h["retry-after-ms"]) <= 1000
    # With retries (the SDK's default), it waits as told and the call succeeds.
    ok = openai.OpenAI(base_url=base, api_key=rpm_key, max_retries=3).with_raw_response
    raw = ok.chat.completions.create(model="chat-model", messages=HELLO, max_tokens=1)
    assert raw.http_response.status_code == 200
