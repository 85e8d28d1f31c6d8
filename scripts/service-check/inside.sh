#!/bin/bash
# Runs at boot inside the container (systemd is PID 1): the README's service install as
# written, from the clone at /src (`make release models` already done there), then the
# checks. Writes /check/out/log.txt and /check/out/result (PASS, or FAIL: why).
exec > /check/out/log.txt 2>&1
set -x
fail() { echo "FAIL: $*" > /check/out/result; journalctl -u llm-router --no-pager | tail -60; systemctl poweroff; exit 1; }
cd /src
useradd --system --home-dir /var/lib/llm-router --shell /usr/sbin/nologin llm-router
usermod -aG video llm-router
install -m 755 target/release/llm-router /usr/local/bin/
install -d /etc/llm-router
install -d -o llm-router -g llm-router /var/lib/llm-router /var/log/llm-router
cp -r models /var/lib/llm-router/
install -m 644 conf/config.yaml /etc/llm-router/config.yaml
install -m 640 -g llm-router conf/keys.yaml /etc/llm-router/keys.yaml
# `llm-router keys new --id ops`, its entry pasted under `ops`'s keys: (what the README says).
out=$(llm-router keys new --id ops) || fail "keys new"
KEY=$(echo "$out" | head -1)
entry=$(echo "$out" | tail -1 | sed 's/^- //')
sed -i "s|keys: \[\]  *# ops.*|keys: [$entry]|" /etc/llm-router/keys.yaml
grep -q sha256 /etc/llm-router/keys.yaml || fail "the key entry was not pasted"
install -m 644 systemd/pingora.yaml /etc/llm-router/pingora.yaml
install -m 644 systemd/llm-router.service /etc/systemd/system/
systemctl daemon-reload && systemctl enable --now llm-router || fail "enable --now"
get() { curl -sf --max-time 5 -H "Authorization: Bearer $KEY" "http://127.0.0.1:8947$1"; }
wait_health() { for _ in $(seq 1 60); do get /health >/dev/null && return 0; sleep 1; done; return 1; }
wait_health || fail "/health not 200 after start"
get /v1/models | grep -q bge-small-en-v1.5 || fail "/v1/models"
code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8947/v1/models)
[ "$code" = 401 ] || fail "/v1/models without a key: $code, not 401"
emb() { curl -sf --max-time 10 http://127.0.0.1:8947/v1/embeddings -H 'content-type: application/json' -H "Authorization: Bearer $KEY" \
  -d '{"model":"bge-small-en-v1.5","input":"hello"}' | grep -q '"embedding"'; }
for _ in $(seq 1 60); do emb && break; sleep 1; done
emb || fail "embeddings through the router"
old=$(systemctl show -p MainPID --value llm-router)
systemctl reload llm-router || fail "reload"
for _ in $(seq 1 60); do kill -0 "$old" 2>/dev/null || break; sleep 1; done
kill -0 "$old" 2>/dev/null && fail "old process $old still there 60 s after the reload"
new=$(systemctl show -p MainPID --value llm-router)
[ "$new" != "$old" ] && [ "$new" != 0 ] || fail "MainPID $old -> $new"
[ "$(cat /run/llm-router/router.pid)" = "$new" ] || fail "pid file does not name $new"
systemctl is-active --quiet llm-router || fail "not active after the reload"
wait_health || fail "/health after the reload"
emb || fail "embeddings after the reload"
systemctl stop llm-router || fail "stop"
systemctl is-active --quiet llm-router && fail "still active after stop"
pgrep -u llm-router >/dev/null && fail "processes of llm-router left after stop"
echo "PASS: enable --now (pid $old), /health, /v1/models (401 without the key), embeddings with the key; reload (pid $new, old gone); stop" > /check/out/result
systemctl poweroff
