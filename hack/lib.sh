# Shared by the scripts in hack/: source it, don't run it.

# A loopback TCP port that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_etcd DATA_DIR [NAME]: a private single-member etcd on free loopback
# ports, logging to DATA_DIR.log. Sets ETCD_PID, ETCD_PORT and ETCD_URL and
# returns once etcd answers /health (non-zero after 10 s).
start_etcd() {
  local dir=$1 name=${2:-leengine} peer
  ETCD_PORT=$(free_port); peer=$(free_port)
  ETCD_URL="http://127.0.0.1:$ETCD_PORT"
  etcd --name "$name" --data-dir "$dir" --log-level warn \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$name=http://127.0.0.1:$peer" >"$dir.log" 2>&1 &
  ETCD_PID=$!
  for _ in $(seq 100); do
    curl -sf "$ETCD_URL/health" >/dev/null && return 0
    sleep 0.1
  done
  echo "etcd did not become healthy; see $dir.log" >&2
  return 1
}
