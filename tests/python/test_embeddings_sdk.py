"""The official OpenAI Python SDK's embeddings against the router's main port, served by
the co-hosted ONNX service (real models from `make models`)."""

import base64
import math
import os
import struct
import subprocess
import tempfile

import openai
import pytest

from test_openai_sdk import ROOT, ROUTER_BIN, free_port, wait_health

MODELS = os.path.join(ROOT, "models")


@pytest.fixture(scope="module")
def client():
    tmp = tempfile.mkdtemp()
    cfg = os.path.join(tmp, "config.yaml")
    lib = os.path.join(MODELS, "onnxruntime/libonnxruntime.so.1.31.1")
    with open(cfg, "w") as f:
        f.write(
            "embedding_server:\n"
            f"  host: 127.0.0.1\n  port: {free_port()}\n  onnxruntime_path: \"{lib}\"\n"
            "  embedding_models:\n"
            f"    bge-small-en-v1.5: {{model_path: \"{MODELS}/bge-small-en-v1.5\", pooling: cls}}\n"
            "  reranking_models:\n"
            f"    ms-marco-MiniLM-L-12-v2: {{model_path: \"{MODELS}/ms-marco-MiniLM-L-12-v2\"}}\n"
        )
    port = free_port()
    r = subprocess.Popen([ROUTER_BIN, "--config", cfg, "--listen", f"127.0.0.1:{port}"],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "router.log"), "w"))
    try:
        wait_health(f"http://127.0.0.1:{port}/health", r)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    finally:
        r.kill()
        r.wait(timeout=10)


def test_embeddings_float_and_base64(client):
    texts = ["The cat sits on the mat.", "A cat is sitting on a rug.", "Stock markets fell sharply."]
    r = client.embeddings.create(model="bge-small-en-v1.5", input=texts, encoding_format="float")
    vecs = [d.embedding for d in r.data]
    assert [d.index for d in r.data] == [0, 1, 2]
    assert len(vecs[0]) == 384
    assert abs(math.sqrt(sum(x * x for x in vecs[0])) - 1) < 1e-3
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    assert dot(vecs[0], vecs[1]) > dot(vecs[0], vecs[2])
    assert r.usage.prompt_tokens > 0
    b = client.embeddings.create(model="bge-small-en-v1.5", input=texts, encoding_format="base64")
    raw = base64.b64decode(b.data[1].embedding)
    decoded = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    assert decoded == pytest.approx(vecs[1], abs=1e-6)


def test_old_router_rerank_call(client):
    docs = ["Berlin is known for museums.", "Berlin has 3.5 million inhabitants.", "Paris is in France."]
    r = client.embeddings.create(model="ms-marco-MiniLM-L-12-v2", input=docs, encoding_format="float",
                                 extra_body={"query": "How many people live in Berlin?"})
    scores = [d.embedding for d in r.data]
    assert max(range(3), key=lambda i: scores[i]) == 1
    assert all(0 <= s <= 1 for s in scores)


def test_errors_are_sdk_exceptions(client):
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="ms-marco-MiniLM-L-12-v2", input="x")
