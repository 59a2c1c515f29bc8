#!/usr/bin/env bash
# Registry token issuance under load: wrk with 200 concurrent connections on
# loopback against GET /v2/token of a release-built leengine-core backed by
# a real etcd. Each request authenticates with Basic user:access-token and
# asks for pull,push on a private image the user reaches through a group
# role (token lookup + user + image/group membership reads + ES256 signing).
#   DURATION (default 20s), CONNECTIONS (200), THREADS (2)
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-200}
THREADS=${THREADS:-2}

cargo build -q --release -p leengine-core --bin leengine-core
BIN=target/release/leengine-core

WORK=$(mktemp -d /tmp/leengine-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

source hack/lib.sh
CORE_PORT=$(free_port)
start_etcd "$WORK/etcd" bench
PIDS+=("$ETCD_PID")
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=leengine-core -keyout "$WORK/token.key" -out "$WORK/token.crt" 2>/dev/null
head -c 24 /dev/urandom | base64 >"$WORK/admin.pw"

RUST_LOG=warn "$BIN" --listen "127.0.0.1:$CORE_PORT" --etcd "http://127.0.0.1:$ETCD_PORT" \
  --admin-password-file "$WORK/admin.pw" \
  --token-service bench-registry --token-key "$WORK/token.key" --token-cert "$WORK/token.crt" \
  >"$WORK/core.log" 2>&1 &
PIDS+=($!)
URL="http://127.0.0.1:$CORE_PORT"
for _ in $(seq 100); do curl -sf "$URL/openapi.json" >/dev/null && break; sleep 0.2; done

api() { # METHOD PATH TOKEN [BODY]
  curl -sf -X "$1" -H "Authorization: Bearer $3" -H 'content-type: application/json' ${4:+-d "$4"} "$URL$2"
}
ADMIN=$(curl -sf -X POST -H 'content-type: application/json' \
  -d "{\"user\":\"admin\",\"password\":\"$(cat "$WORK/admin.pw")\"}" "$URL/api/v1/login" | jq -r .token)
api POST /api/v1/users "$ADMIN" '{"name":"owner","password":"owner-password"}' >/dev/null
api POST /api/v1/users "$ADMIN" '{"name":"dev","password":"dev-password"}' >/dev/null
OWNER=$(curl -sf -X POST -d '{"user":"owner","password":"owner-password"}' -H 'content-type: application/json' "$URL/api/v1/login" | jq -r .token)
DEV=$(curl -sf -X POST -d '{"user":"dev","password":"dev-password"}' -H 'content-type: application/json' "$URL/api/v1/login" | jq -r .token)
api POST /api/v1/groups "$OWNER" '{"name":"team"}' >/dev/null
api POST /api/v1/images "$OWNER" '{"name":"team/app"}' >/dev/null
api PUT /api/v1/groups/team/members/dev "$OWNER" '{"role":"Developer"}' >/dev/null

BASIC=$(printf 'dev:%s' "$DEV" | base64 -w0)
TOKEN_PATH="/v2/token?service=bench-registry&scope=repository:team/app:pull,push"
# Sanity: the token grants both actions.
curl -sf -H "Authorization: Basic $BASIC" "$URL$TOKEN_PATH" | python3 -c '
import base64, json, sys
p = json.load(sys.stdin)["token"].split(".")[1]
claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
sys.exit(0 if claims["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}] else 1)
' || { echo "token.sh: sanity check failed" >&2; exit 1; }

echo "== wrk -t$THREADS -c$CONNECTIONS -d$DURATION GET /v2/token (Basic dev:access-token) on $(nproc) CPUs"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "Authorization: Basic $BASIC" "$URL$TOKEN_PATH"
