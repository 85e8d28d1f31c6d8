#!/usr/bin/env bash
# `make bench`: every benchmark under bench/ (release build), each printing a markdown
# table. The embedding benchmark compares against onnxruntime's Python API.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${LLM_ROUTER_CACHE:-$HOME/.cache/llm-router}"
scripts/setup.sh --python
scripts/models.sh
if ! "$CACHE/venv/bin/python" -c "import onnxruntime, tokenizers, numpy" 2>/dev/null; then
  echo "[bench] installing bench/requirements.txt (Python reference for the embedding benchmark)"
  "$CACHE/venv/bin/pip" install -q -r bench/requirements.txt
fi
BENCH_PYTHON="$CACHE/venv/bin/python" cargo bench --benches
