#!/usr/bin/env bash
# Installs what building and testing need on a fresh machine (Rust, Python 3.11 + pip and
# gcc are assumed). Idempotent: each step says what it does and skips what is present.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${LLM_ROUTER_CACHE:-$HOME/.cache/llm-router}"
say() { echo "[setup] $*"; }

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)   # pingora's zlib-ng build
# systemd-analyze: the tests verify the unit file and its hardening score.
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  say "installing system packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
else
  say "system packages present (cmake, systemd-analyze)"
fi

if [ "${1:-}" = "--python" ]; then
  VENV="$CACHE/venv"
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating Python venv for the SDK tests in $VENV"
    mkdir -p "$CACHE"
    python3 -m venv "$VENV"
  fi
  if ! "$VENV/bin/python" -c "import openai, pytest, anthropic" 2>/dev/null; then
    say "installing Python test packages (requirements from tests/python/requirements.txt)"
    "$VENV/bin/pip" install -q -r tests/python/requirements.txt
  else
    say "Python test packages present in $VENV"
  fi
fi
