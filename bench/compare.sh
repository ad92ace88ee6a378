#!/usr/bin/env bash
# compare.sh: the same gochat-loadgen scenarios against engine-room
# (gateway-core) and baseline-room (tokio + tokio-tungstenite), in one run,
# plus the write(2)-loop reference; prints a markdown table.
#
# Usage: bench/compare.sh [--quick]
# Knobs (environment): SHARDS=2 DURATION=10 WARMUP=2 HOLD=6 IDLE_COUNTS="5000 19000"
#   ROOM_MEMBERS=2000 ROOM_RATES="40 160 640" BIG_ROOM=10000 BIG_ROOM_RATE=20
#   ROOM_VARIANTS="engine baseline" OUT=<dir for logs and JSON>
# Only 127.0.0.x is used. Exits non-zero when a step fails (a loadgen run
# that loses messages is reported in the table, not treated as a failure).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

if [[ "${1:-}" == "--quick" ]]; then
    : "${DURATION:=4}" "${WARMUP:=1}" "${HOLD:=3}" "${IDLE_COUNTS:=2000}" "${ROOM_MEMBERS:=500}"
    : "${ROOM_RATES:=40}" "${BIG_ROOM:=1000}" "${BIG_ROOM_RATE:=20}"
fi
: "${SHARDS:=2}" "${DURATION:=10}" "${WARMUP:=2}" "${HOLD:=6}" "${IDLE_COUNTS:=5000 19000}"
: "${ROOM_MEMBERS:=2000}" "${ROOM_RATES:=40 160 640}" "${BIG_ROOM:=10000}" "${BIG_ROOM_RATE:=20}"
: "${ROOM_VARIANTS:=engine baseline}"
OUT=${OUT:-$(mktemp -d /tmp/gochat-compare.XXXXXX)}
mkdir -p "$OUT"
TICK=$(getconf CLK_TCK)
PORT=${BASE_PORT:-18200}

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "compare.sh: $*" >&2; exit 1; }
log() { echo "[compare $(date +%T)] $*" >&2; }

log "building (release): gochat-bench, gochat-loadgen"
cargo build --release -p gochat-bench -p gochat-loadgen >&2
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
for b in engine-room baseline-room write-loop gochat-loadgen; do [[ -x $BIN/$b ]] || die "missing $BIN/$b"; done

SECRET=$OUT/jwt.secret
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$SECRET"

# --- helpers ------------------------------------------------------------------
# jget KEY FILE: the first numeric value of "KEY" in a JSON file.
jget() { grep -o "\"$1\": *-\?[0-9.eE+-]*" "$2" | head -1 | sed 's/.*: *//'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# stat FIELD: 1 connections, 2 messages, 3 deliveries, 4 rejected (from the server's --stats-file).
sstat() { awk -v f="$1" '{print $f}' "$STATS" 2>/dev/null || echo 0; }
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }

# start_server VARIANT: sets SPID, ADDR, STATS.
start_server() {
    PORT=$((PORT + 1))
    ADDR=127.0.0.1:$PORT
    STATS=$OUT/stats-$PORT
    local common=(--addr "$ADDR" --jwt-secret-file "$SECRET" --stats-file "$STATS")
    case $1 in
        engine) "$BIN/engine-room" --shards "$SHARDS" "${common[@]}" > "$OUT/server-$PORT.log" 2>&1 & ;;
        baseline) "$BIN/baseline-room" "${common[@]}" > "$OUT/server-$PORT.log" 2>&1 & ;;
        baseline-4k) "$BIN/baseline-room" --read-buffer 4096 "${common[@]}" > "$OUT/server-$PORT.log" 2>&1 & ;;
        *) die "unknown variant $1" ;;
    esac
    SPID=$!
    PIDS+=("$SPID")
    for _ in $(seq 100); do
        grep -q "listening on" "$OUT/server-$PORT.log" 2>/dev/null && [[ -f $STATS ]] && return 0
        kill -0 "$SPID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$OUT/server-$PORT.log" >&2
    die "$1 did not start"
}

stop_server() {
    kill -TERM "$SPID" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
}

# loadgen NAME ARGS...: runs in the background; sets LPID, LJSON.
loadgen() {
    local name=$1; shift
    LJSON=$OUT/$name.json
    "$BIN/gochat-loadgen" "$@" --ws "$ADDR" --auth secret --jwt-secret-file "$SECRET" --json "$LJSON" --quiet \
        > "$OUT/$name.out" 2> "$OUT/$name.err" &
    LPID=$!
    PIDS+=("$LPID")
}

# wait_loadgen: 0 ok, 1 lost (reported), anything else fails the run.
wait_loadgen() {
    local rc=0
    wait "$LPID" || rc=$?
    if [[ $rc -ne 0 && $rc -ne 1 ]] || [[ ! -s $LJSON ]]; then
        tail -20 "${LJSON%.json}.err" >&2 || true
        die "loadgen failed (exit $rc), see ${LJSON%.json}.err"
    fi
    return 0
}

# wait_for FIELD MIN SECS: until the server's counter FIELD >= MIN; fails after
# SECS, or when the loadgen exits first. With STALL=S it also returns when the
# counter has not moved for S seconds (a server that cannot take more connections).
wait_for() {
    local deadline=$(( $(date +%s) + $3 )) last=-1 since
    since=$(date +%s)
    while (( $(sstat "$1") < $2 )); do
        (( $(date +%s) < deadline )) || die "timed out waiting for stat $1 >= $2 (now $(sstat "$1"))"
        kill -0 "$LPID" 2>/dev/null || { wait_loadgen; die "loadgen exited before stat $1 reached $2"; }
        if [[ -n ${STALL:-} ]]; then
            local cur; cur=$(sstat "$1")
            if (( cur != last )); then last=$cur; since=$(date +%s);
            elif (( cur > 0 && $(date +%s) - since >= STALL )); then log "  stalled at $cur"; return 0; fi
        fi
        sleep 0.1
    done
}

declare -A R  # results: R[metric|variant]

# idle VARIANT N: RSS per idle connection and handshakes/s.
idle() {
    local v=$1 n=$2 extra=()
    (( n > 10000 )) && extra=(--procs 2 --source-ips 2-200)
    start_server "$v"
    sleep 0.5
    local rss0; rss0=$(rss_kib "$SPID")
    log "idle: $v, $n connections"
    loadgen "idle-$v-$n" connect --connections "$n" --hold "$HOLD" "${extra[@]}"
    STALL=5 wait_for 1 "$n" 300
    sleep 2
    local rss1 conns; rss1=$(rss_kib "$SPID"); conns=$(sstat 1)
    wait_loadgen
    stop_server
    R["rss|$n|$v"]=$(calc "($rss1 - $rss0) * 1024 / $conns" 0)
    R["hs|$n|$v"]=$(calc "$(jget handshakes_per_s "$LJSON")" 0)
    R["est|$n|$v"]=$(jget established "$LJSON")
    log "  rss/conn ${R["rss|$n|$v"]} B, handshakes/s ${R["hs|$n|$v"]}, established ${R["est|$n|$v"]}"
}

# room VARIANT MEMBERS RATE: CPU-µs per delivery, deliveries/s, p99.
room() {
    local v=$1 m=$2 r=$3 key="$2@$3"
    start_server "$v"
    log "room: $v, $m members, $r msg/s"
    loadgen "room-$v-$m-$r" room --members "$m" --rate "$r" --warmup "$WARMUP" --duration "$DURATION" --drain 3
    wait_for 2 1 300
    sleep "$WARMUP"
    local t0 c0 d0 t1 c1 d1 c2
    t0=$(now); c0=$(cpu_ticks "$SPID"); d0=$(sstat 3)
    sleep "$(calc "$DURATION - 0.5" 1)"
    t1=$(now); c1=$(cpu_ticks "$SPID"); d1=$(sstat 3)
    wait_loadgen
    c2=$(cpu_ticks "$SPID")
    stop_server
    local got; got=$(jget delivered "$LJSON")
    (( got > 0 )) || die "loadgen received nothing for $v $key"
    # Per message received by the clients: server CPU from the start of the
    # measured sends until the loadgen finished draining (a saturated server
    # is still catching up then), over what loadgen counted as delivered.
    R["rcpu|$key|$v"]=$(calc "($c2 - $c0) * 1000000 / $TICK / $got" 2)
    local dd=$((d1 - d0))
    (( dd > 0 )) || die "no deliveries measured for $v $key"
    R["cpu|$key|$v"]=$(calc "($c1 - $c0) * 1000000 / $TICK / $dd" 2)
    R["dps|$key|$v"]=$(calc "$dd / ($t1 - $t0)" 0)
        R["p99|$key|$v"]=$(calc "$(jget p99 "$LJSON") / 1000" 2)
    R["lost|$key|$v"]=$(jget lost "$LJSON")
    R["ldps|$key|$v"]=$(calc "$(jget delivered_per_s "$LJSON")" 0)
    log "  cpu/received delivery ${R["rcpu|$key|$v"]} µs, cpu/delivery (server count) ${R["cpu|$key|$v"]} µs, deliveries/s ${R["dps|$key|$v"]}, p99 ${R["p99|$key|$v"]} ms, lost ${R["lost|$key|$v"]}"
}

writeloop() {
    local n=$1 msgs=$(( 1000000 / $1 ))
    log "write-loop: $n sockets x $msgs messages"
    "$BIN/write-loop" --sockets "$n" --messages "$msgs" --json "$OUT/write-loop-$n.json" > "$OUT/write-loop-$n.out" 2>&1 \
        || { cat "$OUT/write-loop-$n.out" >&2; die "write-loop failed"; }
    R["wl|$n"]=$(calc "$(jget cpu_us_per_delivery "$OUT/write-loop-$n.json")" 2)
    log "  ${R["wl|$n"]} µs CPU per write(2)"
    "$BIN/write-loop" --uring --sockets "$n" --messages "$msgs" --json "$OUT/write-loop-uring-$n.json" > "$OUT/write-loop-uring-$n.out" 2>&1 \
        || { cat "$OUT/write-loop-uring-$n.out" >&2; die "write-loop --uring failed"; }
    R["wlu|$n"]=$(calc "$(jget cpu_us_per_delivery "$OUT/write-loop-uring-$n.json")" 2)
    log "  ${R["wlu|$n"]} µs CPU per send batched through io_uring"
}

# --- runs -----------------------------------------------------------------------
for n in $IDLE_COUNTS; do
    for v in engine baseline baseline-4k; do idle "$v" "$n"; done
done
ROOMS=()
for r in $ROOM_RATES; do ROOMS+=("$ROOM_MEMBERS@$r"); done
ROOMS+=("$BIG_ROOM@$BIG_ROOM_RATE")
for key in "${ROOMS[@]}"; do
    for v in $ROOM_VARIANTS; do room "$v" "${key%@*}" "${key#*@}"; done
done
for n in $ROOM_MEMBERS $BIG_ROOM; do writeloop "$n"; done

# --- table ----------------------------------------------------------------------
isnum() { [[ ${1:-} =~ ^[0-9]+([.][0-9]+)?$ ]]; }
ratio() { if isnum "${1:-}" && isnum "${2:-}" && [[ $2 =~ [1-9] ]]; then calc "$1 / $2" 2; else echo "–"; fi; }
get() { echo "${R["$1"]:-–}"; }
B=${ROOM_VARIANTS##* }  # the baseline variant the room runs used
{
echo
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), kernel $(uname -r); engine shards: $SHARDS"
echo
echo "| scenario | metric | engine | baseline (default buffers) | baseline (4 KiB buffers) | engine / baseline | engine / baseline-4k | write(2) loop | io_uring loop |"
echo "|---|---|---|---|---|---|---|---|---|"
for n in $IDLE_COUNTS; do
    e=$(get "rss|$n|engine"); b=$(get "rss|$n|baseline"); s=$(get "rss|$n|baseline-4k")
    echo "| $n idle connections | RSS per connection (bytes) | $e | $b | $s | $(ratio "$e" "$b") | $(ratio "$e" "$s") | | |"
    e=$(get "hs|$n|engine"); b=$(get "hs|$n|baseline"); s=$(get "hs|$n|baseline-4k")
    echo "| $n idle connections | handshakes/s (loadgen) | $e | $b | $s | $(ratio "$e" "$b") | $(ratio "$e" "$s") | | |"
    echo "| $n idle connections | established | $(get "est|$n|engine") | $(get "est|$n|baseline") | $(get "est|$n|baseline-4k") | | | | |"
done
col() { # col METRIC KEY: engine, baseline, baseline-4k cells
    local c
    for v in engine baseline baseline-4k; do c=$(get "$1|$2|$v"); printf '| %s ' "$c"; done
}
for key in "${ROOMS[@]}"; do
    m=${key%@*}; r=${key#*@}; name="room $m members, $r msg/s"
    wl=$(get "wl|$m"); wlu=$(get "wlu|$m")
    e=$(get "rcpu|$key|engine")
    echo "| $name | **gateway CPU-µs per delivered message** $(col rcpu "$key")| $(ratio "$e" "$(get "rcpu|$key|baseline")") | $(ratio "$e" "$(get "rcpu|$key|baseline-4k")") | $wl | $wlu |"
    e=$(get "cpu|$key|engine")
    echo "| $name | CPU-µs per delivery handed out (server count, window) $(col cpu "$key")| $(ratio "$e" "$(get "cpu|$key|baseline")") | $(ratio "$e" "$(get "cpu|$key|baseline-4k")") | $wl | $wlu |"
    for v in engine baseline baseline-4k; do if isnum "$(get "rcpu|$key|$v")"; then R["rdcpu|$key|$v"]=$(ratio 1000000 "$(get "rcpu|$key|$v")"); fi; done
    e=$(get "rdcpu|$key|engine")
    echo "| $name | delivered messages per CPU-second $(col rdcpu "$key")| $(ratio "$e" "$(get "rdcpu|$key|baseline")") | $(ratio "$e" "$(get "rdcpu|$key|baseline-4k")") | $(ratio 1000000 "$wl") | $(ratio 1000000 "$wlu") |"
    echo "| $name | deliveries/s (server) $(col dps "$key")| | | | |"
    echo "| $name | deliveries/s (loadgen, received) $(col ldps "$key")| | | | |"
    echo "| $name | p99 send→deliver (ms) $(col p99 "$key")| $(ratio "$(get "p99|$key|engine")" "$(get "p99|$key|baseline")") | $(ratio "$(get "p99|$key|engine")" "$(get "p99|$key|baseline-4k")") | | |"
    echo "| $name | lost $(col lost "$key")| | | | |"
done
echo
echo "Logs and loadgen JSON: $OUT"
} | tee "$OUT/table.md"
