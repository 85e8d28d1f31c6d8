#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers of untrusted input: every target in fuzz/ for
# FUZZ_S seconds (default 300), on the stable toolchain (`cargo fuzz run -s none`: no
# sanitizer flags, which would need nightly; libFuzzer's own panic, timeout and memory
# checks still apply). Seeds come from fuzz/corpus/<target> (committed, replayed by
# `cargo test`); what the fuzzer learns goes to fuzz/corpus-work/<target> (ignored), and
# a crashing input to fuzz/artifacts/<target>/. Ends with one line per target.
#   make fuzz                  FUZZ_S=60 make fuzz        FUZZ_TARGETS="sse_usage" make fuzz
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${LLM_ROUTER_CACHE:-$HOME/.cache/llm-router}"
FUZZ_S="${FUZZ_S:-300}"
TARGETS="${FUZZ_TARGETS:-body_probe metrics_page sse_usage usage_event request_head multipart}"
say() { echo "[fuzz] $*"; }

scripts/setup.sh
if ! command -v c++ >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  say "installing g++ (libFuzzer is C++)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq g++ >/dev/null
fi
TOOLS="$CACHE/tools"
export PATH="$TOOLS/bin:$PATH"
if ! cargo fuzz --version 2>/dev/null | grep -q '0.13.1'; then
  say "installing cargo-fuzz 0.13.1 into $TOOLS (crates.io, ~3 min)"
  cargo install -q --root "$TOOLS" cargo-fuzz --version 0.13.1 --locked
fi

say "building the targets (sanitizer coverage, release; the first build takes minutes)"
cargo fuzz build -s none
summary=()
failed=0
for t in $TARGETS; do
  mkdir -p "fuzz/corpus-work/$t" "fuzz/artifacts/$t"
  log="fuzz/artifacts/$t/last-run.log"
  say "$t: ${FUZZ_S} s"
  set +e
  cargo fuzz run -s none "$t" "fuzz/corpus-work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$FUZZ_S" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  runs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  secs=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | grep -oE 'in [0-9]+' | grep -oE '[0-9]+' || echo "?")
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || echo "?")
  units=$(find "fuzz/corpus-work/$t" -type f | wc -l)
  if [ $rc -eq 0 ]; then
    summary+=("$t: ${secs} s, ${runs} runs, coverage ${cov}, corpus ${units} (+$(ls "fuzz/corpus/$t" | wc -l) seeds), no crash")
  else
    failed=1
    crash=$(ls -t "fuzz/artifacts/$t"/crash-* "fuzz/artifacts/$t"/timeout-* "fuzz/artifacts/$t"/oom-* 2>/dev/null | head -1 || true)
    summary+=("$t: FAILED (exit $rc) after ${secs} s; input: ${crash:-see $log}")
    tail -30 "$log"
  fi
done
say "summary"
for l in "${summary[@]}"; do echo "  $l"; done
if [ $failed -ne 0 ]; then
  say "a crash: minimise it (cargo fuzz tmin -s none TARGET FILE), fix it, and commit the input to fuzz/corpus/TARGET/"
  exit 1
fi
