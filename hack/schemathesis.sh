#!/usr/bin/env bash
# OpenAPI fuzzing of leengine-core with schemathesis (PyPI), bounded.
# Starts a real etcd and the core (with the registry token server enabled)
# on free loopback ports, signs in as the bootstrapped admin, and runs
# schemathesis against /openapi.json. Fails on any 5xx (not_a_server_error)
# and on responses that break the documented status codes, content types
# or schemas, on endpoints that ignore authentication, on deleted resources
# that are still there, on unsupported methods that are not refused, and on
# schema-violating requests that are accepted.
# Also fails if the admin password, the notify secret or an access token
# shows up in the core's log.
#   SCHEMATHESIS_MAX_EXAMPLES (default 25) bounds the cases per operation;
#   extra arguments are passed to `st run`.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v st >/dev/null || pip install --quiet schemathesis
command -v etcd >/dev/null || { echo "schemathesis.sh: etcd missing (hack/deps.sh)" >&2; exit 1; }

cargo build -q -p leengine-core --bin leengine-core
BIN=target/debug/leengine-core

WORK=$(mktemp -d /tmp/leengine-st.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

source hack/lib.sh
CORE_PORT=$(free_port)
start_etcd "$WORK/etcd" st
PIDS+=("$ETCD_PID")

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=leengine-core -keyout "$WORK/token.key" -out "$WORK/token.crt" 2>/dev/null
head -c 24 /dev/urandom | base64 >"$WORK/admin.pw"
head -c 24 /dev/urandom | base64 >"$WORK/notify.secret"


RUST_LOG=info,leengine_core=debug "$BIN" --listen "127.0.0.1:$CORE_PORT" --etcd "http://127.0.0.1:$ETCD_PORT" \
  --admin-user admin --admin-password-file "$WORK/admin.pw" \
  --token-service st-registry --token-key "$WORK/token.key" --token-cert "$WORK/token.crt" \
  --notify-secret-file "$WORK/notify.secret" \
  --build-registry-server registry.st.local:5000 --build-git-host https://git.st.local \
  >"$WORK/core.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$CORE_PORT/openapi.json" >/dev/null && break; sleep 0.2; done

# A registered build host (nobody runs its tasks), so that triggered builds
# are placed instead of answering 503 "no build host".
ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$ETCD_PORT" put /leengine/builders/st-builder \
  '{"id":"st-builder","capacity":1,"running":0,"startedAt":"2026-01-01T00:00:00Z"}' >/dev/null

TOKEN=$(curl -sf -X POST -H 'content-type: application/json' \
  -d "{\"user\":\"admin\",\"password\":\"$(cat "$WORK/admin.pw")\"}" \
  "http://127.0.0.1:$CORE_PORT/api/v1/login" | jq -r .token)
[ -n "$TOKEN" ] && [ "$TOKEN" != null ] || { echo "schemathesis.sh: login failed" >&2; cat "$WORK/core.log" >&2; exit 1; }
# A login session may only mint tokens that expire before it does; an access
# token minted with the password (Basic) has no expiry, so the fuzzer can
# exercise token issuance too.
TOKEN=$(curl -sf -X POST -u "admin:$(cat "$WORK/admin.pw")" -H 'content-type: application/json' \
  -d '{"name":"schemathesis"}' "http://127.0.0.1:$CORE_PORT/api/v1/user/tokens" | jq -r .token)
[ -n "$TOKEN" ] && [ "$TOKEN" != null ] || { echo "schemathesis.sh: minting a token failed" >&2; cat "$WORK/core.log" >&2; exit 1; }

status=0
# st keeps a cache directory in its working directory: keep it out of the tree.
(cd "$WORK" && st run "http://127.0.0.1:$CORE_PORT/openapi.json" \
  -H "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth,use_after_free,unsupported_method,negative_data_rejection \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-25}" \
  --phases examples,coverage,fuzzing,stateful \
  --generation-database none --seed 1 --generation-with-security-parameters false \
  --report junit,ndjson --report-dir "${SCHEMATHESIS_REPORT_DIR:-$WORK/report}" \
  --no-color "$@") || status=$?
# Secrets never reach the log.
for secret in "$(cat "$WORK/admin.pw")" "$(cat "$WORK/notify.secret")" "${TOKEN#lep_*_}"; do
  if grep -qF -- "$secret" "$WORK/core.log"; then
    echo "schemathesis.sh: a secret appears in the core's log" >&2
    status=1
  fi
done
if [ "$status" -ne 0 ]; then
  echo "--- core log (tail) ---" >&2
  tail -n 50 "$WORK/core.log" >&2
fi
exit "$status"
