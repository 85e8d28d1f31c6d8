"""The official Anthropic Python SDK against the router's `/v1/messages` (only `base_url`
changed): a key sent as `x-api-key` (`auth.accept_headers`), plain and streamed messages,
token counting, and the SDK's own exception types for the router's Anthropic-shaped
errors."""

import tempfile
import os

import anthropic
import pytest

from test_auth_sdk import new_key
from test_openai_sdk import start_mock, start_router

HELLO = [{"role": "user", "content": "hello"}]
TEXT = "".join(f"tok{i} " for i in range(8))


@pytest.fixture(scope="module")
def router():
    procs = []
    try:
        m, port = start_mock("anthropic-1")
        procs.append(m)
        tmp = tempfile.mkdtemp()
        key, entry = new_key("claude-users")
        with open(os.path.join(tmp, "keys.yaml"), "w") as f:
            f.write(f"version: 1\nprincipals:\n  - id: claude-users\n    keys:\n    {entry}\n")
        cfg = os.path.join(tmp, "config.yaml")
        with open(cfg, "w") as f:
            f.write(
                "LLM_engines:\n"
                "  chat-model:\n"
                f"    instances: [{{id: c1, host: 127.0.0.1, port: {port}, managed: false}}]\n"
                "    model_config: {model_tag: org/Chat-Model}\n"
                "auth:\n  keys_file: keys.yaml\n  accept_headers: [authorization, x-api-key]\n"
            )
        r, url = start_router(cfg, tmp)
        procs.append(r)
        yield url, key
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=10)


def client(router, key=None):
    url, good = router
    return anthropic.Anthropic(base_url=url, api_key=key or good, max_retries=0)


def test_messages_plain_and_streamed(router):
    c = client(router)
    m = c.messages.create(model="chat-model", max_tokens=8, messages=HELLO)
    assert m.content[0].text == TEXT
    assert m.model == "org/Chat-Model"  # the engine saw the rewritten name
    assert (m.usage.input_tokens, m.usage.output_tokens) == (3, 8)
    with c.messages.stream(model="chat-model", max_tokens=8, messages=HELLO) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == TEXT
    assert final.usage.output_tokens == 8
    assert c.messages.count_tokens(model="chat-model", messages=HELLO).input_tokens == 3


def test_errors_are_the_sdks_exceptions(router):
    with pytest.raises(anthropic.NotFoundError) as e:
        client(router).messages.create(model="nope", max_tokens=8, messages=HELLO)
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.AuthenticationError) as e:
        client(router, key="llmr_wrong").messages.create(model="chat-model", max_tokens=8, messages=HELLO)
    assert e.value.body["error"]["type"] == "authentication_error"
