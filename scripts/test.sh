#!/usr/bin/env bash
# The whole test suite: set-up, Rust unit + integration tests (mock engines on loopback),
# then the official OpenAI Python SDK against the router.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${LLM_ROUTER_CACHE:-$HOME/.cache/llm-router}"
scripts/setup.sh --python
scripts/models.sh

echo "[test] building router and mock engine (debug)"
cargo build --bins --examples

echo "[test] cargo test"
cargo test

echo "[test] OpenAI Python SDK against the router"
LLM_ROUTER_BIN="$PWD/target/debug/llm-router" MOCK_VLLM_BIN="$PWD/target/debug/examples/mock_vllm" \
  "$CACHE/venv/bin/python" -m pytest -q tests/python
