#!/usr/bin/env bash
# Starts the distributed mode's backing services natively on loopback, no
# Docker: MariaDB (3306), Redis (6379), etcd (2379) and the Kafka-compatible
# broker tansu (9092). Data lives in a temporary directory.
#
#   deploy/dev-services.sh up       install what is missing, start, wait until ready
#   deploy/dev-services.sh down     stop everything and delete the data
#   deploy/dev-services.sh status   what runs, and where
#   deploy/dev-services.sh env      the connection settings as shell exports
#
# Environment (all optional):
#   GOCHAT_DEV_DIR      data and pid files          (default /tmp/gochat-dev)
#   GOCHAT_CACHE_DIR    where the tansu build stays  (default ~/.cache/gochat)
#   GOCHAT_DEV_MYSQL_PORT / _REDIS_PORT / _ETCD_PORT / _KAFKA_PORT
#
# Debian packages are installed with apt-get when a binary is missing
# (mariadb-server, redis-server, etcd-server, protobuf-compiler and
# libprotobuf-dev: etcd-client's build needs protoc and the well-known
# types). tansu comes from crates.io: `cargo install tansu --locked
# --features dynostore,libsql` takes 10-15 minutes on two cores, so the
# binary is cached and reused. Its sqlite storage engine is used; the
# memory:// engine in 0.6.0 loses records when a consumer resumes from a
# committed offset in the middle of a batch.
set -euo pipefail

DIR=${GOCHAT_DEV_DIR:-/tmp/gochat-dev}
CACHE=${GOCHAT_CACHE_DIR:-$HOME/.cache/gochat}
MYSQL_PORT=${GOCHAT_DEV_MYSQL_PORT:-3306}
REDIS_PORT=${GOCHAT_DEV_REDIS_PORT:-6379}
ETCD_PORT=${GOCHAT_DEV_ETCD_PORT:-2379}
KAFKA_PORT=${GOCHAT_DEV_KAFKA_PORT:-9092}
TANSU_VERSION=0.6.0
TANSU="$CACHE/tansu-$TANSU_VERSION/bin/tansu"

log() { printf 'dev-services: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # name port seconds
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        port_open "$2" && return 0
        sleep 0.1
    done
    die "$1 did not open 127.0.0.1:$2 within $3 s (log: $DIR/$1.log)"
}

# The program each service runs as, to tell our process from a reused pid.
program() {
    case $1 in
    mariadb) echo mariadbd ;;
    redis) echo redis-server ;;
    etcd) echo etcd ;;
    tansu) echo tansu ;;
    esac
}

running() { # name: its pid file names a live process of that program
    local pid
    [[ -f "$DIR/$1.pid" ]] || return 1
    pid=$(cat "$DIR/$1.pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$(program "$1")"
}

install_packages() {
    local missing=()
    command -v mariadbd >/dev/null || [[ -x /usr/sbin/mariadbd ]] || missing+=(mariadb-server)
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v etcd >/dev/null || missing+=(etcd-server)
    command -v protoc >/dev/null || missing+=(protobuf-compiler)
    [[ -f /usr/include/google/protobuf/descriptor.proto ]] || missing+=(libprotobuf-dev)
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    # Keep Debian from starting the packaged daemons on our ports: ours run
    # on their own, with data in $DIR.
    local policy=/usr/sbin/policy-rc.d placed=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null && "${sudo[@]}" chmod +x "$policy" && placed=1
    fi
    "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >"$DIR/apt.log" 2>&1 \
        || { "${sudo[@]}" apt-get update >>"$DIR/apt.log" 2>&1 && "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >>"$DIR/apt.log" 2>&1; } \
        || { ((placed)) && "${sudo[@]}" rm -f "$policy"; die "apt-get install ${missing[*]} failed (see $DIR/apt.log)"; }
    ((placed)) && "${sudo[@]}" rm -f "$policy"
    return 0
}

install_tansu() {
    [[ -x "$TANSU" ]] && return 0
    log "building tansu $TANSU_VERSION (once, cached in $CACHE; 10-15 min)"
    mkdir -p "$CACHE"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
        --root "$CACHE/tansu-$TANSU_VERSION" >"$DIR/tansu-build.log" 2>&1 \
        || die "building tansu failed (see $DIR/tansu-build.log)"
}

start_mariadb() {
    running mariadb && return 0
    port_open "$MYSQL_PORT" && die "port $MYSQL_PORT is taken by something else (another MySQL?)"
    local data="$DIR/mariadb"
    if [[ ! -d "$data/mysql" ]]; then
        mkdir -p "$data"
        mariadb-install-db --user="$(id -un)" --datadir="$data" --auth-root-authentication-method=normal \
            --skip-test-db >"$DIR/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $DIR/mariadb-install.log)"
    fi
    nohup "$(command -v mariadbd || echo /usr/sbin/mariadbd)" --no-defaults --user="$(id -un)" --datadir="$data" \
        --socket="$DIR/mariadb.sock" --pid-file="$DIR/mariadb.pid" --port="$MYSQL_PORT" --bind-address=127.0.0.1 \
        --skip-name-resolve --max-connections=500 --innodb-buffer-pool-size=256M \
        --innodb-flush-log-at-trx-commit=2 >"$DIR/mariadb.log" 2>&1 &
    wait_port mariadb "$MYSQL_PORT" 60
    # One account for every GoChat process and test; tests make their own databases.
    mariadb --no-defaults --socket="$DIR/mariadb.sock" -uroot <<'SQL' || die "cannot create the gochat account"
CREATE USER IF NOT EXISTS 'gochat'@'%' IDENTIFIED BY 'gochat';
GRANT ALL PRIVILEGES ON *.* TO 'gochat'@'%';
CREATE DATABASE IF NOT EXISTS gochat CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
SQL
}

start_redis() {
    running redis && return 0
    port_open "$REDIS_PORT" && die "port $REDIS_PORT is taken by something else (another Redis?)"
    mkdir -p "$DIR/redis"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DIR/redis" --daemonize yes \
        --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" --save "" --appendonly yes --appendfsync everysec >/dev/null
    wait_port redis "$REDIS_PORT" 20
}

start_etcd() {
    running etcd && return 0
    port_open "$ETCD_PORT" && die "port $ETCD_PORT is taken by something else (another etcd?)"
    nohup etcd --name gochat-dev --data-dir "$DIR/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
        --initial-cluster "gochat-dev=http://127.0.0.1:$((ETCD_PORT + 1))" >"$DIR/etcd.log" 2>&1 &
    echo $! >"$DIR/etcd.pid"
    wait_port etcd "$ETCD_PORT" 30
}

start_tansu() {
    running tansu && return 0
    port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by something else (another broker?)"
    mkdir -p "$DIR/tansu"
    nohup "$TANSU" broker --storage-engine "sqlite:///$DIR/tansu/tansu.db" \
        --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        >"$DIR/tansu.log" 2>&1 &
    echo $! >"$DIR/tansu.pid"
    wait_port tansu "$KAFKA_PORT" 30
}

stop() { # name
    if running "$1"; then
        local pid
        pid=$(cat "$DIR/$1.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
        log "stopped $1"
    fi
    rm -f "$DIR/$1.pid"
}

print_env() {
    cat <<EOF
export GOCHATTEST_MYSQL_URL=mysql://gochat:gochat@127.0.0.1:$MYSQL_PORT
export GOCHATTEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export GOCHATTEST_ETCD=127.0.0.1:$ETCD_PORT
export GOCHATTEST_KAFKA=127.0.0.1:$KAFKA_PORT
EOF
}

case "${1:-}" in
up)
    mkdir -p "$DIR"
    install_packages
    install_tansu
    start_mariadb
    start_redis
    start_etcd
    start_tansu
    log "up: mariadb :$MYSQL_PORT, redis :$REDIS_PORT, etcd :$ETCD_PORT, tansu :$KAFKA_PORT (data in $DIR)"
    ;;
down)
    for s in tansu etcd redis mariadb; do stop "$s"; done
    rm -rf "$DIR"
    ;;
status)
    for s in mariadb:$MYSQL_PORT redis:$REDIS_PORT etcd:$ETCD_PORT tansu:$KAFKA_PORT; do
        name=${s%%:*} port=${s##*:}
        if running "$name" && port_open "$port"; then echo "$name: running on 127.0.0.1:$port (pid $(cat "$DIR/$name.pid"))"
        else echo "$name: stopped"; fi
    done
    ;;
env) print_env ;;
*)
    echo "usage: $0 up|down|status|env" >&2
    exit 64
    ;;
esac
