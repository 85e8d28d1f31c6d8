#!/usr/bin/env bash
# `make run-mock`: the router on conf/demo-mock.yaml in front of the test suite's mock
# vLLM engines (no vLLM install needed): started on 8101/8102 when nothing listens there,
# stopped (by PID) when the router exits. A real engine on those ports is used instead.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${CONFIG:-conf/demo-mock.yaml}"
pids=()
router=""
# The router gets SIGINT (fast exit): SIGTERM would make it drain for the grace period.
cleanup() {
  [ -n "$router" ] && kill -INT "$router" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 8101 8102; do
  if port_busy "$port"; then
    echo "[run] something already listens on 127.0.0.1:$port; using it as engine"
  else
    echo "[run] starting mock vLLM engine on 127.0.0.1:$port"
    target/release/examples/mock_vllm "$port" "mock-$port" >/dev/null &
    pids+=($!)
  fi
done
echo "[run] llm-router --config $CONFIG -c conf/pingora.yaml (Ctrl-C to stop)"
echo "[run] try: curl -s localhost:8947/v1/chat/completions -H 'content-type: application/json' -d '{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'"
target/release/llm-router --config "$CONFIG" -c conf/pingora.yaml "$@" &
router=$!
wait "$router"
