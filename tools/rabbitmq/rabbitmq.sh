#!/usr/bin/env bash
# tools/rabbitmq/rabbitmq.sh - a throw-away RabbitMQ broker for the real-endpoint tests and CI.
#
# Usage:
#   tools/rabbitmq/rabbitmq.sh install           # apt-get install rabbitmq-server (root; skipped if present)
#   eval "$(tools/rabbitmq/rabbitmq.sh start)"   # start one broker; prints `export SCOPEFX_AMQP_URL=...`
#   tools/rabbitmq/rabbitmq.sh status            # exit 0 when up, 1 when not
#   tools/rabbitmq/rabbitmq.sh stop              # stop the broker, remove what start wrote
#   tools/rabbitmq/rabbitmq.sh -h                # this text
#
# globus-compute-endpoint talks to the Globus service only through AMQP queues (tasks in,
# results and heartbeats out). This broker stands in for the service's, so that the tests
# can run the real endpoint process with no network: tests/endpoints/test_real_endpoint.py.
#
# Everything lives in a state directory (default /tmp/scopefx-rabbitmq, override with
# SCOPEFX_RABBITMQ_DIR): rabbitmq.conf, the Erlang cookie (HOME points there), the
# database, the pid file and the logs (<dir>/log/). The broker runs as the calling user
# (root in CI) without systemd or the Debian wrapper, listens on 127.0.0.1 only, and has
# the Debian default account guest/guest, which RabbitMQ accepts from loopback only.
# Only the `export SCOPEFX_AMQP_URL=...` line goes to stdout; progress and errors go to
# stderr.
#
# Environment:
#   SCOPEFX_RABBITMQ_DIR      state directory                          [/tmp/scopefx-rabbitmq]
#   SCOPEFX_RABBITMQ_PORT     AMQP port on 127.0.0.1                     [5673]
#   SCOPEFX_RABBITMQ_TIMEOUT  seconds `start` waits for the broker       [90]
set -euo pipefail

STATE_DIR="${SCOPEFX_RABBITMQ_DIR:-/tmp/scopefx-rabbitmq}"
PORT="${SCOPEFX_RABBITMQ_PORT:-5673}"
TIMEOUT="${SCOPEFX_RABBITMQ_TIMEOUT:-90}"
NODE="scopefx-$PORT@localhost"
RMQ_BIN=/usr/lib/rabbitmq/bin
PIDFILE="$STATE_DIR/rabbitmq.pid"

log() { printf 'rabbitmq.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() { sed -n '2,/^set -euo pipefail/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

# The broker's and rabbitmqctl's environment: everything under the state directory.
rmq_env() {
    export HOME="$STATE_DIR" \
        RABBITMQ_NODENAME="$NODE" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$PORT" \
        RABBITMQ_DIST_PORT=$((PORT + 20000)) \
        RABBITMQ_CONFIG_FILE="$STATE_DIR/rabbitmq.conf" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$STATE_DIR/enabled_plugins" \
        RABBITMQ_MNESIA_BASE="$STATE_DIR/mnesia" \
        RABBITMQ_LOG_BASE="$STATE_DIR/log" \
        RABBITMQ_PID_FILE="$PIDFILE" \
        ERL_EPMD_ADDRESS=127.0.0.1
}

ctl() { (rmq_env && "$RMQ_BIN/rabbitmqctl" -q -n "$NODE" "$@"); }

print_export() { printf 'export SCOPEFX_AMQP_URL=amqp://guest:guest@127.0.0.1:%s/%%2F\n' "$PORT"; }

# ---------------------------------------------------------------------------- install
cmd_install() {
    if [ -x "$RMQ_BIN/rabbitmq-server" ]; then
        log "rabbitmq-server already installed"
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "install needs root (apt-get)"
    # Keep the package's init script from starting a system-wide broker during install.
    local policy=/usr/sbin/policy-rc.d added_policy=0 rc=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends rabbitmq-server >&2 || {
        log "apt-get install failed; refreshing the package lists and retrying"
        apt-get update >&2 && apt-get install -y --no-install-recommends rabbitmq-server >&2
    } || rc=$?
    [ "$added_policy" -eq 0 ] || rm -f "$policy"
    [ "$rc" -eq 0 ] || die "apt-get install rabbitmq-server failed"
    log "installed rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null)"
}

# ---------------------------------------------------------------------------- helpers
pid_alive() {
    local pid
    [ -s "$PIDFILE" ] || return 1
    pid="$(tr -dc '0-9' <"$PIDFILE")"
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    case "$(sed -n 's/^.*) \([A-Z]\).*/\1/p' "/proc/$pid/stat" 2>/dev/null)" in Z | X) return 1 ;; esac
}

is_up() { pid_alive && ctl status >/dev/null 2>&1; }

take_lock() {
    mkdir -p "$(dirname "$STATE_DIR")"
    exec 9>"$STATE_DIR.lock"
    flock -w 120 9 || die "another rabbitmq.sh holds $STATE_DIR.lock"
}

log_tail() {
    local f
    for f in "$STATE_DIR"/log/*.log "$STATE_DIR/startup.log"; do
        [ -f "$f" ] || continue
        printf '\n==> %s <==\n' "$f" >&2
        tail -n 25 "$f" >&2
    done
}

# ---------------------------------------------------------------------------- start
cmd_start() {
    if is_up; then
        log "already running ($NODE)"
        print_export
        return 0
    fi
    take_lock
    if is_up; then
        log "started by another caller ($NODE)"
        print_export
        return 0
    fi
    [ -x "$RMQ_BIN/rabbitmq-server" ] || die "rabbitmq-server is not installed; run: $0 install"
    stop_broker
    mkdir -p "$STATE_DIR/log" "$STATE_DIR/mnesia"
    chmod 700 "$STATE_DIR"
    if [ ! -s "$STATE_DIR/.erlang.cookie" ]; then
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE_DIR/.erlang.cookie"
    fi
    chmod 400 "$STATE_DIR/.erlang.cookie"
    echo "[]." >"$STATE_DIR/enabled_plugins"
    cat >"$STATE_DIR/rabbitmq.conf" <<EOF
# Written by scopefx tools/rabbitmq/rabbitmq.sh: a test broker on loopback only.
listeners.tcp.default = 127.0.0.1:$PORT
loopback_users.guest = true
# A small test machine: never block publishers for disk or memory alarms.
disk_free_limit.absolute = 10MB
vm_memory_high_watermark.absolute = 2GB
EOF
    local t0=$SECONDS
    # In the background, without the lock (fd 9): the broker outlives this script.
    (
        exec 9>&-
        rmq_env
        exec setsid "$RMQ_BIN/rabbitmq-server" >"$STATE_DIR/startup.log" 2>&1 </dev/null
    ) &
    local deadline=$((SECONDS + TIMEOUT))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if pid_alive && ctl await_startup >/dev/null 2>&1; then
            log "up in $((SECONDS - t0))s: $NODE on 127.0.0.1:$PORT"
            print_export
            return 0
        fi
        sleep 1
    done
    log_tail
    die "RabbitMQ did not come up in ${TIMEOUT}s; see $STATE_DIR/log"
}

# ---------------------------------------------------------------------------- stop
stop_broker() {
    local pid
    if pid_alive; then
        pid="$(tr -dc '0-9' <"$PIDFILE")"
        log "stopping $NODE ($pid)"
        ctl stop "$PIDFILE" >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            [ -d "/proc/$pid" ] || break
            sleep 0.1
        done
        if [ -d "/proc/$pid" ]; then
            log "pid $pid did not stop; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$PIDFILE"
}

cmd_stop() {
    [ -d "$STATE_DIR" ] || { log "stopped"; return 0; }
    take_lock
    stop_broker
    # The broker's database and logs: the next start is a fresh broker.
    rm -rf "$STATE_DIR/mnesia"
    log "stopped"
}

cmd_status() {
    if is_up; then
        log "up: $NODE on 127.0.0.1:$PORT"
        print_export
        return 0
    fi
    echo "RabbitMQ test broker is not up (state dir $STATE_DIR)"
    return 1
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac
