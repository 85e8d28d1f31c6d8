#!/usr/bin/env bash
# `make service-check`: the README's "Running as a service" install, as written, on a real
# systemd (PID 1): a minimal Debian 12 root (debootstrap, cached) booted with
# systemd-nspawn, the clone bind-mounted read-only. Needs root (or the capabilities
# nspawn wants) and the Debian mirror; not part of `make test`. The LLM engines of
# conf/config.yaml need vLLM and a GPU, so they fail to start there: the check is the
# service itself (start, /health, /v1/models, embeddings through the router, reload with
# a new main process and the old one gone, stop).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${LLM_ROUTER_CACHE:-$HOME/.cache/llm-router}"
ROOT="$CACHE/service-check/rootfs"
say() { echo "[service-check] $*"; }
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
make release models
if [ ! -x "$ROOT/usr/bin/curl" ]; then
  say "building a Debian 12 root in $ROOT (once)"
  rm -rf "$ROOT"; mkdir -p "$ROOT"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,procps,ca-certificates,curl \
    bookworm "$ROOT" http://deb.debian.org/debian >/dev/null
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n' > "$ROOT/etc/hosts"
  echo svc-check > "$ROOT/etc/hostname"
fi
# A fresh copy of the root each run: the check installs into it.
RUN="$(mktemp -d)"; OUT="$RUN/out"; mkdir -p "$OUT"
trap 'rm -rf "$RUN"' EXIT
say "copying the root"
cp -a "$ROOT" "$RUN/root"
mkdir -p "$RUN/root/check" "$RUN/root/src"
install -m 755 scripts/service-check/inside.sh "$RUN/root/check/inside.sh"
cat > "$RUN/root/etc/systemd/system/svc-check.service" <<'UNIT'
[Unit]
Description=README service install check
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/check/inside.sh
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/svc-check.service "$RUN/root/etc/systemd/system/multi-user.target.wants/svc-check.service"
say "booting systemd in the container (log: $OUT/log.txt)"
timeout 600 systemd-nspawn -q --register=no --keep-unit -D "$RUN/root" \
  --bind-ro="$PWD:/src" --bind="$OUT:/check/out" -b > "$RUN/console.log" 2>&1 || true
result="$(cat "$OUT/result" 2>/dev/null || echo "FAIL: no result (container console: $(tail -3 "$RUN/console.log"))")"
say "$result"
mkdir -p target/service-check && cp "$OUT/log.txt" target/service-check/log.txt 2>/dev/null || true
[[ "$result" == PASS* ]]
