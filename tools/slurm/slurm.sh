#!/usr/bin/env bash
# tools/slurm/slurm.sh - a throw-away single-node SLURM cluster for tests and CI.
#
# Usage:
#   tools/slurm/slurm.sh install          # apt-get install slurm-wlm + munge (root; skipped if present)
#   eval "$(tools/slurm/slurm.sh start)"  # start munged, slurmctld, slurmd; prints `export SLURM_CONF=...`
#   tools/slurm/slurm.sh status           # sinfo; exit 0 when up, 1 when not
#   tools/slurm/slurm.sh stop             # cancel all jobs, stop the daemons, remove what start wrote
#   tools/slurm/slurm.sh -h               # this text
#
# Everything lives in a state directory (default /tmp/scopefx-slurm, override with
# SCOPEFX_SLURM_DIR): slurm.conf, cgroup.conf, the munge key and socket, pid files,
# spool/state directories and the daemon logs (<dir>/log/{munged,slurmctld,slurmd}.log).
#
# The cluster is built for containers and CI runners: no systemd, no cgroups, all daemons
# run as root (SlurmUser=root), processes are tracked with proctrack/linuxproc, tasks are
# not bound (task/none), resources are allocated per core and memory (select/cons_tres,
# CR_Core_Memory). The node is this host (`hostname -s`) with the CPUs/sockets/cores/threads
# that `slurmd -C` reports and its memory minus some headroom. Partitions: `debug`
# (default) and `gpu` (same node, no GRES: only the name, for configs that ask for it).
#
# `start` also copies slurm.conf to /etc/slurm/slurm.conf (marked with a header) when that
# file does not exist or was written by this script, so sinfo/sbatch work without
# SLURM_CONF; `stop` removes that copy again.  Only the `export SLURM_CONF=...` line goes to
# stdout; progress and errors go to stderr.
#
# Environment:
#   SCOPEFX_SLURM_DIR        state directory                        [/tmp/scopefx-slurm]
#   SCOPEFX_SLURM_CPUS       advertise this many CPUs instead of the real count (lets a
#                            small runner hold more 1-core jobs; uses config_overrides)
#   SCOPEFX_SLURM_MEM_HEADROOM_MB  memory kept back from RealMemory          [1024]
#   SCOPEFX_SLURM_CTLD_PORT / SCOPEFX_SLURM_SLURMD_PORT  ports            [6817 / 6818]
#   SCOPEFX_SLURM_TIMEOUT    seconds `start` waits for the node to be idle   [30]
set -euo pipefail

STATE_DIR="${SCOPEFX_SLURM_DIR:-/tmp/scopefx-slurm}"
CONF="$STATE_DIR/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf
MARKER="# Written by scopefx tools/slurm/slurm.sh - removed by 'tools/slurm/slurm.sh stop'."
CTLD_PORT="${SCOPEFX_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${SCOPEFX_SLURM_SLURMD_PORT:-6818}"
TIMEOUT="${SCOPEFX_SLURM_TIMEOUT:-30}"
HEADROOM_MB="${SCOPEFX_SLURM_MEM_HEADROOM_MB:-1024}"
MUNGE_SOCKET="$STATE_DIR/munge/munge.socket"

log() { printf 'slurm.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() { sed -n '2,/^set -euo pipefail/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

need_root() { [ "$(id -u)" -eq 0 ] || die "$1 needs root (the daemons run as root)"; }

# ---------------------------------------------------------------------------- install
cmd_install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
        command -v munged >/dev/null && command -v sinfo >/dev/null; then
        log "slurm and munge already installed ($(slurmctld -V 2>/dev/null))"
        return 0
    fi
    need_root install
    # Keep the packages' init scripts from starting system-wide daemons during install
    # (no systemd here; we start our own daemons with our own config).
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    local pkgs=(slurm-wlm munge) rc=0
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${pkgs[@]}" >&2 || {
        log "apt-get install failed; refreshing the package lists and retrying"
        apt-get update >&2 && apt-get install -y --no-install-recommends "${pkgs[@]}" >&2
    } || rc=$?
    [ "$added_policy" -eq 0 ] || rm -f "$policy"
    [ "$rc" -eq 0 ] || die "apt-get install ${pkgs[*]} failed"
    log "installed $(slurmctld -V 2>/dev/null)"
}

# ---------------------------------------------------------------------------- helpers
# pid_alive PIDFILE NAME: the pid file names a live process called NAME.
pid_alive() {
    local pid
    [ -s "$1" ] || return 1
    pid="$(tr -dc '0-9' <"$1")"
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
    # A zombie (killed, not reaped by a non-reaping pid 1) counts as dead.
    case "$(sed -n 's/^.*) \([A-Z]\).*/\1/p' "/proc/$pid/stat" 2>/dev/null)" in Z | X) return 1 ;; esac
}

# stop_daemons_by_pid NAME...: TERM every named daemon whose pid file names a live process,
# wait up to 10 s for all of them, then KILL what is left. Stale pid files are removed.
stop_daemons_by_pid() {
    local name pidfile pid pids=() alive
    for name in "$@"; do
        pidfile="$STATE_DIR/run/$name.pid"
        if pid_alive "$pidfile" "$name"; then
            pid="$(tr -dc '0-9' <"$pidfile")"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            log "stopping $name ($pid)"
        fi
    done
    if [ "${#pids[@]}" -gt 0 ]; then
        for _ in $(seq 100); do
            alive=0
            for pid in "${pids[@]}"; do [ ! -d "/proc/$pid" ] || alive=1; done
            [ "$alive" -eq 1 ] || break
            sleep 0.1
        done
        for pid in "${pids[@]}"; do
            if [ -d "/proc/$pid" ]; then
                log "pid $pid did not stop on TERM; killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done
    fi
    # Whatever is left (stale files of a dead run, or a daemon that did not clean up).
    for name in "$@"; do rm -f "$STATE_DIR/run/$name.pid"; done
}

daemons_alive() {
    pid_alive "$STATE_DIR/run/munged.pid" munged &&
        pid_alive "$STATE_DIR/run/slurmctld.pid" slurmctld &&
        pid_alive "$STATE_DIR/run/slurmd.pid" slurmd
}

node_states() { SLURM_CONF="$CONF" sinfo -h -N -o %T 2>/dev/null | sort -u; }

is_up() {
    [ -f "$CONF" ] && daemons_alive && node_states | grep -qx 'idle\|mixed\|allocated\|completing'
}

print_export() { printf 'export SLURM_CONF=%s\n' "$CONF"; }

log_tails() {
    local f
    for f in "$STATE_DIR"/log/*.log; do
        [ -f "$f" ] || continue
        printf '\n==> %s <==\n' "$f" >&2
        tail -n 25 "$f" >&2
    done
}

# ---------------------------------------------------------------------------- config
write_config() {
    local node cpus sockets cores threads boards realmem mem defmem hw
    node="$(hostname -s)"
    # slurmd -C: "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
    hw="$(slurmd -C 2>/dev/null | head -n 1)" || true
    case "$hw" in NodeName=*) ;; *) die "'slurmd -C' gave no hardware line: $hw" ;; esac
    val() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
    cpus="$(val CPUs)"
    boards="$(val Boards)"
    sockets="$(val SocketsPerBoard)"
    cores="$(val CoresPerSocket)"
    threads="$(val ThreadsPerCore)"
    realmem="$(val RealMemory)"
    if [ -z "$cpus" ] || [ -z "$sockets" ] || [ -z "$cores" ] || [ -z "$threads" ] || [ -z "$realmem" ]; then
        die "could not parse 'slurmd -C': $hw"
    fi
    sockets=$((sockets * ${boards:-1}))
    # Leave headroom: slurmd drains a node whose configured RealMemory exceeds what it finds.
    mem=$((realmem - HEADROOM_MB))
    [ "$mem" -ge 1024 ] || mem=$((realmem * 9 / 10))
    local nodeline="NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem State=UNKNOWN"
    local slurmd_params=""
    if [ -n "${SCOPEFX_SLURM_CPUS:-}" ]; then
        # Advertise more (or fewer) CPUs than the hardware has; slurmd must be told to trust
        # the configuration instead of draining the node.
        cpus="$SCOPEFX_SLURM_CPUS"
        nodeline="NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN"
        slurmd_params="SlurmdParameters=config_overrides"
    fi
    # Jobs that ask for no memory would otherwise get the whole node (CR_*_Memory) and run
    # one at a time.
    defmem=$((mem / cpus))
    [ "$defmem" -le 1024 ] || defmem=1024

    mkdir -p "$STATE_DIR"/{run,log,spool/slurmd,state,munge}
    chmod 755 "$STATE_DIR" "$STATE_DIR"/{run,log,spool,state}
    chmod 711 "$STATE_DIR/munge"

    cat >"$CONF.tmp" <<EOF
$MARKER
# Single-node test cluster for scopefx (tools/slurm/slurm.sh). State dir: $STATE_DIR
ClusterName=scopefx
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET

# No systemd, no cgroups: plain /proc process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
LaunchType=launch/slurm
${slurmd_params}

SchedulerType=sched/backfill
# Batch jobs would otherwise wait for a scheduling pass every 3 s (batch_sched_delay=3).
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$defmem

# Fast start-up and fast clean-up.
ReturnToService=2
SlurmctldTimeout=10
SlurmdTimeout=10
MessageTimeout=5
TCPTimeout=2
BatchStartTimeout=10
InactiveLimit=0
KillWait=1
MinJobAge=2
Waittime=0
UnkillableStepTimeout=30

StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool/slurmd
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

$nodeline
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
# Same node, no GPUs/GRES: only the name, for configs that ask for partition "gpu".
PartitionName=gpu Nodes=$node Default=NO MaxTime=INFINITE State=UP
EOF
    mv -f "$CONF.tmp" "$CONF"

    # cgroup.conf is read from the slurm.conf directory; keep it there and cgroup-free.
    cat >"$STATE_DIR/cgroup.conf" <<EOF
$MARKER
# No cgroup plugins are configured (proctrack/linuxproc, task/none, jobacct_gather/none).
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
    chmod 644 "$CONF" "$STATE_DIR/cgroup.conf"
    log "node: $nodeline"
}

install_etc_conf() {
    if [ -e "$ETC_CONF" ] && ! head -n 1 "$ETC_CONF" | grep -qxF "$MARKER"; then
        log "$ETC_CONF exists and was not written by this script; leaving it alone (use SLURM_CONF)"
        return 0
    fi
    mkdir -p "$(dirname "$ETC_CONF")"
    cp -f "$CONF" "$ETC_CONF.scopefx.tmp"
    mv -f "$ETC_CONF.scopefx.tmp" "$ETC_CONF"
}

remove_etc_conf() {
    # Only our copy, and only the one that points at this state directory.
    if [ -f "$ETC_CONF" ] && head -n 1 "$ETC_CONF" | grep -qxF "$MARKER" &&
        grep -qxF "StateSaveLocation=$STATE_DIR/state" "$ETC_CONF"; then
        rm -f "$ETC_CONF"
        log "removed $ETC_CONF"
    fi
}

# ---------------------------------------------------------------------------- start
start_munged() {
    local key="$STATE_DIR/munge/munge.key"
    if [ ! -s "$key" ]; then
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$key" --force
        else
            dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
        fi
    fi
    chmod 400 "$key"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    # --force: tolerate loose permissions on the state dir's parents (e.g. CI workspaces).
    munged --force 9>&- \
        --key-file="$key" \
        --socket="$MUNGE_SOCKET" \
        --pid-file="$STATE_DIR/run/munged.pid" \
        --log-file="$STATE_DIR/log/munged.log" \
        --seed-file="$STATE_DIR/munge/munged.seed" ||
        { log_tails; die "munged did not start"; }
    for _ in $(seq 50); do
        [ -S "$MUNGE_SOCKET" ] && break
        sleep 0.1
    done
    [ -S "$MUNGE_SOCKET" ] || { log_tails; die "munged socket $MUNGE_SOCKET did not appear"; }
}

# Serialise start/stop (e.g. several pytest-xdist workers starting the cluster at once).
take_lock() {
    exec 9>"$STATE_DIR.lock"
    flock -w 120 9 || die "another slurm.sh holds $STATE_DIR.lock"
}

cmd_start() {
    if is_up; then
        log "already running ($CONF)"
        print_export
        return 0
    fi
    need_root start
    take_lock
    if is_up; then
        log "started by another caller ($CONF)"
        print_export
        return 0
    fi
    command -v slurmctld >/dev/null || die "slurm is not installed; run: $0 install"
    # Half-up or left over from a dead run (e.g. pid files that survived a reboot): clean slate.
    stop_daemons
    local t0=$SECONDS f
    # Keep the previous run's logs as *.log.1 so the tails shown on failure are this run's.
    for f in "$STATE_DIR"/log/*.log; do [ ! -f "$f" ] || mv -f "$f" "$f.1"; done
    write_config
    install_etc_conf
    export SLURM_CONF="$CONF"
    start_munged
    # -c: forget jobs and node state from an earlier run; -i: ignore unreadable state.
    slurmctld -f "$CONF" -c -i 9>&- || { log_tails; die "slurmctld did not start"; }
    slurmd -f "$CONF" 9>&- || { log_tails; die "slurmd did not start"; }

    local deadline=$((SECONDS + TIMEOUT)) states=""
    while [ "$SECONDS" -lt "$deadline" ]; do
        states="$(node_states | tr '\n' ' ')"
        case " $states " in
            *" idle "*) break ;;
            *" down "* | *" drained "* | *" draining "*)
                # A node left down by an earlier registration problem: try to resume it.
                SLURM_CONF="$CONF" scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.2
    done
    case " $states " in
        *" idle "*) ;;
        *)
            log "node not idle after ${TIMEOUT}s (state: ${states:-no answer})"
            SLURM_CONF="$CONF" scontrol show node >&2 2>/dev/null || true
            log_tails
            die "SLURM did not come up; see the logs in $STATE_DIR/log"
            ;;
    esac
    log "up in $((SECONDS - t0))s: $(SLURM_CONF="$CONF" sinfo -h -o '%P %T %c cpus %m MB' | tr '\n' ';')"
    print_export
}

# ---------------------------------------------------------------------------- stop
cancel_jobs() {
    pid_alive "$STATE_DIR/run/slurmctld.pid" slurmctld || return 0
    local ids
    ids="$(SLURM_CONF="$CONF" squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')" || true
    [ -n "${ids// /}" ] || return 0
    log "cancelling jobs: $ids"
    # shellcheck disable=SC2086
    SLURM_CONF="$CONF" scancel $ids 2>/dev/null || true
    for _ in $(seq 50); do
        [ -z "$(SLURM_CONF="$CONF" squeue -h -t R,CG,PD -o %A 2>/dev/null)" ] && break
        sleep 0.2
    done
}

stop_daemons() {
    # slurmd and slurmctld together, munged (their authentication) after them.
    stop_daemons_by_pid slurmd slurmctld
    stop_daemons_by_pid munged
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
}

cmd_stop() {
    [ ! -d "$STATE_DIR" ] || [ ! -w "$(dirname "$STATE_DIR")" ] || take_lock
    if [ -f "$CONF" ]; then
        cancel_jobs
    fi
    if [ -d "$STATE_DIR/run" ]; then
        stop_daemons
    fi
    remove_etc_conf
    log "stopped"
}

# ---------------------------------------------------------------------------- status
cmd_status() {
    if is_up; then
        SLURM_CONF="$CONF" sinfo
        print_export
        return 0
    fi
    if [ -f "$CONF" ] && pid_alive "$STATE_DIR/run/slurmctld.pid" slurmctld; then
        SLURM_CONF="$CONF" sinfo 2>&1 || true
    fi
    echo "SLURM test cluster is not up (state dir $STATE_DIR)"
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
