#!/usr/bin/env bash
# bench/chat.sh — the embedded `gochat up` under the loadgen's `chat` scenario
# (issue 3: 10k online, 5k msg/s, p99 send→deliver).
#
# Seeds PAIRS×2 users and PAIRS 1:1 conversations into a fresh data
# directory, starts `gochat up`, then runs the `chat` scenario RUNS times
# against the same process: the first run meets cold caches (what a restart
# costs), the later ones measure the steady state. Prints one line per run.
#
#   bench/chat.sh                          # 5,000 pairs, 5,000 msg/s, 3 runs
#   RATE=2000 RUNS=2 OUT=/tmp/chat bench/chat.sh
#
# Stop other work on the machine first: the loadgen runs on the same cores.
set -euo pipefail

PAIRS=${PAIRS:-5000}
RATE=${RATE:-5000}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
OUT=${OUT:-$(mktemp -d /tmp/gochat-chat.XXXXXX)}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}

die() { echo "chat.sh: $*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if [[ -z ${BIN_PREBUILT:-} ]]; then
    (cd "$ROOT" && cargo build --release --locked -p gochat -p gochat-loadgen) || die "build failed"
fi
for b in gochat gochat-loadgen; do [[ -x $BIN/$b ]] || die "missing $BIN/$b"; done

DATA=$OUT/data
rm -rf "$DATA"
mkdir -p "$DATA"
"$BIN/gochat" seed --data-dir "$DATA" --users $((PAIRS * 2)) --pairs "$PAIRS" --out "$DATA/users.json" > "$OUT/seed.log" 2>&1

HTTP=$(free_port); WS=$(free_port)
"$BIN/gochat" up --http-addr "127.0.0.1:$HTTP" --ws-addr "127.0.0.1:$WS" --data-dir "$DATA" > "$OUT/gochat.log" 2>&1 &
GOCHAT=$!
trap 'kill $GOCHAT 2>/dev/null; wait $GOCHAT 2>/dev/null || true' EXIT
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$HTTP/healthz" > /dev/null && break
    kill -0 $GOCHAT 2>/dev/null || die "gochat up exited; see $OUT/gochat.log"
    sleep 0.2
done

echo "chat: $PAIRS pairs ($((PAIRS * 2)) connections), $RATE msg/s for ${DURATION}s, $RUNS runs against one gochat up (pid $GOCHAT)"
status=0
for run in $(seq "$RUNS"); do
    json=$OUT/chat-$run.json
    "$BIN/gochat-loadgen" chat --pairs "$PAIRS" --rate "$RATE" --duration "$DURATION" \
        --ws "127.0.0.1:$WS" --auth secret --jwt-secret-file "$DATA/jwt.secret" \
        --users-file "$DATA/users.json" --json "$json" --quiet > "$OUT/loadgen-$run.log" 2>&1 || status=1
    python3 - "$run" "$json" <<'PY'
import json, sys
run, path = sys.argv[1], sys.argv[2]
j = json.load(open(path))
lat = j.get("latency_us") or j.get("latency") or {}
def ms(k):
    v = lat.get(k)
    return "–" if v is None else f"{v / 1000:.1f}"
label = "cold" if run == "1" else "warm"
print(f"run {run} ({label}): sent {j.get('sent')} acked {j.get('acked')} delivered {j.get('delivered')} "
      f"lost {j.get('lost')} duplicated {j.get('duplicated')} | p50 {ms('p50')} p90 {ms('p90')} "
      f"p99 {ms('p99')} p999 {ms('p999')} max {ms('max')} ms")
PY
done
echo "logs and loadgen JSON: $OUT"
exit $status
