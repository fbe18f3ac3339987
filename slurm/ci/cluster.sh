#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for testing slurm/train.sbatch and the
# submitit launcher for real (CI runs it; needs root on Debian/Ubuntu).
#
#   slurm/ci/cluster.sh start   # install slurm-wlm + munge if missing, write a one-node
#                               # config, start munged, slurmctld and slurmd
#   slurm/ci/cluster.sh stop    # stop the daemons this script started
#   slurm/ci/cluster.sh status  # sinfo
#
# Everything lives in $PROGROW_SLURM_DIR (default /tmp/progrow-slurm): slurm.conf, state,
# spool, logs and pid files, so a machine's own /etc/slurm is never touched. Clients need
# SLURM_CONF=$PROGROW_SLURM_DIR/slurm.conf (`eval "$(slurm/ci/cluster.sh env)"`).
set -euo pipefail

DIR=${PROGROW_SLURM_DIR:-/tmp/progrow-slurm}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)
export SLURM_CONF=$CONF

log() { echo "cluster.sh: $*" >&2; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        log "slurm-wlm and munge are missing; installing them needs root and apt-get"
        exit 1
    fi
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The packages' service starts fail harmlessly without systemd; this script starts them.
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_config() {
    local cpus mem_mb
    # At least 2 CPUs (two DDP tasks); slurmd accepts more than it counts thanks to
    # config_overrides.
    cpus=$(nproc)
    [ "$cpus" -ge 2 ] || cpus=2
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p "$DIR/state" "$DIR/spool"
    cat >"$CONF" <<CONF
# Written by slurm/ci/cluster.sh: one node ($HOST), $cpus CPUs, everything as root.
ClusterName=progrow-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
# No cgroups (containers): track processes by parent id, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Schedule every second (default 60 s), so a released requeued job starts at once.
SchedulerParameters=sched_interval=1,bf_interval=1
# Keep finished jobs visible to scontrol for a while, then forget them.
MinJobAge=120
# Seconds between SIGTERM and SIGKILL at a time limit or scancel.
KillWait=30
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    mkdir -p "$DIR"
    touch "$DIR/munged.ours"  # stop only a munged this script started
    log "munged started"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    install_packages
    start_munge
    if running "$DIR/slurmctld.pid" && running "$DIR/slurmd.pid"; then
        log "already running ($CONF)"
        return
    fi
    write_config
    slurmctld -f "$CONF"
    slurmd -f "$CONF"
    # Up when the node accepts jobs (idle), usually within a few seconds.
    for _ in $(seq 60); do
        if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
            log "up: $(sinfo -h -o '%P %D %c %T')  (export SLURM_CONF=$CONF)"
            return
        fi
        sleep 1
    done
    log "the node did not become idle; logs: $DIR/slurmctld.log $DIR/slurmd.log"
    sinfo -N -l >&2 || true
    exit 1
}

stop() {
    scontrol shutdown 2>/dev/null || true
    for name in slurmd slurmctld; do
        local pidfile=$DIR/$name.pid
        for _ in $(seq 20); do running "$pidfile" || break; sleep 0.5; done
        if running "$pidfile"; then kill "$(cat "$pidfile")"; fi
    done
    if [ -f "$DIR/munged.ours" ] && running /run/munge/munged.pid; then
        kill "$(cat /run/munge/munged.pid)"
        rm -f "$DIR/munged.ours"
    fi
    log "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
